"""Ordered real Schur forms: block structure, reordering, split conditioning, powers.

Plain functions on float64 numpy arrays (LAPACK through scipy), shared by any
analysis that needs ``W = Q T Q^T`` with a chosen eigenvalue order:

:func:`ordered_schur`
    ``scipy.linalg.schur(W, output="real")`` followed by a full reordering of
    the 1x1 / 2x2 diagonal blocks with LAPACK block swaps (``dtrexc``).
:func:`block_starts`, :func:`block_eigenvalues`, :func:`coupling_mask`
    the block structure of a quasi-upper-triangular ``T`` read from its
    subdiagonal.
:func:`order_ranks`
    the rank of every block under an order (``modulus``, ``real``, ``angle``)
    with near-ties grouped, fixed once before any swap.
:func:`reorder_schur`
    sort the blocks of ``(T, Q)`` in place by given ranks.
:func:`solve_quasi_sylvester`, :func:`split_condition`
    ``T11 X - X T22 = C`` for quasi-triangular blocks (recursive, level 3), and
    the reciprocal condition numbers ``(s, sep)`` of the split ``T11 | T22``
    exactly as LAPACK's ``dtrsen(job="B")`` defines and estimates them.
:func:`power_norms`
    ``||T^t||_2`` for ``t = 1 .. steps`` (transient amplification).

The reordering. A block is moved by ``dtrexc`` (1-based ``ifst``/``ilst``),
which may split a 2x2 block whose eigenvalues turn out real and refuses a swap
whose result would be too inaccurate (``info = 1``, "ill-conditioned swap").
Ranks are attached to positions and rotated with every move, so ties and
splits never make the order flip. Large matrices are sorted window by window
(odd-even transposition over windows of ``window`` rows): each window is
sorted on a small copy whose accumulated orthogonal factor is then applied to
the rest of ``T`` and ``Q`` with matrix products, so the cost is a few
``N^3`` flops of GEMM instead of ``O(N^2)`` long level-1 swaps (Kressner 2006,
"Block algorithms for reordering standard and generalized Schur forms").
A refused swap is undone, logged (:class:`Refusal`) and the two blocks are
treated as tied from then on; the caller reports it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.linalg
import torch
from scipy.linalg.lapack import dtrexc, dtrsyl

__all__ = [
    "ORDERS",
    "TIE_RTOL",
    "Refusal",
    "OrderedSchur",
    "block_starts",
    "block_sizes",
    "block_eigenvalues",
    "block_ids",
    "block_starts_from_eigs",
    "coupling_mask",
    "primary_key",
    "ReorderStats",
    "order_ranks",
    "reorder_schur",
    "ordered_schur",
    "order_violations",
    "solve_quasi_sylvester",
    "split_condition",
    "triu_matmul",
    "power_norms",
    "nonnormality_stats",
]

ORDERS = ("modulus", "real", "angle")
"""``modulus``: nonincreasing |lambda|; ``real``: nonincreasing Re lambda;
``angle``: nondecreasing |arg lambda| (positive real axis first)."""

TIE_RTOL = 1e-8
"""Keys closer than ``TIE_RTOL * rho`` (angles: ``TIE_RTOL`` radians) are tied."""


# ---------------------------------------------------------------------------------
# block structure
# ---------------------------------------------------------------------------------
def _pairs(T: np.ndarray) -> np.ndarray:
    """Row indices ``i`` where a 2x2 block occupies rows ``i, i+1``."""
    n = T.shape[0]
    if n < 2:
        return np.zeros(0, dtype=np.int64)
    return np.nonzero(np.diagonal(T, -1) != 0)[0]


def block_starts(T: np.ndarray) -> np.ndarray:
    """First row of every diagonal block of the quasi-upper-triangular ``T`` (int64, ascending)."""
    n = T.shape[0]
    second = np.zeros(n, dtype=bool)
    second[_pairs(T) + 1] = True
    return np.nonzero(~second)[0].astype(np.int64)


def block_sizes(T: np.ndarray) -> np.ndarray:
    """Size (1 or 2) of every diagonal block, in the order of :func:`block_starts`."""
    starts = block_starts(T)
    return np.diff(np.append(starts, T.shape[0])).astype(np.int64)


def block_eigenvalues(T: np.ndarray) -> np.ndarray:
    """The eigenvalue at every diagonal position of ``T`` (complex, length N).

    A 2x2 block ``[[a, b], [c, d]]`` gives ``(a+d)/2 +- i sqrt(-(bc + ((a-d)/2)^2))``,
    the ``+`` at its first row (LAPACK's standardised blocks have ``a = d``).
    A 2x2 block with real eigenvalues (never produced by LAPACK) gives both.
    """
    n = T.shape[0]
    lam = np.diagonal(T).astype(np.complex128).copy()
    i = _pairs(T)
    if i.size:
        a, b, c, d = T[i, i], T[i, i + 1], T[i + 1, i], T[i + 1, i + 1]
        mid = 0.5 * (a + d)
        disc = (0.5 * (a - d)) ** 2 + b * c
        root = np.sqrt(disc.astype(np.complex128))
        lam[i] = mid + np.where(disc < 0, 1j * np.abs(root.imag), root.real)
        lam[i + 1] = mid - np.where(disc < 0, 1j * np.abs(root.imag), root.real)
    return lam[:n]


def block_ids(T: np.ndarray) -> np.ndarray:
    """Index of the diagonal block each row belongs to (int64, length N)."""
    n = T.shape[0]
    first = np.ones(n, dtype=np.int64)
    first[_pairs(T) + 1] = 0
    return np.cumsum(first) - 1


def coupling_mask(T: np.ndarray) -> np.ndarray:
    """Boolean N x N mask of the strictly block-upper entries of ``T`` (the couplings N).

    ``T = B + N`` with ``B`` the 1x1 / 2x2 eigenvalue blocks: ``mask[i, j]`` is
    true when column ``j``'s block lies strictly right of row ``i``'s block.
    """
    bid = block_ids(T)
    return bid[None, :] > bid[:, None]


# ---------------------------------------------------------------------------------
# ranks
# ---------------------------------------------------------------------------------
def _group_refine(gid: np.ndarray, value: np.ndarray, tol: float) -> np.ndarray:
    """Refine groups ``gid`` by ``value`` (ascending): chains closer than ``tol`` stay together."""
    idx = np.lexsort((value, gid))
    g, v = gid[idx], value[idx]
    new = np.ones(idx.size, dtype=bool)
    new[1:] = (g[1:] != g[:-1]) | (np.diff(v) > tol)
    out = np.empty_like(gid)
    out[idx] = np.cumsum(new) - 1
    return out


def order_ranks(lam: np.ndarray, order: str = "modulus", *, rho: float | None = None,
                first: np.ndarray | None = None) -> np.ndarray:
    """Rank of every diagonal position under ``order`` (int64; the two rows of a 2x2 block share one).

    Arguments:
        lam: per-position eigenvalues (:func:`block_eigenvalues`); a conjugate
            pair must occupy two consecutive positions with the ``+`` first.
        order: ``modulus`` (|lambda| down, then |arg| up, then Re down),
            ``real`` (Re down, then |lambda| down, then |arg| up) or ``angle``
            (|arg| up, then |lambda| down, then Re down).
        rho: the scale of the tie tolerance (default: the spectral radius).
        first: optional boolean per position; those blocks rank before all
            others (the retained set R), each group ordered by ``order``.

    Keys within ``TIE_RTOL * rho`` (angles within ``TIE_RTOL``) are tied and
    compared by the next key; remaining ties keep the current position order.
    """
    if order not in ORDERS:
        raise ValueError(f"order {order!r} is not one of {', '.join(ORDERS)}")
    lam = np.asarray(lam, dtype=np.complex128)
    n = lam.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # one representative per block: a pair is two consecutive positions with conjugate values
    pair_second = np.zeros(n, dtype=bool)
    pair_second[1:] = (lam[:-1].imag > 0) & (lam[1:].imag < 0) & (lam[1:] == np.conj(lam[:-1]))
    reps = np.nonzero(~pair_second)[0]
    z = lam[reps]
    scale = float(np.max(np.abs(lam))) if rho is None else float(rho)
    tol = TIE_RTOL * scale
    mod, ang, re = np.abs(z), np.abs(np.angle(z)), z.real
    keys = {
        "modulus": [(-mod, tol), (ang, TIE_RTOL), (-re, 0.0)],
        "real": [(-re, tol), (-mod, tol), (ang, TIE_RTOL)],
        "angle": [(ang, TIE_RTOL), (-mod, tol), (-re, 0.0)],
    }[order]
    gid = np.zeros(reps.size, dtype=np.int64)
    if first is not None:
        gid = (~np.asarray(first, dtype=bool)[reps]).astype(np.int64)
    for value, t in keys:
        gid = _group_refine(gid, value, t)
    block_rank = np.empty(reps.size, dtype=np.int64)
    block_rank[np.lexsort((np.arange(reps.size), gid))] = np.arange(reps.size)
    owner = np.cumsum(~pair_second) - 1
    return block_rank[owner]


# ---------------------------------------------------------------------------------
# reordering
# ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Refusal:
    """A block swap LAPACK refused (``dtrexc`` info = 1: the swap would be too inaccurate).

    ``position`` is the first row of the block that could not move up past the
    block at ``blocked_by``; both blocks are left in place and treated as tied.
    """

    position: int
    blocked_by: int
    eigenvalue_real: float
    eigenvalue_imag: float
    blocked_by_real: float
    blocked_by_imag: float


def _size_at(T: np.ndarray, i: int) -> int:
    return 2 if i + 1 < T.shape[0] and T[i + 1, i] != 0 else 1


def _trexc(T: np.ndarray, Q: np.ndarray, ifst: int, ilst: int, wantq: bool) -> int:
    """``dtrexc`` in place on Fortran-ordered ``T``/``Q`` (0-based positions); returns info."""
    t, q, info = dtrexc(T, Q, ifst + 1, ilst + 1, wantq=int(wantq), overwrite_a=1, overwrite_q=1)
    if t is not T:  # f2py copied (not Fortran-contiguous): keep the caller's arrays current
        T[...] = t
    if wantq and q is not Q:
        Q[...] = q
    if info < 0:
        raise RuntimeError(f"dtrexc rejected argument {-info} (ifst={ifst + 1}, ilst={ilst + 1}, n={T.shape[0]})")
    return int(info)


def _rotate(r: np.ndarray, p: int, e: int, sz: int) -> None:
    """Rotate the rows ``[p, e)`` of ``r`` as a block of ``sz`` rows at their end moves to ``p``."""
    seg = r[p:e].copy()
    r[p:p + sz] = seg[e - p - sz:]
    r[p + sz:e] = seg[:e - p - sz]


def _move_up(T, Q, r, j, p, refusals, base) -> bool:
    """Move the block starting at row ``j`` up to start at row ``p``, rotating ``r`` along.

    ``r`` is [N, 2]: the working rank and the block's identity (its original
    rank). Returns False when LAPACK refused a swap: the move is undone and
    redone one neighbour at a time up to the refusal; the block then stays
    below the block it could not pass and takes over its working rank (a tie).
    """
    sz = _size_at(T, j)
    e = j + sz
    saved = (T[p:e, :].copy(), T[:, p:e].copy(), Q[:, p:e].copy())
    if _trexc(T, Q, j, p, True) == 0:
        _rotate(r, p, e, sz)
        return True
    T[p:e, :], T[:, p:e], Q[:, p:e] = saved
    cur = j
    while cur > p:
        # the size is re-read every step: a 2x2 block that split moves on as its first half,
        # and the selection sort picks the second half up later (same rank)
        sz = _size_at(T, cur)
        prev = cur - 2 if cur >= 2 and T[cur - 1, cur - 2] != 0 else cur - 1
        if _trexc(T, Q, cur, prev, True) != 0:
            lam = block_eigenvalues(T[prev:cur + sz, prev:cur + sz])
            refusals.append(Refusal(position=base + cur, blocked_by=base + prev,
                                    eigenvalue_real=float(lam[cur - prev].real),
                                    eigenvalue_imag=float(abs(lam[cur - prev].imag)),
                                    blocked_by_real=float(lam[0].real), blocked_by_imag=float(abs(lam[0].imag))))
            r[cur:cur + sz, 0] = r[prev, 0]
            return False
        _rotate(r, prev, cur + sz, sz)
        cur = prev
    return True


def _sort_local(T, Q, r, refusals, base) -> int:
    """Selection sort of the blocks of ``T`` by working rank ``r[:, 0]``: each block moves
    once, straight to its place. Returns the number of moves."""
    n = r.shape[0]
    p, moves = 0, 0
    while p < n:
        j = p + int(np.argmin(r[p:, 0]))
        if r[j, 0] < r[p, 0]:
            moves += 1
            if not _move_up(T, Q, r, j, p, refusals, base):
                continue
        p += _size_at(T, p)
    return moves


def _snap(T: np.ndarray, x: int) -> int:
    """``x`` moved down one row if it would cut a 2x2 block."""
    n = T.shape[0]
    return x + 1 if 0 < x < n and T[x, x - 1] != 0 else x


def _sorted(r: np.ndarray) -> bool:
    return bool(np.all(r[1:] >= r[:-1]))


@dataclasses.dataclass
class ReorderStats:
    """What :func:`reorder_schur` did.

    Attributes:
        ranks: the working rank of every row after sorting (nondecreasing
            unless a refused swap left a tie behind).
        identity: the input rank of the block now at every row (which block went where).
        moves: block moves; windows: windows sorted; passes: odd-even passes.
        refusals: :class:`Refusal` records; complete: whether ``ranks`` ended sorted.
    """

    ranks: np.ndarray
    identity: np.ndarray
    moves: int = 0
    windows: int = 0
    passes: int = 0
    refusals: list = dataclasses.field(default_factory=list)
    complete: bool = True


def reorder_schur(T: np.ndarray, Q: np.ndarray, ranks: np.ndarray, *, window: int = 96) -> ReorderStats:
    """Sort the diagonal blocks of ``T`` by ``ranks`` (ascending), updating ``T`` and ``Q`` in place.

    ``T`` and ``Q`` must be float64 and Fortran-ordered (``np.asfortranarray``);
    ``ranks`` gives one integer per row (the two rows of a 2x2 block equal).
    ``Q T Q^T`` is preserved to rounding. Matrices larger than ``window`` are
    sorted by odd-even transposition over windows (module docstring).
    Returns a :class:`ReorderStats`.
    """
    n = T.shape[0]
    if not (T.flags.f_contiguous and Q.flags.f_contiguous and T.dtype == np.float64 and Q.dtype == np.float64):
        raise ValueError("reorder_schur needs Fortran-ordered float64 T and Q (np.asfortranarray)")
    r = np.stack([np.asarray(ranks, dtype=np.int64)] * 2, axis=1)
    stats = ReorderStats(ranks=r[:, 0], identity=r[:, 1])
    if n <= max(window, 2):
        stats.moves = _sort_local(T, Q, r, stats.refusals, 0)
        stats.windows = stats.passes = 1
    else:
        half = max(window // 2, 2)
        for it in range(4 * (n // half) + 8):
            if _sorted(r[:, 0]):
                break
            stats.passes += 1
            cuts = range(0 if it % 2 == 0 else half, n, window)
            lo = 0
            for hi in sorted(set([*cuts, n]) - {0}):
                hi = _snap(T, hi)
                if hi <= lo:
                    continue
                if hi - lo >= 2 and not _sorted(r[lo:hi, 0]):
                    Tw = np.array(T[lo:hi, lo:hi], order="F")
                    Qw = np.eye(hi - lo, order="F")
                    rw = r[lo:hi].copy()
                    stats.moves += _sort_local(Tw, Qw, rw, stats.refusals, lo)
                    stats.windows += 1
                    T[lo:hi, lo:hi] = Tw
                    T[lo:hi, hi:] = Qw.T @ T[lo:hi, hi:]
                    T[:lo, lo:hi] = T[:lo, lo:hi] @ Qw
                    Q[:, lo:hi] = Q[:, lo:hi] @ Qw
                    r[lo:hi] = rw
                lo = hi
    stats.ranks, stats.identity = r[:, 0].copy(), r[:, 1].copy()
    stats.complete = _sorted(stats.ranks)
    return stats


def primary_key(z: np.ndarray, order: str, rho: float) -> tuple[np.ndarray, float]:
    """The primary sort key of ``order`` for eigenvalues ``z`` (ascending = earlier) and its tie tolerance."""
    if order == "modulus":
        return -np.abs(z), TIE_RTOL * rho
    if order == "real":
        return -z.real, TIE_RTOL * rho
    return np.abs(np.angle(z)), TIE_RTOL


def order_violations(lam: np.ndarray, order: str, *, rho: float, first: np.ndarray | None = None) -> int:
    """How many adjacent pairs of blocks are out of ``order``'s primary key, ties excepted.

    ``lam`` per position as :func:`block_eigenvalues` returns (pairs as
    ``z, conj(z)``, Im z > 0). Keys are grouped into tie chains exactly as
    :func:`order_ranks` groups them; a violation is a later block in an
    earlier tie group. ``first`` (per position) marks a leading set, which
    must come first (each part ordered on its own).
    """
    lam = np.asarray(lam, dtype=np.complex128)
    starts = block_starts_from_eigs(lam)
    z = lam[starts]
    key, tol = primary_key(z, order, rho)
    # a little slack over the tie tolerance: swaps move eigenvalues by rounding errors
    gid = np.zeros(z.size, dtype=np.int64)
    if first is not None:
        gid = (~np.asarray(first, dtype=bool)[starts]).astype(np.int64)
    gid = _group_refine(gid, key, tol + 1e-12 * max(rho, 1.0))
    return int(np.count_nonzero(np.diff(gid) < 0))


def block_starts_from_eigs(lam: np.ndarray) -> np.ndarray:
    """Block starts recovered from per-position eigenvalues (pairs: ``z, conj(z)`` with Im z > 0)."""
    lam = np.asarray(lam)
    second = np.zeros(lam.size, dtype=bool)
    second[1:] = (lam[:-1].imag > 0) & (lam[1:].imag < 0) & (lam[1:] == np.conj(lam[:-1]))
    return np.nonzero(~second)[0]


@dataclasses.dataclass
class OrderedSchur:
    """``W = Q T Q^T`` with the blocks of ``T`` in the requested order.

    Attributes:
        Q: orthogonal [N, N]; T: quasi-upper-triangular [N, N] (float64).
        eigenvalues: per diagonal position (complex [N]).
        block_starts: first row of each diagonal block.
        n_first: rows of the leading set (``first``), 0 when none was given.
        moves: block moves performed; windows: windows sorted.
        refusals: swaps LAPACK refused (each left the two blocks in place).
        violations: adjacent blocks still out of order beyond the tie tolerance
            (a selected block behind an unselected one counts too).
        split_exact: whether the first ``n_first`` rows hold exactly the selected blocks.
        rho: spectral radius.
    """

    Q: np.ndarray
    T: np.ndarray
    eigenvalues: np.ndarray
    block_starts: np.ndarray
    n_first: int
    moves: int
    windows: int
    refusals: list
    violations: int
    split_exact: bool
    rho: float


def ordered_schur(W, order: str = "modulus", *, select=None, window: int = 96) -> OrderedSchur:
    """Real Schur form of ``W`` with a full ordering of its diagonal blocks.

    Arguments:
        W: square real matrix (array or tensor; computed in float64).
        order: ``modulus`` (default), ``real`` or ``angle`` (:func:`order_ranks`).
        select: optional ``select(lam, ranks) -> bool per position`` choosing
            the leading set (a conjugate pair must be selected whole); those
            blocks come first, each set sorted by ``order``.
        window: window size of the blocked reordering.

    Returns an :class:`OrderedSchur`. Ranks are fixed once from the unordered
    form before any swap, ties grouped (:data:`TIE_RTOL`).
    """
    if isinstance(W, torch.Tensor):
        W = W.detach().cpu().numpy()
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be square; got shape {list(W.shape)}")
    n = W.shape[0]
    T, Q = scipy.linalg.schur(W, output="real")
    T = np.asfortranarray(T)
    Q = np.asfortranarray(Q)
    if n > 2:
        T[np.tril_indices(n, -2)] = 0.0
    lam0 = block_eigenvalues(T)
    rho = float(np.max(np.abs(lam0))) if n else 0.0
    ranks = order_ranks(lam0, order, rho=rho)
    first = None
    n_first = 0
    if select is not None:
        first = np.asarray(select(lam0, ranks), dtype=bool)
        n_first = int(np.count_nonzero(first))
        ranks = order_ranks(lam0, order, rho=rho, first=first)
    stats = reorder_schur(T, Q, ranks, window=window)
    lam = block_eigenvalues(T)
    lead = None if first is None else np.arange(n) < n_first
    violations = order_violations(lam, order, rho=rho, first=lead)
    split_exact = True
    if first is not None and 0 < n_first < n:
        # the leading rows must hold exactly the selected blocks (a refused swap could break that)
        n_sel_blocks = int(np.unique(ranks[first]).size)
        split_exact = not (T[n_first, n_first - 1] != 0 or np.any(stats.identity[:n_first] >= n_sel_blocks))
    return OrderedSchur(Q=Q, T=T, eigenvalues=lam, block_starts=block_starts(T), n_first=n_first,
                        moves=stats.moves, windows=stats.windows, refusals=stats.refusals,
                        violations=violations, split_exact=split_exact, rho=rho)


# ---------------------------------------------------------------------------------
# Sylvester equations and the condition of a split
# ---------------------------------------------------------------------------------
def _split_point(M: np.ndarray) -> int:
    k = M.shape[0] // 2
    return k + 1 if M[k, k - 1] != 0 else k


def _sylv(A, B, C, trans: bool, leaf: int):
    """Recursive solve of A X - X B = C (trans: A^T X - X B^T = C); returns (X, scale, info)."""
    m, n = C.shape
    if m == 0 or n == 0:
        return np.zeros((m, n)), 1.0, 0
    if m <= leaf and n <= leaf:
        t = "T" if trans else "N"
        X, scale, info = dtrsyl(A, B, C, trana=t, tranb=t, isgn=-1)
        return X, float(scale), int(info)
    if m >= n:
        k = _split_point(A)
        if k >= m:  # a 2x2 block at the middle of a 2x2 matrix: cannot split
            return _sylv_b(A, B, C, trans, leaf)
        A11, A12, A22 = A[:k, :k], A[:k, k:], A[k:, k:]
        if not trans:
            X2, s2, i2 = _sylv(A22, B, C[k:], trans, leaf)
            X1, s1, i1 = _sylv(A11, B, C[:k] - A12 @ X2, trans, leaf)
        else:
            X1, s1, i1 = _sylv(A11, B, C[:k], trans, leaf)
            X2, s2, i2 = _sylv(A22, B, C[k:] - A12.T @ X1, trans, leaf)
        return np.vstack([X1, X2]), s1 * s2, max(i1, i2)
    return _sylv_b(A, B, C, trans, leaf)


def _sylv_b(A, B, C, trans, leaf):
    n = B.shape[0]
    k = _split_point(B)
    if k >= n:
        t = "T" if trans else "N"
        X, scale, info = dtrsyl(A, B, C, trana=t, tranb=t, isgn=-1)
        return X, float(scale), int(info)
    B11, B12, B22 = B[:k, :k], B[:k, k:], B[k:, k:]
    if not trans:
        X1, s1, i1 = _sylv(A, B11, C[:, :k], trans, leaf)
        X2, s2, i2 = _sylv(A, B22, C[:, k:] + X1 @ B12, trans, leaf)
    else:
        X2, s2, i2 = _sylv(A, B22, C[:, k:], trans, leaf)
        X1, s1, i1 = _sylv(A, B11, C[:, :k] + X2 @ B12.T, trans, leaf)
    return np.hstack([X1, X2]), s1 * s2, max(i1, i2)


def solve_quasi_sylvester(A: np.ndarray, B: np.ndarray, C: np.ndarray, *, transpose: bool = False,
                          leaf: int = 64) -> tuple[np.ndarray, float, int]:
    """Solve ``A X - X B = scale * C`` (``transpose``: ``A^T X - X B^T = scale * C``).

    ``A`` [m, m] and ``B`` [n, n] are upper quasi-triangular (real Schur
    blocks). Recursive splitting at block boundaries down to ``leaf``-sized
    LAPACK ``dtrsyl`` solves, with matrix products in between (Jonsson &
    Kagstrom 2002, recursive blocked Sylvester solvers): the same equation
    ``dtrsyl(isgn=-1)`` solves, at level-3 speed.

    Returns ``(X, scale, info)``: ``scale`` is 1 unless LAPACK scaled to avoid
    overflow (then the whole problem is re-solved by one ``dtrsyl`` call so
    that a single scale applies); ``info = 1`` when A and B have close
    eigenvalues and LAPACK perturbed them (as ``dtrsyl``).
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    X, scale, info = _sylv(A, B, C, transpose, max(int(leaf), 2))
    if scale != 1.0:
        t = "T" if transpose else "N"
        X, scale, info = dtrsyl(A, B, C, trana=t, tranb=t, isgn=-1)
    return X, float(scale), int(info)


