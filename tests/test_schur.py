"""rnnprobe schur: ordered real Schur form, split conditioning, nonnormality, coupling ablation.

Every number is checked against an independent reference computed here:
numpy/scipy eigenvalues and norms, LAPACK's own ``dtrsen``/``dtrsyl``,
scipy's ``schur(sort=...)`` invariant subspaces, closed forms, and the cell's
own rollout.
"""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg.lapack import dtrsen
from typer.testing import CliRunner

from rnnprobe.analyses import schur as A
from rnnprobe.analyses.base import RunContext
from rnnprobe.cells import ElmanCell
from rnnprobe.cells.base import NoRecurrentMatrix
from rnnprobe.errors import InputError
from rnnprobe.model import Model
from rnnprobe.numerics import schur as S
from rnnprobe.pipeline import RunSettings, analyze
from rnnprobe.tasks import TaskData

ROOT = Path(__file__).resolve().parents[1]
COPY_SAMPLE = ROOT / "sample_checkpoints" / "copy_rnn64.pt"


def random_orthogonal(n, rng):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def rotation_blocks(n, rng, moduli=None, *, tie=False):
    """A matrix with many complex pairs (and near-ties when ``tie``), in a random basis."""
    B = np.zeros((n, n))
    i = 0
    while i < n:
        r = 1.0 if tie else (rng.uniform(0.1, 1.5) if moduli is None else moduli[i])
        if tie:
            r += rng.choice([0.0, 1e-12, -1e-12])
        if i + 1 < n:
            th = rng.uniform(0.05, np.pi - 0.05)
            B[i:i + 2, i:i + 2] = r * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
            i += 2
        else:
            B[i, i] = r
            i += 1
    B += np.triu(rng.standard_normal((n, n)) * 0.3, 2)
    Q = random_orthogonal(n, rng)
    return Q @ B @ Q.T


def check_ordered(W, o, order):
    """The ordered form reconstructs W, Q is orthogonal, and the eigenvalues are W's, in order."""
    n = W.shape[0]
    assert np.linalg.norm(o.Q @ o.T @ o.Q.T - W) <= 1e-12 * max(np.linalg.norm(W), 1)
    assert np.linalg.norm(o.Q.T @ o.Q - np.eye(n)) <= 1e-12
    assert np.all(np.tril(o.T, -2) == 0)
    ref = np.linalg.eigvals(W)
    lam = o.eigenvalues
    tol = 1e-8 * max(o.rho, 1e-300) + 1e-10
    if order == "modulus":
        key, want = -np.abs(lam), -np.sort(np.abs(ref))[::-1]
    elif order == "real":
        key, want = -lam.real, -np.sort(ref.real)[::-1]
    else:
        key, want = np.abs(np.angle(lam)), np.sort(np.abs(np.angle(ref)))
        tol = 1e-7
    # the key (-|lambda|, -Re lambda or |arg lambda|) is nondecreasing up to the tie tolerance, with numpy's values
    assert np.all(np.diff(key) >= -tol), key
    np.testing.assert_allclose(key, want, atol=1e-7)
    assert o.violations == 0 and o.refusals == []


# ---------------------------------------------------------------------------------
# ordering
# ---------------------------------------------------------------------------------
@settings(max_examples=40)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["gauss", "pairs", "ties"]),
       order=st.sampled_from(S.ORDERS))
def test_ordering_is_monotone_and_reconstructs(n, seed, kind, order):
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        W = rng.standard_normal((n, n)) / np.sqrt(n)
    else:
        W = rotation_blocks(n, rng, tie=kind == "ties")
    o = S.ordered_schur(W, order, window=8)  # small windows: the blocked path runs too
    check_ordered(W, o, order)


def test_random_1024_orders_and_reconstructs_to_1e12():
    rng = np.random.default_rng(1024)
    W = rng.standard_normal((1024, 1024)) / 32
    dec = A.decompose(W)
    check_ordered(W, dec.schur, "modulus")
    assert dec.reconstruction_error <= 1e-12 and dec.orthogonality_error <= 1e-12


