"""rnnprobe equivariance: known answers against references computed here in numpy.

* a bias-free tanh net is exactly sign-equivariant (error <= 1e-14 in float64);
  with a bias the error is >= 1e-2 and ``--max-error 1e-6`` exits 1;
* a circulant tanh net with circulant input weights is exactly cyclic-equivariant;
  with 1e-4 noise on W_hh the reported error is within a factor 10 of the truth,
  a dense numpy evaluation over every shift and 5000 fresh states;
* ``--discover`` finds the sign flip, the cyclic group, a planted signed
  permutation, and nothing continuous in a tanh net (but the commutant in a linear one);
* the infinitesimal error of a rotation-equivariant linear net is 0 and
  equals the closed form when the symmetry is broken;
* the report's layout and the CLI's exit codes.
"""

import json

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rnnprobe import discovery
from rnnprobe.analyses.base import RunContext
from rnnprobe.analyses.equivariance import (ANALYSIS, EquivarianceOptions, infinitesimal_errors, orbit_ranks,
                                            rollout_errors, run, step_errors)
from rnnprobe.cells import ElmanCell, GRUCell, get_nonlinearity
from rnnprobe.errors import InputError
from rnnprobe.groups import parse_group
from rnnprobe.model import Model
from rnnprobe.pipeline import RunSettings, analyze

N, D, O = 24, 3, 2


def _dense_net(bias: bool, seed=0, n=N):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n, n)) * 1.5 / np.sqrt(n)
    U = rng.normal(size=(n, D))
    b = rng.normal(size=n) * 0.3 if bias else None
    return W, U, b, rng.normal(size=(O, n))


def _circulant(c):
    n = c.size
    i = np.arange(n)
    return c[(i[:, None] - i[None, :]) % n]


def _circulant_net(seed=0, n=N, bias=False):
    rng = np.random.default_rng(seed)
    W = _circulant(rng.normal(size=n) * 1.5 / np.sqrt(n))
    U = _circulant(rng.normal(size=n))
    b = np.full(n, 0.2) if bias else None
    return W, U, b


def _ctx(**kw):
    return RunContext(seed=kw.pop("seed", 0), **kw)


def _model(W, U, b=None, W_r=None, task=None):
    return Model(cell=ElmanCell(W, U, b, W_r, None), task=task)


def _numpy_errors(W, U, b, P, Q, X, Uin):
    """max over (P_g, Q_g) and states of ||F(Px, Qu) - P F(x, u)|| / (1 + ||F||), F = tanh(W x + U u + b)."""
    b = np.zeros(W.shape[0]) if b is None else b
    F = np.tanh(X @ W.T + Uin @ U.T + b)
    worst = 0.0
    for Pg, Qg in zip(P, Q):
        Fg = np.tanh((X @ Pg.T) @ W.T + (Uin @ Qg.T) @ U.T + b)
        e = np.linalg.norm(Fg - F @ Pg.T, axis=1) / (1 + np.linalg.norm(F, axis=1))
        worst = max(worst, e.max())
    return worst


# ---- sign --------------------------------------------------------------------------------------
def test_bias_free_tanh_net_is_exactly_sign_equivariant():
    W, U, _, W_r = _dense_net(bias=False)
    r = run(_model(W, U, None, W_r), EquivarianceOptions(group="sign", states="random", samples=500,
                                                         rollout_steps=30), _ctx())
    assert r.error <= 1e-14 and r.readout_error <= 1e-14 and r.rollout_error_final <= 1e-14
    assert r.element_labels == ["identity", "sign flip"] and r.per_state_error.shape == (500,)
    assert r.expected_neutral_modes is None and r.dtype_floor == pytest.approx(2.220446049250313e-16)


def test_bias_breaks_the_sign_symmetry_by_the_numpy_amount():
    W, U, b, W_r = _dense_net(bias=True)
    r = run(_model(W, U, b, W_r), EquivarianceOptions(group="sign", states="random", samples=300,
                                                      rollout_steps=20), _ctx(seed=3))
    assert r.error >= 1e-2 and r.worst_element == "sign flip"
    g = torch.Generator().manual_seed(3 + 11)  # the analysis' random states (seed + 11)
    X = torch.randn(300, N, generator=g, dtype=torch.float64).numpy()
    truth = _numpy_errors(W, U, b, [np.eye(N), -np.eye(N)], [np.eye(D), -np.eye(D)], X, np.zeros((300, D)))
    assert r.error == pytest.approx(truth, rel=1e-12)


