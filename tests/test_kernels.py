"""The NumPy kernels of the CPU hot loops against torch's own ops on the same data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnprobe.numerics import kernels


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tanh_matches_torch_in_place(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, 33, generator=g, dtype=dtype) * 4
    x[0, 0, :4] = torch.tensor([0.0, -0.0, 30.0, -30.0], dtype=dtype)
    ref = torch.tanh(x)
    y = x.clone()
    out = kernels.tanh_(y)
    assert out is y  # in place
    tol = 2 * torch.finfo(dtype).eps
    assert torch.allclose(y, ref, rtol=tol, atol=tol)
    # a strided view is updated in place too, its neighbours untouched
    z = x.clone()
    kernels.tanh_(z[:, ::2, 1:])
    assert torch.allclose(z[:, ::2, 1:], ref[:, ::2, 1:], rtol=tol, atol=tol)
    assert torch.equal(z[:, 1::2], x[:, 1::2]) and torch.equal(z[:, ::2, 0], x[:, ::2, 0])


def test_matmul_matches_torch_batched_and_transposed():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 40, 16, generator=g, dtype=torch.float64)
    W = torch.randn(6, 16, 16, generator=g, dtype=torch.float64)
    out = torch.empty(6, 40, 16, dtype=torch.float64)
    res = kernels.matmul_(a, W.transpose(1, 2), out)
    assert res is out
    ref = torch.stack([a[i] @ W[i].T for i in range(6)])
    assert torch.allclose(out, ref, rtol=1e-13, atol=1e-13)
    # broadcast of one right-hand matrix over the batch (the readout)
    Wr = torch.randn(3, 16, generator=g, dtype=torch.float64)
    y = torch.empty(6, 40, 3, dtype=torch.float64)
    kernels.matmul_(a, Wr.T, y)
    assert torch.allclose(y, a @ Wr.T, rtol=1e-13, atol=1e-13)


def test_autograd_and_mixed_dtypes_fall_back_to_torch():
    x = torch.linspace(-2, 2, 9, dtype=torch.float64, requires_grad=True)
    assert not kernels.on_numpy(x)
    y = kernels.tanh_(x.clone())  # a non-leaf clone: torch's in-place op keeps the graph
    y.sum().backward()
    assert torch.allclose(x.grad, 1 - torch.tanh(x.detach()) ** 2)
    a = torch.ones(2, 3, dtype=torch.float32)
    b = torch.ones(3, 2, dtype=torch.float32)
    assert not kernels.on_numpy(torch.ones(2, dtype=torch.int64))
    assert not kernels.on_numpy(torch._neg_view(torch.ones(2, dtype=torch.float64)))  # .numpy() would refuse it
    with torch.inference_mode():
        z = torch.linspace(-1, 1, 5, dtype=torch.float64)
        assert kernels.on_numpy(z) and torch.allclose(kernels.tanh(z), torch.tanh(z), rtol=1e-15, atol=0)
    out = kernels.matmul_(a, b, torch.empty(2, 2, dtype=torch.float32))
    assert np.allclose(out.numpy(), 3.0)


def test_torch_func_transforms_see_torch_ops():
    """Inside jvp / vmap / grad the tensors are wrappers NumPy cannot read: torch's op must run."""
    x = torch.linspace(-2, 2, 7, dtype=torch.float64)
    v = torch.ones_like(x)
    y, dy = torch.func.jvp(kernels.tanh, (x,), (v,))
    assert torch.allclose(y, torch.tanh(x)) and torch.allclose(dy, 1 - torch.tanh(x) ** 2)
    assert torch.allclose(torch.func.vmap(kernels.tanh)(x[:, None]), torch.tanh(x[:, None]))
    g = torch.func.grad(lambda t: kernels.tanh(t).sum())(x)
    assert torch.allclose(g, 1 - torch.tanh(x) ** 2)


def test_forward_mode_tangents_see_torch_ops():
    """A dual tensor of torch.autograd.forward_ad keeps its tangent through tanh and an Elman cell's
    step (against the cell's own Jacobian), and the out= product refuses it, instead of NumPy dropping it."""
    import torch.autograd.forward_ad as fwAD

    from rnnprobe.cells import ElmanCell

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    v = torch.randn(4, 5, generator=g, dtype=torch.float64)
    W = torch.randn(5, 5, generator=g, dtype=torch.float64)
    cell = ElmanCell(W, torch.zeros(5, 1, dtype=torch.float64), None)
    with fwAD.dual_level():
        d = fwAD.make_dual(x, v)
        assert not kernels.on_numpy(d) and kernels.on_numpy(x)
        dy = fwAD.unpack_dual(kernels.tanh(d)).tangent
        torch.testing.assert_close(dy, (1 - torch.tanh(x) ** 2) * v, rtol=1e-14, atol=1e-15)
        with pytest.raises(NotImplementedError):  # torch's out= product refuses tangents: loud, not dropped
            kernels.matmul_(d, W.T, torch.empty(4, 5, dtype=torch.float64))
        ds = fwAD.unpack_dual(cell.step(d)).tangent
    torch.testing.assert_close(ds, torch.einsum("bij,bj->bi", cell.jacobian(x), v), rtol=1e-13, atol=1e-13)


def test_numpy_kernels_can_be_switched_off(monkeypatch):
    x = torch.linspace(-3, 3, 11, dtype=torch.float64)
    assert kernels.on_numpy(x)
    with kernels.numpy_kernels(False):
        assert not kernels.on_numpy(x)
        calls = []
        monkeypatch.setattr(np, "tanh", lambda *a, **k: calls.append(1))  # must not be reached
        y = kernels.tanh(x)
        assert not calls and torch.equal(y, torch.tanh(x))
    assert kernels.on_numpy(x)