def test_reversed_order_through_many_windows():
    # start from ascending moduli: every block must travel, across many windows
    rng = np.random.default_rng(3)
    W = rng.standard_normal((150, 150)) / np.sqrt(150)
    T, Q = scipy.linalg.schur(W, output="real")
    T, Q = np.array(T, order="F"), np.array(Q, order="F")
    r = S.order_ranks(S.block_eigenvalues(T), "modulus")
    S.reorder_schur(T, Q, r.max() - r, window=16)
    assert np.all(np.diff(np.abs(S.block_eigenvalues(T))) >= -1e-12)
    stats = S.reorder_schur(T, Q, S.order_ranks(S.block_eigenvalues(T), "modulus"), window=16)
    assert stats.complete and stats.windows > 10 and stats.refusals == []
    lam = S.block_eigenvalues(T)
    assert np.all(np.diff(np.abs(lam)) <= 1e-12)
    np.testing.assert_allclose(Q @ T @ Q.T, W, atol=1e-12)


def test_orthogonal_ties_order_by_angle():
    # all |lambda| = 1: one tie group, ordered by |arg| (the positive real axis first)
    rng = np.random.default_rng(5)
    W = random_orthogonal(31, rng)
    o = S.ordered_schur(W)
    ang = np.abs(np.angle(o.eigenvalues))
    assert np.all(np.diff(ang) >= -1e-9)


def test_refused_swap_is_recorded_not_silent():
    # two blocks with nearly equal eigenvalues and large couplings: LAPACK refuses to swap them
    T = np.array([[-9.78871893e-02, 2.23013645e-09, -2.18516611e+00, 1.50294467e+00],
                  [-5.41628491e+02, -9.78871893e-02, -4.90556230e+00, 6.48239484e-01],
                  [0.0, 0.0, -9.78763302e-02, 3.02019622e-13],
                  [0.0, 0.0, -1.00242772e-07, -9.78763302e-02]])
    o = S.ordered_schur(T, "real")  # the lower block has the larger real part: it must move up
    assert len(o.refusals) == 1 and o.violations == 1
    ref = o.refusals[0]
    assert (ref.position, ref.blocked_by) == (2, 0)
    assert ref.eigenvalue_real == pytest.approx(-9.78763302e-02)
    assert ref.blocked_by_real == pytest.approx(-9.78871893e-02)
    np.testing.assert_allclose(o.Q @ o.T @ o.Q.T, T, atol=1e-14)
    ctx = RunContext()
    res = A.run(Model(cell=ElmanCell(T)), A.SchurOptions(order="real", transient_steps=3), ctx)
    assert len(res.refused_swaps) == 1 and res.summary()["refused_swaps"] == 1
    assert any("refused" in w for w in ctx.warnings)
    # R = the block that cannot move up: the split cannot hold exactly R, and says so
    dec = A.decompose(T, order="real", retain=2)
    assert not dec.schur.split_exact
    assert any("left an eigenvalue of C among the first 2 rows" in w for w in dec.warnings)
    assert A.decompose(T, order="modulus", retain=2).schur.split_exact


def test_block_structure_helpers():
    T = np.array([[1.0, 2.0, 3.0, 4.0], [-0.5, 1.0, 5.0, 6.0], [0.0, 0.0, 0.3, 7.0], [0.0, 0.0, 0.0, -2.0]])
    np.testing.assert_array_equal(S.block_starts(T), [0, 2, 3])
    np.testing.assert_array_equal(S.block_sizes(T), [2, 1, 1])
    lam = S.block_eigenvalues(T)
    np.testing.assert_allclose(lam, [1 + 1j * np.sqrt(1.0), 1 - 1j, 0.3, -2.0])
    mask = S.coupling_mask(T)
    want = np.zeros((4, 4), dtype=bool)
    want[:2, 2:] = True
    want[2, 3] = True
    np.testing.assert_array_equal(mask, want)


