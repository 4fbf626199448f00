"""Convolutional recurrences end to end: kernel functions, loaders, schur/convexp/lyapunov/fixedpoints, the
unitary cell. Known answers are computed here, independently: scipy.linalg.expm/sinm/cosm of dense matrices
built by np.roll, the lattice heat kernel from modified Bessel functions, numpy eigvals, torch's own Conv
modules, and the paper's X/P recursion written out.
"""

import json

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
from scipy.special import ive

from rnnprobe.analyses import convexp as convexp_mod
from rnnprobe.analyses import fixedpoints as fpa
from rnnprobe.analyses import lyapunov as lya
from rnnprobe.analyses import schur as schur_mod
from rnnprobe.analyses.base import RunContext
from rnnprobe.cells import ElmanCell, UserCell
from rnnprobe.cells.conv import ConvUnitaryCell
from rnnprobe.checkpoints import load_checkpoint, model_summary
from rnnprobe.errors import CheckpointError, InputError
from rnnprobe.model import Model
from rnnprobe.numerics import conv as nconv
from rnnprobe.numerics import fixedpoints as nfp
from rnnprobe.numerics.lyapunov import lyapunov_spectrum
from rnnprobe.operators import CircularConvOperator, ZeroPaddedConvOperator, place_stencil
from rnnprobe.pipeline import RunSettings, analyze

F64 = torch.float64


def dense_of(K: np.ndarray) -> np.ndarray:
    """The matrix of a lattice kernel [C, C, *L] (or [*L]): block (o, i) row x is K[o, i] rolled by x."""
    K = np.asarray(K)
    if K.ndim in (1, 2):
        K = K[None, None]
    C, L = K.shape[0], K.shape[2:]
    axes = tuple(range(len(L)))
    blocks = [[np.array([np.roll(K[o, i], idx, axis=axes).ravel() for idx in np.ndindex(*L)]) for i in range(C)]
              for o in range(C)]
    return np.block(blocks)


def lattice_heat_1d(L: int, t: float) -> np.ndarray:
    """exp(t Delta) on a ring of L sites at offsets 0..L-1: sum over images of e^{-2t} I_n(2t)."""
    n = np.arange(L)
    images = np.arange(-8, 9)[:, None] * L
    return ive(n[None, :] + images, 2 * t).sum(0)


# ---------------------------------------------------------------------------------
# kernel functions
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(12,), (5, 6), (2, 2, 7), (3, 3, 3, 4)])
def test_convexp_sin_cos_match_scipy_on_the_dense_matrix(shape):
    K = np.random.default_rng(sum(shape)).standard_normal(shape) * 0.4
    W = dense_of(K)
    for fn, ref in (("exp", scipy.linalg.expm), ("sin", scipy.linalg.sinm), ("cos", scipy.linalg.cosm)):
        G, residual = nconv.conv_function(torch.as_tensor(K), fn, t=0.7)
        want = ref(0.7 * W)
        assert np.abs(dense_of(G.numpy()) - want).max() <= 1e-12 * max(1.0, np.abs(want).max()), fn
        assert residual < 1e-14


