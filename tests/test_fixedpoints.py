"""rnnprobe fixedpoints: the solver, the linearisation and the memory basis against known answers.

Every reference is computed here independently (closed forms, scipy's brentq,
numpy), never from the solver's own earlier output.
"""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from typer.testing import CliRunner

from rnnprobe.analyses.base import RunContext
from rnnprobe.analyses.fixedpoints import ANALYSIS, FixedpointsOptions, run, task_conditions
from rnnprobe.cells import ElmanCell, GRUCell, LSTMCell
from rnnprobe.errors import InputError
from rnnprobe.model import Model
from rnnprobe.numerics import fixedpoints as fp
from rnnprobe.pipeline import RunSettings, analyze

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_checkpoints"

# x* = tanh(2 x*), the positive stable state of a self-excitation w = 2
X_STAR = brentq(lambda x: x - np.tanh(2.0 * x), 0.5, 1.0)
CONTRACTING = np.array([0.3, -0.5, 0.6, 0.2])


def bistable_net():
    """Three decoupled units with self-weight 2 beside four contracting ones (|w| < 1)."""
    w = np.concatenate([[2.0, 2.0, 2.0], CONTRACTING])
    W_uh = np.zeros((7, 2))
    W_uh[0, 0] = W_uh[1, 1] = 1.0
    W_r = np.eye(7)[:3]
    return np.diag(w), ElmanCell(np.diag(w), W_uh, None, W_r)


def uniform_init(n, dim, seed, lo=-1.3, hi=1.3):
    return np.random.default_rng(seed).uniform(lo, hi, size=(n, dim))


def numpy_residual(W, b, states, u=None, W_uh=None):
    """||tanh(W h + W_uh u + b) - h|| per state, in numpy."""
    pre = states @ W.T + (0.0 if b is None else b)
    if u is not None:
        pre = pre + u @ W_uh.T
    return np.linalg.norm(np.tanh(pre) - states, axis=1)


# ---------------------------------------------------------------------------------
# known answer: 27 fixed points of three bistable units
# ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bistable_points():
    W, cell = bistable_net()
    x0 = uniform_init(600, 7, seed=0)
    return W, cell, fp.find_fixed_points(cell, None, x0)


def test_bistable_units_all_27_points(bistable_points):
    W, cell, fps = bistable_points
    assert fps.n_unique == 27
    assert fps.n_label(fp.UNCONVERGED) == 0 and int(fps.counts.sum()) == 600
    # the expected points: each bistable unit at -x*, 0 or +x*, the contracting units at 0
    grid = np.array(np.meshgrid(*[[-X_STAR, 0.0, X_STAR]] * 3, indexing="ij")).reshape(3, -1).T
    expected = np.concatenate([grid, np.zeros((27, 4))], axis=1)
    got = fps.states.numpy()
    dist = np.abs(got[:, None, :] - expected[None, :, :]).max(-1)
    assert np.all(dist.min(axis=1) <= 1e-12) and len(set(dist.argmin(axis=1))) == 27
    # every point is a fixed point to round-off, recomputed in numpy
    assert numpy_residual(W, None, got).max() <= 1e-10
    assert fps.q.max() <= 1e-24
    # every candidate's q is q at its own final state (merged candidates included)
    assert fps.stats["merged"] > 0 and fps.stats["merge_rejected"] == 0
    # candidates close together merge after their first full Newton step, not only once their
    # steps have become small: the second iteration runs on a few per point (600 without)
    assert fps.stats["active"][1] <= 2 * 27
    r = numpy_residual(W, None, fps.candidate_states.numpy())
    np.testing.assert_allclose(np.sqrt(2 * fps.candidate_q.numpy()), r, rtol=1e-6, atol=1e-13)


def test_bistable_stability_and_eigenvalues(bistable_points):
    W, cell, fps = bistable_points
    lin = fp.linearize(cell, fps.states)
    codes, n_unstable, n_marginal = fp.classify(lin.eigenvalues, 1e-3)
    x = fps.states.numpy()
    zeros = (np.abs(x[:, :3]) < 0.5).sum(axis=1)  # units sitting at the unstable state 0
    assert np.array_equal(n_unstable.numpy(), zeros)
    stable = codes.numpy() == fp.STABLE
    assert stable.sum() == 8
    # the 8 stable points are exactly (+-x*, +-x*, +-x*)
    assert np.allclose(np.abs(x[stable, :3]), X_STAR, atol=1e-12)
    assert np.all(codes.numpy()[~stable] == fp.SADDLE) and n_marginal.sum() == 0
    # eigenvalues: 2 (1 - x_i^2) for the bistable units, the contracting weights for the others
    for k in range(27):
        expect = np.sort_complex(np.concatenate([2.0 * (1.0 - x[k, :3] ** 2), CONTRACTING]).astype(complex))
        got = np.sort_complex(lin.eigenvalues[k].numpy())
        np.testing.assert_allclose(got, expect, atol=1e-12)
    # sorted by decreasing modulus
    mod = lin.eigenvalues.abs().numpy()
    assert np.all(np.diff(mod, axis=1) <= 1e-15)
    # B = dF/du = diag(1 - h^2) W_uh
    np.testing.assert_allclose(lin.input_jacobians[:, 0, 0].numpy(), 1 - x[:, 0] ** 2, atol=1e-14)
    tau = fp.time_constants(lin.eigenvalues)
    np.testing.assert_allclose(tau.numpy(), -1.0 / np.log(mod), rtol=1e-12)


def test_solver_without_merging_or_warm_start_agrees(bistable_points):
    _, cell, fps = bistable_points
    plain = fp.find_fixed_points(cell, None, uniform_init(600, 7, seed=0), merge_tol=0.0, warmup_steps=0)
    assert plain.stats["merged"] == 0 and plain.n_unique == 27
    d = torch.cdist(plain.states, fps.states, compute_mode="donot_use_mm_for_euclid_dist")
    assert float(d.min(dim=1).values.max()) <= 1e-12



@pytest.mark.parametrize("warmup_steps", [0, 5])
def test_initial_states_are_not_modified(warmup_steps):
    """The caller's tensor of initial states comes back as it went in (the solver works on a copy)."""
    _, cell = bistable_net()
    x0 = torch.as_tensor(uniform_init(50, 7, seed=3))
    before = x0.clone()
    fps = fp.find_fixed_points(cell, None, x0, warmup_steps=warmup_steps)
    assert fps.n_unique > 0 and torch.equal(x0, before)
    assert fps.candidate_states.data_ptr() != x0.data_ptr()



class _Shifted:
    """G(x) = (x - c) * w: q = 1/2 ||G||^2, grad q = w^2 (x - c); a stand-in system for the Adam warm start."""

    def __init__(self, c, w):
        self.c, self.w = c, w

    def value_and_grad(self, x):
        g = (x - self.c) * self.w
        return g, 0.5 * (g * g).sum(-1), g * self.w