# ---------------------------------------------------------------------------------
# Sylvester solves and dtrsen's condition numbers
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("transpose", [False, True])
def test_quasi_sylvester_matches_scipy(transpose):
    rng = np.random.default_rng(7)
    A_, _ = scipy.linalg.schur(rng.standard_normal((37, 37)), output="real")
    B_, _ = scipy.linalg.schur(rng.standard_normal((29, 29)) + 6 * np.eye(29), output="real")
    C = rng.standard_normal((37, 29))
    X, scale, info = S.solve_quasi_sylvester(A_, B_, C, transpose=transpose, leaf=5)
    assert scale == 1.0 and info == 0
    if transpose:  # A^T X - X B^T = C
        ref = scipy.linalg.solve_sylvester(A_.T, -B_.T, C)
    else:
        ref = scipy.linalg.solve_sylvester(A_, -B_, C)
    np.testing.assert_allclose(X, ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("n,frac", [(12, 0.3), (60, 0.1), (60, 0.5), (140, 0.25)])
def test_split_condition_equals_lapack_dtrsen(n, frac):
    rng = np.random.default_rng(n)
    o = S.ordered_schur(rng.standard_normal((n, n)) / np.sqrt(n))
    m = int(frac * n)
    m += int(o.T[m, m - 1] != 0)
    s, sep, info = S.split_condition(o.T, m, leaf=8)
    sel = np.zeros(n, dtype=np.int32)
    sel[:m] = 1
    ref = dtrsen(sel, o.T, o.Q, job="B", wantq=0, lwork=2 * m * (n - m), liwork=m * (n - m))
    assert ref[-1] == 0 and info == 0
    np.testing.assert_allclose([s, sep], [ref[5], ref[6]], rtol=1e-9)


def test_split_condition_trivial_splits():
    T = np.triu(np.arange(1.0, 10.0).reshape(3, 3))
    assert S.split_condition(T, 0)[:2] == (1.0, np.abs(T).sum(axis=0).max())
    assert S.split_condition(T, 3)[0] == 1.0
    with pytest.raises(ValueError, match="cuts a 2x2 block"):
        S.split_condition(np.array([[1.0, 2.0], [-3.0, 1.0]]), 1)


# ---------------------------------------------------------------------------------
# powers and nonnormality
# ---------------------------------------------------------------------------------
def test_triu_matmul_equals_matmul():
    rng = np.random.default_rng(2)
    o = S.ordered_schur(rng.standard_normal((70, 70)))
    splits = S._tri_splits(o.T, 9)
    Tt = torch.as_tensor(o.T)
    P = torch.as_tensor(o.T @ o.T)
    np.testing.assert_allclose(S.triu_matmul(P, Tt, splits).numpy(), o.T @ o.T @ o.T, atol=1e-10)


@pytest.mark.parametrize("exact_max_n", [1000, 0])  # exact svdvals / Lanczos bidiagonalisation
def test_power_norms_match_numpy(exact_max_n):
    rng = np.random.default_rng(11)
    W = rng.standard_normal((40, 40)) / np.sqrt(40) * 1.02
    o = S.ordered_schur(W)
    norms, early = S.power_norms(o.T, 60, exact_max_n=exact_max_n, leaf=8, stop_at_one=False)
    ref = [np.linalg.norm(np.linalg.matrix_power(W, t), 2) for t in range(1, 61)]
    assert not early
    np.testing.assert_allclose(norms, ref, rtol=1e-10)


def test_transient_amplification_of_a_jordan_block_closed_form():
    # W = [[a, b], [0, a]]: W^t = [[a^t, t a^(t-1) b], [0, a^t]], ||.||_2 = (sqrt(4 x^2 + y^2) + |y|) / 2
    a, b = 0.9, 3.0
    W = np.array([[a, b], [0.0, a]])
    t = np.arange(1, 201)
    x, y = a**t, t * a ** (t - 1) * b
    closed = (np.sqrt(4 * x**2 + y**2) + np.abs(y)) / 2
    stats, norms = A.nonnormality(W, S.ordered_schur(W).T, steps=200)
    assert stats["transient_amplification"] == pytest.approx(closed.max(), rel=1e-12)
    assert stats["transient_argmax"] == int(np.argmax(closed)) + 1
    np.testing.assert_allclose(norms, closed[:norms.size], rtol=1e-12)  # stopped once below 1 (exact max)
    assert norms.size < 200 and norms[-1] < 1


@pytest.mark.parametrize("kind", ["orthogonal", "symmetric", "normal_blocks"])
def test_normal_matrices_have_no_couplings(kind):
    rng = np.random.default_rng(4)
    n = 24
    Q = random_orthogonal(n, rng)
    if kind == "orthogonal":
        W = Q
    elif kind == "symmetric":
        W = Q @ np.diag(rng.uniform(-2, 2, n)) @ Q.T
    else:
        W = rotation_blocks(n, rng)
        # remove its couplings: a block-diagonal rotation matrix in a random basis is normal
        T, Z = scipy.linalg.schur(W, output="real")
        T = np.where(S.coupling_mask(T), 0.0, T)
        i = np.nonzero(np.diagonal(T, -1))[0]
        r = np.sqrt(np.abs(T[i, i + 1] * T[i + 1, i]))
        T[i, i + 1], T[i + 1, i] = -r, r
        W = Z @ T @ Z.T
    dec = A.decompose(W)
    stats, _ = A.nonnormality(W, dec.schur.T, steps=20)
    scale = np.linalg.norm(W)
    assert stats["henrici"] <= 1e-12 * scale
    assert stats["coupling_fraction"] <= 1e-12 and stats["commutator"] <= 1e-12
    assert stats["eigvec_condition"] == pytest.approx(1.0, abs=1e-8)
    assert stats["norm2"] == pytest.approx(np.max(np.abs(np.linalg.eigvals(W))), rel=1e-10)


def test_henrici_split_matches_eigenvalues():
    rng = np.random.default_rng(8)
    W = rng.standard_normal((30, 30))
    dec = A.decompose(W)
    stats, _ = A.nonnormality(W, dec.schur.T, steps=5)
    ref = np.sqrt(np.linalg.norm(W) ** 2 - np.sum(np.abs(np.linalg.eigvals(W)) ** 2))
    assert stats["henrici"] == pytest.approx(ref, rel=1e-9)
    assert stats["henrici"] ** 2 == pytest.approx(stats["henrici_couplings"] ** 2 + stats["henrici_blocks"] ** 2)
    comm = np.linalg.norm(W @ W.T - W.T @ W) / np.linalg.norm(W) ** 2
    assert stats["commutator"] == pytest.approx(comm, rel=1e-12)
    _, V = np.linalg.eig(W)
    assert stats["eigvec_condition"] == pytest.approx(np.linalg.cond(V / np.linalg.norm(V, axis=0)), rel=1e-6)
    assert stats["norm2"] == pytest.approx(np.linalg.norm(W, 2), rel=1e-12)


# ---------------------------------------------------------------------------------
# the R/C split
# ---------------------------------------------------------------------------------
def test_pinching_identity():
    # zeroing T_C->R equals P_R W P_R + P_C W P_C, with P_R from scipy's own sorted Schur form
    rng = np.random.default_rng(9)
    n = 50
    W = rng.standard_normal((n, n)) / np.sqrt(n)
    dec = A.decompose(W, retain_alpha=0.6)
    Q, T, m = dec.schur.Q, dec.schur.T, dec.m
    rho = dec.schur.rho
    Ts, Zs, sdim = scipy.linalg.schur(W, output="real", sort=lambda x, y: np.hypot(x, y) >= 0.6 * rho)
    assert sdim == m
    P_R = Zs[:, :m] @ Zs[:, :m].T
    P_C = np.eye(n) - P_R
    ablated = Q @ np.where(A.coupling_regions(T, m)["T_C->R"], 0.0, T) @ Q.T
    np.testing.assert_allclose(ablated, P_R @ W @ P_R + P_C @ W @ P_C, atol=1e-12)


def test_retain_k_never_splits_a_pair():
    # 0.9, then the pair 0.5 +- 0.4i, then 0.1
    W = np.array([[0.9, 0, 0, 0], [0, 0.5, -0.4, 0], [0, 0.4, 0.5, 0], [0, 0, 0, 0.1]])
    with pytest.raises(InputError, match=r"--retain 2 splits a conjugate pair; use 1 or 3"):
        A.decompose(W, retain=2)
    with pytest.raises(InputError, match=r"--retain 9 exceeds the 4 eigenvalues of W_hh; use at most 4"):
        A.decompose(W, retain=9)
    dec = A.decompose(W, retain=3)
    assert dec.m == 3
    np.testing.assert_allclose(np.sort(np.abs(dec.schur.eigenvalues[:3])), [np.hypot(0.5, 0.4)] * 2 + [0.9])


def test_retain_k_inside_a_tie_is_warned():
    # three rotations: every |lambda| = 1, so which pair is "top 2" is decided by the tie rule (|arg|)
    rot = [np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) for t in (0.3, 1.1, 2.0)]
    Q = random_orthogonal(6, np.random.default_rng(6))
    W = Q @ scipy.linalg.block_diag(*rot) @ Q.T
    dec = A.decompose(W, retain=2)
    assert any("tie in --order modulus" in w for w in dec.warnings)
    np.testing.assert_allclose(np.abs(np.angle(dec.schur.eigenvalues[:2])), 0.3, atol=1e-12)
    assert A.decompose(W, retain_alpha=0.9).warnings == []


