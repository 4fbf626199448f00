"""Oscillator samples for ``rnnprobe dynamics``: skew-symmetric, AntisymmetricRNN-style and generic tanh networks.

All three generate ``y_t = sin(0.2 t)`` (one frequency, radians per step)
from the zero state under a constant cue ``u = 1`` (the sine task with one
frequency and ``offset=1``), over 100 steps (about three periods):

``osc_skew``
    residual (Euler) tanh network ``h' = h + eps tanh(W h + U u + b)`` with an
    exactly skew-symmetric ``W = A - A^T`` (Casoni et al. 2025): its flow
    conserves ``H = sum log cosh(W h + U u + b)``, so every orbit is closed;
    the Euler map drifts outward.
``osc_antisym``
    AntisymmetricRNN's cell (Chang et al. 2019), ``W = A - A^T - gamma I``,
    residual form, gamma = 0.01: the flow decays (slowly) onto a fixed point,
    while the Euler step amplifies near it.
``osc_rnn``
    a generic tanh ``nn.RNN`` (Elman), orthogonal initialisation.

``eps = 0.1`` is both the Euler step and the time per step (``dt``), so the
flow's time unit is that of ``dh/dt = tanh(W h + U u + b)`` and the target's
frequency is 2 radians per time unit. Checkpoints hold canonical ``nn.RNN``
keys (``rnn.weight_hh_l0`` = W as trained, ``rnn.bias_hh_l0`` = 0) and a
``readout``; sidecars state ``form``, ``eps``, ``dt``, the task, the FVU and
``autonomous_input`` (the cue the dynamics analysis uses by default). The
sidecar's figures are measured on the saved float32 weights, rolled out in
float64 by rnnprobe's own cell.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rnnprobe.cells import ElmanCell
from rnnprobe.report.writer import atomic_path
from rnnprobe.samples import RecurrentNet, TrainedSample, cell_figures

__all__ = ["ResidualNet", "OscillatorSample", "SAMPLES", "TASK", "EPS"]

TASK = "sine:n_freq=1,omega_min=0.2,omega_max=0.2,offset=1.0,length=100"
EPS = 0.1
N_HIDDEN = 32


class ResidualNet(nn.Module):
    """``h <- h + eps tanh(W h + U u + b)``, ``y = readout(h)``, from ``h = 0``.

    ``W = A - A^T - gamma I`` (``gamma = 0``: exactly skew-symmetric; the
    difference of a float32 matrix and its transpose is exactly skew in
    floating point). ``canonical_state()`` is the state dict in ``nn.RNN``
    naming, with W as computed in float32 from the trained A.
    """

    def __init__(self, n_inputs: int, n_hidden: int, n_outputs: int, *, eps: float, gamma: float = 0.0):
        super().__init__()
        self.eps = float(eps)
        self.gamma = float(gamma)
        self.A = nn.Parameter(torch.randn(n_hidden, n_hidden) / math.sqrt(n_hidden))
        self.input = nn.Linear(n_inputs, n_hidden)
        self.readout = nn.Linear(n_hidden, n_outputs)

    def recurrent(self) -> torch.Tensor:
        W = self.A - self.A.T
        if self.gamma:
            W = W - self.gamma * torch.eye(W.shape[0], dtype=W.dtype, device=W.device)
        return W

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        W = self.recurrent()
        drive = self.input(inputs)
        h = torch.zeros(inputs.shape[0], W.shape[0], dtype=inputs.dtype, device=inputs.device)
        out = []
        for t in range(inputs.shape[1]):
            h = h + self.eps * torch.tanh(h @ W.T + drive[:, t])
            out.append(h)
        return self.readout(torch.stack(out, 1))

    def canonical_state(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            W = self.recurrent().detach().clone()
            return {
                "rnn.weight_hh_l0": W.contiguous(),
                "rnn.weight_ih_l0": self.input.weight.detach().clone().contiguous(),
                "rnn.bias_ih_l0": self.input.bias.detach().clone(),
                "rnn.bias_hh_l0": torch.zeros_like(self.input.bias),
                "readout.weight": self.readout.weight.detach().clone().contiguous(),
                "readout.bias": self.readout.bias.detach().clone(),
            }

    def sidecar(self) -> dict:
        skew = "W = A - A^T" + (f" - {self.gamma:g} I (AntisymmetricRNN)" if self.gamma else " (skew-symmetric)")
        return {"architecture": f"residual tanh RNN, {skew}", "n_hidden": self.A.shape[0],
                "n_inputs": self.input.in_features, "n_outputs": self.readout.out_features,
                "nonlinearity": "tanh", "form": "residual", "eps": self.eps, "alpha": self.eps, "dt": self.eps,
                "gamma": self.gamma, "init": "A ~ N(0, 1/N)"}


def _cell(state: dict[str, torch.Tensor], meta: dict) -> ElmanCell:
    """rnnprobe's cell on the saved weights, in float64 (the sidecar's figures are measured with it)."""
    s = {k: v.to(torch.float64) for k, v in state.items()}
    residual = meta.get("form") == "residual"
    return ElmanCell(s["rnn.weight_hh_l0"], s["rnn.weight_ih_l0"], s["rnn.bias_ih_l0"] + s["rnn.bias_hh_l0"],
                     s["readout.weight"], s["readout.bias"], alpha=meta["eps"] if residual else 1.0,
                     form="residual" if residual else "leaky", nonlinearity="tanh")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OscillatorSample(TrainedSample):
    """A network trained on :data:`TASK` by the registry's training loop (:class:`TrainedSample`), saved in
    canonical keys with a sidecar for the dynamics analysis (form, eps, dt, autonomous_input)."""

    task: str = TASK
    steps: int = 1000
    batch: int = 4
    eval_batch: int = 64

    def write_checkpoint(self, net: nn.Module, meta: dict, path: Path) -> None:
        """The state dict in ``nn.RNN`` keys: :meth:`ResidualNet.canonical_state`, or ``nn.RNN``'s own."""
        if not hasattr(net, "canonical_state"):
            return super().write_checkpoint(net, meta, path)
        state = net.canonical_state()
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def figures(self, net: nn.Module, meta: dict, path: Path) -> dict:
        """Accuracy and FVU of the saved float32 weights rolled out in float64 by rnnprobe's cell, and the cue."""
        task = self.eval_task()
        cell = _cell(torch.load(path, weights_only=True, map_location="cpu"), meta)
        return {**cell_figures(cell, task), "autonomous_input": [float(v) for v in np.unique(task.inputs)]}

    def settings(self) -> dict:
        # these sidecars have never stated clip (training clips at the default 1.0); they keep their keys
        return {k: v for k, v in super().settings().items() if k != "clip"}


