"""``rnnprobe schur``: ordered real Schur form of W_hh, nonnormality, block-coupling ablation.

Method: Draeger 2026, "Task-Restricted Symmetries in Recurrent Weight Space"
(arXiv 2606.18457). In the real Schur form ``W_hh = Q T Q^T`` the 1x1 / 2x2
eigenvalue blocks ``B`` are separated from the strictly block-upper couplings
``N`` (``T = B + N``). With the blocks ordered (``--order``) and split into a
retained set R (``|lambda| >= alpha rho``, ``--retain-alpha``; or the top K,
``--retain``) and the rest C,

    N = [[T_RR, T_C->R],
         [0,    T_CC  ]],

and each coupling ablation ``W~ = Q Z_S(T) Q^T`` (``Z_S`` zeroes the
couplings in S, never an eigenvalue block) is rolled out with W_uh, W_r and b
unchanged on the task data. Zeroing ``T_C->R`` is the basis-free pinching
``P_R W P_R + P_C W P_C``.

Reusable functions (documented signatures): :func:`decompose`,
:func:`nonnormality`, :func:`coupling_regions`, :func:`rollout_variants`.
The linear algebra lives in :mod:`rnnprobe.numerics.schur`.

Convolutional W_hh (``--method``, :mod:`rnnprobe.operators`). A circular
convolution on a lattice is diagonalised by the Fourier basis (Magnasco 2023):
its spectrum is the FFT of its kernel, exactly, at any size, and so is
everything that depends on the spectrum and the blocks of the Fourier basis
(normality, Henrici departure, ``||W^t||_2``). The FFT path reports those,
orders the eigenvalues and splits R/C as the dense path does, and checks the
kernel: antisymmetry (or anti-Hermitian) errors of the kernel and of its
generator when W_hh was built as ``exp_conv(G)``, and the unitarity error
``max | |FFT(K)| - 1 |`` (singular values of each frequency's block for C
channels). No Schur vectors are formed there (the Fourier basis plays their
role), so no T, Q or ablation: ``--method dense`` (or ``--ablate``) takes the
dense path on the dense matrix, for lattices within the dense size limit.
Other boundaries (zero padding) are not circulant: the FFT of the kernel is
not their spectrum, and ``auto`` takes the dense path.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import torch

from rnnprobe.analyses.base import AnalysisSpec, Options, Result, RunContext, option
from rnnprobe.cells.elman import ElmanCell
from rnnprobe.errors import AnalysisError, InputError
from rnnprobe.model import Model
from rnnprobe.numerics import conv as nconv
from rnnprobe.numerics import kernels
from rnnprobe.numerics import schur as ns
from rnnprobe.operators import CircularConvOperator, Operator

__all__ = [
    "SchurOptions",
    "SchurResult",
    "Decomposition",
    "decompose",
    "nonnormality",
    "coupling_regions",
    "group_starts",
    "rollout_variants",
    "variant_chunk",
    "control_perturbations",
    "run",
    "ANALYSIS",
    "COUPLINGS",
    "METHODS",
    "conv_checks",
]

METHODS = ("auto", "dense", "fft")

COUPLINGS = ("T_RR", "T_CC", "T_C->R")
"""The three coupling blocks of the R/C split, in the order variants list them."""

_MEMORY_BUDGET = 512 * 1024**2
"""Bytes of weights and states one batched rollout chunk may hold."""

_CACHE_BUDGET = 8 * 1024**2
"""On the CPU, bytes of state one chunk of variants keeps (so the per-step elementwise work stays
in cache and the allocator reuses its buffers): 8 MB is 16 variants at N=256, B=256."""

_CPU_CHUNK_MAX = 16
"""On the CPU, at most this many variants per chunk: at N = 64, B = 256 chunks of 8-16 ran the
40-matrix sweep 8 % faster than all 40 at once (0.36 s against 0.39 s, one thread); beyond, the
products' operands fall out of the per-core cache."""


# ---------------------------------------------------------------------------------
# options and result
# ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class SchurOptions(Options):
    order: str = option("modulus", choices=ns.ORDERS,
                        help="Block order: modulus (|lambda| down), real (Re lambda down) or angle "
                             "(|arg lambda| up). R always comes first.")
    retain_alpha: float = option(0.9, min=0.0, max=1.0, metavar="ALPHA",
                                 help="Retained set R = eigenvalues with |lambda| >= ALPHA * rho(W_hh) "
                                      "(--alpha is the loader's leak).")
    retain: int | None = option(None, min=0, metavar="K",
                                help="Retain the top K eigenvalues in --order instead (a conjugate pair is "
                                     "never split).")
    ablate: str = option("none", choices=("none", "couplings", "pairs"),
                         help="none: decomposition and diagnostics only (no task data needed); couplings: "
                              "all 8 subsets of {T_RR, T_CC, T_C->R}; pairs: the coupling between every "
                              "two block groups alone.")
    controls: int = option(32, min=0, metavar="K",
                           help="Random perturbations of the same Frobenius norm per ablation, dense and "
                                "within the ablated block pattern (K of each).")
    epsilon: float = option(0.01, min=0.0, help="Flag an ablation as an approximate invariance when dFVU <= this.")
    groups: int = option(4, min=1, metavar="G",
                         help="Groups of consecutive blocks for the coupling-norm matrix and --ablate pairs.")
    trials: int = option(256, min=1, help="Trials of a generated task for the ablation rollouts.")
    transient_steps: int = option(200, min=0, metavar="T",
                                  help="Transient amplification max_{t<=T} ||W^t||_2 (0: skip).")
    max_error: float | None = option(None, min=0.0, min_open=True,
                                     help="Gate: exit 1 when the reconstruction or orthogonality error "
                                          "exceeds this (dense path).")
    method: str = option("auto", choices=METHODS,
                         help="fft: the exact spectrum of a circular convolution's W_hh from the FFT of its "
                              "kernel, normality and kernel checks, at any lattice size (no Schur vectors); "
                              "dense: the ordered Schur form of the dense matrix; auto: fft for a circular "
                              "convolution without --ablate, else dense.")


