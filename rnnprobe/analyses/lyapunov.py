"""``rnnprobe lyapunov``: Lyapunov spectrum, Lyapunov vectors, group-tangent exponent and pseudo-gap.

For a checkpoint's map ``h_{t+1} = F(h_t, u_t)`` (any cell: Elman, leaky,
rate-outside, residual, GRU, LSTM, user cells):

* the k leading Lyapunov exponents (or all), by Benettin's QR method along
  ``--inits`` trajectories batched in one tensor program, after a warm-up of
  state and frame, with the QR interval chosen from the measured spread of
  growth rates (:mod:`rnnprobe.numerics.lyapunov` holds the propagator);
* their standard errors across initial conditions and across time blocks,
  running estimates, and a warning when the two halves of the run disagree;
* the sum rule when the full spectrum is computed: the sum of the exponents
  against the time average of ln|det J_t| over the same steps;
* the Kaplan-Yorke dimension, the entropy rate (sum of the positive
  exponents), a classification, exponents per time unit when dt is known;
* the backward Lyapunov vectors at the end, and covariant Lyapunov vectors
  (Ginelli et al. 2007) with ``--clv``;
* with a continuous group (``--group so2``, ``--group file:G.npz``, ``--tangent
  G.npz`` or the sidecar's ``symmetry``): the group-tangent exponent
  ``lambda_xi`` of ``xi = A h`` along the zero-input trajectories, the
  pseudo-gap ``max(0, -lambda_xi)`` and the memory lifetime it predicts,
  the lifetime measured by displacing the state along the orbit and timing
  its relaxation, and the control of Mo (2026): whether the zero-input
  trajectory itself moves along the orbit (then its time-translation zero
  exponent looks like protection even when the symmetry is broken).

All exponents are per step (natural log); divide by dt for per time unit.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from rnnprobe.analyses.base import AnalysisSpec, Options, Result, RunContext, option
from rnnprobe.cells.base import Cell
from rnnprobe.errors import InputError
from rnnprobe.groups import parse_group
from rnnprobe.model import Model
from rnnprobe.numerics import lyapunov as lyap

__all__ = ["LyapunovOptions", "LyapunovResult", "CLASSES", "run", "gate", "ANALYSIS"]

CLASSES = ("chaotic", "stable fixed point", "stable periodic orbit", "stable (input-driven)", "limit cycle",
           "torus", "neutral fixed point", "neutral (input-driven)")
AUTO_ALL_UP_TO = 256
AUTO_LEADING = 64
CLV_MEMORY = 512 * 2**20


@dataclasses.dataclass(frozen=True, kw_only=True)
class LyapunovOptions(Options):
    k: str = option("auto", flag="--k", metavar="K|all|auto",
                    help=f"How many exponents: a number, 'all', or 'auto' (all when the state has at most "
                         f"{AUTO_ALL_UP_TO} numbers, else the leading {AUTO_LEADING}).")
    steps: int = option(10000, min=1, help="Steps accumulated after the warm-up.")
    warmup: int = option(1000, min=0, help="Steps that evolve the state and the tangent frame (with QR) before "
                                           "anything is accumulated.")
    qr_every: int | None = option(None, min=1, metavar="M",
                                  help="Re-orthonormalise every M steps (default: the largest M with "
                                       "M * (lambda_1 - lambda_k) <= 16, from a pilot with M = 1).")
    inits: int = option(8, min=1, max=4096, help="Initial conditions, run as one batch.")
    init_scale: float = option(0.5, min=0.0, min_open=True,
                               help="Initial states are Gaussian with this standard deviation per unit.")
    input: str = option("auto", choices=("auto", "zero", "task"),
                        help="Drive: zero input (autonomous) or the task/data inputs (concatenated trials, "
                             "cycled to cover the run); auto: task when one is known, else zero.")
    group: str | None = option(None, metavar="SPEC",
                               help="Continuous group for the tangent exponent: so2[:k1,...] or file:G.npz "
                                    "(default: the sidecar's 'symmetry' when it is continuous).")
    tangent: str | None = option(None, metavar="FILE",
                                 help="Lie-algebra generators for the tangent exponent: an .npz with "
                                      "'generators' of shape g x S x S (instead of --group).")
    tangent_input: str = option("zero", choices=("zero", "same"),
                                help="Input along which the tangent exponent is measured: zero (the autonomous "
                                     "restriction) or the same as the spectrum's.")
    clv: bool = option(False, help="Also compute covariant Lyapunov vectors (Ginelli's method).")
    clv_window: int | None = option(None, min=1, metavar="STEPS",
                                    help="Steps of the backward iteration for --clv (default: min(--steps, 1000), "
                                         f"less if the R factors would take more than {CLV_MEMORY // 2**20} MiB).")
    zero_tol: float = option(1e-3, min=0.0, min_open=True,
                             help="Exponents (per step) with |lambda| below max(this, 3 stderr) count as zero.")
    displacement: float = option(1e-4, min=0.0, min_open=True,
                                 help="Angle of the displacement along the group orbit whose relaxation "
                                      "measures the lifetime.")
    relax_steps: int | None = option(None, min=10, metavar="STEPS",
                                     help="Steps of the relaxation run (default: 4 predicted lifetimes, "
                                          "between 200 and 20000).")
    orthonormalize: str = option("householder", choices=lyap.METHODS,
                                 help="QR method: householder (LAPACK geqrf + triangular solve) or cholqr2 "
                                      "(CholeskyQR2, falls back to householder when ill-conditioned).")
    expect: str | None = option(None, choices=CLASSES,
                                help="Gate: exit 1 unless the classification is this.")

    def check(self) -> None:
        self.n_exponents(None)
        if self.group is not None and self.tangent is not None:
            raise InputError("--group and --tangent both given; use one of them")

    def n_exponents(self, n_state: int | None) -> int | None:
        """``--k`` resolved for a state of ``n_state`` numbers (None: only validate)."""
        text = str(self.k).strip().lower()
        if text in ("all", "auto"):
            if n_state is None:
                return None
            return n_state if text == "all" or n_state <= AUTO_ALL_UP_TO else AUTO_LEADING
        try:
            k = int(text)
        except ValueError as e:
            raise InputError(f"--k={self.k!r} must be a positive integer, 'all' or 'auto'") from e
        if k < 1:
            raise InputError(f"--k={k} must be >= 1")
        if n_state is not None and k > n_state:
            raise InputError(f"--k={k} exceeds the state dimension {n_state}; use --k all")
        return k


@dataclasses.dataclass
class LyapunovResult(Result):
    analysis = "lyapunov"
    exponents: np.ndarray
    stderr: np.ndarray
    stderr_inits: np.ndarray
    stderr_time: np.ndarray
    per_init: np.ndarray
    first_half: np.ndarray
    second_half: np.ndarray
    unsettled: np.ndarray
    running: np.ndarray
    running_steps: np.ndarray
    vectors: np.ndarray
    clv: np.ndarray | None
    exponents_per_time: np.ndarray | None
    kaplan_yorke_dimension: float
    entropy_rate: float
    classification: str
    n_near_zero: int
    stationary: bool | None
    k: int
    steps: int
    warmup: int
    qr_every: int
    spread: float
    inits: int
    input: str
    units: str
    dt: float | None
    method: str
    max_log_cond: float
    qr_fallbacks: int
    qr_redone: int
    log_det_mean: float | None
    sum_rule_residual: float | None
    tangent: dict | None

    def summary(self) -> dict:
        out = {
            "exponents": self.exponents,
            "stderr": self.stderr,
            "kaplan_yorke_dimension": self.kaplan_yorke_dimension,
            "entropy_rate": self.entropy_rate,
            "classification": self.classification,
            "n_near_zero": self.n_near_zero,
            "steps": self.steps,
            "inits": self.inits,
            "units": self.units,
            "k": self.k,
            "warmup": self.warmup,
            "qr_every": self.qr_every,
            "input": self.input,
            "settled": not bool(np.any(self.unsettled)),
            "sum_rule_residual": self.sum_rule_residual,
        }
        if self.dt is not None:
            out["dt"] = self.dt
            out["exponents_per_time"] = self.exponents_per_time
            out["entropy_rate_per_time"] = self.entropy_rate / self.dt
        t = self.tangent
        if t is not None:
            out.update({
                "group": t["group"],
                "tangent_exponent": t["tangent_exponent"],
                "tangent_stderr": t["tangent_stderr"],
                "pseudo_gap": t["pseudo_gap"],
                "predicted_lifetime": t["predicted_lifetime"],
                "measured_lifetime": t["measured_lifetime"],
                "orbit_moves": t["orbit_moves"],
                "flow_overlap": t["flow_overlap"],
                "protected": t["protected"],
                "tangent_exponents": t["mean"],
            })
            if self.dt is not None:
                out["predicted_lifetime_time"] = t["predicted_lifetime"] * self.dt
                out["measured_lifetime_time"] = t["measured_lifetime"] * self.dt
        return out


# ---------------------------------------------------------------------------------
# pieces of the run
# ---------------------------------------------------------------------------------
def _task_inputs(cell: Cell, options: LyapunovOptions, ctx: RunContext, B: int, length: int) -> torch.Tensor:
    """[B, length, d] inputs: trials concatenated per initial condition, cycled when too few."""
    data = ctx.task(batch=B, why="--input task needs task inputs")
    T = data.length
    per_init = max(1, math.ceil(length / max(T, 1)))
    want = min(B * per_init, 4096)
    if want > data.batch and data.name != "data":
        data = ctx.task(batch=want, why="--input task needs task inputs")
    X = np.asarray(data.inputs, dtype=np.float64)  # [n, T, d]
    n = X.shape[0]
    if X.shape[2] != cell.n_inputs:
        raise InputError(f"the task inputs have width {X.shape[2]} but the model takes {cell.n_inputs} "
                         "(--task/--data)")
    idx = (np.arange(B)[:, None] + B * np.arange(per_init)[None, :]) % n  # trials per init
    seq = X[idx].reshape(B, per_init * T, X.shape[2])[:, :length]
    return ctx.tensor(seq)


def _generators(model: Model, options: LyapunovOptions) -> tuple[torch.Tensor | None, str | None, tuple]:
    """The Lie-algebra generators [g, S, S] of --group / --tangent / the sidecar's symmetry."""
    cell = model.cell
    dims = dict(n_state=cell.n_state, n_inputs=cell.n_inputs, n_outputs=cell.n_outputs)
    if options.tangent is not None:
        group = parse_group(f"file:{options.tangent}", **dims)
        if not group.continuous:
            raise InputError(f"--tangent {options.tangent}: the file must hold 'generators' [g, S={cell.n_state}, "
                             f"S] (Lie-algebra generators), not finite group elements")
        spec = f"file:{options.tangent}"
    elif options.group is not None:
        group = parse_group(options.group, **dims)
        if not group.continuous:
            raise InputError(f"--group {options.group!r} is a finite group ({group.name}): the tangent exponent "
                             "needs a continuous group, e.g. so2 or file:G.npz with 'generators'")
        spec = options.group
    else:
        sym = model.metadata.get("symmetry") if isinstance(model.metadata.get("symmetry"), dict) else None
        if not (sym and isinstance(sym.get("group"), str)):
            return None, None, ()
        try:
            group = parse_group(sym["group"], **dims)
        except InputError:
            return None, None, ()
        if not group.continuous:
            return None, None, ()
        spec = sym["group"]
    A = group.generator_matrices(dtype=cell.dtype, device=cell.device)[0]
    if not bool(torch.isfinite(A).all()):
        raise InputError(f"the generators of {spec} hold non-finite values")
    return A, spec, group.labels


