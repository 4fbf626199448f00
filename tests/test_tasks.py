"""Task generators, metrics, data files and width checks (rnnprobe.tasks).

References are computed here independently: explicit loops over trials and
steps, or the closed form of each task, never the generator's own output.
"""

import h5py
import numpy as np
import pytest
import torch

from rnnprobe.errors import AnalysisError, InputError
from rnnprobe.tasks import (
    TASKS,
    TaskData,
    check_fits,
    fvu,
    load_data,
    make_task,
    parse_task_spec,
    save_data,
    sign_accuracy,
)

SHAPES = {  # spec -> (T, d_in, d_out)
    "copy": (16, 1, 1),
    "copy:length=5,delay=3,width=4": (13, 4, 4),
    "flipflop": (25, 3, 3),
    "sine": (50, 1, 1),
    "cdi": (48, 4, 1),
    "s1": (50, 1, 2),
    "s1:init=cue": (50, 3, 2),
}


@pytest.mark.parametrize("spec", list(SHAPES))
def test_shapes_dtypes_and_determinism(spec):
    T, d_in, d_out = SHAPES[spec]
    a = make_task(spec, batch=7, seed=3)
    assert a.inputs.shape == (7, T, d_in) and a.targets.shape == (7, T, d_out) and a.mask.shape == (7, T)
    for x in (a.inputs, a.targets, a.mask):
        assert x.dtype == np.float64 and np.isfinite(x).all()
    assert set(np.unique(a.mask)) <= {0.0, 1.0} and a.mask.sum() > 0
    b = make_task(spec, batch=7, seed=3)
    c = make_task(spec, batch=7, seed=4)
    for k in ("inputs", "targets", "mask"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert not np.array_equal(a.inputs, c.inputs)
    # the spec rebuilds the same task, all parameters explicit
    again = make_task(a.spec, batch=7, seed=3)
    np.testing.assert_array_equal(again.targets, a.targets)
    assert again.params == a.params


def test_registry_covers_the_documented_tasks():
    assert set(TASKS) == {"copy", "flipflop", "sine", "cdi", "s1", "lattice"}
    for name in TASKS:
        assert TASKS[name].__doc__ and "Mask" in TASKS[name].__doc__ and "Metric" in TASKS[name].__doc__


def test_copy_replays_the_shown_symbols_with_zero_input():
    L, D, W = 6, 2, 3
    t = make_task(f"copy:length={L},delay={D},width={W}", batch=20, seed=1)
    for b in range(20):
        shown = t.inputs[b, :L]
        assert set(np.unique(shown)) <= {-1.0, 1.0}
        assert not t.inputs[b, L:].any()  # replay is autonomous
        np.testing.assert_array_equal(t.targets[b, L + D:], shown)
        assert not t.targets[b, : L + D].any()
        np.testing.assert_array_equal(t.mask[b], [0.0] * (L + D) + [1.0] * L)
    assert t.metric == "sign"


def test_flipflop_holds_the_last_pulse():
    t = make_task("flipflop:length=30,bits=3,p=0.2", batch=16, seed=2)
    assert set(np.unique(t.inputs)) <= {-1.0, 0.0, 1.0}
    for b in range(16):
        for k in range(3):
            held = 0.0
            for s in range(30):
                if t.inputs[b, s, k] != 0:
                    held = t.inputs[b, s, k]
                assert t.targets[b, s, k] == held
    assert (t.mask == 1).all()
    rate = (t.inputs != 0).mean()
    assert 0.15 < rate < 0.25  # p = 0.2 over 1440 draws


def test_sine_follows_the_cued_frequency():
    t = make_task("sine", batch=32, seed=5)
    cue = t.inputs[:, 0, 0]
    assert np.allclose(t.inputs, cue[:, None, None])
    j = np.rint((cue - 0.25) * 51)
    omega = 0.1 + 0.5 * j / 50
    ref = np.sin(omega[:, None] * np.arange(50))
    np.testing.assert_allclose(t.targets[:, :, 0], ref, atol=1e-12)
    assert t.metric is None and t.accuracy(t.targets) is None


def test_cdi_target_is_the_sign_of_the_cued_integrated_evidence():
    t = make_task("cdi:length=20,response=5", batch=40, seed=6)
    stim = 15
    for b in range(40):
        ctx = t.inputs[b, 0, 2:]
        assert sorted(ctx) == [0.0, 1.0] and (t.inputs[b, :, 2:] == ctx).all()
        cued = int(np.argmax(ctx))
        total = sum(t.inputs[b, s, cued] for s in range(stim))
        assert (t.targets[b, stim:, 0] == np.sign(total)).all()
        assert not t.targets[b, :stim].any() and not t.inputs[b, stim:, :2].any()
        np.testing.assert_array_equal(t.mask[b], [0.0] * stim + [1.0] * 5)


@pytest.mark.parametrize("init", ["zero", "cue"])
def test_s1_outputs_the_integrated_phase(init):
    t = make_task(f"s1:length=40,init={init}", batch=8, seed=7)
    omega = t.inputs[:, :, 0]
    phi0 = np.zeros(8) if init == "zero" else np.arctan2(t.inputs[:, 0, 2], t.inputs[:, 0, 1])
    if init == "cue":
        assert not t.inputs[:, 1:, 1:].any()
    phase = phi0[:, None] + np.cumsum(omega, axis=1)
    np.testing.assert_allclose(t.targets[..., 0], np.cos(phase), atol=1e-12)
    np.testing.assert_allclose(t.targets[..., 1], np.sin(phase), atol=1e-12)


def test_s1_velocity_is_the_stated_ar1_process():
    t = make_task("s1:length=30,sigma=0.3,rho=0.6", batch=4000, seed=8)
    w = t.inputs[:, :, 0]
    assert abs(w.std() - 0.3) < 0.01
    lag1 = np.mean(w[:, 1:] * w[:, :-1]) / np.mean(w**2)
    assert abs(lag1 - 0.6) < 0.02


# ---- metrics ------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["copy", "flipflop", "cdi"])
def test_sign_accuracy_on_perfect_and_wrong_outputs(spec):
    t = make_task(spec, batch=64, seed=9)
    assert t.accuracy(t.targets) == 1.0
    assert t.accuracy(-t.targets) == 0.0
    assert t.accuracy(np.zeros_like(t.targets)) == 0.0  # an output of exactly 0 is never right
    assert t.fvu(t.targets) == 0.0


def test_sign_accuracy_scores_only_masked_nonzero_targets():
    targets = np.array([[[1.0, 0.0], [-1.0, 1.0], [1.0, -1.0]]])  # [1, 3, 2]
    mask = np.array([[1.0, 1.0, 0.0]])
    outputs = np.array([[[0.5, -9.0], [0.2, 3.0], [-1.0, 1.0]]])
    # scored: (0,0) right, (1,0) wrong, (1,1) right; step 2 is unmasked, (0,1) has target 0
    assert sign_accuracy(outputs, targets, mask) == pytest.approx(2 / 3)


def test_fvu_against_a_direct_computation():
    rng = np.random.default_rng(10)
    y = rng.normal(size=(5, 7, 3)) + np.array([1.0, -2.0, 0.5])
    y_hat = y + 0.3 * rng.normal(size=y.shape)
    w = (rng.random((5, 7)) < 0.6).astype(float)
    sel = w.astype(bool)
    ys, yh = y[sel], y_hat[sel]  # [n, 3]
    ref = np.mean(np.sum((yh - ys) ** 2, axis=1)) / np.mean(np.sum((ys - ys.mean(axis=0)) ** 2, axis=1))
    assert fvu(y_hat, y, w) == pytest.approx(ref, rel=1e-12)
    # predicting the per-dimension mean gives exactly 1; torch tensors are accepted
    mean = ys.mean(axis=0)
    assert fvu(np.broadcast_to(mean, y.shape), y, w) == pytest.approx(1.0, rel=1e-12)
    assert fvu(torch.tensor(y_hat), torch.tensor(y), torch.tensor(w)) == pytest.approx(ref, rel=1e-12)


def test_fvu_weights_count_like_repeated_trials_and_leading_dims_batch():
    rng = np.random.default_rng(11)
    y, y_hat = rng.normal(size=(3, 4, 2)), rng.normal(size=(3, 4, 2))
    w = np.ones((3, 4))
    w[0] = 2.0
    rep = lambda a: np.concatenate([a[:1], a], axis=0)  # noqa: E731
    assert fvu(y_hat, y, w) == pytest.approx(fvu(rep(y_hat), rep(y), np.ones((4, 4))), rel=1e-12)
    stacked = np.stack([y_hat, y, 2 * y_hat])
    per = fvu(stacked, y, w)
    assert per.shape == (3,)
    np.testing.assert_allclose(per, [fvu(s, y, w) for s in stacked], rtol=1e-12)
    acc = sign_accuracy(stacked, np.sign(y), w)
    np.testing.assert_allclose(acc, [sign_accuracy(s, np.sign(y), w) for s in stacked], rtol=1e-12)


def test_fvu_undefined_cases_raise():
    y = np.ones((2, 3, 1))
    with pytest.raises(AnalysisError, match="do not vary"):
        fvu(y, y, np.ones((2, 3)))
    with pytest.raises(AnalysisError, match="no steps"):
        fvu(y, y, np.zeros((2, 3)))
    with pytest.raises(InputError, match=r"\[2, 3, 2\]"):
        fvu(np.ones((2, 3, 2)), y, np.ones((2, 3)))


# ---- specs ----------------------------------------------------------------------------
def test_spec_parsing_converts_to_the_default_types():
    name, params = parse_task_spec(" flipflop : length=40 , p=0.05 ")
    assert name == "flipflop" and params == {"length": 40, "bits": 3, "p": 0.05}
    assert isinstance(params["length"], int) and isinstance(params["p"], float)
    t = make_task("flipflop:length=40,p=0.05", batch=3, seed=0)
    assert t.inputs.shape == (3, 40, 3) and t.spec == "flipflop:length=40,bits=3,p=0.05"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("nosuch", "unknown task 'nosuch'; choose one of copy, flipflop, sine, cdi, s1"),
        ("copy:lenght=4", "has no parameter 'lenght'; its parameters .*length=8"),
        ("copy:length=4.5", "length='4.5' is not a valid int"),
        ("sine:omega_min=fast", "omega_min='fast' is not a valid float"),
        ("copy:length", "is not key=value"),
        ("flipflop:p=1.5", r"p=1.5 must be in \(0, 1\]"),
        ("cdi:response=48", r"response=48 must be in \[1, length=48\)"),
        ("s1:init=random", "init='random' must be 'zero' or 'cue'"),
    ],
)
def test_bad_specs_are_refused_with_the_fix(spec, match):
    with pytest.raises(InputError, match=match):
        make_task(spec, batch=2)