def _lacn2(n: int, apply, apply_t) -> tuple[float, float]:
    """LAPACK ``dlacn2``'s 1-norm estimate of an operator (Higham 1988), driven directly.

    ``apply(x)`` / ``apply_t(x)`` return ``(A x, scale)`` / ``(A^T x, scale)``.
    Returns ``(est, scale)`` with the scale of the last application.
    """
    scale = 1.0
    x = np.full(n, 1.0 / n)
    x, scale = apply(x)
    if n == 1:
        return abs(float(x[0])), scale
    est = float(np.sum(np.abs(x)))
    x = np.where(x >= 0, 1.0, -1.0)
    isgn = x.copy()
    x, scale = apply_t(x)
    j = int(np.argmax(np.abs(x)))
    it = 2
    while True:
        x = np.zeros(n)
        x[j] = 1.0
        x, scale = apply(x)
        est_old = est
        est = float(np.sum(np.abs(x)))
        s = np.where(x >= 0, 1.0, -1.0)
        if np.array_equal(s, isgn) or est <= est_old:
            break
        x = s
        isgn = s.copy()
        x, scale = apply_t(x)
        jlast = j
        j = int(np.argmax(np.abs(x)))
        if x[jlast] != abs(x[j]) and it < 5:
            it += 1
            continue
        break
    x = np.array([(1.0 if i % 2 == 0 else -1.0) * (1.0 + i / (n - 1)) for i in range(n)])
    x, scale = apply(x)
    temp = 2.0 * (float(np.sum(np.abs(x))) / (3 * n))
    return max(est, temp), scale