@dataclasses.dataclass
class SchurResult(Result):
    """Everything ``rnnprobe schur`` computed (its fields become the report's ``/schur``)."""

    analysis = "schur"
    Q: np.ndarray
    T: np.ndarray
    eigenvalues: np.ndarray
    block_starts: np.ndarray
    retained: np.ndarray
    order: str
    retain_alpha: float
    retain: int | None
    n_hidden: int
    spectral_radius: float
    n_retained: int
    reconstruction_error: float
    orthogonality_error: float
    block_moves: int
    order_violations: int
    split_exact: bool
    refused_swaps: list
    condition_s: float
    condition_sep: float
    nonnormality: dict
    group_starts: np.ndarray
    coupling_norms: np.ndarray
    coupling_norms_rc: dict
    transient_norms: np.ndarray
    ablate: str = "none"
    task: str | None = None
    baseline_fvu: float | None = None
    baseline_accuracy: float | None = None
    ablations: list = dataclasses.field(default_factory=list)
    control_delta_fvu: np.ndarray | None = None
    control_pattern_delta_fvu: np.ndarray | None = None
    pairs_delta_fvu: np.ndarray | None = None
    pairs_sensitivity: np.ndarray | None = None
    method: str = "dense"
    conv: dict | None = None
    symbol_modulus: np.ndarray | None = None

    def summary(self) -> dict:
        nn = self.nonnormality
        out = {
            "n_hidden": self.n_hidden,
            "spectral_radius": self.spectral_radius,
            "n_retained": self.n_retained,
            "reconstruction_error": self.reconstruction_error,
            "orthogonality_error": self.orthogonality_error,
            "henrici": nn["henrici"],
            "coupling_fraction": nn["coupling_fraction"],
            "transient_amplification": nn["transient_amplification"],
            "ablations": [_summary_row(r) for r in self.ablations],
            "order": self.order,
            "retain_alpha": self.retain_alpha,
            "retain": self.retain,
            "n_blocks": int(self.block_starts.size) if self.method == "dense" else None,
            "block_moves": self.block_moves,
            "order_violations": self.order_violations,
            "refused_swaps": len(self.refused_swaps),
            "split_exact": self.split_exact,
            "condition_s": self.condition_s,
            "condition_sep": self.condition_sep,
            "henrici_couplings": nn["henrici_couplings"],
            "henrici_blocks": nn["henrici_blocks"],
            "henrici_relative": nn["henrici_relative"],
            "commutator": nn["commutator"],
            "eigvec_condition": nn["eigvec_condition"],
            "norm2": nn["norm2"],
            "norm2_over_rho": nn["norm2_over_rho"],
            "transient_argmax": nn["transient_argmax"],
            "coupling_norms_rc": self.coupling_norms_rc,
            "coupling_norms": self.coupling_norms,
            "ablate": self.ablate,
            "task": self.task,
            "baseline_fvu": self.baseline_fvu,
            "baseline_accuracy": self.baseline_accuracy,
            "method": self.method,
        }
        if self.conv is not None:
            out["conv"] = {k: v for k, v in self.conv.items() if not isinstance(v, np.ndarray)}
        if self.pairs_delta_fvu is not None:
            out["pairs"] = {"group_starts": self.group_starts, "delta_fvu": self.pairs_delta_fvu,
                            "sensitivity": self.pairs_sensitivity}
        return out


_SUMMARY_KEYS = ("blocks", "delta_fvu", "accuracy", "rel_norm", "sensitivity", "control_delta_fvu_median",
                 "control_fraction_better", "invariant", "control_pattern_delta_fvu_median",
                 "control_pattern_fraction_better", "fvu", "note")


def _summary_row(row: dict) -> dict:
    return {k: row[k] for k in _SUMMARY_KEYS}


# ---------------------------------------------------------------------------------
# decomposition
# ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Decomposition:
    """An ordered real Schur form split into R (the first ``m`` rows) and C.

    Attributes:
        schur: the :class:`rnnprobe.numerics.schur.OrderedSchur`.
        m: rows of R (never inside a 2x2 block).
        s, sep: LAPACK ``dtrsen``'s reciprocal condition numbers of the split.
        reconstruction_error: ``||Q T Q^T - W||_F / ||W||_F``.
        orthogonality_error: ``||Q^T Q - I||_F``.
        warnings: things the caller should pass on (refused swaps, ties at the split).
    """

    schur: ns.OrderedSchur
    m: int
    s: float
    sep: float
    reconstruction_error: float
    orthogonality_error: float
    warnings: list


def _retain_top(lam: np.ndarray, ranks: np.ndarray, k: int) -> np.ndarray:
    """The positions of the top ``k`` eigenvalues by rank; InputError when ``k`` splits a pair."""
    n = lam.size
    if k > n:
        raise InputError(f"--retain {k} exceeds the {n} eigenvalues of W_hh; use at most {n}")
    order = np.argsort(ranks, kind="stable")
    # valid K: the cumulative sizes of whole blocks in rank order
    new_block = np.ones(n, dtype=bool)
    new_block[1:] = ranks[order][1:] != ranks[order][:-1]
    valid = np.append(np.nonzero(new_block)[0], n)
    if k not in valid:
        lower, upper = valid[valid < k].max(), valid[valid > k].min()
        raise InputError(f"--retain {k} splits a conjugate pair; use {lower} or {upper}")
    first = np.zeros(n, dtype=bool)
    first[order[:k]] = True
    return first


