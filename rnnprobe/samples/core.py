"""The core samples: tanh RNNs on every task, a GRU and an LSTM on flip-flop, a leaky CTRNN on CDI.

The copy sample reproduces the setting of Dräger (2026, "Task-Restricted
Symmetries in Recurrent Weight Space", arXiv 2606.18457): a one-layer tanh
``nn.RNN`` with an orthogonally initialised dense ``W_hh`` trained to replay a
sequence autonomously, here N = 64 and the copy task's defaults (8 binary
symbols on one channel, replayed with zero input). That task is easy enough
that training barely moves ``W_hh`` off the unit circle (nearly every
eigenvalue has |lambda| >= 0.9 rho), so ``copy16_rnn64`` replays 16 symbols,
a solution with a substantial complement block C in the Schur partition.
"""

from __future__ import annotations

from functools import partial

from rnnprobe.samples import CTRNN, RecurrentNet, TrainedSample


def _rnn(kind: str, n_hidden: int, n_inputs: int, n_outputs: int) -> RecurrentNet:
    return RecurrentNet(kind, n_inputs, n_hidden, n_outputs, nonlinearity="tanh", orthogonal=True)


def _ctrnn(n_hidden: int, n_inputs: int, n_outputs: int) -> CTRNN:
    return CTRNN(n_inputs, n_hidden, n_outputs, alpha=0.2, nonlinearity="relu")


def _tanh_rnn64(name: str, task: str, does: str, steps: int) -> TrainedSample:
    """A tanh ``nn.RNN`` with N = 64 and an orthogonal W_hh init, trained on ``task``."""
    return TrainedSample(name=name, task=task, network=partial(_rnn, "rnn", 64),
                         description=f"tanh nn.RNN, N=64, orthogonal W_hh init: {does}", steps=steps)


SAMPLES = [
    _tanh_rnn64("copy_rnn64", "copy", "sees 8 binary symbols, replays them with zero input", 3000),
    _tanh_rnn64("copy16_rnn64", "copy:length=16", "sees 16 binary symbols, replays them with zero input", 5000),
    _tanh_rnn64("flipflop_rnn64", "flipflop", "3-bit flip-flop memory", 3000),
    _tanh_rnn64("sine_rnn64", "sine", "generates sin(omega t) from a static frequency cue", 3000),
    _tanh_rnn64("cdi_rnn64", "cdi", "context-dependent integration of two noisy streams", 5000),
    TrainedSample(
        name="flipflop_gru",
        task="flipflop",
        network=partial(_rnn, "gru", 32),
        description="nn.GRU, N=32, orthogonal weight_hh init per gate: 3-bit flip-flop memory",
        steps=3000,
    ),
    TrainedSample(
        name="flipflop_lstm",
        task="flipflop",
        network=partial(_rnn, "lstm", 32),
        description="nn.LSTM, N=32 (state [h, c] of 64), orthogonal weight_hh init per gate: 3-bit flip-flop memory",
        steps=3000,
    ),
    TrainedSample(
        name="cdi_ctrnn",
        task="cdi",
        network=partial(_ctrnn, 64),
        description="leaky relu CTRNN, N=64, alpha=0.2 (input2h/h2h/fc keys): context-dependent integration",
        steps=3000,
    ),
]
