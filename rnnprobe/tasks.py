"""Task generators and data files shared by training, analysis and tests.

Every task is a seeded numpy generator returning a :class:`TaskData`:

    inputs  [B, T, d_in]   float64
    targets [B, T, d_out]  float64
    mask    [B, T]         float64 weights (0/1 here): the steps that count in
                           the loss, the FVU and the accuracy

Outputs are compared with the convention of the cells: ``y_t`` is the readout
of the state *after* the step that consumed ``u_t`` (``cell.readout(cell.rollout(h0, inputs))``),
starting from ``h0 = 0``.

``make_task("NAME:key=value,...", batch=B, seed=s)`` builds a task from a
specification (``--task`` on the command line); ``load_data(path)`` reads the
same three arrays from an ``.npz`` or HDF5 file (``--data``). The registry
:data:`TASKS` maps each name to its generator; the generator's keyword
defaults are the task's documented default parameters.

Tasks (each generator's docstring has the details):

========  ====  =====  ======  ==============================================
name      d_in  d_out  T       metric
========  ====  =====  ======  ==============================================
copy      1     1      16      sign accuracy over the replayed symbols
flipflop  3     3      25      sign accuracy after each channel's first pulse
sine      1     1      50      FVU only (accuracy is None)
cdi       4     1      48      sign accuracy on the decision steps
s1        1     2      50      FVU only (accuracy is None)
lattice   32    32     10      sign accuracy over every site and step
========  ====  =====  ======  ==============================================
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Callable

import numpy as np

from rnnprobe.errors import AnalysisError, InputError

__all__ = [
    "TaskData",
    "TASKS",
    "make_task",
    "parse_task_spec",
    "load_data",
    "save_data",
    "check_fits",
    "fvu",
    "sign_accuracy",
]


# ---------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------
def _as_numpy(x) -> np.ndarray:
    """A float64 numpy view of an array or a (possibly GPU) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _result(x: np.ndarray):
    return float(x) if np.ndim(x) == 0 else x


def fvu(outputs, targets, mask):
    """Fraction of variance unexplained over the masked steps.

    Returns ``E||y_hat - y||^2 / E||y - mean(y)||^2``, both expectations taken
    over the masked steps with the mask as weights, ``mean(y)`` the weighted
    mean over the masked steps per output dimension, and the squared norms
    summed over output dimensions. 0 is perfect; 1 is no better than
    predicting the mean target.

    Arguments:
        outputs: ``[..., B, T, d_out]`` array or tensor; leading dimensions
            (e.g. ablation variants) give one FVU each.
        targets: ``[B, T, d_out]``.
        mask: ``[B, T]`` non-negative weights.

    Returns a float for 3-D ``outputs``, else an array of the leading shape.
    Raises :class:`AnalysisError` when the mask has no weight or the targets
    do not vary over the masked steps (the FVU is then undefined).
    """
    y_hat, y, w = _as_numpy(outputs), _as_numpy(targets), _as_numpy(mask)
    if y_hat.shape[-3:] != y.shape or w.shape != y.shape[:2]:
        raise InputError(
            f"fvu: outputs {list(y_hat.shape)}, targets {list(y.shape)} and mask {list(w.shape)} "
            "must be [..., B, T, d], [B, T, d] and [B, T]"
        )
    total = w.sum()
    if not total > 0:
        raise AnalysisError("FVU is undefined: the mask selects no steps (all weights are 0)")
    mean = np.einsum("bt,btd->d", w, y) / total
    var = np.einsum("bt,btd->", w, (y - mean) ** 2) / total
    if not var > 0:
        raise AnalysisError(
            "FVU is undefined: the targets do not vary over the masked steps; "
            "use a task or data file whose targets vary"
        )
    err = np.einsum("bt,...btd->...", w, (y_hat - y) ** 2) / total
    return _result(err / var)


