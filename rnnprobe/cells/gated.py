"""GRU and LSTM cells with torch's gate layout and equations.

Weights are as ``nn.GRU`` / ``nn.LSTM`` store them (column-vector convention):
``W_ih`` [G*N, d_in], ``W_hh`` [G*N, N], ``b_ih``, ``b_hh`` [G*N], gates stacked
(r, z, n) for the GRU and (i, f, g, o) for the LSTM. The LSTM state is the
concatenation ``[h, c]`` (n_state = 2N); its readout reads ``h``.

Jacobians, Jacobian-vector and vector-Jacobian products are analytic: with the
pre-activations ``a = W_ih u + b_ih + W_hh h + b_hh`` stacked by gate, every
derivative of the update is ``sum_k diag(A_k) W_k`` plus diagonal terms, where
``W_k`` is gate k's block of ``W_hh`` (or ``W_ih`` for dF/du) and ``A_k`` [B, N]
a per-state coefficient (:meth:`GRUCell._parts`, :meth:`LSTMCell._parts`). So
``J V`` and ``J^T V`` are one product with the stacked ``W_hh`` each, and ``J``
is assembled from the gate blocks without ``torch.func`` (whose ``jacrev`` costs
about a second of imports on a cold start). tests/test_cells.py compares all of
them with ``torch.func`` on the cell's ``step``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from rnnprobe.cells.base import Cell, as_tensor, check_finite
from rnnprobe.errors import InputError

__all__ = ["GRUCell", "LSTMCell"]


def _assemble(A: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``sum_k diag(A[:, k]) W_k``: ``A`` [B, G, N], ``W`` [G*N, M] (gate blocks W_k [N, M]) -> [B, N, M]."""
    G, N = A.shape[1], A.shape[2]
    return torch.einsum("bgn,gnm->bnm", A, W.reshape(G, N, W.shape[1]))