def _skew(n_inputs: int, n_outputs: int) -> ResidualNet:
    return ResidualNet(n_inputs, N_HIDDEN, n_outputs, eps=EPS)


def _antisym(n_inputs: int, n_outputs: int) -> ResidualNet:
    return ResidualNet(n_inputs, N_HIDDEN, n_outputs, eps=EPS, gamma=0.01)


def _rnn(n_inputs: int, n_outputs: int) -> RecurrentNet:
    return RecurrentNet("rnn", n_inputs, N_HIDDEN, n_outputs, nonlinearity="tanh", orthogonal=True)


SAMPLES = [
    OscillatorSample(
        name="osc_skew",
        description="residual tanh RNN, N=32, W = A - A^T exactly skew-symmetric, eps = dt = 0.1: sin(0.2 t) "
                    "under a constant cue u = 1",
        network=_skew,
    ),
    OscillatorSample(
        name="osc_antisym",
        description="AntisymmetricRNN cell, N=32, W = A - A^T - 0.01 I, residual, eps = dt = 0.1: sin(0.2 t) "
                    "under a constant cue u = 1",
        network=_antisym,
    ),
    OscillatorSample(
        name="osc_rnn",
        description="generic tanh nn.RNN (Elman), N=32, orthogonal W_hh init: sin(0.2 t) under a constant cue u = 1",
        network=_rnn,
    ),
]