def sign_accuracy(outputs, targets, mask):
    """Fraction of scored entries where ``sign(output) == sign(target)``.

    Scored entries are the ``(b, t, k)`` with ``mask[b, t] > 0`` and
    ``targets[b, t, k] != 0`` (weighted by the mask); an output of exactly 0
    counts as wrong. Shapes as in :func:`fvu`; returns a float for 3-D
    ``outputs``, else an array of the leading shape. Raises
    :class:`AnalysisError` when no entry is scored.
    """
    y_hat, y, w = _as_numpy(outputs), _as_numpy(targets), _as_numpy(mask)
    if y_hat.shape[-3:] != y.shape or w.shape != y.shape[:2]:
        raise InputError(
            f"sign_accuracy: outputs {list(y_hat.shape)}, targets {list(y.shape)} and mask "
            f"{list(w.shape)} must be [..., B, T, d], [B, T, d] and [B, T]"
        )
    weight = w[:, :, None] * (y != 0)
    total = weight.sum()
    if not total > 0:
        raise AnalysisError("accuracy is undefined: no masked step has a non-zero target")
    correct = (y_hat * np.sign(y)) > 0
    return _result(np.einsum("btd,...btd->...", weight, correct) / total)


# ---------------------------------------------------------------------------------
# the task container
# ---------------------------------------------------------------------------------
@dataclasses.dataclass
class TaskData:
    """One batch of trials of a task (or of a data file).

    Attributes:
        inputs: ``[B, T, d_in]`` float64.
        targets: ``[B, T, d_out]`` float64.
        mask: ``[B, T]`` float64 weights in ``{0, 1}`` (or general non-negative
            weights for data files): which steps count in loss, FVU and accuracy.
        name: ``copy``, ``flipflop``, ``sine``, ``cdi``, ``s1``, ``lattice``, or ``data``.
        params: the task's parameters (for ``data``: ``{"path": ...}``).
        metric: ``"sign"`` when the task has a sign accuracy (see
            :func:`sign_accuracy`), ``None`` when only the FVU applies.
        seed: the seed the trials were drawn with (``None`` for files).
    """

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    name: str
    params: dict
    metric: str | None = None
    seed: int | None = None

    @property
    def batch(self) -> int:
        return self.inputs.shape[0]

    @property
    def length(self) -> int:
        return self.inputs.shape[1]

    @property
    def n_inputs(self) -> int:
        return self.inputs.shape[2]

    @property
    def n_outputs(self) -> int:
        return self.targets.shape[2]

    @property
    def spec(self) -> str:
        """The specification that rebuilds this task with :func:`make_task` (all parameters explicit)."""
        if self.name == "data":
            return f"data:{self.params.get('path', '')}"
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_format_value(v)}" for k, v in self.params.items())

    def accuracy(self, outputs):
        """The task's accuracy on ``outputs`` ``[..., B, T, d_out]``, or ``None`` when it has none.

        Tasks with ``metric == "sign"`` score sign agreement on the masked
        steps with a non-zero target (:func:`sign_accuracy`); see each task's
        docstring for what that means there.
        """
        if self.metric is None:
            return None
        return sign_accuracy(outputs, self.targets, self.mask)

    def fvu(self, outputs):
        """:func:`fvu` of ``outputs`` against this task's targets and mask."""
        return fvu(outputs, self.targets, self.mask)


def _format_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


# ---------------------------------------------------------------------------------
# task generators
# ---------------------------------------------------------------------------------
def _check(task: str, ok: bool, what: str) -> None:
    if not ok:
        raise InputError(f"task {task}: {what} (--task {task}:key=value,...)")


def copy(*, batch: int, seed: int, length: int = 8, delay: int = 0, width: int = 1) -> TaskData:
    """Copy task: see a sequence of binary symbols, then replay it with zero input.

    A trial shows ``length`` symbols, one per step, each a vector in
    ``{-1, +1}^width`` drawn uniformly (inputs ``u_t = s_t`` for
    ``t < length``); then ``delay`` steps of zero input; then ``length`` steps
    of zero input during which the output must replay the symbols in order
    (``y_{length + delay + k} = s_k``). The replay is autonomous: the only
    thing telling the network when to start is its own dynamics, as in the
    fixed-length copy task of Dräger (2026).

    Parameters (defaults): ``length=8`` symbols, ``delay=0`` steps,
    ``width=1`` channels per symbol. ``d_in = d_out = width``,
    ``T = 2 * length + delay``.

    Mask: 1 on the replay steps only. Metric: sign accuracy over the replayed
    symbol entries (chance 0.5).
    """
    _check("copy", length >= 1, f"length={length} must be >= 1")
    _check("copy", delay >= 0, f"delay={delay} must be >= 0")
    _check("copy", width >= 1, f"width={width} must be >= 1")
    rng = np.random.default_rng(seed)
    T = 2 * length + delay
    symbols = rng.choice(np.array([-1.0, 1.0]), size=(batch, length, width))
    inputs = np.zeros((batch, T, width))
    targets = np.zeros((batch, T, width))
    mask = np.zeros((batch, T))
    inputs[:, :length] = symbols
    targets[:, length + delay:] = symbols
    mask[:, length + delay:] = 1.0
    return TaskData(inputs, targets, mask, "copy", dict(length=length, delay=delay, width=width), "sign", seed)


