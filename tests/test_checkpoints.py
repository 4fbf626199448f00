"""Checkpoint loading: every supported layout written for real, loaded, and checked against an
independent reference (torch's own modules, or the file format's equations written out in numpy)."""

import io
import json
import struct
import sys
import zipfile

import h5py
import numpy as np
import pytest
import torch

from rnnprobe.cells import ElmanCell, GRUCell, LSTMCell, UserCell
from rnnprobe.checkpoints import LoadOptions, load_checkpoint, model_summary, read_sidecar, sha256_file
from rnnprobe.checkpoints import summary as summary_mod
from rnnprobe.errors import CheckpointError, InputError, UnsafeCheckpointError

torch.set_num_threads(1)
B, T, D, N, O = 3, 7, 3, 5, 2
TOL = 1e-12


def _x(seed=0, d=D):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, d, generator=g, dtype=torch.float64)


class Net(torch.nn.Module):
    """nn.RNN / GRU / LSTM + Linear readout, the most common training layout."""

    def __init__(self, kind="RNN", seed=0, readout="readout", **kw):
        super().__init__()
        torch.manual_seed(seed)
        self.rnn = getattr(torch.nn, kind)(D, N, batch_first=True, **kw)
        setattr(self, readout, torch.nn.Linear(N * (2 if kw.get("bidirectional") else 1), O))
        self.readout_name = readout

    def forward(self, x):
        out, _ = self.rnn(x)
        return out, getattr(self, self.readout_name)(out)


def _check_against_torch(model, net):
    """Canonical cell == torch module: rollout from 0 to 1e-12 in float64, and the readout."""
    ref = net.double()
    x = _x()
    with torch.no_grad():
        out, y = ref(x)
    cell = model.cell
    states = cell.rollout(cell.initial_state(B), x)
    assert torch.allclose(cell.hidden(states), out, atol=TOL, rtol=0)
    assert torch.allclose(cell.readout(states), y, atol=TOL, rtol=0)


# ---- torch state dicts -----------------------------------------------------------------------------
WRAPPERS = {
    "plain": lambda sd: sd,
    "ddp": lambda sd: {"module." + k: v for k, v in sd.items()},
    "compile": lambda sd: {"_orig_mod." + k: v for k, v in sd.items()},
    "fabric": lambda sd: {"_forward_module." + k: v for k, v in sd.items()},
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 3},
    "model_state_dict": lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {"state": {0: {
        "exp_avg": torch.zeros(N, N)}}, "param_groups": [{"lr": 0.1}]}},
    "model": lambda sd: {"model": sd},
    "net": lambda sd: {"net": sd, "step": 10},
    "lightning": lambda sd: {"state_dict": {"model." + k: v for k, v in sd.items()}, "epoch": 1,
                             "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(N, N)}}}],
                             "hyper_parameters": {"lr": 1e-3}},
}


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_torch_rnn_under_any_prefix_and_training_dict(tmp_path, wrapper):
    net = Net("RNN")
    p = tmp_path / "net.pt"
    torch.save(WRAPPERS[wrapper](net.state_dict()), p)
    model = load_checkpoint(p)
    assert isinstance(model.cell, ElmanCell) and model.format == "torch"
    assert torch.equal(model.cell.W_hh, net.rnn.weight_hh_l0.detach().double())
    assert torch.equal(model.cell.b, net.rnn.bias_ih_l0.detach().double() + net.rnn.bias_hh_l0.detach().double())
    assert model.keys["W_hh"].endswith("rnn.weight_hh_l0") and model.keys["W_r"].endswith("readout.weight")
    assert model.trained_dtype == "float32" and model.ignored == []
    assert any("assumed tanh" in n for n in model.notes)
    _check_against_torch(model, net)


@pytest.mark.parametrize("kind,cls", [("GRU", GRUCell), ("LSTM", LSTMCell)])
def test_torch_gru_lstm_keep_both_biases_and_match_forward(tmp_path, kind, cls):
    net = Net(kind, seed=1, readout="fc")
    p = tmp_path / "net.pth"
    torch.save(WRAPPERS["lightning"](net.state_dict()), p)
    model = load_checkpoint(p)
    assert isinstance(model.cell, cls)
    assert torch.equal(model.cell.b_hh, net.rnn.bias_hh_l0.detach().double())
    assert model.keys["bias_ih"] == "state_dict.model.rnn.bias_ih_l0"
    _check_against_torch(model, net)
    s = model_summary(model)
    assert s["cell"] == kind.lower() and s["spectral_radius"] is None and s["alpha"] is None


