"""Sample checkpoints: small networks trained on rnnprobe's tasks, and the registry that builds them.

``python -m rnnprobe.samples --out sample_checkpoints [--only NAME ...]``
imports every module of this package and produces the samples it declares.
A module declares samples by defining a list ``SAMPLES`` of objects with

    name: str                       file stem; names are unique across the package
    description: str                one line
    filename: str                   the checkpoint's file name, e.g. ``copy_rnn64.pt``
    produce(out: Path, *, log) -> dict
                                    write ``out / filename`` and its JSON sidecar
                                    ``out / (filename + ".json")``; return the sidecar

:class:`TrainedSample` is such an object for networks trained here with one
deterministic loop (Adam, warm-up then cosine learning rate, gradient
clipping, a fresh seeded batch of trials every step, float32), evaluated in
float64 on a held-out seed. New modules (``s1.py``, ``oscillators.py``, ...)
add their own ``SAMPLES`` and need no change here.

The networks are plain torch modules whose state dicts follow the
conventions rnnprobe's loader reads: :class:`RecurrentNet` (``rnn.*`` from
``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM``, ``readout.*`` from ``nn.Linear``) and
:class:`CTRNN` (``input2h``, ``h2h``, ``fc``: the neurogym / Yang-lab
convention).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import pkgutil
import platform
import time
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from rnnprobe._version import __version__
from rnnprobe.errors import InputError
from rnnprobe.report.writer import atomic_path
from rnnprobe.tasks import TaskData, make_task

__all__ = [
    "Sample",
    "TrainedSample",
    "RecurrentNet",
    "CTRNN",
    "discover",
    "produce",
    "write_readme",
    "train_seed",
    "evaluate",
    "cell_figures",
    "write_json",
]


class Sample(Protocol):
    """What a module's ``SAMPLES`` list holds (see the module docstring)."""

    name: str
    description: str

    @property
    def filename(self) -> str: ...

    def produce(self, out: Path, *, log: Callable[[str], None] = print) -> dict: ...


# ---------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------
_TORCH_RNNS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class RecurrentNet(nn.Module):
    """A one-layer ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` (``rnn``) with a linear readout (``readout``).

    ``forward(inputs [B, T, d_in]) -> outputs [B, T, d_out]`` from the zero
    state; outputs read the state after each step, as rnnprobe's cells do.
    ``orthogonal=True`` draws ``weight_hh`` from ``nn.init.orthogonal_``
    (per gate block for GRU / LSTM); everything else keeps torch's default
    initialisation.
    """

    def __init__(self, kind: str, n_inputs: int, n_hidden: int, n_outputs: int, *,
                 nonlinearity: str = "tanh", orthogonal: bool = True):
        super().__init__()
        self.kind = kind
        extra = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
        self.rnn = _TORCH_RNNS[kind](n_inputs, n_hidden, batch_first=True, **extra)
        self.readout = nn.Linear(n_hidden, n_outputs)
        self.nonlinearity = nonlinearity if kind == "rnn" else None
        self.orthogonal = orthogonal
        if orthogonal:
            with torch.no_grad():
                for block in self.rnn.weight_hh_l0.split(n_hidden, dim=0):
                    nn.init.orthogonal_(block)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        states, _ = self.rnn(inputs)
        return self.readout(states)

    def sidecar(self) -> dict:
        """What the state dict does not say (for the JSON sidecar)."""
        out = {
            "architecture": f"torch.nn.{type(self.rnn).__name__} + torch.nn.Linear readout",
            "n_hidden": self.rnn.hidden_size,
            "n_inputs": self.rnn.input_size,
            "n_outputs": self.readout.out_features,
            "init": "orthogonal weight_hh" if self.orthogonal else "torch default",
        }
        if self.nonlinearity is not None:
            out["nonlinearity"] = self.nonlinearity
        return out