def flipflop(*, batch: int, seed: int, length: int = 25, bits: int = 3, p: float = 0.1) -> TaskData:
    """Flip-flop (Sussillo & Barak 2013): each output holds the sign of its channel's last pulse.

    On each of ``bits`` input channels, at every step independently, a pulse
    of ±1 (equally likely) arrives with probability ``p``; otherwise the input
    is 0. Output channel k is the sign of the last pulse seen on input
    channel k (including the current step), and 0 before its first pulse.

    Parameters (defaults): ``length=25`` steps, ``bits=3`` channels,
    ``p=0.1`` pulse probability per channel and step.
    ``d_in = d_out = bits``.

    Mask: all steps (the loss and FVU include the 0 targets before a
    channel's first pulse). Metric: sign accuracy over the entries after each
    channel's first pulse (entries with target 0 are not scored).
    """
    _check("flipflop", length >= 1, f"length={length} must be >= 1")
    _check("flipflop", bits >= 1, f"bits={bits} must be >= 1")
    _check("flipflop", 0.0 < p <= 1.0, f"p={p} must be in (0, 1]")
    rng = np.random.default_rng(seed)
    pulse = rng.random((batch, length, bits)) < p
    signs = rng.choice(np.array([-1.0, 1.0]), size=(batch, length, bits))
    inputs = np.where(pulse, signs, 0.0)
    # forward-fill the last pulse: index of the latest pulse at or before t (-1: none yet)
    t = np.arange(length)[None, :, None]
    last = np.maximum.accumulate(np.where(pulse, t, -1), axis=1)
    held = np.take_along_axis(inputs, np.maximum(last, 0), axis=1)
    targets = np.where(last >= 0, held, 0.0)
    mask = np.ones((batch, length))
    return TaskData(inputs, targets, mask, "flipflop", dict(length=length, bits=bits, p=p), "sign", seed)


def sine(
    *, batch: int, seed: int, length: int = 50, n_freq: int = 51,
    omega_min: float = 0.1, omega_max: float = 0.6, offset: float = 0.25,
) -> TaskData:
    """Frequency-cued sine generation (Sussillo & Barak 2013).

    Each trial draws one of ``n_freq`` frequencies
    ``omega_j = omega_min + (omega_max - omega_min) j / (n_freq - 1)``
    (radians per step), ``j`` uniform; a static cue ``u_t = j / n_freq + offset``
    is on for the whole trial, and the output must be ``y_t = sin(omega_j t)``,
    ``t = 0 .. T-1``.

    Parameters (defaults): ``length=50`` steps, ``n_freq=51``,
    ``omega_min=0.1``, ``omega_max=0.6``, ``offset=0.25``.
    ``d_in = d_out = 1``.

    Mask: all steps. Metric: FVU only (:meth:`TaskData.accuracy` returns None).
    """
    _check("sine", length >= 1, f"length={length} must be >= 1")
    _check("sine", n_freq >= 1, f"n_freq={n_freq} must be >= 1")
    _check("sine", 0.0 < omega_min <= omega_max, f"omega_min={omega_min}, omega_max={omega_max} need 0 < omega_min <= omega_max")
    rng = np.random.default_rng(seed)
    j = rng.integers(0, n_freq, size=batch)
    omega = omega_min + (omega_max - omega_min) * j / max(n_freq - 1, 1)
    inputs = np.broadcast_to((j / n_freq + offset)[:, None, None], (batch, length, 1)).copy()
    targets = np.sin(omega[:, None] * np.arange(length)[None, :])[:, :, None]
    mask = np.ones((batch, length))
    params = dict(length=length, n_freq=n_freq, omega_min=omega_min, omega_max=omega_max, offset=offset)
    return TaskData(inputs, targets, mask, "sine", params, None, seed)