def test_exp_of_the_laplacian_is_the_lattice_heat_kernel_and_a_gaussian_of_width_sqrt_2t():
    L, t = 64, 10.0
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=F64)
    G = nconv.conv_exp(place_stencil(lap, (L, L)), t).numpy()
    g = lattice_heat_1d(L, t)
    np.testing.assert_allclose(G, np.outer(g, g), rtol=0, atol=1e-15)  # separable: e^{t(D_x + D_y)}
    offsets = (np.arange(L) + L // 2) % L - L // 2
    for axis in (0, 1):  # variance 2t per axis (the ring's images add ~1e-10 at 7 widths), total mass 1
        assert np.sum(G.sum(1 - axis) * offsets**2) == pytest.approx(2 * t, rel=1e-9)
    assert G.sum() == pytest.approx(1.0, rel=1e-13)
    # and at large t the Gaussian exp(-x^2 / 4t) / sqrt(4 pi t) per axis (the paper's figure)
    L1, t1 = 256, 200.0
    g1 = nconv.conv_exp(place_stencil(torch.tensor([1.0, -2.0, 1.0], dtype=F64), (L1,)), t1).numpy()
    x = (np.arange(L1) + L1 // 2) % L1 - L1 // 2
    gauss = np.exp(-x**2 / (4 * t1)) / np.sqrt(4 * np.pi * t1)
    assert np.abs(g1 - gauss).max() <= 0.01 * gauss.max()  # O(1/t) corrections
    np.testing.assert_allclose(g1, lattice_heat_1d(L1, t1), rtol=0, atol=1e-15)


@pytest.mark.parametrize("shape", [(16,), (8, 8), (3, 3, 10), (2, 2, 4, 6)])
def test_exponentiated_antisymmetric_and_anti_hermitian_kernels_are_orthogonal_and_unitary(shape):
    U = torch.as_tensor(np.random.default_rng(len(shape)).standard_normal(shape))
    A = nconv.antisymmetrize(U)
    assert nconv.antisymmetry_error(A) == 0.0 and nconv.antisymmetry_error(U) > 0.5
    W = dense_of(nconv.conv_exp(A).numpy())
    assert np.abs(W @ W.T - np.eye(len(W))).max() < 1e-12
    assert nconv.unitarity_error(nconv.conv_exp(A)) < 1e-12 and nconv.unitarity_error(U) > 0.1
    Kc = nconv.anti_hermitian_from_real(U)
    assert nconv.anti_hermitian_error(Kc) == 0.0
    Uc = nconv.conv_exp(Kc)
    assert nconv.unitarity_error(Uc) < 1e-12
    R = dense_of(nconv.realify(Uc).numpy())
    assert np.abs(R @ R.T - np.eye(len(R))).max() < 1e-12


def test_bipartite_architecture_is_the_exponential_of_its_generator_and_orthogonal():
    S = torch.tensor([0.4, -0.3, 0.9, -0.3, 0.4], dtype=F64)  # centrally symmetric stencil
    Sk = place_stencil(S, (24,))
    assert nconv.symmetry_error(Sk) == 0.0
    B = nconv.bipartite_kernel(Sk, t=1.3)
    W = dense_of(B.numpy())
    Gd = dense_of(nconv.bipartite_generator(Sk).numpy())
    np.testing.assert_allclose(W, scipy.linalg.expm(1.3 * Gd), atol=1e-12, rtol=0)
    assert np.abs(W @ W.T - np.eye(48)).max() < 1e-12
    Sd = dense_of(Sk.numpy())
    np.testing.assert_allclose(W[:24, :24], scipy.linalg.cosm(1.3 * Sd), atol=1e-12, rtol=0)
    np.testing.assert_allclose(W[:24, 24:], scipy.linalg.sinm(1.3 * Sd), atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------
class _ConvNet(torch.nn.Module):
    """h' = tanh(rec(h) + inp(u)), y = readout(h): a recurrent nn.Conv2d, written out as training code would."""

    def __init__(self, C, H, W, d_in, d_out, padding_mode):
        super().__init__()
        self.shape = (C, H, W)
        self.inp = torch.nn.Linear(d_in, C * H * W)
        self.rec = torch.nn.Conv2d(C, C, 3, padding=1, padding_mode=padding_mode)
        self.readout = torch.nn.Linear(C * H * W, d_out)

    def forward(self, x):
        h = torch.zeros(x.shape[0], int(np.prod(self.shape)), dtype=x.dtype)
        ys = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.rec(h.reshape(-1, *self.shape)).reshape(h.shape) + self.inp(x[:, t]))
            ys.append(self.readout(h))
        return torch.stack(ys, 1)


def _outputs(model, x):
    cell = model.cell
    return cell.readout(cell.rollout(cell.initial_state(x.shape[0]), x))


@pytest.mark.parametrize("padding_mode", ["circular", "zeros"])
def test_torch_conv2d_state_dict_with_a_lattice_loads_and_rolls_out_like_torch(tmp_path, padding_mode):
    torch.manual_seed(0)
    net = _ConvNet(2, 6, 5, 3, 2, padding_mode).double()
    path = tmp_path / "conv.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"'rec.weight' \[2, 2, 3, 3\] does not say which lattice.*--lattice HxW"):
        load_checkpoint(path)
    if padding_mode == "zeros":
        (tmp_path / "conv.pt.json").write_text(json.dumps({"conv": {"padding_mode": "zeros"}}))
    model = load_checkpoint(path, lattice="6x5")
    op = model.cell.op
    assert isinstance(op, CircularConvOperator if padding_mode == "circular" else ZeroPaddedConvOperator)
    assert model.keys["W_hh"] == "rec.weight" and model.keys["b"] == "rec.bias + inp.bias"
    x = torch.randn(3, 6, 3, dtype=F64)
    with torch.no_grad():
        np.testing.assert_allclose(_outputs(model, x).numpy(), net(x).numpy(), atol=1e-13, rtol=0)
    with pytest.raises(CheckpointError, match="--max-hidden limit of 50"):
        load_checkpoint(path, lattice="6x5", max_hidden=50)
    with pytest.raises(CheckpointError, match="is 1-D but 'rec.weight' is a nn.Conv2d"):
        load_checkpoint(path, lattice="30")


def test_raw_kernels_generators_and_per_channel_biases(tmp_path):
    rng = np.random.default_rng(1)
    K = rng.standard_normal((2, 2, 8, 8)) * 0.2
    np.savez(tmp_path / "k.npz", kernel_hh=K, b=np.array([0.1, -0.2]), W_uh=rng.standard_normal((128, 1)),
             W_r=rng.standard_normal((1, 128)), lattice=np.array("8x8"))
    m = load_checkpoint(tmp_path / "k.npz")
    np.testing.assert_array_equal(m.cell.W_hh.numpy(), dense_of(K))
    np.testing.assert_array_equal(m.cell.b.numpy(), np.repeat([0.1, -0.2], 64))
    # a small stencil is centred on the lattice it is given
    st = rng.standard_normal((3, 3))
    np.savez(tmp_path / "s.npz", kernel_hh=st)
    m = load_checkpoint(tmp_path / "s.npz", lattice="5x7")
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular", bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(st)[None, None])
        ref = conv(torch.eye(35, dtype=F64).reshape(35, 1, 5, 7)).reshape(35, 35).T
    np.testing.assert_allclose(m.cell.W_hh.numpy(), ref.numpy(), atol=1e-15)
    # a generator: W_hh = exp_conv(G), orthogonal in float64 even from a float32 file
    G = nconv.antisymmetrize(torch.as_tensor(rng.standard_normal((16, 16)), dtype=torch.float32))
    np.savez(tmp_path / "g.npz", generator_hh=G.numpy())
    m = load_checkpoint(tmp_path / "g.npz")
    W = m.cell.W_hh.numpy()
    assert np.abs(W @ W.T - np.eye(256)).max() < 1e-12 and m.trained_dtype == "float32"
    np.testing.assert_allclose(W, scipy.linalg.expm(dense_of(G.double().numpy())), atol=1e-12)
    summary = model_summary(m)
    assert summary["spectral_radius"] == pytest.approx(1.0, abs=1e-12) and "fft" in summary["spectral_radius_method"]
    assert "W_hh_kernel" in summary["shapes"] and "W_hh_generator" in summary["shapes"]


def test_bipartite_file_runs_the_papers_xp_recursion(tmp_path):
    rng = np.random.default_rng(2)
    S = np.array([0.3, -0.5, 1.1, -0.5, 0.3])
    L = 20
    W_in, W_out = rng.standard_normal((L, 2)), rng.standard_normal((3, L))
    np.savez(tmp_path / "bp.npz", bipartite_hh=S, W_uh=W_in, W_r=W_out)
    m = load_checkpoint(tmp_path / "bp.npz", lattice="20")
    cell = m.cell
    assert cell.n_state == 2 * L and cell.op.construction.startswith("bipartite")
    Sd = dense_of(place_stencil(torch.as_tensor(S), (L,)).numpy())
    cos, sin = scipy.linalg.cosm(Sd), scipy.linalg.sinm(Sd)
    u = rng.standard_normal((7, 2))
    X, P = np.zeros(L), np.zeros(L)
    states = cell.rollout(torch.zeros(1, 2 * L, dtype=F64), torch.as_tensor(u)[None])[0].numpy()
    for t in range(7):  # Magnasco eq. 1.5 with phi = psi = tanh and the input on X only
        X, P = np.tanh(cos @ X + sin @ P + W_in @ u[t]), np.tanh(-sin @ X + cos @ P)
        np.testing.assert_allclose(states[t], np.concatenate([X, P]), atol=1e-13)
    np.testing.assert_allclose(cell.readout(torch.as_tensor(states)).numpy(), states[:, :L] @ W_out.T, atol=1e-13)
    W = cell.W_hh.numpy()
    assert np.abs(W @ W.T - np.eye(2 * L)).max() < 1e-12


def test_safetensors_kernel_with_lattice_metadata_and_a_named_key(tmp_path):
    K = np.random.default_rng(3).standard_normal((3, 3)).astype(np.float32)
    header = {"conv.weight": {"dtype": "F32", "shape": [1, 1, 3, 3], "data_offsets": [0, 36]},
              "__metadata__": {"lattice": "4x6"}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (tmp_path / "k.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + K.tobytes())
    m = load_checkpoint(tmp_path / "k.safetensors", keys={"W_hh": "conv.weight"})
    assert m.cell.n_state == 24 and isinstance(m.cell.op, CircularConvOperator)
    assert any("lattice=4x6" in n for n in m.notes)


# ---------------------------------------------------------------------------------
# analyses
# ---------------------------------------------------------------------------------
def _ctx():
    return RunContext(seed=0)


def test_schur_fft_path_is_exact_and_agrees_with_the_dense_path():
    g = torch.Generator().manual_seed(5)
    K = 0.3 * torch.randn(2, 2, 6, 6, generator=g, dtype=F64)
    model = Model(cell=ElmanCell(CircularConvOperator(K)))
    fft = schur_mod.run(model, schur_mod.SchurOptions(), _ctx())
    dense = schur_mod.run(model, schur_mod.SchurOptions(method="dense"), _ctx())
    assert fft.method == "fft" and dense.method == "dense" and fft.T.size == 0
    W = dense_of(K.numpy())
    ref = np.linalg.eigvals(W)
    cost = np.abs(fft.eigenvalues[:, None] - ref[None, :])
    r, c = scipy.optimize.linear_sum_assignment(cost)
    assert cost[r, c].max() < 1e-12 * np.abs(ref).max()
    assert fft.spectral_radius == pytest.approx(np.abs(ref).max(), rel=1e-13)
    np.testing.assert_allclose(np.abs(fft.eigenvalues), np.abs(dense.eigenvalues), rtol=0, atol=1e-12)
    assert fft.n_retained == dense.n_retained
    nn = fft.nonnormality
    assert nn["commutator"] == pytest.approx(np.linalg.norm(W @ W.T - W.T @ W) / np.linalg.norm(W) ** 2, rel=1e-10)
    assert nn["norm2"] == pytest.approx(np.linalg.norm(W, 2), rel=1e-12)
    assert nn["henrici"] == pytest.approx(dense.nonnormality["henrici"], rel=1e-6)
    assert nn["transient_amplification"] == pytest.approx(dense.nonnormality["transient_amplification"], rel=1e-9)
    assert fft.conv["spectrum_exact"] and not fft.conv["normal"] and fft.conv["unitarity_error"] > 0.1


def test_schur_reports_orthogonal_and_unitary_kernels_at_scale_without_a_dense_matrix():
    A = nconv.antisymmetrize(torch.as_tensor(np.random.default_rng(6).standard_normal((3, 3)))[None, None].double())
    G = place_stencil(A[0, 0], (128, 128))
    G = nconv.antisymmetrize(G)
    op = CircularConvOperator(nconv.conv_exp(G), generator=G, construction="exp")
    res = schur_mod.run(Model(cell=ElmanCell(op)), schur_mod.SchurOptions(transient_steps=5), _ctx())
    assert res.n_hidden == 16384 and op._dense_cache is None
    c = res.conv
    assert c["normal"] and c["unitarity_error"] < 1e-12 and c["generator_antisymmetry_error"] == 0.0
    assert np.abs(np.abs(res.eigenvalues) - 1).max() < 1e-12 and res.summary()["conv"]["lattice"] == "128x128"
    with pytest.raises(InputError, match="--ablate couplings removes Schur couplings"):
        schur_mod.run(Model(cell=ElmanCell(op)), schur_mod.SchurOptions(method="fft", ablate="couplings"), _ctx())
    with pytest.raises(InputError, match="--method fft needs W_hh to be a circular convolution"):
        schur_mod.run(Model(cell=ElmanCell(torch.eye(3, dtype=F64))), schur_mod.SchurOptions(method="fft"), _ctx())


def test_schur_on_a_zero_padded_convolution_falls_back_to_the_dense_path():
    w = torch.randn(1, 1, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    op = ZeroPaddedConvOperator(w, (10,))
    res = schur_mod.run(Model(cell=ElmanCell(op)), schur_mod.SchurOptions(), _ctx())
    assert res.method == "dense" and res.conv["boundary"] == "zeros" and not res.conv["spectrum_exact"]
    assert res.reconstruction_error < 1e-13


def test_convexp_analysis_report_on_the_laplacian(tmp_path):
    lap = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    np.savez(tmp_path / "lap.npz", kernel_hh=lap)
    model = load_checkpoint(tmp_path / "lap.npz", lattice="12x12")
    opts = convexp_mod.ConvexpOptions(t=2.5, max_error=1e-12)
    res = analyze(convexp_mod.ANALYSIS, tmp_path / "lap.npz", opts, RunSettings(out_dir=tmp_path, plots=False),
                  model=model)
    paths = res.paths
    g = lattice_heat_1d(12, 2.5)
    np.testing.assert_allclose(res.result.kernel_out[0, 0], np.outer(g, g), atol=1e-15, rtol=0)
    assert res.result.dense_checked and res.result.dense_error < 1e-13 and not res.gate_failures
    assert res.result.output_spectral_radius == pytest.approx(1.0, rel=1e-14)  # the zero mode
    assert res.result.input_symmetry_error == 0.0
    summary = json.loads(paths.json.read_text())
    assert summary["function"] == "exp" and summary["lattice"] == "12x12"
    import h5py

    with h5py.File(paths.h5) as f:
        assert f["model"].attrs["lattice"] == "12x12" and "W_hh_kernel" in f["model"] and "W_hh" not in f["model"]


def test_leading_lyapunov_exponents_of_a_linear_convolution_are_log_of_the_largest_fft_moduli():
    rng = np.random.default_rng(8)
    K = rng.standard_normal((16, 16))
    K /= np.abs(np.fft.fft2(K)).max()
    moduli = np.sort(np.abs(np.fft.fft2(K)).ravel())[::-1]
    cell = ElmanCell(CircularConvOperator(torch.as_tensor(K)), nonlinearity="linear")
    est = lyapunov_spectrum(cell, torch.randn(2, 256, generator=torch.Generator().manual_seed(0), dtype=F64), k=4,
                            steps=3000, warmup=300, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(est.exponents, np.log(moduli[:4]), atol=2e-3)
    # through the analysis, on a 1-D ring, with a per-time unit: the same known answer
    K1 = rng.standard_normal(64)
    K1 /= np.abs(np.fft.fft(K1)).max()
    model = Model(cell=ElmanCell(CircularConvOperator(torch.as_tensor(K1)), nonlinearity="linear"))
    res = lya.run(model, lya.LyapunovOptions(k="2", steps=2000, warmup=200, inits=2), _ctx())
    want = np.log(np.sort(np.abs(np.fft.fft(K1)))[::-1][:2])
    np.testing.assert_allclose(res.exponents, want, atol=2e-3)


def test_full_spectrum_sum_rule_uses_the_fft_log_determinant():
    K = 0.6 * torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(9), dtype=F64)
    cell = ElmanCell(CircularConvOperator(K), nonlinearity="tanh")
    est = lyapunov_spectrum(cell, torch.randn(2, 18, generator=torch.Generator().manual_seed(2), dtype=F64),
                            steps=300, warmup=50, generator=torch.Generator().manual_seed(3))
    assert est.sum_rule_residual < 1e-9
    assert cell.op.logabsdet() == pytest.approx(np.linalg.slogdet(dense_of(K.numpy()))[1], rel=1e-12)


def test_fixed_points_matrix_free_against_the_scalar_equation_and_the_dense_spectrum():
    st = torch.tensor([[0.05, 0.3, 0.05], [0.3, 0.5, 0.3], [0.05, 0.3, 0.05]], dtype=F64)
    b = 0.3
    cell = ElmanCell(CircularConvOperator.from_stencil(st, "16x16"), b=torch.full((256,), b, dtype=F64))
    s = float(st.sum())
    # h = tanh(s h + b) has three uniform solutions; the two outer ones are stable (the middle one sits where
    # a spatial pattern bifurcates: J - I is nearly singular there, so q <= tol pins it far less tightly)
    f = lambda h: np.tanh(s * h + b) - h  # noqa: E731
    roots = [scipy.optimize.brentq(f, lo, hi, xtol=1e-15) for lo, hi in ((-1.0, -0.6), (0.0, 1.0))]
    x0 = torch.as_tensor(np.array(roots))[:, None].repeat(1, 256) + 1e-3 * torch.randn(
        len(roots), 256, generator=torch.Generator().manual_seed(4), dtype=F64)
    fps = nfp.find_fixed_points(cell, None, x0, jacobian_memory=1e4)  # forces the matrix-free solver
    assert fps.stats["matrix_free"] and fps.stats["direct_steps"] == 0
    found = np.sort(fps.states[:, 0].numpy())
    np.testing.assert_allclose(found, np.sort(roots), atol=1e-12)
    assert (fps.states - fps.states[:, :1]).abs().max() < 1e-12  # translation-invariant points
    lin, info = nfp.linearize_matrix_free(cell, fps.states, k=6)
    assert info["method"] == ["fft"] * len(roots)
    for i in range(len(roots)):
        d = 1 - fps.states[i, 0].item() ** 2
        ref = np.linalg.eigvals(d * dense_of(place_stencil(st, (16, 16)).numpy()))
        np.testing.assert_allclose(np.abs(lin.eigenvalues[i].numpy()), np.sort(np.abs(ref))[::-1][:6], atol=1e-12)
    # ARPACK where the gain is not uniform: a site-dependent bias, a contracting kernel (one fixed point)
    cell2 = ElmanCell(CircularConvOperator.from_stencil(0.3 * st, "16x16"), b=torch.linspace(-1, 1, 256, dtype=F64))
    fps2 = nfp.find_fixed_points(cell2, None, torch.zeros(1, 256, dtype=F64), jacobian_memory=1e4)
    assert fps2.n_unique == 1
    lin2, info2 = nfp.linearize_matrix_free(cell2, fps2.states[:1], k=4)
    ref2 = np.linalg.eigvals(cell2.jacobian(fps2.states[:1])[0].numpy())
    assert info2["method"] == ["arnoldi"]
    np.testing.assert_allclose(np.abs(lin2.eigenvalues[0].numpy()), np.sort(np.abs(ref2))[::-1][:4], rtol=1e-8)
    # all moduli within 1e-6 (an orthogonal W_hh, a nearly uniform gain): ARPACK does not converge and
    # reports nothing rather than Ritz values that need not be the leading ones
    G = nconv.antisymmetrize(place_stencil(torch.randn(3, 3, generator=torch.Generator().manual_seed(0),
                                                       dtype=F64), (32, 32)))
    cell3 = ElmanCell(CircularConvOperator(nconv.conv_exp(G)), b=0.1 + 1e-6 * torch.linspace(-1, 1, 1024, dtype=F64))
    fps3 = nfp.find_fixed_points(cell3, None, torch.zeros(1, 1024, dtype=F64))
    lin3, info3 = nfp.linearize_matrix_free(cell3, fps3.states, k=4, maxiter=2)
    assert info3 == {"method": ["arnoldi"], "converged": [0], "k": 4} and torch.isnan(lin3.eigenvalues).all()


def test_fixedpoints_analysis_stays_matrix_free_at_lattice_scale(tmp_path):
    st = np.array([[0.05, 0.3, 0.05], [0.3, 0.5, 0.3], [0.05, 0.3, 0.05]])
    np.savez(tmp_path / "t.npz", kernel_hh=st, b=np.array([0.3]))
    model = load_checkpoint(tmp_path / "t.npz", lattice="72x72", max_hidden=6000)
    opts = fpa.FixedpointsOptions(n_init=4, trajectory_steps=20, n_eigs=4)
    res = fpa.run(model, opts, _ctx())
    assert res.solver["matrix_free"] and res.jacobians.size == 0 and res.n_unique >= 1
    assert res.memory_basis["basis"].startswith("none (matrix-free")
    assert np.all(res.q <= 1e-12) and res.eigenvalues.shape == (res.n_unique, 4)
    summary = res.summary()
    assert summary["n_unique"] == res.n_unique and summary["memory_basis"]["cyclic"] == []
    # the randomized PCA of lattice-scale states follows --seed, not torch's global generator
    torch.manual_seed(123)
    again = fpa.run(model, opts, _ctx())
    for key, value in res.pca.items():
        if isinstance(value, np.ndarray) or torch.is_tensor(value):
            np.testing.assert_array_equal(np.asarray(value), np.asarray(again.pca[key]), err_msg=key)


# ---------------------------------------------------------------------------------
# the unitary cell
# ---------------------------------------------------------------------------------
def test_unitary_cell_step_is_the_papers_map_and_its_operator_is_unitary():
    torch.manual_seed(3)
    mod = ConvUnitaryCell("10", channels=1, kernel_size=3, n_inputs=2, n_outputs=1, nonlinearity="tanh")
    with torch.no_grad():
        mod.bias.normal_()
    cell = UserCell(mod)
    K = mod.generator().detach().numpy()[0, 0]
    Kd = np.array([np.roll(K, x) for x in range(10)])  # (K z)[x] = sum_d K[d] z[x + d]
    assert np.abs(Kd + Kd.conj().T).max() < 1e-15  # anti-Hermitian
    E = scipy.linalg.expm(Kd)
    s = torch.randn(3, 20, dtype=F64)
    u = torch.randn(3, 2, dtype=F64)
    z = s[:, :10].numpy() + 1j * s[:, 10:].numpy()
    w = mod.input_weight.detach().double().numpy()
    pre = z @ E.T + u.numpy() @ (w[0] + 1j * w[1]).T + (mod.bias[0] + 1j * mod.bias[1]).detach().numpy()
    want = np.tanh(np.abs(pre)) * pre / np.abs(pre)  # phase kept, modulus squashed
    out = cell.step(s, u).numpy()
    np.testing.assert_allclose(out[:, :10] + 1j * out[:, 10:], want, atol=1e-13)
    op = cell.recurrent_operator()
    assert op.complex_channels and np.abs(np.abs(op.eigenvalues().numpy()) - 1).max() < 1e-13
    R = op.dense().numpy()
    np.testing.assert_allclose(R[:10, :10] + 1j * R[10:, :10], E, atol=1e-13)
    res = schur_mod.run(Model(cell=cell), schur_mod.SchurOptions(), _ctx())
    assert res.conv["anti_hermitian_error"] == 0.0 and res.conv["unitarity_error"] < 1e-13


def test_linear_unitary_cell_has_zero_lyapunov_exponents_through_torch_func_jvp():
    torch.manual_seed(4)
    cell = UserCell(ConvUnitaryCell("6x6", channels=2, kernel_size=3, nonlinearity="linear"))
    est = lyapunov_spectrum(cell, torch.randn(2, cell.n_state, dtype=F64), k=6, steps=200, warmup=20,
                            generator=torch.Generator().manual_seed(0))
    assert np.abs(est.exponents).max() < 1e-12


def test_the_shipped_unitary_sample_loads_as_its_own_cell():
    from pathlib import Path

    model = load_checkpoint(Path(__file__).resolve().parents[1] / "sample_checkpoints" / "conv_unitary.pt")
    assert model.cell.kind == "user" and model.cell.n_state == 128
    op = model.cell.recurrent_operator()
    assert nconv.unitarity_error(op.kernel) < 1e-12 and nconv.antisymmetry_error(op.generator) == 0.0


def test_kernel_measures_take_numpy_arrays_and_tensors_alike():
    """Arrays and tensors give the same numbers; the kernel's operator checked densely in numpy."""
    rng = np.random.default_rng(11)
    for shape in ((5,), (3, 3), (2, 2, 3, 3)):
        K = rng.standard_normal(shape)
        Kt = torch.as_tensor(K)
        assert nconv.antisymmetry_error(K) == pytest.approx(nconv.antisymmetry_error(Kt), rel=1e-14)
        assert nconv.symmetry_error(K) == pytest.approx(nconv.symmetry_error(Kt), rel=1e-14)
        np.testing.assert_allclose(nconv.antisymmetrize(K).numpy(), nconv.antisymmetrize(Kt).numpy(), atol=0)
        np.testing.assert_allclose(nconv.anti_hermitian_from_real(K).numpy(),
                                   nconv.anti_hermitian_from_real(Kt).numpy(), atol=0)
    # against the dense matrix of the kernel's operator on a 1-D lattice of 5 sites
    K = rng.standard_normal(5)
    W = CircularConvOperator(torch.as_tensor(K), (5,)).dense().numpy()
    assert nconv.antisymmetry_error(K) == pytest.approx(np.linalg.norm(W + W.T) / (2 * np.linalg.norm(W)), rel=1e-12)
    assert nconv.symmetry_error(K) == pytest.approx(np.linalg.norm(W - W.T) / (2 * np.linalg.norm(W)), rel=1e-12)
