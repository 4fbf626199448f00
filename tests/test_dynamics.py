"""rnnprobe dynamics: known answers computed here independently (closed forms, scipy quad / solve_ivp, numpy).

Systems (column convention, J = [[0, -1], [1, 0]]):
- the 2-unit linear skew flow dh/dt = omega J h (a rotation), as a residual cell with step eps;
- the paper's conservative setting dh/dt = tanh(a J h): closed orbits on the level sets of
  H = log cosh(a h1) + log cosh(a h2), whose period is a quadrature;
- a stable limit cycle: skew coupling with self-excitation, dh/dt = -h + tanh(W h) with
  W = [[1.5 I + 2 J, 0], [0.8 e1^T, 0.3]] (the two-neuron CTRNN oscillator driving a contracting unit);
- a symmetric network (gradient-like: fixed points only);
- a linear stable focus integrated with Euler steps below and above 2a / (a^2 + b^2);
- AntisymmetricRNN's W = 2 J - gamma I, whose Euler map oscillates where its flow does not.
"""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy.integrate import quad, solve_ivp
from scipy.optimize import brentq
from typer.testing import CliRunner

from rnnprobe import flows
from rnnprobe.analyses import dynamics as D
from rnnprobe.analyses.base import RunContext
from rnnprobe.cells import ElmanCell
from rnnprobe.errors import InputError
from rnnprobe.model import Model
from rnnprobe.pipeline import RunSettings, analyze, task_source

J = np.array([[0.0, -1.0], [1.0, 0.0]])
FAST = dict(inits=6, warmup=300, max_warmup=3000, steps=600, exponents=2)
W3 = np.array([[1.5, -2.0, 0.0], [2.0, 1.5, 0.0], [0.8, 0.0, 0.3]])


def _run(cell, **kw):
    return D.run(Model(cell=cell), D.DynamicsOptions(**{**FAST, **kw}), RunContext(seed=3))


def _logcosh(x):
    x = np.abs(x)
    return x + np.log1p(np.exp(-2 * x)) - np.log(2)


@pytest.fixture(scope="module")
def limit_cycle_result():
    return _run(ElmanCell(W3, alpha=0.1), exponents=3)


def test_weight_structure_matches_numpy():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(6, 6))
    gamma = 0.3
    W = A - A.T - gamma * np.eye(6)
    st = D.weight_structure(torch.tensor(W))
    Wa, Ws = (W - W.T) / 2, (W + W.T) / 2
    assert st["skew_fraction"] == pytest.approx(np.linalg.norm(Wa) / np.linalg.norm(W), rel=1e-12)
    assert st["sym_top_eigenvalue"] == pytest.approx(np.linalg.eigvalsh(Ws)[-1], abs=1e-12)
    assert st["gamma"] == pytest.approx(gamma, abs=1e-12) and st["sym_isotropy"] < 1e-12
    assert not st["purely_imaginary"] and st["max_abs_real"] == pytest.approx(gamma, abs=1e-10)
    skew = D.weight_structure(torch.tensor(A - A.T))
    assert skew["purely_imaginary"] and skew["skew_fraction"] == pytest.approx(1.0, abs=1e-15)
    assert D.weight_structure(torch.tensor(A + A.T))["skew_fraction"] < 1e-15