def test_real_and_angle_orders_put_r_first():
    rng = np.random.default_rng(12)
    W = rng.standard_normal((40, 40)) / np.sqrt(40)
    for order in ("real", "angle"):
        dec = A.decompose(W, order=order, retain_alpha=0.7)
        lam = dec.schur.eigenvalues
        rho = dec.schur.rho
        assert np.all(np.abs(lam[:dec.m]) >= 0.7 * rho) and np.all(np.abs(lam[dec.m:]) < 0.7 * rho)
        key = -lam.real if order == "real" else np.abs(np.angle(lam))
        for part in (slice(0, dec.m), slice(dec.m, None)):
            assert np.all(np.diff(key[part]) >= -1e-7)


# ---------------------------------------------------------------------------------
# batched rollouts and the ablation
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("form,alpha,phi", [("leaky", 1.0, "tanh"), ("leaky", 0.3, "relu"),
                                            ("rate-outside", 0.2, "tanh"), ("residual", 0.5, "softplus")])
def test_batched_rollout_equals_the_cells_own(form, alpha, phi):
    rng = np.random.default_rng(13)
    n, d, o = 12, 3, 2
    cell = ElmanCell(rng.standard_normal((n, n)) / 3, rng.standard_normal((n, d)), rng.standard_normal(n) * 0.1,
                     rng.standard_normal((o, n)), rng.standard_normal(o), alpha=alpha, nonlinearity=phi, form=form)
    Ws = torch.as_tensor(rng.standard_normal((5, n, n)) / 4)
    inputs = torch.as_tensor(rng.standard_normal((7, 9, d)))
    h0 = torch.as_tensor(rng.standard_normal((7, n)) * 0.1)
    got = A.rollout_variants(cell, Ws, inputs, h0)
    for v in range(5):
        c = cell.replace(W_hh=Ws[v])
        ref = c.readout(c.rollout(h0, inputs))
        np.testing.assert_allclose(got[v].numpy(), ref.numpy(), rtol=1e-12, atol=1e-13)