def cdi(
    *, batch: int, seed: int, length: int = 48, response: int = 8, coherence: float = 0.2, noise: float = 0.5,
) -> TaskData:
    """Context-dependent integration (Mante, Sussillo et al. 2013).

    Inputs (4 channels): two noisy evidence streams ("motion", "colour")
    ``u_k(t) = c_k + noise * xi_k(t)``, ``c_k ~ Uniform(-coherence, coherence)``,
    ``xi ~ N(0, 1)``, on during the first ``length - response`` steps and 0
    after; and a one-hot context cue on channels 2, 3 (``[1, 0]``: attend to
    motion, ``[0, 1]``: colour), on for the whole trial, context drawn
    uniformly. During the last ``response`` steps the output must be the sign
    of the cued stream's integrated evidence ``sign(sum_t u_cued(t))`` (the
    noisy sum actually shown, so a perfect integrator scores 1).

    Parameters (defaults): ``length=48`` steps, ``response=8`` decision
    steps, ``coherence=0.2``, ``noise=0.5``. ``d_in = 4``, ``d_out = 1``.

    Mask: the ``response`` decision steps only (targets are 0 elsewhere).
    Metric: sign accuracy on the decision steps.
    """
    _check("cdi", 1 <= response < length, f"response={response} must be in [1, length={length})")
    _check("cdi", coherence >= 0.0 and noise >= 0.0, f"coherence={coherence} and noise={noise} must be >= 0")
    rng = np.random.default_rng(seed)
    stim = length - response
    coh = rng.uniform(-coherence, coherence, size=(batch, 2))
    evidence = coh[:, None, :] + noise * rng.standard_normal((batch, stim, 2))
    context = rng.integers(0, 2, size=batch)
    inputs = np.zeros((batch, length, 4))
    inputs[:, :stim, :2] = evidence
    inputs[np.arange(batch), :, 2 + context] = 1.0
    total = evidence.sum(axis=1)[np.arange(batch), context]
    targets = np.zeros((batch, length, 1))
    targets[:, stim:, 0] = np.sign(total)[:, None]
    mask = np.zeros((batch, length))
    mask[:, stim:] = 1.0
    params = dict(length=length, response=response, coherence=coherence, noise=noise)
    return TaskData(inputs, targets, mask, "cdi", params, "sign", seed)


def s1(
    *, batch: int, seed: int, length: int = 50, sigma: float = 0.2, rho: float = 0.8, init: str = "zero",
) -> TaskData:
    """S^1 angular path integration: integrate angular velocity, output (cos, sin) of the phase.

    The angular velocity (radians per step) is a stationary AR(1) process,
    ``omega_0 ~ N(0, sigma^2)``, ``omega_t = rho omega_{t-1} + sqrt(1 - rho^2) sigma xi_t``.
    The phase after step t is ``phi_t = phi_0 + sum_{s <= t} omega_s`` and the
    outputs are ``(cos phi_t, sin phi_t)``.

    ``init="zero"``: every trial starts at ``phi_0 = 0``; one input channel
    (``omega``). ``init="cue"``: ``phi_0 ~ Uniform[0, 2 pi)`` is given as a pulse
    ``(cos phi_0, sin phi_0)`` on two more input channels at ``t = 0`` (3 inputs).

    Parameters (defaults): ``length=50`` steps, ``sigma=0.2``, ``rho=0.8``,
    ``init="zero"``. ``d_out = 2``.

    Mask: all steps. Metric: FVU only (:meth:`TaskData.accuracy` returns None).
    """
    _check("s1", length >= 1, f"length={length} must be >= 1")
    _check("s1", sigma >= 0.0 and -1.0 < rho < 1.0, f"sigma={sigma} must be >= 0 and rho={rho} in (-1, 1)")
    _check("s1", init in ("zero", "cue"), f"init={init!r} must be 'zero' or 'cue'")
    rng = np.random.default_rng(seed)
    xi = rng.standard_normal((batch, length))
    # the AR(1) recursion as a linear filter over time, all trials at once
    drive = np.concatenate([xi[:, :1], np.sqrt(1.0 - rho**2) * xi[:, 1:]], axis=1)
    from scipy.signal import lfilter  # here, not at the top: importing scipy.signal takes 0.7 s

    omega = sigma * lfilter([1.0], [1.0, -rho], drive, axis=1)
    phi0 = rng.uniform(0.0, 2.0 * np.pi, size=batch) if init == "cue" else np.zeros(batch)
    phase = phi0[:, None] + np.cumsum(omega, axis=1)
    targets = np.stack([np.cos(phase), np.sin(phase)], axis=-1)
    if init == "cue":
        inputs = np.zeros((batch, length, 3))
        inputs[:, 0, 1] = np.cos(phi0)
        inputs[:, 0, 2] = np.sin(phi0)
    else:
        inputs = np.zeros((batch, length, 1))
    inputs[:, :, 0] = omega
    mask = np.ones((batch, length))
    return TaskData(inputs, targets, mask, "s1", dict(length=length, sigma=sigma, rho=rho, init=init), None, seed)