def test_euler_stability_closed_forms():
    # a linear stable focus lambda = -a +- i b: |1 + dt lambda| and the largest stable step 2a / (a^2 + b^2)
    a, b = 1.0, 2.0
    W = (1 - a) * np.eye(2) + b * J  # leaky linear: f = -h + W h = (-a I + b J) h
    for dt in (0.38, 0.42):
        cell = ElmanCell(W, alpha=dt, nonlinearity="linear")
        eu = D.euler_stability(cell, torch.zeros(1, 2, dtype=torch.float64))
        assert eu["factor"].item() == pytest.approx(abs(1 + dt * complex(-a, b)), rel=1e-12)
        assert eu["max_stable_step"].item() == pytest.approx(2 * a / (a * a + b * b), rel=1e-12)
        assert bool(eu["flagged"].item()) == (dt > 0.4)
    # the rotation: neutral, every Euler step amplifies by sqrt(1 + eps^2 omega^2)
    omega, eps = 1.3, 0.1
    rot = ElmanCell(omega * J, alpha=eps, form="residual", nonlinearity="linear")
    eu = D.euler_stability(rot, torch.zeros(1, 2, dtype=torch.float64))
    assert eu["factor"].item() == pytest.approx(np.sqrt(1 + (eps * omega) ** 2), rel=1e-12)
    assert eu["max_stable_step"].item() == 0.0 and bool(eu["flagged"].item())
    # an unstable flow is not the integrator's fault: not flagged, no stable step
    up = D.euler_stability(ElmanCell(1.5 * np.eye(2) + 2 * J, alpha=0.1), torch.zeros(1, 2, dtype=torch.float64))
    assert not bool(up["flagged"].item()) and np.isnan(up["max_stable_step"].item())


def test_rotation_conserves_the_norm_with_period_2pi_over_omega_and_its_euler_map_spirals_out():
    omega, eps = 1.3, 0.1
    r = _run(ElmanCell(omega * J, alpha=eps, form="residual", nonlinearity="linear"), max_warmup=600)
    s = r.summary()
    assert s["classification"] == "divergent" and s["purely_imaginary"] and s["skew_fraction"] == 1.0
    assert s["euler_flagged"] and s["euler_factor"] == pytest.approx(np.sqrt(1 + (eps * omega) ** 2), rel=1e-12)
    assert s["euler_margin"] < 0 and s["euler_max_stable_step"] == 0.0
    # the flow: a closed orbit of period 2 pi / omega, both multipliers 1, the norm (and H) conserved
    assert s["flow_cycle"] and s["flow_period"] == pytest.approx(2 * np.pi / omega, rel=1e-8)
    assert abs(s["floquet_trivial"] - 1) < 1e-6 and abs(s["floquet_max"] - 1) < 1e-6
    assert s["floquet_stability"] == "neutral"
    assert s["invariant_conserved"] and abs(s["invariant_drift_flow"]) < 1e-8
    # the map: |h_{t+1}|^2 = (1 + eps^2 omega^2) |h_t|^2 exactly, so d log H / dt = log(1 + eps^2 omega^2) / eps
    rate = np.log1p((eps * omega) ** 2) / eps
    assert s["invariant_drift"] == pytest.approx(rate, rel=1e-9)
    np.testing.assert_allclose(r.invariant["norm_drift"], rate, rtol=1e-9)


def test_conservative_skew_tanh_flow_has_closed_orbits_with_the_quadrature_period():
    a, x0 = 2.0, 0.8
    cell = ElmanCell(a * J, alpha=0.1, form="residual")
    sh = D.shoot_cycle(cell, torch.tensor([[x0, 0.0]], dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64),
                       n_steps=400)
    assert sh.converged[0]
    x = sh.state[0].numpy()
    # the level set log cosh(a h1) + log cosh(a h2) = E; a quarter period is h2: 0 -> x_max at h2' = tanh(a h1)
    E = _logcosh(a * x[0]) + _logcosh(a * x[1])
    xm = brentq(lambda s: _logcosh(a * s) - E, 0.0, 10.0)

    def integrand(th):  # h2 = xm sin(th) removes the endpoint's square-root singularity
        h2 = xm * np.sin(th)
        h1 = np.arccosh(np.exp(E - _logcosh(a * h2))) / a
        return xm * np.cos(th) / np.tanh(a * h1)

    T = 4 * quad(integrand, 0, np.pi / 2, limit=200, epsabs=1e-13, epsrel=1e-13)[0]
    assert sh.period.item() == pytest.approx(T, rel=1e-8)
    row = D._shooting_row(sh, 0)
    assert row["stability"] == "neutral" and np.all(np.abs(sh.multipliers[0] - 1) < 1e-6)
    orbit = flows.integrate(cell, sh.state, sh.period, 1000, record=True).states[0]
    H = flows.motion_invariant(cell, orbit).numpy()
    assert np.ptp(H) < 1e-10 * H.mean() and H.mean() == pytest.approx(E, rel=1e-10)


