"""Convolutional samples on the lattice task: orthogonal, unitary, and a dense network of the same size.

All three propagate a +-1 pattern round a ring of 32 sites, one site per step
for 10 steps (:func:`rnnprobe.tasks.lattice`, ``lattice:sites=32,length=10,shift=1``),
with 128 real state numbers each:

``conv_orth`` (``conv_orth.npz``)
    a convolutional orthogonal RNN, ``h' = tanh(e_conv^G h + W_uh u + b)``
    with 4 channels on the ring, ``G`` an antisymmetric 4-channel kernel made
    from a trained 5-site stencil ``U`` as ``G = (U - U~)/2`` (Magnasco 2023,
    section 6), so ``e_conv^G`` is orthogonal. Inputs and readout are per
    channel and site-local (``W_uh = g (x) I``, ``W_r = r^T (x) I``), so the
    whole network commutes with the shift. Saved as a raw-kernel npz:
    ``generator_hh`` ``[4, 4, 32]`` (circular offsets), ``W_uh``, ``b`` (one
    per channel), ``W_r``, ``b_r``; the loader computes ``W_hh = exp_conv(G)``
    in float64, orthogonal to rounding.
``conv_unitary`` (``conv_unitary.pt``)
    :class:`rnnprobe.cells.conv.ConvUnitaryCell`: two complex channels on the
    ring (state ``[Re Z, Im Z]``), ``e^K`` of an anti-Hermitian kernel from a
    5-site stencil, the phase-preserving modReLU, dense complex input weights
    and a linear readout. A state dict plus a sidecar naming the cell class.
``conv_dense`` (``conv_dense.pt``)
    a tanh ``nn.RNN`` with N = 128 (orthogonal initialisation) on the same task,
    for comparison.

The sidecars' figures are measured in float64 on held-out trials through
rnnprobe's loader (for ``conv_orth``: on the exponential computed at load time).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rnnprobe.cells.conv import ConvUnitaryCell
from rnnprobe.numerics.conv import antisymmetrize, conv_exp
from rnnprobe.operators import CircularConvOperator, place_stencil
from rnnprobe.report.writer import atomic_path
from rnnprobe.samples import RecurrentNet, TrainedSample, cell_figures, write_json

__all__ = ["ConvOrthogonalNet", "ConvOrthSample", "SAMPLES", "TASK", "SITES"]

SITES = 32
TASK = f"lattice:sites={SITES},length=10,shift=1"


class ConvOrthogonalNet(nn.Module):
    """``h' = tanh(e_conv^G h + W_uh u + b)`` on a ring, ``G = (U - U~)/2`` from a small stencil U.

    The state is C channels on ``sites`` sites (N = C * sites, channel-major);
    inputs (one per site) enter every channel with a per-channel gain, the
    readout reads each site's channels with per-channel weights.
    """

    def __init__(self, sites: int = SITES, channels: int = 4, kernel_size: int = 5):
        super().__init__()
        self.sites, self.channels, self.kernel_size = sites, channels, kernel_size
        self.stencil = nn.Parameter(0.5 * torch.randn(channels, channels, kernel_size))
        self.gain = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.read = nn.Parameter(torch.randn(channels) / channels)
        self.read_bias = nn.Parameter(torch.zeros(()))

    def generator(self) -> torch.Tensor:
        return antisymmetrize(place_stencil(self.stencil, (self.sites,)))

    def canonical(self) -> dict[str, torch.Tensor]:
        """The canonical arrays: the generator and the site-local W_uh, b (per channel), W_r, b_r."""
        eye = torch.eye(self.sites, dtype=self.stencil.dtype)
        return {
            "generator_hh": self.generator(),
            "W_uh": torch.kron(self.gain[:, None], eye),
            "b": self.bias,
            "W_r": torch.kron(self.read[None, :], eye),
            "b_r": self.read_bias.expand(self.sites),
        }

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        c = self.canonical()
        op = CircularConvOperator(conv_exp(c["generator_hh"]), (self.sites,))
        b = c["b"].repeat_interleave(self.sites)
        drive = inputs @ c["W_uh"].T + b
        h = torch.zeros(inputs.shape[0], op.n, dtype=inputs.dtype, device=inputs.device)
        out = []
        for t in range(inputs.shape[1]):
            h = torch.tanh(op.matvec(h) + drive[:, t])
            out.append(h @ c["W_r"].T + c["b_r"])
        return torch.stack(out, dim=1)

    def sidecar(self) -> dict:
        return {
            "architecture": "convolutional orthogonal RNN: tanh(exp_conv(G) h + W_uh u + b), G = (U - U~)/2 "
                            f"antisymmetric ({self.channels} channels, {self.kernel_size}-site stencil)",
            "n_hidden": self.channels * self.sites,
            "n_inputs": self.sites,
            "n_outputs": self.sites,
            "nonlinearity": "tanh",
            "alpha": 1.0,
            "form": "leaky",
            "lattice": str(self.sites),
            "init": "stencil ~ N(0, 0.25), unit gains",
        }


@dataclasses.dataclass(frozen=True)
class ConvOrthSample(TrainedSample):
    """:class:`ConvOrthogonalNet` trained by the registry's loop, saved as a raw-kernel ``.npz``."""

    @property
    def filename(self) -> str:
        return f"{self.name}.npz"

    def write_checkpoint(self, net: nn.Module, meta: dict, path: Path) -> None:
        """The canonical arrays as an npz, and a first sidecar (what the loader needs to read it)."""
        with torch.no_grad():
            arrays = {k: v.detach().clone().contiguous().numpy() for k, v in net.canonical().items()}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        write_json(path.with_name(f"{path.name}.json"), {**meta, "task": self.task})

    def figures(self, net: nn.Module, meta: dict, path: Path) -> dict:
        """Accuracy and FVU of the saved file through rnnprobe's loader, in float64."""
        from rnnprobe.checkpoints import load_checkpoint

        return cell_figures(load_checkpoint(path).cell, self.eval_task())