def decompose(W, *, order: str = "modulus", retain_alpha: float = 0.9, retain: int | None = None,
              window: int = 96) -> Decomposition:
    """Ordered real Schur form of ``W`` with the R/C split.

    Arguments:
        W: [N, N] array or tensor (float64 is used).
        order: ``modulus``, ``real`` or ``angle`` (see :func:`rnnprobe.numerics.schur.order_ranks`).
        retain_alpha: R = eigenvalues with ``|lambda| >= retain_alpha * rho``.
        retain: R = the top ``retain`` eigenvalues in ``order`` instead
            (InputError naming the nearest valid K when it splits a pair).

    R comes first, each of R and C sorted by ``order``; every block is moved by
    LAPACK swaps (``dtrexc``), refused swaps are recorded in ``schur.refusals``
    and named in ``warnings``.
    """
    warnings: list[str] = []

    def select(lam, ranks):
        if retain is not None:
            first = _retain_top(lam, ranks, int(retain))
            _warn_tie(lam, ranks, first, order, warnings)
            return first
        rho = float(np.max(np.abs(lam))) if lam.size else 0.0
        return np.abs(lam) >= retain_alpha * rho

    Wn = W.detach().cpu().numpy() if isinstance(W, torch.Tensor) else np.asarray(W)
    Wn = np.asarray(Wn, dtype=np.float64)
    sch = ns.ordered_schur(Wn, order, select=select, window=window)
    n = Wn.shape[0]
    m = sch.n_first
    Q, T = sch.Q, sch.T
    wnorm = float(np.linalg.norm(Wn))
    rec = float(np.linalg.norm(Q @ T @ Q.T - Wn)) / (wnorm if wnorm > 0 else 1.0)
    orth = float(np.linalg.norm(Q.T @ Q - np.eye(n)))
    s, sep, _ = ns.split_condition(T, m)
    for r in sch.refusals:
        warnings.append(
            f"LAPACK refused an ill-conditioned block swap: eigenvalue {r.eigenvalue_real:.6g}"
            f"{r.eigenvalue_imag:+.6g}i could not pass {r.blocked_by_real:.6g}{r.blocked_by_imag:+.6g}i "
            f"(row {r.position}); they stay in that order (see refused_swaps)")
    if sch.violations:
        warnings.append(f"{sch.violations} adjacent blocks remain out of --order {order} after the refused swaps")
    if not sch.split_exact:
        warnings.append(f"a refused swap left an eigenvalue of C among the first {m} rows (or one of R after "
                        "them): T_RR / T_CC / T_C->R follow the rows, not exactly the --retain-alpha/--retain "
                        "criterion")
    return Decomposition(schur=sch, m=m, s=s, sep=sep, reconstruction_error=rec, orthogonality_error=orth,
                         warnings=warnings)


def _warn_tie(lam, ranks, first, order, warnings) -> None:
    """Warn when the last retained and the first dropped eigenvalue tie in ``order``'s key."""
    if first.all() or not first.any():
        return
    rho = float(np.max(np.abs(lam)))
    key, tol = ns.primary_key(lam, order, rho)
    last_in = key[first].max()
    first_out = key[~first].min()
    if abs(first_out - last_in) <= tol:
        warnings.append(f"--retain {int(first.sum())}: the last retained and the first dropped eigenvalue tie "
                        f"in --order {order} (within the tie tolerance); which of them is in R is arbitrary")


def coupling_regions(T: np.ndarray, m: int) -> dict[str, np.ndarray]:
    """Boolean N x N masks of ``T_RR``, ``T_CC`` and ``T_C->R`` (strictly block-upper entries only).

    ``T_RR``: couplings among the first ``m`` rows/columns (R); ``T_CC``: among
    the rest (C); ``T_C->R``: rows in R, columns in C (C drives R).
    """
    n = T.shape[0]
    mask = ns.coupling_mask(T)
    in_r = np.arange(n) < m
    return {
        "T_RR": mask & in_r[:, None] & in_r[None, :],
        "T_CC": mask & ~in_r[:, None] & ~in_r[None, :],
        "T_C->R": mask & in_r[:, None] & ~in_r[None, :],
    }


def group_starts(T: np.ndarray, groups: int) -> np.ndarray:
    """First rows of ``groups`` runs of consecutive blocks with about equal numbers of eigenvalues."""
    n = T.shape[0]
    cuts = {0}
    for k in range(1, groups):
        x = int(round(k * n / groups))
        if 0 < x < n and T[x, x - 1] != 0:
            x += 1
        if 0 < x < n:
            cuts.add(x)
    return np.array(sorted(cuts), dtype=np.int64)


def _group_masks(T: np.ndarray, starts: np.ndarray):
    """``(g, h) -> mask`` of the couplings from group h (columns) into group g (rows), g <= h."""
    n = T.shape[0]
    mask = ns.coupling_mask(T)
    bounds = np.append(starts, n)
    gid = np.searchsorted(bounds, np.arange(n), side="right") - 1
    return {(g, h): mask & (gid[:, None] == g) & (gid[None, :] == h)
            for g in range(starts.size) for h in range(g, starts.size)}