def test_stable_limit_cycle_floquet_multipliers(limit_cycle_result):
    r = limit_cycle_result
    s = r.summary()
    assert s["classification"] == "limit_cycle" and s["basin_share"] == 1.0 and s["flow_cycle"]
    assert abs(s["floquet_trivial"] - 1) < 1e-6 and s["floquet_max"] < 1 and s["floquet_stability"] == "stable"
    mu = r.cycles["cycle_0"]["floquet"]
    x = r.cycles["cycle_0"]["flow_orbit"][0].numpy()
    T = s["flow_period"]

    def f(t, y):
        h = y[:3]
        d = 1 - np.tanh(W3 @ h) ** 2
        return np.concatenate([-h + np.tanh(W3 @ h), [np.trace(-np.eye(3) + d[:, None] * W3)]])

    # Liouville: the product of the multipliers is exp of the integral of tr(df/dh) over one period
    sol = solve_ivp(f, (0, T), np.concatenate([x, [0.0]]), method="DOP853", rtol=1e-12, atol=1e-12)
    assert np.linalg.norm(sol.y[:3, -1] - x) < 1e-8  # the orbit closes after the reported period
    assert np.prod(mu).real == pytest.approx(np.exp(sol.y[3, -1]), rel=1e-6)
    # the period is the return time to the section through x normal to f(x)
    fx = -x + np.tanh(W3 @ x)
    event = lambda t, y: (y[:3] - x) @ fx  # noqa: E731
    event.direction = 1
    ret = solve_ivp(lambda t, y: f(t, y), (0, 1.5 * T), np.concatenate([x + 1e-3 * fx, [0.0]]), method="DOP853",
                    rtol=1e-12, atol=1e-12, events=event)
    assert ret.t_events[0][0] + 1e-3 == pytest.approx(T, rel=1e-6)
    # the map's own cycle: one exponent near zero, the others negative; the map and the flow differ by O(dt)
    lam = r.attractors[0]["exponents"]
    assert abs(lam[0]) < 2e-3 and max(lam[1:]) < -0.05
    assert s["period_time"] == pytest.approx(T, rel=0.15) and r.attractors[0]["flow_map_distance"] < 0.3
    assert s["euler_flagged"] is False and s["invariant"] is None


def test_symmetric_network_converges_to_fixed_points():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(8, 8)) / np.sqrt(8)
    W = 1.2 * (A + A.T) / np.sqrt(2)
    cell = ElmanCell(W, rng.normal(size=(8, 1)), 0.1 * rng.normal(size=8), alpha=0.5)
    r = _run(cell, input="0.3")
    assert set(r.trajectory_kind) == {"fixed_point"} and r.classification == "fixed_point"
    assert sum(a["basin_share"] for a in r.attractors) == pytest.approx(1.0)
    U, b = cell.W_uh.numpy(), cell.b.numpy()
    for h in r.fixed_points:  # F(h) = h, recomputed in numpy
        np.testing.assert_allclose(0.5 * h + 0.5 * np.tanh(W @ h + U[:, 0] * 0.3 + b), h, atol=1e-10)
    assert r.structure["skew_fraction"] < 1e-15 and not r.euler_summary["flagged"]
    assert all(max(a["exponents"]) < 0 for a in r.attractors)