def _orth(n_inputs: int, n_outputs: int) -> ConvOrthogonalNet:
    return ConvOrthogonalNet(sites=n_inputs)


def _unitary(n_inputs: int, n_outputs: int) -> ConvUnitaryCell:
    return ConvUnitaryCell(str(n_inputs), channels=2, kernel_size=5, n_inputs=n_inputs, n_outputs=n_outputs,
                           nonlinearity="modrelu")


def _dense(n_inputs: int, n_outputs: int) -> RecurrentNet:
    return RecurrentNet("rnn", n_inputs, 4 * SITES, n_outputs, nonlinearity="tanh", orthogonal=True)


SAMPLES = [
    ConvOrthSample(
        name="conv_orth",
        task=TASK,
        network=_orth,
        description="convolutional orthogonal RNN (tanh, W_hh = exp_conv of an antisymmetric 4-channel kernel "
                    "from a 5-site stencil) on a 32-site ring: propagates a +-1 pattern one site per step",
        steps=1000, batch=64, lr=1e-2,
    ),
    TrainedSample(
        name="conv_unitary",
        task=TASK,
        network=_unitary,
        description="convolutional unitary RNN (ConvUnitaryCell: 2 complex channels, e^K of an anti-Hermitian "
                    "kernel from a 5-site stencil, phase-preserving modReLU) on a 32-site ring: propagates a +-1 "
                    "pattern one site per step",
        steps=1000, batch=64, lr=1e-2,
    ),
    TrainedSample(
        name="conv_dense",
        task=TASK,
        network=_dense,
        description="dense tanh nn.RNN, N=128 (the state size of the convolutional samples), orthogonal W_hh "
                    "init: propagates a +-1 pattern one site per step on 32 sites",
        steps=1000, batch=64, lr=3e-3,
    ),
]

