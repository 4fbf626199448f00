"""rnnprobe lyapunov: known answers against closed forms and independent NumPy references.

Every reference is computed here, independently of rnnprobe: eigenvalues
(numpy), the Henon constants and its Jacobian determinant, the cat map's
eigenvalues, the ring map's fixed point (scipy brentq) and multipliers, and a
plain NumPy Benettin loop for a chaotic net.
"""

import json
import math

import h5py
import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import torch
from typer.testing import CliRunner

from rnnprobe.analyses.base import RunContext
from rnnprobe.analyses.lyapunov import ANALYSIS, LyapunovOptions, run
from rnnprobe.cells import ElmanCell, GRUCell, LSTMCell, UserCell
from rnnprobe.errors import AnalysisError, InputError
from rnnprobe.model import Model
from rnnprobe.numerics import lyapunov as lyap
from rnnprobe.pipeline import RunSettings, analyze


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensor programs are dominated by thread hand-offs on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ctx(seed=0, **kw):
    return RunContext(seed=seed, **kw)


# ---- maps as user cells -------------------------------------------------------------
class Henon(torch.nn.Module):
    n_state, n_inputs = 2, 0

    def __init__(self, a=1.4, b=0.3):
        super().__init__()
        self.a, self.b = a, b

    def step(self, h, u):
        x, y = h[:, 0], h[:, 1]
        return torch.stack([1 - self.a * x**2 + y, self.b * x], dim=-1)


class CatMap(torch.nn.Module):
    """Arnold's cat map on the torus: (x, y) -> (2x + y, x + y) mod 1 (its Jacobian is constant)."""

    n_state, n_inputs = 2, 0

    def step(self, h, u):
        x, y = h[:, 0], h[:, 1]
        return torch.remainder(torch.stack([2 * x + y, x + y], dim=-1), 1.0)


class RingMap(torch.nn.Module):
    """r -> tanh(2 r), theta -> theta + omega + eps sin(3 theta), four more coordinates halved.

    SO(2)-equivariant (rotations of (x, y)) when eps = 0; eps breaks it to Z_3.
    """

    n_state, n_inputs = 6, 0

    def __init__(self, eps=0.0, omega=0.0):
        super().__init__()
        self.eps, self.omega = eps, omega

    def step(self, h, u):
        x, y = h[:, 0], h[:, 1]
        r, th = torch.sqrt(x * x + y * y), torch.atan2(y, x)
        r2, th2 = torch.tanh(2 * r), th + self.omega + self.eps * torch.sin(3 * th)
        return torch.cat([torch.stack([r2 * torch.cos(th2), r2 * torch.sin(th2)], -1), 0.5 * h[:, 2:]], -1)


def _r_star():
    return scipy.optimize.brentq(lambda r: math.tanh(2 * r) - r, 0.5, 1.0, xtol=1e-15)


def _so2_generator(S):
    A = np.zeros((1, S, S))
    A[0, 0, 1], A[0, 1, 0] = -1.0, 1.0
    return torch.as_tensor(A)


def _nonnormal(N, eigs, seed, coupling=0.3):
    """W = V T V^T, T upper triangular with diagonal ``eigs`` and strong couplings, V orthogonal."""
    rng = np.random.default_rng(seed)
    T = np.diag(eigs) + coupling * np.triu(rng.standard_normal((N, N)), 1)
    V = scipy.stats.ortho_group.rvs(N, random_state=seed)
    return V @ T @ V.T


# ---- known spectra ---------------------------------------------------------------------
def test_contracting_nonnormal_tanh_net_has_log_eigenvalue_moduli():
    N = 12
    eigs = np.array([0.95, -0.9, 0.8, 0.7, -0.6, 0.5, 0.45, 0.4, -0.3, 0.25, 0.2, 0.1])
    W = _nonnormal(N, eigs, seed=3)
    assert np.linalg.cond(np.linalg.eig(W)[1]) > 100 and np.linalg.norm(W, 2) > 1.5  # really non-normal
    ref = np.sort(np.log(np.abs(np.linalg.eigvals(W))))[::-1]
    # small initial states: the transient growth of the non-normal W stays in tanh's linear range
    res = run(Model(cell=ElmanCell(W)), LyapunovOptions(k="5", steps=300, warmup=1500, inits=3, init_scale=1e-3),
              _ctx())
    np.testing.assert_allclose(res.exponents, ref[:5], atol=1e-3)
    assert np.max(np.abs(res.exponents - ref[:5])) < 1e-9  # the frame warm-up leaves no 1/T bias
    assert res.classification == "stable fixed point" and res.kaplan_yorke_dimension == 0.0


