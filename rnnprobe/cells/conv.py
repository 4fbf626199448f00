"""A convolutional unitary RNN (Magnasco 2023, eq. 4.1) as a user-style cell, shipped in rnnprobe.

    Z_{t+1} = phi(e_conv^K Z_t + W_in u_t + b),        y_t = W_r [Re Z_{t+1}, Im Z_{t+1}] + b_r

``Z`` is a complex field of ``C`` channels on a 1-D or 2-D lattice with
circular boundaries. The recurrence is the convolutional exponential of an
anti-Hermitian kernel ``K``, built from a small real stencil ``U`` by
Magnasco's bijection ``K = (U - U~)/2 + i (U + U~)/2`` (``U~``: the stencil
reflected through the origin, channels transposed), so ``e^K`` is unitary
whatever ``U`` is: in Fourier space it multiplies every mode by a phase
(``exp`` of an imaginary symbol; for C channels the matrix exponential of an
anti-Hermitian C x C block). The nonlinearity acts on the modulus only and
keeps the phase (``phi(z) = f(|z|) z / |z|``):

``tanh`` (default)
    ``tanh(|z|) z / |z|``: smooth, a contraction of the modulus.
``modrelu``
    ``relu(|z| + b_c) z / |z|`` with a bias ``b_c = -softplus(beta_c) < 0`` per
    channel (Arjovsky et al. 2016).
``linear``
    ``phi(z) = z``: the linear unitary map.

The state rnnprobe sees is real, ``s = [Re Z, Im Z]`` (``n_state = 2 C prod(L)``;
each half channel-major, as ``reshape(C, *L)`` reads it), so the Cell
interface and every analysis stay real. The inputs and the readout are dense
(``W_in`` complex ``[C prod(L), d_in]``, ``W_r`` real ``[d_out, 2 C prod(L)]``).

``recurrent_operator()`` gives ``e^K`` as a real
:class:`~rnnprobe.operators.CircularConvOperator` on ``[Re Z, Im Z]`` (2C
channels, the realified kernel, with the realified generator): ``rnnprobe
schur`` reports its exact spectrum (on the unit circle), the generator's
anti-Hermitian error and the unitarity error. Load a state dict with
``--cell rnnprobe.cells.conv:ConvUnitaryCell`` and its ``cell_kwargs`` (the
shipped sample's sidecar names both).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnprobe.cells.user import module_outputs
from rnnprobe.numerics.conv import adjoint_kernel, realify
from rnnprobe.operators import CircularConvOperator, format_lattice, from_symbol, parse_lattice, place_stencil, \
    symbol

__all__ = ["ConvUnitaryCell", "NONLINEARITIES"]

NONLINEARITIES = ("tanh", "modrelu", "linear")


def _tanh_ratio(r2: torch.Tensor) -> torch.Tensor:
    """``tanh(r) / r`` as a smooth function of ``r^2`` (its series below r = 1e-3: no 0/0, no NaN gradients)."""
    small = r2 < 1e-6
    safe = torch.where(small, torch.ones_like(r2), r2)
    r = torch.sqrt(safe)
    return torch.where(small, 1.0 - r2 / 3.0 + 2.0 * r2 * r2 / 15.0, torch.tanh(r) / r)


class ConvUnitaryCell(nn.Module):
    """Convolutional unitary RNN on a lattice, complex state as ``[Re Z, Im Z]``.

    Arguments:
        lattice: ``"32"`` (a ring) or ``"16x16"`` (a torus), or a tuple.
        channels: complex channels C.
        kernel_size: side of the real stencil U that parametrises the anti-Hermitian generator.
        n_inputs, n_outputs: input and output widths (0: none).
        nonlinearity: ``tanh``, ``modrelu`` or ``linear`` (phase-preserving; module docstring).
        scale: standard deviation of the initial stencil entries.

    ``step(s, u)``: ``[B, 2 C P]``, ``[B, d_in]`` -> ``[B, 2 C P]``;
    ``readout(s)`` -> ``[B, d_out]``; ``forward(inputs [B, T, d_in])`` -> outputs
    ``[B, T, d_out]`` from the zero state.
    """

    def __init__(self, lattice="32", channels: int = 1, kernel_size: int = 5, n_inputs: int = 0,
                 n_outputs: int = 0, nonlinearity: str = "tanh", scale: float = 0.3):
        super().__init__()
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"ConvUnitaryCell nonlinearity={nonlinearity!r} must be one of "
                             f"{', '.join(NONLINEARITIES)}")
        if channels < 1 or kernel_size < 1 or n_inputs < 0 or n_outputs < 0:
            raise ValueError(f"ConvUnitaryCell needs channels >= 1, kernel_size >= 1 and n_inputs, n_outputs >= 0; "
                             f"got channels={channels}, kernel_size={kernel_size}, n_inputs={n_inputs}, "
                             f"n_outputs={n_outputs}")
        self.lattice = parse_lattice(lattice, what="ConvUnitaryCell lattice")
        self.channels = int(channels)
        self.kernel_size = int(kernel_size)
        self.sites = math.prod(self.lattice)
        self.n_units = self.channels * self.sites
        self.n_state = 2 * self.n_units
        self.n_inputs = int(n_inputs)
        self.n_outputs = int(n_outputs)
        self.nonlinearity = nonlinearity
        self.scale = float(scale)
        nd = len(self.lattice)
        self._dims = tuple(range(-nd, 0))
        self.stencil = nn.Parameter(self.scale * torch.randn(self.channels, self.channels, *(self.kernel_size,) * nd))
        self.input_weight = nn.Parameter(torch.randn(2, self.n_units, self.n_inputs) / math.sqrt(max(1, self.n_inputs)))
        self.bias = nn.Parameter(torch.zeros(2, self.n_units))
        self.beta = nn.Parameter(torch.zeros(self.channels))
        if self.n_outputs:
            self.readout_layer = nn.Linear(self.n_state, self.n_outputs)

    # ---- the recurrence ------------------------------------------------------------
    def generator(self) -> torch.Tensor:
        """The anti-Hermitian lattice kernel ``K = (U - U~)/2 + i (U + U~)/2`` ``[C, C, *L]`` (complex)."""
        U = place_stencil(self.stencil, self.lattice)
        A = adjoint_kernel(U)
        return torch.complex((U - A) / 2, (U + A) / 2)

    def propagator(self) -> torch.Tensor:
        """The symbol of ``e^K`` per frequency, ``[C, C, *L]`` complex (unit modulus for one channel)."""
        nd = len(self.lattice)
        M = symbol(self.generator(), nd)
        if self.channels == 1:
            return torch.exp(M)
        C = self.channels
        B = M.reshape(C, C, -1).permute(2, 0, 1)
        return torch.linalg.matrix_exp(B).permute(1, 2, 0).reshape(C, C, *self.lattice)

    def _phi(self, Z: torch.Tensor) -> torch.Tensor:
        if self.nonlinearity == "linear":
            return Z
        r2 = Z.real * Z.real + Z.imag * Z.imag
        if self.nonlinearity == "tanh":
            return Z * _tanh_ratio(r2)
        b = -nn.functional.softplus(self.beta).reshape(1, self.channels, *([1] * len(self.lattice)))
        r = torch.sqrt(torch.clamp(r2, min=torch.finfo(r2.dtype).tiny))
        return Z * torch.relu(r + b) / r

    def step(self, s: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        B = s.shape[0]
        shape = (B, self.channels, *self.lattice)
        Z = torch.complex(s[:, : self.n_units].reshape(shape), s[:, self.n_units:].reshape(shape))
        E = self.propagator()
        F = torch.fft.fftn(Z, dim=self._dims)
        if self.channels == 1:
            Y = F * E[0, 0]
        else:
            Y = torch.einsum("oi...,bi...->bo...", E, F)
        X = torch.fft.ifftn(Y, dim=self._dims).reshape(B, self.n_units)
        re, im = X.real + self.bias[0], X.imag + self.bias[1]
        if self.n_inputs and u is not None:
            re = re + u @ self.input_weight[0].T
            im = im + u @ self.input_weight[1].T
        Z = self._phi(torch.complex(re, im).reshape(shape)).reshape(B, self.n_units)
        return torch.cat([Z.real, Z.imag], dim=-1)

    def readout(self, s: torch.Tensor) -> torch.Tensor:
        return self.readout_layer(s)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return module_outputs(self, inputs)

    # ---- what analyses read ----------------------------------------------------------
    def recurrent_operator(self) -> CircularConvOperator:
        """``e^K`` as a real 2C-channel circular convolution on ``[Re Z, Im Z]`` (with its realified generator)."""
        with torch.no_grad():
            kernel = from_symbol(self.propagator(), len(self.lattice), real=False)
            return CircularConvOperator(realify(kernel), self.lattice, generator=realify(self.generator()),
                                        construction="exp_conv of an anti-Hermitian generator (complex, realified)",
                                        complex_channels=True)

    def sidecar(self) -> dict:
        """What the state dict does not say: the class and its keyword arguments."""
        return {
            "architecture": f"ConvUnitaryCell: convolutional unitary RNN (Magnasco 2023), {self.nonlinearity} "
                            "phase-preserving nonlinearity",
            "cell": "rnnprobe.cells.conv:ConvUnitaryCell",
            "cell_kwargs": {"lattice": format_lattice(self.lattice), "channels": self.channels,
                            "kernel_size": self.kernel_size, "n_inputs": self.n_inputs, "n_outputs": self.n_outputs,
                            "nonlinearity": self.nonlinearity, "scale": self.scale},
            "lattice": format_lattice(self.lattice),
            "n_hidden": self.n_state,
            "n_inputs": self.n_inputs,
            "n_outputs": self.n_outputs,
        }