def test_nonlinearity_relu_from_sidecar_and_option(tmp_path):
    net = Net("RNN", seed=2, nonlinearity="relu")
    p = tmp_path / "net.ckpt"
    torch.save(net.state_dict(), p)
    assert load_checkpoint(p).cell.nonlinearity == "tanh"  # not in the file: torch's default, with a note
    (tmp_path / "net.ckpt.json").write_text(json.dumps({"nonlinearity": "relu", "task": "copy", "dt": 0.1}))
    model = load_checkpoint(p)
    assert model.cell.nonlinearity == "relu" and model.task == "copy" and model.dt == 0.1
    _check_against_torch(model, net)
    assert load_checkpoint(p, nonlinearity="linear").cell.nonlinearity == "linear"  # option beats sidecar
    hp = tmp_path / "hp.ckpt"  # Lightning keeps hyper-parameters next to the state dict: file metadata
    torch.save({"state_dict": net.state_dict(), "hyper_parameters": {"alpha": 0.3, "nonlinearity": "relu"}}, hp)
    m = load_checkpoint(hp)
    assert (m.cell.alpha, m.cell.nonlinearity) == (0.3, "relu")
    assert any("hyper_parameters.alpha" in n for n in m.notes)


def test_empty_sidecar_is_no_sidecar(tmp_path):
    # `rnnprobe schur net.pt --json > net.json` creates an empty net.json before the load
    net = Net("RNN", seed=2)
    p = tmp_path / "net.pt"
    torch.save(net.state_dict(), p)
    (tmp_path / "net.json").write_text("")
    model = load_checkpoint(p)
    assert model.task is None
    _check_against_torch(model, net)


@pytest.mark.parametrize("kind", ["RNNCell", "GRUCell", "LSTMCell"])
def test_torch_cell_modules(tmp_path, kind):
    torch.manual_seed(3)
    m = getattr(torch.nn, kind)(D, N)
    p = tmp_path / "cell.bin"
    torch.save({"cell." + k: v for k, v in m.state_dict().items()}, p)
    model = load_checkpoint(p)
    m = m.double()
    h = torch.randn(B, N, dtype=torch.float64)
    u = torch.randn(B, D, dtype=torch.float64)
    with torch.no_grad():
        if kind == "LSTMCell":
            c = torch.randn(B, N, dtype=torch.float64)
            h1, c1 = m(u, (h, c))
            ref, s = torch.cat([h1, c1], -1), torch.cat([h, c], -1)
        else:
            ref, s = m(u, h), h
    assert torch.allclose(model.cell.step(s, u), ref, atol=TOL, rtol=0)


def test_multilayer_bidirectional_layer_and_direction(tmp_path):
    torch.manual_seed(4)
    gru = torch.nn.GRU(D, N, num_layers=2, bidirectional=True, batch_first=True)
    p = tmp_path / "bi.pt"
    torch.save({"encoder." + k: v for k, v in gru.state_dict().items()}, p)
    gru = gru.double()
    x = _x(1)
    with torch.no_grad():
        out, _ = gru(x)
        first = torch.nn.GRU(D, N, bidirectional=True, batch_first=True).double()
        first.load_state_dict({k: v for k, v in gru.state_dict().items() if "_l0" in k})
        out0, _ = first(x)
    m = load_checkpoint(p, layer=1, direction="reverse")
    assert m.cell.n_inputs == 2 * N and m.cell.n_outputs == 0
    assert any("layer 1 of 2" in n for n in m.notes) and any("bidirectional" in n for n in m.notes)
    states = m.cell.rollout(m.cell.initial_state(B), out0.flip(1)).flip(1)
    assert torch.allclose(states, out[..., N:], atol=TOL, rtol=0)
    m0 = load_checkpoint(p)
    assert any("--layer 1" in n for n in m0.notes)
    assert torch.allclose(m0.cell.rollout(m0.cell.initial_state(B), x), out0[..., :N], atol=TOL, rtol=0)
    with pytest.raises(CheckpointError, match=r"--layer 5.*layers \[0, 1\]"):
        load_checkpoint(p, layer=5)


def test_lstm_proj_size_refused(tmp_path):
    p = tmp_path / "proj.pt"
    torch.save(torch.nn.LSTM(D, N, proj_size=2).state_dict(), p)
    with pytest.raises(CheckpointError, match="proj_size"):
        load_checkpoint(p)


def test_readout_choice_rules(tmp_path):
    torch.manual_seed(5)
    sd = Net("RNN", readout="fc").state_dict()
    sd.update({"aux.weight": torch.randn(4, N), "aux.bias": torch.randn(4)})
    p = tmp_path / "two.pt"
    torch.save(sd, p)
    m = load_checkpoint(p)  # fc is named like a readout, aux is not: the documented rule picks fc
    assert m.keys["W_r"] == "fc.weight" and any("chosen by its name" in n for n in m.notes)
    sd.update({"head.weight": torch.randn(6, N), "head.bias": torch.randn(6)})
    torch.save(sd, p)
    with pytest.raises(CheckpointError, match=r"several Linear.*fc.*head.*--readout"):
        load_checkpoint(p)
    m = load_checkpoint(p, readout="head")
    assert m.cell.n_outputs == 6 and torch.equal(m.cell.W_r, sd["head.weight"].double())
    assert load_checkpoint(p, readout="none").cell.n_outputs == 0
    with pytest.raises(CheckpointError, match="--readout nothere"):
        load_checkpoint(p, readout="nothere")


