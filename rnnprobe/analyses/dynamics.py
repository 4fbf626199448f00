"""``rnnprobe dynamics``: oscillators, skew-symmetric networks and the flow behind the map.

What it reports for a checkpoint (Casoni et al. 2025, "Generative System
Dynamics in Recurrent Neural Networks"; Chang et al. 2019, AntisymmetricRNN):

* Structure of W_hh: ``W_s = (W + W^T)/2``, ``W_a = (W - W^T)/2``, the skew
  fraction ``||W_a||_F / ||W||_F``, the top eigenvalue of ``W_s`` (the
  contraction rate of the linear flow: ``d||h||^2/dt <= 2 lambda_max(W_s) ||h||^2``),
  whether the spectrum of W is purely imaginary, and whether ``W_s`` is
  ``-gamma I`` (AntisymmetricRNN's ``W - W^T - gamma I``).
* Euler stability: the map is one explicit Euler step ``h + dt f(h)`` of the
  flow (:mod:`rnnprobe.flows`); at the origin and at the fixed points,
  ``max |1 + dt lambda|`` over the eigenvalues ``lambda`` of the flow's
  Jacobian, and the largest stable step ``min(-2 Re lambda / |lambda|^2)``.
  A state where the flow is stable or neutral (``max Re lambda <= 0``) but the
  factor exceeds 1 is flagged: there the integrator, not the network, makes
  perturbations grow (purely imaginary ``lambda``: every explicit Euler step
  amplifies by ``sqrt(1 + dt^2 |lambda|^2)``).
* Attractors of the autonomous map (constant input ``u*``) from many initial
  states at once: each trajectory is warmed up, recorded, and classified as a
  fixed point, a limit cycle (it returns to itself: closure below
  ``--cycle-tol`` at the first and at later returns), quasi-periodic or
  chaotic (from the Lyapunov exponents, imported from
  :mod:`rnnprobe.numerics.lyapunov`), divergent, or unresolved.
  Trajectories are grouped into attractors; each gets its basin share.
* For a limit cycle: the period in steps (fractional: an Euler map's cycle is
  an invariant closed curve, rarely an integer-period orbit) and time units,
  the amplitude, the cycle as an array, the map's multipliers (from the
  product of its Jacobians over one period: along the curve, and across it
  with the twist removed, see :func:`map_multipliers`), and the flow's
  periodic orbit found by Newton shooting from the map's cycle, with its
  Floquet multipliers (eigenvalues of the product of RK4 step Jacobians over
  one period: one is 1 along the flow; the others inside the unit circle for
  an asymptotically stable cycle, on it for a conservative one). When the
  shooting finds no orbit, the oscillation belongs to the discrete map only.
* From a reference start (the zero state, where trained networks start, or
  the dominant attractor's initial state when zero is an equilibrium): the
  oscillation the network makes over the task's horizon (the period of its
  output), and what the flow does from there (its class, its periodic orbit).
* Motion invariants (residual form): ``H(h) = sum_i Phi((W h + U u + b)_i)``,
  ``Phi' = phi``, is conserved by the flow when W is skew-symmetric; its
  drift along the map's trajectory and along the flow measures how far the
  network is from that ideal, and splits into the symmetric part's share
  (the flow) and the Euler discretisation's (the map minus the flow).

Reusable functions (documented signatures): :func:`weight_structure`,
:func:`euler_stability`, :func:`find_attractors`, :func:`shoot_cycle`,
:func:`map_multipliers`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from rnnprobe import flows
from rnnprobe.analyses.base import AnalysisSpec, Options, Result, RunContext, option
from rnnprobe.cells.base import Cell, NoRecurrentMatrix
from rnnprobe.cells.elman import ElmanCell
from rnnprobe.errors import InputError
from rnnprobe.model import Model

__all__ = [
    "KINDS",
    "DynamicsOptions",
    "DynamicsResult",
    "weight_structure",
    "euler_stability",
    "Attractors",
    "find_attractors",
    "map_multipliers",
    "ShootingResult",
    "shoot_cycle",
    "run",
    "ANALYSIS",
]

KINDS = ("fixed_point", "limit_cycle", "quasi_periodic", "chaotic", "divergent", "unresolved")
_KIND_CODE = {k: i for i, k in enumerate(KINDS)}


# ---------------------------------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class DynamicsOptions(Options):
    input: str | None = option(
        None, metavar="U1,U2,...",
        help="Constant input u* of the autonomous dynamics, comma-separated (default: the sidecar's "
             "autonomous_input if it has one, else zeros).")
    inits: int = option(32, min=1, max=4096, help="Initial states, run as one batch.")
    init_scale: float = option(1.0, min=0.0, min_open=True,
                               help="Initial states are Gaussian with standard deviations spread log-uniformly "
                                    "from 0.01x to 1x this scale.")
    warmup: int = option(2000, min=0, help="Steps run before recording (at least).")
    max_warmup: int = option(60000, min=0,
                             help="Keep warming up, in blocks of --steps, while an orbit's size still changes by "
                                  "more than --drift-tol / 4 from block to block, up to this many steps.")
    steps: int = option(2000, min=32, help="Steps recorded per trajectory after the warm-up.")
    cycle_tol: float = option(1e-2, min=0.0, min_open=True,
                              help="A trajectory is a cycle when it returns to within this fraction of its size "
                                   "(first return and later ones).")
    fixed_tol: float = option(1e-9, min=0.0, min_open=True,
                              help="A trajectory is at a fixed point when its last step moves it by less than "
                                   "this times (1 + |h|).")
    drift_tol: float = option(1e-2, min=0.0, min_open=True,
                              help="Relative change of an orbit's size over the record above which it is divergent "
                                   "(growing) or unresolved (still shrinking).")
    exponents: int = option(4, min=0, help="Leading Lyapunov exponents per attractor (0: skip them).")
    zero_tol: float = option(2e-3, min=0.0, min_open=True,
                             help="Lyapunov exponents (per step) with |lambda| below this count as zero.")
    floquet_steps: int = option(400, min=50,
                                help="Least RK4 steps per period when shooting the flow's cycle (more are used "
                                     "so that each step times the field's rate bound is at most 0.1).")
    floquet_max_units: int = option(256, min=1,
                                    help="Multipliers and the flow's periodic orbit only up to this many state "
                                         "units (their cost grows as S^3 per step of a period).")
    imag_tol: float = option(1e-9, min=0.0,
                             help="The spectrum of W is purely imaginary when max |Re lambda| <= this times "
                                  "the spectral radius.")
    fail_if_euler_unstable: bool = option(
        False, help="Gate: exit 1 when the Euler step amplifies perturbations at a state where the flow does not.")
    expect: str | None = option(None, choices=KINDS,
                                help="Gate: exit 1 unless the attractor with the largest basin is of this kind.")

    def check(self) -> None:
        if self.max_warmup < self.warmup:
            raise InputError(f"--max-warmup={self.max_warmup} must be >= --warmup={self.warmup}")
        self.input_values()

    def input_values(self) -> list[float] | None:
        """``--input`` parsed, or ``None`` when not given."""
        if self.input is None or not str(self.input).strip():
            return None
        try:
            values = [float(x) for x in str(self.input).split(",")]
        except ValueError:
            raise InputError(f"--input={self.input!r} must be comma-separated numbers, e.g. --input 1.0,0") from None
        if not all(math.isfinite(v) for v in values):
            raise InputError(f"--input={self.input!r} must be finite numbers")
        return values


# ---------------------------------------------------------------------------------------------------------------------
# structure of W and Euler stability
# ---------------------------------------------------------------------------------------------------------------------
def weight_structure(W: torch.Tensor, *, imag_tol: float = 1e-9) -> dict:
    """Symmetric/skew decomposition of ``W`` [N, N] and its spectral facts.

    Returns a dict: ``W_s``, ``W_a`` (arrays), ``skew_fraction`` = ||W_a||_F / ||W||_F,
    ``sym_top_eigenvalue`` = lambda_max(W_s), ``sym_eigenvalues``, ``eigenvalues`` of W (complex),
    ``max_abs_real`` = max |Re lambda(W)|, ``spectral_radius``, ``purely_imaginary``
    (max |Re lambda| <= imag_tol * spectral radius), ``sym_isotropy`` =
    ||W_s - s I||_F / ||W||_F with ``s = tr(W)/N``, and ``gamma = -s`` (the
    AntisymmetricRNN diffusion when ``W = A - A^T - gamma I``).
    """
    W = W.detach()
    n = W.shape[0]
    W_s = 0.5 * (W + W.T)
    W_a = 0.5 * (W - W.T)
    norm = torch.linalg.matrix_norm(W).item()
    tiny = torch.finfo(W.dtype).tiny
    sym_eigs = torch.linalg.eigvalsh(W_s)
    eigs = torch.linalg.eigvals(W)
    rho = eigs.abs().max().item() if n else 0.0
    max_re = eigs.real.abs().max().item() if n else 0.0
    s = (torch.trace(W) / n).item() if n else 0.0
    eye = torch.eye(n, dtype=W.dtype, device=W.device)
    return {
        "W_s": W_s,
        "W_a": W_a,
        "skew_fraction": torch.linalg.matrix_norm(W_a).item() / max(norm, tiny),
        "sym_top_eigenvalue": sym_eigs[-1].item() if n else 0.0,
        "sym_eigenvalues": sym_eigs,
        "eigenvalues": eigs,
        "max_abs_real": max_re,
        "spectral_radius": rho,
        "purely_imaginary": bool(max_re <= imag_tol * max(rho, tiny)),
        "sym_isotropy": torch.linalg.matrix_norm(W_s - s * eye).item() / max(norm, tiny),
        "gamma": 0.0 - s + 0.0,  # no "-0.0" for a traceless W
    }


def euler_stability(cell: Cell, states: torch.Tensor, u=None, *, dt: float | None = None,
                    tol: float = 1e-12) -> dict:
    """Euler stability of the map at ``states`` [K, S].

    With ``lambda`` the eigenvalues of the flow's Jacobian (per time unit) and
    ``dt`` the step, returns a dict of [K] arrays: ``eigenvalues`` [K, S]
    (complex), ``factor`` = max |1 + dt lambda| (the spectral radius of the
    map's Jacobian), ``max_re`` = max Re lambda, ``max_stable_step`` =
    min over lambda of -2 Re lambda / |lambda|^2 when every Re lambda < 0
    (0 when some lambda is neutral, NaN when the flow itself is unstable),
    and ``flagged``: the flow is stable or neutral there (max Re lambda <=
    ``tol`` times the largest |lambda|) but the factor exceeds 1 + ``tol``.
    """
    step = flows.time_step(cell, dt)
    J = flows.flow_jacobian(cell, states, u, dt=step)
    lam = torch.linalg.eigvals(J)
    factor = (1.0 + step * lam).abs().amax(-1)
    max_re = lam.real.amax(-1)
    scale = lam.abs().amax(-1).clamp_min(torch.finfo(J.dtype).tiny)
    neutral = max_re.abs() <= tol * scale
    stable = (max_re < 0) & ~neutral
    mag2 = (lam.abs() ** 2).clamp_min(torch.finfo(J.dtype).tiny)
    bound = torch.where(lam.abs() > 0, -2.0 * lam.real / mag2, torch.full_like(lam.real, math.inf))
    max_step = torch.where(stable, bound.amin(-1), torch.where(neutral, torch.zeros_like(max_re),
                                                                 torch.full_like(max_re, math.nan)))
    flagged = (stable | neutral) & (factor > 1.0 + tol)
    return {"eigenvalues": lam, "factor": factor, "max_re": max_re, "max_stable_step": max_step,
            "flagged": flagged, "dt": step}


# ---------------------------------------------------------------------------------------------------------------------
# trajectories: warm-up, record, recurrence
# ---------------------------------------------------------------------------------------------------------------------
def _run(cell: Cell, h: torch.Tensor, u: torch.Tensor, steps: int) -> torch.Tensor:
    inputs = u[None, None, :].expand(h.shape[0], steps, u.shape[0])
    return cell.rollout(h, inputs)


def _size(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RMS distance from the centroid, and the centroid, of each row's states [B, T, S]."""
    c = X.mean(1)
    return torch.linalg.vector_norm(X - c[:, None], dim=-1).pow(2).mean(1).sqrt(), c


def _closest_on_curve(X: torch.Tensor, t: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The point of the quadratic through X[t-1], X[t], X[t+1] nearest ``ref``: (fractional time, distance).

    Batched: ``X`` [B, T, S], ``t`` [B] integer (clamped to 1..T-2), ``ref`` [B, S].
    """
    B, T, _ = X.shape
    t = t.clamp(1, T - 2)
    rows = torch.arange(B, device=X.device)
    a, m, b = X[rows, t - 1], X[rows, t], X[rows, t + 1]
    v = 0.5 * (b - a)
    w = 0.5 * (b - 2.0 * m + a)
    r = m - ref
    # minimise |r + s v + s^2 w|^2 over s in [-1, 1]: Newton from the linear projection
    s = (-(r * v).sum(-1) / (v * v).sum(-1).clamp_min(torch.finfo(X.dtype).tiny)).clamp(-1.0, 1.0)
    for _ in range(8):
        p = r + s[:, None] * v + (s * s)[:, None] * w
        dp = v + 2.0 * s[:, None] * w
        g = (p * dp).sum(-1)
        h = (dp * dp).sum(-1) + 2.0 * (p * w).sum(-1)
        s = torch.where(h > 0, s - g / h.clamp_min(torch.finfo(X.dtype).tiny), s).clamp(-1.0, 1.0)
    p = r + s[:, None] * v + (s * s)[:, None] * w
    return t.to(X.dtype) + s, torch.linalg.vector_norm(p, dim=-1)


def _returns(X: torch.Tensor, size: torch.Tensor) -> dict:
    """Recurrence of each trajectory [B, T, S] to its last state.

    The first return is the first local minimum of the distance to the last
    state, going back in time, after the trajectory has moved away by half
    its size. Later returns are located at doubling multiples of the period
    estimate. Returns [B] tensors: ``found``, ``period`` (steps, fractional),
    ``closure_first``, ``closure`` (worst over the returns checked), ``revolutions``.
    """
    B, T, _ = X.shape
    dev, dt_ = X.device, X.dtype
    ref = X[:, -1]
    back = X[:, :-1].flip(1)  # back[:, i] is the state at lag i + 1
    D = torch.linalg.vector_norm(back - ref[:, None], dim=-1)
    L = D.shape[1]
    rel = D / size[:, None]
    idx = torch.arange(L, device=dev)
    away = rel > 0.5
    first_away = torch.where(away.any(1), away.to(torch.int8).argmax(1), torch.full((B,), L, device=dev))
    minima = torch.zeros_like(away)
    minima[:, 1:-1] = (D[:, 1:-1] <= D[:, :-2]) & (D[:, 1:-1] <= D[:, 2:])
    cand = minima & (idx[None] > first_away[:, None]) & (rel < 0.5)
    found = cand.any(1)
    i1 = cand.to(torch.int8).argmax(1)
    tc, dist = _closest_on_curve(X, (T - 2 - i1), ref)
    period = (T - 1) - tc
    closure_first = dist / size
    closure = closure_first.clone()
    revolutions = torch.ones(B, dtype=torch.long, device=dev)
    k = 1
    while True:
        k2 = 2 * k
        finite_p = torch.isfinite(period) & (period >= 1.0)
        lag = torch.where(finite_p, k2 * period, torch.full_like(period, float(T))).round().long()
        ok = found & finite_p & (lag + 4 < T)
        if not bool(ok.any()):
            break
        # search +-3 steps around the predicted return for the nearest state, then refine
        offs = torch.arange(-3, 4, device=dev)
        lags = (lag[:, None] + offs[None]).clamp(1, T - 2)
        times = (T - 1) - lags
        d = torch.linalg.vector_norm(X[torch.arange(B, device=dev)[:, None], times] - ref[:, None], dim=-1)
        best = times[torch.arange(B, device=dev), d.argmin(1)]
        tck, distk = _closest_on_curve(X, best, ref)
        new_period = ((T - 1) - tck) / k2
        period = torch.where(ok, new_period, period)
        closure = torch.where(ok, torch.maximum(closure, distk / size), closure)
        revolutions = torch.where(ok, torch.full_like(revolutions, k2), revolutions)
        k = k2
    nan = torch.full((B,), math.nan, dtype=dt_, device=dev)
    return {
        "found": found,
        "period": torch.where(found, period, nan),
        "closure_first": torch.where(found, closure_first, nan),
        "closure": torch.where(found, closure, nan),
        "revolutions": revolutions,
    }


def _spread_drift(X: torch.Tensor, period: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trend of each orbit's size over the record [B, T, S]: (relative growth over the record, t-statistic).

    The record is cut into 8 blocks (of whole revolutions when a period is
    known, so that a closed orbit gives 0); the logarithm of the mean
    distance from the centroid in each block is fitted by a line. Returns the
    fitted relative change from the first to the last block, and the slope
    over its standard error (a steady drift has a large one; the
    fluctuations of a chaotic orbit do not).
    """
    B, T, _ = X.shape
    nb = 8
    blk = torch.full((B,), T // nb, dtype=torch.long, device=X.device)
    revs = torch.where(torch.isfinite(period) & (period >= 1), (T // nb) / period.clamp_min(1.0),
                       torch.zeros_like(period))
    whole = torch.where(revs >= 1, (revs.floor() * period).floor().long(), blk)
    blk = torch.minimum(whole.clamp_min(1), blk)
    c = X.mean(1, keepdim=True)
    r = torch.linalg.vector_norm(X - c, dim=-1)  # [B, T]
    csum = torch.nn.functional.pad(r.cumsum(1), (1, 0))
    rows = torch.arange(B, device=X.device)
    starts = torch.arange(nb, device=X.device)[None] * (T // nb)  # [1, nb]
    ends = starts + blk[:, None]
    tiny = torch.finfo(X.dtype).tiny
    logm = torch.log(((csum[rows[:, None], ends] - csum[rows[:, None], starts]) / blk[:, None]).clamp_min(tiny))
    j = torch.arange(nb, dtype=X.dtype, device=X.device) - (nb - 1) / 2
    slope = (logm * j).sum(1) / (j * j).sum()
    resid = logm - logm.mean(1, keepdim=True) - slope[:, None] * j
    se = (resid.pow(2).sum(1) / (nb - 2)).sqrt() / (j * j).sum().sqrt()
    growth = torch.expm1(slope * (nb - 1))
    return growth, slope / se.clamp_min(1e-300)


# ---------------------------------------------------------------------------------------------------------------------
# attractors
# ---------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Attractors:
    """What :func:`find_attractors` returns.

    Attributes:
        kind: [B] trajectory classes (strings from :data:`KINDS`; quasi-periodic
            and chaotic need exponents and are ``unresolved`` until then).
        member: [B] index of the attractor each trajectory reached (-1: none).
        representative: [A] the trajectory that stands for each attractor.
        record: [B, T, S] recorded states (after ``warmup`` steps).
        warmup: steps run before the record.
        period: [B] return period in steps (NaN when none).
        closure, closure_first: [B] relative return distances.
        drift: [B] relative change of the orbit size over the record.
        speed: [B] last step's length relative to 1 + |h|.
        converging: [B] bool, the orbit was still shrinking at the end (a transient: ``unresolved``).
    """

    kind: list
    member: torch.Tensor
    representative: list
    record: torch.Tensor
    warmup: int
    period: torch.Tensor
    closure: torch.Tensor
    closure_first: torch.Tensor
    drift: torch.Tensor
    speed: torch.Tensor
    converging: torch.Tensor


def _warm_up(cell: Cell, h: torch.Tensor, u: torch.Tensor, warmup: int, max_warmup: int, block: int,
             drift_tol: float, fixed_tol: float, progress) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Run ``warmup`` steps, then blocks of ``block`` steps while any orbit still changes size in one direction.

    Returns the states, the steps run, and each trajectory's streak [B]: the number of consecutive last blocks
    over which its size grew (positive) or shrank (negative) by more than ``drift_tol / 4``.
    """
    done = 0
    while done < warmup:
        n = min(block, warmup - done)
        h = _run(cell, h, u, n)[:, -1]
        done += n
        progress.advance(n)
    prev = None
    streak = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
    while done < max_warmup:
        n = min(block, max_warmup - done)
        X = _run(cell, h, u, n)
        done += n
        progress.advance(n)
        h = X[:, -1]
        size, _ = _size(X)
        finite = torch.isfinite(X).all(-1).all(-1)
        still = ((X[:, -1] - X[:, -2]).norm(dim=-1) > fixed_tol * (1 + X[:, -1].norm(dim=-1))) & finite
        if prev is not None:
            ref = torch.maximum(prev, size).clamp_min(torch.finfo(X.dtype).tiny)
            change = (size - prev) / ref
            sign = torch.where(change > drift_tol / 4, 1, torch.where(change < -drift_tol / 4, -1, 0)) * still
            streak = torch.where((sign != 0) & (torch.sign(streak) == sign), streak + sign, sign)
            # a size that goes up and down is a fluctuation (chaos), not a transient: stop unless one trends
            if not bool(((streak.abs() >= 2) | ((streak.abs() == 1) & (done - warmup <= 2 * block))).any()):
                break
        prev = size
        if not bool(finite.any()):
            break
    return h, done, streak


def find_attractors(cell: Cell, h0: torch.Tensor, u=None, *, warmup: int = 2000, max_warmup: int = 60000,
                    steps: int = 2000, cycle_tol: float = 1e-2, fixed_tol: float = 1e-9, drift_tol: float = 1e-2,
                    progress=None) -> Attractors:
    """Classify where each initial state of ``h0`` [B, S] goes under the map with constant input ``u``.

    All trajectories run as one batch. A trajectory is a ``fixed_point`` when
    its last step is shorter than ``fixed_tol (1 + |h|)``; ``divergent`` when
    it is not finite or its orbit grows by more than ``drift_tol`` over the
    record; a ``limit_cycle`` when it returns to within ``cycle_tol`` of its
    size at the first return and at later returns (integer-period orbits of
    the map included); otherwise ``unresolved`` (quasi-periodic or chaotic
    motion is told apart by the caller from Lyapunov exponents). Trajectories
    that reached the same fixed point or cycle are grouped.
    """
    from rnnprobe.analyses.base import Progress

    progress = progress or Progress()
    h0 = torch.as_tensor(h0, dtype=cell.dtype, device=cell.device)
    B = h0.shape[0]
    u = cell._inputs(u, 1)[0]
    progress.start("dynamics: trajectories", total=max_warmup + steps)
    try:
        h, done, streak = _warm_up(cell, h0, u, warmup, max_warmup, steps, drift_tol, fixed_tol, progress)
        X = _run(cell, h, u, steps)
        progress.advance(steps)
    finally:
        progress.stop()
    finite = torch.isfinite(X).all(-1).all(-1)
    Xf = torch.where(finite[:, None, None], X, torch.zeros_like(X))
    size, _ = _size(Xf)
    tiny = torch.finfo(X.dtype).tiny
    last = Xf[:, -1]
    speed = (last - Xf[:, -2]).norm(dim=-1) / (1.0 + last.norm(dim=-1))
    fixed = finite & (speed < fixed_tol)
    rec = _returns(Xf, size.clamp_min(tiny))
    drift, trend = _spread_drift(Xf, rec["period"])
    # states so large that their sizes overflow are divergent too
    finite = finite & torch.isfinite(size) & torch.isfinite(speed)
    closed = rec["found"] & (rec["closure"] < cycle_tol) & (rec["closure_first"] < cycle_tol)
    # a steady trend over the record, or over the last three warm-up blocks (slow spirals: periods as long as
    # the record)
    growing = ((drift > drift_tol) & (trend > 5.0)) | (streak >= 3)
    shrinking = ((drift < -drift_tol) & (trend < -5.0)) | (streak <= -3)
    code = torch.full((B,), _KIND_CODE["unresolved"], dtype=torch.long, device=X.device)
    code = torch.where(closed & ~shrinking, _KIND_CODE["limit_cycle"], code)
    code = torch.where(growing, _KIND_CODE["divergent"], code)
    code = torch.where(fixed, _KIND_CODE["fixed_point"], code)
    code = torch.where(~finite, _KIND_CODE["divergent"], code)
    kinds = [KINDS[c] for c in code.tolist()]
    member, reps = _group(Xf, kinds, rec["period"], size, cycle_tol)
    return Attractors(kind=kinds, member=member, representative=reps, record=X, warmup=done,
                      period=rec["period"], closure=rec["closure"], closure_first=rec["closure_first"],
                      drift=drift, speed=speed, converging=shrinking & finite & ~fixed)


def _group(X: torch.Tensor, kinds: list, period: torch.Tensor, size: torch.Tensor, cycle_tol: float):
    """Group trajectories that reached the same attractor: returns member [B] and representatives."""
    B, T, _ = X.shape
    member = torch.full((B,), -1, dtype=torch.long, device=X.device)
    reps: list[int] = []
    last = X[:, -1]
    codes = torch.tensor([_KIND_CODE[k] for k in kinds], device=X.device)
    steplen = (X[:, 1:] - X[:, :-1]).norm(dim=-1)
    centre = X.mean(1)
    for kind in ("fixed_point", "limit_cycle", "unresolved"):
        pending = (codes == _KIND_CODE[kind]) & (member < 0)
        while bool(pending.any()):  # one pass per distinct attractor, batched over trajectories
            r = int(pending.to(torch.int8).argmax())
            reps.append(r)
            if kind == "fixed_point":
                near = (last - last[r]).norm(dim=-1) <= 1e-6 * (1.0 + last[r].norm())
                hit = near & (codes == _KIND_CODE[kind])
            elif kind == "limit_cycle":
                span = min(T - 1, int(math.ceil(period[r].item())) + 2)
                pts = X[r, T - 1 - span:]
                gap = steplen[r, T - 1 - span:].max()
                d = torch.cdist(last, pts).amin(1)
                hit = (d <= 0.5 * gap + cycle_tol * size[r]) & (codes == _KIND_CODE[kind])
            else:
                # a torus or a strange attractor: within three typical neighbour spacings of the recorded states
                # (neighbours in the state, not in time: states within 5 steps of each other are skipped)
                pts = X[r, :: max(1, T // 1000)]
                D = torch.cdist(pts, pts)
                idx = torch.arange(pts.shape[0], device=X.device)
                D[(idx[:, None] - idx[None]).abs() * max(1, T // 1000) <= 5] = math.inf
                spacing = D.amin(1).median()
                d = torch.cdist(last, pts).amin(1)
                # or the same centre and size to 10 % (high-dimensional sets are sampled too sparsely for the first)
                same = ((centre - centre[r]).norm(dim=-1) <= 0.1 * size[r]) & ((size - size[r]).abs() <= 0.1 * size[r])
                hit = ((d <= 3.0 * spacing + cycle_tol * size[r]) | same) & (codes == _KIND_CODE[kind])
            hit[r] = True
            member = torch.where(hit & (member < 0), torch.full_like(member, len(reps) - 1), member)
            pending = pending & (member < 0)
    return member, reps


# ---------------------------------------------------------------------------------------------------------------------
# cycles: the map's multipliers and the flow's periodic orbit
# ---------------------------------------------------------------------------------------------------------------------
def map_multipliers(cell: Cell, states: torch.Tensor, u=None, *,
                    along: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[np.ndarray, float, float]:
    """Multipliers of the product ``M`` of the map's Jacobians at ``states`` [p, S] (in order).

    ``M`` is accumulated in float64 with a normalisation after every factor
    (the scale kept as a logarithm, so long products neither overflow nor
    underflow). Without ``along`` the eigenvalues of ``M`` are returned (an
    orbit of integer period p). With ``along = (v0, vp)``, the tangents of a
    closed invariant curve at the first state and at the state p steps later
    (one revolution of a non-integer period, so the two points differ by a
    fraction of a step), ``M`` is first composed with the rotation ``R`` that
    takes ``vp`` back to ``v0``; the first multiplier is then the stretch
    along the curve, ``v0^T R^T M v0``, and the others are the eigenvalues of
    ``Q^T R^T M Q`` (Q an orthonormal basis of v0's complement): the
    transverse multipliers, free of the twist (a change of amplitude changing
    the phase) that makes the eigenvalues of ``M`` itself meaningless when
    the orbit does not close after a whole number of steps.

    Returns ``(multipliers, log_scale, floor)``: multipliers by modulus,
    descending (the along-curve one first when ``along`` is given); ``floor``
    is machine epsilon times the norm of M: multipliers below it are not
    resolved.
    """
    uu = cell._inputs(u, 1)
    M = torch.eye(states.shape[-1], dtype=states.dtype, device=states.device)
    log_scale = 0.0
    for k in range(states.shape[0]):  # J_k M through the cell's jvp: no [p, S, S] stack of Jacobians
        M = cell.jvp(states[k: k + 1], uu, M[None])[0]
        n = torch.linalg.matrix_norm(M).item()
        if n > 0 and math.isfinite(n):
            M = M / n
            log_scale += math.log(n)
    Mn = M.cpu().numpy().astype(np.float64)
    scale = math.exp(min(log_scale, 700.0))
    floor = float(np.finfo(np.float64).eps * scale * np.linalg.norm(Mn, 2))
    if along is None:
        mu = np.linalg.eigvals(Mn) * scale
        return mu[np.argsort(-np.abs(mu))], log_scale, floor
    a = along[0].detach().cpu().numpy().astype(np.float64)
    b = along[1].detach().cpu().numpy().astype(np.float64)
    a = a / max(np.linalg.norm(a), 1e-300)
    b = b / max(np.linalg.norm(b), 1e-300)
    K = np.outer(b, a) - np.outer(a, b)
    R = np.eye(a.size) + K + (K @ K) / max(1.0 + float(a @ b), 1e-12)  # the plane rotation taking a to b
    Mr = R.T @ Mn
    stretch = float(a @ Mr @ a) * scale
    if a.size == 1:
        return np.array([stretch], dtype=complex), log_scale, floor
    Q, _ = np.linalg.qr(np.column_stack([a, np.eye(a.size)]))
    Q = Q[:, 1:a.size]
    mu = np.linalg.eigvals(Q.T @ Mr @ Q) * scale
    return np.concatenate([[stretch], mu[np.argsort(-np.abs(mu))]]).astype(complex), log_scale, floor


@dataclasses.dataclass
class ShootingResult:
    """A periodic orbit of the flow found by Newton shooting (:func:`shoot_cycle`).

    Attributes:
        converged: [K] bool.
        state: [K, S] a point of each orbit; period: [K] in time units.
        residual: [K] |phi_T(x) - x| / (|f(x)| T / 2 pi).
        monodromy: [K, S, S] the product of the RK4 step Jacobians over one period.
        multipliers: list of K arrays (eigenvalues of the monodromy, by modulus descending).
        trivial: [K] index (into each multipliers array) of the multiplier along the flow.
        n_steps: RK4 steps per period used; iterations: Newton iterations run.
    """

    converged: np.ndarray
    state: torch.Tensor
    period: torch.Tensor
    residual: np.ndarray
    monodromy: torch.Tensor
    multipliers: list
    trivial: np.ndarray
    n_steps: int
    iterations: int


def _orbit_scale(cell: Cell, x: torch.Tensor, T: torch.Tensor, u, step: float) -> torch.Tensor:
    """|f(x)| T / (2 pi): the radius of a circular orbit through x with period T (the residual's unit)."""
    f = flows.vector_field(cell, x, u, dt=step).norm(dim=-1)
    return (f * T.abs() / (2 * math.pi)).clamp_min(torch.finfo(x.dtype).tiny)


def shoot_cycle(cell: Cell, x0: torch.Tensor, T0: torch.Tensor, u=None, *, dt: float | None = None,
                n_steps: int = 2000, max_iter: int = 12, tol: float = 1e-11, accept: float = 1e-8
                ) -> ShootingResult:
    """Newton shooting for periodic orbits of the flow ``dh/dt = f(h)`` near ``(x0 [K, S], T0 [K])``.

    Unknowns ``(x, T)`` with ``x`` in the section through ``x0`` normal to
    ``f(x0)``; equation ``phi_T(x) = x``, ``phi_T`` being RK4 with
    ``n_steps`` steps and its exact tangent map ``M``. Each iteration first
    moves T to cancel the mismatch along ``f(phi_T(x))``, then (once T has
    settled) solves ``(I - f f^T / |f|^2)(M - I) dx = -(mismatch across f)``
    for ``dx`` in the section by a pseudo-inverse that drops singular values
    below ``1e-6 (1 + |M|)`` (above RK4's own dissipation): a family of
    orbits (a conservative flow, whose return map is the identity along the
    family) then converges to a nearby member instead of drifting along the
    family or collapsing onto an equilibrium.

    Newton runs first with ``n_steps / 4`` RK4 steps, then with ``n_steps``;
    each stage stops when the residual ``|phi_T(x) - x|`` (relative to
    ``|f(x)| T / (2 pi)``, the radius of a circular orbit with that speed and
    period) is below ``tol`` (1e-7 for the first stage), or has not halved in
    three iterations; the fine stage is skipped when the first stalls above 1e-3. An orbit is accepted when the final residual is below
    ``accept``: a conservative flow's orbits close only up to RK4's error,
    which the fine stage keeps near 1e-10. Batched over the K candidates.

    The monodromy matrix of the converged orbit is the tangent map over one
    period; its eigenvalues are the Floquet multipliers, and the one whose
    eigenvector is most aligned with ``f(x)`` is the trivial one.
    """
    step = flows.time_step(cell, dt)
    x = torch.as_tensor(x0, dtype=cell.dtype, device=cell.device).clone()
    T = torch.as_tensor(T0, dtype=cell.dtype, device=cell.device).clone().reshape(-1)
    K, S = x.shape
    f0 = flows.vector_field(cell, x, u, dt=step)
    eye = torch.eye(S, dtype=cell.dtype, device=x.device)
    # an orthonormal basis of the section (the complement of f0) for each candidate
    f0n = f0 / f0.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    Qs = torch.linalg.qr(torch.cat([f0n[:, :, None], eye.expand(K, S, S)], dim=2))[0][:, :, 1:S]
    iterations = 0
    fresh = False
    residual = torch.full((K,), math.inf, dtype=cell.dtype, device=x.device)
    for n, goal in ((max(50, n_steps // 4), max(tol, 1e-7)), (n_steps, tol)):
        history: list[float] = []
        settled_all = False
        for _ in range(max_iter):
            sol = flows.integrate(cell, x, T, n, u, dt=step, tangent=True)
            fresh = n == n_steps
            r = sol.state - x
            residual = r.norm(dim=-1) / _orbit_scale(cell, x, T, u, step)
            worst = residual.max().item()
            if worst < goal or not math.isfinite(worst):
                break
            if settled_all:  # stalls count once the period has settled (the residual may grow while T moves)
                history.append(worst)
                if len(history) > 3 and worst > 0.5 * min(history[:-3]):
                    break
            iterations += 1
            # along the flow: the period absorbs the mismatch's component along f(phi_T(x))
            fT = flows.vector_field(cell, sol.state, u, dt=step)
            dT = -(fT * r).sum(-1) / (fT * fT).sum(-1).clamp_min(torch.finfo(x.dtype).tiny)
            r_perp = r + fT * dT[:, None]
            # across it: Newton on the return map, x moving in the section through x0 (normal f0), the equation
            # taken across f(phi_T(x)). Only once the period is nearly right (else the return map's Jacobian is
            # that of the wrong time), and with singular values below 1e-6 (1 + |M|) dropped: directions the
            # return map leaves unchanged (a family of orbits of a conservative flow) are not moved along.
            settled = dT.abs() <= 1e-4 * T
            settled_all = bool(settled.all())
            P = eye - fT[:, :, None] * fT[:, None, :] / (fT * fT).sum(-1).clamp_min(
                torch.finfo(x.dtype).tiny)[:, None, None]
            A = P @ (sol.tangent - eye) @ Qs
            U_, sv, Vh = torch.linalg.svd(A, full_matrices=False)
            cut = 1e-6 * (1.0 + torch.linalg.matrix_norm(sol.tangent, ord=2))
            inv = torch.where(sv > cut[:, None], 1.0 / sv.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(sv))
            y = Vh.transpose(-1, -2) @ (inv[:, :, None] * (U_.transpose(-1, -2) @ -r_perp[:, :, None]))
            dx = torch.where(settled[:, None], (Qs @ y)[:, :, 0], torch.zeros_like(x))
            # damp steps that would change T by more than a quarter (far from a cycle)
            scale = torch.clamp(0.25 * T / dT.abs().clamp_min(1e-300), max=1.0)
            move = residual >= tol
            x = torch.where(move[:, None], x + scale[:, None] * dx, x)
            T = torch.where(move, T + scale * dT, T)
            fresh = False
        if not math.isfinite(residual.max().item()) or residual.max().item() > 1e-3:
            break  # no orbit near: the coarse stage stalled far from one
    if not fresh:
        sol = flows.integrate(cell, x, T.clamp_min(1e-12), n_steps, u, dt=step, tangent=True)
        residual = (sol.state - x).norm(dim=-1) / _orbit_scale(cell, x, T, u, step)
    fx = flows.vector_field(cell, x, u, dt=step)
    moving = fx.norm(dim=-1) > 1e-8 * (1.0 + x.norm(dim=-1))
    converged = (residual < accept) & moving & torch.isfinite(residual) & (T > 0)
    mults, trivial = [], []
    M_np = sol.tangent.detach().cpu().numpy()
    f_np = fx.detach().cpu().numpy()
    for k in range(K):  # eigen-decompositions of the (few) cycles found
        mu, V = np.linalg.eig(M_np[k])
        order = np.argsort(-np.abs(mu))
        mu, V = mu[order], V[:, order]
        fn = f_np[k] / max(np.linalg.norm(f_np[k]), 1e-300)
        align = np.abs(V.conj().T @ fn) / np.maximum(np.linalg.norm(V, axis=0), 1e-300)
        mults.append(mu)
        trivial.append(int(np.argmax(align)))
    return ShootingResult(converged=converged.cpu().numpy(), state=x, period=T, residual=residual.cpu().numpy(),
                          monodromy=sol.tangent, multipliers=mults, trivial=np.array(trivial, dtype=np.int64),
                          n_steps=int(n_steps), iterations=iterations)


# ---------------------------------------------------------------------------------------------------------------------
# the analysis
# ---------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class DynamicsResult(Result):
    """The ``/dynamics`` group of the report (see /work/notes/dynamics_readme.md for every field)."""

    analysis = "dynamics"
    classification: str
    dt: float
    time_unit: str
    input: np.ndarray
    initial_states: np.ndarray
    final_states: np.ndarray
    trajectory_kind: np.ndarray
    trajectory_attractor: np.ndarray
    trajectory_period: np.ndarray
    trajectory_closure: np.ndarray
    trajectory_drift: np.ndarray
    warmup_steps: int
    attractors: list
    cycles: dict
    fixed_points: np.ndarray
    euler: list
    euler_eigenvalues: np.ndarray
    euler_summary: dict
    flow: dict
    initial: dict
    structure: dict | None
    invariant: dict | None
    pca: dict
    notes: list

    def dominant(self) -> dict | None:
        return self.attractors[0] if self.attractors else None

    def summary(self) -> dict:
        dom = self.dominant() or {}
        counts = {k: int(np.sum(self.trajectory_kind == k)) for k in KINDS if np.any(self.trajectory_kind == k)}
        st = self.structure or {}
        inv = self.invariant or {}
        eu = self.euler_summary
        out = {
            "classification": self.classification,
            "trajectory_kinds": counts,
            "n_attractors": len(self.attractors),
            "basin_share": dom.get("basin_share"),
            "period": dom.get("period_steps"),
            "period_time": dom.get("period_time"),
            "period_integer": dom.get("period_integer"),
            "initial_period": self.initial.get("period_steps"),
            "initial_period_time": self.initial.get("period_time"),
            "initial_closure": self.initial.get("closure"),
            "flow_classification": self.flow.get("kind"),
            "flow_cycle": self.flow.get("cycle") if dom.get("flow_cycle") is None else dom.get("flow_cycle"),
            "flow_period": dom.get("flow_period", self.flow.get("period")),
            "floquet_max": dom.get("floquet_max", self.flow.get("floquet_max")),
            "floquet_trivial": dom.get("floquet_trivial", self.flow.get("floquet_trivial")),
            "floquet_stability": dom.get("floquet_stability", self.flow.get("stability")),
            "floquet_source": dom.get("floquet_source", "flow" if self.flow.get("cycle") else None),
            "amplitude": dom.get("amplitude"),
            "output_amplitude": dom.get("output_amplitude"),
            "lyapunov_exponents": dom.get("exponents"),
            "skew_fraction": st.get("skew_fraction"),
            "sym_top_eigenvalue": st.get("sym_top_eigenvalue"),
            "purely_imaginary": st.get("purely_imaginary"),
            "gamma": st.get("gamma"),
            "euler_factor": eu.get("factor"),
            "euler_margin": eu.get("margin"),
            "euler_max_stable_step": eu.get("max_stable_step"),
            "euler_step": self.dt,
            "euler_flagged": eu.get("flagged"),
            "invariant": inv.get("name"),
            "invariant_conserved": inv.get("conserved_by_flow"),
            "invariant_drift": inv.get("drift"),
            "invariant_drift_flow": inv.get("drift_flow"),
            "invariant_drift_euler": inv.get("drift_euler"),
            "time_unit": self.time_unit,
            "input": self.input.tolist(),
        }
        return out


def _time_unit(model: Model) -> str:
    cell = model.cell
    if model.dt is not None:
        return f"model time units (dt = {model.dt:g} per step)"
    if isinstance(cell, ElmanCell):
        if cell.form == "residual":
            return f"time of the flow dh/dt = phi(W h + U u + b) (dt = eps = {cell.alpha:g} per step)"
        return f"tau (dt = alpha = {cell.alpha:g} tau per step)"
    return "steps (no dt known)"


def _constant_input(model: Model, options: DynamicsOptions, ctx: RunContext) -> torch.Tensor:
    cell = model.cell
    values = options.input_values()
    where = "--input"
    if values is None and model.metadata.get("autonomous_input") is not None:
        values = model.metadata["autonomous_input"]
        values = [values] if isinstance(values, (int, float)) else list(values)
        where = "the sidecar's autonomous_input"
    if values is None:
        return torch.zeros(cell.n_inputs, dtype=ctx.dtype, device=ctx.device)
    if len(values) != cell.n_inputs:
        raise InputError(f"{where} has {len(values)} value(s) but the model takes {cell.n_inputs} input(s); "
                         f"give {cell.n_inputs} comma-separated numbers")
    return torch.tensor([float(v) for v in values], dtype=ctx.dtype, device=ctx.device)


def _initial_states(model: Model, options: DynamicsOptions, ctx: RunContext) -> torch.Tensor:
    """Gaussian states with scales spread log-uniformly; half from task trajectories when a task is known."""
    cell = model.cell
    B = options.inits
    g = ctx.generator()
    scales = options.init_scale * torch.logspace(-2, 0, B, dtype=ctx.dtype, device=ctx.device)
    h0 = torch.randn(B, cell.n_state, generator=g, dtype=ctx.dtype, device=ctx.device) * scales[:, None]
    if ctx.has_task and B >= 2:
        data = ctx.task(batch=min(B, 64), why="dynamics takes half its initial states from task trajectories")
        states = cell.rollout(cell.initial_state(data.batch), ctx.tensor(data.inputs)).reshape(-1, cell.n_state)
        pick = torch.randperm(states.shape[0], generator=g, device=ctx.device)[: B // 2]
        h0[: pick.shape[0]] = states[pick]
    return h0


def _pca(X: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    flat = X.reshape(-1, X.shape[-1])
    flat = flat[torch.isfinite(flat).all(-1)]
    if flat.shape[0] > 20000:
        flat = flat[torch.linspace(0, flat.shape[0] - 1, 20000, device=flat.device).long()]
    mean = flat.mean(0) if flat.shape[0] else torch.zeros(X.shape[-1], dtype=X.dtype, device=X.device)
    if flat.shape[0] < 2:
        basis = torch.eye(X.shape[-1], k, dtype=X.dtype, device=X.device)
        return mean, basis
    _, _, Vh = torch.linalg.svd(flat - mean, full_matrices=False)
    basis = Vh[:k].T
    if basis.shape[1] < k:
        basis = torch.cat([basis, torch.zeros(X.shape[-1], k - basis.shape[1], dtype=X.dtype, device=X.device)], 1)
    return mean, basis


def _exponents(cell: Cell, X: torch.Tensor, reps: list, u: torch.Tensor, k: int, steps: int,
               generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The leading ``k`` Lyapunov exponents (per step) of each attractor, by the shared propagator
    (:func:`rnnprobe.numerics.lyapunov.lyapunov_spectrum`), from three states of its representative's record
    (a third of the record apart) in one batch. Returns ``(exponents [A, k], stderr [A, k])``."""
    from rnnprobe.numerics.lyapunov import lyapunov_spectrum

    T = X.shape[1]
    picks = [T - 1, T - 1 - T // 3, T - 1 - 2 * (T // 3)]
    h0 = torch.stack([X[r, t] for r in reps for t in picks])
    # the frame warms up as long as it accumulates: a weakly attracting cycle whose period depends on its amplitude
    # shears transverse components into the along-curve one, which biases short runs
    est = lyapunov_spectrum(cell, h0, u, k=k, steps=steps, warmup=steps, generator=generator)
    per = np.asarray(est.per_init, dtype=np.float64).reshape(len(reps), len(picks), -1)
    return per.mean(1), per.std(1, ddof=1) / math.sqrt(len(picks))


def _classify_by_exponents(lam: np.ndarray, tol: np.ndarray) -> str:
    """fixed point / limit cycle / quasi-periodic / chaotic from a spectrum (per step), with the shared rule
    (:func:`rnnprobe.numerics.lyapunov.classify`): a positive exponent is chaos, one zero a limit cycle (of a
    sampled flow: an invariant circle of the map), two or more zeros a torus."""
    from rnnprobe.numerics.lyapunov import classify

    label, _ = classify(lam, tol, stationary=False)
    return {"chaotic": "chaotic", "torus": "quasi_periodic", "limit cycle": "limit_cycle"}.get(label, "unresolved")


def _log_slope(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of log y against t for each row of y [B, T] (NaN where y is not positive)."""
    ly = torch.log(y.clamp_min(torch.finfo(y.dtype).tiny))
    tc = t - t.mean()
    slope = ((ly - ly.mean(1, keepdim=True)) * tc).sum(1) / (tc * tc).sum()
    ok = (y > 0).all(1) & torch.isfinite(y).all(1)
    return torch.where(ok, slope, torch.full_like(slope, math.nan))


def _rate(cell: ElmanCell, dt: float) -> float:
    """A bound on the field's Lipschitz constant: (alpha / dt) (||W||_2 max|phi'| + 1), per time unit."""
    gain = cell.nl.dphi(torch.linspace(-3, 3, 61, dtype=cell.dtype, device=cell.device)).abs().max().item()
    return cell.alpha / dt * (torch.linalg.matrix_norm(cell.W_hh, ord=2).item() * gain + 1.0)


def _initial_oscillation(cell: Cell, X: torch.Tensor, dt: float, options: DynamicsOptions) -> dict:
    """The oscillation a network makes from where it starts, before any long-run drift: the return of its
    trajectory X [1, T, S] to its last point. With a readout, of the output (what the network was trained to
    produce; slow state directions that the readout ignores may wander) embedded as (y, dy) per output, each
    scaled by its standard deviation so that a sine traces a circle; else of the state."""
    if not bool(torch.isfinite(X).all()):
        return {"oscillating": False, "period_steps": math.nan, "period_time": math.nan, "closure": math.nan,
                "of": "output" if cell.has_readout else "state"}
    Z = X
    if cell.has_readout:
        y = cell.readout(X)
        dy = y[:, 1:] - y[:, :-1]
        y = y[:, 1:]
        tiny = torch.finfo(X.dtype).tiny
        Z = torch.cat([y / y.std(1, keepdim=True).clamp_min(tiny), dy / dy.std(1, keepdim=True).clamp_min(tiny)], -1)
    size, _ = _size(Z)
    rec = _returns(Z, size.clamp_min(torch.finfo(X.dtype).tiny))
    P = rec["period"][0].item()
    closure = rec["closure_first"][0].item()
    ok = bool(rec["found"][0]) and closure < options.cycle_tol
    return {"oscillating": ok, "period_steps": P, "period_time": P * dt, "closure": closure,
            "of": "output" if cell.has_readout else "state"}


def _flow_trajectory(cell: ElmanCell, h0: torch.Tensor, u: torch.Tensor, dt: float, steps: int) -> torch.Tensor:
    """The flow from ``h0`` [1, S] over ``steps * dt``, sampled once per map step: [steps + 1, S].

    RK4 substeps of at most 0.1 / rate when the invariant is measured along it (residual cells: its drift
    must resolve 1e-8), 0.25 / rate otherwise (classification and a starting point for shooting only)."""
    h_rate = 0.1 if flows.has_invariant(cell)[0] else 0.25
    sub = min(max(1, int(math.ceil(dt * _rate(cell, dt) / h_rate))), max(1, 200000 // max(steps, 1)))
    sol = flows.integrate(cell, h0, steps * dt, steps * sub, u, dt=dt, record=True)
    return sol.states[0, ::sub]


def _flow_reference(cell: ElmanCell, Y: torch.Tensor, u: torch.Tensor, dt: float, options: DynamicsOptions,
                    notes: list, shoot: bool = True) -> dict:
    """What the flow does from the dominant trajectory's initial state: its trajectory ``Y`` [T, S] (sampled per
    map step) classified on its second half, and a periodic orbit shot from it when it returns to itself."""
    half = Y[None, Y.shape[0] // 2:]
    finite = bool(torch.isfinite(half).all())
    out: dict = {"kind": "divergent" if not finite else "unresolved", "cycle": False}
    if not finite:
        return out
    size, _ = _size(half)
    speed = (half[0, -1] - half[0, -2]).norm().item() / (1.0 + half[0, -1].norm().item())
    if speed < options.fixed_tol:
        out["kind"] = "fixed_point"
        return out
    rec = _returns(half, size.clamp_min(torch.finfo(Y.dtype).tiny))
    if not (bool(rec["found"][0]) and rec["closure"][0].item() < options.cycle_tol):
        drift, trend = _spread_drift(half, rec["period"])
        out["kind"] = "divergent" if drift[0].item() > options.drift_tol and trend[0].item() > 5.0 else "unresolved"
        return out
    T0 = rec["period"][0].item() * dt
    if not shoot or Y.shape[1] > options.floquet_max_units:
        out.update({"kind": "limit_cycle", "cycle": True, "period": T0, "period_estimate_only": True})
        return out
    sh = _shoot(cell, half[0, -1][None], [T0], u, dt, options, notes)
    out.update(_shooting_row(sh, 0))
    out["kind"] = "limit_cycle" if out["cycle"] else "unresolved"
    return out


def _shoot(cell: ElmanCell, x: torch.Tensor, T0: list, u: torch.Tensor, dt: float, options: DynamicsOptions,
           notes: list) -> ShootingResult:
    n_steps = max(options.floquet_steps, int(math.ceil(max(T0) * _rate(cell, dt) / 0.1)))
    if n_steps > 50000:
        notes.append(f"the flow's cycle needs {n_steps} RK4 steps per period; capped at 50000")
        n_steps = 50000
    return shoot_cycle(cell, x, torch.tensor(T0, dtype=cell.dtype, device=cell.device), u, dt=dt, n_steps=n_steps)


def _shooting_row(sh: ShootingResult, j: int) -> dict:
    """Summary fields of the j-th orbit of a shooting result."""
    if not bool(sh.converged[j]):
        return {"cycle": False}
    mu = sh.multipliers[j]
    t = int(sh.trivial[j])
    rest = np.delete(mu, t)
    top = float(np.max(np.abs(rest))) if rest.size else math.nan
    stability = "stable"
    if rest.size:
        stability = "neutral" if abs(top - 1.0) <= 1e-4 else "stable" if top < 1.0 else "unstable"
    return {"cycle": True, "period": sh.period[j].item(), "residual": float(sh.residual[j]),
            "floquet": mu, "floquet_trivial": complex(mu[t]), "floquet_max": top, "stability": stability,
            "rk4_steps": sh.n_steps}


def _invariants(cell: Cell, X: torch.Tensor, u: torch.Tensor, dt: float, rep: int,
                structure: dict | None, Y: torch.Tensor | None) -> dict:
    """The motion invariant along the map's trajectories from the initial states ``X`` [B, steps + 1, S] and
    along the flow ``Y`` [steps + 1, S] from the representative's initial state: drifts (d log H / dt)."""
    ok, why = flows.has_invariant(cell)
    if not ok:
        return {"name": None, "applies": False, "reason": why}
    steps = X.shape[1] - 1
    H = flows.motion_invariant(cell, X, u)
    t = torch.arange(steps + 1, dtype=X.dtype, device=X.device) * dt
    drift = _log_slope(H, t)
    Hf = flows.motion_invariant(cell, Y, u)
    drift_flow = _log_slope(Hf[None], t)[0]
    predicted = flows.invariant_rate(cell, X[rep], u, dt=dt) / H[rep].clamp_min(torch.finfo(X.dtype).tiny)
    name = f"H = sum_i Phi((W h + U u + b)_i), Phi' = {cell.nonlinearity}" + (
        " (log cosh)" if cell.nonlinearity == "tanh" else "")
    skew = bool(structure is not None and structure["skew_fraction"] >= 1.0 - 1e-12)
    norms = (X * X).sum(-1)
    return {
        "name": name,
        "applies": True,
        "reason": "",
        "conserved_by_flow": skew,
        "closed_level_sets": flows.closed_level_sets(cell.nonlinearity),
        "drift": drift[rep].item(),
        "drift_flow": drift_flow.item(),
        "drift_euler": (drift[rep] - drift_flow).item(),
        "drift_predicted_flow": predicted[torch.isfinite(predicted)].mean().item() if bool(
            torch.isfinite(predicted).any()) else math.nan,
        "trajectory_drift": drift,
        "norm_drift": _log_slope(norms, t),
        "series_time": t,
        "series": H[rep],
        "series_flow": Hf,
        "representative": rep,
    }


def run(model: Model, options: DynamicsOptions, ctx: RunContext) -> DynamicsResult:
    cell = model.cell
    dt = flows.time_step(cell, model.dt)
    notes: list[str] = []
    u = _constant_input(model, options, ctx)
    structure = None
    try:
        W = cell.matrices()["W_hh"]
        structure = weight_structure(W, imag_tol=options.imag_tol)
    except NoRecurrentMatrix as e:
        notes.append(f"no structure of W_hh: {e.message}")
    need = 2 * options.inits * (options.steps + 1) * cell.n_state * torch.finfo(ctx.dtype).bits // 8
    if need > 4 * 1024**3:
        raise InputError(f"--inits {options.inits} x --steps {options.steps} x {cell.n_state} state units needs "
                         f"{need / 1024**3:.1f} GiB of recorded states (limit 4 GiB); lower --inits or --steps")
    h0 = _initial_states(model, options, ctx)
    att = find_attractors(cell, h0, u, warmup=options.warmup, max_warmup=options.max_warmup, steps=options.steps,
                          cycle_tol=options.cycle_tol, fixed_tol=options.fixed_tol, drift_tol=options.drift_tol,
                          progress=ctx.progress)
    X = att.record
    B, T, S = X.shape
    kind_arr = np.array(att.kind, dtype=object)
    reps = att.representative
    member = att.member.clone()
    if att.warmup >= options.max_warmup and options.max_warmup > options.warmup:
        notes.append(f"the warm-up ran to --max-warmup={options.max_warmup}: some orbit was still changing size")
    if bool(att.converging.any()):
        notes.append(f"{int(att.converging.sum())} trajectories were still converging after {att.warmup} steps "
                     "(unresolved); raise --max-warmup")

    # Lyapunov exponents of each attractor, and the kinds the returns could not decide
    exps: list = [None] * len(reps)
    exp_err: list = [None] * len(reps)
    if options.exponents > 0 and reps:
        lam, err = _exponents(cell, X, reps, u, min(options.exponents, S), options.steps, ctx.generator(1))
        for a, r in enumerate(reps):
            exps[a], exp_err[a] = lam[a], err[a]
            tol = np.maximum(options.zero_tol, 4.0 * np.nan_to_num(err[a]))
            by = _classify_by_exponents(lam[a], tol)
            if kind_arr[r] == "unresolved" and by in ("chaotic", "quasi_periodic") and not bool(att.converging[r]):
                kind_arr[((member == a) & ~att.converging).cpu().numpy()] = by
            elif kind_arr[r] == "limit_cycle" and by != "limit_cycle" and not (
                    att.closure_first[r].item() < 1e-8):  # an integer-period orbit of the map has no zero exponent
                notes.append(f"attractor {a}: the returns say limit cycle but the exponents "
                             f"{np.array2string(lam[a], precision=5)} (per step) do not show exactly one zero; "
                             "raise --steps for better estimates")

    # attractors: table rows, most populous first; divergent trajectories form one pseudo-attractor
    rows = []
    cycles: dict = {}
    readout = cell.has_readout
    for a, r in enumerate(reps):
        share = float((member == a).sum().item()) / B
        row = {"kind": str(kind_arr[r]), "basin_share": share, "representative": int(r),
               "exponents": None if exps[a] is None else exps[a].tolist(),
               "exponents_stderr": None if exp_err[a] is None else exp_err[a].tolist()}
        if kind_arr[r] == "fixed_point":
            row["state_norm"] = X[r, -1].norm().item()
        rows.append(row)
    n_div = int(np.sum(kind_arr == "divergent"))
    if n_div:
        rows.append({"kind": "divergent", "basin_share": n_div / B,
                     "representative": int(np.argmax(kind_arr == "divergent")), "exponents": None})
    order = sorted(range(len(rows)), key=lambda i: -rows[i]["basin_share"])
    remap = {old: new for new, old in enumerate(order)}
    rows = [rows[i] for i in order]
    lut = torch.tensor([remap[i] for i in range(len(reps))] + [-1], dtype=torch.long, device=member.device)
    member = lut[torch.where(member >= 0, member, torch.full_like(member, len(reps)))].cpu()
    div_index = next((i for i, rrow in enumerate(rows) if rrow["kind"] == "divergent"), -1)
    if div_index >= 0:
        member[torch.as_tensor(kind_arr == "divergent")] = div_index

    # limit cycles: period, amplitude, the cycle, the map's and the flow's multipliers
    cyc_rows = [i for i, rrow in enumerate(rows) if rrow["kind"] == "limit_cycle"]
    shoot_x, shoot_T = [], []
    for i in cyc_rows:
        rrow = rows[i]
        r = rrow["representative"]
        P = att.period[r].item()
        p = max(1, int(round(P)))
        i0 = T - 3 - p  # one revolution from i0 to i0 + p, with two recorded states beyond each end
        states = X[r, i0: i0 + p]
        integer = bool(att.closure_first[r].item() < 1e-8 and abs(P - round(P)) < 1e-6)
        if S > options.floquet_max_units:
            mu, floor, triv = np.zeros(0, dtype=complex), math.nan, 0
        elif integer:
            mu, _, floor = map_multipliers(cell, states, u)
            triv = int(np.argmin(np.abs(mu - 1.0)))
        else:
            # the curve's tangents at both ends, by the 5-point central difference (4th order)
            def tangent(i):
                return (8.0 * (X[r, i + 1] - X[r, i - 1]) - (X[r, i + 2] - X[r, i - 2])) / 12.0

            mu, _, floor = map_multipliers(cell, states, u, along=(tangent(i0), tangent(i0 + p)))
            triv = 0
        hid = cell.hidden(states)
        centre = states.mean(0)
        rrow.update({
            "period_steps": float(round(P)) if integer else P,
            "period_time": (round(P) if integer else P) * dt,
            "period_integer": integer,
            "closure": att.closure[r].item(),
            "amplitude": (0.5 * (hid.amax(0) - hid.amin(0))).max().item(),
            "amplitude_rms": (states - centre).norm(dim=-1).pow(2).mean().sqrt().item(),
            "output_amplitude": (0.5 * (cell.readout(states).amax(0) - cell.readout(states).amin(0))).tolist()
            if readout else None,
            "map_multiplier_trivial": complex(mu[triv]) if mu.size else None,
            "map_multiplier_max": float(np.max(np.abs(np.delete(mu, triv)))) if mu.size > 1 else math.nan,
        })
        cycles[f"cycle_{i}"] = {"states": states, "map_multipliers": mu, "map_floor": floor,
                                "outputs": cell.readout(states) if readout else None}
        shoot_x.append(X[r, -1])
        shoot_T.append(P * dt)
    if cyc_rows and S > options.floquet_max_units:
        notes.append(f"{S} state units > --floquet-max-units={options.floquet_max_units}: no multipliers (each costs "
                     "products of S x S matrices over a period); the Lyapunov exponents give the cycle's stability")
    elif cyc_rows and isinstance(cell, ElmanCell):
        sh = _shoot(cell, torch.stack(shoot_x), shoot_T, u, dt, options, notes)
        for j, i in enumerate(cyc_rows):
            rrow = rows[i]
            fl = _shooting_row(sh, j)
            rrow["flow_cycle"] = fl["cycle"]
            if fl["cycle"]:
                rrow.update({"flow_period": fl["period"], "flow_residual": fl["residual"],
                             "floquet_trivial": fl["floquet_trivial"], "floquet_max": fl["floquet_max"],
                             "floquet_stability": fl["stability"], "floquet_source": "flow"})
                orbit = flows.integrate(cell, sh.state[j: j + 1], sh.period[j], min(sh.n_steps, 4000), u, dt=dt,
                                        record=True).states[0]
                dist = torch.cdist(cycles[f"cycle_{i}"]["states"], orbit).amin(1).max().item()
                rrow["flow_map_distance"] = dist / max(rrow["amplitude_rms"], 1e-300)
                cycles[f"cycle_{i}"].update({"flow_orbit": orbit, "floquet": fl["floquet"],
                                             "floquet_trivial_index": int(sh.trivial[j]),
                                             "monodromy": sh.monodromy[j]})
            else:
                rrow.update({"floquet_trivial": rrow["map_multiplier_trivial"],
                             "floquet_max": rrow["map_multiplier_max"], "floquet_source": "map"})
                notes.append(f"attractor {i}: the flow has no periodic orbit near the map's cycle (Newton shooting "
                             f"did not converge): the oscillation is a property of the discrete map "
                             f"(step dt = {dt:g}), not of the flow it integrates")
    if cyc_rows and (S > options.floquet_max_units or not isinstance(cell, ElmanCell)):
        for i in cyc_rows:
            has = rows[i]["map_multiplier_trivial"] is not None
            rows[i].update({"floquet_trivial": rows[i]["map_multiplier_trivial"],
                            "floquet_max": rows[i]["map_multiplier_max"], "floquet_source": "map" if has else None})

    # Euler stability at the origin and at the fixed points (equilibria of the flow as well: F(h) = h iff f(h) = 0),
    # found by the shared solver from the attracting ones, the centres of the other attractors, the origin and
    # some initial states (unstable equilibria inside cycles included)
    from rnnprobe.numerics.fixedpoints import FIXED, find_fixed_points

    seeds = [torch.zeros(1, S, dtype=ctx.dtype, device=ctx.device), h0[: min(B, 8)]]
    seeds += [X[rw["representative"]][None, -1] if rw["kind"] == "fixed_point" else
              X[rw["representative"]].mean(0, keepdim=True) for rw in rows if rw["kind"] != "divergent"]
    seeds = torch.cat(seeds)
    seeds = seeds[torch.isfinite(seeds).all(-1)]
    fps = find_fixed_points(cell, u, seeds)
    fixed = fps.states[fps.labels == FIXED]
    probe = torch.cat([torch.zeros(1, S, dtype=ctx.dtype, device=ctx.device), fixed])
    eu = euler_stability(cell, probe, u, dt=dt)
    if not isinstance(cell, ElmanCell):
        # a gated map is not the Euler step of a known flow: its factor is just the map's spectral radius
        eu["flagged"] = torch.zeros_like(eu["flagged"])
        notes.append(f"a {cell.kind} cell is not an Euler discretisation: euler_factor is the spectral radius of "
                     "the map's Jacobian, and nothing is flagged")
    labels = ["origin"] + [f"fixed point {i}" for i in range(fixed.shape[0])]
    euler_rows = [{"state": labels[i], "factor": eu["factor"][i].item(), "max_re": eu["max_re"][i].item(),
                   "max_stable_step": eu["max_stable_step"][i].item(), "flagged": bool(eu["flagged"][i])}
                  for i in range(probe.shape[0])]
    applicable = torch.isfinite(eu["max_stable_step"])
    margin = (1.0 - eu["factor"][applicable].max().item()) if bool(applicable.any()) else math.nan
    max_step = eu["max_stable_step"][applicable].min().item() if bool(applicable.any()) else math.nan
    flagged = bool(eu["flagged"].any())
    euler_summary = {"factor": eu["factor"].max().item(), "margin": margin, "max_stable_step": max_step,
                     "flagged": flagged, "step": dt}
    if flagged:
        where = ", ".join(rw["state"] for rw in euler_rows if rw["flagged"])
        worst = max(rw["factor"] for rw in euler_rows if rw["flagged"])
        ctx.warn(f"the Euler step dt={dt:g} amplifies perturbations by up to {worst:.6g} per step at {where}, "
                 f"where the flow does not (largest stable step {max_step:.3g}): the map spirals out where the flow "
                 "is neutral or stable")

    # a reference start: the zero state, where trained networks start their tasks, unless it is an equilibrium
    # (then the dominant attractor's initial state); the map's and the flow's trajectories from it, the
    # oscillation the map makes from there (before any drift), and the motion invariants along them
    zero = torch.zeros(1, S, dtype=ctx.dtype, device=ctx.device)
    moves = (cell.step(zero, cell._inputs(u, 1)) - zero).norm().item() > options.fixed_tol
    dom_r = rows[0]["representative"] if rows else 0
    h_ref = zero if moves else h0[dom_r: dom_r + 1]
    X0 = torch.cat([h0[:, None], _run(cell, h0, u, options.steps)], dim=1)  # the map from the initial states
    X_ref = torch.cat([h_ref[:, None], _run(cell, h_ref, u, options.steps)], dim=1)
    # over the task's length when a task is known (the horizon the network was trained on), else the record's
    horizon = options.steps
    if ctx.has_task:
        horizon = max(8, min(options.steps, ctx.task(batch=min(B, 64)).length))
    initial = _initial_oscillation(cell, X_ref[:, : horizon + 1], dt, options)
    initial["horizon"] = horizon
    initial["start"] = "zero state" if moves else f"initial state {dom_r}"
    flow: dict = {"kind": None, "cycle": False}
    Y = None
    if isinstance(cell, ElmanCell):
        Y = _flow_trajectory(cell, h_ref, u, dt, options.steps)
        shot = bool(rows and rows[0].get("flow_cycle"))  # the dominant map cycle's flow orbit is known already
        flow = _flow_reference(cell, Y, u, dt, options, notes, shoot=not shot)
        flow["trajectory"] = Y
        flow["start"] = initial["start"]
    invariant = _invariants(cell, torch.cat([X0, X_ref]), u, dt, B, structure, Y)
    if invariant.get("applies"):
        invariant["trajectory_drift"] = invariant["trajectory_drift"][:B]
        invariant["norm_drift"] = invariant["norm_drift"][:B]

    mean, basis = _pca(X[torch.as_tensor(kind_arr != "divergent")] if n_div < B else X)
    show = torch.linspace(0, B - 1, min(B, 12)).long()
    stride = max(1, T // 1000)
    pca = {"mean": mean, "basis": basis, "trajectories": (X[show, ::stride] - mean) @ basis,
           "transients": (X0[show, : min(X0.shape[1], 1000)] - mean) @ basis,
           "trajectory_index": show.numpy(), "fixed_points": (fixed - mean) @ basis}
    for name, c in cycles.items():
        pca[name] = (c["states"] - mean) @ basis
        if "flow_orbit" in c:
            pca[name + "_flow"] = (c["flow_orbit"] - mean) @ basis

    classification = rows[0]["kind"] if rows else "unresolved"
    return DynamicsResult(
        classification=classification, dt=dt, time_unit=_time_unit(model), input=u.cpu().numpy(),
        initial_states=h0.cpu().numpy(), final_states=X[:, -1].cpu().numpy(),
        trajectory_kind=kind_arr.astype(str), trajectory_attractor=member.numpy(),
        trajectory_period=att.period.cpu().numpy(), trajectory_closure=att.closure.cpu().numpy(),
        trajectory_drift=att.drift.cpu().numpy(), warmup_steps=att.warmup, attractors=rows, cycles=cycles,
        fixed_points=fixed.cpu().numpy(), euler=euler_rows, euler_eigenvalues=eu["eigenvalues"].cpu().numpy(),
        euler_summary=euler_summary, flow=flow, initial=initial,
        structure=None if structure is None else {k: v for k, v in structure.items()},
        invariant=invariant, pca=pca, notes=notes,
    )


def gate(result: DynamicsResult, options: DynamicsOptions) -> list[str]:
    failures = []
    if options.fail_if_euler_unstable and result.euler_summary["flagged"]:
        failures.append(f"the Euler step dt={result.dt:g} is unstable where the flow is not "
                        f"(factor {result.euler_summary['factor']:.6g}, largest stable step "
                        f"{result.euler_summary['max_stable_step']:.3g})")
    if options.expect is not None and result.classification != options.expect:
        failures.append(f"the dominant attractor is {result.classification}, not {options.expect}")
    return failures



ANALYSIS = AnalysisSpec(
    name="dynamics",
    help="Oscillations and the flow behind the map: limit cycles, Floquet multipliers, Euler stability, invariants.",
    description=(
        "Classify the attractors of the autonomous dynamics (constant input) from many initial states at once: "
        "fixed point, limit cycle, quasi-periodic, chaotic or divergent, with basin shares. For a limit cycle: "
        "period in steps and time units, amplitude, the cycle, the map's multipliers, and the continuous-time "
        "flow's periodic orbit with its Floquet multipliers. Also the structure of W_hh (skew fraction, symmetric "
        "part, purely imaginary spectrum), the stability of the explicit Euler step at the origin and the fixed "
        "points (max |1 + dt lambda| and the largest stable step), and for residual cells the motion invariant "
        "H = sum Phi(W h + U u + b) and its drift along the map and the flow."),
    options=DynamicsOptions,
    run=run,
    example="rnnprobe dynamics sample_checkpoints/osc_rnn.pt --expect limit_cycle",
    plot="rnnprobe.plots.dynamics:plot",
    gate=gate,
    uses_task=True,
)
