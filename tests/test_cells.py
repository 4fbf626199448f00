"""The cell interface: rollouts against torch's own modules, Jacobians against autograd."""

import numpy as np
import pytest
import torch

from rnnprobe.cells import ElmanCell, GRUCell, LSTMCell, NoRecurrentMatrix, UserCell
from rnnprobe.errors import InputError

torch.manual_seed(0)
B, T, N, D, O = 5, 13, 7, 3, 2


def _torch_modules():
    torch.manual_seed(1)
    return {
        "rnn": torch.nn.RNN(D, N, batch_first=True).double(),
        "rnn_relu": torch.nn.RNN(D, N, nonlinearity="relu", batch_first=True).double(),
        "gru": torch.nn.GRU(D, N, batch_first=True).double(),
        "lstm": torch.nn.LSTM(D, N, batch_first=True).double(),
    }


def _cell_from(name, m):
    W_r, b_r = torch.randn(O, N, dtype=torch.float64), torch.randn(O, dtype=torch.float64)
    if name.startswith("rnn"):
        return ElmanCell(m.weight_hh_l0, m.weight_ih_l0, m.bias_ih_l0 + m.bias_hh_l0, W_r, b_r,
                         nonlinearity=m.nonlinearity)
    cls = GRUCell if name == "gru" else LSTMCell
    return cls(m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0, W_r, b_r)


@pytest.mark.parametrize("name", ["rnn", "rnn_relu", "gru", "lstm"])
def test_rollout_matches_torch_forward(name):
    m = _torch_modules()[name]
    cell = _cell_from(name, m)
    x = torch.randn(B, T, D, dtype=torch.float64)
    with torch.no_grad():
        if name == "lstm":
            h0, c0 = torch.randn(1, B, N, dtype=torch.float64), torch.randn(1, B, N, dtype=torch.float64)
            ref, _ = m(x, (h0, c0))
            s0 = torch.cat([h0[0], c0[0]], dim=-1)
        else:
            h0 = torch.randn(1, B, N, dtype=torch.float64)
            ref, _ = m(x, h0)
            s0 = h0[0]
    states = cell.rollout(s0, x)
    assert torch.allclose(cell.hidden(states), ref, atol=1e-12, rtol=0)
    y = cell.readout(states)
    assert y.shape == (B, T, O)


def _elman_variants():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(N, N, generator=g, dtype=torch.float64) / N**0.5
    U = torch.randn(N, D, generator=g, dtype=torch.float64)
    b = torch.randn(N, generator=g, dtype=torch.float64) * 0.1
    out = []
    for form, alpha in (("leaky", 1.0), ("leaky", 0.2), ("rate-outside", 0.3), ("residual", 0.1)):
        for nl in ("tanh", "softplus", "sigmoid", "linear"):
            out.append(ElmanCell(W, U, b, alpha=alpha, nonlinearity=nl, form=form))
    return out


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm"])
def test_readout_jacobian_matches_autograd(name):
    cell = _cell_from(name, _torch_modules()[name])
    s = torch.randn(B, cell.n_state, dtype=torch.float64)
    R = cell.readout_jacobian(s)
    R_ref = torch.func.vmap(torch.func.jacrev(lambda si: cell.readout(si[None])[0]))(s)
    assert R.shape == (B, O, cell.n_state) and torch.allclose(R, R_ref, atol=1e-15, rtol=0)


