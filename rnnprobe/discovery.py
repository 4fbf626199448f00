"""Finding the symmetries a recurrent network's weights have.

Two questions, for ``rnnprobe equivariance --discover``:

:func:`signed_permutation_symmetries`
    Which signed permutations ``P`` of the units (with signed permutations
    ``Q`` of the inputs) leave the weights unchanged,

        P W P^T = W (every recurrent block),  P U Q^T = U (every input block),  P b = b,

    so that ``F(P h, Q u) = P F(h, u)``. For a pointwise nonlinearity these
    are the only exact linear symmetries (phi commutes with a linear map only
    if the map is a signed permutation; with signs only for an odd phi).
    Found as the automorphisms of a weighted graph (units and input channels
    as vertices, the weights as edges) by colour refinement with
    individualisation, the approach of graph-isomorphism programs such as
    nauty (McKay & Piperno 2014): vertices are split by invariants (sorted
    absolute weights to each colour class) until the partition is stable; a
    vertex is then individualised and its images tried, one search per image
    outside the orbit already generated. Candidates are verified on the
    weights, signs solved from the ratios ``W_ij / W_{p(i) p(j)}``.
:func:`commutant`
    The linear maps ``A`` with ``[A, W] = 0``: the generators of the
    continuous linear symmetries of ``h -> W h``. The SVD of the commutation
    constraint ``(I kron W^T - W kron I) vec(A) = 0`` for small N, else from
    the eigendecomposition ``W = V diag(lambda) V^-1`` (``A = V B V^-1`` with
    ``B`` block-diagonal over clusters of equal eigenvalues).
    :func:`surviving_generators` keeps the part that survives the
    nonlinearity, the bias and the inputs; for tanh nothing does.

Conventions as in :mod:`rnnprobe.groups`: a signed permutation acts by
``(g.x)_i = sign[i] * x[perm[i]]``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components

from rnnprobe.groups import Action, Group

__all__ = [
    "SignedPermutation",
    "PermutationSymmetries",
    "signed_permutation_symmetries",
    "generate_group",
    "describe",
    "name_group",
    "readout_action",
    "as_group",
    "commutant",
    "surviving_generators",
    "skew_part",
    "describe_output",
]


# ---- signed permutations ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SignedPermutation:
    """``(g.x)_i = sign[i] * x[perm[i]]`` on hidden units and on inputs (and outputs, when known)."""

    perm: np.ndarray
    sign: np.ndarray
    input_perm: np.ndarray
    input_sign: np.ndarray
    output_perm: np.ndarray | None = None
    output_sign: np.ndarray | None = None

    def compose(self, other: "SignedPermutation") -> "SignedPermutation":
        """``self . other``: first ``other``, then ``self``."""

        def c(p, s, q, t):
            return q[p], s * t[p]

        perm, sign = c(self.perm, self.sign, other.perm, other.sign)
        ip, is_ = c(self.input_perm, self.input_sign, other.input_perm, other.input_sign)
        if self.output_perm is not None and other.output_perm is not None:
            op, os_ = c(self.output_perm, self.output_sign, other.output_perm, other.output_sign)
        else:
            op = os_ = None
        return SignedPermutation(perm, sign, ip, is_, op, os_)

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.perm, np.arange(self.perm.size)) and np.all(self.sign == 1)
                    and np.array_equal(self.input_perm, np.arange(self.input_perm.size))
                    and np.all(self.input_sign == 1))

    def inverse(self) -> "SignedPermutation":
        def inv(p, s):
            q, t = np.empty_like(p), np.empty_like(s)
            q[p], t[p] = np.arange(p.size), s
            return q, t

        out = (None, None) if self.output_perm is None else inv(self.output_perm, self.output_sign)
        return SignedPermutation(*inv(self.perm, self.sign), *inv(self.input_perm, self.input_sign), *out)

    def key(self) -> bytes:
        return (self.perm.astype(np.int64).tobytes() + self.sign.astype(np.int8).tobytes()
                + self.input_perm.astype(np.int64).tobytes() + self.input_sign.astype(np.int8).tobytes())

    def order(self) -> int:
        """The order of the element: lcm over cycles of the length (doubled when the cycle's signs multiply to -1)."""
        out = 1
        for perm, sign in ((self.perm, self.sign), (self.input_perm, self.input_sign)):
            seen = np.zeros(perm.size, dtype=bool)
            for start in range(perm.size):
                if seen[start]:
                    continue
                length, prod, x = 0, 1.0, start
                while not seen[x]:
                    seen[x], prod, x, length = True, prod * sign[x], perm[x], length + 1
                out = math.lcm(out, length * (2 if prod < 0 else 1))
        return out

    def to_dict(self) -> dict:
        return {"perm": self.perm.tolist(), "sign": self.sign.astype(int).tolist(),
                "input_perm": self.input_perm.tolist(), "input_sign": self.input_sign.astype(int).tolist()}


@dataclasses.dataclass
class PermutationSymmetries:
    """What :func:`signed_permutation_symmetries` found.

    Attributes:
        generators: signed permutations generating the symmetry group (its
            hidden action never trivial; input-only relabellings of unused
            channels are dropped).
        complete: False when the search stopped at ``max_nodes`` refinements
            (the generators found are symmetries, but there may be more).
        nodes: refinements run.
        tol: the absolute tolerance the weights were compared with.
    """

    generators: list[SignedPermutation]
    complete: bool
    nodes: int
    tol: float


def _cluster(sig: torch.Tensor, tol: float, groups: np.ndarray | None = None) -> np.ndarray:
    """Connected components of ``max|sig_i - sig_j| <= tol`` within each of ``groups``.

    Labels are numbered by group, then in order of first appearance. Sets are
    split recursively at gaps wider than tol in their most spread coordinate
    (no pair across such a gap is within tol, so no component crosses it); a
    set within tol in every coordinate is one component; only a set that no
    gap splits is compared pairwise.
    """
    n = sig.shape[0]
    groups = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups)
    X = sig.numpy()
    labels = np.empty(n, dtype=np.int64)
    count = 0
    todo = [np.flatnonzero(groups == c) for c in np.unique(groups)]
    while todo:
        members = todo.pop()
        if members.size == 1 or X.shape[1] == 0:
            labels[members], count = count, count + 1
            continue
        sub = X[members]
        spread = sub.max(axis=0) - sub.min(axis=0)
        k = int(np.argmax(spread))
        if spread[k] <= tol:
            labels[members], count = count, count + 1
            continue
        order = np.argsort(sub[:, k], kind="stable")
        cuts = np.flatnonzero(np.diff(sub[order, k]) > tol) + 1
        if cuts.size:
            todo += [members[part] for part in np.split(order, cuts)]
            continue
        close = torch.cdist(sig[members], sig[members], p=float("inf")) <= tol
        i, j = torch.nonzero(close, as_tuple=True)
        graph = coo_matrix((np.ones(i.numel()), (i.numpy(), j.numpy())), shape=(members.size, members.size))
        _, comp = connected_components(graph, directed=False)
        labels[members] = comp + count
        count += int(comp.max()) + 1
    # canonical numbering: by group, then by first appearance
    order = np.lexsort((np.arange(n), groups))
    _, first = np.unique(labels[order], return_index=True)
    rank = np.empty(count, dtype=np.int64)
    rank[labels[order][np.sort(first)]] = np.arange(first.size)
    return rank[labels]