# ---------------------------------------------------------------------------------
# nonnormality
# ---------------------------------------------------------------------------------
def nonnormality(W: np.ndarray, T: np.ndarray, *, steps: int = 200, device="cpu") -> tuple[dict, np.ndarray]:
    """Departure from normality of ``W = Q T Q^T`` (``T`` its real Schur form).

    Returns ``(stats, norms)``; ``norms[t-1] = ||W^t||_2`` for the powers
    computed (:func:`rnnprobe.numerics.schur.power_norms`; it stops early once
    a power's norm is below 1, which fixes the maximum). ``stats``:

    * ``henrici``: ``sqrt(||W||_F^2 - sum |lambda|^2)`` (Henrici 1962),
      computed without cancellation from the Schur form as
      ``sqrt(henrici_couplings^2 + henrici_blocks^2)``;
      ``henrici_couplings = ||N||_F``; ``henrici_blocks`` the part inside the
      2x2 blocks, ``sqrt(sum (a-d)^2 + (b+c)^2)`` over blocks ``[[a,b],[c,d]]``;
      ``henrici_relative = henrici / ||W||_F``.
    * ``coupling_fraction``: ``||N||_F / ||T||_F``.
    * ``commutator``: ``||W W^T - W^T W||_F / ||W||_F^2``.
    * ``eigvec_condition``: ``cond_2(V)``, V the eigenvectors with unit
      columns (inf when W is defective).
    * ``norm2``, ``norm2_over_rho``: ``||W||_2`` and ``||W||_2 / rho``.
    * ``transient_amplification``: ``max_{1<=t<=steps} ||W^t||_2``, at ``transient_argmax``.
    """
    W = np.asarray(W, dtype=np.float64)
    n = W.shape[0]
    mask = ns.coupling_mask(T)
    ncoup = float(np.linalg.norm(T[mask]))
    i = np.nonzero(np.diagonal(T, -1) != 0)[0] if n > 1 else np.zeros(0, dtype=int)
    a, b, c, d = T[i, i], T[i, i + 1], T[i + 1, i], T[i + 1, i + 1]
    nblocks = float(np.sqrt(np.sum((a - d) ** 2 + (b + c) ** 2)))
    henrici = math.hypot(ncoup, nblocks)
    wf = float(np.linalg.norm(W))
    tf = float(np.linalg.norm(T))
    lam = ns.block_eigenvalues(T)
    rho = float(np.max(np.abs(lam))) if n else 0.0
    comm = float(np.linalg.norm(W @ W.T - W.T @ W)) / wf**2 if wf > 0 else 0.0
    try:
        _, V = np.linalg.eig(T)
        sv = np.linalg.svd(V, compute_uv=False)
        kappa = float(sv[0] / sv[-1]) if sv[-1] > 0 else math.inf
    except np.linalg.LinAlgError:
        kappa = math.inf
    norms, _ = ns.power_norms(T, steps, device=device) if steps > 0 else (np.zeros(0), False)
    norm2 = float(norms[0]) if norms.size else float(np.linalg.norm(W, 2)) if n else 0.0
    stats = ns.nonnormality_stats(henrici=henrici, couplings=ncoup, blocks=nblocks, frobenius=wf,
                                  coupling_fraction=ncoup / tf if tf > 0 else 0.0, commutator=comm,
                                  eigvec_condition=kappa, norm2=norm2, rho=rho, norms=norms, steps=steps)
    return stats, norms


# ---------------------------------------------------------------------------------
# batched rollouts
# ---------------------------------------------------------------------------------
_INPLACE = {"tanh": kernels.tanh_, "relu": torch.Tensor.relu_, "sigmoid": torch.Tensor.sigmoid_,
            "linear": lambda x: x}


def rollout_variants(cell: ElmanCell, W: torch.Tensor, inputs: torch.Tensor, h0: torch.Tensor | None = None,
                     *, states: bool = False) -> torch.Tensor:
    """Outputs of the cell with each recurrent matrix in ``W`` swapped in, all at once.

    ``W`` [V, N, N] (on the cell's device/dtype), ``inputs`` [B, T, d_in],
    ``h0`` [B, N] (zeros if None). Every other parameter, the form
    (leaky / rate-outside / residual), alpha and phi are the cell's: variant v
    gives what ``cell.replace(W_hh=W[v]).rollout(h0, inputs)`` followed by
    ``readout`` gives (same operations, to rounding), as one batched program:
    a [V, B, N] state and one batched matrix product per step, in preallocated
    buffers. Returns [V, B, T, d_out] (``states=True``: the states [V, B, T, N]).
    """
    V, N = W.shape[0], W.shape[-1]
    inputs = torch.as_tensor(inputs, dtype=cell.dtype, device=cell.device)
    B, steps = inputs.shape[0], inputs.shape[1]
    drive = inputs @ cell.W_uh.T + cell.b  # [B, T, N], the same for every variant
    h = torch.zeros(V, B, N, dtype=cell.dtype, device=cell.device)
    if h0 is not None:
        h.copy_(torch.as_tensor(h0, dtype=cell.dtype, device=cell.device).expand(V, B, N))
    p = torch.empty_like(h)
    WT = W.transpose(1, 2)
    width = N if states else cell.n_outputs
    out = torch.empty(V, B, steps, width, dtype=cell.dtype, device=cell.device)
    y = None if states else torch.empty(V, B, width, dtype=cell.dtype, device=cell.device)
    a, form = cell.alpha, cell.form
    inplace = _INPLACE.get(cell.nonlinearity)

    def act(x):  # phi(x), in place where torch has an in-place form
        if inplace is not None:
            return inplace(x)
        x.copy_(cell.nl.phi(x))
        return x

    WrT = cell.W_r.T
    for t in range(steps):
        d = drive[:, t]
        if form == "leaky":
            act(kernels.matmul_(h, WT, p).add_(d))
            if a == 1.0:
                h, p = p, h
            else:  # h + a * (phi - h), in the cell's order of operations
                h.add_(p.sub_(h).mul_(a))
        elif form == "rate-outside":
            kernels.matmul_(cell.nl.phi(h), WT, p).add_(d)
            h.mul_(1.0 - a).add_(p.mul_(a))
        else:
            h.add_(act(kernels.matmul_(h, WT, p).add_(d)).mul_(a))
        if states:
            out[:, :, t] = h
        else:
            out[:, :, t] = kernels.matmul_(h, WrT, y)
    return out if states else out.add_(cell.b_r)