def test_scaled_orthogonal_net_has_every_exponent_ln_s():
    s, N = 0.8, 16
    W = s * scipy.stats.ortho_group.rvs(N, random_state=1)
    res = run(Model(cell=ElmanCell(W)), LyapunovOptions(k="all", steps=400, warmup=300, inits=2), _ctx())
    np.testing.assert_allclose(res.exponents, np.full(N, math.log(s)), atol=1e-9)
    assert res.sum_rule_residual < 1e-10 and res.n_near_zero == 0


def test_henon_map():
    res = run(Model(cell=UserCell(Henon())),
              LyapunovOptions(k="all", steps=1000, warmup=100, inits=16, init_scale=0.05), _ctx())
    np.testing.assert_allclose(res.exponents, [0.4192, -1.6232], atol=1e-2)
    assert abs(res.exponents.sum() - math.log(0.3)) < 1e-10  # |det J| = b exactly
    assert res.sum_rule_residual < 1e-10
    assert res.classification == "chaotic" and res.entropy_rate == pytest.approx(res.exponents[0])
    assert res.kaplan_yorke_dimension == pytest.approx(1 + res.exponents[0] / abs(res.exponents[1]))


def test_cat_map():
    ref = np.sort(np.log(np.abs(np.linalg.eigvals(np.array([[2.0, 1.0], [1.0, 1.0]])))))[::-1]
    assert ref[0] == pytest.approx(0.962424, abs=1e-6)
    res = run(Model(cell=UserCell(CatMap())), LyapunovOptions(k="all", steps=200, warmup=50, inits=4),
              _ctx())
    np.testing.assert_allclose(res.exponents, ref, atol=1e-12)
    assert res.kaplan_yorke_dimension == pytest.approx(2.0) and res.classification == "chaotic"


def test_ring_map_symmetric_spectrum():
    rs = _r_star()
    ref = np.array([0.0] + [math.log(0.5)] * 4 + [math.log(2 * (1 - rs**2))])
    res = run(Model(cell=UserCell(RingMap(0.0))),
              LyapunovOptions(k="all", steps=300, warmup=200, inits=3, group="so2"), _ctx())
    np.testing.assert_allclose(res.exponents, ref, atol=1e-9)
    assert res.n_near_zero == 1 and res.classification == "neutral fixed point"
    t = res.tangent
    assert abs(t["tangent_exponent"]) < 1e-12 and t["protected"] and t["pseudo_gap"] == 0.0
    assert math.isinf(t["predicted_lifetime"]) and math.isinf(t["measured_lifetime"])
    assert not t["orbit_moves"]


def test_ring_map_pseudo_gap_and_lifetime():
    """eps > 0: the angle map has fixed points at sin(3 theta) = 0; the stable ones are where
    cos(3 theta) = -1 (theta = pi/3 + 2 pi j / 3), with multiplier 1 - 3 eps: the pseudo-gap."""
    eps = 1e-3
    cell = UserCell(RingMap(eps))
    rs = _r_star()
    th0 = math.pi / 3 + np.array([0.02, -0.03, 0.01]) + np.array([0, 2, 4]) * math.pi / 3
    h0 = torch.zeros(3, 6, dtype=torch.float64)
    h0[:, 0], h0[:, 1] = torch.as_tensor(rs * np.cos(th0)), torch.as_tensor(rs * np.sin(th0))
    h0[:, 2:] = 0.3
    A = _so2_generator(6)
    est = lyap.lyapunov_spectrum(cell, h0, k=6, steps=300, warmup=400, generators=A)
    gap = -math.log(1 - 3 * eps)
    assert gap == pytest.approx(0.00300, abs=1e-5)
    np.testing.assert_allclose(est.tangent.exponents[:, 0], -gap, atol=2e-6)
    np.testing.assert_allclose(est.exponents[0], -gap, atol=2e-6)
    rel = lyap.relaxation(cell, est.state, A, steps=1000)
    np.testing.assert_allclose(1 / rel.rate[:, 0], 1 / gap, rtol=1e-3)  # ~333 steps
    assert 330 < 1 / gap < 335


