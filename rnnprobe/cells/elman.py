"""Elman / leaky / rate-outside / residual cells: the canonical model of DESIGN.md.

Column-vector convention, for a state h and input u:

    leaky (alpha = 1 is Elman):  h' = (1 - alpha) h + alpha phi(W_hh h + W_uh u + b)
    rate-outside (PsychRNN):     h' = (1 - alpha) h + alpha (W_hh phi(h) + W_uh u + b)
    residual (Euler, eps=alpha): h' = h + alpha phi(W_hh h + W_uh u + b)
    readout:                     y  = W_r h' + b_r

States are batched as rows ([B, N]), so the code multiplies by transposes.
Jacobians are analytic; ``jvp`` never forms J: ``J V = (1-a) V + a phi'(x) * (W_hh V)``.

Every product with W_hh goes through ``cell.op``, a :class:`rnnprobe.operators.Operator`:
a dense matrix (the same GEMMs as always) or a convolution on a lattice
(products by FFT, ``O(N log N)``). ``cell.W_hh`` is the dense matrix; for a
convolution it is built on first use and only for small lattices
(:data:`rnnprobe.operators.DENSE_MAX` units), so analyses that need it work
there and say what to use instead beyond.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch

from rnnprobe.cells.base import Cell, as_tensor, check_finite
from rnnprobe.cells.nonlinearities import get_nonlinearity
from rnnprobe.errors import InputError
from rnnprobe.operators import DenseOperator, Operator

__all__ = ["ElmanCell", "FORMS"]

FORMS = ("leaky", "rate-outside", "residual")


def _left(M: torch.Tensor, Vc: torch.Tensor) -> torch.Tensor:
    """``M @ Vc`` for a stack ``Vc`` [B, N, k] as one GEMM over B*k rows
    (``torch.matmul`` would broadcast M and run B small products)."""
    B, n, k = Vc.shape
    return (Vc.transpose(-1, -2).reshape(B * k, n) @ M.T).reshape(B, k, -1).transpose(-1, -2)


class ElmanCell(Cell):
    """h' = (1 - alpha) h + alpha phi(W_hh h + W_uh u + b) and its two variants.

    Arguments:
        W_hh: [N, N] recurrent weights, or an :class:`~rnnprobe.operators.Operator`
            (e.g. a :class:`~rnnprobe.operators.CircularConvOperator`).
        W_uh: [N, d_in] input weights (d_in may be 0).
        b: [N] bias (zeros if ``None``).
        W_r: [d_out, N] readout (optional), b_r: [d_out].
        alpha: leak in (0, 1] for ``leaky`` and ``rate-outside``; the Euler step
            eps > 0 for ``residual``.
        nonlinearity: tanh, relu, linear, softplus or sigmoid.
        form: ``leaky`` (default), ``rate-outside`` or ``residual``.
    """

    kind: ClassVar[str] = "elman"

    def __init__(
        self,
        W_hh,
        W_uh=None,
        b=None,
        W_r=None,
        b_r=None,
        *,
        alpha: float = 1.0,
        nonlinearity: str = "tanh",
        form: str = "leaky",
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ):
        self.dtype = dtype
        self.device = torch.device(device)
        t = lambda x: None if x is None else as_tensor(x, dtype=dtype, device=self.device, detach=True)  # noqa: E731
        if isinstance(W_hh, Operator):
            op = W_hh.to(dtype=dtype, device=self.device)
            op.check_finite()
        else:
            W_hh = t(W_hh)
            if W_hh.dim() != 2 or W_hh.shape[0] != W_hh.shape[1]:
                raise InputError(f"W_hh must be square [N, N]; got shape {list(W_hh.shape)}")
            op = DenseOperator(W_hh)
        N = op.n
        W_uh = torch.zeros(N, 0, dtype=dtype, device=self.device) if W_uh is None else t(W_uh)
        if W_uh.dim() == 1:
            W_uh = W_uh[:, None]
        if W_uh.dim() != 2 or W_uh.shape[0] != N:
            raise InputError(f"W_uh must be [N={N}, d_in]; got shape {list(W_uh.shape)}")
        b = torch.zeros(N, dtype=dtype, device=self.device) if b is None else t(b).reshape(-1)
        if b.shape != (N,):
            raise InputError(f"b must have N={N} entries; got shape {list(b.shape)}")
        if W_r is not None:
            W_r = t(W_r)
            if W_r.dim() == 1:
                W_r = W_r[None, :]
            if W_r.dim() != 2 or W_r.shape[1] != N:
                raise InputError(f"W_r must be [d_out, N={N}]; got shape {list(W_r.shape)}")
            b_r = torch.zeros(W_r.shape[0], dtype=dtype, device=self.device) if b_r is None else t(b_r).reshape(-1)
            if b_r.shape != (W_r.shape[0],):
                raise InputError(f"b_r must have d_out={W_r.shape[0]} entries; got shape {list(b_r.shape)}")
        elif b_r is not None:
            raise InputError("b_r given without W_r")
        for name, x in (("W_hh", op.W if isinstance(op, DenseOperator) else None), ("W_uh", W_uh), ("b", b),
                        ("W_r", W_r), ("b_r", b_r)):
            if x is not None:
                check_finite(name, x)
        if form not in FORMS:
            raise InputError(f"form {form!r} is not one of {', '.join(FORMS)} (--form)")
        alpha = float(alpha)
        if form == "residual":
            if not (alpha > 0 and alpha < float("inf")):
                raise InputError(f"the residual step eps must be > 0; got {alpha} (--eps / --alpha)")
        elif not (0.0 < alpha <= 1.0):
            raise InputError(f"alpha must be in (0, 1]; got {alpha} (--alpha, or dt/tau)")

        self.op = op
        self.W_uh, self.b, self.W_r, self.b_r = W_uh, b, W_r, b_r
        self.alpha = alpha
        self.form = form
        self.nl = get_nonlinearity(nonlinearity)
        self.nonlinearity = self.nl.name
        self.n_state = self.n_hidden = N
        self.n_inputs = W_uh.shape[1]
        self.n_outputs = 0 if W_r is None else W_r.shape[0]

    @property
    def W_hh(self) -> torch.Tensor:
        """The dense [N, N] W_hh (a convolution's is built on first use, within the dense size limit)."""
        return self.op.dense()

    # ---- construction helpers --------------------------------------------------
    def replace(self, **changes) -> "ElmanCell":
        """A new cell with some parameters replaced (e.g. an ablated ``W_hh``)."""
        kw = dict(
            W_hh=self.op, W_uh=self.W_uh, b=self.b, W_r=self.W_r, b_r=self.b_r,
            alpha=self.alpha, nonlinearity=self.nonlinearity, form=self.form,
            dtype=self.dtype, device=self.device,
        )
        kw.update(changes)
        return ElmanCell(**kw)

    def to(self, dtype=None, device=None) -> "ElmanCell":
        return self.replace(dtype=dtype or self.dtype, device=device or self.device)

    def attrs(self) -> dict:
        out = {
            "cell": self.kind,
            "form": self.form,
            "alpha": self.alpha,
            "nonlinearity": self.nonlinearity,
            "n_hidden": self.n_hidden,
            "n_inputs": self.n_inputs,
            "n_outputs": self.n_outputs,
        }
        if not isinstance(self.op, DenseOperator):
            out.update(self.op.attrs())
        return out

    def arrays(self) -> dict[str, torch.Tensor]:
        out = {**self.op.parameters(), "W_uh": self.W_uh, "b": self.b}
        if self.W_r is not None:
            out.update(W_r=self.W_r, b_r=self.b_r)
        return out

    def matrices(self) -> dict[str, torch.Tensor | None]:
        return {"W_hh": self.W_hh, "W_uh": self.W_uh, "W_r": self.W_r, "b": self.b, "b_r": self.b_r}

    def recurrent_operator(self) -> Operator:
        return self.op

    # ---- dynamics ----------------------------------------------------------------
    def preactivation(self, h: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """The argument of phi: W_hh h + W_uh u + b (leaky, residual) or W_hh phi(h) + ... ."""
        u = self._inputs(u, h.shape[0])
        r = self.nl.phi(h) if self.form == "rate-outside" else h
        return self.op.matvec(r) + u @ self.W_uh.T + self.b

    def step(self, h: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        x = self.preactivation(h, u)
        a = self.alpha
        if self.form == "leaky":
            return self.nl.phi(x) if a == 1.0 else h + a * (self.nl.phi(x) - h)
        if self.form == "rate-outside":
            return (1.0 - a) * h + a * x
        return h + a * self.nl.phi(x)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        if self.W_r is None:
            return super().readout(h)
        return h @ self.W_r.T + self.b_r

    def readout_jacobian(self, s: torch.Tensor) -> torch.Tensor:
        if self.W_r is None:
            return super().readout(s)  # the error that names the missing readout
        return self.W_r.expand(s.shape[0], *self.W_r.shape).clone()

    @property
    def _self_weight(self) -> float:
        """The coefficient of the identity in J: 1 - alpha, or 1 for residual."""
        return 1.0 if self.form == "residual" else 1.0 - self.alpha

    def _gain(self, h: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """phi' at the point where it enters J: of the preactivation, or of h (rate-outside)."""
        if self.form == "rate-outside":
            return self.nl.dphi(h)
        return self.nl.dphi(self.preactivation(h, u))

    def jacobian(self, h: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        h = as_tensor(h, dtype=self.dtype, device=self.device)
        return self.jacobian_from_gain(self._gain(h, u))

    def jacobian_from_gain(self, d: torch.Tensor) -> torch.Tensor:
        """``J`` [B, N, N] from the gains ``d`` [B, N] (:meth:`_gain`): J is linear in phi'."""
        if self.form == "rate-outside":
            J = self.alpha * self.W_hh[None] * d[:, None, :]
        else:
            J = self.alpha * d[:, :, None] * self.W_hh[None]
        idx = torch.arange(self.n_state, device=self.device)
        J[:, idx, idx] += self._self_weight
        return J

    def input_jacobian(self, h: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        h = as_tensor(h, dtype=self.dtype, device=self.device)
        if self.form == "rate-outside":
            return (self.alpha * self.W_uh).expand(h.shape[0], -1, -1).clone()
        d = self._gain(h, u)
        return self.alpha * d[:, :, None] * self.W_uh[None]

    def _apply_J(self, d: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        col = V.dim() == 3
        Vc = V if col else V[:, :, None]
        dd = d[:, :, None]
        if self.form == "rate-outside":
            out = self.alpha * self.op.mat_cols(dd * Vc)
        else:
            out = self.alpha * dd * self.op.mat_cols(Vc)
        if self._self_weight != 0.0:
            out = out + self._self_weight * Vc
        return out if col else out[:, :, 0]

    def jvp(self, h: torch.Tensor, u: torch.Tensor | None, V: torch.Tensor) -> torch.Tensor:
        h = as_tensor(h, dtype=self.dtype, device=self.device)
        return self._apply_J(self._gain(h, u), V)

    def vjp(self, h: torch.Tensor, u: torch.Tensor | None, V: torch.Tensor) -> torch.Tensor:
        h = as_tensor(h, dtype=self.dtype, device=self.device)
        d = self._gain(h, u)
        col = V.dim() == 3
        Vc = V if col else V[:, :, None]
        dd = d[:, :, None]
        if self.form == "rate-outside":
            out = dd * self.op.rmat_cols(Vc)
        else:
            out = self.op.rmat_cols(dd * Vc)
        if self.alpha != 1.0:
            out = self.alpha * out
        if self._self_weight != 0.0:
            out = out + self._self_weight * Vc
        return out if col else out[:, :, 0]

    # ---- the residual G(h) = F(h, u) - h, for root finding -------------------------
    # F(h) - h directly, with the input's share of the preactivation computed once per
    # solve: fewer passes over the batch than step(h, u) - h and its pullback (the fixed-point
    # solver evaluates these a few hundred times per call)
    def drive(self, u: torch.Tensor | None = None) -> torch.Tensor:
        """``W_uh u + b``: [N] without input, [B, N] for inputs [B, d] (one per row), [N] for [d]."""
        if u is None:
            return self.b
        u = as_tensor(u, dtype=self.dtype, device=self.device)
        rows = self._inputs(u[None] if u.dim() == 1 else u, 1 if u.dim() == 1 else u.shape[0])
        out = torch.addmm(self.b, rows, self.W_uh.T)
        return out[0] if u.dim() == 1 else out

    def _residual_from(self, h: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``F - h`` from ``p = phi(W h + drive)``: ``a (p - h)`` (leaky) or ``a p`` (residual)."""
        a = self.alpha
        if self.form == "residual":
            return p * a if a != 1.0 else p.clone()
        g = p - h
        return g.mul_(a) if a != 1.0 else g

    def residual(self, h: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
        """``G(h) = F(h, u) - h`` for rows ``h [B, N]``, ``drive`` = :meth:`drive` of ``u``."""
        if self.form == "rate-outside":  # F - h = a (W phi(h) + drive - h)
            g = self.op.matvec_add(self.nl.phi(h), drive).sub_(h)
            return g.mul_(self.alpha) if self.alpha != 1.0 else g
        return self._residual_from(h, self.nl.phi(self.op.matvec_add(h, drive)))

    def residual_and_gradient(self, h: torch.Tensor, drive: torch.Tensor):
        """``(G, (J - I)^T G)``: the residual and the gradient of ``1/2 ||G||^2``, one product with W each way."""
        a, nl = self.alpha, self.nl
        if self.form == "rate-outside":  # J - I = a (W diag(phi'(h)) - I)
            g = self.residual(h, drive)
            grad = self.op.rmatvec(g).mul_(nl.dphi(h)).sub_(g)
            return g, grad.mul_(a) if a != 1.0 else grad
        y = self.op.matvec_add(h, drive)
        p = nl.phi(y)
        d = nl.dphi_from_output(p) if nl.dphi_from_output is not None else nl.dphi(y)
        g = self._residual_from(h, p)
        # J - I = (sw - 1) I + a diag(phi') W, so (J - I)^T G = (sw - 1) G + a W^T (phi' G)
        return g, self.op.rmatvec_add(d.mul_(g), g, alpha=a, beta=self._self_weight - 1.0)

    def residual_jacobian(self, h: torch.Tensor, drive: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``v -> (J - I) v`` at the rows ``h [B, N]`` for ``v [B, N]``; phi' computed once."""
        a, shift = self.alpha, self._self_weight - 1.0
        if self.form == "rate-outside":  # (J - I) v = a (W (phi'(h) v) - v)
            d = self.nl.dphi(h)

            def apply(v):
                out = self.op.matvec(d * v).sub_(v)
                return out.mul_(a) if a != 1.0 else out

            return apply
        ad = self.nl.dphi(self.op.matvec_add(h, drive))
        if a != 1.0:
            ad.mul_(a)

        def apply(v):  # a diag(phi') W v + (sw - 1) v
            out = self.op.matvec(v).mul_(ad)
            return out.add_(v, alpha=shift) if shift != 0.0 else out

        return apply

    def step_and_jvp(self, h: torch.Tensor, u: torch.Tensor | None, V: torch.Tensor):
        """``(F(h, u), J V)``: the state rides in the same GEMM as the tangent columns."""
        h = as_tensor(h, dtype=self.dtype, device=self.device)
        col = V.dim() == 3
        Vc = V if col else V[:, :, None]
        drive = self._inputs(u, h.shape[0]) @ self.W_uh.T + self.b
        a, nl = self.alpha, self.nl
        if self.form == "rate-outside":
            d = nl.dphi(h)
            Y = self.op.mat_cols(torch.cat([nl.phi(h)[:, :, None], d[:, :, None] * Vc], dim=2))
            h_next = (1.0 - a) * h + a * (Y[:, :, 0] + drive)
            JV = a * Y[:, :, 1:]
        else:
            Y = self.op.mat_cols(torch.cat([h[:, :, None], Vc], dim=2))
            x = Y[:, :, 0] + drive
            p = nl.phi(x)
            d = nl.dphi_from_output(p) if nl.dphi_from_output is not None else nl.dphi(x)
            if self.form == "leaky":
                h_next = p if a == 1.0 else h + a * (p - h)
            else:
                h_next = h + a * p
            JV = (a * d)[:, :, None] * Y[:, :, 1:]
        if self._self_weight != 0.0:
            JV = JV + self._self_weight * Vc
        return h_next, (JV if col else JV[:, :, 0])

    def rollout(self, h0: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        inputs = as_tensor(inputs, dtype=self.dtype, device=self.device)
        if inputs.dim() != 3 or inputs.shape[-1] != self.n_inputs:
            raise InputError(f"inputs must be [batch, time, {self.n_inputs}]; got shape {list(inputs.shape)}")
        h = as_tensor(h0, dtype=self.dtype, device=self.device)
        if h.dim() == 1:
            h = h.expand(inputs.shape[0], self.n_state)
        # the input drive of every step in one product
        drive = inputs @ self.W_uh.T + self.b
        out = torch.empty(inputs.shape[0], inputs.shape[1], self.n_state, dtype=self.dtype, device=self.device)
        mv, a, phi = self.op.matvec, self.alpha, self.nl.phi
        for t in range(inputs.shape[1]):
            if self.form == "leaky":
                p = phi(mv(h) + drive[:, t])
                h = p if a == 1.0 else h + a * (p - h)
            elif self.form == "rate-outside":
                h = (1.0 - a) * h + a * (mv(phi(h)) + drive[:, t])
            else:
                h = h + a * phi(mv(h) + drive[:, t])
            out[:, t] = h
        return out

    def describe(self) -> str:
        form = {"leaky": "leaky" if self.alpha != 1.0 else "Elman", "rate-outside": "rate-outside",
                "residual": "residual (Euler)"}[self.form]
        a = f", alpha={self.alpha:g}" if self.form != "residual" else f", eps={self.alpha:g}"
        rec = "" if isinstance(self.op, DenseOperator) else f", W_hh {self.op.describe_short()}"
        return (f"{form} {self.nonlinearity} RNN, N={self.n_hidden}, {self.n_inputs} inputs, {self.n_outputs} "
                f"outputs{a}{rec}")