class _Refiner:
    """Joint colour refinement of two copies of one weighted graph.

    ``E`` [M, V, V]: ``E[m, i, j]`` the weight of the edge j -> i in block m
    (absolute values when signs are allowed). Colours are refined on both
    copies together so that colour labels are comparable between them.
    """

    def __init__(self, E: torch.Tensor, init: np.ndarray, tol: float):
        self.E = E
        self.V = E.shape[1]
        self.init = init
        self.tol = tol
        self.nodes = 0
        span = float(E.max() - E.min()) if E.numel() else 0.0
        self.lo, self.span = (float(E.min()) if E.numel() else 0.0), (span if span > 0 else 1.0)

    def _sorted_within(self, R: torch.Tensor, colours: np.ndarray) -> torch.Tensor:
        """Each row of ``R`` [.., V, V] sorted within the column classes ``colours``."""
        c = torch.as_tensor(colours, dtype=R.dtype)
        key = c + 0.5 * (R - self.lo) / self.span
        idx = torch.argsort(key, dim=-1)
        return torch.gather(R, -1, idx)

    def _signature(self, colours: np.ndarray) -> torch.Tensor:
        rows = self._sorted_within(self.E, colours)
        cols = self._sorted_within(self.E.transpose(1, 2), colours)
        return torch.cat([rows, cols], dim=0).permute(1, 0, 2).reshape(self.V, -1)

    def refine(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Refine colourings ``a`` (copy A) and ``b`` (copy B) to a joint equitable partition.

        Returns None as soon as a colour class has different sizes in the two copies.
        """
        self.nodes += 1
        while True:
            if not np.array_equal(np.bincount(a, minlength=max(a.max(), b.max()) + 1),
                                  np.bincount(b, minlength=max(a.max(), b.max()) + 1)):
                return None
            n_before = len(np.unique(a))
            sig = torch.cat([self._signature(a), self._signature(b)], dim=0)
            new = _cluster(sig, self.tol, np.concatenate([a, b]))
            label = int(new.max()) + 1
            a, b = new[: self.V], new[self.V:]
            if len(np.unique(a)) == n_before:
                if not np.array_equal(np.bincount(a, minlength=label), np.bincount(b, minlength=label)):
                    return None
                return a, b


def _parity_solve(n_vars: int, edges: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
                  ) -> tuple[np.ndarray | None, np.ndarray]:
    """Solve ``x_i x_j = r_ij`` over x in {+-1}; variable ``n_vars`` is the ground (fixed +1).

    Returns (x, component labels) or (None, labels) when inconsistent. Each
    component not containing the ground gets x = +1 at its BFS root.
    """
    i = np.concatenate([e[0] for e in edges]) if edges else np.zeros(0, dtype=np.int64)
    j = np.concatenate([e[1] for e in edges]) if edges else np.zeros(0, dtype=np.int64)
    r = np.concatenate([e[2] for e in edges]) if edges else np.zeros(0)
    n = n_vars + 1
    graph = coo_matrix((np.ones(i.size), (i, j)), shape=(n, n)).tocsr()
    graph = graph + graph.T
    _, labels = connected_components(graph, directed=False)
    x = np.zeros(n)
    # sign of each edge, symmetric, for the tree walk
    par = coo_matrix((r, (i, j)), shape=(n, n)).tocsr()
    par = par + par.T
    roots = [n_vars] + [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels) if c != labels[n_vars]]
    for root in roots:
        order, pred = breadth_first_order(graph, root, directed=False, return_predecessors=True)
        x[root] = 1.0
        for v in order[1:]:
            x[v] = x[pred[v]] * np.sign(par[pred[v], v])
    if i.size and not np.all(x[i] * x[j] == r):
        return None, labels
    return x, labels


class _Weights:
    """The weights a signed permutation must preserve, with the checks and sign solving."""

    def __init__(self, blocks_hh, blocks_in, biases, signs: bool, tol: float):
        self.Ws = [np.asarray(W, dtype=np.float64) for W in blocks_hh]
        self.Us = [np.asarray(U, dtype=np.float64) for U in blocks_in]
        self.bs = [np.asarray(b, dtype=np.float64).reshape(-1) for b in biases]
        self.N = self.Ws[0].shape[0]
        self.d = self.Us[0].shape[1] if self.Us else 0
        self.signs = signs
        self.tol = tol

    def _ratios(self, A: np.ndarray, B: np.ndarray):
        """Entries of A against B (= A permuted): None if magnitudes differ, else the nonzero ratios' mask."""
        if np.max(np.abs(np.abs(A) - np.abs(B)), initial=0.0) > self.tol:
            return None
        nz = np.abs(A) > self.tol
        if not self.signs:
            return nz if np.max(np.abs(A - B), initial=0.0) <= self.tol else None
        return nz

    def solve(self, perm: np.ndarray, iperm: np.ndarray) -> SignedPermutation | None:
        """Signs making (perm, iperm) a symmetry, or None. Free components get +1 at their root."""
        N, d = self.N, self.d
        edges = []
        for W in self.Ws:
            Wp = W[np.ix_(perm, perm)]
            nz = self._ratios(W, Wp)
            if nz is None or np.max(np.abs(np.diag(W) - np.diag(Wp)), initial=0.0) > self.tol:
                return None
            i, j = np.nonzero(nz)
            edges.append((i, j, np.sign(W[i, j] * Wp[i, j])))
        for U in self.Us:
            Up = U[np.ix_(perm, iperm)]
            nz = self._ratios(U, Up)
            if nz is None:
                return None
            i, k = np.nonzero(nz)
            edges.append((i, N + k, np.sign(U[i, k] * Up[i, k])))
        for b in self.bs:
            bp = b[perm]
            nz = self._ratios(b, bp)
            if nz is None:
                return None
            i = np.flatnonzero(nz)
            edges.append((i, np.full(i.size, N + d), np.sign(b[i] * bp[i])))
        if not self.signs:
            return SignedPermutation(perm, np.ones(N), iperm, np.ones(d))
        x, _ = _parity_solve(N + d, edges)
        if x is None:
            return None
        g = SignedPermutation(perm, x[:N], iperm, x[N:N + d])
        return g if self.verify(g) else None

    def verify(self, g: SignedPermutation) -> bool:
        P = _dense(g.perm, g.sign)
        Q = _dense(g.input_perm, g.input_sign)
        ok = all(np.max(np.abs(P @ W @ P.T - W), initial=0.0) <= self.tol for W in self.Ws)
        ok = ok and all(np.max(np.abs(P @ U @ Q.T - U), initial=0.0) <= self.tol for U in self.Us)
        return ok and all(np.max(np.abs(P @ b - b), initial=0.0) <= self.tol for b in self.bs)

    def sign_only(self) -> list[SignedPermutation]:
        """Generators of the pure sign symmetries (perm = identity): one per free component."""
        if not self.signs:
            return []
        N, d = self.N, self.d
        edges = []
        for W in self.Ws:
            i, j = np.nonzero(np.abs(W) > self.tol)
            edges.append((i, j, np.ones(i.size)))
        for U in self.Us:
            i, k = np.nonzero(np.abs(U) > self.tol)
            edges.append((i, N + k, np.ones(i.size)))
        for b in self.bs:
            i = np.flatnonzero(np.abs(b) > self.tol)
            edges.append((i, np.full(i.size, N + d), np.ones(i.size)))
        _, labels = _parity_solve(N + d, edges)
        gens = []
        for c in np.unique(labels):
            if c == labels[N + d]:
                continue
            flip = np.where(labels[: N + d] == c, -1.0, 1.0)
            if np.all(flip[:N] == 1):
                continue  # flips unused inputs only
            gens.append(SignedPermutation(np.arange(N), flip[:N], np.arange(d), flip[N:]))
        return gens


def _dense(perm: np.ndarray, sign: np.ndarray) -> np.ndarray:
    M = np.zeros((perm.size, perm.size))
    M[np.arange(perm.size), perm] = sign
    return M


def signed_permutation_symmetries(blocks_hh, blocks_in=(), biases=(), *, signs: bool = True,
                                  tol: float = 1e-6, max_nodes: int = 2000) -> PermutationSymmetries:
    """signed_permutation_symmetries(blocks_hh, blocks_in, biases, *, signs, tol, max_nodes) -> PermutationSymmetries

    Generators of the group of signed permutations ``(P, Q)`` of units and
    inputs with ``P W P^T = W`` for every recurrent block, ``P U Q^T = U`` for
    every input block and ``P b = b`` for every bias.

    Arguments:
        blocks_hh: [N, N] arrays (one for an Elman cell; one per gate for GRU / LSTM).
        blocks_in: [N, d] arrays.
        biases: [N] arrays.
        signs: allow sign flips (an odd nonlinearity); else permutations only.
        tol: relative tolerance; entries are compared to ``tol * max|weight|``.
        max_nodes: cap on colour refinements; the result says whether the search completed.

    Colour refinement with individualisation on the graph whose vertices are
    the units and input channels and whose edge weights are the (absolute)
    weights; every candidate is verified on the weights themselves.
    """
    scale = max([float(np.max(np.abs(np.asarray(x))) if np.asarray(x).size else 0.0)
                 for x in (*blocks_hh, *blocks_in, *biases)] + [1e-300])
    atol = tol * scale
    w = _Weights(blocks_hh, blocks_in, biases, signs, atol)
    N, d = w.N, w.d
    V = N + d
    M = len(w.Ws)
    E = torch.zeros(max(M, len(w.Us), 1), V, V, dtype=torch.float64)
    for m, W in enumerate(w.Ws):
        E[m, :N, :N] = torch.as_tensor(W)
    for m, U in enumerate(w.Us):
        E[m, :N, N:] = torch.as_tensor(U)
    if signs:
        E = E.abs()
    # initial colours: vertex type, the diagonal (exactly invariant), |b| (or b)
    feats = [np.r_[np.zeros(N), np.ones(d)] * (10 * scale + 10 * atol + 1.0)]
    feats += [np.r_[np.diag(W), np.zeros(d)] for W in w.Ws]
    feats += [np.r_[np.abs(b) if signs else b, np.zeros(d)] for b in w.bs]
    init = _cluster(torch.as_tensor(np.stack(feats, axis=1)), atol)
    ref = _Refiner(E, init, atol)

    gens: list[SignedPermutation] = list(w.sign_only())
    complete = True

    def leaf(a: np.ndarray, b: np.ndarray) -> SignedPermutation | None:
        # a and b discrete: vertex i of copy A <-> the vertex of copy B with the same colour
        where_b = np.empty(V, dtype=np.int64)
        where_b[b] = np.arange(V)
        m = where_b[a]
        return w.solve(m[:N], m[N:] - N)

    def fresh(a, b, v, x):
        a, b = a.copy(), b.copy()
        c = max(a.max(), b.max()) + 1
        a[v], b[x] = c, c
        return a, b

    def find(a, b) -> SignedPermutation | None:
        """One automorphism compatible with the colourings (a, b), by depth-first search."""
        nonlocal complete
        if ref.nodes >= max_nodes:
            complete = False
            return None
        r = ref.refine(a, b)
        if r is None:
            return None
        a, b = r
        cell = _target_cell(a)
        if cell is None:
            return leaf(a, b)
        v = int(np.flatnonzero(a == cell)[0])
        for x in np.flatnonzero(b == cell):
            g = find(*fresh(a, b, v, int(x)))
            if g is not None:
                return g
        return None

    # walk down the identity path; at each level find one automorphism per new image of the base point
    a = init.copy()
    while True:
        r = ref.refine(a, a.copy())
        a = r[0]
        cell = _target_cell(a)
        if cell is None or ref.nodes >= max_nodes:
            complete = complete and cell is None
            break
        v = int(np.flatnonzero(a == cell)[0])
        level_gens: list[SignedPermutation] = []
        orbit = {v}
        for x in np.flatnonzero(a == cell):
            x = int(x)
            if x in orbit:
                continue
            g = find(*fresh(a, a.copy(), v, x))
            if g is not None:
                level_gens.append(g)
                orbit = _orbit(v, level_gens, N)
        gens += level_gens
        a, _ = fresh(a, a.copy(), v, v)
    gens = [g for g in gens if not (np.array_equal(g.perm, np.arange(N)) and np.all(g.sign == 1))]
    # a shift by N - k generates what a shift by k does: name the smaller one
    gens = [g.inverse() if (np.array_equal(g.perm, (np.arange(N) + int(g.perm[0])) % N)
                            and (-int(g.perm[0])) % N > N // 2) else g for g in gens]
    return PermutationSymmetries(gens, complete, ref.nodes, atol)


def _target_cell(colours: np.ndarray) -> int | None:
    """The smallest colour class with more than one vertex (None when discrete)."""
    counts = np.bincount(colours)
    multi = np.flatnonzero(counts > 1)
    if multi.size == 0:
        return None
    return int(multi[np.argmin(counts[multi])])


def _orbit(v: int, gens: list[SignedPermutation], N: int) -> set[int]:
    """Orbit of vertex v (hidden or input, input k as N + k) under the generators' vertex maps.

    A symmetry sends vertex i to perm[i] (copy A's i is copy B's perm[i]);
    the orbit is v's connected component in the graph of all these maps.
    """
    if not gens:
        return {v}
    V = N + gens[0].input_perm.size
    src = np.concatenate([np.arange(V)] * len(gens))
    dst = np.concatenate([np.r_[g.perm, g.input_perm + N] for g in gens])
    _, labels = connected_components(coo_matrix((np.ones(src.size), (src, dst)), shape=(V, V)), directed=False)
    return set(np.flatnonzero(labels == labels[v]).tolist())


# ---- the group they generate ------------------------------------------------------------
def generate_group(gens: list[SignedPermutation], N: int, d: int, *, max_order: int = 4096
                   ) -> tuple[list[SignedPermutation], list[str], bool]:
    """All elements generated by ``gens`` (identity first), their words, and whether the closure completed."""
    identity = SignedPermutation(np.arange(N), np.ones(N), np.arange(d), np.ones(d),
                                 *((np.arange(gens[0].output_perm.size), np.ones(gens[0].output_perm.size))
                                   if gens and gens[0].output_perm is not None else (None, None)))
    elements, words = [identity], ["e"]
    seen = {identity.key()}
    i = 0
    while i < len(elements):
        for k, g in enumerate(gens):
            h = g.compose(elements[i])
            if h.key() not in seen:
                if len(elements) >= max_order:
                    return elements, words, False
                seen.add(h.key())
                elements.append(h)
                words.append(f"g{k + 1}" if words[i] == "e" else f"g{k + 1} {words[i]}")
        i += 1
    return elements, words, True


def describe(g: SignedPermutation) -> str:
    """A readable name: sign flip, cyclic shift by k, reflection, or the cycle type."""
    N = g.perm.size
    idx = np.arange(N)
    signs = "" if np.all(g.sign == 1) else (" with sign flip" if np.all(g.sign == -1) else
                                           f" with {int(np.sum(g.sign < 0))} sign flips")
    if np.array_equal(g.perm, idx):
        if np.all(g.sign == -1):
            return "sign flip"
        return f"sign flip of {int(np.sum(g.sign < 0))} of {N} units"
    shift = int((idx[0] - g.perm[0]) % N)
    if np.array_equal(g.perm, (idx - shift) % N):
        return f"cyclic shift by {shift}" + signs
    c = int((g.perm[0]) % N)
    if np.array_equal(g.perm, (c - idx) % N):
        return f"reflection i -> {c} - i" + signs
    lengths, seen = [], np.zeros(N, dtype=bool)
    for s in range(N):
        if not seen[s]:
            k, x = 0, s
            while not seen[x]:
                seen[x], x, k = True, g.perm[x], k + 1
            if k > 1:
                lengths.append(k)
    return f"permutation of {sum(lengths)} units (cycles {sorted(lengths, reverse=True)})" + signs


def describe_output(g: SignedPermutation) -> str:
    """How the outputs transform under ``g``: identity, sign flip or a signed permutation."""
    p, s = g.output_perm, g.output_sign
    if p is None:
        return "not equivariant"
    if np.array_equal(p, np.arange(p.size)):
        if np.all(s == 1):
            return "identity"
        return "sign flip" if np.all(s == -1) else f"sign flip of {int(np.sum(s < 0))} of {p.size} outputs"
    return f"signed permutation {p.tolist()} with signs {s.astype(int).tolist()}"


def name_group(gens: list[SignedPermutation], elements: list[SignedPermutation], complete: bool) -> str:
    """``trivial``, ``Z_n``, ``Z_a x Z_b``, ``D_n``, or ``a group of order K``."""
    if not gens:
        return "trivial"
    G = len(elements)
    if not complete:
        return f"a group of order > {G} with {len(gens)} generators"
    abelian = all(a.compose(b).key() == b.compose(a).key() for a in gens for b in gens)
    orders = np.array([e.order() for e in elements])
    if abelian:
        if orders.max() == G:
            return f"Z_{G}"
        gen_orders = [g.order() for g in gens]
        if math.prod(gen_orders) == G:
            return " x ".join(f"Z_{k}" for k in sorted(gen_orders))
        return f"an abelian group of order {G}"
    if G % 2 == 0 and np.any(orders == G // 2):
        r = elements[int(np.flatnonzero(orders == G // 2)[0])]
        rotations, x = {r.key()}, r
        for _ in range(G // 2):
            x = x.compose(r)
            rotations.add(x.key())
        if all(o == 2 for e, o in zip(elements, orders) if e.key() not in rotations):
            return f"D_{G // 2}"
    return f"a group of order {G}"


def readout_action(g: SignedPermutation, W_r: np.ndarray, b_r: np.ndarray | None, tol: float
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """The output signed permutation R with ``W_r P = R W_r`` and ``R b_r = b_r``, or None."""
    P = _dense(g.perm, g.sign)
    WP = W_r @ P
    o = W_r.shape[0]
    perm, sign = np.empty(o, dtype=np.int64), np.empty(o)
    b = np.zeros(o) if b_r is None else b_r
    for i in range(o):
        # row i of W_r P must be +- a row of W_r with the matching bias
        dp = np.max(np.abs(WP[i][None] - W_r), axis=1)
        dm = np.max(np.abs(WP[i][None] + W_r), axis=1)
        cand = [(dp[k], k, 1.0) for k in range(o) if dp[k] <= tol and abs(b[i] - b[k]) <= tol]
        cand += [(dm[k], k, -1.0) for k in range(o) if dm[k] <= tol and abs(b[i] + b[k]) <= tol]
        if not cand:
            return None
        _, perm[i], sign[i] = min(cand)
    if not np.array_equal(np.sort(perm), np.arange(o)):
        return None
    return perm, sign


def as_group(elements: list[SignedPermutation], words: list[str], name: str, *, n_state: int,
             n_outputs: int, state_copies: int = 1) -> Group:
    """A finite :class:`~rnnprobe.groups.Group` from signed permutations (identity first).

    ``state_copies=2`` applies the unit permutation to both halves of an LSTM
    state ``[h, c]``. Outputs transform by the elements' output permutations
    when they have them, else trivially.
    """
    N = elements[0].perm.size
    G = len(elements)
    if state_copies * N != n_state:
        raise ValueError(f"{state_copies} copies of {N} units do not make a state of {n_state}")
    hp = np.stack([np.concatenate([g.perm + k * N for k in range(state_copies)]) for g in elements])
    hs = np.stack([np.tile(g.sign, state_copies) for g in elements])
    ip = np.stack([g.input_perm for g in elements]).reshape(G, -1)
    is_ = np.stack([g.input_sign for g in elements]).reshape(G, -1)
    if elements[0].output_perm is not None:
        op = np.stack([g.output_perm for g in elements])
        os_ = np.stack([g.output_sign for g in elements])
    else:
        op, os_ = np.tile(np.arange(n_outputs), (G, 1)), np.ones((G, n_outputs))
    return Group(spec="discovered", name=name, continuous=False,
                 hidden=Action(n_state, perm=hp.astype(np.int64), sign=hs),
                 inputs=Action(ip.shape[1], perm=ip.astype(np.int64), sign=is_),
                 outputs=Action(n_outputs, perm=op.astype(np.int64), sign=os_), labels=tuple(words))


# ---- continuous: the commutant of W ---------------------------------------------------------
def commutant(W: np.ndarray, *, tol: float = 1e-6, svd_max: int = 32) -> tuple[np.ndarray, str]:
    """commutant(W, *, tol, svd_max) -> (basis [D, N, N], method)

    A basis of the real matrices A with ``A W = W A`` (orthonormal in the
    Frobenius inner product for the SVD route, unit-norm otherwise).

    N <= ``svd_max``: the null space of ``I kron W^T - W kron I`` (row-major
    vec), singular values below ``tol * ||W||_2 * 2``. Larger N: from the
    eigendecomposition, eigenvalues within ``tol * max(1, rho(W))`` of each
    other clustered together; raises ValueError when the eigenvectors are
    too ill-conditioned (cond > 1e10) for that route to be trusted.
    """
    W = np.asarray(W, dtype=np.float64)
    N = W.shape[0]
    norm = max(np.linalg.norm(W, 2), 1e-300)
    if N <= svd_max:
        I = np.eye(N)
        K = np.kron(I, W.T) - np.kron(W, I)
        _, s, Vt = np.linalg.svd(K)
        null = Vt[s <= tol * 2 * norm]
        return null.reshape(-1, N, N), "svd"
    lam, V = np.linalg.eig(W)
    cond = np.linalg.cond(V)
    if not cond < 1e10:
        raise ValueError(f"W_hh's eigenvectors are ill-conditioned (cond {cond:.2e}): the eigen route to the "
                         f"commutant cannot be trusted for N={N} > {svd_max}")
    Vinv = np.linalg.inv(V)
    thresh = tol * max(1.0, float(np.max(np.abs(lam))))
    close = np.abs(lam[:, None] - lam[None, :]) <= thresh
    _, labels = connected_components(coo_matrix(close), directed=False)
    basis = []
    done = set()
    for c in np.unique(labels):
        if c in done:
            continue
        I = np.flatnonzero(labels == c)
        mu = lam[I].mean()
        conj = labels[np.argmin(np.abs(lam - np.conj(mu)))]
        done.update({c, conj})
        blocks = [np.einsum("i,j->ij", V[:, i], Vinv[j]) for i in I for j in I]
        if conj == c:
            # a real cluster: Re and Im parts span its m^2-dimensional real commutant
            mats = np.array([x for blk in blocks for x in (blk.real, blk.imag)])
            flat = mats.reshape(len(mats), -1)
            u, s, vt = np.linalg.svd(flat, full_matrices=False)
            keep = s > 1e-10 * s[0]
            basis += list(vt[keep][: I.size ** 2].reshape(-1, N, N))
        else:
            for blk in blocks:
                basis += [blk.real / np.linalg.norm(blk.real), blk.imag / np.linalg.norm(blk.imag)]
    return np.array(basis), "eig"


def surviving_generators(basis: np.ndarray, *, nonlinearity, W_uh: np.ndarray | None, b: np.ndarray | None,
                         n_samples: int = 6, seed: int = 0, tol: float = 1e-8) -> np.ndarray:
    """surviving_generators(basis, *, nonlinearity, W_uh, b, ...) -> generators [k, N, N]

    The part of the commutant that survives the rest of the cell: generators
    ``A`` (combinations of ``basis``) with ``phi'(x) * (A x) = A phi(x)``
    (the one-parameter group exp(tA) commutes with the pointwise phi,
    checked at ``n_samples`` random preactivations), ``A b = 0`` (the bias is
    invariant) and ``A W_uh`` in the column space of ``W_uh`` (an input action
    ``A_u`` with ``W_uh A_u = A W_uh`` exists). Returned orthonormalised
    (Frobenius); empty [0, N, N] when nothing survives: the case for tanh,
    whose exp(tA) would have to be a signed permutation for every t.
    """
    D = basis.shape[0]
    N = basis.shape[1] if D else 0
    if D == 0:
        return basis
    rng = np.random.default_rng(seed)
    X = torch.as_tensor(rng.normal(0.0, 1.5, size=(n_samples, N)))
    phiX, dX = nonlinearity.phi(X).numpy(), nonlinearity.dphi(X).numpy()
    X = X.numpy()
    rows = []
    AX = np.matmul(basis, X.T).transpose(0, 2, 1)  # [D, S, N]
    APhi = np.matmul(basis, phiX.T).transpose(0, 2, 1)
    rows.append((dX[None] * AX - APhi).reshape(D, -1))
    if b is not None and np.any(b != 0):
        rows.append(basis @ b)
    if W_uh is not None and W_uh.size:
        proj = np.eye(N) - W_uh @ np.linalg.pinv(W_uh)
        rows.append(np.matmul(proj, np.matmul(basis, W_uh)).reshape(D, -1))
    L = np.concatenate(rows, axis=1).T  # [constraints, D]
    null = _null_space(L, tol, floor=1e-300)
    if null.size == 0:
        return np.zeros((0, N, N))
    gens = np.einsum("kd,dij->kij", null, basis)
    flat = gens.reshape(len(gens), -1)
    q, r = np.linalg.qr(flat.T)
    keep = np.abs(np.diag(r)) > 1e-10
    return q.T[keep].reshape(-1, N, N)


def skew_part(gens: np.ndarray, *, tol: float = 1e-8) -> np.ndarray:
    """The skew-symmetric generators (compact, rotation-like: exp(tA) orthogonal) in the span of ``gens``."""
    if gens.shape[0] == 0:
        return gens
    sym = (gens + gens.transpose(0, 2, 1)).reshape(gens.shape[0], -1).T
    null = _null_space(sym, tol, floor=1.0)
    if null.size == 0:
        return np.zeros((0,) + gens.shape[1:])
    return np.einsum("kd,dij->kij", null, gens)


def _null_space(M: np.ndarray, rtol: float, *, floor: float) -> np.ndarray:
    """Rows spanning the right null space of ``M``: singular values <= rtol * max(sigma_max, floor).

    A thin SVD (a wide M is padded with zero rows), never the full left factor of a tall M.
    """
    rows, cols = M.shape
    if rows < cols:
        M = np.vstack([M, np.zeros((cols - rows, cols))])
    _, s, vt = np.linalg.svd(M, full_matrices=False)
    return vt[s <= rtol * max(float(s.max(initial=0.0)), floor)]
