"""The one interface every recurrent system in rnnprobe implements.

A cell is a discrete-time map on a state of ``n_state`` numbers,

    s_{t+1} = F(s_t, u_t),      y_t = readout(s_{t+1}),

batched along the first axis. Every analysis consumes this interface only:

``step(s, u)``
    ``s`` [B, n_state], ``u`` [B, n_inputs] (or ``None`` for zero input, or
    [n_inputs] broadcast over the batch) -> [B, n_state].
``rollout(s0, inputs)``
    ``s0`` [B, n_state], ``inputs`` [B, T, n_inputs] -> states [B, T, n_state],
    the state *after* each step (so ``readout(states)`` are the outputs y_t).
``readout(s)``
    [..., n_state] -> [..., n_outputs].
``jacobian(s, u)``
    dF/ds at a batch of states: [B, n_state, n_state], ``J[b, i, j] = dF_i/ds_j``.
``input_jacobian(s, u)``
    dF/du: [B, n_state, n_inputs].
``jvp(s, u, V)``
    J V without forming J: ``V`` [B, n_state] or [B, n_state, k].
``vjp(s, u, V)``
    J^T V, same shapes as ``jvp``.
``hidden(s)``
    the hidden part of a state (``h`` of an LSTM's ``[h, c]``), [..., n_hidden].
``matrices()``
    ``{"W_hh", "W_uh", "W_r", "b", "b_r"}`` as tensors, for cells that have one
    recurrent matrix; gated and user cells raise :class:`NoRecurrentMatrix`.
``recurrent_operator()``
    W_hh as an :class:`rnnprobe.operators.Operator` (dense, or a convolution
    on a lattice whose products cost O(N log N)); raises like ``matrices()``.
``to(dtype=..., device=...)``
    a copy on another dtype / device.

Subclasses implement ``step`` (and ``readout`` when they have one); the
Jacobians default to ``torch.func`` and are overridden where an analytic form
is cheaper (Elman cells).
"""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np
import torch

from rnnprobe.errors import InputError

__all__ = ["Cell", "NoRecurrentMatrix", "check_finite", "as_tensor"]


class NoRecurrentMatrix(InputError):
    """Raised by ``Cell.matrices()`` for cells without a single W_hh."""


