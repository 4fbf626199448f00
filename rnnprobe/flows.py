"""The continuous-time flow behind a discrete recurrent map, in the model's time units.

Every cell of the canonical model is one explicit Euler step of a vector
field ``f`` with step ``dt`` (the time per step):

    leaky         h' = h + alpha (phi(W h + U u + b) - h)   f = (phi(W h + U u + b) - h) / tau,  tau = dt / alpha
    rate-outside  h' = h + alpha (W phi(h) + U u + b - h)   f = (W phi(h) + U u + b - h) / tau
    residual      h' = h + eps phi(W h + U u + b)           f = (eps / dt) phi(W h + U u + b)

so ``F(h) = h + dt f(h)`` exactly. ``dt`` is the model's time per step when
the checkpoint states one (``Model.dt``); otherwise it is ``alpha`` (time in
units of tau, the leaky forms) or ``eps`` (the residual flow
``dh/dt = phi(W h + U u + b)``, AntisymmetricRNN's ODE, Chang et al. 2019).
For gated and user cells the same identity *defines* the flow,
``f = (F(h) - h) / dt`` with ``dt = Model.dt or 1``.

Functions (all batched: states ``[B, S]``, input ``u`` ``[d]`` or ``[B, d]`` or
``None`` for zero):

``time_step(cell, dt)``             the step in time units the flow is measured with
``vector_field(cell, h, u, dt=)``   f(h) [B, S]
``flow_jacobian(cell, h, u, dt=)``  df/dh [B, S, S]; the map's Jacobian is ``I + dt * flow_jacobian``
``flow_jvp(cell, h, u, V, dt=)``    (df/dh) V for V [B, S] or [B, S, k], without forming df/dh for Elman cells
``integrate(cell, h0, duration, n_steps, u, dt=, tangent=, record=)``
                                    classical RK4 over ``duration`` (per batch row) in ``n_steps`` steps,
                                    with the derivative of the RK4 map (the product of its step Jacobians)
``antiderivative(name)``            Phi with Phi' = phi, Phi(0) = 0, for the motion invariant
``motion_invariant(cell, h, u)``    H(h) = sum_i Phi((W h + U u + b)_i) of a residual cell
``invariant_rate(cell, h, u, dt=)`` dH/dt along the flow: (eps / dt) phi(z)^T W_s phi(z), z = W h + U u + b

Why H: for the residual flow put ``z = W h + c`` (``c = U u + b``, constant
input); then ``dz/dt = (eps/dt) W phi(z)`` and
``dH/dt = sum_i phi(z_i) dz_i/dt = (eps/dt) phi(z)^T W phi(z)``, which is
``phi(z)^T W_s phi(z)`` (``W_s = (W + W^T)/2``) and vanishes for every state
when ``W`` is skew-symmetric (Casoni et al. 2025: skew-symmetric weights and
odd, bounded activations give motion invariants and closed orbits). The
level sets of ``H`` are closed (bounded) when ``Phi`` grows in both
directions, which holds when ``x phi(x) > 0`` (odd, sign-preserving ``phi``:
tanh, linear), and not for sigmoid or relu. For ``phi`` linear,
``H = ||W h + c||^2 / 2``; with ``W = omega [[0, -1], [1, 0]]`` and ``c = 0``
that is ``omega^2 ||h||^2 / 2``: the rotation conserves the norm. The leaky
forms have no such invariant: their ``-h`` term dissipates.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from rnnprobe.cells.base import Cell, as_tensor
from rnnprobe.cells.elman import ElmanCell
from rnnprobe.errors import InputError

__all__ = [
    "time_step",
    "vector_field",
    "flow_jacobian",
    "flow_jvp",
    "FlowSolution",
    "integrate",
    "antiderivative",
    "motion_invariant",
    "invariant_rate",
    "has_invariant",
    "closed_level_sets",
]


def time_step(cell: Cell, dt: float | None = None) -> float:
    """The time per step of ``cell``'s map: ``dt`` when given, else ``alpha`` / ``eps`` (Elman cells) or 1.

    With the default, time is measured in units of tau for the leaky forms
    and in the units of ``dh/dt = phi(W h + U u + b)`` for the residual form.
    """
    if dt is not None:
        dt = float(dt)
        if not (math.isfinite(dt) and dt > 0):
            raise InputError(f"the time per step dt={dt} must be a positive number (--dt or dt in the sidecar)")
        return dt
    if isinstance(cell, ElmanCell):
        return float(cell.alpha)
    return 1.0


def _inputs(cell: Cell, u, batch: int) -> torch.Tensor:
    return cell._inputs(None if u is None else as_tensor(u, dtype=cell.dtype, device=cell.device), batch)


def vector_field(cell: Cell, h: torch.Tensor, u=None, *, dt: float | None = None) -> torch.Tensor:
    """f(h) [B, S] in state units per time unit: the field whose Euler step with ``dt`` is ``cell.step``."""
    h = as_tensor(h, dtype=cell.dtype, device=cell.device)
    u = _inputs(cell, u, h.shape[0])
    step = time_step(cell, dt)
    if not isinstance(cell, ElmanCell):
        return (cell.step(h, u) - h) / step
    rate = cell.alpha / step
    x = cell.preactivation(h, u)
    if cell.form == "residual":
        return rate * cell.nl.phi(x)
    if cell.form == "leaky":
        return rate * (cell.nl.phi(x) - h)
    return rate * (x - h)


def _gain(cell: ElmanCell, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    if cell.form == "rate-outside":
        return cell.nl.dphi(h)
    return cell.nl.dphi(cell.preactivation(h, u))


def flow_jacobian(cell: Cell, h: torch.Tensor, u=None, *, dt: float | None = None) -> torch.Tensor:
    """df/dh at each state: [B, S, S], ``J[b, i, j] = df_i / dh_j`` (per time unit)."""
    h = as_tensor(h, dtype=cell.dtype, device=cell.device)
    u = _inputs(cell, u, h.shape[0])
    step = time_step(cell, dt)
    n = h.shape[1]
    eye = torch.eye(n, dtype=cell.dtype, device=cell.device)
    if not isinstance(cell, ElmanCell):
        return (cell.jacobian(h, u) - eye) / step
    rate = cell.alpha / step
    d = _gain(cell, h, u)
    if cell.form == "rate-outside":
        J = cell.W_hh[None] * d[:, None, :]
    else:
        J = d[:, :, None] * cell.W_hh[None]
    if cell.form != "residual":
        J = J - eye
    return rate * J


def flow_jvp(cell: Cell, h: torch.Tensor, u, V: torch.Tensor, *, dt: float | None = None) -> torch.Tensor:
    """(df/dh) V for ``V`` [B, S] or [B, S, k] (Elman cells never form df/dh)."""
    h = as_tensor(h, dtype=cell.dtype, device=cell.device)
    u = _inputs(cell, u, h.shape[0])
    step = time_step(cell, dt)
    if not isinstance(cell, ElmanCell):
        return (cell.jvp(h, u, V) - V) / step
    rate = cell.alpha / step
    d = _gain(cell, h, u)
    col = V.dim() == 3
    Vc = V if col else V[:, :, None]
    if cell.form == "rate-outside":
        out = torch.matmul(cell.W_hh, d[:, :, None] * Vc)
    else:
        out = d[:, :, None] * torch.matmul(cell.W_hh, Vc)
    if cell.form != "residual":
        out = out - Vc
    out = rate * out
    return out if col else out[:, :, 0]


def _field_functions(cell: Cell, u: torch.Tensor, step: float):
    """``f(x) -> (f, aux)`` and ``jv(x, aux, V) -> (df/dh) V`` for the integrator's inner loop.

    For Elman cells the constant drive ``U u + b`` is computed once and the
    gain phi' is shared between the field and its tangent (``aux``)."""
    if not isinstance(cell, ElmanCell):
        return (lambda x: (vector_field(cell, x, u, dt=step), None),
                lambda x, aux, V: flow_jvp(cell, x, u, V, dt=step))
    rate = cell.alpha / step
    drive = u @ cell.W_uh.T + cell.b
    WT, W, phi, dphi, form = cell.W_hh.T, cell.W_hh, cell.nl.phi, cell.nl.dphi, cell.form

    def f(x):
        if form == "rate-outside":
            return rate * (phi(x) @ WT + drive - x), dphi(x)
        z = x @ WT + drive
        p = phi(z)
        return rate * (p if form == "residual" else p - x), dphi(z)

    def jv(x, d, V):
        if form == "rate-outside":
            out = torch.matmul(W, d[:, :, None] * V)
        else:
            out = d[:, :, None] * torch.matmul(W, V)
        return rate * (out if form == "residual" else out - V)

    return f, jv


