"""rnnprobe.flows: the continuous-time field behind each cell form, RK4 with its tangent map, the motion invariant.

References are computed here independently: numpy formulas of the field,
central differences, scipy's expm and solve_ivp (DOP853).
"""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm

from rnnprobe import flows
from rnnprobe.cells import ElmanCell, GRUCell
from rnnprobe.errors import InputError


def _net(form, n=5, d=2, seed=0, alpha=0.3, nonlinearity="tanh"):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n, n)) / np.sqrt(n) * 1.5
    U = rng.normal(size=(n, d))
    b = 0.1 * rng.normal(size=n)
    return ElmanCell(W, U, b, alpha=alpha, form=form, nonlinearity=nonlinearity), W, U, b


def _field_np(form, W, U, b, h, u, alpha, dt):
    """The documented fields, written out in numpy (column convention, one state)."""
    if form == "leaky":
        return (np.tanh(W @ h + U @ u + b) - h) * alpha / dt
    if form == "rate-outside":
        return (W @ np.tanh(h) + U @ u + b - h) * alpha / dt
    return np.tanh(W @ h + U @ u + b) * alpha / dt


@pytest.mark.parametrize("form", ["leaky", "rate-outside", "residual"])
@pytest.mark.parametrize("dt", [None, 0.02])
def test_field_jacobian_and_jvp_match_independent_formulas(form, dt):
    cell, W, U, b = _net(form)
    rng = np.random.default_rng(1)
    h = rng.normal(size=(4, 5))
    u = rng.normal(size=2)
    step = 0.3 if dt is None else dt
    assert flows.time_step(cell, dt) == step
    f = flows.vector_field(cell, torch.tensor(h), u, dt=dt).numpy()
    ref = np.stack([_field_np(form, W, U, b, hi, u, 0.3, step) for hi in h])
    np.testing.assert_allclose(f, ref, rtol=1e-13, atol=1e-13)
    # the map is exactly one Euler step of the field
    np.testing.assert_allclose(cell.step(torch.tensor(h), torch.tensor(u)).numpy(), h + step * ref, atol=1e-13)
    J = flows.flow_jacobian(cell, torch.tensor(h), u, dt=dt).numpy()
    e = 1e-6
    for i in range(2):
        fd = np.stack([(_field_np(form, W, U, b, h[i] + e * v, u, 0.3, step)
                        - _field_np(form, W, U, b, h[i] - e * v, u, 0.3, step)) / (2 * e) for v in np.eye(5)], 1)
        np.testing.assert_allclose(J[i], fd, rtol=1e-6, atol=1e-7)
    V = torch.tensor(rng.normal(size=(4, 5, 3)))
    np.testing.assert_allclose(flows.flow_jvp(cell, torch.tensor(h), u, V, dt=dt).numpy(), J @ V.numpy(), atol=1e-12)
    np.testing.assert_allclose(flows.flow_jvp(cell, torch.tensor(h), u, V[:, :, 0], dt=dt).numpy(),
                               np.einsum("bij,bj->bi", J, V.numpy()[:, :, 0]), atol=1e-12)
    # the map's Jacobian is I + dt * df/dh
    np.testing.assert_allclose(cell.jacobian(torch.tensor(h), torch.tensor(u)).numpy(), np.eye(5) + step * J,
                               atol=1e-12)