def planted(n_r=6, n_c=6, seed=0):
    """A linear network whose input and readout live in R, with a coupling chain inside R.

    T: R eigenvalues 0.99 .. 0.94 with a chain T[i, i+1] = 1 (input enters at the
    end of the chain, the readout reads its start: a delay line); C eigenvalues
    0.5 .. 0.25 with random couplings; T_C->R random. W = Q T Q^T.
    """
    rng = np.random.default_rng(seed)
    n = n_r + n_c
    T = np.zeros((n, n))
    T[np.arange(n_r), np.arange(n_r)] = 0.99 - 0.01 * np.arange(n_r)
    T[np.arange(n_r - 1), np.arange(1, n_r)] = 1.0
    T[np.arange(n_r, n), np.arange(n_r, n)] = 0.5 - 0.05 * np.arange(n_c)
    T[n_r:, n_r:] += np.triu(rng.standard_normal((n_c, n_c)) * 0.5, 1)
    T[:n_r, n_r:] = rng.standard_normal((n_r, n_c))
    Q = random_orthogonal(n, rng)
    W = Q @ T @ Q.T
    W_uh = Q[:, n_r - 1:n_r]
    W_r = Q[:, :1].T
    cell = ElmanCell(W, W_uh, None, W_r, None, nonlinearity="linear")
    # the task: random +-1 inputs, targets = the network's own output by a plain numpy recursion
    B, steps = 64, 20
    u = rng.choice([-1.0, 1.0], size=(B, steps, 1))
    h = np.zeros((B, n))
    y = np.zeros((B, steps, 1))
    for t in range(steps):
        h = h @ W.T + u[:, t] @ W_uh.T
        y[:, t] = h @ W_r.T
    task = TaskData(u, y, np.ones((B, steps)), "data", {"path": "planted"}, None, None)
    return Model(cell=cell), task, T, Q