@dataclasses.dataclass
class FlowSolution:
    """What :func:`integrate` returns.

    Attributes:
        state: [B, S] the state at ``duration``.
        tangent: [B, S, S] the derivative of the final state with respect to
            the initial one (the product of the RK4 step Jacobians: the
            monodromy matrix when ``duration`` is a period), or ``None``.
        states: [B, n_steps + 1, S] the states at ``k * duration / n_steps``
            (``record=True``), or ``None``.
    """

    state: torch.Tensor
    tangent: torch.Tensor | None = None
    states: torch.Tensor | None = None


def integrate(cell: Cell, h0: torch.Tensor, duration, n_steps: int, u=None, *, dt: float | None = None,
              tangent: bool = False, record: bool = False) -> FlowSolution:
    """Integrate ``dh/dt = f(h)`` with classical RK4 (fixed step), batched.

    Arguments:
        h0: [B, S] initial states.
        duration: a number or [B] durations in time units (one step size per row).
        n_steps: RK4 steps over ``duration`` (the same count for every row).
        u: the constant input.
        tangent: also propagate the derivative of the RK4 map (variational
            equations discretised consistently, so it is the exact Jacobian of
            the computed final state).
        record: keep every intermediate state.

    The local error is O(h^5) per step (h = duration / n_steps); choose
    ``n_steps`` so that ``h`` times the largest rate of ``f`` is small (0.05
    gives about 1e-7 relative error over a period).
    """
    h = as_tensor(h0, dtype=cell.dtype, device=cell.device).clone()  # the result never aliases the caller's h0
    B, S = h.shape
    u = _inputs(cell, u, B)
    step = time_step(cell, dt)
    T = torch.as_tensor(duration, dtype=cell.dtype, device=cell.device)
    dh = (T.expand(B) if T.dim() == 0 else T).reshape(B, 1) / int(n_steps)
    dh3 = dh[:, :, None]
    Phi = torch.eye(S, dtype=cell.dtype, device=cell.device).expand(B, S, S).clone() if tangent else None
    states = None
    if record:
        states = torch.empty(B, int(n_steps) + 1, S, dtype=cell.dtype, device=cell.device)
        states[:, 0] = h

    f, jv = _field_functions(cell, u, step)
    for k in range(int(n_steps)):
        k1, g1 = f(h)
        x2 = h + 0.5 * dh * k1
        k2, g2 = f(x2)
        x3 = h + 0.5 * dh * k2
        k3, g3 = f(x3)
        x4 = h + dh * k3
        k4, g4 = f(x4)
        if tangent:
            K1 = jv(h, g1, Phi)
            K2 = jv(x2, g2, Phi + 0.5 * dh3 * K1)
            K3 = jv(x3, g3, Phi + 0.5 * dh3 * K2)
            K4 = jv(x4, g4, Phi + dh3 * K3)
            Phi = Phi + dh3 / 6.0 * (K1 + 2.0 * K2 + 2.0 * K3 + K4)
        h = h + dh / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        if record:
            states[:, k + 1] = h
    return FlowSolution(state=h, tangent=Phi, states=states)