def test_broken_ring_map_through_the_analysis():
    eps = 0.02  # faster relaxation, so random initial angles settle within the warm-up
    res = run(Model(cell=UserCell(RingMap(eps))),
              LyapunovOptions(k="2", steps=300, warmup=500, inits=4, group="so2", init_scale=1.0), _ctx())
    gap = -math.log(1 - 3 * eps)
    t = res.tangent
    assert t["tangent_exponent"] == pytest.approx(-gap, abs=1e-6)
    assert t["pseudo_gap"] == pytest.approx(gap, abs=1e-6)
    assert t["predicted_lifetime"] == pytest.approx(1 / gap, rel=1e-4)
    assert t["measured_lifetime"] == pytest.approx(1 / gap, rel=1e-2)
    assert not t["protected"] and not t["orbit_moves"] and res.classification == "stable fixed point"


def test_rotating_orbit_is_flagged_as_moving_along_the_group():
    """Mo's control: a broken symmetry whose zero-input orbit rotates keeps a zero tangent exponent
    (time translation), which must not be read as protection."""
    ctx = _ctx()
    res = run(Model(cell=UserCell(RingMap(eps=0.01, omega=0.2))),
              LyapunovOptions(k="2", steps=800, warmup=300, inits=3, group="so2"), ctx)
    t = res.tangent
    assert abs(t["tangent_exponent"]) < 2e-3
    assert t["orbit_moves"] and t["flow_overlap"] > 0.99
    assert any("moves along the group orbit" in w for w in ctx.warnings)
    assert res.classification == "limit cycle" and res.n_near_zero == 1


def test_s1_samples_exact_cell_is_protected_and_broken_lifetime_is_predicted():
    """Mo (2026) on the shipped S^1 samples (group from the sidecar's symmetry): the exactly
    equivariant PolarS1Cell keeps a zero tangent exponent under zero input; in the epsilon-broken
    variant the pseudo-gap predicts the measured relaxation time of a displaced phase."""
    from pathlib import Path

    from rnnprobe.checkpoints import LoadOptions, load_checkpoint

    root = Path(__file__).resolve().parents[1] / "sample_checkpoints"
    opts = LyapunovOptions(k="1", steps=200, warmup=100, inits=2, input="zero")
    load = LoadOptions(cell="rnnprobe.cells.polar:PolarS1Cell")
    exact = run(load_checkpoint(root / "s1_polar.pt", load), opts, _ctx())
    broken = run(load_checkpoint(root / "s1_polar_broken.pt", load), opts, _ctx())
    assert exact.tangent["group"] == "so2" and abs(exact.tangent["tangent_exponent"]) < 1e-3
    assert exact.tangent["protected"] and not exact.tangent["orbit_moves"]
    t = broken.tangent
    assert t["pseudo_gap"] > 1e-3 and not t["protected"] and not t["orbit_moves"]
    assert t["predicted_lifetime"] == pytest.approx(t["measured_lifetime"], rel=0.3)


# ---- a chaotic network against a plain NumPy loop -----------------------------------------
NUMPY_BENETTIN = """
import sys
import numpy as np

def benettin(W, states, warmup):
    # textbook Benettin along a given trajectory (the state after each step): explicit
    # J_t = diag(1 - h_t^2) W, NumPy QR after every step, identity as the first frame
    Q = np.eye(W.shape[0])
    acc = np.zeros(W.shape[0])
    for t, h in enumerate(states):
        Q, R = np.linalg.qr((1 - h * h)[:, None] * (W @ Q))
        if t >= warmup:
            acc += np.log(np.abs(np.diag(R)))
    return acc / (len(states) - warmup)

d = np.load(sys.argv[1])
np.save(sys.argv[2], np.stack([benettin(d["W"], traj, int(d["warmup"])) for traj in d["traj"]]))
"""


def _numpy_benettin(tmp_path, W, traj, warmup):
    """Run the loop above in a fresh interpreter with one BLAS thread: NumPy's threaded BLAS on
    128 x 128 products crawls on a busy 2-core machine, and its thread count is fixed at import."""
    import os
    import subprocess
    import sys

    np.savez(tmp_path / "in.npz", W=W, traj=traj, warmup=warmup)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", NUMPY_BENETTIN, str(tmp_path / "in.npz"), str(tmp_path / "out.npy")],
                   check=True, env=env, timeout=300)
    return np.load(tmp_path / "out.npy")