# ---- neuroscience conventions ---------------------------------------------------------------------------
class YangCTRNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.rnn = torch.nn.Module()
        self.rnn.input2h = torch.nn.Linear(D, N)
        self.rnn.h2h = torch.nn.Linear(N, N)
        self.fc = torch.nn.Linear(N, O)


def test_ctrnn_keys_with_alpha_from_sidecar(tmp_path):
    net = YangCTRNN().double()
    p = tmp_path / "ctrnn.pt"
    torch.save(YangCTRNN().state_dict(), p)
    m1 = load_checkpoint(p)
    assert m1.cell.alpha == 1.0 and m1.cell.nonlinearity == "relu"
    assert any("assumed 1" in n for n in m1.notes) and any("assumed relu" in n for n in m1.notes)
    (tmp_path / "ctrnn.json").write_text(json.dumps({"alpha": 0.2, "task": "cdi", "seed": 7}))
    m = load_checkpoint(p)
    assert m.cell.alpha == 0.2 and m.metadata["seed"] == 7 and m.keys["b"] == "rnn.input2h.bias + rnn.h2h.bias"
    x = _x(2)
    h = torch.zeros(B, N, dtype=torch.float64)
    ref = []
    with torch.no_grad():
        for t in range(T):  # the Yang-lab recurrence, written out
            h = h * 0.8 + 0.2 * torch.relu(net.rnn.input2h(x[:, t]) + net.rnn.h2h(h))
            ref.append(net.fc(h))
    states = m.cell.rollout(m.cell.initial_state(B), x)
    assert torch.allclose(m.cell.readout(states), torch.stack(ref, 1), atol=TOL, rtol=0)


def test_psychrnn_npz_rate_outside_with_masks_and_dale(tmp_path):
    rng = np.random.default_rng(7)
    dale = np.diag([1.0, 1.0, 1.0, -1.0, -1.0])
    w = {"W_in": rng.standard_normal((N, D)), "W_rec": rng.standard_normal((N, N)),
         "W_out": rng.standard_normal((O, N)), "b_rec": rng.standard_normal(N), "b_out": rng.standard_normal(O),
         "Dale_rec": dale, "Dale_out": dale, "init_state": np.zeros((1, N)),
         "rec_connectivity": (rng.random((N, N)) > 0.3).astype(float),
         "input_connectivity": np.ones((N, D)), "output_connectivity": np.ones((O, N))}
    p = tmp_path / "psych.npz"
    np.savez(p, **w)
    m = load_checkpoint(p, alpha=0.1)
    assert m.cell.form == "rate-outside" and m.cell.nonlinearity == "relu" and m.format == "npz"
    W_rec = np.abs(w["W_rec"] * w["rec_connectivity"]) @ dale  # PsychRNN's effective weights
    W_in = np.abs(w["W_in"])
    x = _x(3).numpy()
    s = np.zeros((B, N))
    for t in range(T):
        s = 0.9 * s + 0.1 * (np.maximum(s, 0) @ W_rec.T + x[:, t] @ W_in.T + w["b_rec"])
    states = m.cell.rollout(m.cell.initial_state(B), torch.from_numpy(x))
    assert np.allclose(states[:, -1].numpy(), s, atol=TOL, rtol=0)
    assert np.allclose(m.cell.W_r.numpy(), np.abs(w["W_out"]) @ dale, atol=0, rtol=0)
    assert any("Dale" in n for n in m.notes) and "init_state" in m.ignored