def _textbook_adam(x, c, w, steps, lr, b1=0.9, b2=0.999):
    """Kingma & Ba's Adam in numpy, keeping each row's best (lowest q) iterate."""
    m, v = np.zeros_like(x), np.zeros_like(x)
    q = lambda z: 0.5 * (((z - c) * w) ** 2).sum(-1)  # noqa: E731
    best, best_q = x.copy(), q(x)
    for t in range(1, steps + 1):
        grad = (x - c) * w * w
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        x = x - lr * (m / (1 - b1**t)) / np.sqrt(v / (1 - b2**t))
        better = q(x) < best_q
        best[better], best_q[better] = x[better], q(x)[better]
    return best, best_q


@pytest.mark.parametrize("fused", [True, False])
def test_adam_warm_start_matches_textbook_adam(fused, monkeypatch):
    if not fused:
        monkeypatch.setattr(fp, "_FUSED_ADAM", None)
    elif fp._FUSED_ADAM is None:
        pytest.skip("this torch has no fused Adam kernel")
    rng = np.random.default_rng(7)
    x0, c, w = rng.standard_normal((30, 5)), rng.standard_normal(5), rng.uniform(0.5, 2.0, 5)
    sys_ = _Shifted(torch.as_tensor(c), torch.as_tensor(w))
    x0_t = torch.as_tensor(x0)
    best_x, best_q = fp._adam(sys_, x0_t, 40, 0.05)
    ref_x, ref_q = _textbook_adam(x0.copy(), c, w, 40, 0.05)
    np.testing.assert_allclose(best_x.numpy(), ref_x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(best_q.numpy(), ref_q, rtol=1e-10, atol=1e-15)
    assert np.array_equal(x0_t.numpy(), x0)  # the caller's states are not updated in place

# ---------------------------------------------------------------------------------
# the preconditioned Newton-Krylov steps
# ---------------------------------------------------------------------------------
def _mean_jacobian_inverse(cell, x):
    """(mean_n J(x_n) - I)^-1 from the cell's explicit Jacobians, in numpy."""
    J = cell.jacobian(torch.as_tensor(x), None).numpy().mean(axis=0)
    return np.linalg.inv(J - np.eye(J.shape[0]))


def test_line_search_keeps_g_with_x_where_it_rejects_the_step():
    """Rows whose step every length of the ladder rejects come back with x, G and q all unchanged
    (G is the next Newton step's right-hand side: it must be G at the state that is kept)."""
    rng = np.random.default_rng(12)
    S, n = 8, 10
    cell = ElmanCell(0.5 * rng.standard_normal((S, S)) / np.sqrt(S), np.zeros((S, 1)), 0.1 * rng.standard_normal(S))
    system = fp._System(cell, None)
    x = torch.as_tensor(rng.standard_normal((n, S)))
    g = system.G(x)
    q = fp._q(g)
    dx = torch.as_tensor(rng.standard_normal((n, S)))
    dx[::2] *= 1e6  # far too long even at 1/1024: rejected
    dx[1::2] = -1e-3 * g[1::2]  # short steps: accepted or not, the checks below hold for every row
    xn, gn, qn, t = fp._line_search(system, x, dx, q, g)
    rej = (t == 0).numpy()
    assert rej[::2].all()
    for name, got, ref in (("x", xn, x), ("G", gn, g), ("q", qn, q)):
        np.testing.assert_array_equal(got.numpy()[rej], ref.numpy()[rej], err_msg=name)
    # every row: G and q are those of the state returned
    np.testing.assert_allclose(gn.numpy(), system.G(xn).numpy(), rtol=0, atol=1e-15)
    np.testing.assert_allclose(qn.numpy(), fp._q(system.G(xn)).numpy(), rtol=1e-14, atol=0)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu", "softplus"])
@pytest.mark.parametrize("form,alpha", [("leaky", 1.0), ("leaky", 0.3), ("residual", 0.2), ("residual", 1.0),
                                        ("rate-outside", 0.5)])
@pytest.mark.parametrize("inputs", ["none", "shared", "per-candidate"])
def test_residual_gradient_and_newton_operator_match_the_cell(form, alpha, nonlinearity, inputs):
    """G, q, grad q and (J - I) v of the solver's system (the one-GEMM path for dense Elman cells)
    against the cell's own step and its explicit Jacobians, in numpy, also after sub() and repeat()."""
    rng = np.random.default_rng(11)
    S, n, d = 9, 14, 2
    cell = ElmanCell(1.2 * rng.standard_normal((S, S)) / np.sqrt(S), rng.standard_normal((S, d)),
                     0.3 * rng.standard_normal(S), alpha=alpha, form=form, nonlinearity=nonlinearity)
    x = torch.as_tensor(rng.standard_normal((n, S)))
    u = {"none": None, "shared": torch.as_tensor(rng.standard_normal(d)).expand(n, d),
         "per-candidate": torch.as_tensor(rng.standard_normal((n, d)))}[inputs]
    system = fp._System(cell, u)
    assert system.elman and system.drive is not None
    idx = torch.tensor([3, 0, 7, 7, 12])
    for sys_, xs, us in ((system, x, u), (system.sub(idx), x[idx], None if u is None else u[idx]),
                         (system.repeat(2), x.repeat_interleave(2, dim=0),
                          None if u is None else u.repeat_interleave(2, dim=0))):
        with torch.no_grad():
            F = cell.step(xs, us).numpy()
            J = cell.jacobian(xs, us).numpy()
        G_ref = F - xs.numpy()
        JG = J - np.eye(S)
        grad_ref = np.einsum("nij,ni->nj", JG, G_ref)
        g, q, grad = sys_.value_and_grad(xs.clone())
        np.testing.assert_allclose(sys_.G(xs.clone()).numpy(), G_ref, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(g.numpy(), G_ref, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(q.numpy(), 0.5 * (G_ref**2).sum(-1), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(grad.numpy(), grad_ref, rtol=1e-11, atol=1e-12)
        V = torch.as_tensor(rng.standard_normal(xs.shape))
        np.testing.assert_allclose(sys_.operator(xs)(V).numpy(), np.einsum("nij,nj->ni", JG, V.numpy()),
                                   rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("form,alpha", [("leaky", 0.4), ("rate-outside", 0.5), ("residual", 0.3)])
def test_residual_methods_through_a_structured_operator(form, alpha):
    """The residual, its gradient and (J - I) v of an Elman cell whose W_hh is a circular
    convolution (the operator's generic matvec_add / rmatvec_add), against its dense Jacobians."""
    from rnnprobe.operators import CircularConvOperator

    rng = np.random.default_rng(13)
    L, d = 4, 2
    N = L * L
    cell = ElmanCell(CircularConvOperator(torch.as_tensor(0.6 * rng.standard_normal((L, L)))),
                     rng.standard_normal((N, d)), 0.2 * rng.standard_normal(N), alpha=alpha, form=form)
    x = torch.as_tensor(rng.standard_normal((7, N)))
    u = torch.as_tensor(rng.standard_normal((7, d)))
    drive = cell.drive(u)
    with torch.no_grad():
        G_ref = (cell.step(x, u) - x).numpy()
        JG = cell.jacobian(x, u).numpy() - np.eye(N)
    g, grad = cell.residual_and_gradient(x.clone(), drive)
    np.testing.assert_allclose(cell.residual(x.clone(), drive).numpy(), G_ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(g.numpy(), G_ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(grad.numpy(), np.einsum("nij,ni->nj", JG, G_ref), rtol=1e-11, atol=1e-12)
    V = torch.as_tensor(rng.standard_normal((7, N)))
    np.testing.assert_allclose(cell.residual_jacobian(x, drive)(V).numpy(), np.einsum("nij,nj->ni", JG, V.numpy()),
                               rtol=1e-11, atol=1e-12)


def test_restarted_gmres_reaches_the_tolerance_a_short_cycle_cannot():
    """Cycles of 3 products on a 30 x 30 system: one cycle leaves the residual far above 1e-10,
    restarts reach it (against numpy's solve)."""
    rng = np.random.default_rng(14)
    n, S = 5, 30
    A = np.eye(S) + 0.5 * rng.standard_normal((S, S)) / np.sqrt(S)
    b = torch.as_tensor(rng.standard_normal((n, S)))
    At = torch.as_tensor(A.T)
    apply = lambda v: v @ At  # noqa: E731
    rtol = torch.full((n,), 1e-10, dtype=torch.float64)
    ref = np.linalg.solve(A, b.numpy().T).T
    one, _ = fp._gmres(apply, b, 3, rtol)
    assert np.abs(one.numpy() - ref).max() > 1e-4
    x, k = fp._gmres(apply, b, 3, rtol, restarts=60)
    assert k == 3
    res = np.linalg.norm(b.numpy() - x.numpy() @ A.T, axis=1) / np.linalg.norm(b.numpy(), axis=1)
    assert res.max() <= 1e-10
    np.testing.assert_allclose(x.numpy(), ref, rtol=0, atol=1e-8)


@pytest.mark.parametrize("form,alpha", [("leaky", 1.0), ("leaky", 0.3), ("rate-outside", 0.5), ("residual", 0.2)])
def test_preconditioner_is_the_inverse_of_the_mean_jacobian(form, alpha):
    rng = np.random.default_rng(4)
    S = 12
    cell = ElmanCell(1.3 * rng.standard_normal((S, S)) / np.sqrt(S), np.zeros((S, 1)), 0.1 * rng.standard_normal(S),
                     alpha=alpha, form=form)
    x = rng.standard_normal((40, S))
    pre = fp._System(cell, None).preconditioner(torch.as_tensor(x))
    got = pre(torch.eye(S, dtype=torch.float64)).numpy().T  # rows of I -> rows of P^T
    np.testing.assert_allclose(got, _mean_jacobian_inverse(cell, x), rtol=1e-10, atol=1e-12)


def test_preconditioner_of_a_gated_cell_averages_sampled_jacobians():
    rng = np.random.default_rng(5)
    N = 6
    cell = GRUCell(0.5 * rng.standard_normal((3 * N, 1)), 0.8 * rng.standard_normal((3 * N, N)), None, None)
    x = rng.uniform(-0.9, 0.9, size=(20, N))  # 20 <= the sample size: every candidate is used
    pre = fp._System(cell, None).preconditioner(torch.as_tensor(x))
    got = pre(torch.eye(N, dtype=torch.float64)).numpy().T
    np.testing.assert_allclose(got, _mean_jacobian_inverse(cell, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("numpy_bookkeeping", [True, False])
def test_right_preconditioned_gmres_solves_and_needs_fewer_products(numpy_bookkeeping):
    """Against numpy's dense solve, with the Givens bookkeeping on NumPy views (CPU) and in torch."""
    from rnnprobe.numerics.kernels import numpy_kernels

    with numpy_kernels(numpy_bookkeeping):
        _check_preconditioned_gmres()


def _check_preconditioned_gmres():
    rng = np.random.default_rng(6)
    n, S = 16, 20
    base = np.eye(S) + 0.4 * rng.standard_normal((S, S)) / np.sqrt(S)
    A = base[None] + 0.05 * rng.standard_normal((n, S, S)) / np.sqrt(S)  # a batch near one matrix
    b = rng.standard_normal((n, S))
    At = torch.as_tensor(A)
    count = {"plain": 0, "pre": 0}

    def apply(key):
        def f(v):
            count[key] += 1
            return (At @ v[:, :, None])[:, :, 0]
        return f

    Pt = torch.as_tensor(np.linalg.inv(base).T.copy())
    rtol = torch.full((n,), 1e-10, dtype=torch.float64)
    plain, k_plain = fp._gmres(apply("plain"), torch.as_tensor(b), S, rtol)
    pre, k_pre = fp._gmres(apply("pre"), torch.as_tensor(b), S, rtol, precond=lambda v: v @ Pt)
    assert (k_plain, k_pre) == (count["plain"], count["pre"])
    expect = np.linalg.solve(A, b[:, :, None])[:, :, 0]
    np.testing.assert_allclose(plain.numpy(), expect, atol=1e-8)
    np.testing.assert_allclose(pre.numpy(), expect, atol=1e-8)
    assert count["pre"] <= count["plain"] // 2


def test_preconditioned_newton_krylov_on_a_trained_net_agrees_with_plain():
    """The trained flip-flop sample (N = 64) solved by Newton-Krylov throughout: plain GMRES
    needs all its steps there, so later steps are preconditioned; same points either way."""
    from rnnprobe import tasks
    from rnnprobe.checkpoints import LoadOptions, load_checkpoint

    model = load_checkpoint(SAMPLES / "flipflop_rnn64.pt", LoadOptions())
    cell = model.cell
    data = tasks.make_task(model.task, batch=32, seed=0)
    with torch.no_grad():  # states visited on the task, plus noise, as the analysis samples them
        H = cell.rollout(cell.initial_state(32), torch.as_tensor(data.inputs)).reshape(-1, cell.n_state)
    g = torch.Generator().manual_seed(0)
    H = H[torch.randperm(H.shape[0], generator=g)[:256]]
    x0 = H + 0.3 * torch.randn(H.shape, generator=g, dtype=H.dtype)
    krylov = dict(direct_dim=0, direct_max=0)  # GMRES even at N = 64
    pre = fp.find_fixed_points(cell, None, x0, **krylov)
    plain = fp.find_fixed_points(cell, None, x0, precondition=False, **krylov)
    assert pre.stats["krylov_steps_preconditioned"] >= 256 and plain.stats["krylov_steps_preconditioned"] == 0
    assert pre.n_label(fp.UNCONVERGED) == 0 and min(pre.n_unique, plain.n_unique) >= 9
    residual = np.linalg.norm(cell.step(pre.states).numpy() - pre.states.numpy(), axis=1)
    assert residual.max() <= 1e-10
    # every candidate's q is q at its own final state, the merged and verified ones included
    assert pre.stats["merge_verified"] > 0
    X = pre.candidate_states
    r = np.linalg.norm(cell.step(X).numpy() - X.numpy(), axis=1)
    np.testing.assert_allclose(np.sqrt(2 * pre.candidate_q.numpy()), r, rtol=1e-6, atol=1e-13)
    # the same 8 stable points; the saddles reached from random starts may differ by one or two
    codes = [fp.classify(fp.linearize(cell, f.states).eigenvalues, 1e-3)[0] for f in (pre, plain)]
    stable = [f.states[c == fp.STABLE] for f, c in zip((pre, plain), codes)]
    assert stable[0].shape[0] == stable[1].shape[0] == 8
    d = torch.cdist(*stable, compute_mode="donot_use_mm_for_euclid_dist")
    assert float(d.min(dim=1).values.max()) <= 1e-12
    d = torch.cdist(pre.states, plain.states, compute_mode="donot_use_mm_for_euclid_dist")
    assert float((d.min(dim=1).values <= 1e-12).float().mean()) >= 0.9

# ---------------------------------------------------------------------------------
# independent residual check on a random trained-like net and on an untrained chaotic one
# ---------------------------------------------------------------------------------
def test_untrained_gain_15_net_reports_no_unconverged_point():
    N = 128
    rng = np.random.default_rng(3)
    W = 1.5 * rng.standard_normal((N, N)) / np.sqrt(N)
    cell = ElmanCell(W)
    with torch.no_grad():
        traj = cell.autonomous(torch.as_tensor(rng.standard_normal((8, N))), 40).reshape(-1, N)
    x0 = traj[torch.as_tensor(rng.permutation(traj.shape[0])[:96])] + 0.3 * torch.as_tensor(
        rng.standard_normal((96, N)))
    fps = fp.find_fixed_points(cell, None, x0, max_iter=40, first_order_steps=20)
    labels = fps.candidate_labels.numpy()
    q_np = 0.5 * numpy_residual(W, None, fps.candidate_states.numpy()) ** 2
    # the labels agree with q recomputed in numpy
    assert np.all(q_np[labels == fp.FIXED] <= 1e-12)
    assert np.all(q_np[labels == fp.UNCONVERGED] > 1e-6 * (1 - 1e-9))
    # reported points are fixed or slow, never unconverged, and the fixed ones are fixed to 1e-10
    assert fps.n_unique >= 1
    pts = fps.states.numpy()
    res = numpy_residual(W, None, pts)
    assert np.all(res[fps.labels.numpy() == fp.FIXED] <= 1e-10)
    assert np.all(0.5 * res**2 <= 1e-6)
    assert set(fps.candidate_point.numpy()[labels == fp.UNCONVERGED]) <= {-1}
    # the origin is a fixed point of tanh(W h); if it was found it is a saddle with many unstable directions
    ev = np.linalg.eigvals(W)
    lin = fp.linearize(cell, fps.states)
    _, n_unstable, _ = fp.classify(lin.eigenvalues, 1e-3)
    at_origin = np.abs(pts).max(axis=1) < 1e-8
    if at_origin.any():
        assert int(n_unstable[at_origin][0]) == int((np.abs(ev) > 1 + 1e-3).sum())


@pytest.mark.parametrize("seed,matrix_free", [(100, False), (102, False), (100, True)])
def test_untrained_gain_15_net_reports_each_point_once_polished_and_in_odd_pairs(seed, matrix_free):
    """tanh(W h) with no bias is odd, so its fixed points come in pairs +-h (and the origin).

    Candidates whose Newton-Krylov steps crept below tol (q ~ 1e-13) without reaching round-off
    used to end 1e-6 .. 3e-5 of the scale away from their point and were reported as extra,
    unpaired "distinct" points (12 for 11 at seed 100, 20 for 17 at seed 102; forced matrix-free,
    99 points, 13 of them fixed, for 11). Matrix-free, without explicit Jacobians to polish with,
    the points are fixed to a residual of 1e-7 rather than 1e-10."""
    N = 128
    rng = np.random.default_rng(seed)
    W = 1.5 * rng.standard_normal((N, N)) / np.sqrt(N)
    cell = ElmanCell(W, np.zeros((N, 1)), None)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        traj = cell.autonomous(torch.randn(32, N, generator=g, dtype=torch.float64), 64).reshape(-1, N)
    rms = float(traj.pow(2).mean().sqrt())
    x0 = traj[torch.randperm(traj.shape[0], generator=g)[:512]] + 0.5 * rms * torch.randn(
        512, N, generator=g, dtype=torch.float64)
    fps = fp.find_fixed_points(cell, None, x0, **({"jacobian_memory": 1e3} if matrix_free else {}))
    assert fps.stats["matrix_free"] == matrix_free
    pts = fps.states.numpy()[fps.labels.numpy() == fp.FIXED]
    assert len(pts) >= 3
    res_tol, mirror_tol = (1e-7, 1e-6) if matrix_free else (1e-10, 1e-8)
    np.testing.assert_array_less(numpy_residual(W, None, pts), res_tol)  # recomputed in numpy
    d = np.abs(pts[:, None, :] - pts[None, :, :]).max(axis=2)
    np.fill_diagonal(d, np.inf)
    assert d.min() > 1e-3 * fps.scale  # each point once
    mirror = np.abs(-pts[:, None, :] - pts[None, :, :]).max(axis=2).min(axis=1)
    assert mirror.max() <= mirror_tol * fps.scale  # and with its mirror image


# ---------------------------------------------------------------------------------
# memory basis: the linear repeat-copy network
# ---------------------------------------------------------------------------------
def repeat_copy(s=4, kappa=2, rho=0.95, extra=(0.3, -0.2), seed=0):
    """W = Xi Phi Xi^{-1}, Phi = rho * (cyclic shift of s subspaces of dimension kappa) (+) decaying modes."""
    rng = np.random.default_rng(seed)
    m = s * kappa
    N = m + len(extra)
    P = np.zeros((s, s))
    P[(np.arange(s) + 1) % s, np.arange(s)] = 1.0  # subspace j -> j+1
    Phi = np.zeros((N, N))
    Phi[:m, :m] = rho * np.kron(P, np.eye(kappa))
    Phi[m:, m:] = np.diag(extra)
    Xi = rng.standard_normal((N, N)) + 2 * np.eye(N)
    W = Xi @ Phi @ np.linalg.inv(Xi)
    W_uh = Xi[:, m - kappa:m]  # inputs write into the last subspace
    W_r = np.linalg.inv(Xi)[m - kappa:m]  # the readout reads it
    return W, W_uh, W_r, Xi, Phi


@pytest.mark.parametrize("basis", ["eigen", "schur"])
def test_repeat_copy_cycle_is_found(basis):
    s, kappa = 4, 2
    W, W_uh, W_r, Xi, Phi = repeat_copy(s, kappa)
    cell = ElmanCell(W, W_uh, None, W_r, nonlinearity="linear")
    fps = fp.find_fixed_points(cell, None, np.random.default_rng(1).standard_normal((32, W.shape[0])))
    assert fps.n_unique == 1 and float(fps.states.abs().max()) <= 1e-12
    lin = fp.linearize(cell, fps.states, eigenvectors=basis == "eigen")
    np.testing.assert_allclose(lin.jacobians[0].numpy(), W, atol=1e-13)  # J = W for a linear net
    mb = fp.memory_basis(lin.jacobians, lin.input_jacobians, torch.as_tensor(W_r)[None], basis,
                         eigenvalues=lin.eigenvalues, eigenvectors=lin.eigenvectors)
    assert float(mb.reconstruction_error[0]) <= 1e-12
    cyc = fp.detect_cyclic_shift(mb.Phi, eigenvalues=lin.eigenvalues)
    assert int(cyc.period[0]) == s and int(cyc.kappa[0]) == kappa
    assert float(cyc.residual[0]) <= 1e-10 and abs(float(cyc.modulus[0]) - 0.95) <= 1e-12
    # the cyclic basis really is shifted: W (Xi C_j) = rho (Xi C_{j+1})
    C = mb.Xi[0].numpy() @ cyc.basis[0].numpy()
    blocks = [C[:, j * kappa:(j + 1) * kappa] for j in range(s)]
    for j in range(s):
        np.testing.assert_allclose(W @ blocks[j], 0.95 * blocks[(j + 1) % s], atol=1e-10)


def test_repeat_copy_user_basis_recovers_phi_and_maps():
    W, W_uh, W_r, Xi, Phi = repeat_copy()
    cell = ElmanCell(W, W_uh, None, W_r, nonlinearity="linear")
    J = torch.as_tensor(W)[None]
    B = torch.as_tensor(W_uh)[None]
    mb = fp.memory_basis(J, B, torch.as_tensor(W_r)[None], Xi)
    np.testing.assert_allclose(mb.Phi[0].numpy(), Phi, atol=1e-10)
    m = 8
    expected_in = np.zeros((W.shape[0], 2))
    expected_in[m - 2:m] = np.eye(2)  # the input writes into the last subspace only
    np.testing.assert_allclose(mb.input_map[0].numpy(), expected_in, atol=1e-10)
    np.testing.assert_allclose(mb.readout_map[0].numpy(), expected_in.T, atol=1e-10)
    cyc = fp.detect_cyclic_shift(mb.Phi)
    assert int(cyc.period[0]) == 4 and float(cyc.residual[0]) <= 1e-10
    assert cell.n_state == W.shape[0]


def test_lossless_repeat_copy_is_marginal_with_period():
    """rho = 1 (the paper's Phi): 0 is a fixed point on a plane of them; all 8 cycle modes are marginal."""
    W, W_uh, W_r, Xi, Phi = repeat_copy(rho=1.0)
    cell = ElmanCell(W, W_uh, None, W_r, nonlinearity="linear")
    fps = fp.find_fixed_points(cell, None, np.zeros((1, W.shape[0])))
    assert fps.n_unique == 1 and float(fps.q[0]) == 0.0
    lin = fp.linearize(cell, fps.states)
    codes, n_unstable, n_marginal = fp.classify(lin.eigenvalues, 1e-6)
    assert int(codes[0]) == fp.MARGINAL and int(n_marginal[0]) == 8 and int(n_unstable[0]) == 0
    mb = fp.memory_basis(lin.jacobians, lin.input_jacobians, None, "eigen",
                         eigenvalues=lin.eigenvalues, eigenvectors=lin.eigenvectors)
    cyc = fp.detect_cyclic_shift(mb.Phi, eigenvalues=lin.eigenvalues)
    assert int(cyc.period[0]) == 4 and float(cyc.residual[0]) <= 1e-10


def test_no_cycle_in_the_bistable_net(bistable_points):
    _, cell, fps = bistable_points
    lin = fp.linearize(cell, fps.states)
    mb = fp.memory_basis(lin.jacobians, lin.input_jacobians, None, "eigen",
                         eigenvalues=lin.eigenvalues, eigenvectors=lin.eigenvectors)
    assert int(fp.detect_cyclic_shift(mb.Phi, eigenvalues=lin.eigenvalues).period.max()) == 0
    # eigen basis: Phi is diagonal here (real spectrum) and equals the eigenvalues
    diag = torch.diagonal(mb.Phi, dim1=1, dim2=2)
    np.testing.assert_allclose(diag.numpy(), lin.eigenvalues.real.numpy(), atol=1e-12)


def test_real_eigen_basis_blocks():
    """Complex pairs become [[a, b], [-b, a]] blocks in the real eigen-block basis."""
    rng = np.random.default_rng(5)
    Q = np.linalg.qr(rng.standard_normal((5, 5)))[0] + 0.3 * rng.standard_normal((5, 5))
    D = np.zeros((5, 5))
    D[0:2, 0:2] = [[0.5, 0.4], [-0.4, 0.5]]
    D[2, 2], D[3:5, 3:5] = 0.3, [[-0.2, 0.1], [-0.1, -0.2]]
    J = torch.as_tensor(Q @ D @ np.linalg.inv(Q))[None]
    lam, V = fp._sort_spectrum(*torch.linalg.eig(J))
    Xi = fp.real_eigen_basis(lam, V)
    Phi = (torch.linalg.inv(Xi) @ J @ Xi)[0].numpy()
    off = Phi.copy()
    off[0:2, 0:2] = off[2, 2] = off[3:5, 3:5] = 0
    assert np.abs(off).max() <= 1e-12
    for a, b in ((0, 2), (3, 5)):
        blk = Phi[a:b, a:b]
        ev = np.linalg.eigvals(blk)
        assert abs(blk[0, 0] - blk[1, 1]) <= 1e-12 and abs(blk[0, 1] + blk[1, 0]) <= 1e-12
        assert np.allclose(np.sort(np.abs(ev)), np.abs(lam[0].numpy()[a]), atol=1e-12)


# ---------------------------------------------------------------------------------
# gated cells with known structure
# ---------------------------------------------------------------------------------
def test_gru_with_constant_gates():
    """r, z constant (no recurrent weights into them): h* = tanh(r w h*) per unit; r w = 2 -> 9 points."""
    N = 2
    b_r, b_z = 1.0, -1.0
    r, z = 1 / (1 + np.exp(-b_r)), 1 / (1 + np.exp(-b_z))
    w = 2.0 / r
    W_hh = np.zeros((3 * N, N))
    W_hh[2 * N:] = w * np.eye(N)
    b_hh = np.concatenate([np.full(N, b_r), np.full(N, b_z), np.zeros(N)])
    cell = GRUCell(np.zeros((3 * N, 1)), W_hh, None, b_hh)
    fps = fp.find_fixed_points(cell, None, uniform_init(200, N, seed=2))
    assert fps.n_unique == 9 and fps.n_label(fp.UNCONVERGED) == 0
    x = fps.states.numpy()
    assert np.all(np.min(np.abs(np.abs(x[:, :, None]) - np.array([0.0, X_STAR])), axis=2) <= 1e-12)
    lin = fp.linearize(cell, fps.states)
    # dF/dh for unit i: (1 - z) r w (1 - h_i^2) + z, decoupled
    expect = np.sort((1 - z) * r * w * (1 - x**2) + z, axis=1)
    np.testing.assert_allclose(np.sort(lin.eigenvalues.real.numpy(), axis=1), expect, atol=1e-12)
    codes, _, _ = fp.classify(lin.eigenvalues, 1e-3)
    assert int((codes == fp.STABLE).sum()) == 4


def test_lstm_with_constant_gates():
    """i, f, o constant: c* = a tanh(w h*), h* = o tanh(c*), a = i / (1 - f); two bistable units."""
    N = 2
    b_i, b_f, b_o, w = 0.0, 0.0, 5.0, 3.0
    i_, f_, o_ = (1 / (1 + np.exp(-b)) for b in (b_i, b_f, b_o))
    a = i_ / (1 - f_)
    h_star = brentq(lambda h: h - o_ * np.tanh(a * np.tanh(w * h)), 0.1, 1.0)
    c_star = a * np.tanh(w * h_star)
    W_hh = np.zeros((4 * N, N))
    W_hh[2 * N:3 * N] = w * np.eye(N)
    b_hh = np.concatenate([np.full(N, b_i), np.full(N, b_f), np.zeros(N), np.full(N, b_o)])
    cell = LSTMCell(np.zeros((4 * N, 1)), W_hh, None, b_hh)
    x0 = np.concatenate([uniform_init(200, N, seed=4), uniform_init(200, N, seed=5)], axis=1)
    fps = fp.find_fixed_points(cell, None, x0)
    assert fps.n_unique == 9 and fps.n_label(fp.UNCONVERGED) == 0
    s = fps.states.numpy()
    h, c = s[:, :N], s[:, N:]
    assert np.all(np.min(np.abs(np.abs(h[:, :, None]) - np.array([0.0, h_star])), axis=2) <= 1e-12)
    np.testing.assert_allclose(c, a * np.tanh(w * h), atol=1e-12)
    assert np.all(np.abs(np.abs(c[np.abs(h) > 0.5]) - c_star) <= 1e-12)
    # eigenvalues: per unit the 2x2 Jacobian of (h, c) -> (o tanh(c'), c'), c' = f c + i tanh(w h)
    lin = fp.linearize(cell, fps.states)
    for k in range(9):
        ev = []
        for j in range(N):
            dc_dh = i_ * w * (1 - np.tanh(w * h[k, j]) ** 2)
            sech = o_ * (1 - np.tanh(c[k, j]) ** 2)
            ev += list(np.linalg.eigvals(np.array([[sech * dc_dh, sech * f_], [dc_dh, f_]])))
        np.testing.assert_allclose(np.sort_complex(lin.eigenvalues[k].numpy()), np.sort_complex(np.array(ev)),
                                   atol=1e-12)
    codes, _, _ = fp.classify(lin.eigenvalues, 1e-3)
    assert int((codes == fp.STABLE).sum()) == 4


def test_line_attractor_is_marginal():
    """W = diag(1, 0.5), linear: every (x, 0) is fixed; the points found are marginal, dimension 1."""
    cell = ElmanCell(np.diag([1.0, 0.5]), nonlinearity="linear")
    x0 = np.random.default_rng(6).standard_normal((40, 2))
    fps = fp.find_fixed_points(cell, None, x0)
    assert fps.n_label(fp.UNCONVERGED) == 0
    assert float(fps.states[:, 1].abs().max()) <= 1e-10
    # each candidate lands on the line where Levenberg-Marquardt takes it: distinct points
    assert fps.n_unique > 1
    lin = fp.linearize(cell, fps.states)
    codes, _, n_marginal = fp.classify(lin.eigenvalues, 1e-6)
    assert bool((codes == fp.MARGINAL).all()) and bool((n_marginal == 1).all())


# ---------------------------------------------------------------------------------
# deduplication
# ---------------------------------------------------------------------------------
def test_deduplicate_keeps_lowest_q_and_respects_groups():
    rng = np.random.default_rng(7)
    centres = rng.uniform(-1, 1, size=(5, 3))
    pts = np.repeat(centres, 20, axis=0) + 1e-9 * rng.standard_normal((100, 3))
    q = rng.uniform(1e-30, 1e-20, size=100)
    groups = np.zeros(100, dtype=int)
    groups[:20] = 1  # the first centre in another input condition: never merged with a copy of itself
    extra = np.concatenate([pts[:5], 1e-9 + pts[:5]])  # the same centre in group 0
    pts = np.concatenate([pts, extra])
    q = np.concatenate([q, rng.uniform(1e-30, 1e-20, size=10)])
    groups = np.concatenate([groups, np.zeros(10, dtype=int)])
    reps, assign = fp.deduplicate(torch.as_tensor(pts), torch.as_tensor(q), 1e-6, torch.as_tensor(groups))
    assert reps.numel() == 6
    a = assign.numpy()
    for k in range(6):
        members = np.nonzero(a == k)[0]
        assert len(set(groups[members])) == 1
        assert np.abs(pts[members] - pts[members].mean(0)).max() < 1e-8
        assert q[reps[k]] == q[members].min()
    # points farther apart than a few tolerances stay apart
    far = np.array([[0.0, 0.0], [1e-5, 0.0]])
    assert fp.deduplicate(torch.as_tensor(far), torch.zeros(2, dtype=torch.float64), 1e-6)[0].numel() == 2


@pytest.mark.parametrize("metric", ["sup", "rms"])
@pytest.mark.parametrize("block_bytes", [64e6, 3000.0])
def test_near_pairs_match_a_brute_force_distance_test(metric, block_bytes):
    # clusters of every spread around the tolerance, offsets along single coordinates (where the
    # sup and RMS norms differ most) and big norms (the GEMM distances cancel): the pairs must be
    # exactly those of the elementwise test, also when the rows are split into blocks
    rng = np.random.default_rng(3)
    centres = 50.0 + rng.standard_normal((6, 16))
    pts = np.repeat(centres, 12, axis=0) + rng.uniform(0.2, 3.0, (72, 1)) * 1e-2 * rng.standard_normal((72, 16))
    spikes = np.repeat(centres[:1], 8, axis=0)
    spikes[np.arange(8), np.arange(8)] += np.linspace(0.015, 0.025, 8)  # one coordinate apart
    pts = np.concatenate([pts, spikes])
    groups = rng.integers(0, 2, pts.shape[0])
    tol = 0.02
    diff = pts[:, None, :] - pts[None, :, :]
    dist = np.abs(diff).max(-1) if metric == "sup" else np.sqrt((diff**2).mean(-1))
    near = (dist <= tol) & (groups[:, None] == groups[None, :])
    expect = {(i, j) for i, j in zip(*np.nonzero(near)) if i < j}
    i, j = fp._near_pairs(torch.as_tensor(pts), tol, metric, torch.as_tensor(groups), block_bytes)
    got = set(zip(i.tolist(), j.tolist()))
    assert got == expect and len(got) == i.numel()
    # the case is not trivial: pairs just inside and just outside the tolerance, and the metrics disagree
    assert ((dist <= tol) & (dist > 0.8 * tol)).any() and ((dist > tol) & (dist < 1.25 * tol)).any()
    other = np.abs(diff).max(-1) if metric == "rms" else np.sqrt((diff**2).mean(-1))
    assert ((other <= tol) != (dist <= tol)).any()


def test_near_pairs_sup_keeps_pairs_exactly_at_the_tolerance():
    # pairs tol apart in every coordinate (sup distance tol, Euclidean tol sqrt(D): the edge of
    # the prefilter), far from the origin: the GEMM distance carries round-off there, which
    # the prefilter's margin must cover
    rng = np.random.default_rng(11)
    tol = 2.0**-6
    a = rng.uniform(40, 60, (200, 16))
    b = a + tol  # exact: tol is a multiple of the spacing of floats in [32, 64)
    pts = np.empty((400, 16))
    pts[0::2], pts[1::2] = a, b
    sup = np.abs(b - a).max(1)
    inside = {(2 * k, 2 * k + 1) for k in np.nonzero(sup <= tol)[0]}
    assert len(inside) == 200
    i, j = fp._near_pairs(torch.as_tensor(pts), tol, "sup", None, 64e6)
    got = set(zip(i.tolist(), j.tolist()))
    assert got == inside
    # states whose squares overflow (scaled by a power of two, which is exact): the same pairs
    big = 2.0**900
    i, j = fp._near_pairs(torch.as_tensor(pts) * big, tol * big, "sup", None, 64e6)
    assert set(zip(i.tolist(), j.tolist())) == inside


def test_deduplicate_rms_clusters_are_connected_components():
    rng = np.random.default_rng(5)
    # a chain of points 0.8 tol apart (one cluster through its links) and an isolated point
    chain = np.zeros((5, 4))
    chain[:, 0] = 0.8 * np.arange(5)
    pts = np.concatenate([chain, [[10.0, 0, 0, 0]]]) * 1e-2
    q = rng.uniform(0, 1, 6)
    reps, assign = fp.deduplicate(torch.as_tensor(pts), torch.as_tensor(q), 1e-2 / 2, metric="rms")
    assert reps.numel() == 2 and assign.tolist() == [0, 0, 0, 0, 0, 1]
    assert int(reps[0]) == int(np.argmin(q[:5]))
    with pytest.raises(ValueError, match="metric"):
        fp.deduplicate(torch.as_tensor(pts), torch.as_tensor(q), 1e-2, metric="l1")


# ---------------------------------------------------------------------------------
# the analysis: options, sampling, conditions, report, CLI
# ---------------------------------------------------------------------------------
def bistable_model():
    return Model(cell=bistable_net()[1])


def test_options_are_checked(tmp_path):
    with pytest.raises(InputError, match="--slow-tol=1e-13 must be >= --tol=1e-12"):
        FixedpointsOptions(slow_tol=1e-13)
    with pytest.raises(InputError, match="--basis 'qr' must be eigen, schur, or a .npy/.npz basis file"):
        FixedpointsOptions(basis="qr")
    with pytest.raises(InputError, match="--input 'a,b' must be a number"):
        FixedpointsOptions(input="a,b")
    with pytest.raises(InputError, match="--init .*nope.npy: no such file"):
        FixedpointsOptions(init=str(tmp_path / "nope.npy"))
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 3)))
    with pytest.raises(InputError, match=r"states must be \[n, n_state=7\]; got shape \[4, 3\]"):
        run(bistable_model(), FixedpointsOptions(init=str(bad)), RunContext())
    with pytest.raises(InputError, match="has 3 values but the model takes 2 inputs"):
        run(bistable_model(), FixedpointsOptions(input="0,1,0"), RunContext())
    with pytest.raises(InputError, match="--input-from-task needs task data"):
        run(bistable_model(), FixedpointsOptions(input_from_task=True), RunContext())


def test_analysis_report_and_json(tmp_path):
    init = tmp_path / "init.npy"
    np.save(init, uniform_init(400, 7, seed=8))
    opts = FixedpointsOptions(init=str(init))
    model = bistable_model()
    model.dt = 0.01
    out = analyze(ANALYSIS, tmp_path / "bistable.pt", opts, RunSettings(out_dir=tmp_path), model=model)
    s = json.loads(out.paths.json.read_text())
    assert (s["n_candidates"], s["n_fixed"], s["n_slow"], s["n_unconverged"], s["n_unique"]) == (400, 400, 0, 0, 27)
    assert s["n_stable"] == 8 and s["n_saddle"] == 19
    assert len(s["points"]) == 27 and sum(p["count"] for p in s["points"]) == 400
    assert {"q", "stability", "n_unstable", "max_abs_eig", "tau_max", "count"} <= set(s["points"][0])
    assert s["memory_basis"]["basis"] == "eigen" and s["memory_basis"]["cyclic"] == []
    with h5py.File(out.paths.h5, "r") as f:
        g = f["fixedpoints"]
        states = g["states"][()]
        assert states.shape == (27, 7) and g["jacobians"].shape == (27, 7, 7)
        assert g["stability"].dtype == np.int8 and g["label"].dtype == np.int8
        assert "eigenvalues_real" in g and "eigenvalues_imag" in g
        assert g["inputs"].shape == (1, 2)
        assert g.attrs["stability_codes"] == "stable,marginal,saddle,repeller"
        # the JSON points and the HDF5 states are in the same order
        np.testing.assert_allclose([p["q"] for p in s["points"]], g["q"][()])
        assert [p["n_unstable"] for p in s["points"]] == list(g["n_unstable"][()])
        np.testing.assert_allclose(g["tau_max_time"][()], 0.01 * g["tau_max"][()])
        assert g["memory_basis/Phi"].shape == (27, 7, 7)
        assert g["memory_basis/input_map"].shape == (27, 7, 2) and g["memory_basis/readout_map"].shape == (27, 3, 7)
        W = np.diag(np.concatenate([[2.0] * 3, CONTRACTING]))
        assert numpy_residual(W, None, states).max() <= 1e-10
    assert sorted(out.paths.plots) == ["eigenvalues", "phi", "points"]


def test_sampling_from_autonomous_trajectories_and_plots(tmp_path):
    opts = FixedpointsOptions(n_init=300, noise=0.6, trajectory_steps=20)
    out = analyze(ANALYSIS, tmp_path / "bistable.pt", opts, RunSettings(out_dir=tmp_path, seed=1),
                  model=bistable_model())
    r = out.result
    assert r.n_candidates == 300 and r.n_unconverged == 0
    assert "autonomous trajectories" in r.initial_states_source
    assert sorted(out.paths.plots) == ["eigenvalues", "phi", "points"]
    assert r.pca["trajectories"].shape[-1] == 3
    # all reported points are among the 27 and fixed to round-off
    x = r.states
    assert np.all(np.min(np.abs(np.abs(x[:, :3, None]) - np.array([0.0, X_STAR])), axis=2) <= 1e-12)
    assert np.abs(x[:, 3:]).max() <= 1e-12 and r.q.max() <= 1e-24


def test_input_conditions_from_the_task():
    """CDI's context cue is constant within trials: one set of points per context."""
    from rnnprobe import tasks

    data = tasks.make_task("cdi", batch=64, seed=0)
    conds, trial, static = task_conditions(data.inputs, 8)
    assert static.tolist() == [False, False, True, True]
    np.testing.assert_array_equal(conds, [[0, 0, 0, 1], [0, 0, 1, 0]])
    ctx_of_trial = np.argmax(data.inputs[:, 0, 2:], axis=1)
    assert np.array_equal(trial, 1 - ctx_of_trial)
    # a net whose fixed point moves with the cue: W = 0.5 I, cue channels drive units 0 and 1
    N = 6
    W_uh = np.zeros((N, 4))
    W_uh[0, 2], W_uh[1, 3] = 1.0, -1.0
    cell = ElmanCell(0.5 * np.eye(N), W_uh, None, np.eye(N)[:1])
    ctx = RunContext(task_source=lambda b: tasks.make_task("cdi", batch=b, seed=0))
    r = run(Model(cell=cell), FixedpointsOptions(input_from_task=True, n_init=64), ctx)
    assert r.n_unique == 2 and r.inputs.shape == (2, 4)
    for k in range(2):
        u = r.inputs[r.condition[k]]
        res = numpy_residual(0.5 * np.eye(N), None, r.states[k:k + 1], u[None], W_uh)
        assert res.max() <= 1e-12
    # h0 = tanh(0.5 h0 + 1) for the cue on channel 2
    h0 = brentq(lambda x: x - np.tanh(0.5 * x + 1.0), 0.0, 2.0)
    k = int(np.nonzero(r.inputs[r.condition][:, 2] == 1)[0][0])
    assert abs(r.states[k, 0] - h0) <= 1e-12


def test_cli_end_to_end(tmp_path):
    from rnnprobe.cli.app import app

    W, cell = bistable_net()
    ckpt = tmp_path / "bist.pt"
    torch.save({"rnn.weight_hh_l0": torch.as_tensor(W, dtype=torch.float32),
                "rnn.weight_ih_l0": torch.as_tensor(cell.W_uh, dtype=torch.float32),
                "rnn.bias_hh_l0": torch.zeros(7), "rnn.bias_ih_l0": torch.zeros(7),
                "readout.weight": torch.eye(7)[:3], "readout.bias": torch.zeros(3)}, ckpt)
    init = tmp_path / "init.npz"
    np.savez(init, states=uniform_init(300, 7, seed=9))
    r = CliRunner().invoke(app, ["fixedpoints", str(ckpt), "--init", str(init), "--out", str(tmp_path / "o"),
                                 "--json", "-q", "--no-plots", "--max-unconverged", "0"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["n_unique"] == 27 and s["n_stable"] == 8 and s["gate_failures"] == []
    r = CliRunner().invoke(app, ["fixedpoints", str(ckpt), "--input", "1,2,3", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--input '1,2,3' has 3 values but the model takes 2 inputs" in r.stderr


def test_cli_run_stays_off_torch_compile_imports(tmp_path):
    """A fixedpoints run on Elman and LSTM samples, in a fresh interpreter, imports neither
    torch._dynamo (what torch.func's jacrev pulls in: about 1.3 s on a cold start) nor
    scipy.signal (0.7 s; only the s1 task needs it)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from rnnprobe.cli.app import app\n"
        "for name in ('flipflop_rnn64', 'flipflop_lstm'):\n"
        f"    r = CliRunner().invoke(app, ['fixedpoints', '{SAMPLES}/' + name + '.pt', '--n-init', '32',\n"
        f"                                 '--out', r'{tmp_path}', '-q'])\n"
        "    assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in ('torch._dynamo', 'scipy.signal', 'sympy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("name", ["flipflop_gru", "flipflop_lstm"])
def test_gated_flipflop_samples(name):
    """The trained 3-bit flip-flop GRU / LSTM: 8 stable fixed points (one per memory) and saddles between."""
    from rnnprobe import tasks
    from rnnprobe.checkpoints import LoadOptions, load_checkpoint

    path = SAMPLES / f"{name}.pt"
    if not path.is_file():
        pytest.skip(f"{path} not trained yet (python -m rnnprobe.samples)")
    model = load_checkpoint(path, LoadOptions())
    ctx = RunContext(task_source=lambda b: tasks.make_task(model.task, batch=b, seed=0))
    r = run(model, FixedpointsOptions(n_init=256, noise=0.1), ctx)
    fixed = r.label == fp.FIXED
    stable = fixed & (r.stability == fp.STABLE)
    assert stable.sum() == 8
    # the stable points hold the 8 sign patterns of the three outputs
    y = model.cell.readout(torch.as_tensor(r.states[stable])).numpy()
    assert len({tuple(np.sign(v)) for v in y}) == 8 and np.abs(y).min() > 0.5
    assert (fixed & (r.stability == fp.SADDLE)).sum() >= 1
    # every fixed point is one, recomputed without the solver
    F = model.cell.step(torch.as_tensor(r.states[fixed])).numpy()
    assert np.linalg.norm(F - r.states[fixed], axis=1).max() <= 1e-10


def test_leaky_time_constants_and_continuous_eigenvalues(tmp_path):
    """Leaky linear net: J = (1 - alpha) I + alpha W, so (lambda - 1) / alpha are the eigenvalues of W - I."""
    alpha, dt = 0.2, 0.05
    W = np.array([[0.5, 0.3, 0.0], [-0.3, 0.5, 0.0], [0.0, 0.0, -0.5]])
    model = Model(cell=ElmanCell(W, alpha=alpha, nonlinearity="linear"), dt=dt)
    init = tmp_path / "init.npy"
    np.save(init, uniform_init(16, 3, seed=10))
    Xi = tmp_path / "basis.npz"
    np.savez(Xi, Xi=np.eye(3)[:, :2])  # a partial user basis: the rotating plane
    r = run(model, FixedpointsOptions(init=str(init), basis=str(Xi)), RunContext())
    assert r.n_unique == 1 and np.abs(r.states).max() <= 1e-12
    lam = np.linalg.eigvals((1 - alpha) * np.eye(3) + alpha * W)
    np.testing.assert_allclose(np.sort_complex(r.eigenvalues[0]), np.sort_complex(lam), atol=1e-13)
    np.testing.assert_allclose(np.sort_complex(r.ct_eigenvalues[0]), np.sort_complex(np.linalg.eigvals(W) - 1),
                               atol=1e-12)
    slowest = np.max(1.0 / np.abs(np.log(np.abs(lam))))
    assert abs(r.tau_max[0] - slowest) <= 1e-10 and abs(r.tau_max_time[0] - dt * slowest) <= 1e-12
    # the user basis spans the rotating plane: Phi is J restricted there, the rest is reconstruction error
    J = (1 - alpha) * np.eye(3) + alpha * W
    np.testing.assert_allclose(r.memory_basis["Phi"][0], J[:2, :2], atol=1e-14)
    assert r.memory_basis["basis"].startswith("file:")
    assert abs(r.memory_basis["reconstruction_error"][0] - abs(J[2, 2]) / np.linalg.norm(J)) <= 1e-12


def test_batched_lu_is_safe_with_two_threads():
    """torch 2.13 + MKL: batched LU on >1 thread at N >= 160 corrupts pivots; the solver goes per matrix."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rng = np.random.default_rng(11)
        A = rng.standard_normal((3, 200, 200)) + 15 * np.eye(200)
        b = rng.standard_normal((3, 200))
        x, info = fp._per_matrix(torch.linalg.solve_ex, torch.as_tensor(A), torch.as_tensor(b))
        assert int(info.abs().sum()) == 0
        np.testing.assert_allclose(x.numpy(), np.linalg.solve(A, b[:, :, None])[:, :, 0], atol=1e-12)
        LU, piv, info = fp._per_matrix(torch.linalg.lu_factor_ex, torch.as_tensor(A))
        y = torch.linalg.lu_solve(LU[1], piv[1], torch.as_tensor(b[1])[:, None])[:, 0]
        np.testing.assert_allclose(y.numpy(), np.linalg.solve(A[1], b[1]), atol=1e-12)
    finally:
        torch.set_num_threads(threads)