def test_chaotic_net_against_numpy_loop_and_sum_rule(tmp_path):
    """A chaotic trajectory cannot be reproduced by two programs for long (rounding grows like
    e^{lambda_1 t}), so the reference follows the very trajectory the propagator follows: the
    cell's own step from the same initial states, then Jacobians, QR and sums in NumPy."""
    N, B, warmup, steps = 128, 2, 200, 800
    rng = np.random.default_rng(7)
    W = 2.0 * rng.standard_normal((N, N)) / math.sqrt(N)
    cell = ElmanCell(W)
    h0 = torch.as_tensor(0.5 * rng.standard_normal((B, N)))
    est = lyap.lyapunov_spectrum(cell, h0, steps=steps, warmup=warmup, frame=torch.eye(N, dtype=torch.float64))
    # the propagator's step with as many (ignored) tangent columns as its full frame: BLAS may round
    # the state's column differently in products of different widths (MKL does on AMD CPUs)
    h, traj, dummy = h0, [], torch.zeros(B, N, N, dtype=torch.float64)
    for _ in range(warmup + steps):
        h, _ = cell.step_and_jvp(h, None, dummy)
        traj.append(h.numpy())
    traj = np.stack(traj, axis=1)  # [B, T, N]
    refs = _numpy_benettin(tmp_path, W, traj, warmup)
    for b in range(B):
        np.testing.assert_allclose(traj[b, -1], est.state[b].numpy(), atol=0)  # the same trajectory
        ref = refs[b]
        assert est.per_init[b, 0] == pytest.approx(ref[0], rel=0.02)
        assert est.per_init[b].sum() == pytest.approx(ref.sum(), rel=0.02)
        np.testing.assert_allclose(est.per_init[b], ref, rtol=1e-8, atol=1e-9)  # in fact to rounding
    assert est.sum_rule_residual < 1e-8
    assert est.exponents[0] > 0.1 and est.spread > 5
    assert est.qr_every == 1 or est.qr_every * est.spread <= lyap.SPREAD_BUDGET
    tol = np.maximum(1e-3, 3 * np.nan_to_num(est.stderr))
    assert lyap.classify(est.exponents, tol)[0] == "chaotic"
    assert lyap.kaplan_yorke_dimension(est.exponents, complete=True) > 1


@pytest.mark.parametrize("nl", ["tanh", "sigmoid", "softplus"])
def test_log_abs_det_jacobian_equals_slogdet_from_either_state(nl):
    """The sum rule's ln|det J|: from the preactivation, or from the next state where phi' is a function
    of phi, both equal to slogdet of the explicit Jacobian."""
    N = 24
    rng = np.random.default_rng(4)
    cell = ElmanCell(1.5 * rng.standard_normal((N, N)) / math.sqrt(N), rng.standard_normal((N, 2)),
                     0.1 * rng.standard_normal(N), nonlinearity=nl)
    h = torch.as_tensor(rng.standard_normal((3, N)))
    u = torch.as_tensor(rng.standard_normal((3, 2)))
    ref = torch.linalg.slogdet(cell.jacobian(h, u))[1]
    for kw in ({}, {"h_next": cell.step(h, u)}):
        assert torch.allclose(lyap.log_abs_det_jacobian(cell, h, u, **kw), ref, rtol=1e-12, atol=1e-10)


def test_qr_interval_and_method_do_not_change_the_answer():
    """QR every m steps is exact in exact arithmetic and the trajectory does not depend on the frame:
    every interval and method must agree to rounding."""
    N = 48
    rng = np.random.default_rng(2)
    cell = ElmanCell(1.3 * rng.standard_normal((N, N)) / math.sqrt(N))
    h0 = torch.as_tensor(0.5 * rng.standard_normal((3, N)))
    runs = [lyap.lyapunov_spectrum(cell, h0, steps=300, warmup=100, qr_every=m, method=meth,
                                   generator=torch.Generator().manual_seed(0))
            for m, meth in ((1, "householder"), (2, "householder"), (None, "householder"), (2, "cholqr2"),
                            (6, "householder"))]
    for est in runs[1:]:
        np.testing.assert_allclose(est.per_init, runs[0].per_init, atol=1e-9)
        assert est.sum_rule_residual < 1e-9
    assert runs[2].qr_every >= 2 and math.isfinite(runs[2].spread)
    assert runs[-1].redone > 0  # m = 6 stretches some blocks too far: they are redone step by step


