#!/bin/sh
# The main job on the shipped samples (called by `make demo`).
set -eu
PY=${PY:-.venv/bin/python}
REPORTS=${REPORTS:-rnnprobe-reports}
RNNPROBE="$PY -m rnnprobe"
echo "== rnnprobe schur on the copy sample (16 symbols), with the block-coupling ablation"
$RNNPROBE schur sample_checkpoints/copy16_rnn64.pt --ablate couplings --out "$REPORTS"
echo
echo "== rnnprobe zoo: fixed points of every shipped sample (reports in $REPORTS/zoo)"
$RNNPROBE zoo sample_checkpoints --analyses fixedpoints --set fixedpoints.n_init=256 --jobs 2 --out "$REPORTS/zoo"