# ---- the motion invariant of the residual flow ----------------------------------------------------------------------
def _logcosh(x: torch.Tensor) -> torch.Tensor:
    a = x.abs()
    return a + torch.log1p(torch.exp(-2.0 * a)) - math.log(2.0)


_ANTIDERIVATIVES = {
    "tanh": _logcosh,
    "linear": lambda x: 0.5 * x * x,
    "relu": lambda x: 0.5 * torch.relu(x) ** 2,
    "sigmoid": lambda x: torch.nn.functional.softplus(x) - math.log(2.0),
}

# Phi grows in both directions (closed level sets) exactly when x phi(x) > 0 for x != 0
_COERCIVE = {"tanh": True, "linear": True, "relu": False, "sigmoid": False}


def antiderivative(name: str):
    """Phi with Phi' = phi and Phi(0) = 0 for nonlinearity ``name``, or ``None`` (softplus: no closed form)."""
    return _ANTIDERIVATIVES.get(name)


def closed_level_sets(name: str) -> bool:
    """Whether the level sets of H are bounded for nonlinearity ``name`` (x phi(x) > 0: tanh, linear)."""
    return _COERCIVE.get(name, False)


def has_invariant(cell: Cell) -> tuple[bool, str]:
    """Whether :func:`motion_invariant` applies to ``cell`` and, if not, why (one line)."""
    if not isinstance(cell, ElmanCell):
        return False, f"a {cell.kind} cell has no single W_hh: the invariant H = sum Phi(W h + c) is not defined"
    if cell.form != "residual":
        return False, (f"the {cell.form} form dissipates (its -h/tau term): only the residual flow "
                       "dh/dt = phi(W h + c) has the invariant H = sum Phi(W h + c)")
    if antiderivative(cell.nonlinearity) is None:
        return False, f"phi = {cell.nonlinearity} has no closed-form antiderivative Phi"
    return True, ""


def motion_invariant(cell: ElmanCell, h: torch.Tensor, u=None) -> torch.Tensor:
    """H(h) = sum_i Phi((W h + U u + b)_i) for states ``h`` [..., N] -> [...].

    Conserved by the residual flow when W is skew-symmetric (see the module
    docstring); its drift along a trajectory measures how far a network is
    from that ideal (symmetric part of W, and the Euler discretisation).
    """
    ok, why = has_invariant(cell)
    if not ok:
        raise InputError(f"no motion invariant: {why}")
    h = as_tensor(h, dtype=cell.dtype, device=cell.device)
    shape = h.shape
    flat = h.reshape(-1, shape[-1])
    z = cell.preactivation(flat, _inputs(cell, u, flat.shape[0]))
    return antiderivative(cell.nonlinearity)(z).sum(-1).reshape(shape[:-1])


def invariant_rate(cell: ElmanCell, h: torch.Tensor, u=None, *, dt: float | None = None) -> torch.Tensor:
    """dH/dt along the flow at ``h`` [B, N]: ``(eps / dt) phi(z)^T W_s phi(z)``, zero for skew-symmetric W."""
    ok, why = has_invariant(cell)
    if not ok:
        raise InputError(f"no motion invariant: {why}")
    h = as_tensor(h, dtype=cell.dtype, device=cell.device)
    z = cell.preactivation(h, _inputs(cell, u, h.shape[0]))
    p = cell.nl.phi(z)
    W_s = 0.5 * (cell.W_hh + cell.W_hh.T)
    return cell.alpha / time_step(cell, dt) * ((p @ W_s) * p).sum(-1)