def test_orthonormalize_methods_and_fallback():
    rng = np.random.default_rng(0)
    V = torch.as_tensor(rng.standard_normal((3, 20, 6)))
    for method in lyap.METHODS:
        Q, R, fell = lyap.orthonormalize(V, method)
        assert not fell
        np.testing.assert_allclose(Q @ R, V, atol=1e-12)
        np.testing.assert_allclose(Q.mT @ Q, np.broadcast_to(np.eye(6), (3, 6, 6)), atol=1e-13)
        assert torch.all(torch.diagonal(R, dim1=-2, dim2=-1) > 0)
        np.testing.assert_allclose(torch.tril(R, -1), 0.0)
    # columns 1e-12 apart in scale: cond ~ e^28, past both methods' limits -> Householder-formed Q
    V[:, :, -1] *= 1e-12
    for method in lyap.METHODS:
        Q, R, fell = lyap.orthonormalize(V, method)
        assert fell
        np.testing.assert_allclose(Q.mT @ Q, np.broadcast_to(np.eye(6), (3, 6, 6)), atol=1e-13)
        np.testing.assert_allclose(Q @ R, V, atol=1e-12)
    assert lyap.choose_qr_every(6.8) == 2 and lyap.choose_qr_every(0.0) == lyap.MAX_QR_EVERY
    assert lyap.choose_qr_every(40.0) == 1


# ---- vectors ------------------------------------------------------------------------------
def test_covariant_vectors_of_a_constant_nonnormal_map_are_its_eigenvectors():
    eigs = np.array([0.9, -0.7, 0.5, 0.3, -0.15])
    N = eigs.size
    rng = np.random.default_rng(4)
    P = rng.standard_normal((N, N))  # far from orthogonal eigenvectors
    W = P @ np.diag(eigs) @ np.linalg.inv(P)
    res = run(Model(cell=ElmanCell(W, nonlinearity="linear")),
              LyapunovOptions(k="all", steps=100, warmup=400, inits=2, clv=True, clv_window=300), _ctx())
    w, vecs = np.linalg.eig(W)
    order = np.argsort(-np.abs(w))
    vecs = np.real(vecs[:, order]) / np.linalg.norm(np.real(vecs[:, order]), axis=0)
    np.testing.assert_allclose(res.exponents, np.log(np.abs(w[order])), atol=1e-10)
    for b in range(2):
        cos = np.abs(np.sum(res.clv[b] * vecs, axis=0))
        np.testing.assert_allclose(cos, 1.0, atol=1e-10)
        Qb = res.vectors[b]  # backward vectors: orthonormal, first i span the first i eigenvectors
        np.testing.assert_allclose(Qb.T @ Qb, np.eye(N), atol=1e-12)
        for i in range(1, N):
            resid = vecs[:, :i] - Qb[:, :i] @ (Qb[:, :i].T @ vecs[:, :i])
            assert np.linalg.norm(resid) < 1e-10


# ---- other cells, inputs ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gru", "lstm", "leaky"])
def test_gated_and_leaky_cells_satisfy_the_sum_rule(kind):
    rng = np.random.default_rng(5)
    N = 6
    if kind == "leaky":
        cell = ElmanCell(2.5 * rng.standard_normal((N, N)) / math.sqrt(N), alpha=0.3)
    else:
        G = 3 if kind == "gru" else 4
        cls = GRUCell if kind == "gru" else LSTMCell
        cell = cls(rng.standard_normal((G * N, 1)), 1.5 * rng.standard_normal((G * N, N)),
                   rng.standard_normal(G * N), rng.standard_normal(G * N))
    res = run(Model(cell=cell), LyapunovOptions(k="all", steps=200, warmup=50, inits=2), _ctx())
    assert res.k == cell.n_state and np.all(np.isfinite(res.exponents))
    assert res.sum_rule_residual < 1e-9