def test_bad_batch_is_refused():
    with pytest.raises(InputError, match="batch=0"):
        make_task("copy", batch=0)


# ---- data files -----------------------------------------------------------------------
def _arrays(B=4, T=6, d_in=2, d_out=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, T, d_in)), rng.normal(size=(B, T, d_out)), (rng.random((B, T)) < 0.7).astype(float)


def test_load_data_roundtrips_npz_and_h5(tmp_path):
    x, y, m = _arrays()
    np.savez(tmp_path / "d.npz", inputs=x, targets=y, mask=m)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["inputs"], f["targets"], f["mask"] = x, y, m
    for name in ("d.npz", "d.h5"):
        t = load_data(tmp_path / name)
        assert t.name == "data" and t.metric is None and t.params["path"].endswith(name)
        np.testing.assert_array_equal(t.inputs, x)
        np.testing.assert_array_equal(t.targets, y)
        np.testing.assert_array_equal(t.mask, m)
    # save_data writes what load_data reads; content, not extension, decides the format
    task = make_task("cdi", batch=5, seed=1)
    for name in ("t.npz", "t.h5"):
        back = load_data(save_data(task, tmp_path / name))
        np.testing.assert_array_equal(back.targets, task.targets)
        np.testing.assert_array_equal(back.mask, task.mask)
    (tmp_path / "t.h5").rename(tmp_path / "t.bin")
    assert load_data(tmp_path / "t.bin").inputs.shape == (5, 48, 4)