def lattice(*, batch: int, seed: int, sites: int = 32, length: int = 10, shift: int = 1, recall: int = 0) -> TaskData:
    """Propagate (``shift != 0``) or remember (``shift = 0``) a pattern on a ring of sites.

    At ``t = 0`` the input is a pattern ``p`` in ``{-1, +1}^sites`` drawn
    uniformly, and 0 afterwards (``d_in = sites``, one channel per site). The
    output at step ``t`` must be the pattern moved ``shift * t`` sites round
    the ring, ``y_t[x] = p[(x - shift * t) mod sites]`` (``d_out = sites``).
    A convolution commutes with the shift, so a convolutional network can
    solve it on any number of sites with one kernel.

    Parameters (defaults): ``sites=32``, ``length=10`` steps, ``shift=1``
    site per step, ``recall=0`` (score the last ``recall`` steps; 0: all).

    Mask: every step (or the last ``recall``). Metric: sign accuracy over
    every site of the scored steps (chance 0.5).
    """
    _check("lattice", sites >= 2, f"sites={sites} must be >= 2")
    _check("lattice", length >= 1, f"length={length} must be >= 1")
    _check("lattice", 0 <= recall <= length, f"recall={recall} must be in [0, length={length}]")
    rng = np.random.default_rng(seed)
    p = rng.choice(np.array([-1.0, 1.0]), size=(batch, sites))
    inputs = np.zeros((batch, length, sites))
    inputs[:, 0] = p
    targets = np.stack([np.roll(p, shift * t, axis=1) for t in range(length)], axis=1)
    mask = np.ones((batch, length))
    if recall:
        mask[:, : length - recall] = 0.0
    return TaskData(inputs, targets, mask, "lattice", dict(sites=sites, length=length, shift=shift, recall=recall),
                    "sign", seed)


TASKS: dict[str, Callable[..., TaskData]] = {
    "copy": copy,
    "flipflop": flipflop,
    "sine": sine,
    "cdi": cdi,
    "s1": s1,
    "lattice": lattice,
}
"""name -> generator ``f(*, batch, seed, **params) -> TaskData``; its keyword defaults are the task's defaults."""


def task_defaults(name: str) -> dict:
    """The default parameters of task ``name`` (from its generator's signature)."""
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; choose one of {', '.join(TASKS)} (--task NAME[:key=value,...])")
    sig = inspect.signature(TASKS[name])
    return {k: p.default for k, p in sig.parameters.items() if k not in ("batch", "seed")}


def _convert(name: str, key: str, text: str, default):
    text = text.strip()
    try:
        if isinstance(default, bool):
            low = text.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return low in ("true", "1", "yes")
        if isinstance(default, int):
            value = float(text)
            if not value.is_integer():
                raise ValueError(text)
            return int(value)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        kind = type(default).__name__
        raise InputError(
            f"task spec: {name}:{key}={text!r} is not a valid {kind} (default {key}={_format_value(default)})"
        ) from None
    return text