class CTRNN(nn.Module):
    """A leaky continuous-time RNN in the neurogym / Yang-lab layout.

    ``h <- (1 - alpha) h + alpha phi(input2h(u) + h2h(h))``, ``y = fc(h)``,
    from ``h = 0``; ``alpha = dt / tau``. The state dict has ``input2h.*``,
    ``h2h.*`` and ``fc.*`` (``nn.Linear`` each), so the canonical model is
    ``W_hh = h2h.weight``, ``W_uh = input2h.weight``,
    ``b = input2h.bias + h2h.bias``, ``W_r = fc.weight``.
    """

    def __init__(self, n_inputs: int, n_hidden: int, n_outputs: int, *,
                 alpha: float = 0.2, nonlinearity: str = "relu"):
        super().__init__()
        if not 0.0 < alpha <= 1.0:
            raise InputError(f"CTRNN alpha={alpha} must be in (0, 1]")
        self.input2h = nn.Linear(n_inputs, n_hidden)
        self.h2h = nn.Linear(n_hidden, n_hidden)
        self.fc = nn.Linear(n_hidden, n_outputs)
        self.alpha = float(alpha)
        self.nonlinearity = nonlinearity
        self.phi = {"relu": torch.relu, "tanh": torch.tanh}[nonlinearity]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        drive = self.input2h(inputs)
        h = torch.zeros(inputs.shape[0], self.h2h.in_features, dtype=inputs.dtype, device=inputs.device)
        states = []
        for t in range(inputs.shape[1]):
            h = (1.0 - self.alpha) * h + self.alpha * self.phi(drive[:, t] + self.h2h(h))
            states.append(h)
        return self.fc(torch.stack(states, dim=1))

    def sidecar(self) -> dict:
        return {
            "architecture": "leaky CTRNN (neurogym / Yang-lab layout: input2h, h2h, fc)",
            "n_hidden": self.h2h.in_features,
            "n_inputs": self.input2h.in_features,
            "n_outputs": self.fc.out_features,
            "nonlinearity": self.nonlinearity,
            "alpha": self.alpha,
            "form": "leaky",
            "init": "torch default (nn.Linear)",
        }


# ---------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------
def train_seed(seed: int, step: int) -> int:
    """The task seed of training step ``step``: distinct per step and sample seed, all >= 10^6.

    Evaluation seeds below 10^6 are therefore never seen in training.
    """
    return 1_000_000 * (seed + 1) + step


def _tensors(task: TaskData, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.as_tensor(task.inputs, dtype=dtype), torch.as_tensor(task.targets, dtype=dtype),
            torch.as_tensor(task.mask, dtype=dtype))