def test_task_inputs_drive_the_trajectories():
    from rnnprobe.tasks import make_task

    rng = np.random.default_rng(6)
    N = 16
    cell = ElmanCell(1.8 * rng.standard_normal((N, N)) / math.sqrt(N), 4.0 * rng.standard_normal((N, 3)))
    ctx = _ctx(task_source=lambda batch: make_task("flipflop:length=25,bits=3", batch=batch, seed=0))
    opts = LyapunovOptions(k="4", steps=400, warmup=100, inits=3)
    driven = run(Model(cell=cell), opts, ctx)
    free = run(Model(cell=cell), LyapunovOptions(k="4", steps=400, warmup=100, inits=3, input="zero"), _ctx())
    assert driven.input == "task" and free.input == "zero"
    assert abs(driven.exponents[0] - free.exponents[0]) > 1e-3
    # the tangent exponent: zero input by default (a separate autonomous run), or along the driven trajectories
    opts_g = dict(k="2", steps=300, warmup=100, inits=2, group="so2")
    zero_t = run(Model(cell=cell), LyapunovOptions(**opts_g), ctx).tangent
    same_t = run(Model(cell=cell), LyapunovOptions(**opts_g, tangent_input="same"), ctx).tangent
    assert zero_t["input"] == "zero" and same_t["input"] == "task"
    assert np.isfinite(zero_t["tangent_exponent"]) and np.isfinite(same_t["tangent_exponent"])
    assert abs(zero_t["tangent_exponent"] - same_t["tangent_exponent"]) > 1e-3
    # trials are concatenated per initial condition: init b gets trials b, b + B, b + 2B, ...
    from rnnprobe.analyses.lyapunov import _task_inputs

    ctx2 = _ctx(task_source=lambda batch: make_task("flipflop:length=25,bits=3", batch=batch, seed=0))
    U = _task_inputs(cell, opts, ctx2, 3, 60).numpy()
    trials = ctx2.task(batch=9).inputs
    assert U.shape == (3, 60, 3)
    np.testing.assert_array_equal(U[1, :25], trials[1])
    np.testing.assert_array_equal(U[1, 25:50], trials[4])
    np.testing.assert_array_equal(U[1, 50:], trials[7, :10])


# ---- derived quantities ---------------------------------------------------------------------
def test_derived_quantities():
    assert lyap.kaplan_yorke_dimension([0.5, -0.2, -1.0]) == pytest.approx(2 + 0.3 / 1.0)
    assert lyap.kaplan_yorke_dimension([-0.1, -1.0]) == 0.0
    assert math.isnan(lyap.kaplan_yorke_dimension([0.5, 0.1]))
    assert lyap.kaplan_yorke_dimension([0.5, 0.1], complete=True) == 2.0
    assert lyap.entropy_rate([0.5, 0.1, -2.0]) == pytest.approx(0.6)
    assert lyap.classify([0.2, -1.0], 1e-3) == ("chaotic", 0)
    assert lyap.classify([-0.2, -1.0], 1e-3) == ("stable fixed point", 0)
    assert lyap.classify([-0.2, -1.0], 1e-3, stationary=False) == ("stable periodic orbit", 0)
    assert lyap.classify([1e-5, -1.0], 1e-3) == ("limit cycle", 1)
    assert lyap.classify([1e-5, -2e-4, -1.0], 1e-3) == ("torus", 2)
    assert lyap.classify([1e-5, -1.0], 1e-3, stationary=True) == ("neutral fixed point", 1)
    assert lyap.classify([-0.2, -1.0], 1e-3, driven=True) == ("stable (input-driven)", 0)


# ---- errors ---------------------------------------------------------------------------------
def test_bad_options_and_inputs_name_the_flag():
    with pytest.raises(InputError, match=r"--k='many' must be a positive integer, 'all' or 'auto'"):
        LyapunovOptions(k="many")
    with pytest.raises(InputError, match=r"--k=0 must be >= 1"):
        LyapunovOptions(k="0")
    with pytest.raises(InputError, match="--group and --tangent both given"):
        LyapunovOptions(group="so2", tangent="g.npz")
    model = Model(cell=ElmanCell(0.5 * np.eye(4)))
    with pytest.raises(InputError, match="--k=9 exceeds the state dimension 4"):
        run(model, LyapunovOptions(k="9", steps=10), _ctx())
    with pytest.raises(InputError, match="--group 'sign' is a finite group"):
        run(model, LyapunovOptions(k="2", steps=10, group="sign"), _ctx())
    with pytest.raises(InputError, match="--input task needs task inputs"):
        run(model, LyapunovOptions(k="2", steps=10, input="task"), _ctx())


def test_divergent_map_is_an_analysis_error():
    class Blowup(torch.nn.Module):
        n_state, n_inputs = 2, 0

        def step(self, h, u):
            return h * h + 2.0

    with pytest.raises(AnalysisError, match="initial condition 0 became non-finite"):
        run(Model(cell=UserCell(Blowup())), LyapunovOptions(k="all", steps=50, warmup=20, inits=2), _ctx())