def parse_task_spec(spec: str) -> tuple[str, dict]:
    """``"NAME[:key=value,...]"`` -> ``(name, params)`` with every parameter filled in.

    Values are converted to the type of the parameter's default. Raises
    :class:`InputError` naming the unknown task, the unknown key (with the
    valid ones) or the bad value.
    """
    spec = str(spec).strip()
    name, _, rest = spec.partition(":")
    name = name.strip()
    params = task_defaults(name)
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise InputError(f"task spec {spec!r}: {item!r} is not key=value (--task {name}:key=value,...)")
        if key not in params:
            valid = ", ".join(f"{k}={_format_value(v)}" for k, v in params.items())
            raise InputError(f"task spec {spec!r}: task {name!r} has no parameter {key!r}; its parameters (defaults): {valid}")
        params[key] = _convert(name, key, value, task_defaults(name)[key])
    return name, params


def make_task(spec: str, *, batch: int = 256, seed: int = 0) -> TaskData:
    """Draw ``batch`` trials of the task ``spec`` (``"NAME[:key=value,...]"``) with ``seed``.

    Deterministic: the same spec, batch and seed give the same arrays.
    Example: ``make_task("flipflop:length=40,p=0.05", batch=128, seed=1)``.
    """
    if int(batch) < 1:
        raise InputError(f"batch={batch} must be >= 1")
    name, params = parse_task_spec(spec)
    return TASKS[name](batch=int(batch), seed=int(seed), **params)


# ---------------------------------------------------------------------------------
# data files
# ---------------------------------------------------------------------------------
_NPZ_MAGIC = b"PK\x03\x04"
_NPZ_EMPTY = b"PK\x05\x06"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_FIX = "give a .npz or .h5 file with float arrays inputs [B, T, d_in], targets [B, T, d_out] and optional mask [B, T]"


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            out = {}
            for key in ("inputs", "targets", "mask"):
                if key in names:
                    try:
                        out[key] = z[key]
                    except ValueError:
                        raise InputError(
                            f"array {key!r} is an object array, which is never unpickled; {_FIX}", path=path
                        ) from None
            out["_keys"] = names
            return out
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise InputError(f"not a readable .npz file ({e}); {_FIX}", path=path) from None


def _read_h5(path: Path) -> dict[str, np.ndarray]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            out = {"_keys": list(f.keys())}
            for key in ("inputs", "targets", "mask"):
                if key in f:
                    obj = f[key]
                    if not isinstance(obj, h5py.Dataset):
                        raise InputError(f"{key!r} is a group, not a dataset; {_FIX}", path=path)
                    if obj.dtype.kind not in "biuf":
                        raise InputError(f"dataset {key!r} has dtype {obj.dtype}, not numbers; {_FIX}", path=path)
                    out[key] = obj[()]
            return out
    except OSError as e:
        raise InputError(f"not a readable HDF5 file ({e}); {_FIX}", path=path) from None


