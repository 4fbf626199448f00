#!/bin/sh
# The main job on the shipped samples (called by `make demo`).
set -eu
PY=${PY:-.venv/bin/python}
REPORTS=${REPORTS:-rnnprobe-reports}
RNNPROBE="$PY -m rnnprobe"
echo "== rnnprobe schur on the copy sample, with the block-coupling ablation"
$RNNPROBE schur sample_checkpoints/copy_rnn64.pt --ablate couplings --out "$REPORTS"