def masked_mse(outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per output entry over the masked steps (mask as weights)."""
    return ((outputs - targets) ** 2 * mask[..., None]).sum() / (mask.sum() * targets.shape[-1])


def evaluate(net: nn.Module, task: TaskData) -> dict:
    """``net``'s accuracy and FVU on ``task``, computed with a float64 copy of ``net``."""
    net64 = copy.deepcopy(net).to(torch.float64).eval()
    with torch.no_grad():
        outputs = net64(torch.as_tensor(task.inputs, dtype=torch.float64)).numpy()
    return {"accuracy": task.accuracy(outputs), "fvu": task.fvu(outputs)}


def cell_figures(cell, task: TaskData) -> dict:
    """Accuracy and FVU of rnnprobe ``cell`` rolled out on ``task`` from its initial state (in the cell's dtype)."""
    with torch.no_grad():
        y = cell.readout(cell.rollout(cell.initial_state(task.batch), torch.as_tensor(task.inputs))).numpy()
    return {"accuracy": task.accuracy(y), "fvu": task.fvu(y)}


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` as indented JSON, under a temporary name renamed when complete."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


@dataclasses.dataclass(frozen=True)
class TrainedSample:
    """A sample network trained here on a task.

    Attributes:
        name: file stem (``copy_rnn64`` -> ``copy_rnn64.pt`` + ``copy_rnn64.pt.json``).
        task: task specification for :func:`rnnprobe.tasks.make_task`.
        network: ``(n_inputs, n_outputs) -> nn.Module`` with a ``sidecar()``
            method; called right after ``torch.manual_seed(seed)``.
        description: one line for the sidecar and the README table.
        steps, batch, lr: Adam steps, trials per step, peak learning rate
            (linear warm-up over the first 5 % of steps, cosine decay to 0).
        clip: gradient-norm clipping threshold.
        seed: torch seed of the initialisation; training batches use
            :func:`train_seed`.
        eval_seed, eval_batch: the held-out trials the sidecar's figures are
            measured on (``make_task(task, batch=eval_batch, seed=eval_seed)``).

    :meth:`produce` trains, then calls :meth:`write_checkpoint`,
    :meth:`figures` and :meth:`settings`; a subclass that saves in another
    format or measures its figures another way overrides those.
    """

    name: str
    task: str
    network: Callable[[int, int], nn.Module]
    description: str
    steps: int = 3000
    batch: int = 128
    lr: float = 3e-3
    clip: float = 1.0
    seed: int = 0
    eval_seed: int = 12345
    eval_batch: int = 512

    @property
    def filename(self) -> str:
        return f"{self.name}.pt"

    def eval_task(self) -> TaskData:
        return make_task(self.task, batch=self.eval_batch, seed=self.eval_seed)

    def train(self, *, log: Callable[[str], None] = print) -> tuple[nn.Module, dict]:
        """Train in float32 on CPU; returns the network and the training record."""
        probe = make_task(self.task, batch=1, seed=0)
        torch.manual_seed(self.seed)
        net = self.network(probe.n_inputs, probe.n_outputs).to(torch.float32)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        warm = max(1, self.steps // 20)

        def schedule(i: int) -> float:
            return min(1.0, (i + 1) / warm) * 0.5 * (1.0 + math.cos(math.pi * i / self.steps))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        start = time.perf_counter()
        losses = []
        for i in range(self.steps):
            x, y, w = _tensors(make_task(self.task, batch=self.batch, seed=train_seed(self.seed, i)), torch.float32)
            loss = masked_mse(net(x), y, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), self.clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
            if (i + 1) % max(1, self.steps // 5) == 0:
                log(f"  {self.name}: step {i + 1}/{self.steps}, loss {np.mean(losses[-50:]):.3g}")
        record = {
            "train_seconds": round(time.perf_counter() - start, 1),
            "final_loss": float(np.mean(losses[-50:])),
        }
        return net, record

    def write_checkpoint(self, net: nn.Module, meta: dict, path: Path) -> None:
        """Write the trained ``net`` to ``path``: its state dict, as trained (float32)."""
        state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def figures(self, net: nn.Module, meta: dict, path: Path) -> dict:
        """The sidecar's figures on the held-out trials (accuracy, FVU), measured in float64."""
        return evaluate(net, self.eval_task())

    def settings(self) -> dict:
        """The training settings the sidecar states."""
        return {"seed": self.seed, "steps": self.steps, "batch": self.batch, "lr": self.lr, "clip": self.clip}

    def produce(self, out: Path, *, log: Callable[[str], None] = print) -> dict:
        """Train, evaluate, and write ``out/<filename>`` and its sidecar; returns the sidecar."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        net, record = self.train(log=log)
        meta = net.sidecar()
        path = out / self.filename
        self.write_checkpoint(net, meta, path)
        scores = self.figures(net, meta, path)
        sidecar = {
            "task": make_task(self.task, batch=1, seed=0).spec,
            **meta,
            "description": self.description,
            **scores,
            "eval_seed": self.eval_seed,
            "eval_batch": self.eval_batch,
            "eval_dtype": "float64",
            **self.settings(),
            "train_seconds": record["train_seconds"],
            "final_loss": record["final_loss"],
            "trained_dtype": "float32",
            "torch_version": torch.__version__,
            "rnnprobe_version": __version__,
            "machine": platform.machine(),
        }
        write_json(out / f"{self.filename}.json", sidecar)
        acc = "" if scores["accuracy"] is None else f"accuracy {scores['accuracy']:.4f}, "
        log(f"{self.filename}: {acc}FVU {scores['fvu']:.3g} on eval seed {self.eval_seed} "
            f"({record['train_seconds']} s)")
        return sidecar


# ---------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------
def discover() -> dict[str, Sample]:
    """Every sample declared in a module of this package (``SAMPLES`` lists), by name.

    Raises :class:`InputError` when two modules declare the same name.
    """
    found: dict[str, Sample] = {}
    where: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for sample in getattr(module, "SAMPLES", ()):
            if sample.name in found:
                raise InputError(
                    f"sample {sample.name!r} is declared in both {where[sample.name]} and {module.__name__}; "
                    "rename one"
                )
            found[sample.name] = sample
            where[sample.name] = module.__name__
    return found


def produce(out: Path, only: list[str] | None = None, *, log: Callable[[str], None] = print) -> list[dict]:
    """Produce the samples named in ``only`` (all when ``None``) into ``out``; returns their sidecars."""
    samples = discover()
    names = list(samples) if not only else list(dict.fromkeys(only))
    unknown = [n for n in names if n not in samples]
    if unknown:
        raise InputError(f"unknown sample(s) {', '.join(unknown)}; known: {', '.join(samples)} (--only NAME)")
    return [samples[n].produce(Path(out), log=log) for n in names]


def write_readme(out: Path) -> Path:
    """(Re)write ``out/README.md``: a table of every sidecar found in ``out``."""
    out = Path(out)
    rows = []
    for side in sorted(out.glob("*.json")):
        meta = json.loads(side.read_text())
        if "task" not in meta:
            continue
        acc = meta.get("accuracy")
        fvu_ = meta.get("fvu")
        alpha = meta.get("alpha", 1.0 if "nonlinearity" in meta else None)
        rows.append(
            f"| `{side.name[:-5]}` | {meta.get('architecture', '')} | {meta.get('n_hidden', '')} "
            f"| {meta.get('nonlinearity', '-')} | {'-' if alpha is None else f'{alpha:g}'} | `{meta['task']}` "
            f"| {'-' if acc is None else f'{acc:.4f}'} | {'-' if fvu_ is None else f'{fvu_:.2e}'} "
            f"| {meta.get('steps', '')} | {meta.get('train_seconds', '')} | {meta.get('description', '')} |"
        )
    text = README_HEAD + "\n".join(rows) + "\n" + README_TAIL
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(text)
    return out / "README.md"


README_HEAD = """# Sample checkpoints

Small networks trained on rnnprobe's tasks (`rnnprobe/tasks.py`) by
`python -m rnnprobe.samples --out sample_checkpoints` (one sample:
`--only NAME`), deterministic for a given machine and torch version
(fixed seeds, one thread). Each `NAME.pt` is a plain state dict
(`torch.save`), loadable with `weights_only=True`; `NAME.pt.json` next to it
is its sidecar: the task specification, what the state dict does not say
(nonlinearity, alpha), the accuracy and FVU reached, and how it was trained.

Accuracy and FVU are measured in float64 on held-out trials,
`make_task(task, batch=eval_batch, seed=eval_seed)` (`eval_seed` 12345,
`eval_batch` 512; training batches use seeds >= 10^6), starting from the zero
state. Accuracy is the task's sign accuracy (`-` for tasks without one).
Training is float32 on CPU; the time is wall-clock seconds on a shared 2-core
machine with one torch thread.

| file | network | N | phi | alpha | task | accuracy | FVU | steps | train s | description |
|---|---|---|---|---|---|---|---|---|---|---|
"""

README_TAIL = """
`tests/test_samples.py` loads every sample with rnnprobe's own cells, rolls
it out in float64 on the stated eval seed and batch, and checks these figures
reproduce.
"""