def split_condition(T: np.ndarray, m: int, *, leaf: int = 64) -> tuple[float, float, int]:
    """Reciprocal condition numbers of the split of ``T`` after its first ``m`` rows.

    Returns ``(s, sep, info)`` as LAPACK ``dtrsen(job="B")`` defines them for
    the leading ``m`` rows of the ordered quasi-triangular ``T``:
    ``s = 1 / sqrt(1 + ||R||_F^2)`` with ``T11 R - R T22 = T12`` (the
    reciprocal condition number of the eigenvalue cluster's mean; 1 when the
    split is orthogonal), and ``sep`` = an estimate of
    ``sep(T11, T22) = min ||T11 X - X T22||_F / ||X||_F`` by LAPACK's own
    estimator (``dlacn2`` on the Sylvester operator, 1-norm of its inverse).
    ``m`` must not cut a 2x2 block. ``m = 0`` or ``N``: ``s = 1``,
    ``sep = ||T||_1`` (as LAPACK). The Sylvester solves are
    :func:`solve_quasi_sylvester` (level 3) rather than LAPACK's unblocked
    ``dtrsyl``, which makes this ~10x faster than ``dtrsen`` at N = 1024.
    ``info``: 1 when a solve met close eigenvalues (perturbed, as ``dtrsyl``).
    """
    T = np.asarray(T, dtype=np.float64)
    n = T.shape[0]
    if not 0 <= m <= n:
        raise ValueError(f"split m={m} outside [0, {n}]")
    if 0 < m < n and T[m, m - 1] != 0:
        raise ValueError(f"split m={m} cuts a 2x2 block of T")
    if m == 0 or m == n:
        return 1.0, float(np.max(np.sum(np.abs(T), axis=0))) if n else 0.0, 0
    T11, T12, T22 = T[:m, :m], T[:m, m:], T[m:, m:]
    n1, n2 = m, n - m
    R, scale, info = solve_quasi_sylvester(T11, T22, T12, leaf=leaf)
    rnorm = float(np.linalg.norm(R))
    s = 1.0 if rnorm == 0 else scale / (math.sqrt(scale * scale / rnorm + rnorm) * math.sqrt(rnorm))
    infos = [info]

    def apply(x):
        X, sc, inf = solve_quasi_sylvester(T11, T22, x.reshape(n1, n2, order="F"), leaf=leaf)
        infos.append(inf)
        return X.reshape(-1, order="F"), sc

    def apply_t(x):
        X, sc, inf = solve_quasi_sylvester(T11, T22, x.reshape(n1, n2, order="F"), transpose=True, leaf=leaf)
        infos.append(inf)
        return X.reshape(-1, order="F"), sc

    est, sc = _lacn2(n1 * n2, apply, apply_t)
    sep = sc / est if est > 0 else math.inf
    return float(s), float(sep), int(max(infos))