@pytest.mark.parametrize("dt,flagged", [(0.38, False), (0.42, True)])
def test_euler_step_past_the_margin_is_flagged(dt, flagged):
    a, b = 1.0, 2.0
    cell = ElmanCell((1 - a) * np.eye(2) + b * J, alpha=dt, nonlinearity="linear")
    options = D.DynamicsOptions(**{**FAST, "max_warmup": 600}, fail_if_euler_unstable=True)
    ctx = RunContext()
    r = D.run(Model(cell=cell), options, ctx)
    assert r.euler_summary["flagged"] is flagged
    assert r.euler_summary["max_stable_step"] == pytest.approx(0.4, rel=1e-12)
    assert (r.euler_summary["margin"] < 0) is flagged
    assert r.classification == ("divergent" if flagged else "fixed_point")
    failures = D.gate(r, options)
    assert bool(failures) is flagged and bool(ctx.warnings) is flagged
    if flagged:
        assert "Euler step dt=0.42 is unstable where the flow is not" in failures[0]


def test_antisymmetric_rnn_oscillates_only_through_its_euler_step():
    gamma, omega = 0.2, 2.0
    W = omega * J - gamma * np.eye(2)
    # past the margin 2 gamma / (gamma^2 + omega^2) the Euler map has an attracting closed curve; the flow has none
    r = _run(ElmanCell(W, alpha=0.2, form="residual"))
    s = r.summary()
    assert s["classification"] == "limit_cycle" and s["flow_cycle"] is False and s["floquet_source"] == "map"
    assert s["euler_flagged"] and s["gamma"] == pytest.approx(gamma)
    assert any("property of the discrete map" in n for n in r.notes)
    assert 0 < s["floquet_max"] < 1 and s["flow_classification"] in ("fixed_point", "unresolved")
    assert abs(r.attractors[0]["exponents"][0]) < 2e-3  # the zero exponent along the curve
    # across and along the curve, the map's multipliers over one period multiply to the period's share of the
    # long-run mean of log|det J| (plain numpy over 100 periods); the one along the curve is near 1
    h = r.cycles["cycle_0"]["states"][0].numpy()
    acc, n = 0.0, 9000
    for _ in range(n):
        z = W @ h
        acc += np.log(abs(np.linalg.det(np.eye(2) + 0.2 * (1 - np.tanh(z) ** 2)[:, None] * W)))
        h = h + 0.2 * np.tanh(z)
    det = np.exp(acc / n * s["period"])
    along = r.attractors[0]["map_multiplier_trivial"].real
    assert abs(along - 1) < 0.03 and s["floquet_max"] * along == pytest.approx(det, rel=1e-2)
    # below the margin: a stable focus
    small = _run(ElmanCell(W, alpha=0.05, form="residual"), max_warmup=20000)
    assert small.classification == "fixed_point" and not small.euler_summary["flagged"]


def test_large_networks_skip_the_multipliers():
    r = _run(ElmanCell(1.5 * np.eye(2) + 2 * J, alpha=0.1), floquet_max_units=1, exponents=0)
    s = r.summary()
    assert s["classification"] == "limit_cycle" and np.isnan(s["floquet_max"]) and s["floquet_source"] is None
    assert s["period"] > 0 and any("--floquet-max-units=1" in n for n in r.notes)
    with pytest.raises(InputError, match="GiB of recorded states .limit 4 GiB.; lower --inits or --steps"):
        _run(ElmanCell(np.eye(2), alpha=0.1), inits=4096, steps=10**6, max_warmup=10**6)