def _nanmean(x: np.ndarray, axis=None) -> np.ndarray:
    """Mean over the finite entries (NaN where there are none), without numpy's empty-slice warning."""
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    n = ok.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(ok, x, 0.0).sum(axis=axis) / np.maximum(n, 1), np.nan)


def _nanse(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Standard error of the mean over the finite entries (NaN with fewer than two)."""
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    n = ok.sum(axis=axis)
    m = _nanmean(x, axis=axis)
    dev = np.where(ok, x - np.expand_dims(m, axis), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (dev**2).sum(axis=axis) / np.maximum(n - 1, 1)
        return np.where(n > 1, np.sqrt(var / np.maximum(n, 1)), np.nan)


def _speeds(cell: Cell, states: torch.Tensor) -> np.ndarray:
    """Zero-input step length ``||F(h) - h|| / (1 + ||h||)`` at kept states [n, B, S] -> [n, B]."""
    n, B, S = states.shape
    X = states.reshape(-1, S)
    v = torch.linalg.vector_norm(cell.step(X, None) - X, dim=1) / (1 + torch.linalg.vector_norm(X, dim=1))
    return v.reshape(n, B).cpu().numpy()


def _settles(speed: np.ndarray) -> np.ndarray:
    """Per trajectory [n, B] -> [B]: the motion dies out (converging to a fixed point)."""
    first, last = speed[0], speed[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        decay = np.log(first / last)
    return (last < 1e-10) | ((decay > 2.0) & (last < 1e-4))


def _clv_window(options: LyapunovOptions, B: int, k: int, m_guess: int) -> int:
    if not options.clv:
        return 0
    want = options.clv_window or min(options.steps, 1000)
    per_block = B * k * k * 8
    fit = int(CLV_MEMORY // max(per_block, 1)) * max(m_guess, 1)
    return max(1, min(want, fit))


# ---------------------------------------------------------------------------------
# the analysis
# ---------------------------------------------------------------------------------
def run(model: Model, options: LyapunovOptions, ctx: RunContext) -> LyapunovResult:
    cell = model.cell
    S = cell.n_state
    k = options.n_exponents(S)
    B = options.inits
    mode = options.input if options.input != "auto" else ("task" if ctx.has_task else "zero")
    A, spec, labels = _generators(model, options)

    clv_window = _clv_window(options, B, k, options.qr_every or 1)
    if options.clv and options.clv_window and clv_window < options.clv_window:
        ctx.warn(f"--clv-window {options.clv_window} reduced to {clv_window} steps: the R factors of {B} "
                 f"trajectories x {k}^2 would exceed {CLV_MEMORY // 2**20} MiB")
    length = options.warmup + options.steps + clv_window
    inputs = _task_inputs(cell, options, ctx, B, length) if mode == "task" else None
    h0 = options.init_scale * torch.randn(B, S, dtype=cell.dtype, device=cell.device, generator=ctx.generator())

    same = A is not None and (mode == "zero" or options.tangent_input == "same")
    total = length + (options.warmup + options.steps if A is not None and not same else 0)
    ctx.progress.start("lyapunov", total=total)
    try:
        est = lyap.lyapunov_spectrum(
            cell, h0, inputs, k=k, steps=options.steps, warmup=options.warmup, qr_every=options.qr_every,
            method=options.orthonormalize, generators=A if same else None, clv_window=clv_window,
            keep_states=32, generator=ctx.generator(1), progress=ctx.progress.advance)
        tan_est = est
        if A is not None and not same:
            tan_est = lyap.lyapunov_spectrum(
                cell, h0, None, k=0, steps=options.steps, warmup=options.warmup, generators=A, keep_states=32,
                progress=ctx.progress.advance)
    finally:
        ctx.progress.stop()
    for w in est.warnings:
        ctx.warn(w)

    stderr = est.stderr
    tol = np.where(np.isfinite(stderr), np.maximum(options.zero_tol, 3 * stderr), options.zero_tol)
    stationary = None
    if mode == "zero" and est.states is not None:
        stationary = bool(np.mean(_settles(_speeds(cell, est.states))) > 0.5)
    label, n0 = lyap.classify(est.exponents, tol, stationary=stationary, driven=mode == "task")
    complete = k == S
    kyd = lyap.kaplan_yorke_dimension(est.exponents, complete=complete)
    if not complete and math.isnan(kyd):
        ctx.warn(f"the Kaplan-Yorke dimension needs more than the {k} leading exponents (their sum is still "
                 "non-negative); rerun with a larger --k")
    if est.sum_rule_residual is not None and math.isfinite(est.sum_rule_residual) \
            and est.sum_rule_residual > 1e-6 * (1 + abs(float(np.sum(est.exponents)))):
        ctx.warn(f"sum rule residual {est.sum_rule_residual:.3g}: the sum of the exponents and the mean "
                 "ln|det J| disagree; use a smaller --qr-every")

    tangent = None
    if A is not None:
        driven = same and mode == "task"
        relax_inputs = None
        if driven:  # the relaxation continues the same input sequence from where the accumulation ended
            L, start = inputs.shape[1], options.warmup + options.steps
            relax_inputs = lambda t: inputs[:, (start + t) % L]  # noqa: E731
        tangent = _tangent(cell, options, ctx, tan_est, A, spec, labels, "task" if driven else "zero", relax_inputs)

    dt = model.dt
    return LyapunovResult(
        exponents=est.exponents, stderr=stderr, stderr_inits=est.stderr_inits, stderr_time=est.stderr_time,
        per_init=est.per_init, first_half=est.first_half, second_half=est.second_half, unsettled=est.unsettled,
        running=est.running, running_steps=est.running_steps, vectors=est.vectors.cpu().numpy(),
        clv=None if est.clv is None else est.clv.cpu().numpy(),
        exponents_per_time=None if dt is None else est.exponents / dt,
        kaplan_yorke_dimension=kyd, entropy_rate=lyap.entropy_rate(est.exponents), classification=label,
        n_near_zero=n0, stationary=stationary, k=k, steps=options.steps, warmup=options.warmup,
        qr_every=est.qr_every, spread=est.spread, inits=B, input=mode, units="per step", dt=dt,
        method=options.orthonormalize, max_log_cond=est.max_log_cond, qr_fallbacks=est.fallbacks,
        qr_redone=est.redone,
        log_det_mean=None if est.log_det is None else float(np.mean(est.log_det)),
        sum_rule_residual=est.sum_rule_residual, tangent=tangent,
    )


def _tangent(cell: Cell, options: LyapunovOptions, ctx: RunContext, est: lyap.LyapunovEstimate, A: torch.Tensor,
             spec: str, labels: tuple, tangent_mode: str, relax_inputs=None) -> dict:
    """Tangent exponent, pseudo-gap, predicted and measured lifetimes, and the orbit-motion control."""
    tan = est.tangent
    lam = tan.exponents  # [B, g]
    B, g = lam.shape
    mean = _nanmean(lam, axis=0)
    se = _nanse(lam, axis=0)
    # a gap inside the estimate's own scatter (or at roundoff level) is no gap: report 0 and an
    # infinite lifetime rather than 1e20 steps from a 1e-21 exponent
    resolved = np.where(np.isfinite(se), np.maximum(3.0 * se, 1e-12), 1e-12)
    gap = np.where(np.isfinite(mean), np.where(-mean > resolved, -mean, 0.0), np.nan)
    with np.errstate(divide="ignore"):
        predicted = np.where(gap > 0, 1.0 / np.where(gap > 0, gap, 1.0), np.inf)
    predicted[~np.isfinite(gap)] = np.nan
    j = int(np.nanargmin(mean)) if np.isfinite(mean).any() else 0  # the least protected direction

    # measured: displace the end state along the orbit and time the relaxation
    if options.relax_steps is not None:
        L = options.relax_steps
    elif math.isfinite(predicted[j]):
        L = int(min(20000, max(200, math.ceil(4 * predicted[j]))))
    else:
        L = int(min(options.steps, 2000)) if options.steps >= 200 else 200
    rel = lyap.relaxation(cell, est.state, A, relax_inputs, steps=L, delta=options.displacement)
    rate = _nanmean(rel.rate, axis=0)
    with np.errstate(invalid="ignore"):
        measured = np.where(rate > 0, 1.0 / np.where(rate > 0, rate, 1.0), np.inf)
    measured[~np.isfinite(rate)] = np.nan

    # the control: does the zero-input orbit itself move along the group direction?
    overlap = speed = None
    moves = False
    flow = float("nan")
    if est.states is not None and tangent_mode == "zero":
        overlap, speed = lyap.flow_overlap(cell, est.states, A)  # [n*B, g], [n*B]
        n = est.states.shape[0]
        overlap = overlap.reshape(n, B, g)
        speed = speed.reshape(n, B)
        late = overlap[n // 2:, :, j]
        per_init = _nanmean(late, axis=0)
        flow = float(_nanmean(per_init))
        moving = ~_settles(_speeds(cell, est.states))
        moves = bool(np.mean(moving & (np.nan_to_num(per_init) > 0.5)) > 0.5)
    if moves:
        ctx.warn(f"the zero-input trajectory moves along the group orbit (flow overlap {flow:.2f}): its "
                 "time-translation zero exponent makes the tangent exponent look protected whatever the symmetry")
    for w in tan.warnings:
        if w not in ctx.warnings:
            ctx.warn(w)
    tol = max(options.zero_tol, 3 * se[j]) if np.isfinite(se[j]) else options.zero_tol
    return {
        "group": spec,
        "labels": list(labels),
        "input": tangent_mode,
        "exponents": lam,
        "mean": mean,
        "stderr": se,
        "pseudo_gap_per_generator": gap,
        "predicted_lifetime_per_generator": predicted,
        "measured_lifetime_per_generator": measured,
        "selected": j,
        "tangent_exponent": float(mean[j]),
        "tangent_stderr": float(se[j]),
        "pseudo_gap": float(gap[j]),
        "predicted_lifetime": float(predicted[j]),
        "measured_lifetime": float(measured[j]),
        "protected": bool(np.isfinite(mean[j]) and abs(mean[j]) <= tol),
        "running": tan.running,
        "running_steps": tan.running_steps,
        "xi_norm": tan.xi_norm,
        "relaxation": {"rate": rel.rate, "lifetime": rel.lifetime, "t": rel.t, "distance": rel.distance,
                       "delta": rel.delta, "fit_from": rel.fit_from, "steps": L},
        "orbit_moves": moves,
        "flow_overlap": flow,
        "overlap": overlap,
        "speed": speed,
    }


def gate(result: LyapunovResult, options: LyapunovOptions) -> list[str]:
    if options.expect is not None and result.classification != options.expect:
        return [f"classification {result.classification!r} is not --expect {options.expect!r} "
                f"(lambda_1 = {result.exponents[0]:.4g} per step)"]
    return []


ANALYSIS = AnalysisSpec(
    name="lyapunov",
    help="Lyapunov spectrum, Lyapunov vectors, group-tangent exponent and pseudo-gap.",
    description=(
        "Lyapunov exponents of the checkpoint's map by Benettin's QR method, batched over --inits "
        "initial conditions (per step; per time unit when dt is known), with standard errors, running "
        "estimates, the sum rule (full spectrum), Kaplan-Yorke dimension, entropy rate and a "
        "classification; backward Lyapunov vectors, covariant ones with --clv. With a continuous group "
        "(--group so2, --group file:G.npz, --tangent G.npz, or the sidecar's symmetry): the group-tangent "
        "exponent under zero input, the pseudo-gap, the predicted and the measured memory lifetime, and "
        "whether the zero-input orbit moves along the group (Mo 2026)."
    ),
    options=LyapunovOptions,
    run=run,
    example="rnnprobe lyapunov sample_checkpoints/flipflop_rnn64.pt --k 8 --steps 5000",
    plot="rnnprobe.plots.lyapunov:plot",
    gate=gate,
    uses_task=True,
)