# ---------------------------------------------------------------------------------
# powers
# ---------------------------------------------------------------------------------
def _tri_splits(T: np.ndarray, leaf: int) -> list:
    """Recursive split points of a quasi-triangular T for :func:`triu_matmul` (block-aligned)."""

    def rec(lo, hi):
        if hi - lo <= leaf:
            return None
        k = lo + (hi - lo) // 2
        if T[k, k - 1] != 0:
            k += 1
        return (k, rec(lo, k), rec(k, hi))

    return rec(0, T.shape[0])


def triu_matmul(A: torch.Tensor, B: torch.Tensor, splits, lo: int = 0) -> torch.Tensor:
    """``A @ B`` for two quasi-upper-triangular matrices sharing the block pattern of ``splits``.

    ``splits`` from ``_tri_splits``: the product is assembled from the
    triangular halves (``C11 = A11 B11``, ``C12 = A11 B12 + A12 B22``,
    ``C22 = A22 B22``), about a third of a full product's flops for large N.
    """
    if splits is None:
        return A @ B
    k, s1, s2 = splits
    k -= lo
    C = torch.zeros_like(A)
    C[:k, :k] = triu_matmul(A[:k, :k], B[:k, :k], s1, lo)
    C[k:, k:] = triu_matmul(A[k:, k:], B[k:, k:], s2, lo + k)
    C[:k, k:] = A[:k, :k] @ B[:k, k:] + A[:k, k:] @ B[k:, k:]
    return C