def test_tangent_file_gives_the_generators(tmp_path):
    path = tmp_path / "g.npz"
    np.savez(path, generators=_so2_generator(6).numpy())
    res = run(Model(cell=UserCell(RingMap(0.02))),
              LyapunovOptions(k="1", steps=100, warmup=500, inits=2, tangent=str(path), init_scale=1.0), _ctx())
    assert res.tangent["tangent_exponent"] == pytest.approx(math.log(1 - 0.06), abs=1e-6)
    np.savez(path, generators=np.zeros((1, 5, 5)))
    with pytest.raises(InputError, match=r"generators must have shape \[1, 6, 6\]"):
        run(Model(cell=UserCell(RingMap(0.02))), LyapunovOptions(k="1", steps=10, tangent=str(path)), _ctx())


# ---- the report and the command line ----------------------------------------------------------
def test_report_layout(tmp_path):
    model = Model(cell=UserCell(RingMap(0.02)), dt=0.5)
    out = analyze(ANALYSIS, tmp_path / "ring.pt",
                  LyapunovOptions(k="all", steps=150, warmup=500, inits=2, group="so2", init_scale=1.0, clv=True,
                                  clv_window=50),
                  RunSettings(out_dir=tmp_path), model=model)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ring.lyapunov.h5", "ring.lyapunov.json", "ring.lyapunov.running.png",
                     "ring.lyapunov.spectrum.png", "ring.lyapunov.tangent.png"]
    s = json.loads((tmp_path / "ring.lyapunov.json").read_text())
    for key in ("exponents", "stderr", "kaplan_yorke_dimension", "entropy_rate", "classification", "n_near_zero",
                "steps", "inits", "units", "tangent_exponent", "pseudo_gap", "predicted_lifetime",
                "measured_lifetime", "orbit_moves"):
        assert key in s, key
    assert len(s["exponents"]) == 6 and s["units"] == "per step" and s["steps"] == 150 and s["inits"] == 2
    assert s["predicted_lifetime_time"] == pytest.approx(0.5 * s["predicted_lifetime"])
    assert s["exponents_per_time"][0] == pytest.approx(2 * s["exponents"][0])
    with h5py.File(tmp_path / "ring.lyapunov.h5", "r") as f:
        g = f["lyapunov"]
        assert g["exponents"].shape == (6,) and g["stderr"].shape == (6,)
        assert g["running"].shape[1] == 6 and g["running"].shape[0] == g["running_steps"].shape[0]
        assert g["vectors"].shape == (2, 6, 6) and g["clv"].shape == (2, 6, 6)
        assert g["tangent"]["exponents"].shape == (2, 1)
        assert g["tangent/relaxation/distance"].shape[:2] == (2, 1)
        assert g.attrs["classification"] == "stable fixed point"
        assert g.attrs["option_group"] == "so2"


def test_command_line(tmp_path):
    from rnnprobe.cli.app import app

    rng = np.random.default_rng(8)
    N, D, O = 12, 2, 1
    ckpt = tmp_path / "net.pt"
    torch.save({"rnn.weight_hh_l0": torch.as_tensor(0.5 * rng.standard_normal((N, N)) / math.sqrt(N)),
                "rnn.weight_ih_l0": torch.as_tensor(rng.standard_normal((N, D))),
                "rnn.bias_hh_l0": torch.zeros(N, dtype=torch.float64),
                "rnn.bias_ih_l0": torch.zeros(N, dtype=torch.float64),
                "readout.weight": torch.as_tensor(rng.standard_normal((O, N))),
                "readout.bias": torch.zeros(O, dtype=torch.float64)}, ckpt)
    runner = CliRunner()
    args = ["lyapunov", str(ckpt), "--k", "3", "--steps", "200", "--warmup", "50", "--out", str(tmp_path / "r")]
    r = runner.invoke(app, [*args, "--json", "--no-plots"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["classification"] == "stable fixed point" and len(s["exponents"]) == 3 and s["input"] == "zero"
    r = runner.invoke(app, [*args, "--expect", "chaotic", "--no-plots"])
    assert r.exit_code == 1 and "gate failed: classification 'stable fixed point'" in r.stderr
    r = runner.invoke(app, [*args[:2], "--k", "13", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "--k=13 exceeds the state dimension 12" in r.stderr
    assert "Traceback" not in r.output