class Boom:
    """An object whose unpickling would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_npz_object_arrays_skipped_never_unpickled(tmp_path):
    marker = tmp_path / "PWNED"
    p = tmp_path / "obj.npz"
    np.savez(p, W_rec=np.eye(N), b_rec=np.zeros(N), W_in=np.ones((N, 1)),
             extra=np.array([Boom(str(marker))], dtype=object))
    m = load_checkpoint(p)
    assert not marker.exists()
    assert any("never unpickled" in n and "extra" in n for n in m.notes)


def test_generic_names_npz_h5_nested_groups(tmp_path):
    rng = np.random.default_rng(8)
    w = {"J": rng.standard_normal((N, N)), "W_ih": rng.standard_normal((N, D)), "b_h": rng.standard_normal(N),
         "W_out": rng.standard_normal((O, N)), "b_out": rng.standard_normal(O)}
    p = tmp_path / "g.npz"
    np.savez(p, alpha=np.array(0.25), **w)
    m = load_checkpoint(p, nonlinearity="softplus")
    assert m.keys == {"W_hh": "J", "W_uh": "W_ih", "b": "b_h", "W_r": "W_out", "b_r": "b_out"}
    assert m.cell.alpha == 0.25  # a 0-d array in the file is metadata
    h5 = tmp_path / "g.h5"
    with h5py.File(h5, "w") as f:
        grp = f.create_group("run/model/rnn")
        for k, v in w.items():
            grp[k] = v.astype(">f8")  # big-endian on disk: must read the same numbers
    m2 = load_checkpoint(h5, nonlinearity="softplus", alpha=0.25)
    assert m2.format == "hdf5" and m2.keys["W_hh"] == "run/model/rnn/J"
    for name in ("W_hh", "W_uh", "b", "W_r", "b_r"):
        assert torch.equal(m.cell.matrices()[name], m2.cell.matrices()[name])
    assert np.array_equal(m.cell.W_hh.numpy(), w["J"])


# ---- safetensors ---------------------------------------------------------------------------------------
def _write_safetensors(path, tensors, metadata=None):
    """The format written out by hand: u64 header length, JSON header, raw little-endian bytes."""
    header, blobs, off = {}, [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def _st(t, dtype):
    if dtype == "BF16":
        raw = t.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes()
    else:
        np_dtype = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8"}[dtype]
        raw = t.numpy().astype(np_dtype).tobytes()
    return dtype, tuple(t.shape), raw


@pytest.mark.parametrize("dtype", ["F64", "F32", "F16", "BF16"])
def test_safetensors_dtypes_and_metadata(tmp_path, dtype):
    net = Net("RNN", seed=9)
    sd = {k: v.detach() for k, v in net.state_dict().items()}
    p = tmp_path / "net.safetensors"
    _write_safetensors(p, {k: _st(v, dtype) for k, v in sd.items()},
                       metadata={"alpha": "0.5", "nonlinearity": "relu", "dt": "0.01", "task": "flipflop"})
    m = load_checkpoint(p)
    ref = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype]
    assert torch.equal(m.cell.W_hh, sd["rnn.weight_hh_l0"].to(ref).double())
    assert m.cell.alpha == 0.5 and m.cell.nonlinearity == "relu" and m.dt == 0.01 and m.task == "flipflop"
    assert m.trained_dtype == {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]


def test_precedence_option_sidecar_file_default(tmp_path):
    p = tmp_path / "net.safetensors"
    rng = np.random.default_rng(10)
    _write_safetensors(p, {"W_hh": ("F64", (N, N), rng.standard_normal((N, N)).tobytes()),
                           "b": ("I64", (N,), np.arange(N, dtype="<i8").tobytes())}, metadata={"alpha": "0.5"})
    assert load_checkpoint(p).cell.alpha == 0.5
    assert torch.equal(load_checkpoint(p).cell.b, torch.arange(N, dtype=torch.float64))
    (tmp_path / "net.json").write_text(json.dumps({"alpha": 0.4}))
    assert load_checkpoint(p).cell.alpha == 0.4
    (tmp_path / "net.safetensors.json").write_text(json.dumps({"alpha": 0.3}))  # the more specific name wins
    m = load_checkpoint(p)
    assert m.cell.alpha == 0.3 and any("net.json not read" in n for n in m.notes)
    assert read_sidecar(p) == {"alpha": 0.3}
    assert load_checkpoint(p, alpha=0.2).cell.alpha == 0.2
    m = load_checkpoint(p, form="residual", eps=0.05)
    assert m.cell.form == "residual" and m.cell.alpha == 0.05


# ---- Keras -------------------------------------------------------------------------------------------------
def _keras_simple_rnn_ref(x, K, RK, b, Kd, bd, act):
    h = np.zeros((x.shape[0], RK.shape[0]))
    ys = []
    for t in range(x.shape[1]):  # Keras: row vectors, h = act(x K + h RK + b), y = h Kd + bd
        h = act(x[:, t] @ K + h @ RK + b)
        ys.append(h @ Kd + bd)
    return np.stack(ys, 1)


def _keras_weights(seed, G=1, gru_bias=False):
    rng = np.random.default_rng(seed)
    K, RK = rng.standard_normal((D, G * N)) * 0.5, rng.standard_normal((N, G * N)) * 0.5
    b = rng.standard_normal((2, G * N) if gru_bias else (G * N,))
    return K, RK, b, rng.standard_normal((N, O)), rng.standard_normal(O)


def test_keras2_h5_simple_rnn_with_config(tmp_path):
    K, RK, b, Kd, bd = _keras_weights(11)
    p = tmp_path / "k2.h5"
    cfg = {"class_name": "Sequential", "config": {"name": "seq", "layers": [
        {"class_name": "SimpleRNN", "config": {"name": "simple_rnn", "activation": "relu"}},
        {"class_name": "Dense", "config": {"name": "dense", "activation": "linear"}}]}}
    with h5py.File(p, "w") as f:
        f.attrs["model_config"] = json.dumps(cfg)
        f.attrs["keras_version"] = "2.15.0"
        g = f.create_group("model_weights/simple_rnn/simple_rnn/simple_rnn_cell")
        g["kernel:0"], g["recurrent_kernel:0"], g["bias:0"] = K, RK, b
        d = f.create_group("model_weights/dense/dense")
        d["kernel:0"], d["bias:0"] = Kd, bd
        f.create_group("optimizer_weights/Adam/simple_rnn/simple_rnn_cell")["recurrent_kernel:0"] = RK
    m = load_checkpoint(p)
    assert m.cell.nonlinearity == "relu" and m.cell.n_outputs == O
    x = _x(4).numpy()
    y = m.cell.readout(m.cell.rollout(m.cell.initial_state(B), torch.from_numpy(x))).numpy()
    assert np.allclose(y, _keras_simple_rnn_ref(x, K, RK, b, Kd, bd, lambda v: np.maximum(v, 0)), atol=TOL, rtol=0)
    assert any("transposed" in n for n in m.notes)


def _keras3_archive(path, layers, weights):
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for key, value in weights.items():
            f[key] = value
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.3.3"}))
        zf.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {"layers": layers}}))
        zf.writestr("model.weights.h5", buf.getvalue())


def test_keras3_archive_simple_rnn(tmp_path):
    K, RK, b, Kd, bd = _keras_weights(12)
    p = tmp_path / "net.keras"
    _keras3_archive(p, [{"class_name": "InputLayer", "config": {}},
                        {"class_name": "SimpleRNN", "config": {"name": "rnn1", "activation": "tanh"}},
                        {"class_name": "Dense", "config": {"name": "out", "activation": "softmax"}}],
                    {"layers/simple_rnn/cell/vars/0": K, "layers/simple_rnn/cell/vars/1": RK,
                     "layers/simple_rnn/cell/vars/2": b, "layers/dense/vars/0": Kd, "layers/dense/vars/1": bd,
                     "optimizer/vars/0": np.zeros(()), "optimizer/vars/1": RK})
    m = load_checkpoint(p)
    assert m.format == "keras" and m.keys["W_hh"] == "layers/simple_rnn/cell/vars/1"
    x = _x(5).numpy()
    y = m.cell.readout(m.cell.rollout(m.cell.initial_state(B), torch.from_numpy(x))).numpy()
    assert np.allclose(y, _keras_simple_rnn_ref(x, K, RK, b, Kd, bd, np.tanh), atol=TOL, rtol=0)
    assert any("softmax is not applied" in n for n in m.notes)


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def test_keras3_gru_and_lstm_equations(tmp_path):
    x = _x(6).numpy()
    # GRU, reset_after=True: gates z, r, h; bias rows: input, recurrent
    K, RK, b, _, _ = _keras_weights(13, G=3, gru_bias=True)
    p = tmp_path / "gru.keras"
    _keras3_archive(p, [{"class_name": "GRU", "config": {"activation": "tanh", "recurrent_activation": "sigmoid",
                                                         "reset_after": True}}],
                    {"layers/gru/cell/vars/0": K, "layers/gru/cell/vars/1": RK, "layers/gru/cell/vars/2": b})
    m = load_checkpoint(p)
    assert isinstance(m.cell, GRUCell)
    h = np.zeros((B, N))
    for t in range(T):
        xi, hi = x[:, t] @ K + b[0], h @ RK + b[1]
        z = _sig(xi[:, :N] + hi[:, :N])
        r = _sig(xi[:, N:2 * N] + hi[:, N:2 * N])
        hh = np.tanh(xi[:, 2 * N:] + r * hi[:, 2 * N:])
        h = z * h + (1 - z) * hh
    assert np.allclose(m.cell.rollout(m.cell.initial_state(B), torch.from_numpy(x))[:, -1].numpy(), h, atol=TOL)
    # LSTM: gates i, f, c, o and one bias
    K, RK, b, _, _ = _keras_weights(14, G=4)
    p = tmp_path / "lstm.keras"
    _keras3_archive(p, [{"class_name": "LSTM", "config": {}}],
                    {"layers/lstm/cell/vars/0": K, "layers/lstm/cell/vars/1": RK, "layers/lstm/cell/vars/2": b})
    m = load_checkpoint(p)
    h, c = np.zeros((B, N)), np.zeros((B, N))
    for t in range(T):
        g = x[:, t] @ K + h @ RK + b
        i, f, cc, o = _sig(g[:, :N]), _sig(g[:, N:2 * N]), np.tanh(g[:, 2 * N:3 * N]), _sig(g[:, 3 * N:])
        c = f * c + i * cc
        h = o * np.tanh(c)
    s = m.cell.rollout(m.cell.initial_state(B), torch.from_numpy(x))[:, -1].numpy()
    assert np.allclose(s, np.concatenate([h, c], 1), atol=TOL)
    # reset_after=False (bias [3N]) resets before the product: refused
    p = tmp_path / "gru_old.h5"
    with h5py.File(p, "w") as f:
        g = f.create_group("gru/gru/gru_cell")
        g["kernel:0"], g["recurrent_kernel:0"], g["bias:0"] = K[:, :3 * N], RK[:, :3 * N], b[:3 * N]
    with pytest.raises(CheckpointError, match="reset_after=False"):
        load_checkpoint(p)


# ---- user cells ------------------------------------------------------------------------------------------
USER_MODULE = '''
import pathlib, torch
pathlib.Path(__file__).with_name("IMPORTED").write_text("x")
class Tiny(torch.nn.Module):
    def __init__(self, n=4, d=2):
        super().__init__()
        self.n_state, self.n_inputs, self.n_outputs = n, d, 1
        self.W = torch.nn.Linear(n, n)
        self.U = torch.nn.Linear(d, n, bias=False)
        self.out = torch.nn.Linear(n, 1)
    def step(self, h, u):
        return torch.tanh(self.W(h) + self.U(u))
    def readout(self, h):
        return self.out(h)
'''


def test_user_cell_only_when_named_by_the_user(tmp_path, monkeypatch):
    mod = tmp_path / "mycells_ckpt.py"
    mod.write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mycells_ckpt", raising=False)
    torch.manual_seed(15)
    sd = {"W.weight": torch.randn(3, 3), "W.bias": torch.randn(3), "U.weight": torch.randn(3, 2),
          "out.weight": torch.randn(1, 3), "out.bias": torch.randn(1)}
    p = tmp_path / "user.pt"
    torch.save({"model": sd}, p)
    (tmp_path / "user.pt.json").write_text(json.dumps({"cell": "mycells_ckpt:Tiny", "cell_kwargs": {"n": 3}}))
    with pytest.raises(CheckpointError, match=r"names the cell class mycells_ckpt:Tiny.*--cell mycells_ckpt:Tiny"):
        load_checkpoint(p)
    assert not (tmp_path / "IMPORTED").exists() and "mycells_ckpt" not in sys.modules
    m = load_checkpoint(p, cell="mycells_ckpt:Tiny")
    assert isinstance(m.cell, UserCell) and m.cell.n_state == 3 and m.keys["W.weight"] == "model.W.weight"
    h, u = torch.randn(B, 3, dtype=torch.float64), torch.randn(B, 2, dtype=torch.float64)
    ref = torch.tanh(h @ sd["W.weight"].double().T + sd["W.bias"].double() + u @ sd["U.weight"].double().T)
    assert torch.allclose(m.cell.step(h, u), ref, atol=TOL, rtol=0)
    del sd["U.weight"]
    sd["V.weight"] = torch.randn(3, 2)
    torch.save(sd, p)
    with pytest.raises(CheckpointError, match=r"missing keys U.weight.*unexpected keys V.weight"):
        load_checkpoint(p, cell="mycells_ckpt:Tiny")


# ---- overrides ---------------------------------------------------------------------------------------------
def test_key_overrides_dotted_paths_and_ambiguity(tmp_path):
    rng = np.random.default_rng(16)
    W, U, bb, R = (torch.from_numpy(rng.standard_normal(s)) for s in ((N, N), (N, D), (N,), (O, N)))
    p = tmp_path / "odd.pt"
    torch.save({"weights": {"rec": W, "inp": U, "bias": bb, "ro": R}, "other": {"rec": W * 2}}, p)
    with pytest.raises(CheckpointError, match="no recurrent weights found.*--key W_hh"):
        load_checkpoint(p)
    keys = {"W_hh": "weights.rec", "W_uh": "weights/inp", "b": "weights.bias", "W_r": "ro"}
    m = load_checkpoint(p, keys=keys, alpha=0.5)
    assert m.keys == {"W_hh": "weights.rec", "W_uh": "weights.inp", "b": "weights.bias", "W_r": "weights.ro"}
    assert torch.equal(m.cell.W_hh, W) and torch.equal(m.cell.W_r, R) and "other.rec" in m.ignored
    two = tmp_path / "two.pt"
    torch.save({"a." + k: v for k, v in Net().state_dict().items()}
               | {"b." + k: v for k, v in Net(seed=1).state_dict().items()}, two)
    with pytest.raises(CheckpointError, match=r"several recurrent networks.*--key W_hh=b.rnn.weight_hh_l0"):
        load_checkpoint(two)
    assert load_checkpoint(two, keys={"W_hh": "b.rnn.weight_hh_l0"}).keys["W_uh"] == "b.rnn.weight_ih_l0"
    with pytest.raises(CheckpointError, match="close keys"):
        load_checkpoint(two, keys={"W_hh": "b.rnn.weight_hh_l9"})
    with pytest.raises(InputError, match="not a canonical name"):
        LoadOptions(keys={"Whh": "x"})


# ---- hostile and broken input -------------------------------------------------------------------------------
def test_malicious_pickles_refused_without_running(tmp_path):
    marker = tmp_path / "PWNED"
    for name, legacy in (("evil.pt", False), ("evil_legacy.pt", True)):
        p = tmp_path / name
        torch.save({"w": torch.zeros(2), "x": Boom(str(marker))}, p, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(UnsafeCheckpointError, match=r"open.*--trust-pickle") as e:
            load_checkpoint(p)
        assert not marker.exists()
        assert any(g.endswith("open") for g in e.value.globals) and str(p) in str(e.value)
        assert "\n" not in str(e.value)
    raw = tmp_path / "evil.pkl"
    import pickle

    raw.write_bytes(pickle.dumps({"x": Boom(str(marker))}, protocol=4))  # STACK_GLOBAL, not a torch file
    with pytest.raises(UnsafeCheckpointError, match=r"io.open|builtins.open"):
        load_checkpoint(raw)
    assert not marker.exists()


def test_trust_pickle_is_an_explicit_opt_in(tmp_path):
    import fractions

    p = tmp_path / "frac.pt"
    torch.save({"rnn.weight_hh_l0": torch.eye(N) * 0.5, "ratio": fractions.Fraction(1, 3)}, p)
    with pytest.raises(UnsafeCheckpointError, match=r"fractions.Fraction.*--trust-pickle"):
        load_checkpoint(p)
    m = load_checkpoint(p, trust_pickle=True)
    assert torch.equal(m.cell.W_hh, torch.eye(N, dtype=torch.float64) * 0.5)
    assert any("--trust-pickle" in n for n in m.notes)


def _hostile_files(tmp):
    """name -> (path, options, regex the one-line message must match). Each must raise CheckpointError."""
    torch.save(Net().state_dict(), tmp / "good.pt")
    data = (tmp / "good.pt").read_bytes()
    (tmp / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp / "text.pt").write_text("this is not a checkpoint\n")
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "adir.pt").mkdir()
    sd = Net().state_dict()
    sd["rnn.weight_hh_l0"] = torch.randn(N, N - 1)
    torch.save(sd, tmp / "nonsquare.pt")
    sd = Net().state_dict()
    sd["rnn.weight_hh_l0"][2, 3] = float("nan")
    torch.save(sd, tmp / "nan.pt")
    np.savez(tmp / "mismatch.npz", W_hh=np.eye(N), W_uh=np.ones((N + 1, D)))
    np.savez(tmp / "big.npz", W_hh=np.eye(64))
    with zipfile.ZipFile(tmp / "nomember.keras", "w") as zf:
        zf.writestr("config.json", "{}")
    np.save(tmp / "lone.npy", np.eye(3))
    (tmp / "noise.bin").write_bytes(bytes(range(7, 250)) * 4)
    st = tmp / "trunc.safetensors"
    _write_safetensors(st, {"W_hh": ("F32", (N, N), np.eye(N, dtype="<f4").tobytes())})
    st.write_bytes(st.read_bytes()[:-10])
    with h5py.File(tmp / "whole.h5", "w") as f:
        f["W_hh"] = np.eye(N)
    (tmp / "trunc.h5").write_bytes((tmp / "whole.h5").read_bytes()[:300])
    return {
        "truncated": (tmp / "truncated.pt", {}, r"truncated|corrupt"),
        "text": (tmp / "text.pt", {}, r"text file"),
        "empty": (tmp / "empty.pt", {}, r"empty"),
        "directory": (tmp / "adir.pt", {}, r"directory"),
        "missing": (tmp / "missing.pt", {}, r"no such file"),
        "nonsquare": (tmp / "nonsquare.pt", {}, r"rnn.weight_hh_l0.*\[5, 4\].*square"),
        "nan": (tmp / "nan.pt", {}, r"W_hh \(file key 'rnn.weight_hh_l0'\).*nan.*\(2, 3\)"),
        "mismatch": (tmp / "mismatch.npz", {}, r"W_uh \(file key 'W_uh'\) has shape \[6, 3\].*W_hh"),
        "oversized_file": (tmp / "good.pt", {"max_bytes": 100}, r"over the --max-bytes limit of 100"),
        "oversized_hidden": (tmp / "big.npz", {"max_hidden": 10}, r"N=64.*--max-hidden limit of 10"),
        "zip_without_member": (tmp / "nomember.keras", {}, r"zip archive without"),
        "lone_npy": (tmp / "lone.npy", {}, r"single .npy"),
        "unknown_bytes": (tmp / "noise.bin", {}, r"not a recognised checkpoint"),
        "truncated_safetensors": (st, {}, r"truncated"),
        "truncated_hdf5": (tmp / "trunc.h5", {}, r"truncated|corrupt"),
    }


def test_hostile_and_broken_inputs(tmp_path):
    for name, (path, opts, pattern) in _hostile_files(tmp_path).items():
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path, **opts)
        msg = str(e.value)
        assert e.value.exit_code == 2, name
        assert str(path) in msg and "\n" not in msg, (name, msg)
        assert __import__("re").search(pattern, msg), (name, msg)


def test_npz_header_that_lies_about_its_size(tmp_path):
    p = tmp_path / "lie.npz"
    with zipfile.ZipFile(p, "w") as zf:
        hdr = io.BytesIO()
        np.lib.format.write_array_header_1_0(hdr, {"descr": "<f8", "fortran_order": False,
                                                   "shape": (100000, 100000)})
        zf.writestr("W_hh.npy", hdr.getvalue() + b"\0" * 64)
    with pytest.raises(CheckpointError, match="declares shape"):
        load_checkpoint(p)


def test_hdf5_links_to_other_files_are_not_followed(tmp_path):
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as f:
        f["W_hh"] = np.eye(N)
    p = tmp_path / "links.h5"
    with h5py.File(p, "w") as f:
        f["W_rec"] = np.eye(N) * 0.5
        f["J"] = h5py.ExternalLink(str(secret), "W_hh")
    m = load_checkpoint(p)
    assert m.keys["W_hh"] == "W_rec" and any("ExternalLink" in n for n in m.notes)


# ---- safetensors header fuzzing -------------------------------------------------------------------------------
from hypothesis import given, strategies as hst  # noqa: E402

from rnnprobe.checkpoints.safetensors_format import parse_bytes  # noqa: E402


@given(hst.binary(max_size=256))
def test_fuzz_safetensors_random_bytes(blob):
    try:
        parse_bytes(blob)
    except CheckpointError:
        pass


_json = hst.recursive(hst.none() | hst.booleans() | hst.integers(-2**70, 2**70) | hst.text(max_size=8),
                      lambda c: hst.lists(c, max_size=4) | hst.dictionaries(hst.text(max_size=6), c, max_size=4),
                      max_leaves=12)
_entry = hst.fixed_dictionaries({"dtype": hst.sampled_from(["F32", "F64", "BF16", "I64", "XX", 3]),
                                 "shape": hst.lists(hst.integers(-2, 2**40), max_size=3) | _json,
                                 "data_offsets": hst.lists(hst.integers(-5, 2**62), min_size=0, max_size=3) | _json})


@given(hst.dictionaries(hst.text(max_size=6), _entry | _json, max_size=4), hst.binary(max_size=64),
       hst.integers(-3, 3))
def test_fuzz_safetensors_structured_headers(header, payload, skew):
    h = json.dumps(header).encode()
    blob = struct.pack("<Q", max(0, len(h) + skew)) + h + payload
    try:
        tensors, _, start, _ = parse_bytes(blob)
    except CheckpointError:
        return
    for _dtype, _shape, begin, end in tensors.values():
        assert start <= begin <= end <= len(blob)


@given(hst.lists(hst.tuples(hst.sampled_from(["F64", "F32", "F16", "BF16", "I64"]),
                            hst.lists(hst.integers(0, 4), min_size=1, max_size=3)), min_size=1, max_size=4))
def test_safetensors_roundtrip_property(tmp_path_factory, specs):
    rng = np.random.default_rng(len(specs))
    tensors, expected = {}, {}
    for i, (dtype, shape) in enumerate(specs):
        t = torch.from_numpy(rng.standard_normal(shape) * 10).round() if dtype == "I64" else \
            torch.from_numpy(rng.standard_normal(shape))
        if dtype == "I64":
            t = t.to(torch.int64)
        tensors[f"t{i}"] = _st(t, dtype)
        ref = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
               "I64": torch.int64}[dtype]
        expected[f"t{i}"] = t.to(ref).double()
    p = tmp_path_factory.mktemp("st") / "x.safetensors"
    _write_safetensors(p, tensors)
    from rnnprobe.checkpoints.safetensors_format import read_safetensors

    store = read_safetensors(p, p.stat().st_size)
    for k, ref in expected.items():
        got = store.tensor(k, k, dtype=torch.float64, device="cpu", max_bytes=1 << 30)
        assert torch.equal(got, ref)


# ---- summary -----------------------------------------------------------------------------------------------
def test_model_summary_and_sha(tmp_path):
    net = Net("RNN", seed=17)
    p = tmp_path / "net.pt"
    torch.save(net.state_dict(), p)
    (tmp_path / "net.pt.json").write_text(json.dumps({"alpha": 0.5, "dt": 0.02, "task": "copy", "seed": 3}))
    s = model_summary(load_checkpoint(p))
    W = net.rnn.weight_hh_l0.detach().double().numpy()
    assert s["spectral_radius"] == pytest.approx(np.abs(np.linalg.eigvals(W)).max(), rel=1e-12)
    assert s["spectral_radius_method"] == "eigvals" and s["tau"] == pytest.approx(0.04)
    assert s["norms"]["W_hh"] == pytest.approx(np.linalg.norm(W), rel=1e-12)
    assert (s["cell"], s["n_hidden"], s["n_inputs"], s["n_outputs"], s["alpha"], s["nonlinearity"]) == \
        ("elman", N, D, O, 0.5, "tanh")
    assert s["shapes"]["W_uh"] == [N, D] and s["metadata"]["seed"] == 3 and s["task"] == "copy"
    json.dumps(s)
    import hashlib

    assert sha256_file(p) == hashlib.sha256(p.read_bytes()).hexdigest()


def test_spectral_radius_arpack_path_and_fallback(monkeypatch):
    rng = np.random.default_rng(18)
    W = torch.from_numpy(rng.standard_normal((300, 300)) / np.sqrt(300) + np.diag(np.linspace(0, 1.2, 300)))
    ref = np.abs(np.linalg.eigvals(W.numpy())).max()
    monkeypatch.setattr(summary_mod, "EXACT_MAX", 50)
    rho, method = summary_mod.spectral_radius(W)
    assert method.startswith("arpack") and rho == pytest.approx(ref, rel=1e-5)
    monkeypatch.setattr(summary_mod, "ARPACK_MAXITER", 1)
    Q = torch.linalg.qr(torch.from_numpy(rng.standard_normal((300, 300))))[0]  # all |lambda| = 1
    rho, method = summary_mod.spectral_radius(Q)
    assert rho == pytest.approx(1.0, rel=1e-10) and "did not converge" in method