def test_gated_cell_flow_is_defined_by_the_map():
    torch.manual_seed(0)
    gru = torch.nn.GRU(2, 3, batch_first=True).double()
    cell = GRUCell(gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
    h = torch.randn(4, 3, dtype=torch.float64)
    f = flows.vector_field(cell, h, None, dt=0.5)
    torch.testing.assert_close(h + 0.5 * f, cell.step(h))
    J = flows.flow_jacobian(cell, h, None, dt=0.5)
    torch.testing.assert_close(torch.eye(3, dtype=torch.float64) + 0.5 * J, cell.jacobian(h))
    assert flows.time_step(cell) == 1.0
    with pytest.raises(InputError, match="dt=-1.0 must be a positive number"):
        flows.time_step(cell, -1.0)


def test_rk4_rotation_and_its_tangent_match_the_matrix_exponential():
    omega = 1.7
    W = omega * np.array([[0.0, -1.0], [1.0, 0.0]])
    cell = ElmanCell(W, alpha=0.1, form="residual", nonlinearity="linear")
    h0 = torch.tensor([[1.0, 0.0], [0.3, -0.2]], dtype=torch.float64)
    T = torch.tensor([2 * np.pi / omega, 1.3], dtype=torch.float64)
    sol = flows.integrate(cell, h0, T, 2000, tangent=True, record=True)
    for i in range(2):
        E = expm(W * T[i].item())
        np.testing.assert_allclose(sol.state[i].numpy(), E @ h0[i].numpy(), atol=1e-9)
        np.testing.assert_allclose(sol.tangent[i].numpy(), E, atol=1e-9)
    # one full period returns to the start and conserves the norm at every recorded state
    np.testing.assert_allclose(sol.state[0].numpy(), [1.0, 0.0], atol=1e-9)
    norms = sol.states[0].norm(dim=-1).numpy()
    np.testing.assert_allclose(norms, 1.0, atol=1e-9)
    # no steps: the start comes back as a copy, never the caller's tensor itself
    zero = flows.integrate(cell, h0, T, 0)
    assert torch.equal(zero.state, h0) and zero.state.data_ptr() != h0.data_ptr()


@pytest.mark.parametrize("form", ["leaky", "residual"])
def test_rk4_matches_solve_ivp_and_tangent_matches_finite_differences(form):
    cell, W, U, b = _net(form, n=4, d=1, seed=3, alpha=0.2)
    u = np.array([0.5])
    h0 = np.random.default_rng(4).normal(size=4)
    T = 3.0
    ref = solve_ivp(lambda t, x: _field_np(form, W, U, b, x, u, 0.2, 0.2), (0, T), h0, method="DOP853",
                    rtol=1e-12, atol=1e-12).y[:, -1]
    sol = flows.integrate(cell, torch.tensor(h0[None]), T, 600, u, tangent=True)
    np.testing.assert_allclose(sol.state[0].numpy(), ref, atol=1e-8)
    e = 1e-6
    cols = []
    for v in np.eye(4):
        p = flows.integrate(cell, torch.tensor((h0 + e * v)[None]), T, 600, u).state[0].numpy()
        m = flows.integrate(cell, torch.tensor((h0 - e * v)[None]), T, 600, u).state[0].numpy()
        cols.append((p - m) / (2 * e))
    np.testing.assert_allclose(sol.tangent[0].numpy(), np.stack(cols, 1), atol=1e-7)


def test_invariant_is_conserved_by_the_skew_residual_flow_and_its_rate_is_exact():
    rng = np.random.default_rng(5)
    A = rng.normal(size=(4, 4))
    W = A - A.T
    U = rng.normal(size=(4, 1))
    b = 0.2 * rng.normal(size=4)
    u = np.array([0.7])
    cell = ElmanCell(W, U, b, alpha=0.1, form="residual")
    h0 = rng.normal(size=4)
    sol = solve_ivp(lambda t, x: np.tanh(W @ x + U @ u + b), (0, 20), h0, method="DOP853", rtol=1e-12,
                    atol=1e-12, dense_output=True)
    states = sol.sol(np.linspace(0, 20, 50)).T
    H = flows.motion_invariant(cell, torch.tensor(states), u).numpy()
    z = states @ W.T + U @ u + b
    H_ref = np.log(np.cosh(z)).sum(-1)
    np.testing.assert_allclose(H, H_ref, rtol=1e-13)
    assert np.ptp(H) < 1e-9 * H.mean()
    np.testing.assert_allclose(flows.invariant_rate(cell, torch.tensor(states), u).numpy(), 0.0, atol=1e-14)
    # a symmetric part makes H drift at exactly (eps/dt) phi(z)^T W_s phi(z): check against a difference quotient
    S = rng.normal(size=(4, 4))
    W2 = W + 0.3 * (S + S.T)
    cell2 = ElmanCell(W2, U, b, alpha=0.1, form="residual")
    x = rng.normal(size=(3, 4))
    e = 1e-6
    fx = flows.vector_field(cell2, torch.tensor(x), u).numpy()
    dH = (flows.motion_invariant(cell2, torch.tensor(x + e * fx), u)
          - flows.motion_invariant(cell2, torch.tensor(x - e * fx), u)).numpy() / (2 * e)
    np.testing.assert_allclose(flows.invariant_rate(cell2, torch.tensor(x), u).numpy(), dH, rtol=1e-7)
    # log cosh stays finite where cosh overflows
    assert np.isfinite(flows.motion_invariant(cell, torch.full((1, 4), 1e3, dtype=torch.float64), u).item())


def test_invariant_is_refused_where_it_does_not_apply():
    cell, *_ = _net("leaky")
    ok, why = flows.has_invariant(cell)
    assert not ok and "dissipates" in why
    with pytest.raises(InputError, match="no motion invariant: the leaky form dissipates"):
        flows.motion_invariant(cell, torch.zeros(1, 5, dtype=torch.float64))
    soft, *_ = _net("residual", nonlinearity="softplus")
    assert "softplus has no closed-form antiderivative" in flows.has_invariant(soft)[1]
    assert flows.closed_level_sets("tanh") and not flows.closed_level_sets("sigmoid")
