"""The shipped sample checkpoints reproduce the figures their sidecars state.

Each sample is loaded twice: with rnnprobe's loader (``load_checkpoint``,
the path every analysis takes) and, independently of the loader, by building
the cell directly from the state dict with rnnprobe.cells. Both are rolled
out in float64 with the shipped cells (not torch's modules) on the sidecar's
held-out trials. The sidecar's figures were measured by the training script
with a float64 copy of the torch module, so the two evaluations differ only by
float64 rounding: the FVU must agree to a relative 1e-9 and the accuracy
exactly (up to one scored entry, for an output within rounding of 0).
"""

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnprobe.samples as samples_pkg
from rnnprobe.cells import ElmanCell, GRUCell, LSTMCell
from rnnprobe.checkpoints import load_checkpoint
from rnnprobe.errors import InputError
from rnnprobe.samples import CTRNN, RecurrentNet, TrainedSample, discover, evaluate, write_readme
from rnnprobe.samples.__main__ import main
from rnnprobe.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = ROOT / "sample_checkpoints"
CORE = ["copy_rnn64", "copy16_rnn64", "flipflop_rnn64", "sine_rnn64", "cdi_rnn64",
        "flipflop_gru", "flipflop_lstm", "cdi_ctrnn"]
REGISTRY = discover()


def _sidecar(name):
    return json.loads((SAMPLE_DIR / f"{REGISTRY[name].filename}.json").read_text())


def _direct_cell(state: dict, meta: dict):
    """The canonical cell read straight off the state dict, without the checkpoint loader."""
    s = {k: v.to(torch.float64) for k, v in state.items()}
    if "h2h.weight" in s:  # leaky CTRNN, neurogym layout
        return ElmanCell(s["h2h.weight"], s["input2h.weight"], s["input2h.bias"] + s["h2h.bias"],
                         s["fc.weight"], s["fc.bias"], alpha=meta["alpha"], nonlinearity=meta["nonlinearity"])
    W_hh, W_ih = s["rnn.weight_hh_l0"], s["rnn.weight_ih_l0"]
    gates = W_hh.shape[0] // W_hh.shape[1]
    W_r, b_r = s["readout.weight"], s["readout.bias"]
    if gates == 1:
        return ElmanCell(W_hh, W_ih, s["rnn.bias_ih_l0"] + s["rnn.bias_hh_l0"], W_r, b_r,
                         nonlinearity=meta["nonlinearity"])
    cls = {3: GRUCell, 4: LSTMCell}[gates]
    return cls(W_ih, W_hh, s["rnn.bias_ih_l0"], s["rnn.bias_hh_l0"], W_r, b_r)


def _outputs(cell, task):
    states = cell.rollout(cell.initial_state(task.batch), torch.as_tensor(task.inputs))
    return cell.readout(states).numpy()


def _check_figures(meta, task, y):
    if meta.get("accuracy") is not None:
        scored = (task.mask[:, :, None] * (task.targets != 0)).sum()
        assert abs(task.accuracy(y) - meta["accuracy"]) <= 1.0 / scored + 1e-12
    else:
        assert task.accuracy(y) is None
    assert task.fvu(y) == pytest.approx(meta["fvu"], rel=1e-9)


def test_registry_declares_the_core_samples_and_every_file_is_shipped():
    assert set(CORE) <= set(REGISTRY)
    for name, sample in REGISTRY.items():
        assert (SAMPLE_DIR / sample.filename).is_file(), f"run python -m rnnprobe.samples --only {name}"
        assert (SAMPLE_DIR / f"{sample.filename}.json").is_file()
    table = (SAMPLE_DIR / "README.md").read_text()
    assert all(f"`{sample.filename}`" in table for sample in REGISTRY.values())


@pytest.mark.parametrize("name", list(REGISTRY))
def test_sample_reproduces_its_stated_figures_through_the_loader(name):
    meta = _sidecar(name)
    # what any sample's sidecar must give to be checked (training details are the module's business)
    for key in ("task", "description", "eval_seed", "eval_batch", "fvu"):
        assert key in meta, key
    model = load_checkpoint(SAMPLE_DIR / REGISTRY[name].filename)
    assert model.task == meta["task"]
    task = make_task(meta["task"], batch=meta["eval_batch"], seed=meta["eval_seed"])
    _check_figures(meta, task, _outputs(model.cell, task))


@pytest.mark.parametrize("name", CORE)
def test_core_sample_read_without_the_loader_agrees(name):
    meta = _sidecar(name)
    path = SAMPLE_DIR / REGISTRY[name].filename
    for key in ("seed", "steps", "train_seconds", "eval_dtype"):
        assert key in meta, key
    assert meta["trained_dtype"] == "float32"
    state = torch.load(path, weights_only=True, map_location="cpu")
    assert all(v.dtype == torch.float32 for v in state.values())
    task = make_task(meta["task"], batch=meta["eval_batch"], seed=meta["eval_seed"])
    direct = _direct_cell(state, meta)
    y_direct = _outputs(direct, task)
    _check_figures(meta, task, y_direct)
    model = load_checkpoint(path)
    assert model.cell.kind == direct.kind and model.cell.n_hidden == meta["n_hidden"]
    np.testing.assert_allclose(_outputs(model.cell, task), y_direct, rtol=0, atol=1e-12)


