"""Lyapunov exponents of a recurrent map through the Cell interface: plain, reusable functions.

    est = lyapunov_spectrum(cell, h0, inputs=None, k=None, steps=10_000, warmup=1_000,
                            qr_every=None, generators=None, clv_window=0)
    est.exponents            # [k], per step, mean over the B initial conditions
    est.tangent.exponents    # [B, g] group-tangent exponents (with ``generators``)

    tan = tangent_exponent(cell, h0, generators, steps=..., warmup=...)
    rel = relaxation(cell, h0, generators, delta=1e-4, steps=...)   # measured lifetime
    ov = flow_overlap(cell, states, generators)                     # does the orbit move?

Method (Benettin et al. 1980; Shimada & Nagashima 1979): the state ``h [B, S]``
and an orthonormal frame ``Q [B, S, k]`` are carried together,
``(h, V) <- cell.step_and_jvp(h, u, V)`` (for Elman cells ``J V = (1-a) V + a
phi' * (W V)``, never J itself), and every ``m`` steps the frame is
re-orthonormalised, ``V = Q R``; the exponents are time averages of
``log |R_ii|``. Everything is batched over B initial conditions (one tensor
program: [B, S, k] frames, batched QR), on the cell's device and dtype.

Orthonormalisation: ``householder`` (default) takes R from LAPACK's Householder
QR (``geqrf``, backward stable) and Q = V R^{-1} by one triangular solve, which
is orthonormal to ``eps * cond(V)``; when ``cond(V)`` (estimated by the spread
of ``|R_ii|``) exceeds e^20, or R is singular, Q is formed from the Householder
reflectors instead. ``cholqr2`` is CholeskyQR2 (Fukaya et al. 2014), two
Cholesky factorisations of Gram matrices (matrix-multiply speed on GPUs); it
falls back to ``householder`` when ``cond(V)`` exceeds e^15 (where the Gram
matrix's Cholesky factor loses accuracy or fails).

QR interval: re-orthonormalising every m steps is exact in exact arithmetic,
but the frame's columns separate like ``e^{m (lambda_1 - lambda_k)}`` and the
smallest ``R_kk`` lose ``m (lambda_1 - lambda_k) / ln 10`` digits. The default m is
chosen from the growth-rate spread measured with m = 1 over the first steps
(the "pilot"): the largest m with ``m * spread <= 16`` (ln(1/eps) = 36 in
float64), at most 16. Growth rates fluctuate from step to step, so a block
whose R spans more than e^18 (``max log|R_ii| - min log|R_ii|``) is redone
from its start with a QR after every step: the accuracy of m = 1 whatever m
is, at extra cost only for the blocks redone (``redone`` counts them; a too
large m, with most blocks redone, costs more than m = 1). These limits
are for float64; for another dtype they scale with its ln(1/eps).

Covariant Lyapunov vectors (Ginelli et al. 2007, PRL 99, 130601): the R factors
of a further ``clv_window`` steps are stored; iterating an upper-triangular
C backwards, ``C <- R^{-1} C`` with column normalisation, and ``CLV = Q C``
gives the covariant vectors at the end of the accumulation (the same point as
the backward Lyapunov vectors ``Q``).

Group-tangent exponent (Mo 2026): ``xi = A h`` at the end of the warm-up, for
each Lie-algebra generator A, is carried along the same trajectory (extra
columns of the same ``step_and_jvp`` call, normalised separately);
``lambda_xi(T) = (1/T) log(||D phi_T xi|| / ||xi||)``.

All exponents are per step (natural log). Divide by the step's duration dt
for exponents per time unit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import torch

from rnnprobe.cells.base import Cell
from rnnprobe.errors import AnalysisError, InputError

__all__ = [
    "LyapunovEstimate",
    "TangentEstimate",
    "RelaxationEstimate",
    "lyapunov_spectrum",
    "tangent_exponent",
    "relaxation",
    "flow_overlap",
    "orthonormalize",
    "choose_qr_every",
    "log_abs_det_jacobian",
    "kaplan_yorke_dimension",
    "entropy_rate",
    "classify",
    "SPREAD_BUDGET",
    "MAX_QR_EVERY",
    "METHODS",
]

SPREAD_BUDGET = 16.0
"""Largest ``m * (lambda_1 - lambda_k)`` the automatic QR interval allows (ln(1/eps) = 36)."""
MAX_QR_EVERY = 16
"""Largest automatic QR interval."""
METHODS = ("householder", "cholqr2")

_LOG_COND_TRSM = 20.0  # Q = V R^{-1} is orthonormal to eps * e^20 = 1e-7 at worst
_LOG_COND_CHOLQR2 = 15.0  # CholeskyQR2 needs cond(V) well below eps^(-1/2) = 1e8
_LOG_COND_REDO = 18.0  # a block of m > 1 steps beyond this is redone with m = 1 (eps * e^18 = 1.5e-8)
_LOG_COND_WARN = 24.0  # smallest R_kk then carry relative errors ~ eps * e^24 = 6e-6
_PILOT = 64


def _digits(dtype: torch.dtype) -> float:
    """ln(1/eps) of ``dtype`` relative to float64's: the thresholds above are for float64 and
    scale with it (float32 has less than half the room)."""
    return math.log(1 / torch.finfo(dtype).eps) / math.log(1 / torch.finfo(torch.float64).eps)


# ---------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------
@dataclasses.dataclass
class TangentEstimate:
    """Growth of the group-tangent vectors ``xi = A h`` along the trajectories.

    Attributes:
        exponents: ``[B, g]`` lambda_xi(T) at the last step, per init and generator (per step).
        running_steps: ``[R]`` the T at which ``running`` is recorded.
        running: ``[R, B, g]`` lambda_xi(T) against T.
        xi_norm: ``[B, g]`` ``||A h||`` at the start (0: the state is fixed by the group).
        steps: T at the end.
        warnings: messages for the user (initial conditions fixed by the group).
    """

    exponents: np.ndarray
    running_steps: np.ndarray
    running: np.ndarray
    xi_norm: np.ndarray
    steps: int
    warnings: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class LyapunovEstimate:
    """What :func:`lyapunov_spectrum` measured (exponents per step, natural log).

    Attributes:
        exponents: ``[k]`` the leading k exponents, mean over initial conditions.
        per_init: ``[B, k]`` each initial condition's estimate.
        stderr: ``[k]`` the larger of ``stderr_inits`` and ``stderr_time``.
        stderr_inits: ``[k]`` standard error across initial conditions (NaN for B = 1).
        stderr_time: ``[k]`` standard error across time blocks of the init-averaged estimate.
        block_exponents: ``[B, n_blocks, k]`` the estimate of each time block.
        first_half, second_half: ``[k]`` estimates from each half of the run.
        unsettled: ``[k]`` bool, halves differ by more than 4 of their standard errors.
        running_steps: ``[R]`` accumulated steps at each running estimate.
        running: ``[R, k]`` running estimates (mean over inits) against ``running_steps``.
        vectors: ``[B, S, k]`` backward (Gram-Schmidt) Lyapunov vectors at the end.
        clv: ``[B, S, k]`` covariant Lyapunov vectors at the end (``clv_window > 0``), else None.
        state: ``[B, S]`` the state at the end of the accumulation.
        states: ``[n, B, S]`` states kept along the run (``keep_states``), else None.
        log_det: ``[B]`` time average of ln|det J_t| over the same steps (full spectrum), else None.
        sum_rule_residual: ``max_b |sum_i lambda_i(b) - log_det(b)|`` (full spectrum), else None.
        tangent: a :class:`TangentEstimate` when generators were given, else None.
        steps, warmup, qr_every, k: what was run.
        spread: the growth-rate spread ``lambda_1 - lambda_k`` measured by the pilot (NaN if none).
        max_log_cond: the largest ``log(max |R_ii| / min |R_ii|)`` of any QR block.
        fallbacks: QR blocks that fell back to Householder-formed Q.
        redone: blocks of m > 1 steps redone with a QR every step (too wide a spread).
        method: the orthonormalisation used.
        warnings: messages for the user (unsettled estimates, ill-conditioned blocks).
    """

    exponents: np.ndarray
    per_init: np.ndarray
    stderr: np.ndarray
    stderr_inits: np.ndarray
    stderr_time: np.ndarray
    block_exponents: np.ndarray
    first_half: np.ndarray
    second_half: np.ndarray
    unsettled: np.ndarray
    running_steps: np.ndarray
    running: np.ndarray
    vectors: torch.Tensor
    clv: torch.Tensor | None
    state: torch.Tensor
    states: torch.Tensor | None
    log_det: np.ndarray | None
    sum_rule_residual: float | None
    tangent: TangentEstimate | None
    steps: int
    warmup: int
    qr_every: int
    k: int
    spread: float
    max_log_cond: float
    fallbacks: int
    redone: int
    method: str
    warnings: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RelaxationEstimate:
    """How fast a displacement along the group orbit relaxes (measured, not linearised).

    Attributes:
        rate: ``[B, g]`` fitted decay rate per step of the distance between the displaced
            and the undisplaced trajectory (``d_t ~ d_0 e^{-rate t}``; negative: it grows).
        lifetime: ``[B, g]`` ``1 / rate`` in steps (inf where rate <= 0).
        t: ``[n]`` steps at which ``distance`` is kept.
        distance: ``[B, g, n]`` the distance against t, divided by the initial distance.
        delta: the displacement angle, ``h -> exp(delta A) h``.
        fit_from: the first step used in the fit.
    """

    rate: np.ndarray
    lifetime: np.ndarray
    t: np.ndarray
    distance: np.ndarray
    delta: float
    fit_from: int


# ---------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------
def orthonormalize(V: torch.Tensor, method: str = "householder") -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``V = Q R`` for a batch of frames; returns ``(Q, R, fell_back)``.

    Arguments:
        V: ``[B, S, k]`` with k <= S.
        method: ``householder`` or ``cholqr2`` (see the module docstring).

    Returns ``Q [B, S, k]`` with orthonormal columns and ``R [B, k, k]`` upper
    triangular with a non-negative diagonal (signs moved into Q), and whether a
    fallback to the Householder-formed Q was needed. A zero column gives
    ``R_ii = 0`` (log -inf) and some unit vector in Q.
    """
    Q, _, R, _, fell = _qr(V, method, want_R=True)
    sign = torch.where(torch.diagonal(R, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(V.dtype)
    return Q * sign[..., None, :], R * sign[..., :, None], fell


def _qr(V: torch.Tensor, method: str, want_R: bool):
    """(Q, log|diag R| [B, k], R or None, log condition estimate, fell back)."""
    k = V.shape[-1]
    if method == "cholqr2":
        L, info = torch.linalg.cholesky_ex(V.mT @ V)
        logd = torch.log(torch.diagonal(L, dim1=-2, dim2=-1))
        lc = _log_cond(logd)
        if bool((info == 0).all()) and lc <= _LOG_COND_CHOLQR2 * _digits(V.dtype):
            Q1 = torch.linalg.solve_triangular(L.mT, V, upper=True, left=False)
            L2, info2 = torch.linalg.cholesky_ex(Q1.mT @ Q1)
            if bool((info2 == 0).all()):
                Q = torch.linalg.solve_triangular(L2.mT, Q1, upper=True, left=False)
                logd = logd + torch.log(torch.diagonal(L2, dim1=-2, dim2=-1))
                return Q, logd, (L2.mT @ L.mT if want_R else None), lc, False
        Q, logd, R, lc, _ = _qr(V, "householder", want_R)
        return Q, logd, R, lc, True
    if method != "householder":
        raise InputError(f"orthonormalisation {method!r} must be one of {', '.join(METHODS)}")
    # R's diagonal keeps LAPACK's signs here (only log|R_ii| is used; Q and R stay consistent);
    # orthonormalize() moves them into Q for callers that want a positive diagonal
    a, tau = torch.geqrf(V)
    top = a[..., :k, :]
    logd = torch.log(torch.diagonal(top, dim1=-2, dim2=-1).abs())
    lc = _log_cond(logd)
    R = torch.triu(top) if want_R else None
    if math.isfinite(lc) and lc <= _LOG_COND_TRSM * _digits(V.dtype):
        # solve_triangular reads only the upper triangle of ``top`` (documented)
        return torch.linalg.solve_triangular(top, V, upper=True, left=False), logd, R, lc, False
    return torch.linalg.householder_product(a, tau), logd, R, lc, True


def _log_cond(logd: torch.Tensor) -> float:
    """max - min over each row of ``log|diag R|`` (a lower bound of log cond), the largest over
    the batch; inf when a diagonal entry is zero, NaN when one is not finite."""
    if logd.shape[-1] == 0:
        return 0.0
    return float((logd.max(-1).values - logd.min(-1).values).max())


def choose_qr_every(spread: float, *, max_abs_rate: float = 0.0, budget: float = SPREAD_BUDGET,
                    max_every: int = MAX_QR_EVERY) -> int:
    """The QR interval m for a measured growth-rate spread (``lambda_1 - lambda_k`` per step).

    The largest m with ``m * spread <= budget`` and ``m * max_abs_rate <= 300``
    (no overflow between QRs), clipped to ``[1, max_every]``.
    """
    m = max_every
    if spread > 0 and math.isfinite(spread):
        m = min(m, int(budget // spread))
    if max_abs_rate > 0 and math.isfinite(max_abs_rate):
        m = min(m, int(300.0 // max_abs_rate))
    return max(1, m)


def log_abs_det_jacobian(cell: Cell, h: torch.Tensor, u: torch.Tensor | None = None, *,
                         log_det_W: float | None = None, h_next: torch.Tensor | None = None) -> torch.Tensor:
    """``ln|det J|`` at each state, ``[B]``: the sum rule's right-hand side.

    For an Elman cell with alpha = 1 (``leaky`` or ``rate-outside`` form),
    ``J = diag(phi') W`` or ``W diag(phi')``, so ``ln|det J| = sum ln|phi'| +
    ln|det W|``: O(N) per state once ``ln|det W|`` is known (pass it as
    ``log_det_W`` to avoid recomputing; ``cell.op.logabsdet()``, from the FFT
    for a circular convolution). With ``h_next = F(h, u)`` of a leaky cell whose
    phi' is a function of phi (tanh, sigmoid), phi' comes from ``h_next`` without
    recomputing the preactivation. Other cells: slogdet of the Jacobian.
    """
    from rnnprobe.cells.elman import ElmanCell

    if isinstance(cell, ElmanCell) and cell.alpha == 1.0 and cell.form in ("leaky", "rate-outside"):
        if log_det_W is None:
            log_det_W = cell.op.logabsdet()  # exact from the FFT for a circular convolution
        if h_next is not None and cell.form == "leaky" and cell.nl.dphi_from_output is not None:
            # h_next = phi(x): phi' from it, the very phi' the tangent step used, and no second product
            return torch.log(cell.nl.dphi_from_output(h_next).abs()).sum(-1) + log_det_W
        x = h if cell.form == "rate-outside" else cell.preactivation(h, u)
        return torch.log(cell.nl.dphi(x).abs()).sum(-1) + log_det_W
    return torch.linalg.slogdet(cell.jacobian(h, u))[1]


def _fast_log_det(cell: Cell) -> bool:
    from rnnprobe.cells.elman import ElmanCell

    return isinstance(cell, ElmanCell) and cell.alpha == 1.0 and cell.form in ("leaky", "rate-outside")


def _input_fn(cell: Cell, inputs, B: int) -> Callable[[int], torch.Tensor | None]:
    """Inputs as a function of the step t.

    None: zero input; ``[d]``: the same constant input for every trajectory;
    ``[B, d]``: a constant input per trajectory; ``[B, T, d]`` (or ``[1, T, d]``):
    sequences, cycled when the run is longer than T; a callable ``t -> [B, d]``.
    """
    if inputs is None:
        return lambda t: None
    if callable(inputs):
        return inputs
    x = torch.as_tensor(inputs, dtype=cell.dtype, device=cell.device)
    d = cell.n_inputs
    if x.dim() == 1 and x.shape[0] == d:
        const = x.expand(B, d)
        return lambda t: const
    if x.dim() == 2 and x.shape == (B, d):
        return lambda t: x
    if x.dim() == 3 and x.shape[0] in (1, B) and x.shape[2] == d and x.shape[1] > 0:
        x = x.expand(B, *x.shape[1:])
        T = x.shape[1]
        return lambda t: x[:, t % T]
    raise InputError(f"inputs must be [d_in={d}] or [B={B}, d_in] (constant) or [B, T, d_in] (sequences); "
                     f"got shape {list(x.shape)}")


def _random_frame(S: int, k: int, B: int, *, dtype, device, generator: torch.Generator | None) -> torch.Tensor:
    G = torch.randn(B, S, k, dtype=dtype, device=device, generator=generator)
    return torch.linalg.qr(G)[0]


def _check_finite(h: torch.Tensor, t0: int, t1: int) -> None:
    bad = ~torch.isfinite(h).all(-1)
    if bool(bad.any()):
        b = int(torch.nonzero(bad)[0, 0])
        raise AnalysisError(
            f"the trajectory from initial condition {b} became non-finite between steps {t0} and {t1}: "
            "the map diverges from there; start closer to the attractor (a smaller --init-scale)"
        )


def _geometric_marks(total: int, n: int) -> np.ndarray:
    """About n step counts in [1, total], geometrically spaced (for convergence plots)."""
    if total <= 0 or n <= 0:
        return np.zeros(0, dtype=np.int64)
    marks = np.unique(np.round(np.geomspace(1, total, num=min(n, total))).astype(np.int64))
    return marks


# ---------------------------------------------------------------------------------
# the propagator
# ---------------------------------------------------------------------------------
def lyapunov_spectrum(
    cell: Cell,
    h0: torch.Tensor,
    inputs=None,
    *,
    k: int | None = None,
    steps: int = 10_000,
    warmup: int = 1_000,
    qr_every: int | None = None,
    method: str = "householder",
    generators: torch.Tensor | None = None,
    clv_window: int = 0,
    sum_rule: bool | None = None,
    time_blocks: int = 10,
    n_running: int = 200,
    keep_states: int = 0,
    frame: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> LyapunovEstimate:
    """lyapunov_spectrum(cell, h0, inputs=None, *, k, steps, warmup, qr_every, ...) -> LyapunovEstimate

    The k leading Lyapunov exponents (per step) of the map ``h -> cell.step(h, u_t)``
    along the trajectories from the B initial conditions ``h0`` [B, S], batched.

    Returns a :class:`LyapunovEstimate` (exponents, standard errors, running
    estimates, backward Lyapunov vectors, optional CLVs, sum rule, tangent exponents).

    Keyword arguments:
        inputs: None (zero input), a constant ``[d]`` or ``[B, d]``, sequences
            ``[B, T, d]`` (cycled to cover the run), or a callable ``t -> [B, d]``;
            the first warm-up step is t = 0.
        k: number of exponents (default: all S).
        steps: accumulated steps (after the warm-up).
        warmup: steps that evolve the state *and* the frame (with QR) before
            anything is accumulated: a frame that has not converged biases the
            estimate by O(1/steps).
        qr_every: QR interval m; None: chosen from the spread measured by a
            pilot of up to 64 steps with m = 1 (see :func:`choose_qr_every`).
        method: ``householder`` or ``cholqr2`` (see :func:`orthonormalize`).
        generators: ``[g, S, S]`` Lie-algebra generators A; ``xi = A h`` at the end
            of the warm-up is carried along (``result.tangent``).
        clv_window: steps beyond the accumulation whose R factors feed Ginelli's
            backward iteration (0: no covariant vectors).
        sum_rule: accumulate ``ln|det J_t|`` (default: when k = S).
        time_blocks: blocks for the time standard error and the halves test.
        n_running: about this many running estimates (geometric in time).
        keep_states: keep about this many states along the accumulation.
        frame: the initial frame, ``[S, k]`` or ``[B, S, k]`` (default: random orthonormal,
            drawn with ``generator``).
        generator: torch generator for the initial frame.
        progress: called with the number of steps done since the last call.

    Citations: Benettin, Galgani, Giorgilli & Strelcyn (1980), Meccanica 15, 9;
    Ginelli et al. (2007), PRL 99, 130601; Mo (2026), symmetry-protected neutral modes.
    """
    h = torch.as_tensor(h0, dtype=cell.dtype, device=cell.device)
    if h.dim() == 1:
        h = h[None]
    if h.dim() != 2 or h.shape[1] != cell.n_state:
        raise InputError(f"initial states must be [B, S={cell.n_state}]; got shape {list(h.shape)}")
    B, S = h.shape
    k = S if k is None else int(k)
    if not 0 <= k <= S:
        raise InputError(f"--k {k} must be between 1 and the state dimension {S}")
    if steps < 1 or warmup < 0 or clv_window < 0:
        raise InputError(f"steps={steps} must be >= 1, warmup={warmup} and clv_window={clv_window} >= 0")
    if qr_every is not None and qr_every < 1:
        raise InputError(f"--qr-every {qr_every} must be >= 1")
    if method not in METHODS:
        raise InputError(f"orthonormalisation {method!r} must be one of {', '.join(METHODS)}")
    u_at = _input_fn(cell, inputs, B)
    dtype, device = cell.dtype, cell.device
    digits = _digits(dtype)
    A = None
    if generators is not None:
        A = torch.as_tensor(generators, dtype=dtype, device=device)
        if A.dim() == 2:
            A = A[None]
        if A.dim() != 3 or A.shape[1:] != (S, S):
            raise InputError(f"generators must be [g, S={S}, S={S}]; got shape {list(A.shape)}")
    g = 0 if A is None else A.shape[0]
    do_sum_rule = (k == S) if sum_rule is None else bool(sum_rule and k == S)
    log_det_W = None
    if do_sum_rule and _fast_log_det(cell):
        log_det_W = cell.op.logabsdet()

    if frame is not None:
        Q = torch.as_tensor(frame, dtype=dtype, device=device)
        Q = Q.expand(B, S, k).clone() if Q.dim() == 2 else Q.clone()
        if Q.shape != (B, S, k):
            raise InputError(f"frame must be [S={S}, k={k}] or [B={B}, S, k]; got shape {list(Q.shape)}")
    elif k:
        Q = _random_frame(S, k, B, dtype=dtype, device=device, generator=generator)
    else:
        Q = h.new_zeros(B, S, 0)
    Xi = None
    warnings: list[str] = []

    # ---- schedule ---------------------------------------------------------------
    pilot = 0
    if qr_every is None and k > 1:
        pilot = min(_PILOT, warmup) if warmup >= 16 else min(_PILOT, warmup + steps)
    m = qr_every or 1
    spread = float("nan")
    pilot_rows: list[torch.Tensor] = []

    nb = max(1, min(time_blocks, steps))
    block_edges = [round(i * steps / nb) for i in range(nb + 1)]
    marks = _geometric_marks(steps, n_running)
    state_marks = np.unique(np.round(np.linspace(1, steps, num=min(keep_states, steps))).astype(np.int64)) \
        if keep_states > 0 else np.zeros(0, dtype=np.int64)
    next_state = 0

    acc = torch.zeros(B, k, dtype=dtype, device=device)
    acc_xi = torch.zeros(B, g, dtype=dtype, device=device)
    ld_acc = torch.zeros(B, dtype=dtype, device=device) if do_sum_rule else None
    block_sums = []
    block_start = acc.clone()
    running_steps: list[int] = []
    running: list[np.ndarray] = []
    running_xi: list[np.ndarray] = []
    kept_states: list[torch.Tensor] = []
    stored_R: list[torch.Tensor] = []
    Q_end = h_end = None
    max_log_cond = 0.0
    fallbacks = redone = 0
    xi_norm = None

    t = 0  # global step (for inputs)
    total = warmup + steps + clv_window
    next_mark = 0
    next_edge = 1
    last_check = 0
    while t < total:
        # phase and the end of this QR block (blocks never cross phase or time-block edges)
        if t < warmup:
            phase, phase_end = "warm", warmup
        elif t < warmup + steps:
            phase, phase_end = "acc", warmup + steps
        else:
            phase, phase_end = "clv", total
        if phase == "acc" and Xi is None and A is not None:
            Xi = torch.einsum("gij,bj->big", A, h)  # [B, S, g]
            xi_norm = torch.linalg.vector_norm(Xi, dim=1)
            Xi = Xi / torch.where(xi_norm > 0, xi_norm, 1.0)[:, None, :]
        if phase == "clv" and Q_end is None:
            Q_end, h_end = Q, h
            Xi = None  # the tangent exponents are accumulated over the same steps as the spectrum
        m_now = 1 if t < pilot else m
        end = min(t + m_now, phase_end)
        if phase == "acc":
            end = min(end, warmup + block_edges[next_edge])
        if pilot and t < pilot:
            end = min(end, pilot)

        V = Q if Xi is None else torch.cat([Q, Xi], dim=2)
        start, h_start, V_start = t, h, V
        ld_block = 0.0
        while t < end:
            u = u_at(t)
            h_prev = h
            if V.shape[-1]:
                h, V = cell.step_and_jvp(h, u, V)
            else:  # nothing to carry (a tangent-only run during its warm-up)
                h = cell.step(h, u)
            if ld_acc is not None and phase == "acc":
                ld_block = ld_block + log_abs_det_jacobian(cell, h_prev, u, log_det_W=log_det_W, h_next=h)
            t += 1
        if k:
            Q, logr, R, lc, fell = _qr(V[..., :k] if Xi is not None else V, method, want_R=phase == "clv")
            if end - start > 1 and not lc <= _LOG_COND_REDO * digits:
                # this block stretched the frame too far for its smallest R_ii: redo it with QR every step
                redone += 1
                h, V, Q, logr, R, lc, fell = _redo_block(cell, u_at, h_start, V_start, start, end, k, method,
                                                         want_R=phase == "clv")
            fallbacks += int(fell)
            if math.isfinite(lc):
                max_log_cond = max(max_log_cond, lc)
        else:
            logr = acc[:, :0]
        if ld_acc is not None and phase == "acc":
            ld_acc += ld_block
        if Xi is not None:
            X = V[..., k:]
            nx = torch.linalg.vector_norm(X, dim=1)
            acc_xi += torch.log(nx)
            Xi = X / torch.where(nx > 0, nx, 1.0)[:, None, :]

        if pilot and t <= pilot and k > 1:
            pilot_rows.append(logr)
            if t == pilot and qr_every is None:
                rates = torch.stack(pilot_rows[len(pilot_rows) // 2:]).mean(0)  # [B, k], the later half
                spread = float((rates.max(-1).values - rates.min(-1).values).max())
                m = choose_qr_every(spread, max_abs_rate=float(rates.abs().max()), budget=SPREAD_BUDGET * digits)
                pilot_rows = []
        elif qr_every is None and k <= 1:
            m = MAX_QR_EVERY

        if phase == "acc":
            acc += logr
            n_acc = t - warmup
            while next_mark < len(marks) and marks[next_mark] <= n_acc:
                next_mark += 1
                running_steps.append(n_acc)
                running.append((acc.mean(0) / n_acc).cpu().numpy())
                if g:
                    running_xi.append((acc_xi / n_acc).cpu().numpy())
            if next_state < len(state_marks) and state_marks[next_state] <= n_acc:  # at the block end past a mark
                while next_state < len(state_marks) and state_marks[next_state] <= n_acc:
                    next_state += 1
                kept_states.append(h.clone())
            if n_acc == block_edges[next_edge]:
                block_sums.append(acc - block_start)
                block_start = acc.clone()
                next_edge += 1
                _check_finite(h, warmup + last_check, t)
                last_check = n_acc
        elif phase == "clv":
            stored_R.append(R)
        elif t == warmup:
            _check_finite(h, 0, t)
        if progress is not None:
            progress(t - start)
    if Q_end is None:
        Q_end, h_end = Q, h
    _check_finite(h, 0, t)

    # ---- statistics ---------------------------------------------------------------
    per_init = (acc / steps).cpu().numpy()
    exponents = per_init.mean(0)
    lengths = np.diff(np.array(block_edges, dtype=np.float64))
    blocks = torch.stack(block_sums, dim=1).cpu().numpy() / lengths[None, :, None]  # [B, nb, k]
    with np.errstate(invalid="ignore"):
        stderr_inits = per_init.std(0, ddof=1) / math.sqrt(B) if B > 1 else np.full(k, np.nan)
        avg_blocks = blocks.mean(0)  # [nb, k]
        stderr_time = avg_blocks.std(0, ddof=1) / math.sqrt(nb) if nb > 1 else np.full(k, np.nan)
        stderr = np.fmax(stderr_inits, stderr_time)
        half = nb // 2 if nb > 1 else 1
        w = lengths
        first = (avg_blocks[:half] * w[:half, None]).sum(0) / w[:half].sum() if nb > 1 else exponents
        second = (avg_blocks[half:] * w[half:, None]).sum(0) / w[half:].sum() if nb > 1 else exponents

        def _se(part):
            return part.std(0, ddof=1) / math.sqrt(part.shape[0]) if part.shape[0] > 1 else np.zeros(k)

        se_half = np.sqrt(_se(avg_blocks[:half]) ** 2 + _se(avg_blocks[half:]) ** 2)
        diff = np.abs(first - second)
        unsettled = np.isfinite(diff) & (diff > 4 * se_half + 1e-9 * (1 + np.abs(exponents)))
        if nb < 4:
            unsettled[:] = False

    log_det = None
    residual = None
    if ld_acc is not None:
        log_det = (ld_acc / steps).cpu().numpy()
        with np.errstate(invalid="ignore"):
            res = np.abs(per_init.sum(1) - log_det)
        residual = float(np.max(res)) if np.all(np.isfinite(res)) else float("nan")

    if max_log_cond > _LOG_COND_WARN * digits:
        warnings.append(
            f"a QR block spanned growth rates e^{max_log_cond:.0f} apart (more than e^{_LOG_COND_WARN * digits:.0f}): "
            f"the smallest exponents may have lost accuracy; use a smaller --qr-every than {m}"
        )
    if bool(unsettled.any()):
        idx = np.flatnonzero(unsettled)
        shown = ", ".join(str(i + 1) for i in idx[:5]) + (", ..." if idx.size > 5 else "")
        warnings.append(
            f"estimate not settled: the first and second half of the run differ beyond their error for "
            f"{idx.size} exponent(s) (#{shown}); run longer (--steps) or warm up longer (--warmup)"
        )

    clv = None
    if clv_window and k:
        clv = _ginelli(Q_end, stored_R)

    tangent = None
    if g:
        tangent = TangentEstimate(
            exponents=(acc_xi / steps).cpu().numpy(),
            running_steps=np.array(running_steps, dtype=np.int64),
            running=np.array(running_xi).reshape(len(running_steps), B, g),
            xi_norm=xi_norm.cpu().numpy(),
            steps=steps,
        )
        zero = xi_norm.cpu().numpy() <= 1e-12 * (1 + float(torch.linalg.vector_norm(h, dim=1).max()))
        if zero.any():
            tangent.exponents[zero] = np.nan
            tangent.running[:, zero] = np.nan
            tangent.warnings.append(
                f"{int(zero.sum())} initial condition(s) reach a fixed point of the group (A h = 0): "
                "there is no orbit direction there; their tangent exponents are left out"
            )
            warnings.extend(tangent.warnings)

    return LyapunovEstimate(
        exponents=exponents, per_init=per_init, stderr=stderr, stderr_inits=stderr_inits,
        stderr_time=stderr_time, block_exponents=blocks, first_half=first, second_half=second,
        unsettled=unsettled, running_steps=np.array(running_steps, dtype=np.int64),
        running=np.array(running).reshape(len(running_steps), k), vectors=Q_end, clv=clv,
        state=h_end,
        states=torch.stack(kept_states) if kept_states else None, log_det=log_det, sum_rule_residual=residual,
        tangent=tangent, steps=steps, warmup=warmup, qr_every=m, k=k, spread=spread,
        max_log_cond=max_log_cond, fallbacks=fallbacks, redone=redone, method=method, warnings=warnings,
    )


def _redo_block(cell: Cell, u_at, h: torch.Tensor, V: torch.Tensor, start: int, end: int, k: int, method: str,
                want_R: bool):
    """Run steps ``start..end`` again from ``(h, V)`` with a QR after every step.

    Returns what one QR of the whole block would: the state, the propagated
    columns (tangent columns unnormalised), Q, the summed log|R_ii|, the block's
    R (the product of the steps' R factors) when wanted, the largest per-step
    log condition, and whether any step fell back to the Householder-formed Q.
    """
    logr = R = None
    lc_max, fell_any = 0.0, False
    Q, rest = V[..., :k], V[..., k:]
    for t in range(start, end):
        h, W = cell.step_and_jvp(h, u_at(t), torch.cat([Q, rest], dim=2) if rest.shape[-1] else Q)
        Q, lr, Rt, lc, fell = _qr(W[..., :k], method, want_R)
        rest = W[..., k:]
        logr = lr if logr is None else logr + lr
        if want_R:
            R = Rt if R is None else Rt @ R
        lc_max = max(lc_max, lc) if math.isfinite(lc) else lc_max
        fell_any = fell_any or fell
    return h, torch.cat([Q, rest], dim=2), Q, logr, R, lc_max, fell_any


def _ginelli(Q: torch.Tensor, Rs: list[torch.Tensor]) -> torch.Tensor:
    """Covariant Lyapunov vectors at the time of ``Q`` from the R factors that followed it.

    Ginelli et al. (2007): the CLVs are ``Q C`` with C upper triangular, and
    ``C_{n-1} = R_n^{-1} C_n`` (columns normalised) converges, backwards in
    time, to the CLVs' coordinates, whatever the upper-triangular start.
    """
    B, S, k = Q.shape
    C = torch.eye(k, dtype=Q.dtype, device=Q.device).expand(B, k, k).clone()
    tiny = torch.finfo(Q.dtype).tiny
    for R in reversed(Rs):
        d = torch.diagonal(R, dim1=-2, dim2=-1)
        R = R + torch.diag_embed(torch.where(d == 0, tiny, 0.0).to(R.dtype))
        C = torch.linalg.solve_triangular(R, C, upper=True)
        C = C / torch.linalg.vector_norm(C, dim=1, keepdim=True)
    V = Q @ C
    return V / torch.linalg.vector_norm(V, dim=1, keepdim=True)


def tangent_exponent(cell: Cell, h0: torch.Tensor, generators: torch.Tensor, inputs=None, *, steps: int,
                     warmup: int = 0, n_running: int = 200,
                     progress: Callable[[int], None] | None = None) -> TangentEstimate:
    """tangent_exponent(cell, h0, generators, inputs=None, *, steps, warmup=0) -> TangentEstimate

    The group-tangent exponent ``lambda_xi(T) = (1/T) log(||D phi_T xi|| / ||xi||)``
    for ``xi = A h`` (each generator A, ``[g, S, S]``) at the state reached after
    ``warmup`` steps from ``h0`` [B, S], under ``inputs`` (None: zero input, the
    autonomous restriction of Mo 2026). Per step; ``exponents`` is ``[B, g]``.
    Only the tangent vectors are propagated (no frame), with one jvp per step.
    """
    est = lyapunov_spectrum(cell, h0, inputs, k=0, steps=steps, warmup=warmup, generators=generators,
                            sum_rule=False, n_running=n_running, progress=progress)
    return est.tangent


def relaxation(cell: Cell, h0: torch.Tensor, generators: torch.Tensor, inputs=None, *, steps: int,
               delta: float = 1e-4, fit_from: int | None = None, n_keep: int = 200) -> RelaxationEstimate:
    """relaxation(cell, h0, generators, inputs=None, *, steps, delta=1e-4) -> RelaxationEstimate

    Displace each state along the group orbit, ``h0 -> exp(delta A) h0``, run the
    displaced and the undisplaced states side by side (one batch) for ``steps``
    steps and fit the exponential decay rate of their distance, ``d_t ~ d_0
    e^{-rate t}``, by least squares on ``log d_t`` over ``t >= fit_from``
    (default steps // 5, past the fast transverse transient) where ``d_t`` is
    above the rounding floor. ``1 / rate`` is the measured memory lifetime, to
    be set beside the one predicted by the tangent exponent.
    """
    h = torch.as_tensor(h0, dtype=cell.dtype, device=cell.device)
    B, S = h.shape
    A = torch.as_tensor(generators, dtype=cell.dtype, device=cell.device)
    A = A[None] if A.dim() == 2 else A
    g = A.shape[0]
    if steps < 2:
        raise InputError(f"relaxation needs at least 2 steps; got {steps}")
    u_at = _input_fn(cell, inputs, B)
    D = torch.linalg.matrix_exp(delta * A)  # [g, S, S]
    X = torch.cat([h[:, None], torch.einsum("gij,bj->bgi", D, h)], dim=1).reshape(B * (1 + g), S)
    dist = torch.empty(steps + 1, B, g, dtype=cell.dtype, device=cell.device)
    floor = torch.empty(steps + 1, B, dtype=cell.dtype, device=cell.device)

    def record(t, X):
        Y = X.reshape(B, 1 + g, S)
        dist[t] = torch.linalg.vector_norm(Y[:, 1:] - Y[:, :1], dim=2)
        floor[t] = torch.linalg.vector_norm(Y[:, 0], dim=1)

    record(0, X)
    for t in range(steps):
        u = u_at(t)
        if u is not None:
            u = u.repeat_interleave(1 + g, dim=0)
        X = cell.step(X, u)
        record(t + 1, X)
    _check_finite(X, 0, steps)
    d = dist.cpu().numpy()  # [T+1, B, g]
    fl = 1e3 * np.finfo(np.float64).eps * (1.0 + floor.cpu().numpy())  # rounding floor of a distance
    t_all = np.arange(steps + 1, dtype=np.float64)
    start = steps // 5 if fit_from is None else int(fit_from)
    rate = np.full((B, g), np.nan)
    for b in range(B):  # a least-squares fit per curve on at most B*g short vectors
        for j in range(g):
            y = d[:, b, j]
            ok = (t_all >= start) & (y > fl[:, b]) & np.isfinite(y)
            if ok.sum() >= 3 and y[0] > 0:
                tt = t_all[ok]
                slope = np.polyfit(tt, np.log(y[ok]), 1)[0]
                # below what rounding can resolve over the fit window: no measurable decay
                rate[b, j] = 0.0 if abs(slope) * (tt[-1] - tt[0]) < 1e-9 else -slope
    with np.errstate(divide="ignore", invalid="ignore"):
        lifetime = np.where(rate > 0, 1.0 / rate, np.inf)
        lifetime[np.isnan(rate)] = np.nan
    keep = np.unique(np.linspace(0, steps, num=min(n_keep, steps + 1)).round().astype(np.int64))
    with np.errstate(divide="ignore", invalid="ignore"):
        curve = np.transpose(d[keep] / d[:1], (1, 2, 0))
    return RelaxationEstimate(rate=rate, lifetime=lifetime, t=keep, distance=curve, delta=float(delta),
                              fit_from=start)


def flow_overlap(cell: Cell, states: torch.Tensor, generators: torch.Tensor,
                 inputs: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Does the trajectory move along the group orbit? ``(overlap [n, g], speed [n])``.

    For states ``[n, S]`` (or ``[..., S]``, flattened), the flow direction
    ``F(h, u) - h`` against the group tangent ``A h``: ``overlap =
    |<F - h, A h>| / (||F - h|| ||A h||)`` (NaN where either vanishes) and the
    relative speed ``||F - h|| / ||h||``. An overlap near 1 at a non-zero speed
    means the orbit itself moves along the group direction: then the
    time-translation zero exponent mimics protection (Mo 2026's control).
    """
    X = torch.as_tensor(states, dtype=cell.dtype, device=cell.device).reshape(-1, cell.n_state)
    A = torch.as_tensor(generators, dtype=cell.dtype, device=cell.device)
    A = A[None] if A.dim() == 2 else A
    F = cell.step(X, inputs) - X
    T = torch.einsum("gij,nj->ngi", A, X)
    nF = torch.linalg.vector_norm(F, dim=1)
    nT = torch.linalg.vector_norm(T, dim=2)
    dot = torch.einsum("ni,ngi->ng", F, T).abs()
    with np.errstate(divide="ignore", invalid="ignore"):
        overlap = (dot / (nF[:, None] * nT)).cpu().numpy()
        speed = (nF / torch.linalg.vector_norm(X, dim=1)).cpu().numpy()
    overlap[~np.isfinite(overlap)] = np.nan
    return overlap, speed


# ---------------------------------------------------------------------------------
# derived quantities
# ---------------------------------------------------------------------------------
def kaplan_yorke_dimension(exponents, *, complete: bool = False) -> float:
    """Kaplan-Yorke (Lyapunov) dimension ``j + sum_{i<=j} lambda_i / |lambda_{j+1}|``.

    j is the largest count whose leading partial sum is non-negative. 0 when
    lambda_1 < 0. When every partial sum of the given exponents is non-negative
    the dimension is the state dimension if the spectrum is ``complete``, else
    NaN (more exponents are needed). Kaplan & Yorke (1979).
    """
    lam = np.sort(np.asarray(exponents, dtype=np.float64))[::-1]
    if lam.size == 0 or not np.all(np.isfinite(lam[:1])):
        return float("nan")
    if lam[0] < 0:
        return 0.0
    c = np.cumsum(lam)
    nonneg = np.flatnonzero(c >= 0)
    j = int(nonneg[-1]) + 1 if nonneg.size else 0
    if j == lam.size:
        return float(lam.size) if complete else float("nan")
    if not np.isfinite(lam[j]):
        return float(j)
    return float(j + c[j - 1] / abs(lam[j]))


def entropy_rate(exponents) -> float:
    """Sum of the positive exponents: Pesin's upper bound on the KS entropy (nats per step)."""
    lam = np.asarray(exponents, dtype=np.float64)
    return float(lam[lam > 0].sum())


def classify(exponents, tolerance, *, stationary: bool | None = None, driven: bool = False) -> tuple[str, int]:
    """Name the attractor from its leading exponents; returns ``(label, n_near_zero)``.

    ``tolerance`` (scalar or per exponent): ``|lambda| <= tolerance`` counts as
    zero. A positive exponent: ``chaotic``. All negative: ``stable fixed point``
    (or ``stable periodic orbit`` when the autonomous trajectory keeps moving;
    ``stable (input-driven)`` under input). One zero: ``limit cycle``; two or
    more: ``torus`` (``neutral fixed point`` when the trajectory is stationary,
    i.e. a continuous attractor of fixed points; ``neutral (input-driven)``
    under input). For a map, a periodic orbit has no zero exponent: the zero
    exponent of a limit cycle belongs to an invariant circle (a sampled flow).
    """
    lam = np.asarray(exponents, dtype=np.float64)
    tol = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), lam.shape)
    near = np.abs(lam) <= tol
    n0 = int(near.sum())
    if np.any(lam > tol):
        return "chaotic", n0
    if n0 == 0:
        if driven:
            return "stable (input-driven)", 0
        return ("stable periodic orbit" if stationary is False else "stable fixed point"), 0
    if driven:
        return "neutral (input-driven)", n0
    if stationary:
        return "neutral fixed point", n0
    return ("limit cycle" if n0 == 1 else "torus"), n0