# ---- cyclic ------------------------------------------------------------------------------------
def test_circulant_net_is_exactly_cyclic_equivariant():
    W, U, b = _circulant_net(bias=True)
    r = run(_model(W, U, b), EquivarianceOptions(group="cyclic", input_action="shift", states="random",
                                                 samples=400, rollout_steps=30), _ctx())
    assert len(r.element_labels) == N and r.error <= 1e-14 and r.rollout_error_final <= 1e-13


def test_noisy_circulant_error_within_a_factor_10_of_the_truth():
    W, U, b = _circulant_net(seed=1)
    Wn = W + 1e-4 * np.random.default_rng(5).normal(size=W.shape)
    r = run(_model(Wn, U, b), EquivarianceOptions(group="cyclic", input_action="shift", states="random",
                                                  samples=1000), _ctx())
    # the truth: every shift, 5000 fresh states from the same distribution, dense numpy
    X = np.random.default_rng(99).normal(size=(5000, N))
    shifts = [np.roll(np.eye(N), k, axis=0) for k in range(N)]
    truth = _numpy_errors(Wn, U, b, shifts, shifts, X, np.zeros((5000, N)))
    assert 1e-6 < truth and truth / 10 <= r.error <= truth * 10


def test_elements_are_subsampled_and_batched_like_a_loop():
    W, U, b = _circulant_net(seed=2, n=40, bias=True)
    W = W + 1e-3 * np.random.default_rng(0).normal(size=W.shape)
    cell = ElmanCell(W, U, b)
    group = parse_group("cyclic", n_state=40, n_inputs=40, n_outputs=0, input_action="shift")
    sub, _ = group.sample(7, np.random.default_rng(1))
    assert sub.hidden.size == 7 and sub.labels[0] == "shift 0"
    X = torch.randn(30, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    Uin = torch.randn(30, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    E = step_errors(cell, sub, X, Uin)["errors"]
    M = sub.hidden.matrices()
    for g in range(7):
        P = M[g]
        Fg = np.tanh(X.numpy() @ P.T @ W.T + Uin.numpy() @ P.T @ U.T + b)
        F = np.tanh(X.numpy() @ W.T + Uin.numpy() @ U.T + b)
        want = np.linalg.norm(Fg - F @ P.T, axis=1) / (1 + np.linalg.norm(F, axis=1))
        np.testing.assert_allclose(E[g].numpy(), want, rtol=1e-10, atol=2e-15)  # GEMMs of 30 and 210 rows may round differently


# ---- continuous groups --------------------------------------------------------------------------
def _rotation_net(eps=0.0):
    """A linear net on R^4 commuting with rotations of the first pair: W = [[aI + bJ, 0], [0, D]]."""
    W = np.zeros((4, 4))
    W[:2, :2] = [[0.9, -0.3], [0.3, 0.9]]
    W[2:, 2:] = np.diag([0.5, -0.2])
    W[0, 0] += eps
    return ElmanCell(W, np.zeros((4, 1)), None, nonlinearity="linear")


def test_infinitesimal_error_is_zero_when_equivariant_and_the_commutator_otherwise():
    A = torch.zeros(1, 4, 4, dtype=torch.float64)
    A[0, 0, 1], A[0, 1, 0] = -1.0, 1.0
    X = torch.randn(20, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    U0 = torch.zeros(20, 1, dtype=torch.float64)
    Au = torch.zeros(1, 1, 1, dtype=torch.float64)
    assert infinitesimal_errors(_rotation_net(), A, Au, X, U0).max() <= 1e-15
    cell = _rotation_net(eps=0.1)
    W = cell.W_hh.numpy()
    got = infinitesimal_errors(cell, A, Au, X, U0)[0].numpy()
    comm = A[0].numpy() @ W - W @ A[0].numpy()  # A F - J A x = [A, W] x for a linear map
    want = np.linalg.norm(X.numpy() @ comm.T, axis=1) / (1 + np.linalg.norm(X.numpy() @ W.T, axis=1))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_so2_on_a_linear_net_with_orbit_ranks():
    cell = _rotation_net()
    r = run(Model(cell=cell), EquivarianceOptions(group="so2", states="random", samples=50, elements=12,
                                                  rollout_steps=40, lyapunov_steps=200), _ctx())
    assert r.continuous and r.error <= 1e-14 and r.infinitesimal_error <= 1e-14
    assert r.rollout_error_final <= 1e-13
    assert np.all(r.orbit_rank == 1)
    A = torch.zeros(1, 4, 4, dtype=torch.float64)
    A[0, 0, 1], A[0, 1, 0] = -1.0, 1.0
    pts = torch.tensor([[0.0, 0.0, 1.0, 2.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert orbit_ranks(A, pts).tolist() == [0, 1]


def test_rollout_errors_of_a_broken_rotation_accumulate():
    """A linear map W: the rollout error is ||(W^t R - R W^t) x|| / (1 + ||W^t x||), here in closed form."""
    cell = _rotation_net(eps=0.05)
    group = parse_group("so2", n_state=4, n_inputs=1, n_outputs=0)
    sub, _ = group.sample(4, np.random.default_rng(0))
    X0 = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    worst, _ = rollout_errors(cell, sub, X0, torch.zeros(3, 6, 1, dtype=torch.float64))
    W = cell.W_hh.numpy()
    want = []
    for t in range(1, 7):
        Wt = np.linalg.matrix_power(W, t)
        e = [np.linalg.norm((Wt @ R - R @ Wt) @ x) / (1 + np.linalg.norm(Wt @ x))
             for R in sub.hidden.matrices() for x in X0.numpy()]
        want.append(max(e))
    np.testing.assert_allclose(worst.numpy(), want, rtol=1e-10)


# ---- discovery ---------------------------------------------------------------------------------
def test_discover_finds_the_sign_flip_and_nothing_continuous_in_a_tanh_net():
    W, U, _, W_r = _dense_net(bias=False)
    r = run(_model(W, U, None, W_r), EquivarianceOptions(discover=True, states="random", samples=100,
                                                         rollout_steps=10), _ctx())
    d = r.discovered
    assert d["generators"] == ["sign flip"] and d["group"] == "Z_2" and d["complete"]
    assert d["readout_equivariant"] and d["output_action"] == ["sign flip"]
    assert d["commutant_dim"] >= N and d["continuous_dim"] == 0 and d["continuous"].startswith("none")
    assert r.group == "discovered" and r.error <= 1e-14  # measured on the discovered group
    W, U, b, W_r = _dense_net(bias=True)
    d = run(_model(W, U, b, W_r), EquivarianceOptions(discover=True, group="sign", states="random", samples=50,
                                                      rollout_steps=5), _ctx()).discovered
    assert d["generators"] == [] and d["group"] == "trivial"


def test_discover_finds_the_cyclic_group():
    W, U, b = _circulant_net(bias=False)
    r = run(_model(W, U, b), EquivarianceOptions(discover=True, states="random", samples=100, rollout_steps=10),
            _ctx())
    d = r.discovered
    assert set(d["generators"]) == {"sign flip", "cyclic shift by 1"}
    assert d["order"] == 2 * N and d["group"] == f"Z_2 x Z_{N}" and d["continuous_dim"] == 0
    assert r.error <= 1e-14 and len(r.element_labels) == 2 * N
    Wb, Ub, bb = _circulant_net(bias=True)
    d = run(_model(Wb, Ub, bb), EquivarianceOptions(discover=True, group="sign", states="random", samples=20,
                                                    rollout_steps=5), _ctx()).discovered
    assert d["generators"] == ["cyclic shift by 1"] and d["group"] == f"Z_{N}"


def test_discover_finds_a_planted_signed_permutation():
    """W averaged over the powers of a random signed permutation P is invariant under it: P must be in the group."""
    rng = np.random.default_rng(4)
    n = 18
    perm = rng.permutation(n)
    sign = rng.choice([-1.0, 1.0], size=n)
    P = np.zeros((n, n))
    P[np.arange(n), perm] = sign
    W0, U0 = rng.normal(size=(n, n)), rng.normal(size=(n, 2))
    k = discovery.SignedPermutation(perm, sign, np.arange(2), np.ones(2)).order()
    Pk = [np.linalg.matrix_power(P, j) for j in range(k)]
    W = sum(M @ W0 @ M.T for M in Pk) / k
    U = sum(M @ U0 for M in Pk) / k  # input action trivial
    sym = discovery.signed_permutation_symmetries([W], [U], [np.zeros(n)], signs=True)
    elements, _, closed = discovery.generate_group(sym.generators, n, 2)
    assert closed and sym.complete
    dense = [discovery._dense(g.perm, g.sign) for g in elements]
    assert any(np.array_equal(M, P) for M in dense)
    for M, g in zip(dense, elements):  # every element found is a symmetry
        Q = discovery._dense(g.input_perm, g.input_sign)
        assert np.allclose(M @ W @ M.T, W, atol=1e-12) and np.allclose(M @ U @ Q.T, U, atol=1e-12)


def test_commutant_routes_agree_and_survivors_depend_on_the_nonlinearity():
    rng = np.random.default_rng(1)
    n = 12
    c = rng.normal(size=n)
    W = _circulant((c + c[(-np.arange(n)) % n]) / 2)  # symmetric circulant: eigenvalue pairs
    B_svd, _ = discovery.commutant(W, svd_max=32)
    B_eig, _ = discovery.commutant(W, svd_max=0)
    assert B_svd.shape[0] == B_eig.shape[0] == n + 2 * ((n - 1) // 2)  # sum of multiplicities squared
    for B in (B_svd, B_eig):
        assert max(np.abs(A @ W - W @ A).max() for A in B) <= 1e-12
    # the two bases span the same space
    Q = np.linalg.qr(B_svd.reshape(len(B_svd), -1).T)[0]
    R = B_eig.reshape(len(B_eig), -1).T
    assert np.linalg.norm(R - Q @ (Q.T @ R)) <= 1e-10 * np.linalg.norm(R)
    tanh, linear, relu = (get_nonlinearity(x) for x in ("tanh", "linear", "relu"))
    assert discovery.surviving_generators(B_eig, nonlinearity=tanh, W_uh=None, b=None).shape[0] == 0
    assert discovery.surviving_generators(B_eig, nonlinearity=linear, W_uh=None, b=None).shape[0] == B_eig.shape[0]
    scale = discovery.surviving_generators(B_eig, nonlinearity=relu, W_uh=None, b=None)
    assert scale.shape[0] == 1 and np.allclose(scale[0] / scale[0][0, 0], np.eye(n))  # h -> c h
    assert discovery.surviving_generators(B_eig, nonlinearity=relu, W_uh=None, b=np.ones(n)).shape[0] == 0


def test_discover_reports_a_continuous_symmetry_of_a_linear_net():
    r = run(Model(cell=_rotation_net()), EquivarianceOptions(discover=True, group="so2", states="random",
                                                             samples=20, rollout_steps=5, lyapunov_steps=50),
            _ctx())
    d = r.discovered
    # distinct eigenvalues: polynomials in W, a I + b J on the rotating pair and the two diagonal
    # units; only J (the rotation generator) is skew
    assert d["commutant_dim"] == 4 and d["continuous_dim"] == 4 and d["continuous_compact_dim"] == 1
    assert d["continuous_generators"].shape == (4, 4, 4)


def test_discover_on_a_gru_finds_a_gate_wise_permutation():
    rng = np.random.default_rng(2)
    n, d = 6, 2
    W_hh = np.concatenate([_circulant(rng.normal(size=n)) for _ in range(3)])
    W_ih = np.concatenate([np.tile(rng.normal(size=(1, d)), (n, 1)) for _ in range(3)])
    b = np.concatenate([np.full(n, rng.normal()) for _ in range(3)])
    r = run(Model(cell=GRUCell(W_ih, W_hh, b, b)), EquivarianceOptions(discover=True, states="random",
                                                                       samples=30, rollout_steps=5), _ctx())
    assert r.discovered["generators"] == ["cyclic shift by 1"] and r.error <= 1e-14


# ---- report, options, CLI ----------------------------------------------------------------------
def test_report_layout_and_summary_keys(tmp_path):
    W, U, b = _circulant_net(seed=3)
    model = _model(W + 1e-5, U, b, np.eye(N), task="copy:width=24")
    out = analyze(ANALYSIS, tmp_path / "net.pt", EquivarianceOptions(group="cyclic", input_action="shift",
                                                                     output_action="shift",
                                                                     samples=200, elements=8, discover=True,
                                                                     rollout_steps=25),
                  RunSettings(out_dir=tmp_path), model=model)
    s = json.loads(out.paths.json.read_text())
    for key in ("group", "error", "mean_error", "worst_element", "readout_error", "infinitesimal_error",
                "rollout_error_final", "dtype_floor", "discovered", "expected_neutral_modes",
                "observed_neutral_modes"):
        assert key in s, key
    assert s["states"].startswith("task (copy") and s["n_elements"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "net.equivariance.elements.png", "net.equivariance.h5", "net.equivariance.json",
        "net.equivariance.rollout.png"]
    with h5py.File(out.paths.h5) as f:
        g = f["equivariance"]
        assert g["per_element_error"].shape == (8,) and g["per_state_error"].shape == (200,)
        assert g["rollout_error"].shape == (25,) and g["discovered/perms"].shape[1] == N
        assert list(g["element_labels"].asstr()[()])[0] == "shift 0"
        assert g.attrs["option_group"] == "cyclic"


def test_input_errors():
    W, U, b, _ = _dense_net(bias=False)
    with pytest.raises(InputError, match="--group is required"):
        run(_model(W, U), EquivarianceOptions(states="random"), _ctx())
    with pytest.raises(InputError, match="--states 'nowhere' must be task, random"):
        EquivarianceOptions(group="sign", states="nowhere")
    with pytest.raises(InputError, match="needs task data|--task NAME"):
        run(_model(W, U), EquivarianceOptions(group="sign"), _ctx())


def test_states_from_a_file(tmp_path):
    W, U, b, _ = _dense_net(bias=True)
    X = np.random.default_rng(0).normal(size=(40, N))
    np.savez(tmp_path / "s.npz", states=X, inputs=np.ones((40, D)))
    r = run(_model(W, U, b), EquivarianceOptions(group="sign", states=str(tmp_path / "s.npz"), rollout_steps=5),
            _ctx())
    truth = _numpy_errors(W, U, b, [np.eye(N), -np.eye(N)], [np.eye(D), -np.eye(D)], X, np.ones((40, D)))
    assert r.n_states == 40 and r.error == pytest.approx(truth, rel=1e-12)
    np.savez(tmp_path / "bad.npz", states=X[:, :5])
    with pytest.raises(InputError, match=r"'states' has shape \[40, 5\]; the model's states are \[S, 24\]"):
        run(_model(W, U, b), EquivarianceOptions(group="sign", states=str(tmp_path / "bad.npz")), _ctx())


def _checkpoint(tmp_path, bias: bool):
    W, U, b, W_r = _dense_net(bias=bias)
    z = torch.zeros(N, dtype=torch.float64)
    sd = {"rnn.weight_hh_l0": torch.as_tensor(W), "rnn.weight_ih_l0": torch.as_tensor(U),
          "rnn.bias_hh_l0": torch.as_tensor(b) if bias else z, "rnn.bias_ih_l0": z,
          "readout.weight": torch.as_tensor(W_r), "readout.bias": torch.zeros(O, dtype=torch.float64)}
    path = tmp_path / ("biased.pt" if bias else "clean.pt")
    torch.save(sd, path)
    return path


def test_cli_gate_exit_codes(tmp_path):
    from rnnprobe.cli.app import app

    runner = CliRunner()
    common = ["--group", "sign", "--states", "random", "--samples", "200", "--rollout-steps", "10",
              "--max-error", "1e-6", "--no-plots", "-q", "--out", str(tmp_path / "r")]
    r = runner.invoke(app, ["equivariance", str(_checkpoint(tmp_path, bias=False)), *common, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["error"] <= 1e-14
    r = runner.invoke(app, ["equivariance", str(_checkpoint(tmp_path, bias=True)), *common])
    assert r.exit_code == 1, r.output
    assert "gate failed: step equivariance error" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(app, ["equivariance", str(_checkpoint(tmp_path, bias=True)), "--group", "rot",
                            "--states", "random", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "unknown group" in r.stderr


def test_so2_rotate_k_input_action():
    """rotate:1 (an extension of the group parser) rotates inputs 1-2 and leaves input 0 fixed."""
    g = parse_group("so2", n_state=6, n_inputs=3, n_outputs=2, input_action="rotate:1", output_action="rotate")
    _, Au, Ay = g.generator_matrices()
    assert np.array_equal(Au[0].numpy(), [[0, 0, 0], [0, 0, -1], [0, 1, 0]])
    assert np.array_equal(Ay[0].numpy(), [[0, -1], [1, 0]])
    with pytest.raises(InputError, match="rotate needs an even number of inputs"):
        parse_group("so2", n_state=6, n_inputs=3, n_outputs=2, input_action="rotate")
    with pytest.raises(InputError, match="rotate:K needs an integer"):
        parse_group("so2", n_state=6, n_inputs=3, n_outputs=2, input_action="rotate:x")
    with pytest.raises(InputError, match="does not apply to this group"):
        parse_group("sign", n_state=6, n_inputs=3, n_outputs=2, input_action="rotate:1")
