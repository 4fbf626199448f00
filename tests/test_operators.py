"""The recurrent-operator interface (rnnprobe.operators) and ElmanCell through it.

Every reference is built inside the test, independently of the code under
test: dense matrices by np.roll of the kernel or by torch's own nn.Conv with
circular / zero padding applied to unit vectors, spectra by numpy.linalg.eigvals.
"""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from rnnprobe.cells import ElmanCell, UserCell
from rnnprobe.cells.base import NoRecurrentMatrix
from rnnprobe.errors import InputError
from rnnprobe.operators import (CircularConvOperator, DenseOperator, DenseTooLarge, ZeroPaddedConvOperator,
                                as_operator, flip, format_lattice, parse_lattice, place_stencil)

F64 = torch.float64


def _rolled_dense(K: np.ndarray) -> np.ndarray:
    """W[x, x'] = K[x' - x] for a one-channel lattice kernel, row x = K rolled by x (independent of dense())."""
    L = K.shape
    rows = [np.roll(K, shift=idx, axis=tuple(range(K.ndim))).ravel() for idx in np.ndindex(*L)]
    return np.array(rows)


def _conv_module(C, lattice, k, padding_mode, weight):
    cls = torch.nn.Conv1d if len(lattice) == 1 else torch.nn.Conv2d
    m = cls(C, C, k, padding=k // 2, padding_mode=padding_mode, bias=False).double()
    with torch.no_grad():
        m.weight.copy_(weight)
    return m


def _torch_dense(module, C, lattice):
    """The matrix of a torch Conv module: its response to every unit vector (columns)."""
    n = C * int(np.prod(lattice))
    with torch.no_grad():
        cols = module(torch.eye(n, dtype=F64).reshape(n, C, *lattice)).reshape(n, n)
    return cols.T.numpy()


def _match(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance of the optimal one-to-one matching of two multisets of complex numbers."""
    cost = np.abs(a[:, None] - b[None, :])
    r, c = linear_sum_assignment(cost)
    return float(cost[r, c].max())


def test_spectrum_of_a_circulant_is_the_fft_of_its_kernel_16x16():
    rng = np.random.default_rng(0)
    K = rng.standard_normal((16, 16))
    op = CircularConvOperator(torch.as_tensor(K))
    W = _rolled_dense(K)
    np.testing.assert_array_equal(op.dense().numpy(), W)
    ref = np.linalg.eigvals(W)
    assert _match(op.eigenvalues().numpy(), ref) < 1e-12 * np.abs(ref).max()
    # as a set, the FFT of the kernel itself (the paper's statement)
    assert _match(np.fft.fft2(K).ravel(), ref) < 1e-12 * np.abs(ref).max()
    assert op.exact_spectrum and op.logabsdet() == pytest.approx(np.linalg.slogdet(W)[1], rel=1e-12)


@pytest.mark.parametrize("lattice,C", [((12,), 1), ((5, 7), 1), ((9,), 3), ((4, 6), 2)])
def test_products_and_spectrum_against_torch_circular_conv(lattice, C):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(C, C, *(3,) * len(lattice), generator=g, dtype=F64)
    op = CircularConvOperator.from_conv(w, lattice)
    W = _torch_dense(_conv_module(C, lattice, 3, "circular", w), C, lattice)
    np.testing.assert_allclose(op.dense().numpy(), W, atol=1e-15)
    x = torch.randn(6, op.n, generator=g, dtype=F64)
    X = torch.randn(3, op.n, 5, generator=g, dtype=F64)
    Wt = torch.as_tensor(W)
    torch.testing.assert_close(op.matvec(x), x @ Wt.T, atol=1e-13, rtol=0)
    torch.testing.assert_close(op.rmatvec(x), x @ Wt, atol=1e-13, rtol=0)
    torch.testing.assert_close(op.mat_cols(X), Wt @ X, atol=1e-13, rtol=0)
    torch.testing.assert_close(op.rmat_cols(X), Wt.T @ X, atol=1e-13, rtol=0)
    torch.testing.assert_close(op.transpose().dense(), Wt.T, atol=0, rtol=0)
    ref = np.linalg.eigvals(W)
    assert _match(op.eigenvalues().numpy(), ref) < 1e-12 * np.abs(ref).max()
    assert op.logabsdet() == pytest.approx(np.linalg.slogdet(W)[1], rel=1e-12)
    # leading batch dimensions and float32 go through the same code
    y = op.to(dtype=torch.float32).matvec(x.float().reshape(2, 3, op.n))
    torch.testing.assert_close(y.double().reshape(6, -1), x @ Wt.T, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("lattice,C", [((10,), 2), ((5, 6), 1)])
def test_zero_padded_convolution_against_torch(lattice, C):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(C, C, *(3,) * len(lattice), generator=g, dtype=F64)
    op = ZeroPaddedConvOperator(w, lattice)
    W = _torch_dense(_conv_module(C, lattice, 3, "zeros", w), C, lattice)
    np.testing.assert_allclose(op.dense().numpy(), W, atol=1e-15)
    x = torch.randn(4, op.n, generator=g, dtype=F64)
    torch.testing.assert_close(op.rmatvec(x), x @ torch.as_tensor(W), atol=1e-13, rtol=0)
    torch.testing.assert_close(op.transpose().dense(), torch.as_tensor(W).T, atol=1e-15, rtol=0)
    assert not op.exact_spectrum
    assert _match(op.eigenvalues().numpy(), np.linalg.eigvals(W)) < 1e-12 * np.abs(W).sum()
    with pytest.raises(InputError, match="padding 1 \\('same'\\)"):
        ZeroPaddedConvOperator(w, lattice, padding=0)


def test_stencils_centre_and_wrap():
    K = place_stencil(torch.tensor([1.0, 2.0, 3.0], dtype=F64), (6,))
    np.testing.assert_array_equal(K.numpy(), [2.0, 3.0, 0.0, 0.0, 0.0, 1.0])  # offsets 0, +1, ..., -1
    wrapped = place_stencil(torch.ones(5, dtype=F64), (3,))  # offsets -2..2 on 3 sites: -2 = +1, 2 = -1
    np.testing.assert_array_equal(wrapped.numpy(), [1.0, 2.0, 2.0])
    k2 = torch.arange(9, dtype=F64).reshape(3, 3)
    op = CircularConvOperator.from_stencil(k2, "4x5")
    assert op.kernel[0, 0, 0, 0] == 4.0 and op.kernel[0, 0, -1, -1] == 0.0 and op.kernel[0, 0, 1, 1] == 8.0
    assert flip(op.kernel, 2)[0, 0, -1, -1] == 8.0


def test_lattice_parsing_and_messages():
    assert parse_lattice("64x64") == (64, 64) and parse_lattice("128") == (128,) and parse_lattice([8, 4]) == (8, 4)
    assert parse_lattice("[16, 16]") == (16, 16) and format_lattice((3, 5)) == "3x5"
    for bad in ("0x4", "4x4x4", "ax3", "", "2.5"):
        with pytest.raises(InputError, match="--lattice"):
            parse_lattice(bad)
    with pytest.raises(InputError, match=r"\[C, C, \*L\].*got shape \[2, 3, 8\]"):
        CircularConvOperator(torch.zeros(2, 3, 8, dtype=F64))
    with pytest.raises(InputError, match=r"\[C, C, 8\].*got shape \[2, 2, 9\]"):
        CircularConvOperator(torch.zeros(2, 2, 9, dtype=F64), (8,))


def test_dense_form_is_refused_above_the_limit_with_what_to_do():
    op = CircularConvOperator(torch.zeros(70, 70, dtype=F64))
    with pytest.raises(DenseTooLarge, match=r"70x70 torus.*4900 units.*0\.192 GB.*4096 units.*lyapunov"):
        op.dense()
    small = CircularConvOperator(torch.zeros(20, 20, dtype=F64))
    with pytest.raises(DenseTooLarge, match="limit of 399 units"):
        small.dense(limit=399)
    assert small.dense(limit=400).shape == (400, 400)
    cell = ElmanCell(op)
    with pytest.raises(DenseTooLarge):
        cell.jacobian(torch.zeros(1, op.n, dtype=F64))
    assert "W_hh_kernel" in cell.arrays() and "W_hh" not in cell.arrays()
    assert cell.attrs()["lattice"] == "70x70" and cell.attrs()["recurrent"] == "circular-conv"


def _cells(form, nonlinearity, C=2, lattice=(4, 5)):
    g = torch.Generator().manual_seed(3)
    w = 0.4 * torch.randn(C, C, 3, 3, generator=g, dtype=F64)
    op = CircularConvOperator.from_conv(w, lattice)
    N = op.n
    W_uh = torch.randn(N, 3, generator=g, dtype=F64)
    b = 0.1 * torch.randn(N, generator=g, dtype=F64)
    W_r = torch.randn(2, N, generator=g, dtype=F64)
    W = _torch_dense(_conv_module(C, lattice, 3, "circular", w), C, lattice)
    kw = dict(alpha=0.3 if form != "residual" else 0.2, nonlinearity=nonlinearity, form=form)
    return ElmanCell(op, W_uh, b, W_r, **kw), ElmanCell(torch.as_tensor(W), W_uh, b, W_r, **kw), g


@pytest.mark.parametrize("form,nonlinearity", [("leaky", "tanh"), ("rate-outside", "softplus"),
                                               ("residual", "relu"), ("leaky", "linear")])
def test_elman_cell_with_a_convolution_matches_the_dense_cell(form, nonlinearity):
    conv, dense, g = _cells(form, nonlinearity)
    N = conv.n_state
    h = torch.randn(5, N, generator=g, dtype=F64)
    u = torch.randn(5, 3, generator=g, dtype=F64)
    V = torch.randn(5, N, 4, generator=g, dtype=F64)
    inputs = torch.randn(5, 9, 3, generator=g, dtype=F64)
    close = dict(atol=1e-12, rtol=0)
    torch.testing.assert_close(conv.rollout(h, inputs), dense.rollout(h, inputs), **close)
    torch.testing.assert_close(conv.step(h, u), dense.step(h, u), **close)
    torch.testing.assert_close(conv.jvp(h, u, V), dense.jvp(h, u, V), **close)
    torch.testing.assert_close(conv.jvp(h, u, V[..., 0]), dense.jvp(h, u, V[..., 0]), **close)
    torch.testing.assert_close(conv.vjp(h, u, V), dense.vjp(h, u, V), **close)
    torch.testing.assert_close(conv.jacobian(h, u), dense.jacobian(h, u), **close)
    torch.testing.assert_close(conv.input_jacobian(h, u), dense.input_jacobian(h, u), **close)
    for a, b in zip(conv.step_and_jvp(h, u, V), dense.step_and_jvp(h, u, V)):
        torch.testing.assert_close(a, b, **close)
    # and the analytic products against autograd of the conv cell's own step
    J = torch.func.vmap(torch.func.jacrev(lambda x, v: conv.step(x[None], v[None])[0]))(h, u)
    torch.testing.assert_close(conv.jacobian(h, u), J, **close)
    # a copy on float32 and back keeps the operator
    assert isinstance(conv.to(dtype=torch.float32).op, CircularConvOperator)
    assert conv.replace(alpha=0.5).op.kernel is not None


def test_dense_cells_keep_their_tensor_and_products():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(7, 7, generator=g, dtype=F64)
    cell = ElmanCell(W)
    assert isinstance(cell.op, DenseOperator) and cell.W_hh is cell.op.W and torch.equal(cell.W_hh, W)
    assert set(cell.arrays()) >= {"W_hh", "W_uh", "b"} and "recurrent" not in cell.attrs()
    assert cell.recurrent_operator() is cell.op
    assert torch.equal(as_operator(W.numpy()).dense(), W)


def test_user_cells_expose_an_operator_only_when_they_have_one():
    class Plain(torch.nn.Module):
        n_state = 3

        def step(self, h, u):
            return torch.tanh(h)

    with pytest.raises(NoRecurrentMatrix):
        UserCell(Plain()).recurrent_operator()

    class Conv(Plain):
        def recurrent_operator(self):
            return CircularConvOperator(torch.tensor([0.5, 0.25, 0.0], dtype=F64))

    assert isinstance(UserCell(Conv()).recurrent_operator(), CircularConvOperator)


@pytest.mark.parametrize("k", [1, 4])
def test_dense_column_products_one_and_many_columns(k):
    """Dense W X_b and W^T X_b for X [B, N, k]: one column (a plain row product) and several
    (one GEMM over all columns) against NumPy's einsum."""
    rng = np.random.default_rng(k)
    W = rng.standard_normal((7, 7))
    X = rng.standard_normal((5, 7, k))
    op = DenseOperator(torch.as_tensor(W))
    np.testing.assert_allclose(op.mat_cols(torch.as_tensor(X)).numpy(), np.einsum("ij,bjk->bik", W, X),
                               atol=1e-14, rtol=0)
    np.testing.assert_allclose(op.rmat_cols(torch.as_tensor(X)).numpy(), np.einsum("ji,bjk->bik", W, X),
                               atol=1e-14, rtol=0)
    assert op.mat_cols(torch.as_tensor(X)).shape == (5, 7, k)