def _norm2_lanczos(P: torch.Tensor, v0: torch.Tensor, *, kmax: int = 128, rtol: float = 1e-8):
    """Largest singular value of ``P`` by Golub-Kahan-Lanczos bidiagonalisation (full reorthogonalisation).

    Returns ``(sigma, v, converged)``: ``v`` the right singular vector
    estimate (a warm start for the next power); ``converged`` when the Ritz
    residual ``r`` is below ``rtol * sigma``. Then some singular value lies
    within ``r`` of ``sigma`` and, the Ritz value being the top one of a Krylov
    space, in practice the top one to about ``r^2 / gap`` (1e-15 relative in
    the tests).
    """
    n = P.shape[0]
    k = min(kmax, n)
    V = torch.zeros(n, k + 1, dtype=P.dtype, device=P.device)
    U = torch.zeros(n, k, dtype=P.dtype, device=P.device)
    alpha = np.zeros(k)
    beta = np.zeros(k)
    V[:, 0] = v0 / torch.linalg.vector_norm(v0)
    sigma, vec = 0.0, V[:, 0]
    for j in range(k):
        u = P @ V[:, j]
        if j:
            u = u - beta[j - 1] * U[:, j - 1]
            u = u - U[:, :j] @ (U[:, :j].T @ u)
        a = float(torch.linalg.vector_norm(u))
        if a == 0:
            break
        alpha[j] = a
        U[:, j] = u / a
        w = P.T @ U[:, j] - a * V[:, j]
        w = w - V[:, :j + 1] @ (V[:, :j + 1].T @ w)
        b = float(torch.linalg.vector_norm(w))
        beta[j] = b
        if b > 0:
            V[:, j + 1] = w / b
        if j < 6 and b > 0 and j + 1 < k:
            continue
        Bk = np.diag(alpha[:j + 1]) + np.diag(beta[:j], 1)
        X, S_, Yh = np.linalg.svd(Bk)
        sigma = float(S_[0])
        resid = abs(b * X[j, 0])
        if b == 0 or resid <= rtol * sigma or j + 1 == k:
            vec = V[:, :j + 1] @ torch.as_tensor(Yh[0], dtype=P.dtype, device=P.device)
            return sigma, vec, b == 0 or resid <= rtol * sigma
    return sigma, vec, False