def as_tensor(x, *, dtype: torch.dtype, device: torch.device | str, detach: bool = False) -> torch.Tensor:
    """``x`` (array, tensor or number) as a tensor of ``dtype`` on ``device``.

    Tensors keep their autograd / torch.func tracing unless ``detach`` (used for
    parameters, which rnnprobe never differentiates with respect to)."""
    if isinstance(x, torch.Tensor):
        x = x.detach() if detach else x
        return x.to(dtype=dtype, device=device)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise InputError naming ``name``, its shape and the first non-finite index."""
    # any NaN or inf makes the sum non-finite: one cheap reduction for the usual case
    if bool(torch.isfinite(x.sum())):
        return
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite)[0].tolist()
        value = x[tuple(bad)].item()
        raise InputError(
            f"{name} (shape {list(x.shape)}) has a non-finite value {value} at index {tuple(bad)}; "
            "the checkpoint's weights are corrupt or training diverged"
        )


class Cell(abc.ABC):
    """Abstract recurrent cell; see the module docstring for the whole API."""

    kind: ClassVar[str] = "cell"

    n_state: int
    n_hidden: int
    n_inputs: int
    n_outputs: int
    dtype: torch.dtype
    device: torch.device

    # ---- what each cell provides -------------------------------------------------
    @abc.abstractmethod
    def step(self, s: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """One step of the map: [B, n_state] -> [B, n_state]."""

    @abc.abstractmethod
    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "Cell":
        """A copy of the cell with its parameters on ``dtype`` / ``device``."""

    @abc.abstractmethod
    def attrs(self) -> dict:
        """Scalar attributes that describe the cell (stored on the report's /model)."""

    @abc.abstractmethod
    def arrays(self) -> dict[str, torch.Tensor]:
        """The cell's parameters under their canonical names (stored on /model)."""

    def readout(self, s: torch.Tensor) -> torch.Tensor:
        """Outputs for states ``s`` [..., n_state] -> [..., n_outputs]."""
        raise InputError(
            f"this {self.kind} cell has no readout; give the readout's key with --readout KEY "
            "or --key W_r=..."
        )

    def readout_jacobian(self, s: torch.Tensor) -> torch.Tensor:
        """d(readout)/ds at each state: [B, n_outputs, S] (``torch.func`` here; cells with a linear
        readout override it)."""
        s = as_tensor(s, dtype=self.dtype, device=self.device)

        def one(si):
            return self.readout(si[None])[0]

        return torch.func.vmap(torch.func.jacrev(one))(s)

    @property
    def has_readout(self) -> bool:
        return self.n_outputs > 0

    def matrices(self) -> dict[str, torch.Tensor | None]:
        raise NoRecurrentMatrix(
            f"a {self.kind} cell has no single recurrent matrix W_hh: its recurrence is gated "
            "(or defined by user code), so this analysis, which needs one W_hh, does not apply; "
            "use fixedpoints, lyapunov or equivariance, which work through the cell's Jacobians"
        )

    def recurrent_operator(self):
        """W_hh as an :class:`rnnprobe.operators.Operator` (the dense ``matrices()["W_hh"]`` by default)."""
        from rnnprobe.operators import DenseOperator

        return DenseOperator(self.matrices()["W_hh"])

    def hidden(self, s: torch.Tensor) -> torch.Tensor:
        """The hidden part of a state (all of it, except for LSTM's [h, c])."""
        return s

    # ---- shared machinery ---------------------------------------------------------
    def _inputs(self, u: torch.Tensor | None, batch: int) -> torch.Tensor:
        if u is None:
            return torch.zeros(batch, self.n_inputs, dtype=self.dtype, device=self.device)
        u = as_tensor(u, dtype=self.dtype, device=self.device)
        if u.shape[-1] != self.n_inputs:
            raise InputError(
                f"input has width {u.shape[-1]} (shape {list(u.shape)}) but the model takes "
                f"{self.n_inputs} inputs"
            )
        if u.dim() == 1:
            u = u.expand(batch, self.n_inputs)
        return u

    def initial_state(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, self.n_state, dtype=self.dtype, device=self.device)

    def rollout(self, s0: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """States after each step: ``s0`` [B, S], ``inputs`` [B, T, d] -> [B, T, S]."""
        inputs = as_tensor(inputs, dtype=self.dtype, device=self.device)
        if inputs.dim() != 3 or inputs.shape[-1] != self.n_inputs:
            raise InputError(
                f"inputs must be [batch, time, {self.n_inputs}]; got shape {list(inputs.shape)}"
            )
        s = as_tensor(s0, dtype=self.dtype, device=self.device)
        if s.dim() == 1:
            s = s.expand(inputs.shape[0], self.n_state)
        out = torch.empty(inputs.shape[0], inputs.shape[1], self.n_state, dtype=self.dtype, device=self.device)
        for t in range(inputs.shape[1]):
            s = self.step(s, inputs[:, t])
            out[:, t] = s
        return out

    def autonomous(self, s0: torch.Tensor, steps: int) -> torch.Tensor:
        """Zero-input rollout: [B, S] -> [B, steps, S]."""
        zeros = torch.zeros(s0.shape[0], steps, self.n_inputs, dtype=self.dtype, device=self.device)
        return self.rollout(s0, zeros)

    def jacobian(self, s: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """dF/ds at each state: [B, S, S] with ``J[b, i, j] = dF_i / ds_j``."""
        s = as_tensor(s, dtype=self.dtype, device=self.device)
        u = self._inputs(u, s.shape[0])

        def one(si, ui):
            return self.step(si[None], ui[None])[0]

        return torch.func.vmap(torch.func.jacrev(one, argnums=0))(s, u)

    def input_jacobian(self, s: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """dF/du at each state: [B, S, n_inputs]."""
        s = as_tensor(s, dtype=self.dtype, device=self.device)
        u = self._inputs(u, s.shape[0])
        if self.n_inputs == 0:
            return torch.zeros(s.shape[0], self.n_state, 0, dtype=self.dtype, device=self.device)

        def one(si, ui):
            return self.step(si[None], ui[None])[0]

        return torch.func.vmap(torch.func.jacrev(one, argnums=1))(s, u)

    def jvp(self, s: torch.Tensor, u: torch.Tensor | None, V: torch.Tensor) -> torch.Tensor:
        """J V for V [B, S] or [B, S, k], without forming J."""
        s = as_tensor(s, dtype=self.dtype, device=self.device)
        u = self._inputs(u, s.shape[0])
        if V.dim() == 3:
            # rows of a batch are independent: fold the k columns into the batch, one jvp call
            B, S, k = V.shape
            Vb = V.permute(0, 2, 1).reshape(B * k, S)
            out = self.jvp(s.repeat_interleave(k, dim=0), u.repeat_interleave(k, dim=0), Vb)
            return out.reshape(B, k, S).permute(0, 2, 1)
        return torch.func.jvp(lambda x: self.step(x, u), (s,), (V,))[1]

    def vjp(self, s: torch.Tensor, u: torch.Tensor | None, V: torch.Tensor) -> torch.Tensor:
        """J^T V for V [B, S] or [B, S, k]."""
        s = as_tensor(s, dtype=self.dtype, device=self.device)
        u = self._inputs(u, s.shape[0])
        _, pullback = torch.func.vjp(lambda x: self.step(x, u), s)

        def single(v):
            return pullback(v)[0]

        if V.dim() == 2:
            return single(V)
        return torch.func.vmap(single, in_dims=2, out_dims=2)(V)

    def step_and_jvp(self, s: torch.Tensor, u: torch.Tensor | None, V: torch.Tensor):
        """``(F(s, u), J V)`` in one pass where the cell can share work."""
        s = as_tensor(s, dtype=self.dtype, device=self.device)
        return self.step(s, u), self.jvp(s, u, V)

    def step_and_vjp(self, s: torch.Tensor, u: torch.Tensor | None = None):
        """``(F(s, u), pullback)`` with ``pullback(v) = J^T v`` for ``v`` [B, S], for a cotangent
        that depends on F itself (the gradient of ``q = 1/2 ||F(s) - s||^2``); one forward pass.

        Here by autograd (``torch.func.vjp`` would import torch._dynamo: seconds on a cold start);
        cells with analytic Jacobians override it.
        """
        s = as_tensor(s, dtype=self.dtype, device=self.device)
        with torch.enable_grad():
            sg = s.detach().requires_grad_(True)
            F = self.step(sg, u)

        def pullback(v: torch.Tensor) -> torch.Tensor:
            return torch.autograd.grad(F, sg, v, retain_graph=True)[0]

        return F.detach(), pullback

    def describe(self) -> str:
        return f"{self.kind} cell, {self.n_state} state units, {self.n_inputs} inputs, {self.n_outputs} outputs"
