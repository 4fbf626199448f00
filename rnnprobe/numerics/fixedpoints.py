"""Fixed and slow points of a recurrent map, and the linearised dynamics there.

For a cell ``F`` (:class:`rnnprobe.cells.Cell`) and a constant input ``u*`` the
fixed points solve

    G(h) = F(h, u*) - h = 0,        q(h) = 1/2 ||G(h)||^2,

and the slow points of Sussillo & Barak (2013, "Opening the black box",
Neural Computation 25:626) are points where ``q`` is small but not zero.

Public functions (stable signatures; other analyses import them):

``find_fixed_points(cell, u_star, initial_states, *, tol=1e-12, slow_tol=1e-6, max_iter=50, ...)``
    -> :class:`FixedPointSet`: the distinct fixed / slow points, their ``q``,
    labels and how many candidates reached each, plus every candidate's fate.
``linearize(cell, states, u=None, *, eigenvectors=True)``
    -> :class:`Linearization`: ``J = dF/dh``, ``B = dF/du``, the eigenvalues
    (sorted by decreasing modulus) and optionally the eigenvectors.
``classify(eigenvalues, marginal_tol)``
    -> stability codes (:data:`STABILITY`), unstable and marginal counts.
``time_constants(eigenvalues)``
    -> ``tau = -1 / log|lambda|`` in steps.
``deduplicate(states, q, tol, groups=None, *, metric="sup")``
    -> representatives and the assignment of every state to one.
``dense_jacobian_feasible(cell, jacobian_memory=256e6)``
    -> whether explicit S x S Jacobians are affordable (else everything stays matrix-free).
``linearize_matrix_free(cell, states, u=None, *, k=16)``
    -> the ``k`` leading eigenvalues of J at each point without forming J
    (exact by FFT at translation-invariant points of a circular convolution;
    ARPACK on Jacobian-vector products elsewhere).
``memory_basis(J, B, R, basis="eigen", ...)``
    -> :class:`MemoryBasis`: ``J = Xi Phi Xi^+`` with the input and readout maps.
``detect_cyclic_shift(Phi, ...)``
    -> :class:`CyclicShift`: a cyclic permutation of ``s`` subspaces in ``Phi``.

The solver (see :func:`find_fixed_points`) runs every candidate in one batched
tensor program: a short first-order warm start on ``q``, then per-candidate
damped Newton steps (matrix-free Newton-Krylov with batched GMRES while many
candidates are active, explicit Jacobians and LU / Levenberg-Marquardt once few
are), merging candidates that lie close together once their Newton steps are
full and shrinking so that the expensive work runs on the distinct points, and
verifying every merge afterwards.
"""

from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

from rnnprobe.cells.base import Cell, as_tensor
from rnnprobe.errors import InputError
from rnnprobe.numerics import kernels

__all__ = [
    "FIXED",
    "SLOW",
    "UNCONVERGED",
    "LABELS",
    "STABLE",
    "MARGINAL",
    "SADDLE",
    "REPELLER",
    "UNKNOWN",
    "STABILITY",
    "FixedPointSet",
    "find_fixed_points",
    "Linearization",
    "linearize",
    "classify",
    "time_constants",
    "deduplicate",
    "dense_jacobian_feasible",
    "linearize_matrix_free",
    "MemoryBasis",
    "memory_basis",
    "real_eigen_basis",
    "CyclicShift",
    "detect_cyclic_shift",
]

# candidate / point labels
FIXED, SLOW, UNCONVERGED = 0, 1, 2
LABELS = ("fixed", "slow", "unconverged")

# stability codes of a linearisation
STABLE, MARGINAL, SADDLE, REPELLER = 0, 1, 2, 3
STABILITY = ("stable", "marginal", "saddle", "repeller")
UNKNOWN = 4
"""Stability code (beyond :data:`STABILITY`) of a point whose leading eigenvalues :func:`linearize_matrix_free`
could not converge: reports of matrix-free runs name it ``unknown``."""

# solver states of a candidate
_ACTIVE, _DONE, _FOLLOWER, _STALLED = 0, 1, 2, 3


# ----------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------
@dataclasses.dataclass
class FixedPointSet:
    """What :func:`find_fixed_points` found.

    Distinct points (fixed first, then slow; within a label by decreasing count):

    Attributes:
        states: ``[K, n_state]`` the distinct fixed and slow points (the
            lowest-``q`` candidate of each).
        q: ``[K]`` ``1/2 ||F(h) - h||^2`` at each point.
        labels: ``[K]`` int8, :data:`FIXED` or :data:`SLOW`.
        counts: ``[K]`` int64, how many candidates reached each point.
        inputs: ``[K, n_inputs]`` the constant input of each point.
        groups: ``[K]`` int64, the input condition (group) of each point.

    Every candidate:

    Attributes:
        candidate_states: ``[n, n_state]`` where each candidate ended.
        candidate_q: ``[n]``.
        candidate_labels: ``[n]`` int8, :data:`FIXED`, :data:`SLOW` or
            :data:`UNCONVERGED` (an unconverged candidate is never a point).
        candidate_point: ``[n]`` int64, index into ``states``, -1 when unconverged.
        scale: the state scale the relative tolerances refer to (RMS of the
            initial states and of their images).
        stats: iteration counts and what each stage did.
    """

    states: torch.Tensor
    q: torch.Tensor
    labels: torch.Tensor
    counts: torch.Tensor
    inputs: torch.Tensor
    groups: torch.Tensor
    candidate_states: torch.Tensor
    candidate_q: torch.Tensor
    candidate_labels: torch.Tensor
    candidate_point: torch.Tensor
    scale: float
    stats: dict

    @property
    def n_candidates(self) -> int:
        return int(self.candidate_q.shape[0])

    @property
    def n_unique(self) -> int:
        return int(self.q.shape[0])

    def n_label(self, label: int) -> int:
        """How many candidates ended with ``label``."""
        return int((self.candidate_labels == label).sum())


