"""S^1 path-integration samples: Mo's exactly SO(2)-equivariant polar cell, its broken variant, GRU and LSTM baselines.

All four are trained on the same task, ``s1:init=cue`` (angular velocity in,
``(cos phi, sin phi)`` out, the initial phase given as a cue pulse at t = 0;
:func:`rnnprobe.tasks.s1`), with the package's one training loop
(:class:`rnnprobe.samples.TrainedSample`).

* ``s1_polar``: :class:`rnnprobe.cells.polar.PolarS1Cell`, exactly equivariant
  under SO(2) rotating ``z``, the cue pair and the output pair. Its sidecar
  names the class (``cell``, ``cell_kwargs``) and the group (``symmetry``), so
  ``rnnprobe equivariance sample_checkpoints/s1_polar.pt`` needs no flags.
* ``s1_polar_broken``: the same cell with ``epsilon * (x, -y)`` added to the
  vector field (``epsilon = 0.01``): a pseudo-gap of about ``2 epsilon`` per
  step in the formerly neutral phase direction, a memory lifetime of about 50
  steps.
* ``s1_gru``, ``s1_lstm``: ``nn.GRU`` / ``nn.LSTM`` baselines (N = 32) with a
  linear readout, no built-in symmetry.
"""

from __future__ import annotations

from functools import partial

from rnnprobe.cells.polar import PolarS1Cell
from rnnprobe.samples import RecurrentNet, TrainedSample

TASK = "s1:init=cue"
BROKEN_EPSILON = 0.01


def _polar(epsilon: float, n_inputs: int, n_outputs: int) -> PolarS1Cell:
    cell = PolarS1Cell(n_channels=4, n_mlp=16, dt=1.0, epsilon=epsilon)
    if (n_inputs, n_outputs) != (cell.n_inputs, cell.n_outputs):
        raise ValueError(f"PolarS1Cell takes {cell.n_inputs} inputs and gives {cell.n_outputs} outputs; "
                         f"the task has {n_inputs} and {n_outputs} (use {TASK})")
    return cell


def _rnn(kind: str, n_hidden: int, n_inputs: int, n_outputs: int) -> RecurrentNet:
    return RecurrentNet(kind, n_inputs, n_hidden, n_outputs, orthogonal=True)


SAMPLES = [
    TrainedSample(
        name="s1_polar",
        task=TASK,
        network=partial(_polar, 0.0),
        description="PolarS1Cell (Mo 2026), exactly SO(2)-equivariant: S^1 path integration from a phase cue",
        steps=1500,
        lr=1e-2,
    ),
    TrainedSample(
        name="s1_polar_broken",
        task=TASK,
        network=partial(_polar, BROKEN_EPSILON),
        description=f"PolarS1Cell with the symmetry broken by epsilon={BROKEN_EPSILON} * (x, -y): "
                    "S^1 path integration from a phase cue",
        steps=1500,
        lr=1e-2,
    ),
    TrainedSample(
        name="s1_gru",
        task=TASK,
        network=partial(_rnn, "gru", 32),
        description="nn.GRU, N=32, orthogonal weight_hh init per gate: S^1 path integration from a phase cue",
        steps=3000,
    ),
    TrainedSample(
        name="s1_lstm",
        task=TASK,
        network=partial(_rnn, "lstm", 32),
        description="nn.LSTM, N=32 (state [h, c] of 64), orthogonal weight_hh init per gate: "
                    "S^1 path integration from a phase cue",
        steps=3000,
    ),
]
