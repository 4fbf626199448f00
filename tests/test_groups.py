"""Group specifications: the parser shared by equivariance and lyapunov."""

import math

import numpy as np
import pytest
import torch

from rnnprobe.errors import InputError
from rnnprobe.groups import parse_group


def _is_group(mats):
    """Closed under products, contains the identity."""
    n = mats.shape[1]
    flat = [m.round(12).tobytes() for m in mats]
    assert np.allclose(mats[0], np.eye(n))
    for a in mats:
        for b in mats:
            assert (a @ b).round(12).tobytes() in flat


def test_sign():
    g = parse_group("sign", n_state=4, n_inputs=2, n_outputs=3)
    assert g.order == 2 and not g.continuous
    x = torch.randn(5, 4, dtype=torch.float64)
    gx = g.hidden.apply(x)
    assert torch.equal(gx[0], x) and torch.equal(gx[1], -x)
    assert np.allclose(g.inputs.matrices()[1], -np.eye(2)) and np.allclose(g.outputs.matrices()[1], -np.eye(3))


@pytest.mark.parametrize("n,shift,order", [(6, 1, 6), (6, 2, 3), (8, 3, 8)])
def test_cyclic_orders_and_apply_matches_dense(n, shift, order):
    g = parse_group(f"cyclic:{shift}", n_state=n, n_inputs=n, n_outputs=1, input_action="shift")
    assert g.order == order
    M = g.hidden.matrices()
    _is_group(M)
    x = torch.randn(3, n, dtype=torch.float64)
    assert torch.allclose(g.hidden.apply(x), torch.einsum("gij,bj->gbi", torch.as_tensor(M), x))
    assert np.allclose(np.roll(np.arange(n), shift), M[1] @ np.arange(n))
    assert np.allclose(g.inputs.matrices(), M) and np.allclose(g.outputs.matrices(), 1.0)


def test_so2_generator_exponentiates_to_rotations():
    g = parse_group("so2:1,3", n_state=5, n_inputs=1, n_outputs=2, output_action="rotate")
    assert g.continuous and g.dim == 1
    A, Au, Ay = g.generator_matrices()
    t = 0.7
    R = torch.linalg.matrix_exp(t * A[0]).numpy()
    assert np.allclose(R[:2, :2], [[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    assert np.allclose(R[2:4, 2:4], [[math.cos(3 * t), -math.sin(3 * t)], [math.sin(3 * t), math.cos(3 * t)]])
    assert R[4, 4] == pytest.approx(1.0) and np.allclose(Au, 0)
    sub, coeffs = g.sample(8, np.random.default_rng(0))
    assert sub.order == 8 and coeffs.shape == (8, 1) and np.allclose(sub.hidden.matrices()[0], np.eye(5))
    for M in sub.hidden.matrices():
        assert np.allclose(M @ M.T, np.eye(5))


def test_signed_perm_file(tmp_path):
    p = tmp_path / "g.npz"
    np.savez(p, perm=np.array([1, 0, 2]), sign=np.array([1.0, 1.0, -1.0]))
    g = parse_group(f"perm:{p}", n_state=3, n_inputs=0, n_outputs=0)
    assert g.order == 2
    _is_group(g.hidden.matrices())


def test_file_generators_and_elements(tmp_path):
    A = np.zeros((1, 3, 3))
    A[0, 0, 1], A[0, 1, 0] = -1, 1
    np.savez(tmp_path / "lie.npz", generators=A)
    g = parse_group(f"file:{tmp_path / 'lie.npz'}", n_state=3, n_inputs=2, n_outputs=1)
    assert g.continuous and np.allclose(g.generator_matrices()[0].numpy(), A)
    H = np.stack([np.eye(3), -np.eye(3)])
    np.savez(tmp_path / "fin.npz", hidden=H, inputs=np.stack([np.eye(2), -np.eye(2)]))
    g = parse_group(f"file:{tmp_path / 'fin.npz'}", n_state=3, n_inputs=2, n_outputs=1)
    assert g.order == 2 and np.allclose(g.inputs.matrices()[1], -np.eye(2))


@pytest.mark.parametrize("spec,match", [
    ("rot", "unknown group"), ("cyclic:x", "integer shift"), ("cyclic:4", "identity"),
    ("so2:1,1,1", "at least 6 coordinates"), ("perm:/nonexistent.npz", "not found"),
])
def test_errors(spec, match):
    with pytest.raises(InputError, match=match):
        parse_group(spec, n_state=4, n_inputs=1, n_outputs=1)


def test_shift_action_needs_matching_width():
    with pytest.raises(InputError, match="input-action shift needs as many inputs"):
        parse_group("cyclic", n_state=4, n_inputs=2, n_outputs=1, input_action="shift")