def variant_chunk(cell: ElmanCell, batch: int, steps: int) -> int:
    """How many recurrent matrices :func:`rollout_variants` takes at once for ``batch`` x ``steps`` trials.

    Bounded by ``_MEMORY_BUDGET`` (weights, states, outputs) everywhere and,
    on the CPU, by ``_CACHE_BUDGET`` of state, where bigger batches only add
    memory traffic (at N = 512 and 256 trials: 8 variants at a time; each
    variant's [256, 512] x [512, 512] product already runs at GEMM speed).
    """
    N = cell.n_hidden
    itemsize = torch.empty(0, dtype=cell.dtype).element_size()
    per_variant = itemsize * (2 * N * N + 4 * batch * N + batch * steps * max(cell.n_outputs, 1))
    chunk = max(1, int(_MEMORY_BUDGET // per_variant))
    if cell.device.type == "cpu":
        chunk = min(chunk, _CPU_CHUNK_MAX, max(1, int(_CACHE_BUDGET // (itemsize * batch * N))))
    return chunk


class _Evaluator:
    """FVU and accuracy of many recurrent matrices on one task, in memory-bounded batched chunks."""

    def __init__(self, cell: ElmanCell, task, progress=None):
        self.cell = cell
        self.task = task
        self.inputs = torch.as_tensor(np.asarray(task.inputs), dtype=cell.dtype, device=cell.device)
        B, steps = task.inputs.shape[:2]
        self.chunk = variant_chunk(cell, B, steps)
        self.progress = progress

    def __call__(self, sets: list) -> tuple[np.ndarray, np.ndarray | None]:
        """``sets``: callables returning [k, N, N] weight stacks; returns (fvu [sum k], accuracy or None)."""
        fvu, acc = [], []
        pending: list[torch.Tensor] = []

        def roll(Ws):
            y = rollout_variants(self.cell, Ws, self.inputs)
            with np.errstate(over="ignore", invalid="ignore"):
                f = np.atleast_1d(self.task.fvu(y))
            fvu.append(np.where(np.isnan(f), np.inf, f))  # a diverged rollout: infinitely bad
            a = self.task.accuracy(y)
            acc.append(None if a is None else np.atleast_1d(a))
            if self.progress is not None:
                self.progress.advance(y.shape[0])

        for make in sets:
            pending.append(make())
            if sum(w.shape[0] for w in pending) >= self.chunk:
                Ws = torch.cat(pending)
                full = (Ws.shape[0] // self.chunk) * self.chunk
                for i in range(0, full, self.chunk):
                    roll(Ws[i:i + self.chunk])
                pending = [Ws[full:]] if full < Ws.shape[0] else []
        if pending:
            roll(torch.cat(pending))
        f = np.concatenate(fvu)
        a = None if any(x is None for x in acc) else np.concatenate(acc)
        return f, a


def control_perturbations(Q: torch.Tensor, mask: np.ndarray | None, norm: float, count: int,
                          generator: torch.Generator) -> torch.Tensor:
    """``count`` random perturbations E [count, N, N] of W with ``||E||_F = norm``, in W's basis.

    ``mask is None``: dense Gaussian matrices in the original basis. Else
    Gaussian entries on the ``mask`` pattern of T (the ablated couplings) in
    the Schur basis, ``E = Q M Q^T``. Drawn in float64 on ``Q``'s device from
    ``generator``.
    """
    n = Q.shape[0]
    G = torch.randn(count, n, n, generator=generator, dtype=torch.float64, device=Q.device)
    if mask is not None:
        G = G * torch.as_tensor(mask, dtype=torch.float64, device=Q.device)
    G = G * (norm / torch.linalg.matrix_norm(G).clamp_min(1e-300))[:, None, None]
    return G if mask is None else Q @ G @ Q.T


def _ablation_rows(decomp: Decomposition, W: np.ndarray, cell: ElmanCell, task, variants: list, options,
                   ctx: RunContext):
    """Roll out the unablated model, every variant and its controls, all as batched stacks.

    Returns ``(rows, base_fvu, base_accuracy, dense, pattern)``; ``dense`` and
    ``pattern`` [V, K] are the controls' dFVU (NaN where a variant has none).
    """
    Q, T = decomp.schur.Q, decomp.schur.T
    dev, dt = ctx.device, ctx.dtype
    tnorm = float(np.linalg.norm(T))
    Qt = torch.as_tensor(Q, dtype=torch.float64, device=dev)
    Wt = torch.as_tensor(W, dtype=torch.float64, device=dev)
    K = int(options.controls)
    dT = [np.where(mask, T, 0.0) for _, mask in variants]
    norms = [float(np.linalg.norm(x)) for x in dT]

    def variant_stack():
        # nothing removed: the model's own W_hh, not its (rounded) reconstruction
        Wv = np.stack([W] + [Q @ (T - x) @ Q.T if nrm > 0 else W for x, nrm in zip(dT, norms)])
        return torch.as_tensor(Wv, dtype=dt, device=dev)

    sets = [variant_stack]
    control_of = []  # (variant index, kind) of each control set, in order
    for v, ((_, mask), nrm) in enumerate(zip(variants, norms)):
        if nrm == 0 or K == 0:
            continue
        for kind in ("dense", "pattern"):
            control_of.append((v, kind))

            def make(v=v, kind=kind, mask=mask, nrm=nrm):
                g = ctx.generator(1000 + 2 * v + (kind == "pattern"))
                E = control_perturbations(Qt, mask if kind == "pattern" else None, nrm, K, g)
                return (Wt + E).to(dt)

            sets.append(make)
    total = 1 + len(variants) + K * len(control_of)
    ctx.progress.start("schur: ablation rollouts", total)
    try:
        fvu, acc = _Evaluator(cell, task, ctx.progress)(sets)
    finally:
        ctx.progress.stop()
    base_fvu = float(fvu[0])
    base_acc = None if acc is None else float(acc[0])
    var_fvu = fvu[1:1 + len(variants)]
    ctrl = fvu[1 + len(variants):].reshape(-1, K) - base_fvu if control_of else np.zeros((0, K))
    dense = np.full((len(variants), K), np.nan)
    pattern = np.full((len(variants), K), np.nan)
    for (v, kind), d in zip(control_of, ctrl):
        (dense if kind == "dense" else pattern)[v] = d
    rows = []
    for v, ((name, _), nrm) in enumerate(zip(variants, norms)):
        dfvu = float(var_fvu[v] - base_fvu)
        rel = nrm / tnorm if tnorm > 0 else 0.0
        note = None
        if not np.isfinite(dfvu):
            note = "the ablated network's outputs diverged: delta_fvu is infinite (null in JSON)"
        if nrm == 0:
            note = ("nothing is removed (the unablated model)" if not name else
                    "the removed couplings are all zero (an empty block or exactly zero entries): "
                    "sensitivity undefined")
        has_ctrl = nrm > 0 and K > 0
        rows.append({
            "blocks": list(name),
            "fvu": float(var_fvu[v]),
            "delta_fvu": dfvu,
            "accuracy": None if acc is None else float(acc[1 + v]),
            "rel_norm": rel,
            "sensitivity": dfvu / rel if rel > 0 else None,
            "control_delta_fvu_median": float(np.median(dense[v])) if has_ctrl else None,
            "control_fraction_better": float(np.mean(dense[v] < dfvu)) if has_ctrl else None,
            "control_pattern_delta_fvu_median": float(np.median(pattern[v])) if has_ctrl else None,
            "control_pattern_fraction_better": float(np.mean(pattern[v] < dfvu)) if has_ctrl else None,
            "invariant": bool(dfvu <= options.epsilon),
            "note": note,
        })
    return rows, base_fvu, base_acc, dense, pattern


# ---------------------------------------------------------------------------------
# the analysis
# ---------------------------------------------------------------------------------
def conv_checks(op: Operator) -> dict | None:
    """Kernel checks of a convolutional W_hh (None for a dense one).

    Keys: ``boundary``, ``lattice``, ``channels``, ``construction``,
    ``spectrum_exact`` (the FFT of the kernel is the spectrum: circular
    boundaries only), ``kernel_antisymmetry_error`` and ``kernel_symmetry_error``
    (``||W +- W^T||_F / (2 ||W||_F)``), ``generator_antisymmetry_error`` (of G
    when ``W = exp_conv(G)``; for a realified complex cell this is the
    generator's anti-Hermitian error, also given as ``anti_hermitian_error``),
    ``unitarity_error`` (``max | sigma - 1 |`` over every frequency's block;
    ``max | |FFT(K)| - 1 |`` for one channel), ``log_abs_det``.
    """
    if isinstance(op, CircularConvOperator):
        gen = None if op.generator is None else nconv.antisymmetry_error(op.generator)
        return {
            "boundary": "circular", "lattice": op.attrs()["lattice"], "channels": op.channels,
            "construction": op.construction, "spectrum_exact": True,
            "kernel_antisymmetry_error": nconv.antisymmetry_error(op.kernel),
            "kernel_symmetry_error": nconv.symmetry_error(op.kernel),
            "generator_antisymmetry_error": gen,
            "anti_hermitian_error": gen if op.complex_channels else None,
            "unitarity_error": nconv.unitarity_error(op.kernel),
            "log_abs_det": op.logabsdet(),
        }
    attrs = op.attrs()
    if "lattice" in attrs:
        return {"boundary": attrs.get("boundary"), "lattice": attrs["lattice"], "channels": attrs.get("channels"),
                "construction": op.describe(), "spectrum_exact": False}
    return None


def _conjugate_layout(lam: np.ndarray, rho: float) -> np.ndarray:
    """The eigenvalues of a real operator laid out as a real Schur form lists them: real ones, and each
    pair as ``(a + bi, a - bi)``; tiny imaginary parts (rounding of the FFT) are snapped to 0."""
    lam = np.asarray(lam, dtype=np.complex128)
    tiny = 64 * np.finfo(np.float64).eps * max(rho, np.finfo(np.float64).tiny)
    real = np.abs(lam.imag) <= tiny
    pos = lam[~real & (lam.imag > 0)]
    neg = lam[~real & (lam.imag < 0)]
    if pos.size != neg.size:  # an unmatched pair: the operator is not real to rounding
        raise AnalysisError(f"the FFT spectrum has {pos.size} eigenvalues above the real axis and {neg.size} "
                            "below; W_hh is not a real operator")
    out = np.empty(lam.size, dtype=np.complex128)
    nr = int(real.sum())
    out[:nr] = lam[real].real
    out[nr::2] = pos
    out[nr + 1::2] = np.conj(pos)
    return out


def _fft_result(op: CircularConvOperator, options: SchurOptions, ctx: RunContext) -> SchurResult:
    """The FFT path: exact spectrum, R/C split, normality and kernel checks of a circular convolution."""
    import time

    from scipy.spatial import cKDTree

    t0 = time.perf_counter()
    ctx.progress.start("schur: spectrum by FFT", None)
    try:
        lam_raw = op.to(dtype=torch.float64).eigenvalues().cpu().numpy()
        stats, norms = nconv.circulant_nonnormality(op.to(dtype=torch.float64), steps=options.transient_steps)
    finally:
        ctx.progress.stop()
    rho = stats["spectral_radius"]
    lam = _conjugate_layout(lam_raw, rho)
    n = lam.size
    ranks = ns.order_ranks(lam, options.order, rho=rho)
    if options.retain is not None:
        first = _retain_top(lam, ranks, int(options.retain))
    else:
        first = np.abs(lam) >= options.retain_alpha * rho
    order = np.argsort(ns.order_ranks(lam, options.order, rho=rho, first=first), kind="stable")
    lam, first = lam[order], first[order]
    m = int(first.sum())
    normal = stats["commutator"] <= 1e-12
    sep = None
    if normal and 0 < m < n:  # normal blocks: sep_F(T_RR, T_CC) is the distance between the two spectra
        pts = np.column_stack([lam.real, lam.imag])
        sep = float(cKDTree(pts[~first]).query(pts[first])[0].min())
    checks = conv_checks(op)
    checks.update({"method": "fft", "normal": bool(normal), "commutator": stats["commutator"],
                   "frobenius": stats["frobenius"], "n_units": n, "seconds": time.perf_counter() - t0,
                   "schur_form": "not built: the Fourier basis diagonalises W_hh (one C x C block per frequency)"})
    if op.channels == 1:
        modulus = op.blocks().abs().reshape(op.lattice).cpu().numpy()
    else:
        modulus = torch.linalg.svdvals(op.blocks())[:, 0].reshape(op.lattice).cpu().numpy()
    empty = np.zeros((0, 0))
    return SchurResult(
        Q=empty, T=empty, eigenvalues=lam, block_starts=np.zeros(0, dtype=np.int64), retained=first,
        order=options.order, retain_alpha=options.retain_alpha, retain=options.retain, n_hidden=n,
        spectral_radius=rho, n_retained=m, reconstruction_error=None, orthogonality_error=None,
        block_moves=0, order_violations=0, split_exact=True, refused_swaps=[],
        condition_s=1.0 if normal else None, condition_sep=sep, nonnormality=stats,
        group_starts=np.zeros(0, dtype=np.int64), coupling_norms=empty, coupling_norms_rc={},
        transient_norms=norms, method="fft", conv=checks, symbol_modulus=modulus,
    )


def _resolve_method(op: Operator, options: SchurOptions) -> str:
    if options.method == "fft":
        if not op.exact_spectrum:
            raise InputError(f"--method fft needs W_hh to be a circular convolution (its spectrum is then the FFT "
                             f"of its kernel); this W_hh is {op.describe()}: use --method dense (or auto)")
        if options.ablate != "none":
            raise InputError(f"--ablate {options.ablate} removes Schur couplings, which needs the Schur vectors of "
                             "the dense path: use --method dense (or auto)")
        return "fft"
    if options.method == "auto" and op.exact_spectrum and options.ablate == "none":
        return "fft"
    return "dense"


def run(model: Model, options: SchurOptions, ctx: RunContext) -> SchurResult:
    """Ordered Schur form, nonnormality and (``--ablate``) the coupling ablation of ``model``'s W_hh."""
    op = model.cell.recurrent_operator()
    if _resolve_method(op, options) == "fft":
        return _fft_result(op, options, ctx)
    W = op.dense().detach().cpu().to(torch.float64).numpy()
    n = W.shape[0]
    ctx.progress.start("schur: ordered decomposition", None)
    try:
        dec = decompose(W, order=options.order, retain_alpha=options.retain_alpha, retain=options.retain)
    finally:
        ctx.progress.stop()
    for w in dec.warnings:
        ctx.warn(w)
    sch = dec.schur
    T, m = sch.T, dec.m
    stats, norms = nonnormality(W, T, steps=options.transient_steps, device=ctx.device)
    starts = group_starts(T, options.groups)
    gmasks = _group_masks(T, starts)
    G = starts.size
    cnorm = np.zeros((G, G))
    for (g, h), mask in gmasks.items():
        cnorm[g, h] = float(np.linalg.norm(T[mask]))
    regions = coupling_regions(T, m)
    result = SchurResult(
        Q=sch.Q, T=T, eigenvalues=sch.eigenvalues, block_starts=sch.block_starts, retained=np.arange(n) < m,
        order=options.order, retain_alpha=options.retain_alpha, retain=options.retain, n_hidden=n,
        spectral_radius=sch.rho, n_retained=m, reconstruction_error=dec.reconstruction_error,
        orthogonality_error=dec.orthogonality_error,
        block_moves=sch.moves, order_violations=sch.violations, split_exact=sch.split_exact,
        refused_swaps=[dataclasses.asdict(r) for r in sch.refusals], condition_s=dec.s, condition_sep=dec.sep,
        nonnormality=stats, group_starts=starts, coupling_norms=cnorm,
        coupling_norms_rc={k: float(np.linalg.norm(T[v])) for k, v in regions.items()},
        transient_norms=norms, ablate=options.ablate, conv=conv_checks(op),
    )
    if result.conv is not None:
        result.conv.update({"method": "dense", "normal": bool(stats["commutator"] <= 1e-12),
                            "commutator": stats["commutator"]})
    if options.ablate == "none":
        return result

    cell = model.cell
    if not isinstance(cell, ElmanCell):
        raise InputError(f"--ablate {options.ablate} rolls out ablated recurrent matrices, which needs an "
                         f"Elman/leaky cell; this model is a {cell.kind} cell: use --ablate none")
    task = ctx.task(batch=options.trials,
                    why=f"--ablate {options.ablate} rolls the ablated networks out on task data")
    if options.ablate == "couplings":
        variants = []
        for k in range(len(COUPLINGS) + 1):
            for subset in itertools.combinations(COUPLINGS, k):
                mask = np.zeros_like(T, dtype=bool)
                for name in subset:
                    mask |= regions[name]
                variants.append((subset, mask))
    else:
        variants = [((), np.zeros_like(T, dtype=bool))]
        variants += [((f"G{h + 1}->G{g + 1}",), mask) for (g, h), mask in gmasks.items()]
    rows, base_fvu, base_acc, dense, pattern = _ablation_rows(dec, W, cell, task, variants, options, ctx)
    result.task = getattr(task, "spec", None)
    result.baseline_fvu, result.baseline_accuracy = base_fvu, base_acc
    result.ablations = rows
    result.control_delta_fvu, result.control_pattern_delta_fvu = dense, pattern
    if options.ablate == "pairs":
        pd = np.full((G, G), np.nan)
        ps = np.full((G, G), np.nan)
        for ((g, h), _), row in zip(gmasks.items(), rows[1:]):
            pd[g, h] = row["delta_fvu"]
            ps[g, h] = np.nan if row["sensitivity"] is None else row["sensitivity"]
        result.pairs_delta_fvu, result.pairs_sensitivity = pd, ps
    if not np.isfinite(base_fvu):
        raise AnalysisError("the unablated model's outputs are not finite on the task data; check the task "
                            "(--task/--data) matches the checkpoint")
    return result


def gate(result: SchurResult, options: SchurOptions) -> list[str]:
    if options.max_error is None:
        return []
    out = []
    for name in ("reconstruction_error", "orthogonality_error"):
        value = getattr(result, name)
        if value is None:  # the FFT path has no Schur vectors to check
            continue
        if not value <= options.max_error:
            out.append(f"{name} {value:.3g} > --max-error {options.max_error:g}")
    return out


_RENDER_KEYS = ("method", "n_hidden", "spectral_radius", "n_retained", "reconstruction_error", "orthogonality_error",
                "henrici", "coupling_fraction", "commutator", "eigvec_condition", "norm2", "transient_amplification",
                "transient_argmax", "condition_s", "condition_sep", "refused_swaps", "order_violations", "task",
                "baseline_fvu", "baseline_accuracy", "warnings")


def render(summary: dict):
    """The terminal view: the main numbers, and the ablation table when there is one."""
    from rnnprobe.cli.console import kv_table, rows_table

    head = {k: summary.get(k) for k in _RENDER_KEYS}
    conv = summary.get("conv") or {}
    head.update({k: conv[k] for k in ("lattice", "channels", "boundary", "spectrum_exact", "normal",
                                      "unitarity_error", "kernel_antisymmetry_error", "generator_antisymmetry_error")
                 if conv.get(k) is not None})
    if not summary.get("ablations"):
        return kv_table(head, title="rnnprobe schur")

    def f(x):
        return "-" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x))

    title = "rnnprobe schur: " + ", ".join(f"{k} {f(v)}" for k, v in head.items() if v not in (None, [], ""))
    # ctl: dense controls, pat: controls within the block pattern (median dFVU, fraction that did better)
    cols = ["blocks", "dFVU", "acc", "rel_norm", "S", "ctl med", "ctl frac", "pat med", "pat frac", "inv"]
    rows = [[" + ".join(r["blocks"]) or "(none)", f(r["delta_fvu"]), f(r["accuracy"]), f(r["rel_norm"]),
             f(r["sensitivity"]), f(r["control_delta_fvu_median"]), f(r["control_fraction_better"]),
             f(r["control_pattern_delta_fvu_median"]), f(r["control_pattern_fraction_better"]),
             "yes" if r["invariant"] else "no"] for r in summary["ablations"]]
    return rows_table(cols, rows, title=title)


ANALYSIS = AnalysisSpec(
    name="schur",
    help="Ordered real Schur form of W_hh, nonnormality, block-coupling ablation.",
    description=(
        "Ordered real Schur decomposition W_hh = Q T Q^T (blocks by --order, retained set R first), "
        "nonnormality diagnostics (Henrici departure, commutator, eigenvector condition, transient "
        "amplification), and with --ablate the task effect of removing the couplings T_RR, T_CC, T_C->R "
        "(or between block groups) with W_uh, W_r and b fixed, against random controls of the same norm "
        "(Draeger 2026, arXiv 2606.18457). For a circular convolution W_hh (--lattice models), the exact "
        "spectrum from the FFT of the kernel at any size, normality, and the kernel's antisymmetry and "
        "unitarity errors (--method; Magnasco 2023)."
    ),
    options=SchurOptions,
    run=run,
    example="rnnprobe schur sample_checkpoints/copy_rnn64.pt --ablate couplings",
    plot="rnnprobe.plots.schur:plot",
    gate=gate,
    uses_task=True,
    render=render,
)