# ----------------------------------------------------------------------------------
# the residual G(h) = F(h, u) - h and its derivatives
# ----------------------------------------------------------------------------------
class _System:
    """``G(h) = F(h, u) - h`` for a batch of candidates with per-candidate inputs ``u`` [n, d].

    Elman cells evaluate G, its gradient and ``J - I`` through their residual methods
    (:meth:`ElmanCell.residual` ...), with the drive ``W_uh u + b`` computed once here and
    carried by :meth:`sub` and :meth:`repeat`; other cells through ``step``,
    ``step_and_vjp`` and ``jvp``.
    """

    def __init__(self, cell: Cell, u: torch.Tensor | None, drive: torch.Tensor | None = None):
        from rnnprobe.cells.elman import ElmanCell

        self.cell = cell
        self.u = u
        self.dtype = cell.dtype
        self.elman = isinstance(cell, ElmanCell)
        if self.elman and drive is None:
            drive = cell.drive(u)
        self.drive = drive  # Elman cells: [S] (one input for all) or [n, S]

    def sub(self, idx: torch.Tensor) -> "_System":
        drive = self.drive
        if drive is not None and drive.dim() == 2:
            drive = drive[idx]
        return _System(self.cell, None if self.u is None else self.u[idx], drive)

    def repeat(self, k: int) -> "_System":
        """Each candidate's input repeated ``k`` times, for states laid out as [n, k, S] -> [n*k, S]."""
        drive = self.drive
        if drive is not None and drive.dim() == 2:
            drive = drive.repeat_interleave(k, dim=0)
        return _System(self.cell, None if self.u is None else self.u.repeat_interleave(k, dim=0), drive)

    def G(self, x: torch.Tensor) -> torch.Tensor:
        if self.elman:
            return self.cell.residual(x, self.drive)
        return self.cell.step(x, self.u) - x

    def value_and_grad(self, x: torch.Tensor):
        """``G(x)``, ``q(x)`` and ``grad q = J_G^T G`` with one forward and one backward pass."""
        if self.elman:
            g, grad = self.cell.residual_and_gradient(x, self.drive)
            return g, _q(g), grad
        F, pullback = self.cell.step_and_vjp(x, self.u)
        g = F - x
        return g, _q(g), pullback(g) - g

    def operator(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``v -> (J - I) v`` at ``x``; for Elman cells phi' is computed once, not per product."""
        if self.elman:
            return self.cell.residual_jacobian(x, self.drive)
        cell, u = self.cell, self.u
        return lambda v: cell.jvp(x, u, v) - v

    def preconditioner(self, x: torch.Tensor, sample: int = 32) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``v -> (Jbar - I)^-1 v`` with ``Jbar`` the mean Jacobian over the candidates ``x``, or None.

        One shared S x S inverse for the whole batch: as a right preconditioner it cuts the
        GMRES steps of a Newton direction about two-fold (8 -> 4-5 for nine in ten candidates
        of the flip-flop net after the warm start), and each application is one GEMM. For
        Elman cells ``J`` is linear in phi', so ``Jbar`` is exactly ``J`` at the mean gain;
        other cells average the Jacobians of up to ``sample`` evenly spaced candidates.
        None when ``Jbar - I`` is singular (GMRES then runs unpreconditioned).
        """
        from rnnprobe.cells.elman import ElmanCell

        cell, n, S = self.cell, x.shape[0], x.shape[1]
        if isinstance(cell, ElmanCell):
            Jbar = cell.jacobian_from_gain(cell._gain(x, self.u).mean(0, keepdim=True))[0]
        else:
            idx = torch.linspace(0, n - 1, min(n, sample), device=x.device).round().long()
            Jbar = cell.jacobian(x[idx], None if self.u is None else self.u[idx]).mean(0)
        Jbar.diagonal().sub_(1.0)
        P, info = torch.linalg.inv_ex(Jbar)
        if int(info) != 0 or not bool(torch.isfinite(P).all()):
            return None
        Pt = P.T.contiguous()
        return lambda v: v @ Pt

    def jacobian(self, x: torch.Tensor) -> torch.Tensor:
        J = self.cell.jacobian(x, self.u)
        idx = torch.arange(J.shape[-1], device=J.device)
        J[:, idx, idx] -= 1.0
        return J


def _q(g: torch.Tensor) -> torch.Tensor:
    return 0.5 * (g * g).sum(-1)


# ----------------------------------------------------------------------------------
# building blocks: first-order descent, GMRES, damped direct solves, line search
# ----------------------------------------------------------------------------------
# torch's fused Adam kernel (CPU and CUDA): one pass over x, m and v per step instead of
# about ten elementwise ops (41 us against 300-400 us per step at 1024 x 128, float32)
_FUSED_ADAM = getattr(torch, "_fused_adam_", None)


def _adam_step(x: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: torch.Tensor,
               lr: float, b1: float, b2: float, eps: float) -> None:
    """One Adam step in place on ``x``, ``m``, ``v``; ``t`` a float tensor holding the step count (advanced here)."""
    t += 1  # the fused kernel reads the step count; like torch.optim.Adam, advance it first
    if _FUSED_ADAM is not None:
        _FUSED_ADAM([x], [grad], [m], [v], [], [t], lr=lr, beta1=b1, beta2=b2, weight_decay=0.0, eps=eps,
                    amsgrad=False, maximize=False)
        return
    k = float(t)
    m.lerp_(grad, 1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = v.sqrt().div_((1 - b2**k) ** 0.5).add_(eps)
    x.addcdiv_(m, denom, value=-lr / (1 - b1**k))


def _adam(system: _System, x: torch.Tensor, steps: int, lr: float):
    """Adam on q for every candidate at once (per-coordinate, per-candidate step sizes).

    Returns the best state each candidate visited and its ``q`` (``G`` there is one more
    evaluation, left to the caller: the warm start evaluates it in the cell's precision).
    """
    x = x.clone()
    _, q, grad = system.value_and_grad(x)
    best_x, best_q = x.clone(), q
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    t = torch.zeros((), dtype=torch.float32, device=x.device)
    eps = torch.finfo(x.dtype).tiny  # a zero gradient gives a zero step, not 0 / 0
    for _ in range(steps):
        _adam_step(x, grad, m, v, t, lr, 0.9, 0.999, eps)
        _, q, grad = system.value_and_grad(x)
        better = q < best_q
        best_x = torch.where(better[:, None], x, best_x)
        best_q = torch.where(better, q, best_q)
    return best_x, best_q


def _project(basis: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``basis [n, j, S]`` times ``w [n, S]`` row by row -> ``[n, j]``.

    A multiply and a sum: bmm runs these n matrix-vector products 4-5x slower
    (0.70 ms against 0.13 ms at n = 1024, j = 9, S = 128, float32, 2 threads).
    """
    return (basis * w[:, None, :]).sum(-1)


def _combine(h: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``sum_j h[n, j] basis[n, j, :]`` -> ``[n, S]`` (bmm from three vectors on; below, it is slower)."""
    if h.shape[1] < 3:
        return (h[:, :, None] * basis).sum(1)
    return torch.bmm(h[:, None, :], basis)[:, 0]


def _gmres(apply: Callable, b: torch.Tensor, m: int, rtol: torch.Tensor, settle: float = 1.0,
           reorthogonalize: bool = False, precond: Callable | None = None,
           restarts: int = 0) -> tuple[torch.Tensor, int]:
    """Batched GMRES (x0 = 0): solve ``A x = b`` for every row of ``b`` [n, S].

    Arnoldi with classical Gram-Schmidt (with ``reorthogonalize`` a second pass
    where cancellation is severe, the DGKS test; the inexact Newton steps here
    do not need it), Givens rotations per row; stops when every row's residual is below ``rtol`` [n] (relative) or
    after ``m`` products. ``precond`` (``v -> P v``) preconditions from the right: GMRES
    minimises the true residual ``||b - A P y||`` and returns ``x = P y``.

    ``restarts``: up to this many more cycles of ``m`` products (from the true residual, every
    row to its tolerance) while some row's true residual is above its tolerance.

    Returns ``(x, k)``: the solution [n, S] and the number of products of the first cycle.
    """
    x, k = _gmres_cycle(apply, b, m, rtol, settle, reorthogonalize, precond)
    if restarts:
        target = rtol.to(b.dtype) * b.norm(dim=1)
        for _ in range(restarts):
            r = b - apply(x)
            rn = r.norm(dim=1)
            if bool((rn <= target).all()):
                break
            rel = (target / torch.where(rn > 0, rn, torch.ones_like(rn))).clamp(max=1.0)
            x = x + _gmres_cycle(apply, r, m, rel, 1.0, reorthogonalize, precond)[0]
    return x, k


def _gmres_cycle(apply: Callable, b: torch.Tensor, m: int, rtol: torch.Tensor, settle: float,
                 reorthogonalize: bool, precond: Callable | None) -> tuple[torch.Tensor, int]:
    """One cycle of :func:`_gmres` (no restart)."""
    if precond is not None:
        op = apply
        apply = lambda v: op(precond(v))  # noqa: E731
    n, S = b.shape
    m = max(1, min(m, S))
    beta = b.norm(dim=1)
    safe = torch.where(beta > 0, beta, torch.ones_like(beta))
    V = b.new_zeros(n, m + 1, S)
    R = b.new_zeros(n, m, m)
    cs = b.new_zeros(n, m)
    sn = b.new_zeros(n, m)
    e = b.new_zeros(n, m + 1)
    e[:, 0] = beta
    V[:, 0] = b / safe[:, None]
    # the per-row least-squares bookkeeping (Givens rotations on [n]-vectors, a few hundred tiny
    # ops per solve) runs on NumPy views of the same memory on the CPU: 0.2-0.6 ms against
    # 1.1-1.6 ms in torch for m = 8, n = 39 .. 1024 (per-op overhead); the same code either way
    on_numpy = kernels.on_numpy(b, rtol)
    small = (lambda t: t.numpy()) if on_numpy else (lambda t: t)
    xp = np if on_numpy else torch
    R_, cs_, sn_, e_ = small(R), small(cs), small(sn), small(e)
    bound = small(rtol.to(b.dtype) * beta)
    k = m
    for j in range(m):
        w = apply(V[:, j])
        basis = V[:, : j + 1]
        wn = w.norm(dim=1)
        h = _project(basis, w)
        w = w - _combine(h, basis)
        hn = w.norm(dim=1)
        if reorthogonalize and bool((hn < 0.7 * wn).any()):  # DGKS: again where cancellation was severe
            h2 = _project(basis, w)
            w = w - _combine(h2, basis)
            h = h + h2
            hn = w.norm(dim=1)
        V[:, j + 1] = w / torch.where(hn > 0, hn, torch.ones_like(hn))[:, None]
        col = R_[:, :, j]  # column j of R; its subdiagonal entry hn is rotated away below
        col[:, : j + 1] = small(h)
        for i in range(j):  # the earlier rotations, in order
            a, c = col[:, i], col[:, i + 1]
            a_new = cs_[:, i] * a + sn_[:, i] * c
            c_new = cs_[:, i] * c - sn_[:, i] * a
            col[:, i], col[:, i + 1] = a_new, c_new
        a, c = col[:, j], small(hn)
        r = xp.hypot(a, c)
        pos = r > 0
        rs = xp.where(pos, r, 1.0)
        cs_[:, j] = xp.where(pos, a / rs, 1.0)
        sn_[:, j] = xp.where(pos, c / rs, 0.0)
        col[:, j] = r
        e_[:, j + 1] = -sn_[:, j] * e_[:, j]
        e_[:, j] = cs_[:, j] * e_[:, j]
        # stop once nearly every row meets its tolerance: the few left get a less exact step,
        # which the line search guards, instead of holding up the whole batch
        if int((abs(e_[:, j + 1]) <= bound).sum()) >= settle * n:
            k = j + 1
            break
    Rk = R[:, :k, :k]
    # a zero on the diagonal (happy breakdown of an exactly solved row) must not poison the solve
    diag = torch.diagonal(Rk, dim1=1, dim2=2)
    fix = diag == 0
    if bool(fix.any()):
        Rk = Rk.clone()
        torch.diagonal(Rk, dim1=1, dim2=2)[fix] = 1.0
    y = torch.linalg.solve_triangular(Rk, e[:, :k, None], upper=True)[:, :, 0]
    x = torch.bmm(y[:, None, :], V[:, :k])[:, 0]
    return (x if precond is None else precond(x)), k


def _per_matrix(fn: Callable, A: torch.Tensor, *rest: torch.Tensor):
    """``fn(A, *rest)`` for a batch of matrices, one matrix at a time on a multi-threaded CPU.

    With torch 2.13's MKL, batched LU factorisations (``solve``, ``lu_factor``,
    ``inv`` of [K >= 2, N, N], N from about 160 up) running on more than one
    thread print "Intel oneMKL ERROR: Parameter 6 was incorrect on entry to
    DLASWP" and can hang; single matrices (which MKL threads internally) and
    batches of N <= 128 (checked up to K = 64) are fine.
    """
    if A.device.type != "cpu" or A.shape[0] <= 1 or A.shape[-1] <= 128 or torch.get_num_threads() == 1:
        return fn(A, *rest)
    outs = [fn(A[i], *(r[i] for r in rest)) for i in range(A.shape[0])]
    return tuple(torch.stack([o[j] for o in outs]) for j in range(len(outs[0])))


def _damped_solve(A: torch.Tensor, g: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Newton (``mu == 0``: ``A dx = -g`` by LU) or Levenberg-Marquardt (``(A^T A + mu I) dx = -A^T g``).

    Rows whose system is singular come back as NaN (the line search then rejects them).
    """
    dx = torch.full_like(g, float("nan"))
    newton = mu == 0
    if bool(newton.any()):
        idx = newton.nonzero()[:, 0]
        sol, info = _per_matrix(torch.linalg.solve_ex, A[idx], -g[idx])
        sol[info != 0] = float("nan")
        dx[idx] = sol
    if bool((~newton).any()):
        idx = (~newton).nonzero()[:, 0]
        At = A[idx].transpose(1, 2)
        M = At @ A[idx]
        M.diagonal(dim1=1, dim2=2).add_(mu[idx, None])
        L, info = torch.linalg.cholesky_ex(M)
        sol = torch.cholesky_solve(-(At @ g[idx, :, None]), L)[:, :, 0]
        sol[info != 0] = float("nan")
        dx[idx] = sol
    return dx


_RESTARTS = 3  # GMRES restarts at the largest Krylov dimension (matrix-free)
_LADDER = 10  # step lengths 1/2 .. 1/1024 tried after a rejected full step


def _line_search(system: _System, x: torch.Tensor, dx: torch.Tensor, q: torch.Tensor, g: torch.Tensor):
    """Per-candidate backtracking on q: the longest of 1, 1/2, ..., 1/1024 with sufficient decrease.

    ``g`` and ``q`` are G and q at ``x``. Returns ``(x_new, g_new, q_new, t)``; where no step
    length works, ``t = 0`` and ``x``, ``g``, ``q`` come back unchanged.
    """
    c = 1e-4
    finite = torch.isfinite(dx).all(dim=1)
    if not bool(finite.all()):
        dx = torch.where(finite[:, None], dx, torch.zeros_like(dx))
    xt = x + dx
    gt = system.G(xt)
    qt = _q(gt)
    ok = finite & (qt <= (1 - 2 * c) * q)
    t = torch.where(ok, torch.ones_like(q), torch.zeros_like(q))
    bad = (~ok & finite).nonzero()[:, 0]
    if bad.numel():
        steps = 0.5 ** torch.arange(1, _LADDER + 1, dtype=x.dtype, device=x.device)
        xb = x[bad, None, :] + steps[None, :, None] * dx[bad, None, :]
        sub = system.sub(bad).repeat(_LADDER)
        gb = sub.G(xb.reshape(-1, x.shape[1])).reshape(bad.numel(), _LADDER, -1)
        qb = _q(gb)
        okb = qb <= (1 - 2 * c * steps[None, :]) * q[bad, None]
        anyb = okb.any(dim=1)
        first = torch.where(anyb, okb.to(torch.int8).argmax(dim=1), torch.zeros_like(bad))
        rows = torch.arange(bad.numel(), device=x.device)
        sel = bad[anyb]
        xt[sel] = xb[rows, first][anyb]
        gt[sel] = gb[rows, first][anyb]
        qt[sel] = qb[rows, first][anyb]
        t[sel] = steps[first][anyb]
    rejected = t == 0
    if bool(rejected.any()):
        xt = torch.where(rejected[:, None], x, xt)
        gt = torch.where(rejected[:, None], g, gt)
        qt = torch.where(rejected, q, qt)
    return xt, gt, qt, t


# ----------------------------------------------------------------------------------
# deduplication
# ----------------------------------------------------------------------------------
def _components(n: int, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Connected components of an undirected graph on ``n`` nodes with edges (i, j): the smallest node of each."""
    label = torch.arange(n, device=i.device)
    if i.numel() == 0:
        return label
    src = torch.cat([i, j])
    dst = torch.cat([j, i])
    while True:
        new = label.scatter_reduce(0, dst, label[src], reduce="amin")
        new = new[new]  # pointer jumping: halve the remaining path lengths
        if bool((new == label).all()):
            return label
        label = new


def _grid_cells(key: torch.Tensor) -> torch.Tensor:
    """Index of each row's distinct value in ``key`` [n, D] (integer-valued floats).

    Rows are hashed to one int64 (a random linear map, wrapping modulo 2^64) and
    the 1-D hashes made unique, which is much faster than sorting rows; a hash
    collision is detected (rows of one hash that differ) and then answered by
    the exact row-wise ``torch.unique``.
    """
    k = torch.clamp(key, -(2.0**62), 2.0**62).to(torch.int64)
    g = torch.Generator(device="cpu").manual_seed(0x5EED)
    mult = torch.randint(1, 2**62, (k.shape[1],), generator=g, dtype=torch.int64).to(k.device) | 1
    h = (k * mult).sum(dim=1)
    _, cell_of = torch.unique(h, return_inverse=True)
    first = torch.full((int(cell_of.max()) + 1,), k.shape[0], dtype=torch.long, device=k.device)
    first = first.scatter_reduce(0, cell_of, torch.arange(k.shape[0], device=k.device), reduce="amin")
    if bool((k != k[first[cell_of]]).any()):
        _, cell_of = torch.unique(k, dim=0, return_inverse=True)
    return cell_of


def _near_pairs(R: torch.Tensor, tol: float, metric: str, groups: torch.Tensor | None, block_bytes: float):
    """Pairs ``i < j`` of the rows of ``R`` [C, D] within ``tol`` of each other, in the same group.

    ``metric``: "sup" (sup norm) or "rms" (Euclidean norm / sqrt(D)). Squared Euclidean
    distances come from one GEMM per block of rows. For "rms" they are the test; for "sup"
    they are a prefilter (sup <= tol implies Euclidean <= tol sqrt(D); the margin covers the
    GEMM's cancellation) before the exact sup-norm test on the pairs that pass it.
    """
    C, D = R.shape
    # the GEMM in units of the largest entry, so that the squares cannot overflow (the exact
    # sup-norm test below stays in the original units)
    unit = float(R.abs().max()) if R.numel() else 0.0
    unit = unit if 0.0 < unit < float("inf") else 1.0
    Ru = R / unit
    sq = (Ru * Ru).sum(dim=1)
    eps = torch.finfo(R.dtype).eps
    reach = (tol / unit) ** 2 * D
    rows = max(1, min(C, int(block_bytes // max(1, C * R.element_size()))))
    pair_rows = max(1, int(block_bytes // max(1, D * R.element_size())))
    ei, ej = [R.new_zeros(0, dtype=torch.long)], [R.new_zeros(0, dtype=torch.long)]
    for s in range(0, C, rows):
        norms = sq[s:s + rows, None] + sq[None, :]
        d2 = torch.addmm(norms, Ru[s:s + rows], Ru.T, alpha=-2.0)
        near = d2 <= (reach if metric == "rms" else reach * (1 + 1e-6) + 16 * D * eps * norms)
        if groups is not None:
            near &= groups[s:s + rows, None] == groups[None, :]
        a, b = near.nonzero(as_tuple=True)
        keep = a + s < b
        a, b = a[keep] + s, b[keep]
        if metric == "rms":
            ei.append(a)
            ej.append(b)
            continue
        for p in range(0, a.numel(), pair_rows):
            pa, pb = a[p:p + pair_rows], b[p:p + pair_rows]
            close = (R[pa] - R[pb]).abs().amax(dim=-1) <= tol
            ei.append(pa[close])
            ej.append(pb[close])
    return torch.cat(ei), torch.cat(ej)


def deduplicate(states: torch.Tensor, q: torch.Tensor, tol: float, groups: torch.Tensor | None = None,
                block_bytes: float = 64e6, *, metric: str = "sup"):
    """Merge states that agree to ``tol``, keeping the lowest-``q`` one of each cluster.

    ``metric`` "sup" (sup norm): states are put on a grid of side ``tol`` (cells found by
    hashing), and grid cells whose lowest-q states are within ``2 tol`` are joined.
    ``metric`` "rms" (Euclidean norm / sqrt(D)): states within ``tol`` are joined (no grid).
    Clusters are the connected components of that relation. States in different ``groups``
    (e.g. input conditions) are never merged. Cost: O(n S log n) for the grid plus O(C^2 S)
    (GEMMs) for the C occupied cells (C = n for "rms"), in blocks of at most ``block_bytes``.

    Returns ``(representatives [K], assignment [n])``: indices into ``states``
    of the kept states (sorted by first occurrence) and, for every state, the
    index (0..K-1) of its representative.
    """
    n = states.shape[0]
    dev = states.device
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return empty, empty
    if not tol > 0:
        raise InputError(f"deduplication tolerance must be > 0; got {tol}")
    if metric not in ("sup", "rms"):
        raise ValueError(f"metric must be 'sup' or 'rms'; got {metric!r}")
    big = torch.finfo(q.dtype).max
    qq = torch.nan_to_num(q, nan=big)
    idx = torch.arange(n, device=dev)
    if metric == "sup":
        key = torch.floor(states / tol)
        if groups is not None:
            key = torch.cat([groups.to(key.dtype)[:, None], key], dim=1)
        cell_of = _grid_cells(key)
        C = int(cell_of.max()) + 1
        best = torch.full((C,), big, dtype=q.dtype, device=dev).scatter_reduce(0, cell_of, qq, reduce="amin")
        is_best = qq <= best[cell_of]
        rep_of_cell = torch.full((C,), n, dtype=torch.long, device=dev).scatter_reduce(
            0, cell_of, torch.where(is_best, idx, torch.full_like(idx, n)), reduce="amin")
        reach = 2 * tol
    else:
        cell_of, C, rep_of_cell, reach = idx, n, idx, tol
    ei, ej = _near_pairs(states[rep_of_cell], reach, metric,
                         None if groups is None else groups[rep_of_cell], block_bytes)
    comp = _components(C, ei, ej)
    _, cluster_of_cell = torch.unique(comp, return_inverse=True)
    cluster = cluster_of_cell[cell_of]
    K = int(cluster.max()) + 1
    cbest = torch.full((K,), big, dtype=q.dtype, device=dev).scatter_reduce(0, cluster, qq, reduce="amin")
    first_best = torch.full((K,), n, dtype=torch.long, device=dev).scatter_reduce(
        0, cluster, torch.where(qq <= cbest[cluster], idx, torch.full_like(idx, n)), reduce="amin")
    # number clusters by the first occurrence of any member
    first_member = torch.full((K,), n, dtype=torch.long, device=dev).scatter_reduce(0, cluster, idx, reduce="amin")
    order = torch.argsort(first_member)
    renumber = torch.empty_like(order)
    renumber[order] = torch.arange(K, device=dev)
    return first_best[order], renumber[cluster]


# ----------------------------------------------------------------------------------
# the solver
# ----------------------------------------------------------------------------------
def _inputs_for(cell: Cell, u_star, n: int) -> torch.Tensor | None:
    if cell.n_inputs == 0:
        if u_star is not None and torch.as_tensor(u_star).numel() != 0:
            raise InputError(f"the model takes no inputs but an input u* of shape "
                             f"{list(torch.as_tensor(u_star).shape)} was given; drop --input")
        return None
    if u_star is None:
        return torch.zeros(n, cell.n_inputs, dtype=cell.dtype, device=cell.device)
    u = as_tensor(u_star, dtype=cell.dtype, device=cell.device)
    if u.dim() == 1:
        u = u[None, :]
    if u.dim() != 2 or u.shape[1] != cell.n_inputs or u.shape[0] not in (1, n):
        raise InputError(f"the constant input u* must have shape [{cell.n_inputs}] or [n={n}, {cell.n_inputs}]; "
                         f"got {list(u.shape)} (--input)")
    if not bool(torch.isfinite(u).all()):
        raise InputError("the constant input u* has non-finite values (--input)")
    return u.expand(n, cell.n_inputs).clone()


def find_fixed_points(
    cell: Cell,
    u_star,
    initial_states,
    *,
    tol: float = 1e-12,
    slow_tol: float = 1e-6,
    max_iter: int = 50,
    warmup_steps: int = 25,
    warmup_lr: float = 0.1,
    first_order_steps: int = 100,
    first_order_lr: float = 0.01,
    krylov_dim: int = 8,
    krylov_settle: float = 0.9,
    precondition: bool = True,
    direct_max: int = 64,
    direct_dim: int = 64,
    polish_iter: int = 4,
    merge_tol: float = 3e-2,
    dedupe_tol: float = 1e-6,
    patience: int = 8,
    verify_steps: int = 12,
    explore_dtype: torch.dtype | None = torch.float32,
    jacobian_memory: float = 256e6,
    explore_eta: float = 1e-4,
    groups=None,
    progress=None,
) -> FixedPointSet:
    """Fixed and slow points of ``h -> cell.step(h, u*)`` from a batch of initial states.

    ``find_fixed_points(cell, u_star, initial_states, *, tol=1e-12, slow_tol=1e-6, max_iter=50, ...)``

    Returns a :class:`FixedPointSet`. A candidate is a fixed point when
    ``q = 1/2 ||F(h, u*) - h||^2 <= tol``, a slow point when ``q <= slow_tol``,
    and unconverged otherwise; unconverged candidates never become points.
    Fixed points are polished to round-off (q ~ 1e-25 for tanh nets of a few
    hundred units in float64), not just to ``tol``.

    Arguments:
        cell: any :class:`~rnnprobe.cells.Cell` (Elman, GRU, LSTM state [h, c], user cells);
            its dtype/device are used (use float64).
        u_star: the constant input: ``None`` (zero), ``[n_inputs]``, or
            ``[n, n_inputs]`` (one per candidate; see ``groups``).
        initial_states: ``[n, n_state]`` candidates (tensor or array).
        tol, slow_tol: the q thresholds of the labels.
        max_iter: Newton iterations per candidate (a cap; typical runs need 5-15).
        warmup_steps, warmup_lr: Adam steps on q for every candidate before
            Newton, with learning rate ``warmup_lr * scale``. They pull noisy
            candidates onto the slow manifold, which widens the Newton basins
            of saddle points (0 turns the warm start off).
        first_order_steps, first_order_lr: Adam steps for candidates whose
            Newton / Levenberg-Marquardt iteration stalls (``patience``
            rejected steps in a row), once per candidate.
        krylov_dim: GMRES dimension of the matrix-free Newton steps.
        krylov_settle: GMRES stops once this fraction of the candidates has met its
            forcing tolerance ``min(0.1, ||G|| / scale)`` (1: all of them).
        precondition: once a GMRES has used all ``krylov_dim`` steps, precondition the
            later ones from the right with ``(Jbar - I)^-1``, ``Jbar`` the mean Jacobian
            of the candidates in that solve (one shared S x S inverse, where it costs at
            most a quarter of the GMRES products; see :meth:`_System.preconditioner`).
            Trained nets whose Jacobians differ from point to point need it (flip-flop:
            8 -> 4-6 steps); where plain GMRES converges in 2-3 steps (a planted memory
            in a weak random background) it would only add work. Not used matrix-free.
        direct_max: explicit Jacobians (LU; Levenberg-Marquardt after a rejected
            step) replace GMRES once the active candidates cost at most this many
            128 x 128 factorisations (``n_active * S^3 <= direct_max * 128^3``);
            candidates whose Newton-Krylov step was rejected, or cut q less than 4x near a
            root (q <= slow_tol, where a step meeting its forcing term cuts it 100x), use them
            from then on (matrix-free: twice the Krylov dimension, in full precision).
        direct_dim: state sizes up to this always use explicit Jacobians.
        polish_iter: Newton iterations a candidate may spend below ``tol``
            polishing towards round-off (quadratic convergence needs 1-2).
        merge_tol: candidates taking full Newton steps that keep shrinking (from the
            first iteration on) and lying within ``merge_tol * scale`` of each other or
            of a converged point (RMS distance, Euclidean / sqrt(S)) are merged: one
            continues, the others wait and are verified at the end by chord iterations
            with the converged point's Jacobian (failures are un-merged and solved on
            their own). 0 turns merging off.
        dedupe_tol: final deduplication tolerance, relative to ``scale``.
        explore_dtype, explore_eta: the warm start, and the GMRES solves of Newton
            steps whose forcing tolerance is at least ``explore_eta``, run in this
            lower precision (float32 halves their cost); every step is accepted or
            rejected by a float64 line search, and everything reported (states, q,
            labels, Jacobians) is float64. ``None`` keeps everything in the cell's dtype.
        jacobian_memory: bytes of explicit Jacobians (and their factors) held at once;
            larger batches are processed in chunks. When not even one fits, or W_hh is a
            convolution too large for its dense form (:func:`dense_jacobian_feasible`),
            the solver is matrix-free throughout: Newton-Krylov only (a rejected or poor
            step retries with twice the Krylov dimension, up to 8 x ``krylov_dim``, in
            full precision, restarted up to 3 times there until the forcing term is met),
            and no merging (its verification factorises Jacobians).
        groups: ``[n]`` integer condition of each candidate; points of different
            groups are never merged (use with per-candidate inputs).
        progress: an object with ``start(desc, total)``, ``advance()``, ``stop()``.

    The state scale is ``max(RMS(initial states), RMS(F(initial states)))``.
    """
    if not (tol > 0 and slow_tol >= tol):
        raise InputError(f"tolerances must satisfy 0 < tol <= slow_tol; got tol={tol}, slow_tol={slow_tol} "
                         "(--tol, --slow-tol)")
    # a copy: the solver updates candidates in place, and the caller's tensor must come back unchanged
    x = as_tensor(initial_states, dtype=cell.dtype, device=cell.device, detach=True).clone()
    if x.dim() != 2 or x.shape[1] != cell.n_state:
        raise InputError(f"initial states must be [n, n_state={cell.n_state}]; got shape {list(x.shape)} (--init)")
    if not bool(torch.isfinite(x).all()):
        raise InputError("initial states contain non-finite values (--init)")
    n, S = x.shape
    dev, dt = x.device, x.dtype
    U = _inputs_for(cell, u_star, n)
    grp = (torch.zeros(n, dtype=torch.long, device=dev) if groups is None
           else torch.as_tensor(groups, dtype=torch.long, device=dev).reshape(-1))
    if grp.shape[0] != n:
        raise InputError(f"groups must have one entry per candidate (n={n}); got {grp.shape[0]}")
    stats = {"n_candidates": n, "warmup_steps": warmup_steps, "newton_iterations": 0, "krylov_steps": 0,
             "krylov_steps_low_precision": 0, "krylov_steps_preconditioned": 0,
             "explore_dtype": str(explore_dtype).replace("torch.", ""), "direct_steps": 0, "merged": 0,
             "merge_verified": 0, "merge_rejected": 0, "first_order": 0}
    if n == 0:
        z = torch.zeros(0, dtype=torch.long, device=dev)
        return FixedPointSet(x.new_zeros(0, S), x.new_zeros(0), z.to(torch.int8), z,
                             x.new_zeros(0, cell.n_inputs), z, x, x.new_zeros(0), z.to(torch.int8), z, 1.0, stats)
    system = _System(cell, U)
    low = None  # the same system in a lower precision, for the warm start and rough Newton directions
    if explore_dtype is not None and torch.finfo(explore_dtype).eps > torch.finfo(dt).eps:
        low = _System(cell.to(dtype=explore_dtype), None if U is None else U.to(explore_dtype))
    with torch.no_grad():
        Fx = cell.step(x, U)
    scale = float(max(x.pow(2).mean().sqrt(), Fx.pow(2).mean().sqrt(), torch.finfo(dt).tiny ** 0.25))
    if progress is not None:
        progress.start("fixed points", max_iter)

    # 1. warm start: a few first-order steps on q for everyone
    t_start = time.perf_counter()
    if warmup_steps > 0:
        warm = low or system
        x = _adam(warm, x.to(warm.dtype), warmup_steps, warmup_lr * scale)[0].detach().to(dt)
        with torch.no_grad():
            g = system.G(x)
    else:
        g = Fx - x
    q = _q(g)
    x, g, q = x.detach(), g.detach(), q.detach()
    stats["seconds_warmup"] = time.perf_counter() - t_start

    # 2. per-candidate damped Newton
    eps = torch.finfo(dt).eps
    q_floor = 0.5 * S * (64 * eps * scale) ** 2  # about the round-off level of q
    chunk = max(1, int(jacobian_memory // (3 * S * S * x.element_size())))  # explicit Jacobians at a time
    matrix_free = not dense_jacobian_feasible(cell, jacobian_memory)
    stats["matrix_free"] = matrix_free
    if matrix_free:
        merge_tol = 0.0  # a merge is verified with the leader's LU factors, which do not exist here
    kdim = torch.full((n,), krylov_dim, dtype=torch.long, device=dev)  # grows on rejections (matrix-free)
    exact = torch.zeros(n, dtype=torch.bool, device=dev)  # Krylov solves kept in full precision
    state = torch.full((n,), _ACTIVE, dtype=torch.int8, device=dev)
    leader = torch.full((n,), -1, dtype=torch.long, device=dev)
    mu = torch.zeros(n, dtype=dt, device=dev)
    fails = torch.zeros(n, dtype=torch.long, device=dev)
    direct = torch.zeros(n, dtype=torch.bool, device=dev)
    no_merge = torch.zeros(n, dtype=torch.bool, device=dev)
    first_order_done = torch.zeros(n, dtype=torch.bool, device=dev)
    last_step = torch.full((n,), float("inf"), dtype=dt, device=dev)
    iters = torch.zeros(n, dtype=torch.long, device=dev)
    q_check = q.clone()  # q at the last progress check (every `patience` iterations)
    below_tol = torch.zeros(n, dtype=torch.long, device=dev)  # iterations spent at q <= tol
    check_at = torch.full((n,), patience, dtype=torch.long, device=dev)
    state[q <= q_floor] = _DONE

    slow_krylov = False  # plain GMRES has used all its steps: precondition from then on

    def newton_pass():
        nonlocal x, g, q, q_check, check_at, slow_krylov
        while True:
            act = ((state == _ACTIVE) & (iters < max_iter)).nonzero()[:, 0]
            state[(state == _ACTIVE) & (iters >= max_iter)] = _DONE
            if act.numel() == 0:
                stalled = (state == _STALLED).nonzero()[:, 0]
                if stalled.numel() == 0:
                    return
                # the first-order stage, once per candidate, for all that stalled, in one batch
                stats["first_order"] += int(stalled.numel())
                sub = system.sub(stalled)
                xa = _adam(sub, x[stalled], first_order_steps, first_order_lr * scale)[0]
                ga = sub.G(xa)
                x[stalled], g[stalled], q[stalled] = xa, ga, _q(ga)
                state[stalled] = _ACTIVE
                first_order_done[stalled] = True
                fails[stalled] = 0
                mu[stalled] = 0
                last_step[stalled] = float("inf")
                q_check[stalled] = q[stalled]
                check_at[stalled] = iters[stalled] + patience
                continue
            stats["newton_iterations"] += 1
            stats.setdefault("active", []).append(int(act.numel()))
            if progress is not None:
                progress.advance()
            all_direct = S <= direct_dim or act.numel() * S**3 <= direct_max * 128**3
            use_direct = (direct[act] | all_direct) & (not matrix_free)
            for sel, method in ((act[use_direct], "direct"), (act[~use_direct], "krylov")):
                if sel.numel() == 0:
                    continue
                sub = system.sub(sel)
                # sel is ascending (from a mask): all n of them is every candidate in order, and the
                # first iterations, on every candidate, then work on x, g, q without gathering copies
                full = sel.numel() == n
                xs, gs, qs = (x, g, q) if full else (x[sel], g[sel], q[sel])
                if method == "krylov":
                    eta = torch.clamp(gs.norm(dim=1) / scale, max=0.1)
                    dx = torch.empty_like(gs)
                    rough = eta >= explore_eta if low is not None else torch.zeros_like(eta, dtype=torch.bool)
                    rough &= ~exact[sel]
                    for part_all, sys_p in ((rough, low), (~rough, system)):
                        # one GMRES per Krylov dimension in use (only matrix-free retries use others)
                        for m_k in torch.unique(kdim[sel][part_all]).tolist():
                            part = part_all & (kdim[sel] == m_k)
                            whole = bool(part.all())
                            ip = sel[part]
                            sp = sys_p.sub(ip)
                            xp = (xs if whole else xs[part]).to(sp.dtype)
                            # precondition once plain GMRES has needed all its steps, and where the
                            # S x S inverse costs at most a quarter of the products of one GMRES
                            pre = (sp.preconditioner(xp) if slow_krylov and S <= 2 * int(part.sum()) else None)
                            # matrix-free at the largest Krylov space: restart until the forcing term is met
                            restarts = _RESTARTS if matrix_free and int(m_k) >= 8 * krylov_dim else 0
                            sol, used = _gmres(sp.operator(xp), -(gs if whole else gs[part]).to(sp.dtype), int(m_k),
                                               eta[part], settle=krylov_settle, precond=pre, restarts=restarts)
                            if whole:
                                dx = sol.to(dt)
                            else:
                                dx[part] = sol.to(dt)
                            stats["krylov_steps_preconditioned"] += 0 if pre is None else int(part.sum())
                            if pre is None and used == int(m_k) and precondition and not matrix_free:
                                slow_krylov = True
                    stats["krylov_steps"] += int(sel.numel())
                    stats["krylov_steps_low_precision"] += int(rough.sum())
                else:
                    dx = torch.empty_like(gs)
                    A_scale = torch.empty_like(qs)
                    for c in torch.split(torch.arange(sel.numel(), device=dev), chunk):
                        A = system.sub(sel[c]).jacobian(xs[c])
                        dx[c] = _damped_solve(A, gs[c], mu[sel[c]])
                        A_scale[c] = (A * A).sum(dim=(1, 2)) / S
                        del A
                    stats["direct_steps"] += int(sel.numel())
                xn, gn, qn, t = _line_search(sub, xs, dx, qs, gs)
                iters[sel] += 1
                ok = t > 0
                step = (dx.abs().amax(dim=1) * t)
                if full:
                    x, g, q = xn, gn, qn
                else:
                    x[sel], g[sel], q[sel] = xn, gn, qn
                # damping: relax after a success, tighten after a rejection
                if method == "direct":
                    mu0 = 1e-10 * A_scale
                    m_new = torch.where(ok, mu[sel] / 8, torch.maximum(mu[sel] * 8, mu0))
                    mu[sel] = torch.where(m_new < mu0, torch.zeros_like(m_new), m_new)
                else:
                    # near a root (q <= slow_tol) a Newton-Krylov step meeting its forcing term cuts q
                    # by eta^2 <= 1e-2; one that cuts it less than 4x has a poor Krylov direction
                    # (accepted steps creeping down from q ~ 1e-12 never reach round-off and leave the
                    # point 1e-6 away, a "distinct" duplicate): such candidates switch like rejected ones
                    poor = ~ok | ((qs <= slow_tol) & (qn > 0.25 * qs))
                    if matrix_free:
                        kdim[sel[poor]] = torch.clamp(2 * kdim[sel[poor]], max=8 * krylov_dim)
                        exact[sel[poor]] = True
                    else:
                        direct[sel[poor]] = True
                fails[sel] = torch.where(ok, torch.zeros_like(fails[sel]), fails[sel] + 1)
                below_tol[sel] += (qn <= tol).long()
                done = (qn <= q_floor) | ((qn <= tol) & ((ok & (step <= 16 * eps * scale))
                                                        | (below_tol[sel] >= polish_iter)))
                state[sel[done]] = _DONE
                # merging: candidates taking full Newton steps that keep shrinking (from the first
                # iteration on: candidates that close are headed for one point, and the chord
                # iterations of the verification converge quadratically from there)
                if merge_tol > 0:
                    settle = ok & (t == 1) & (step <= 0.5 * last_step[sel]) & ~no_merge[sel] & ~done
                    _merge(sel[settle])
                last_step[sel] = torch.where(ok, step, last_step[sel])
            # no real progress (q not even halved) over the last `patience` iterations: stalled too
            due = (state == _ACTIVE) & (iters >= check_at)
            slow = due & (q > tol) & (q > 0.5 * q_check)
            q_check = torch.where(due, q, q_check)
            check_at = torch.where(due, iters + patience, check_at)
            stalled = ((state == _ACTIVE) & ((fails >= patience) | slow)).nonzero()[:, 0]
            if stalled.numel():
                retry = ~first_order_done[stalled] & (first_order_steps > 0)
                state[stalled[retry]] = _STALLED
                state[stalled[~retry]] = _DONE

    def _merge(settling: torch.Tensor):
        if settling.numel() < 1:
            return
        done_leaders = ((state == _DONE) & (leader < 0) & (q <= tol)).nonzero()[:, 0]
        pool = torch.cat([settling, done_leaders])
        if pool.numel() < 2:
            return
        # distances in the exploration precision: a merge is a guess that the verification checks
        xd = x[pool] if low is None else x[pool].to(low.dtype)
        reps, assign = deduplicate(xd, q[pool], merge_tol * scale, None if groups is None else grp[pool], metric="rms")
        rep_global = pool[reps[assign]]
        mine = rep_global[: settling.numel()]
        follow = mine != settling
        if bool(follow.any()):
            f = settling[follow]
            state[f] = _FOLLOWER
            leader[f] = mine[follow]
            stats["merged"] += int(f.numel())

    def verify():
        """Chord iterations of each follower with its leader's Jacobian; returns how many were rejected."""
        nonlocal x, g, q
        fol = (state == _FOLLOWER).nonzero()[:, 0]
        if fol.numel() == 0:
            return 0
        # leaders may themselves have been merged later: follow the chain to its root
        root = leader.clone()
        while True:
            nxt = torch.where(root >= 0, root, torch.zeros_like(root))
            chained = (root >= 0) & (state[nxt] == _FOLLOWER)
            if not bool(chained.any()):
                break
            root = torch.where(chained, leader[nxt], root)
        all_roots, all_which = torch.unique(root[fol], return_inverse=True)
        accepted = torch.zeros(fol.numel(), dtype=torch.bool, device=dev)
        # roots in chunks, so that their inverse Jacobians fit the memory budget
        for rc in torch.split(torch.arange(all_roots.numel(), device=dev), chunk):
            roots = all_roots[rc]
            mine = ((all_which >= rc[0]) & (all_which <= rc[-1])).nonzero()[:, 0]
            # followers sorted by their point: each point's followers are one slice of y and gy
            mine = mine[torch.argsort(all_which[mine], stable=True)]
            f = fol[mine]
            which = all_which[mine] - rc[0]
            good_root = q[roots] <= tol
            LU, piv, info = _per_matrix(torch.linalg.lu_factor_ex, system.sub(roots).jacobian(x[roots]))
            good_root &= (info == 0) & torch.isfinite(LU).all(dim=(1, 2))
            y = x[f].clone()
            sub = system.sub(f)
            ok = good_root[which].clone()
            gy, qy = g[f].clone(), q[f].clone()  # G and q at x[f], kept with x by every update
            for _ in range(verify_steps):
                mv = (ok & (qy > q_floor)).nonzero()[:, 0]  # ascending: still sorted by point
                if mv.numel() == 0:
                    break
                every = mv.numel() == y.shape[0]
                ym, gm = (y, gy) if every else (y[mv], gy[mv])
                # one factorisation per distinct point, applied to its moving followers as one slice
                wm = which[mv]
                cuts = torch.searchsorted(wm, torch.arange(roots.numel() + 1, device=dev)).tolist()
                corr = torch.empty_like(ym)
                for k in torch.unique(wm).tolist():
                    a, b = cuts[k], cuts[k + 1]
                    corr[a:b] = torch.linalg.lu_solve(LU[k], piv[k], gm[a:b].T).T
                ym = ym - corr
                gm = (sub if every else sub.sub(mv)).G(ym)
                qm = _q(gm)
                ok[mv] &= torch.isfinite(qm)  # a non-finite y gives a non-finite G, and so q
                if every:
                    y, gy, qy = ym, gm, qm
                else:
                    y[mv], gy[mv], qy[mv] = ym, gm, qm
            del LU
            close = (y - x[roots[which]]).abs().amax(dim=1) <= dedupe_tol * scale
            ok &= close & (qy <= tol)
            acc = f[ok]
            x[acc], g[acc], q[acc] = y[ok], gy[ok], qy[ok]
            state[acc] = _DONE
            leader[acc] = roots[which[ok]]
            accepted[mine[ok]] = True
        acc = fol[accepted]
        rej = fol[~accepted]
        state[rej] = _ACTIVE
        no_merge[rej] = True
        leader[rej] = -1
        iters[rej] = torch.minimum(iters[rej], torch.full_like(iters[rej], max(max_iter - 20, 0)))
        stats["merge_verified"] += int(acc.numel())
        stats["merge_rejected"] += int(rej.numel())
        return int(rej.numel())

    t_newton = time.perf_counter()
    stats["seconds_verify"] = 0.0
    with torch.no_grad():
        while True:
            newton_pass()
            t_verify = time.perf_counter()
            rejected = verify()
            stats["seconds_verify"] += time.perf_counter() - t_verify
            if rejected == 0:
                break
    stats["seconds_newton"] = time.perf_counter() - t_newton - stats["seconds_verify"]
    if progress is not None:
        progress.stop()
    t_label = time.perf_counter()

    # 3. labels, distinct points, counts
    labels = torch.full((n,), UNCONVERGED, dtype=torch.int8, device=dev)
    labels[q <= slow_tol] = SLOW
    labels[q <= tol] = FIXED
    labels[~torch.isfinite(q)] = UNCONVERGED
    conv = (labels != UNCONVERGED).nonzero()[:, 0]
    point = torch.full((n,), -1, dtype=torch.long, device=dev)
    if conv.numel():
        reps, assign = deduplicate(x[conv], q[conv], dedupe_tol * scale, None if groups is None else grp[conv])
        K = reps.numel()
        counts = torch.bincount(assign, minlength=K)
        rep_global = conv[reps]
        # fixed before slow, then by group, then by decreasing count
        lab = labels[rep_global].long()
        key = (lab * (grp.max() + 1) + grp[rep_global]) * (n + 1) + (n - counts)
        order = torch.argsort(key, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(K, device=dev)
        point[conv] = rank[assign]
        rep_global, counts = rep_global[order], counts[order]
    else:
        rep_global = torch.zeros(0, dtype=torch.long, device=dev)
        counts = torch.zeros(0, dtype=torch.long, device=dev)
    u_pts = (U[rep_global] if U is not None
             else x.new_zeros(rep_global.numel(), 0))
    stats["max_newton_iterations"] = int(iters.max()) if n else 0
    stats["seconds_dedupe"] = time.perf_counter() - t_label
    return FixedPointSet(
        states=x[rep_global].clone(), q=q[rep_global].clone(), labels=labels[rep_global].clone(),
        counts=counts, inputs=u_pts, groups=grp[rep_global].clone(),
        candidate_states=x, candidate_q=q, candidate_labels=labels, candidate_point=point,
        scale=scale, stats=stats,
    )


# ----------------------------------------------------------------------------------
# linearisation
# ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Linearization:
    """The linearised map at a batch of points.

    Attributes:
        jacobians: ``[K, S, S]``, ``J = dF/dh``.
        input_jacobians: ``[K, S, n_inputs]``, ``B = dF/du``.
        eigenvalues: ``[K, S]`` complex, sorted by decreasing modulus (ties:
            conjugate pairs with the positive imaginary part first).
        eigenvectors: ``[K, S, S]`` complex, columns matching ``eigenvalues``, or None.
    """

    jacobians: torch.Tensor
    input_jacobians: torch.Tensor
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor | None


def _eig_batched(J: torch.Tensor, vectors: bool):
    """torch.linalg.eig / eigvals over a batch; on CPU split over a few threads (LAPACK's
    geev runs one small matrix on one core, and torch's batch loop is serial)."""
    fn = torch.linalg.eig if vectors else torch.linalg.eigvals
    K = J.shape[0]
    workers = min(K, max(1, torch.get_num_threads()))
    if J.device.type != "cpu" or workers < 2 or K < 4:
        return fn(J)
    chunks = torch.tensor_split(J, workers)
    # one LAPACK thread per worker: threads created while torch runs several intra-op threads
    # each start their own OpenMP team, and 2 x 2 threads on 2 cores made the split no faster
    # than the serial loop (0.15 s against 0.09 s for 27 128 x 128 eigendecompositions, 2 cores)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(fn, chunks))
    finally:
        torch.set_num_threads(threads)
    if vectors:
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return torch.cat(parts)


def _sort_spectrum(lam: torch.Tensor, V: torch.Tensor | None):
    """Sort by decreasing modulus, then increasing |arg|, then decreasing imaginary part."""
    mod = lam.abs()
    # a lexicographic key in one float: modulus to ~1e-12 relative, then angle, then sign of imag
    rmod = torch.round(mod * 1e12) / 1e12
    ang = lam.angle().abs()
    key = torch.stack([-rmod, ang, -lam.imag], dim=-1)
    order = torch.arange(lam.shape[-1], device=lam.device).expand(lam.shape).clone()
    for c in (2, 1, 0):  # stable sorts from the least significant key
        k = torch.gather(key[..., c], -1, order)
        o = torch.argsort(k, dim=-1, stable=True)
        order = torch.gather(order, -1, o)
    lam = torch.gather(lam, -1, order)
    if V is not None:
        V = torch.gather(V, -1, order[..., None, :].expand(V.shape))
    return lam, V


def linearize(cell: Cell, states, u=None, *, eigenvectors: bool = True) -> Linearization:
    """Jacobians, input Jacobians and spectra of ``cell`` at ``states`` [K, S].

    ``linearize(cell, states, u=None, *, eigenvectors=True) -> Linearization``

    ``u`` is ``None`` (zero input), ``[n_inputs]`` or ``[K, n_inputs]``.
    Eigenvalues are sorted by decreasing modulus. Cost: one Jacobian and one
    dense eigendecomposition per point, so call it on distinct points only.
    """
    x = as_tensor(states, dtype=cell.dtype, device=cell.device, detach=True)
    if x.dim() != 2 or x.shape[1] != cell.n_state:
        raise InputError(f"states must be [K, n_state={cell.n_state}]; got shape {list(x.shape)}")
    K = x.shape[0]
    U = _inputs_for(cell, u, K) if K else None
    with torch.no_grad():
        J = cell.jacobian(x, U) if K else x.new_zeros(0, cell.n_state, cell.n_state)
        B = cell.input_jacobian(x, U) if K else x.new_zeros(0, cell.n_state, cell.n_inputs)
    if K == 0:
        lam = torch.zeros(0, cell.n_state, dtype=torch.complex128 if x.dtype == torch.float64 else torch.complex64,
                          device=x.device)
        return Linearization(J, B, lam, lam.new_zeros(0, cell.n_state, cell.n_state) if eigenvectors else None)
    if eigenvectors:
        lam, V = _eig_batched(J, True)
    else:
        lam, V = _eig_batched(J, False), None
    lam, V = _sort_spectrum(lam, V)
    return Linearization(J, B, lam, V)


def dense_jacobian_feasible(cell: Cell, jacobian_memory: float = 256e6) -> bool:
    """Whether explicit ``S x S`` Jacobians of ``cell`` are affordable.

    False when one Jacobian with its LU factors (``3 S^2`` numbers) exceeds
    ``jacobian_memory`` bytes, or when W_hh is a structured operator (a
    convolution) beyond the size its dense form is built for
    (:data:`rnnprobe.operators.DENSE_MAX`): then :func:`find_fixed_points`
    stays matrix-free and :func:`linearize_matrix_free` replaces :func:`linearize`.
    """
    from rnnprobe.operators import DENSE_MAX, DenseOperator

    S = cell.n_state
    if 3 * S * S * torch.finfo(cell.dtype).bits // 8 > jacobian_memory:
        return False
    op = getattr(cell, "op", None)
    return op is None or isinstance(op, DenseOperator) or op.n <= DENSE_MAX


def _uniform_gain_symbol(cell: Cell, x: torch.Tensor, u):
    """J's per-frequency C x C blocks ``[P, C, C]`` at ``x`` [S] when J is itself a circular convolution
    (an Elman cell on a :class:`~rnnprobe.operators.CircularConvOperator` whose gain phi' is the same on
    every site of a channel), else None."""
    from rnnprobe.cells.elman import ElmanCell
    from rnnprobe.operators import CircularConvOperator

    if not isinstance(cell, ElmanCell) or not isinstance(cell.op, CircularConvOperator):
        return None
    op = cell.op
    d = cell._gain(x[None], None if u is None else u[None])[0].reshape(op.channels, op.sites)
    # uniform to 1e-10 (a Newton-converged translation-invariant point is uniform to about its residual);
    # the per-channel mean gain then gives the eigenvalues to that relative accuracy
    spread = (d - d.mean(1, keepdim=True)).abs().max()
    if float(spread) > 1e-10 * max(1.0, float(d.abs().max())):
        return None
    D = torch.diag_embed(d.mean(1).to(torch.complex128 if d.dtype == torch.float64 else torch.complex64))
    M = op.blocks()  # [P, C, C]
    eye = torch.eye(op.channels, dtype=M.dtype, device=M.device)
    a = cell.alpha
    if cell.form == "rate-outside":
        return (1.0 - a) * eye + a * (M @ D)
    if cell.form == "residual":
        return eye + a * (D @ M)
    return (1.0 - a) * eye + a * (D @ M)


def linearize_matrix_free(cell: Cell, states, u=None, *, k: int = 16, tol: float = 1e-10,
                          maxiter: int = 300) -> tuple[Linearization, dict]:
    """The ``k`` leading eigenvalues of ``J = dF/dh`` at each point, without forming J.

    ``linearize_matrix_free(cell, states [K, S], u=None, *, k=16) -> (Linearization, info)``

    Where J is itself a circular convolution (an Elman cell whose W_hh is a
    :class:`~rnnprobe.operators.CircularConvOperator`, at a point where phi'
    is uniform over the sites of each channel to 1e-10, e.g. a
    translation-invariant fixed point) its spectrum is exact from the FFT;
    elsewhere ARPACK's implicitly restarted Arnoldi (``scipy.sparse.linalg.eigs``,
    largest modulus, relative tolerance ``tol``, at most ``maxiter`` restarts
    of an ``8k + 32``-vector basis, wide because the leading moduli of a
    convolution's Jacobian cluster) on Jacobian-vector products. The
    :class:`Linearization` has ``eigenvalues`` ``[K, k]`` (decreasing modulus;
    NaN where ARPACK did not converge), ``input_jacobians`` and empty
    ``jacobians`` ``[K, 0, 0]``. ``info``: ``method`` per point (``fft`` or
    ``arnoldi``), ``converged`` per point (k, or 0 when ARPACK did not converge
    all k: its partial Ritz values need not be the leading ones, so none are
    reported), and ``k``.
    """
    import scipy.sparse.linalg as sla

    x = as_tensor(states, dtype=cell.dtype, device=cell.device, detach=True)
    if x.dim() != 2 or x.shape[1] != cell.n_state:
        raise InputError(f"states must be [K, n_state={cell.n_state}]; got shape {list(x.shape)}")
    K, S = x.shape
    k = max(1, min(int(k), S - 2))
    U = _inputs_for(cell, u, K) if K else None
    cdt = torch.complex128 if x.dtype == torch.float64 else torch.complex64
    lam = torch.full((K, k), complex(float("nan"), float("nan")), dtype=cdt, device=x.device)
    methods, converged = [], []
    for i in range(K):  # one eigenproblem per distinct point (a handful)
        ui = None if U is None else U[i]
        blocks = _uniform_gain_symbol(cell, x[i], ui)
        if blocks is not None:
            ev = blocks.reshape(-1) if blocks.shape[-1] == 1 else torch.linalg.eigvals(blocks).reshape(-1)
            ev, _ = _sort_spectrum(ev[None], None)
            lam[i] = ev[0, :k].to(cdt)
            methods.append("fft")
            converged.append(k)
            continue
        with torch.no_grad():
            apply = _System(cell, None if U is None else U[i:i + 1]).operator(x[i:i + 1])  # (J - I) v

        def matvec(v, apply=apply):
            vt = torch.as_tensor(np.asarray(v).real, dtype=cell.dtype, device=cell.device).reshape(1, S)
            with torch.no_grad():
                return (apply(vt) + vt)[0].cpu().numpy().astype(np.float64)

        A = sla.LinearOperator((S, S), matvec=matvec, dtype=np.float64)
        v0 = np.random.default_rng(i).standard_normal(S)
        try:
            vals = sla.eigs(A, k=k, which="LM", tol=tol, v0=v0, ncv=min(S, 8 * k + 32), maxiter=maxiter,
                            return_eigenvectors=False)
        except sla.ArpackNoConvergence:
            vals = np.zeros(0)
        ev = torch.as_tensor(np.asarray(vals, dtype=np.complex128), dtype=cdt, device=x.device)
        if ev.numel():
            ev, _ = _sort_spectrum(ev[None], None)
            lam[i, : ev.shape[1]] = ev[0]
        methods.append("arnoldi")
        converged.append(int(ev.numel()))
    with torch.no_grad():
        B = cell.input_jacobian(x, U) if K else x.new_zeros(0, S, cell.n_inputs)
    lin = Linearization(x.new_zeros(K, 0, 0), B, lam, None)
    return lin, {"method": methods, "converged": converged, "k": k}


def classify(eigenvalues: torch.Tensor, marginal_tol: float):
    """Stability of each point from its eigenvalues ``[K, S]``.

    ``n_unstable`` counts ``|lambda| > 1 + marginal_tol``, ``n_marginal`` counts
    ``| |lambda| - 1 | <= marginal_tol`` (an estimate of the dimension of a
    continuous attractor through the point). The code is :data:`SADDLE` when
    some but not all directions are unstable, :data:`REPELLER` when all are,
    else :data:`MARGINAL` when some are marginal, else :data:`STABLE`.

    Returns ``(codes int8 [K], n_unstable [K], n_marginal [K])``.
    """
    mod = eigenvalues.abs()
    n_unstable = (mod > 1 + marginal_tol).sum(-1)
    n_marginal = ((mod - 1).abs() <= marginal_tol).sum(-1)
    S = eigenvalues.shape[-1]
    codes = torch.full(n_unstable.shape, STABLE, dtype=torch.int8, device=eigenvalues.device)
    codes[n_marginal > 0] = MARGINAL
    codes[n_unstable > 0] = SADDLE
    codes[n_unstable == S] = REPELLER
    return codes, n_unstable, n_marginal


def time_constants(eigenvalues: torch.Tensor) -> torch.Tensor:
    """``tau = -1 / log|lambda|`` in steps: positive for decaying modes, negative for
    growing ones, infinite on the unit circle, 0 for ``lambda = 0``."""
    mod = eigenvalues.abs()
    with np.errstate(divide="ignore"):
        return torch.where(mod == 1, torch.full_like(mod, float("inf")), -1.0 / torch.log(mod))


# ----------------------------------------------------------------------------------
# memory basis (variable-binding view): J = Xi Phi Xi^+
# ----------------------------------------------------------------------------------
@dataclasses.dataclass
class MemoryBasis:
    """``J = Xi Phi Xi^+`` at each point, with what the inputs write and the readout reads.

    Attributes:
        kind: ``eigen``, ``schur`` or ``file``.
        Xi: ``[K, S, m]`` basis (columns: the memory directions, of unit RMS norm).
        Xi_pinv: ``[K, m, S]`` its (pseudo-)inverse.
        Phi: ``[K, m, m]`` the interaction of the memories, ``Xi^+ J Xi``.
        input_map: ``[K, m, n_inputs]`` ``Xi^+ B``: which subspaces each input writes into.
        readout_map: ``[K, n_outputs, m]`` ``R Xi`` with ``R`` the readout Jacobian.
        condition: ``[K]`` 1-norm condition number of ``Xi`` (1 for Schur).
        reconstruction_error: ``[K]`` ``||Xi Phi Xi^+ - J||_F / ||J||_F`` (for a
            partial user basis: the part of J outside its span).
    """

    kind: str
    Xi: torch.Tensor
    Xi_pinv: torch.Tensor
    Phi: torch.Tensor
    input_map: torch.Tensor
    readout_map: torch.Tensor
    condition: torch.Tensor
    reconstruction_error: torch.Tensor


def real_eigen_basis(eigenvalues: torch.Tensor, eigenvectors: torch.Tensor) -> torch.Tensor:
    """The real basis of eigen-blocks: ``v`` for a real eigenvalue, ``[Re v, Im v]`` for a
    conjugate pair (taken from the member with positive imaginary part, its phase chosen so
    that ``Re v`` and ``Im v`` are orthogonal), in the order of ``eigenvalues``; unit columns for
    real eigenvalues, a common scale with ``||Re v||^2 + ||Im v||^2 = 2`` for a pair.

    ``eigenvalues`` [K, S] complex (exact conjugate pairs, as LAPACK returns them for a real
    matrix), ``eigenvectors`` [K, S, S] -> ``Xi`` [K, S, S] real. In this basis ``J`` is
    block diagonal with 1x1 blocks ``lambda`` and 2x2 blocks ``[[a, b], [-b, a]]``.
    """
    K, S = eigenvalues.shape
    V = eigenvectors
    # phase: v -> v exp(-i arg(v^T v) / 2) makes Re v orthogonal to Im v
    vtv = (V * V).sum(dim=1)
    V = V * torch.exp(-0.5j * torch.angle(vtv))[:, None, :]
    imag = eigenvalues.imag
    keep = imag >= 0
    width = torch.where(imag > 0, 2, 1) * keep
    start = torch.cumsum(width, dim=-1) - width
    total = width.sum(-1)
    if bool((total != S).any()):
        raise InputError("the Jacobian's eigenvalues are not in exact conjugate pairs; use --basis schur")
    Xi = torch.zeros(K, S, S, dtype=V.real.dtype, device=V.device)
    k, e = keep.nonzero(as_tuple=True)
    Xi[k, :, start[k, e]] = V.real[k, :, e]
    cplx = imag[k, e] > 0
    kc, ec = k[cplx], e[cplx]
    Xi[kc, :, start[kc, ec] + 1] = V.imag[kc, :, ec]
    # real eigenvalues: their eigenvector is real up to a global phase; the phase step made it real.
    # Columns of a pair share one scale (their RMS norm), which keeps the block [[a, b], [-b, a]].
    norms = Xi.norm(dim=1)
    pair = torch.sqrt(0.5 * (norms[kc, start[kc, ec]] ** 2 + norms[kc, start[kc, ec] + 1] ** 2))
    norms[kc, start[kc, ec]] = pair
    norms[kc, start[kc, ec] + 1] = pair
    return Xi / torch.where(norms > 0, norms, torch.ones_like(norms))[:, None, :]


def _schur_bases(J: torch.Tensor):
    import scipy.linalg

    Q, T = [], []
    for Jk in J.detach().cpu().numpy():  # one dense factorisation per distinct point
        Tk, Qk = scipy.linalg.schur(Jk, output="real")
        Q.append(Qk)
        T.append(Tk)
    to = dict(dtype=J.dtype, device=J.device)
    return torch.as_tensor(np.array(Q), **to), torch.as_tensor(np.array(T), **to)


def memory_basis(J: torch.Tensor, B: torch.Tensor, R: torch.Tensor | None, basis="eigen", *,
                 eigenvalues: torch.Tensor | None = None, eigenvectors: torch.Tensor | None = None) -> MemoryBasis:
    """Decompose each Jacobian as ``J = Xi Phi Xi^+`` (the memory basis of the variable-binding view).

    ``memory_basis(J [K,S,S], B [K,S,d], R [K,d_out,S] or None, basis="eigen"|"schur"|Xi [S,m])``

    ``eigen`` uses the real eigen-blocks of J (:func:`real_eigen_basis`; pass
    the sorted ``eigenvalues``/``eigenvectors`` of :func:`linearize` to avoid
    recomputing them), ``schur`` the real Schur vectors (Phi quasi-triangular),
    and an array ``Xi`` [S, m] a user basis (``Xi^+`` its pseudo-inverse).
    """
    K, S, _ = J.shape
    dt, dev = J.dtype, J.device
    if isinstance(basis, str) and basis == "eigen":
        if eigenvalues is None or eigenvectors is None:
            lam, V = _sort_spectrum(*torch.linalg.eig(J))
        else:
            lam, V = eigenvalues, eigenvectors
        Xi = real_eigen_basis(lam, V) if K else J.new_zeros(0, S, S)
        Xi_pinv, info = _per_matrix(torch.linalg.inv_ex, Xi) if K else (Xi, None)
        if info is not None and bool((info != 0).any()):
            bad = int((info != 0).nonzero()[0, 0])
            raise InputError(f"the eigenvectors of the Jacobian at point {bad} are linearly dependent "
                             "(a defective Jacobian); use --basis schur")
        kind = "eigen"
    elif isinstance(basis, str) and basis == "schur":
        if K:
            Xi, _ = _schur_bases(J)
        else:
            Xi = J.new_zeros(0, S, S)
        Xi_pinv = Xi.transpose(1, 2)
        kind = "schur"
    else:
        X = as_tensor(basis, dtype=dt, device=dev, detach=True)
        if X.dim() != 2 or X.shape[0] != S or X.shape[1] < 1:
            raise InputError(f"a basis file must hold one [n_state={S}, m] matrix; got shape {list(X.shape)} (--basis)")
        Xi = X.expand(K, S, X.shape[1])
        Xi_pinv = torch.linalg.pinv(X).expand(K, X.shape[1], S)
        kind = "file"
    Phi = Xi_pinv @ J @ Xi
    recon = Xi @ Phi @ Xi_pinv
    err = (recon - J).flatten(1).norm(dim=1) / J.flatten(1).norm(dim=1).clamp_min(torch.finfo(dt).tiny)
    if kind == "schur":
        cond = torch.ones(K, dtype=dt, device=dev)
    else:
        cond = (torch.linalg.matrix_norm(Xi, ord=1) * torch.linalg.matrix_norm(Xi_pinv, ord=1))
    readout = (R @ Xi) if R is not None else J.new_zeros(K, 0, Xi.shape[2])
    return MemoryBasis(kind=kind, Xi=Xi, Xi_pinv=Xi_pinv, Phi=Phi, input_map=Xi_pinv @ B,
                       readout_map=readout, condition=cond, reconstruction_error=err)


@dataclasses.dataclass
class CyclicShift:
    """A cyclic shift of ``period`` subspaces of dimension ``kappa`` found in ``Phi`` (per point).

    Attributes:
        period: ``[K]`` int64, ``s`` (0: no cyclic shift found).
        kappa: ``[K]`` int64, dimension of each subspace.
        modulus: ``[K]`` mean ``|lambda|`` of the cycle (1 for a lossless copy).
        angle_error: ``[K]`` largest distance (radians) of a cycle eigenvalue's angle from ``2 pi k / s``.
        residual: ``[K]`` ``||Phi C - C rho P||_F / ||Phi C||_F`` in the cyclic basis ``C``
            (``P`` the shift of ``s`` blocks of size kappa, ``rho`` the modulus): 0 for an exact shift.
        basis: per point with a cycle, ``C`` [m, s*kappa] (in the coordinates of ``Phi``) whose
            column blocks ``C_j`` satisfy ``Phi C_j ~ rho C_{j+1 mod s}``; None otherwise.
    """

    period: torch.Tensor
    kappa: torch.Tensor
    modulus: torch.Tensor
    angle_error: torch.Tensor
    residual: torch.Tensor
    basis: list


def detect_cyclic_shift(Phi: torch.Tensor, *, min_modulus: float = 0.8, angle_tol: float = 0.05,
                        max_period: int = 64, eigenvalues: torch.Tensor | None = None) -> CyclicShift:
    """Find a cyclic shift among the slow modes of ``Phi`` [K, m, m] (repeat copy: the contents of
    ``s`` subspaces move one step round a cycle each time step).

    ``detect_cyclic_shift(Phi, *, min_modulus=0.8, angle_tol=0.05, max_period=64) -> CyclicShift``

    The test is spectral, so it does not depend on the basis ``Phi`` is written
    in: ``Phi`` restricted to the span of its eigenvalues with
    ``|lambda| >= min_modulus`` is similar to ``rho * (P_s (x) I_kappa)`` exactly
    when those eigenvalues are ``rho`` times the ``s``-th roots of unity, each
    ``kappa`` times. The smallest ``s >= 2`` whose roots fit every selected
    angle within ``angle_tol`` with equal multiplicities is reported, with the
    basis ``C_j = sum_k omega^{jk} V_k`` (``V_k`` eigenvectors of root k,
    ``omega = exp(2 pi i / s)``) in which Phi is the shift, and the residual of
    that claim.
    """
    K, m, _ = Phi.shape
    dt, dev = Phi.dtype, Phi.device
    period = torch.zeros(K, dtype=torch.long, device=dev)
    kappa = torch.zeros(K, dtype=torch.long, device=dev)
    modulus = torch.full((K,), float("nan"), dtype=dt, device=dev)
    aerr = torch.full((K,), float("nan"), dtype=dt, device=dev)
    resid = torch.full((K,), float("nan"), dtype=dt, device=dev)
    bases: list = [None] * K
    if K == 0 or m < 2:
        return CyclicShift(period, kappa, modulus, aerr, resid, bases)
    lam = torch.linalg.eigvals(Phi) if eigenvalues is None else eigenvalues
    sel = lam.abs() >= min_modulus  # [K, m]
    count = sel.sum(-1)
    theta = lam.angle()  # (-pi, pi]
    two_pi = 2 * math.pi
    found = torch.zeros(K, dtype=torch.bool, device=dev)
    for s in range(2, min(max_period, m) + 1):
        k = torch.round(theta * s / two_pi)
        err = (theta - k * two_pi / s).abs()
        res = torch.remainder(k, s).long()
        fits = torch.where(sel, err <= angle_tol, torch.ones_like(sel)).all(-1)
        divisible = (count % s == 0) & (count >= s)
        mult = torch.zeros(K, s, dtype=torch.long, device=dev)
        mult.scatter_add_(1, torch.where(sel, res, torch.zeros_like(res)), sel.long())
        equal = (mult == (count // s).clamp_min(1)[:, None]).all(-1)
        hit = fits & divisible & equal & ~found
        if bool(hit.any()):
            period[hit] = s
            kappa[hit] = count[hit] // s
            aerr[hit] = torch.where(sel, err, torch.zeros_like(err)).amax(-1)[hit]
            found |= hit
    for i in found.nonzero()[:, 0].tolist():  # one small basis per point that has a cycle
        s, kap = int(period[i]), int(kappa[i])
        lam_i, V_i = torch.linalg.eig(Phi[i])
        keep = lam_i.abs() >= min_modulus
        lam_c, V_c = lam_i[keep], V_i[:, keep]
        th = lam_c.angle()
        res = torch.remainder(torch.round(th * s / two_pi), s).long()
        rho = lam_c.abs().mean()
        modulus[i] = rho
        omega = torch.exp(torch.tensor(2j * math.pi / s, dtype=lam_c.dtype, device=dev))
        blocks = {}
        for r in range(s):
            conj = (s - r) % s
            if r <= conj:  # take eigenvectors of the root with angle in [0, pi]
                cols = V_c[:, res == r]
                if r == conj:  # real root (1 or -1): a real eigenvector basis
                    cols = _real_span(cols, kap)
                blocks[r] = cols
        for r in range(s):
            if r not in blocks:
                blocks[r] = blocks[(s - r) % s].conj()
        C = torch.cat([sum(omega ** (j * r) * blocks[r] for r in range(s)).real for j in range(s)], dim=1)
        C = C / C.norm().clamp_min(torch.finfo(dt).tiny)  # one scale for all blocks keeps Phi C_j = rho C_{j+1}
        P = torch.zeros(s, s, dtype=dt, device=dev)
        P[torch.arange(1, s + 1, device=dev) % s, torch.arange(s, device=dev)] = 1.0
        shift = torch.kron(P, torch.eye(kap, dtype=dt, device=dev))
        PC = Phi[i] @ C
        resid[i] = (PC - rho * C @ shift).norm() / PC.norm().clamp_min(torch.finfo(dt).tiny)
        bases[i] = C
    return CyclicShift(period, kappa, modulus, aerr, resid, bases)


def _real_span(cols: torch.Tensor, k: int) -> torch.Tensor:
    """A real basis (k columns) of the span of eigenvectors of a real eigenvalue."""
    real = torch.cat([cols.real, cols.imag], dim=1)
    U, Sv, _ = torch.linalg.svd(real, full_matrices=False)
    return U[:, :k].to(cols.dtype)