def test_load_data_defaults_the_mask_and_converts_integers(tmp_path):
    x, y, _ = _arrays()
    np.savez(tmp_path / "d.npz", inputs=x.astype(np.float32), targets=np.sign(y).astype(np.int8))
    t = load_data(tmp_path / "d.npz")
    assert t.mask.shape == (4, 6) and (t.mask == 1).all()
    assert t.targets.dtype == np.float64 and set(np.unique(t.targets)) <= {-1.0, 0.0, 1.0}


def _npz(tmp_path, **arrays):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    return p


def test_load_data_refuses_bad_files(tmp_path):
    x, y, m = _arrays()
    cases = [
        (dict(inputs=x), r"no array 'targets' \(found: inputs\)"),
        (dict(inputs=x[0], targets=y), r"'inputs' has shape \[6, 2\] but must be \[batch, time, d_in\]"),
        (dict(inputs=x, targets=y[:, :5]), r"inputs \[4, 6, 2\] and targets \[4, 5, 3\] differ"),
        (dict(inputs=x, targets=y, mask=m[:, :3]), r"mask has shape \[4, 3\] but inputs \[4, 6, 2\] need \[4, 6\]"),
        (dict(inputs=x, targets=y, mask=-m), "mask must be non-negative"),
        (dict(inputs=np.where(x > 1.5, np.nan, x), targets=y), r"'inputs' has a non-finite value nan at index"),
        (dict(inputs=x.astype(complex), targets=y), "'inputs' has dtype complex128"),
        (dict(inputs=np.array([{"a": 1}], dtype=object), targets=y), "object array, which is never unpickled"),
    ]
    for arrays, match in cases:
        path = _npz(tmp_path, **arrays)
        with pytest.raises(InputError, match=match) as e:
            load_data(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
        path.unlink()

    text = tmp_path / "notes.npz"
    text.write_text("inputs, targets\n1, 2\n")
    with pytest.raises(InputError, match="not an .npz or HDF5 file"):
        load_data(text)
    np.savez(tmp_path / "ok.npz", inputs=x, targets=y)
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes((tmp_path / "ok.npz").read_bytes()[:200])
    with pytest.raises(InputError, match="trunc.npz: not a readable .npz file"):
        load_data(truncated)
    with pytest.raises(InputError, match="over the limit of 100 .*--max-bytes"):
        load_data(tmp_path / "ok.npz", max_bytes=100)
    with pytest.raises(InputError, match="missing"):
        load_data(tmp_path / "absent.npz")
    with pytest.raises(InputError, match="a directory"):
        load_data(tmp_path)
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_group("inputs")
        f["targets"] = y
    with pytest.raises(InputError, match="'inputs' is a group, not a dataset"):
        load_data(tmp_path / "g.h5")


def test_check_fits_names_both_shapes():
    t = make_task("copy:width=9", batch=2)
    check_fits(t, 9, 9, source="net.pt")
    with pytest.raises(InputError, match=r"task 'copy' has 9 inputs \(inputs shape \[2, 16, 9\]\) but the model \(net.pt\) takes 3"):
        check_fits(t, 3, 9, source="net.pt")
    with pytest.raises(InputError, match=r"task 'copy' has 9 outputs \(targets shape \[2, 16, 9\]\) but the model \(net.pt\) gives 2"):
        check_fits(t, 9, 2, source="net.pt")
    with pytest.raises(InputError, match="has no readout"):
        check_fits(t, 9, 0, source="net.pt")
    data = TaskData(t.inputs, t.targets, t.mask, "data", {"path": "runs/d.npz"})
    with pytest.raises(InputError, match=r"data file runs/d.npz has 9 inputs .* takes 4"):
        check_fits(data, 4, 9, source="net.pt")