def test_planted_known_answer():
    model, task, T, Q = planted()
    ctx = RunContext(task_source=lambda batch: task)
    res = A.run(model, A.SchurOptions(ablate="couplings", controls=6, transient_steps=10), ctx)
    assert res.n_retained == 6
    assert res.baseline_fvu <= 1e-20
    rows = {tuple(r["blocks"]): r for r in res.ablations}
    assert [r["blocks"] for r in res.ablations] == [[], ["T_RR"], ["T_CC"], ["T_C->R"], ["T_RR", "T_CC"],
                                                   ["T_RR", "T_C->R"], ["T_CC", "T_C->R"],
                                                   ["T_RR", "T_CC", "T_C->R"]]
    for name in (("T_C->R",), ("T_CC",), ("T_CC", "T_C->R")):
        assert abs(rows[name]["delta_fvu"]) <= 1e-8 and rows[name]["invariant"]
    assert rows[("T_RR",)]["delta_fvu"] > 0.5 and not rows[("T_RR",)]["invariant"]
    # rel_norm from the planted T itself (the recovered T equals it up to the signs of Schur vectors)
    np.testing.assert_allclose(rows[("T_C->R",)]["rel_norm"], np.linalg.norm(T[:6, 6:]) / np.linalg.norm(T),
                               rtol=1e-9)
    np.testing.assert_allclose(rows[("T_RR",)]["rel_norm"], np.sqrt(5) / np.linalg.norm(T), rtol=1e-9)
    r = rows[("T_RR",)]
    assert r["sensitivity"] == pytest.approx(r["delta_fvu"] / r["rel_norm"])
    assert rows[()]["delta_fvu"] == 0.0 and rows[()]["sensitivity"] is None and rows[()]["note"]
    # controls: dense perturbations of W (outside R's invariant subspace too) hurt T_C->R's "invariance"
    assert rows[("T_C->R",)]["control_fraction_better"] == 0.0
    assert res.control_delta_fvu.shape == (8, 6) and np.isnan(res.control_delta_fvu[0]).all()


def test_chunking_does_not_change_results(monkeypatch):
    model, task, _, _ = planted(3, 3, seed=5)
    opts = A.SchurOptions(ablate="couplings", controls=3, transient_steps=0)
    whole = A.run(model, opts, RunContext(task_source=lambda batch: task))
    monkeypatch.setattr(A, "_CACHE_BUDGET", 1)  # one recurrent matrix per rollout
    assert A.variant_chunk(model.cell, 64, 20) == 1
    single = A.run(model, opts, RunContext(task_source=lambda batch: task))
    np.testing.assert_allclose(single.control_delta_fvu, whole.control_delta_fvu, rtol=1e-10, atol=1e-14)
    for a, b in zip(single.ablations, whole.ablations):
        assert a["blocks"] == b["blocks"] and a["delta_fvu"] == pytest.approx(b["delta_fvu"], rel=1e-10, abs=1e-14)