def test_gated_cell_runs_through_the_interface():
    from rnnprobe.cells import GRUCell

    torch.manual_seed(0)
    gru = torch.nn.GRU(1, 4, batch_first=True).double()
    cell = GRUCell(gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
    r = _run(cell, input="0.5", exponents=0, steps=200, warmup=100, max_warmup=400)  # torch.func Jacobians: slow
    assert r.structure is None and r.invariant["applies"] is False and r.flow["kind"] is None
    assert r.classification == "fixed_point" and not r.euler_summary["flagged"]
    assert any("not an Euler discretisation" in n for n in r.notes)
    J = cell.jacobian(torch.tensor(r.fixed_points[:1]), torch.tensor([0.5], dtype=torch.float64))[0].numpy()
    row = next(rw for rw in r.euler if rw["state"] == "fixed point 0")
    assert row["factor"] == pytest.approx(np.abs(np.linalg.eigvals(J)).max(), rel=1e-10)


def test_options_and_input_errors():
    with pytest.raises(InputError, match="--input='a,b' must be comma-separated numbers"):
        D.DynamicsOptions(input="a,b")
    with pytest.raises(InputError, match="--max-warmup=10 must be >= --warmup=20"):
        D.DynamicsOptions(warmup=20, max_warmup=10)
    cell = ElmanCell(J, np.ones((2, 1)), alpha=0.1, form="residual")
    with pytest.raises(InputError, match="--input has 2 value.s. but the model takes 1 input"):
        _run(cell, input="1,2")


def test_report_layout_and_summary(tmp_path, limit_cycle_result):
    cell = ElmanCell(2.0 * J, alpha=0.1, form="residual", W_r=np.ones((1, 2)))
    out = analyze(D.ANALYSIS, tmp_path / "net.pt", D.DynamicsOptions(**{**FAST, "max_warmup": 600}),
                  RunSettings(out_dir=tmp_path), model=Model(cell=cell))
    summary = json.loads(out.paths.json.read_text())
    for key in ("classification", "period", "floquet_max", "skew_fraction", "euler_margin", "euler_factor",
                "euler_max_stable_step", "invariant_drift", "basin_share", "flow_period", "time_unit"):
        assert key in summary, key
    assert summary["skew_fraction"] == 1.0 and summary["invariant_conserved"] is True
    assert sorted(out.paths.plots) == ["floquet", "invariant", "trajectories"]
    with h5py.File(out.paths.h5, "r") as f:
        g = f["dynamics"]
        assert g.attrs["classification"] == summary["classification"]
        assert g["invariant/series"].shape == (FAST["steps"] + 1,)
        assert g["euler"].attrs["n_rows"] >= 1 and "structure/W_a" in g

        def no_bool_or_complex(name, obj):
            if isinstance(obj, h5py.Dataset):
                assert obj.dtype.kind not in "bc", name

        f.visititems(no_bool_or_complex)
    # a limit cycle's report holds the cycle, its flow orbit and the multipliers
    figs = D.ANALYSIS.plot_function()(limit_cycle_result, None)
    assert sorted(figs) == ["floquet", "trajectories"]
    assert limit_cycle_result.cycles["cycle_0"]["states"].shape[1] == 3


def test_cli_on_a_residual_checkpoint(tmp_path):
    from rnnprobe.cli.app import app

    W = 2.0 * J - 0.05 * np.eye(2)
    sd = {"rnn.weight_hh_l0": torch.tensor(W), "rnn.weight_ih_l0": torch.zeros(2, 1, dtype=torch.float64),
          "rnn.bias_hh_l0": torch.zeros(2, dtype=torch.float64), "rnn.bias_ih_l0": torch.zeros(2, dtype=torch.float64),
          "readout.weight": torch.ones(1, 2, dtype=torch.float64), "readout.bias": torch.zeros(1, dtype=torch.float64)}
    ckpt = tmp_path / "osc.pt"
    torch.save(sd, ckpt)
    (tmp_path / "osc.pt.json").write_text(json.dumps({"form": "residual", "eps": 0.2}))
    args = ["dynamics", str(ckpt), "--inits", "4", "--warmup", "300", "--steps", "600", "--max-warmup", "3000",
            "--exponents", "0", "--out", str(tmp_path / "r"), "--no-plots"]
    runner = CliRunner()
    res = runner.invoke(app, [*args, "--json", "--expect", "fixed_point"])
    assert res.exit_code == 1 and "the dominant attractor is limit_cycle, not fixed_point" in res.stderr
    summary = json.loads(res.stdout)
    assert summary["classification"] == "limit_cycle" and summary["euler_step"] == 0.2
    assert summary["gate_failures"] and summary["euler_flagged"] is True
    res = runner.invoke(app, [*args, "--input", "1,2"])
    assert res.exit_code == 2 and "--input has 2 value(s)" in res.stderr and "Traceback" not in res.output


SAMPLES = {name: Path(__file__).resolve().parents[1] / "sample_checkpoints" / f"{name}.pt"
           for name in ("osc_skew", "osc_antisym", "osc_rnn")}
SAMPLE_OPTIONS = dict(inits=8, warmup=500, max_warmup=4000, steps=1000, exponents=2)


def _sample(name):
    from rnnprobe.checkpoints import load_checkpoint

    model = load_checkpoint(SAMPLES[name])
    source, _ = task_source(model, RunSettings())  # the sidecar's task: half the initial states, the horizon
    return model, D.run(model, D.DynamicsOptions(**SAMPLE_OPTIONS), RunContext(seed=0, task_source=source))


def test_generic_tanh_sample_is_a_limit_cycle_generating_the_trained_sine():
    _, r = _sample("osc_rnn")
    s = r.summary()
    assert s["classification"] == "limit_cycle" and s["input"] == [1.0]  # the sidecar's autonomous_input
    assert s["period"] == pytest.approx(2 * np.pi / 0.2, rel=0.01)  # sin(0.2 t): 31.4 steps
    assert s["initial_period"] == pytest.approx(2 * np.pi / 0.2, rel=0.01)
    assert s["output_amplitude"][0] == pytest.approx(1.0, rel=0.05)
    assert s["flow_cycle"] and abs(s["floquet_trivial"] - 1) < 1e-6 and s["floquet_max"] < 1
    assert s["invariant"] is None and r.invariant["applies"] is False


def test_skew_sample_conserves_its_invariant_in_the_flow_and_drifts_in_the_map():
    model, r = _sample("osc_skew")
    s = r.summary()
    W = model.cell.W_hh.numpy()
    assert np.array_equal(W, -W.T)  # saved exactly skew-symmetric
    assert s["skew_fraction"] == 1.0 and s["purely_imaginary"] and s["sym_top_eigenvalue"] == 0.0
    assert s["invariant_conserved"] and abs(s["invariant_drift_flow"]) < 1e-8
    assert s["invariant_drift"] > 1e-3 and s["invariant_drift_euler"] == pytest.approx(s["invariant_drift"], rel=1e-6)
    assert s["euler_flagged"] and s["euler_max_stable_step"] == 0.0
    assert s["initial_period"] == pytest.approx(2 * np.pi / 0.2, rel=0.03)


def test_antisymmetric_sample_euler_margin_matches_the_spectrum_of_W():
    model, r = _sample("osc_antisym")
    s = r.summary()
    W = model.cell.W_hh.numpy()
    gamma = -np.trace(W) / W.shape[0]
    assert s["gamma"] == pytest.approx(0.01, rel=1e-6) and r.structure["sym_isotropy"] < 1e-7
    # at a fixed point of the residual flow W h + U u + b = 0, so tanh' = 1 and the flow's Jacobian is W itself
    lam = np.linalg.eigvals(W)
    fixed = [row for row in r.euler if row["state"].startswith("fixed point")]
    assert fixed and r.fixed_points.shape[0] == len(fixed)
    assert fixed[0]["factor"] == pytest.approx(np.abs(1 + 0.1 * lam).max(), rel=1e-9)
    assert fixed[0]["max_stable_step"] == pytest.approx(np.min(2 * gamma / np.abs(lam) ** 2), rel=1e-6)
    assert s["euler_flagged"] and s["invariant_drift_flow"] < 0 < s["invariant_drift_euler"]
