"""GRU and LSTM cells with torch's gate layout and equations.

Weights are as ``nn.GRU`` / ``nn.LSTM`` store them (column-vector convention):
``W_ih`` [G*N, d_in], ``W_hh`` [G*N, N], ``b_ih``, ``b_hh`` [G*N], gates stacked
(r, z, n) for the GRU and (i, f, g, o) for the LSTM. The LSTM state is the
concatenation ``[h, c]`` (n_state = 2N); its readout reads ``h``.
Jacobians come from ``torch.func`` (the base class).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from rnnprobe.cells.base import Cell, as_tensor, check_finite
from rnnprobe.errors import InputError

__all__ = ["GRUCell", "LSTMCell"]


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

    def step(self, h: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        u = self._inputs(u, h.shape[0])
        gi = u @ self.W_ih.T + self.b_ih
        gh = h @ self.W_hh.T + self.b_hh
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1.0 - z) * n + z * h


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

    def step(self, s: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        u = self._inputs(u, s.shape[0])
        N = self.n_hidden
        h, c = s[..., :N], s[..., N:]
        g_all = u @ self.W_ih.T + self.b_ih + h @ self.W_hh.T + self.b_hh
        i, f, g, o = g_all.chunk(4, dim=-1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        return torch.cat([h_new, c_new], dim=-1)