def _apply(A: torch.Tensor, W: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``sum_k A[:, k] * (W_k V)`` for ``V`` [B, M] or [B, M, k]: one product with the stacked ``W``."""
    B, G, N = A.shape
    if V.dim() == 2:
        return (A * (V @ W.T).reshape(B, G, N)).sum(1)
    return (A[..., None] * torch.matmul(W, V).reshape(B, G, N, V.shape[2])).sum(1)


def _pull(A: torch.Tensor, W: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``sum_k W_k^T (A[:, k] * V)`` for ``V`` [B, N] or [B, N, k]: one product with the stacked ``W``."""
    B, G, N = A.shape
    if V.dim() == 2:
        return (A * V[:, None, :]).reshape(B, G * N) @ W
    return torch.matmul(W.T, (A[..., None] * V[:, None]).reshape(B, G * N, V.shape[2]))


def _col(d: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """A per-state diagonal ``d`` [B, N] times ``V`` [B, N] or [B, N, k]."""
    return d * V if V.dim() == 2 else d[..., None] * V


class _Gated(Cell):
    gates: ClassVar[int]
    gate_names: ClassVar[str]

    def __init__(self, W_ih, W_hh, b_ih=None, b_hh=None, W_r=None, b_r=None, *,
                 dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"):
        self.dtype = dtype
        self.device = torch.device(device)
        t = lambda x: None if x is None else as_tensor(x, dtype=dtype, device=self.device, detach=True)  # noqa: E731
        W_ih, W_hh = t(W_ih), t(W_hh)
        G = self.gates
        if W_hh.dim() != 2 or W_hh.shape[0] != G * W_hh.shape[1]:
            raise InputError(
                f"{self.kind} weight_hh must be [{G}*N, N] (gates {self.gate_names}); got shape {list(W_hh.shape)}"
            )
        N = W_hh.shape[1]
        if W_ih is None:
            W_ih = torch.zeros(G * N, 0, dtype=dtype, device=self.device)
        if W_ih.dim() != 2 or W_ih.shape[0] != G * N:
            raise InputError(f"{self.kind} weight_ih must be [{G}*N={G * N}, d_in]; got shape {list(W_ih.shape)}")
        zeros = torch.zeros(G * N, dtype=dtype, device=self.device)
        b_ih = zeros if b_ih is None else t(b_ih).reshape(-1)
        b_hh = zeros if b_hh is None else t(b_hh).reshape(-1)
        for name, x in (("bias_ih", b_ih), ("bias_hh", b_hh)):
            if x.shape != (G * N,):
                raise InputError(f"{self.kind} {name} must have {G}*N={G * N} entries; got shape {list(x.shape)}")
        if W_r is not None:
            W_r = t(W_r)
            if W_r.dim() != 2 or W_r.shape[1] != N:
                raise InputError(f"W_r must be [d_out, N={N}]; got shape {list(W_r.shape)}")
            b_r = torch.zeros(W_r.shape[0], dtype=dtype, device=self.device) if b_r is None else t(b_r).reshape(-1)
            if b_r.shape != (W_r.shape[0],):
                raise InputError(f"b_r must have d_out={W_r.shape[0]} entries; got shape {list(b_r.shape)}")
        for name, x in (("weight_ih", W_ih), ("weight_hh", W_hh), ("bias_ih", b_ih), ("bias_hh", b_hh),
                        ("W_r", W_r), ("b_r", b_r)):
            if x is not None:
                check_finite(name, x)
        self.W_ih, self.W_hh, self.b_ih, self.b_hh, self.W_r, self.b_r = W_ih, W_hh, b_ih, b_hh, W_r, b_r
        self.n_hidden = N
        self.n_inputs = W_ih.shape[1]
        self.n_outputs = 0 if W_r is None else W_r.shape[0]

    def to(self, dtype=None, device=None):
        return type(self)(self.W_ih, self.W_hh, self.b_ih, self.b_hh, self.W_r, self.b_r,
                          dtype=dtype or self.dtype, device=device or self.device)

    def attrs(self) -> dict:
        return {"cell": self.kind, "n_hidden": self.n_hidden, "n_state": self.n_state,
                "n_inputs": self.n_inputs, "n_outputs": self.n_outputs, "gates": self.gate_names}

    def arrays(self) -> dict[str, torch.Tensor]:
        out = {"weight_ih": self.W_ih, "weight_hh": self.W_hh, "bias_ih": self.b_ih, "bias_hh": self.b_hh}
        if self.W_r is not None:
            out.update(W_r=self.W_r, b_r=self.b_r)
        return out

    def readout(self, s: torch.Tensor) -> torch.Tensor:
        if self.W_r is None:
            return super().readout(s)
        return self.hidden(s) @ self.W_r.T + self.b_r

    def readout_jacobian(self, s: torch.Tensor) -> torch.Tensor:
        if self.W_r is None:
            return super().readout(s)  # the error that names the missing readout
        R = torch.zeros(s.shape[0], self.n_outputs, self.n_state, dtype=self.dtype, device=self.device)
        R[:, :, : self.n_hidden] = self.W_r  # the readout reads h (LSTM: the first half of [h, c])
        return R

    def describe(self) -> str:
        return f"{self.kind.upper()} N={self.n_hidden} (state {self.n_state}), {self.n_inputs} inputs, {self.n_outputs} outputs"


class GRUCell(_Gated):
    """torch's GRU: r, z = sigma(.), n = tanh(W_in u + b_in + r (W_hn h + b_hn)), h' = (1-z) n + z h."""

    kind: ClassVar[str] = "gru"
    gates = 3
    gate_names = "r,z,n"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.n_state = self.n_hidden

    def _gates(self, h: torch.Tensor, u: torch.Tensor | None):
        """``(r, z, n, h_n)``: the gates and ``W_hn h + b_hn``."""
        u = self._inputs(u, h.shape[0])
        i_r, i_z, i_n = (u @ self.W_ih.T + self.b_ih).chunk(3, dim=-1)
        h_r, h_z, h_n = (h @ self.W_hh.T + self.b_hh).chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        return r, z, torch.tanh(i_n + r * h_n), h_n

    def step(self, h: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        _, z, n, _ = self._gates(h, u)
        return (1.0 - z) * n + z * h

    def _parts(self, h: torch.Tensor, u: torch.Tensor | None):
        """``(F, z, A_h, A_u)``: the update, and ``dF/dh = diag(z) + sum_k diag(A_h[:, k]) W_hk``,
        ``dF/du = sum_k diag(A_u[:, k]) W_ik`` over the gates (r, z, n)."""
        h = as_tensor(h, dtype=self.dtype, device=self.device)
        r, z, n, h_n = self._gates(h, u)
        F = (1.0 - z) * n + z * h
        dn = (1.0 - z) * (1.0 - n * n)  # dF / d(pre-activation of n)
        a_r = dn * h_n * r * (1.0 - r)  # through r, which multiplies W_hn h + b_hn
        a_z = (h - n) * z * (1.0 - z)
        return F, z, torch.stack([a_r, a_z, dn * r], dim=1), torch.stack([a_r, a_z, dn], dim=1)

    def jacobian(self, s: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        _, z, A, _ = self._parts(s, u)
        return _assemble(A, self.W_hh) + torch.diag_embed(z)

    def input_jacobian(self, s: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        return _assemble(self._parts(s, u)[3], self.W_ih)

    def step_and_jvp(self, s: torch.Tensor, u: torch.Tensor | None, V: torch.Tensor):
        F, z, A, _ = self._parts(s, u)
        return F, _col(z, V) + _apply(A, self.W_hh, V)

    def jvp(self, s: torch.Tensor, u: torch.Tensor | None, V: torch.Tensor) -> torch.Tensor:
        return self.step_and_jvp(s, u, V)[1]

    def vjp(self, s: torch.Tensor, u: torch.Tensor | None, V: torch.Tensor) -> torch.Tensor:
        _, z, A, _ = self._parts(s, u)
        return _col(z, V) + _pull(A, self.W_hh, V)

    def step_and_vjp(self, s: torch.Tensor, u: torch.Tensor | None = None):
        F, z, A, _ = self._parts(s, u)
        return F, lambda v: _col(z, v) + _pull(A, self.W_hh, v)


class LSTMCell(_Gated):
    """torch's LSTM on the state [h, c]: c' = f c + i g, h' = o tanh(c')."""

    kind: ClassVar[str] = "lstm"
    gates = 4
    gate_names = "i,f,g,o"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.n_state = 2 * self.n_hidden

    def hidden(self, s: torch.Tensor) -> torch.Tensor:
        return s[..., : self.n_hidden]

    def _gates(self, s: torch.Tensor, u: torch.Tensor | None):
        """``(si, sf, so, tg, c, c')``: the gates' sigmoids, tanh of g, the cell state and its update."""
        u = self._inputs(u, s.shape[0])
        N = self.n_hidden
        h, c = s[..., :N], s[..., N:]
        a_i, a_f, a_g, a_o = (u @ self.W_ih.T + self.b_ih + h @ self.W_hh.T + self.b_hh).chunk(4, dim=-1)
        si, sf, so, tg = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.sigmoid(a_o), torch.tanh(a_g)
        return si, sf, so, tg, c, sf * c + si * tg

    def step(self, s: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        _, _, so, _, _, c_new = self._gates(s, u)
        return torch.cat([so * torch.tanh(c_new), c_new], dim=-1)

    def _parts(self, s: torch.Tensor, u: torch.Tensor | None):
        """``(F, A_h, A_c, d_hc, d_cc)`` with, over the gates (i, f, g, o),
        ``dh'/dh = sum_k diag(A_h[:, k]) W_hk``, ``dc'/dh = sum_k diag(A_c[:, k]) W_hk``,
        ``dh'/dc = diag(d_hc)``, ``dc'/dc = diag(d_cc)`` (and the same with ``W_ik`` for d/du)."""
        s = as_tensor(s, dtype=self.dtype, device=self.device)
        si, sf, so, tg, c, c_new = self._gates(s, u)
        tc = torch.tanh(c_new)
        F = torch.cat([so * tc, c_new], dim=-1)
        gam = so * (1.0 - tc * tc)  # dh'/dc'
        A_c = torch.stack([tg * si * (1.0 - si), c * sf * (1.0 - sf), si * (1.0 - tg * tg),
                           torch.zeros_like(tc)], dim=1)
        A_h = torch.cat([gam[:, None] * A_c[:, :3], (tc * so * (1.0 - so))[:, None]], dim=1)
        return F, A_h, A_c, gam * sf, sf

    def jacobian(self, s: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        _, A_h, A_c, d_hc, d_cc = self._parts(s, u)
        top = torch.cat([_assemble(A_h, self.W_hh), torch.diag_embed(d_hc)], dim=2)
        bottom = torch.cat([_assemble(A_c, self.W_hh), torch.diag_embed(d_cc)], dim=2)
        return torch.cat([top, bottom], dim=1)

    def input_jacobian(self, s: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        _, A_h, A_c, _, _ = self._parts(s, u)
        return torch.cat([_assemble(A_h, self.W_ih), _assemble(A_c, self.W_ih)], dim=1)

    def step_and_jvp(self, s: torch.Tensor, u: torch.Tensor | None, V: torch.Tensor):
        F, A_h, A_c, d_hc, d_cc = self._parts(s, u)
        N = self.n_hidden
        vh, vc = V[:, :N], V[:, N:]
        return F, torch.cat([_apply(A_h, self.W_hh, vh) + _col(d_hc, vc),
                             _apply(A_c, self.W_hh, vh) + _col(d_cc, vc)], dim=1)

    def jvp(self, s: torch.Tensor, u: torch.Tensor | None, V: torch.Tensor) -> torch.Tensor:
        return self.step_and_jvp(s, u, V)[1]

    def _pullback(self, A_h, A_c, d_hc, d_cc, V: torch.Tensor) -> torch.Tensor:
        N = self.n_hidden
        wh, wc = V[:, :N], V[:, N:]
        # J^T [wh; wc]: dh'/dh and dc'/dh pull through W_hh in one product, the c rows are diagonal
        if wh.dim() == 2:
            top = (A_h * wh[:, None] + A_c * wc[:, None]).reshape(wh.shape[0], -1) @ self.W_hh
        else:
            X = A_h[..., None] * wh[:, None] + A_c[..., None] * wc[:, None]
            top = torch.matmul(self.W_hh.T, X.reshape(wh.shape[0], -1, wh.shape[2]))
        return torch.cat([top, _col(d_hc, wh) + _col(d_cc, wc)], dim=1)

    def vjp(self, s: torch.Tensor, u: torch.Tensor | None, V: torch.Tensor) -> torch.Tensor:
        return self._pullback(*self._parts(s, u)[1:], V)

    def step_and_vjp(self, s: torch.Tensor, u: torch.Tensor | None = None):
        F, *parts = self._parts(s, u)
        return F, lambda v: self._pullback(*parts, v)