def test_control_perturbations_norm_and_pattern():
    rng = np.random.default_rng(14)
    n = 10
    Q = torch.as_tensor(random_orthogonal(n, rng))
    mask = np.triu(np.ones((n, n), dtype=bool), 3)
    g = torch.Generator().manual_seed(1)
    E = A.control_perturbations(Q, mask, 2.5, 4, g)
    np.testing.assert_allclose(torch.linalg.matrix_norm(E).numpy(), 2.5, rtol=1e-12)
    inner = (Q.T @ E @ Q).numpy()
    assert np.abs(inner[:, ~mask]).max() <= 1e-13
    D = A.control_perturbations(Q, None, 0.7, 3, torch.Generator().manual_seed(1))
    np.testing.assert_allclose(torch.linalg.matrix_norm(D).numpy(), 0.7, rtol=1e-12)
    assert np.abs((Q.T @ D @ Q).numpy()[:, ~mask]).max() > 0.01  # dense: off the pattern too
    again = A.control_perturbations(Q, mask, 2.5, 4, torch.Generator().manual_seed(1))
    assert torch.equal(E, again)


def test_pairs_reproduce_the_coupling_blocks():
    model, task, T, Q = planted(4, 4, seed=2)
    ctx = RunContext(task_source=lambda batch: task)
    pairs = A.run(model, A.SchurOptions(ablate="pairs", groups=2, controls=0, transient_steps=0), ctx)
    coup = A.run(model, A.SchurOptions(ablate="couplings", controls=0, transient_steps=0), ctx)
    np.testing.assert_array_equal(pairs.group_starts, [0, 4])
    d = {tuple(r["blocks"]): r["delta_fvu"] for r in coup.ablations}
    np.testing.assert_allclose(pairs.pairs_delta_fvu[0, 0], d[("T_RR",)], rtol=1e-12)
    np.testing.assert_allclose(pairs.pairs_delta_fvu[[0, 1], [1, 1]], [d[("T_C->R",)], d[("T_CC",)]], atol=1e-12)
    assert np.isnan(pairs.pairs_delta_fvu[1, 0]) and [r["blocks"] for r in pairs.ablations][1:] == \
        [["G1->G1"], ["G2->G1"], ["G2->G2"]]
    np.testing.assert_allclose(pairs.coupling_norms[0, 1], np.linalg.norm(T[:4, 4:]), rtol=1e-10)


def test_errors_name_the_fix():
    model, _, _, _ = planted()
    with pytest.raises(InputError, match=r"--ablate couplings rolls .* give --task NAME or --data FILE"):
        A.run(model, A.SchurOptions(ablate="couplings"), RunContext())
    from rnnprobe.cells import GRUCell

    rng = np.random.default_rng(0)
    gru = GRUCell(rng.standard_normal((9, 2)), rng.standard_normal((9, 3)))
    with pytest.raises(NoRecurrentMatrix, match="no single recurrent matrix"):
        A.run(Model(cell=gru), A.SchurOptions(), RunContext())
    with pytest.raises(InputError, match=r"--retain-alpha=1.5 must be <= 1.0"):
        A.SchurOptions(retain_alpha=1.5)
    with pytest.raises(InputError, match=r"--ablate='all' must be one of none, couplings, pairs"):
        A.SchurOptions(ablate="all")


# ---------------------------------------------------------------------------------
# the report and the command line
# ---------------------------------------------------------------------------------
SUMMARY_KEYS = {"n_hidden", "spectral_radius", "n_retained", "reconstruction_error", "orthogonality_error",
                "henrici", "coupling_fraction", "transient_amplification", "ablations"}