@pytest.mark.parametrize("name", ["gru", "lstm"])
@pytest.mark.parametrize("with_inputs", [True, False])
def test_gated_analytic_jacobians_match_autograd(name, with_inputs):
    # the gate-block formulas of GRUCell / LSTMCell against torch.func on the cell's own step
    m = _torch_modules()[name]
    cell = _cell_from(name, m)
    if not with_inputs:  # no input weights at all (n_inputs = 0)
        cell = type(cell)(None, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
    S = cell.n_state
    g = torch.Generator().manual_seed(3)
    s = 1.5 * torch.randn(B, S, generator=g, dtype=torch.float64)  # gates away from 1/2, c beyond [-1, 1]
    u = torch.randn(B, cell.n_inputs, generator=g, dtype=torch.float64)

    def one(si, ui):
        return cell.step(si[None], ui[None])[0]

    J = cell.jacobian(s, u)
    J_ref = torch.func.vmap(torch.func.jacrev(one))(s, u)
    assert J.shape == (B, S, S) and torch.allclose(J, J_ref, atol=1e-14, rtol=0)
    Bu = cell.input_jacobian(s, u)
    assert Bu.shape == (B, S, cell.n_inputs)
    if with_inputs:
        assert torch.allclose(Bu, torch.func.vmap(torch.func.jacrev(one, argnums=1))(s, u), atol=1e-14, rtol=0)
    V = torch.randn(B, S, 4, generator=g, dtype=torch.float64)
    JV, JTV = J_ref @ V, J_ref.transpose(1, 2) @ V
    assert torch.allclose(cell.jvp(s, u, V), JV, atol=1e-13, rtol=0)
    assert torch.allclose(cell.jvp(s, u, V[:, :, 0]), JV[:, :, 0], atol=1e-13, rtol=0)
    assert torch.allclose(cell.vjp(s, u, V), JTV, atol=1e-13, rtol=0)
    assert torch.allclose(cell.vjp(s, u, V[:, :, 1]), JTV[:, :, 1], atol=1e-13, rtol=0)
    F, JV2 = cell.step_and_jvp(s, u, V)
    assert torch.equal(F, cell.step(s, u)) and torch.allclose(JV2, JV, atol=1e-13, rtol=0)
    F, pullback = cell.step_and_vjp(s, u)
    assert torch.equal(F, cell.step(s, u)) and torch.allclose(pullback(V[:, :, 2]), JTV[:, :, 2], atol=1e-13, rtol=0)
    # zero input is u = None
    assert torch.allclose(cell.jacobian(s), torch.func.vmap(torch.func.jacrev(one))(s, torch.zeros_like(u)),
                          atol=1e-14, rtol=0)


@pytest.mark.parametrize("cell", _elman_variants(), ids=lambda c: f"{c.form}-{c.alpha}-{c.nonlinearity}")
def test_elman_analytic_jacobians_match_autograd(cell):
    h = torch.randn(B, N, dtype=torch.float64)
    u = torch.randn(B, D, dtype=torch.float64)
    J = cell.jacobian(h, u)
    J_ref = torch.func.vmap(torch.func.jacrev(lambda hi, ui: cell.step(hi[None], ui[None])[0]))(h, u)
    assert torch.allclose(J, J_ref, atol=1e-13)
    Bu = cell.input_jacobian(h, u)
    Bu_ref = torch.func.vmap(torch.func.jacrev(lambda hi, ui: cell.step(hi[None], ui[None])[0], argnums=1))(h, u)
    assert torch.allclose(Bu, Bu_ref, atol=1e-13)
    V = torch.randn(B, N, 4, dtype=torch.float64)
    assert torch.allclose(cell.jvp(h, u, V), J @ V, atol=1e-12)
    assert torch.allclose(cell.vjp(h, u, V), J.transpose(1, 2) @ V, atol=1e-12)
    assert torch.allclose(cell.jvp(h, u, V[:, :, 0]), (J @ V)[:, :, 0], atol=1e-12)
    h2, JV = cell.step_and_jvp(h, u, V)
    assert torch.allclose(h2, cell.step(h, u), atol=0) and torch.allclose(JV, J @ V, atol=1e-12)
    F, pullback = cell.step_and_vjp(h, u)
    assert torch.allclose(F, cell.step(h, u), atol=1e-15)
    assert torch.allclose(pullback(V[:, :, 1]), (J.transpose(1, 2) @ V)[:, :, 1], atol=1e-12)
    # the batched rollout agrees with repeated steps
    x = torch.randn(B, 6, D, dtype=torch.float64)
    s, ref = h, []
    for t in range(6):
        s = cell.step(s, x[:, t])
        ref.append(s)
    assert torch.allclose(cell.rollout(h, x), torch.stack(ref, 1), atol=1e-14)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_gated_jacobians_are_consistent(name):
    cell = _cell_from(name, _torch_modules()[name])
    s = torch.randn(B, cell.n_state, dtype=torch.float64)
    u = torch.randn(B, D, dtype=torch.float64)
    J = cell.jacobian(s, u)
    assert J.shape == (B, cell.n_state, cell.n_state)
    eps = 1e-6
    e = torch.zeros(cell.n_state, dtype=torch.float64)
    e[3] = eps
    fd = (cell.step(s + e, u) - cell.step(s - e, u)) / (2 * eps)
    assert torch.allclose(J[:, :, 3], fd, atol=1e-8)
    V = torch.randn(B, cell.n_state, 3, dtype=torch.float64)
    assert torch.allclose(cell.jvp(s, u, V), J @ V, atol=1e-12)
    assert torch.allclose(cell.vjp(s, u, V), J.transpose(1, 2) @ V, atol=1e-12)
    F, pullback = cell.step_and_vjp(s, u)  # the autograd default of the Cell interface
    assert torch.allclose(F, cell.step(s, u), atol=0) and not F.requires_grad
    assert torch.allclose(pullback(V[:, :, 0]), (J.transpose(1, 2) @ V)[:, :, 0], atol=1e-12)
    assert cell.input_jacobian(s, u).shape == (B, cell.n_state, D)
    h2, JV = cell.step_and_jvp(s.numpy(), u, V)  # states as an array, like jvp and step take them
    assert torch.allclose(h2, cell.step(s, u), atol=0) and torch.allclose(JV, J @ V, atol=1e-12)
    with pytest.raises(NoRecurrentMatrix, match="no single recurrent matrix"):
        cell.matrices()


def test_validation_names_the_tensor_and_shape():
    with pytest.raises(InputError, match=r"W_hh must be square.*\[3, 4\]"):
        ElmanCell(np.zeros((3, 4)))
    W = np.eye(3)
    W[1, 2] = np.nan
    with pytest.raises(InputError, match=r"W_hh .*non-finite.*\(1, 2\)"):
        ElmanCell(W)
    with pytest.raises(InputError, match=r"W_uh must be \[N=3, d_in\]; got shape \[4, 2\]"):
        ElmanCell(np.eye(3), np.zeros((4, 2)))
    with pytest.raises(InputError, match="alpha must be in"):
        ElmanCell(np.eye(3), alpha=1.5)
    with pytest.raises(InputError, match="nonlinearity 'gelu'"):
        ElmanCell(np.eye(3), nonlinearity="gelu")
    with pytest.raises(InputError, match="input has width 2"):
        ElmanCell(np.eye(3), np.zeros((3, 1))).step(torch.zeros(1, 3), torch.zeros(1, 2))


class _Henon(torch.nn.Module):
    n_state, n_inputs = 2, 0

    def step(self, h, u):
        x, y = h[:, 0], h[:, 1]
        return torch.stack([1 - 1.4 * x**2 + y, 0.3 * x], dim=-1)


def test_user_cell_jacobian_by_torch_func():
    cell = UserCell(_Henon())
    s = torch.tensor([[0.3, 0.1], [-0.2, 0.05]], dtype=torch.float64)
    J = cell.jacobian(s)
    ref = torch.tensor([[[-2.8 * 0.3, 1.0], [0.3, 0.0]], [[2.8 * 0.2, 1.0], [0.3, 0.0]]], dtype=torch.float64)
    assert torch.allclose(J, ref, atol=1e-15)
    assert cell.n_outputs == 0
    with pytest.raises(InputError, match="no readout"):
        cell.readout(s)