def power_norms(T, steps: int, *, device="cpu", exact_max_n: int = 128, leaf: int = 384,
                stop_at_one: bool = True) -> tuple[np.ndarray, bool]:
    """``||T^t||_2`` for ``t = 1, 2, ...`` (up to ``steps``), for a quasi-upper-triangular ``T``.

    ``||W^t||_2 = ||T^t||_2`` when ``W = Q T Q^T``. Powers are accumulated on
    ``device`` in float64 with :func:`triu_matmul`. Norms are exact singular
    values (``svdvals``, batched) for ``N <= exact_max_n``, else Lanczos
    bidiagonalisation warm-started from the previous power's singular vector,
    with an exact ``svdvals`` wherever Lanczos does not converge.

    With ``stop_at_one``, the sequence stops at the first ``t0`` with
    ``||T^t0||_2 < 1``: by submultiplicativity every later power is bounded by
    an earlier one (``||T^(k t0 + r)|| <= ||T^r||``), so ``max_t ||T^t||_2``
    over ``t <= steps`` is already known. Returns ``(norms, stopped_early)``.
    """
    Tn = np.asarray(T, dtype=np.float64)
    n = Tn.shape[0]
    if steps < 1 or n == 0:
        return np.zeros(0), False
    Tt = torch.as_tensor(Tn, dtype=torch.float64, device=device)
    splits = _tri_splits(Tn, leaf) if n > 2 * leaf else None
    norms: list[float] = []
    P = Tt
    exact = n <= exact_max_n
    chunk: list[torch.Tensor] = []
    v = torch.ones(n, dtype=torch.float64, device=device)
    for t in range(1, steps + 1):
        if t > 1:
            P = triu_matmul(P, Tt, splits)
        if exact:
            chunk.append(P)
            if len(chunk) == 16 or t == steps:
                vals = torch.linalg.matrix_norm(torch.stack(chunk), ord=2).cpu().numpy()
                chunk = []
                for x in vals:
                    norms.append(float(x))
                    if stop_at_one and x < 1.0:
                        return np.asarray(norms), len(norms) < steps
        else:
            sigma, v, ok = _norm2_lanczos(P, v)
            if not ok:
                sigma = float(torch.linalg.matrix_norm(P, ord=2))
            norms.append(sigma)
            if stop_at_one and sigma < 1.0:
                return np.asarray(norms), t < steps
    return np.asarray(norms), False