def _check_array(path: Path, key: str, x: np.ndarray, ndim: int, layout: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise InputError(f"{key!r} has dtype {x.dtype}, not real numbers; {_FIX}", path=path)
    if x.ndim != ndim:
        raise InputError(f"{key!r} has shape {list(x.shape)} but must be {layout} ({ndim}-D); {_FIX}", path=path)
    x = x.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{key!r} has a non-finite value {x[idx]} at index {idx}; clean the data", path=path)
    return x


def load_data(path, *, max_bytes: int = 2 * 1024**3) -> TaskData:
    """Read a data file (``--data``) as a :class:`TaskData` named ``"data"``.

    The file is ``.npz`` (read with ``allow_pickle=False``) or HDF5 (``.h5``,
    ``.hdf5``; recognised by content, not extension) holding
    ``inputs`` [B, T, d_in], ``targets`` [B, T, d_out] and optionally ``mask``
    [B, T] (non-negative weights; all ones when absent). Integer and boolean
    arrays are converted to float64. A data file has no accuracy metric: only
    the FVU applies.

    Raises :class:`InputError` naming the file, the array and its shape when
    the file is unreadable, larger than ``max_bytes``, lacks an array, has
    arrays of the wrong rank or inconsistent batch/time sizes, non-finite
    values, or a negative or all-zero mask.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such data file ({'a directory' if path.is_dir() else 'missing'}); {_FIX}", path=path)
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(f"data file is {size} bytes, over the limit of {max_bytes} (--max-bytes)", path=path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(_NPZ_MAGIC) or head.startswith(_NPZ_EMPTY):
        arrays = _read_npz(path)
    elif head == _HDF5_MAGIC:
        arrays = _read_h5(path)
    else:
        raise InputError(f"not an .npz or HDF5 file (it starts with {head!r}); {_FIX}", path=path)
    found = ", ".join(arrays.pop("_keys")) or "nothing"
    for key in ("inputs", "targets"):
        if key not in arrays:
            raise InputError(f"no array {key!r} (found: {found}); {_FIX}", path=path)
    inputs = _check_array(path, "inputs", arrays["inputs"], 3, "[batch, time, d_in]")
    targets = _check_array(path, "targets", arrays["targets"], 3, "[batch, time, d_out]")
    if inputs.shape[:2] != targets.shape[:2]:
        raise InputError(
            f"inputs {list(inputs.shape)} and targets {list(targets.shape)} differ in [batch, time]; "
            "they must describe the same trials and steps",
            path=path,
        )
    if 0 in inputs.shape[:2]:
        raise InputError(f"inputs {list(inputs.shape)} holds no trials or no steps", path=path)
    if "mask" in arrays:
        mask = _check_array(path, "mask", arrays["mask"], 2, "[batch, time]")
        if mask.shape != inputs.shape[:2]:
            raise InputError(
                f"mask has shape {list(mask.shape)} but inputs {list(inputs.shape)} need [{inputs.shape[0]}, {inputs.shape[1]}]",
                path=path,
            )
        if (mask < 0).any() or not mask.sum() > 0:
            raise InputError("mask must be non-negative weights with at least one positive entry", path=path)
    else:
        mask = np.ones(inputs.shape[:2])
    return TaskData(inputs, targets, mask, "data", {"path": str(path)}, None, None)


def save_data(task: TaskData, path) -> Path:
    """Write ``task``'s inputs, targets and mask to ``path`` (``.npz``, or ``.h5`` / ``.hdf5``).

    The file reads back with :func:`load_data`. Returns the path.
    """
    path = Path(path)
    arrays = {"inputs": task.inputs, "targets": task.targets, "mask": task.mask}
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                f.create_dataset(k, data=np.asarray(v, dtype=np.float64), compression="gzip")
            f.attrs["task"] = task.spec
    elif path.suffix == ".npz":
        np.savez_compressed(path, **arrays)
    else:
        raise InputError(f"data files are .npz, .h5 or .hdf5; got {path.suffix!r}", path=path)
    return path


def check_fits(task: TaskData, n_inputs: int, n_outputs: int, *, source: str) -> None:
    """Refuse a task or data file whose widths do not fit the model.

    ``n_inputs`` / ``n_outputs`` are the model's (``cell.n_inputs``,
    ``cell.n_outputs``); ``source`` names the model (its checkpoint path).
    Raises :class:`InputError` naming both shapes and what to do.
    """
    what = f"data file {task.params.get('path')}" if task.name == "data" else f"task '{task.name}'"
    if task.n_inputs != n_inputs:
        raise InputError(
            f"{what} has {task.n_inputs} inputs (inputs shape {list(task.inputs.shape)}) but the model "
            f"({source}) takes {n_inputs}; give a --task or --data whose inputs are [batch, time, {n_inputs}]"
        )
    if n_outputs == 0:
        raise InputError(
            f"the model ({source}) has no readout, so its outputs cannot be compared with {what}'s targets "
            f"(shape {list(task.targets.shape)}); name the readout with --readout KEY or --key W_r=..."
        )
    if task.n_outputs != n_outputs:
        raise InputError(
            f"{what} has {task.n_outputs} outputs (targets shape {list(task.targets.shape)}) but the model "
            f"({source}) gives {n_outputs}; give a --task or --data whose targets are [batch, time, {n_outputs}]"
        )