def test_core_samples_solve_their_tasks():
    for name in CORE:
        meta = _sidecar(name)
        if meta["accuracy"] is not None:
            assert meta["accuracy"] >= 0.97, name
        assert meta["fvu"] < 0.1, name
    # the copy samples: Dräger's setting (tanh, N in 64..72, orthogonal W_hh init) replaying perfectly
    for name in ("copy_rnn64", "copy16_rnn64"):
        meta = _sidecar(name)
        assert meta["task"].startswith("copy:") and meta["nonlinearity"] == "tanh"
        assert 64 <= meta["n_hidden"] <= 72 and meta["init"] == "orthogonal weight_hh"
        assert meta["accuracy"] >= 0.99
    ctrnn = _sidecar("cdi_ctrnn")
    assert ctrnn["alpha"] == 0.2 and ctrnn["nonlinearity"] == "relu"
    keys = set(torch.load(SAMPLE_DIR / "cdi_ctrnn.pt", weights_only=True))
    assert keys == {f"{m}.{p}" for m in ("input2h", "h2h", "fc") for p in ("weight", "bias")}


def test_orthogonal_init_is_orthogonal_per_gate_block():
    torch.manual_seed(0)
    for kind, gates in (("rnn", 1), ("gru", 3), ("lstm", 4)):
        net = RecurrentNet(kind, 2, 8, 1)
        W = net.rnn.weight_hh_l0.detach().double()
        assert W.shape == (gates * 8, 8)
        for block in W.split(8):
            torch.testing.assert_close(block @ block.T, torch.eye(8, dtype=torch.float64), atol=1e-6, rtol=0)


def test_ctrnn_forward_is_the_canonical_leaky_map():
    torch.manual_seed(1)
    net = CTRNN(3, 6, 2, alpha=0.2, nonlinearity="relu").double()
    x = torch.randn(4, 9, 3, dtype=torch.float64)
    with torch.no_grad():
        y = net(x)
    W, U, b = net.h2h.weight, net.input2h.weight, net.input2h.bias + net.h2h.bias
    h = torch.zeros(4, 6, dtype=torch.float64)
    for t in range(9):  # the explicit equation of DESIGN.md, alpha = 0.2, phi = relu
        h = 0.8 * h + 0.2 * torch.relu(h @ W.T + x[:, t] @ U.T + b)
        torch.testing.assert_close(y[:, t], h @ net.fc.weight.T + net.fc.bias, atol=1e-12, rtol=0)


def _tiny(name="tiny_copy"):
    return TrainedSample(
        name=name, task="copy:length=2", description="tiny test network",
        network=lambda d_in, d_out: RecurrentNet("rnn", d_in, 8, d_out), steps=20, batch=16,
        eval_batch=32, eval_seed=5,
    )


def test_training_is_deterministic_and_the_sidecar_matches_a_reevaluation(tmp_path):
    a = _tiny().produce(tmp_path / "a", log=lambda m: None)
    _tiny().produce(tmp_path / "b", log=lambda m: None)
    sa = torch.load(tmp_path / "a" / "tiny_copy.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "tiny_copy.pt", weights_only=True)
    assert sa.keys() == sb.keys() == {
        "rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0", "readout.weight", "readout.bias"}
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert json.loads((tmp_path / "a" / "tiny_copy.pt.json").read_text()) == a
    assert a["task"] == "copy:length=2,delay=0,width=1" and a["steps"] == 20
    task = make_task(a["task"], batch=32, seed=5)
    _check_figures(a, task, _outputs(_direct_cell(sa, a), task))
    assert not list((tmp_path / "a").glob("*.tmp"))
    readme = write_readme(tmp_path / "a").read_text()
    assert "| `tiny_copy.pt` |" in readme and "tiny test network" in readme


def test_evaluate_uses_float64():
    torch.manual_seed(2)
    net = RecurrentNet("rnn", 1, 8, 1)
    task = make_task("copy:length=3", batch=8, seed=0)
    with torch.no_grad():
        y = net.double()(torch.as_tensor(task.inputs)).numpy()
    assert evaluate(net.float(), task)["fvu"] == pytest.approx(task.fvu(y), rel=1e-12)


def test_discover_refuses_duplicate_names(monkeypatch):
    mods = {
        "rnnprobe.samples.one": types.SimpleNamespace(__name__="rnnprobe.samples.one", SAMPLES=[_tiny("dup")]),
        "rnnprobe.samples.two": types.SimpleNamespace(__name__="rnnprobe.samples.two", SAMPLES=[_tiny("dup")]),
    }
    infos = [types.SimpleNamespace(name="one"), types.SimpleNamespace(name="two"), types.SimpleNamespace(name="__main__")]
    monkeypatch.setattr(samples_pkg.pkgutil, "iter_modules", lambda path: infos)
    monkeypatch.setattr(samples_pkg.importlib, "import_module", mods.__getitem__)
    with pytest.raises(InputError, match="'dup' is declared in both rnnprobe.samples.one and rnnprobe.samples.two"):
        discover()


def test_main_lists_and_refuses_unknown_names(capsys, tmp_path):
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in CORE)
    assert main(["--out", str(tmp_path), "--only", "nosuch"]) == 2
    assert "unknown sample(s) nosuch" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