ROW_KEYS = {"blocks", "delta_fvu", "accuracy", "rel_norm", "sensitivity", "control_delta_fvu_median",
            "control_fraction_better", "invariant"}


def test_report_layout(tmp_path):
    model, task, _, _ = planted()
    from rnnprobe import tasks

    tasks.save_data(task, tmp_path / "planted.npz")
    out = analyze(A.ANALYSIS, tmp_path / "net.pt", A.SchurOptions(ablate="couplings", controls=4, max_error=1e-12),
                  RunSettings(out_dir=tmp_path, data=tmp_path / "planted.npz"), model=model)
    assert out.gate_failures == []
    summary = json.loads(out.paths.json.read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["n_hidden"] == 12 and summary["n_retained"] == 6
    for row in summary["ablations"]:
        assert ROW_KEYS <= set(row)
    assert ["T_RR"] in [r["blocks"] for r in summary["ablations"]]
    with h5py.File(out.paths.h5) as f:
        g = f["schur"]
        for name in ("Q", "T", "eigenvalues_real", "eigenvalues_imag", "block_starts", "retained"):
            assert name in g, name
        assert g["retained"].dtype == np.int8 and int(g["retained"][()].sum()) == 6
        np.testing.assert_allclose(g["Q"][()] @ g["T"][()] @ g["Q"][()].T, model.cell.W_hh.numpy(), atol=1e-13)
        assert list(g["ablations/blocks"].asstr()[()])[1] == '["T_RR"]'
        assert g["ablations/delta_fvu"].shape == (8,)
    assert {"T", "eigenvalues", "ablation"} <= set(out.paths.plots)
    assert summary["baseline_accuracy"] is None  # a data file has no accuracy metric


def test_cli_on_the_copy_sample(tmp_path):
    if not COPY_SAMPLE.exists():
        pytest.skip(f"{COPY_SAMPLE} is not trained yet (python -m rnnprobe.samples --only copy_rnn64)")
    from rnnprobe.cli.app import app

    r = CliRunner().invoke(app, ["schur", str(COPY_SAMPLE), "--ablate", "couplings", "--controls", "8",
                                 "--out", str(tmp_path), "--json", "--max-error", "1e-12"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert SUMMARY_KEYS <= set(summary) and summary["n_hidden"] == 64
    assert summary["reconstruction_error"] <= 1e-12 and summary["orthogonality_error"] <= 1e-12
    assert summary["baseline_accuracy"] >= 0.99
    names = [r["blocks"] for r in summary["ablations"]]
    assert ["T_RR"] in names and ["T_CC"] in names and ["T_C->R"] in names and len(names) == 8
    assert (tmp_path / "copy_rnn64.schur.h5").exists() and (tmp_path / "copy_rnn64.schur.ablation.png").exists()


def test_cli_without_task_data_or_with_a_bad_k_exits_2(tmp_path):
    rng = np.random.default_rng(0)
    Q = random_orthogonal(4, rng)
    W = Q @ np.array([[0.9, 1, 0, 0], [0, 0.5, -0.4, 2], [0, 0.4, 0.5, 0], [0, 0, 0, 0.1]]) @ Q.T
    ckpt = tmp_path / "net.pt"
    torch.save({"rnn.weight_hh_l0": torch.as_tensor(W), "rnn.weight_ih_l0": torch.ones(4, 1),
                "rnn.bias_hh_l0": torch.zeros(4), "rnn.bias_ih_l0": torch.zeros(4),
                "readout.weight": torch.ones(1, 4), "readout.bias": torch.zeros(1)}, ckpt)
    from rnnprobe.cli.app import app

    r = CliRunner().invoke(app, ["schur", str(ckpt), "--ablate", "couplings", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "--task NAME or --data FILE" in r.stderr and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["schur", str(ckpt), "--retain", "2", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "--retain 2 splits a conjugate pair; use 1 or 3" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["schur", str(ckpt), "--retain", "3", "--out", str(tmp_path / "r"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_retained"] == 3