def nonnormality_stats(*, henrici: float, couplings: float | None, blocks: float | None, frobenius: float,
                       coupling_fraction: float, commutator: float, eigvec_condition: float, norm2: float,
                       rho: float, norms: np.ndarray, steps: int) -> dict:
    """The ``nonnormality`` statistics of ``rnnprobe schur``, from measures computed by either path.

    The dense path (:func:`rnnprobe.analyses.schur.nonnormality`) and the circulant one
    (:func:`rnnprobe.numerics.conv.circulant_nonnormality`) give the Henrici departure and its
    parts (``couplings``, ``blocks``; ``None`` where not split), ``||W||_F``, the coupling
    fraction, the commutator, ``cond_2`` of the eigenvectors, ``||W||_2``, the spectral radius
    ``rho`` and ``norms[t-1] = ||W^t||_2`` for the powers computed out of ``steps``; this adds
    ``henrici_relative``, ``norm2_over_rho`` and the transient's maximum and where it is.
    """
    return {
        "henrici": henrici,
        "henrici_couplings": couplings,
        "henrici_blocks": blocks,
        "henrici_relative": henrici / frobenius if frobenius > 0 else 0.0,
        "coupling_fraction": coupling_fraction,
        "commutator": commutator,
        "eigvec_condition": eigvec_condition,
        "norm2": norm2,
        "norm2_over_rho": norm2 / rho if rho > 0 else math.inf,
        "transient_amplification": float(norms.max()) if norms.size else None,
        "transient_argmax": int(np.argmax(norms)) + 1 if norms.size else None,
        "transient_steps": int(steps),
        "transient_computed": int(norms.size),
    }
