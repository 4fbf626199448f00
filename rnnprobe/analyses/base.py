"""What every analysis is made of: Options in, a Result out, no I/O in between.

An analysis module (``rnnprobe/analyses/<name>.py``) defines

* ``<Name>Options``: a frozen dataclass whose fields are declared with
  :func:`option` (help text, bounds, choices). The command line, the model-zoo
  runner and the report's attributes are all derived from it, so an option is
  declared once.
* ``<Name>Result``: a dataclass deriving from :class:`Result`; its arrays,
  scalars, nested dicts and tables become the report's ``/<name>`` group, and
  its ``summary()`` the JSON summary.
* ``run(model, options, ctx) -> Result``: the analysis itself.
* ``ANALYSIS = AnalysisSpec(...)``: registers it (``rnnprobe.analyses.registry``
  discovers every module that defines one).

A plot function ``plot(result, model) -> {name: Figure}`` lives in
``rnnprobe/plots/<name>.py`` and is named in the spec.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
import torch

from rnnprobe.errors import InputError

__all__ = [
    "option",
    "Options",
    "validate",
    "check_range",
    "check_choice",
    "Result",
    "AnalysisSpec",
    "RunContext",
    "Progress",
    "options_dict",
    "options_from_mapping",
]


def option(default: Any, *, help: str, flag: str | None = None, min: float | None = None,
           max: float | None = None, min_open: bool = False, choices: tuple[str, ...] | None = None,
           metavar: str | None = None, report: bool = True) -> Any:
    """Declare an analysis option (a dataclass field with its CLI metadata).

    ``min``/``max`` bound numbers (``min_open`` makes the lower bound strict);
    ``choices`` restricts strings. Bounds are checked by :func:`validate`
    when the options object is built, wherever it is built from.
    """
    meta = {"help": help, "flag": flag, "min": min, "max": max, "min_open": min_open,
            "choices": choices, "metavar": metavar, "report": report}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def check_range(name: str, value, lo=None, hi=None, *, lo_open: bool = False) -> None:
    """Raise InputError "--name=value must be ..." when ``value`` is out of bounds."""
    if value is None:
        return
    if isinstance(value, float) and math.isnan(value):
        raise InputError(f"{name}={value} is not a number")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        rel = ">" if lo_open else ">="
        raise InputError(f"{name}={value} must be {rel} {lo}")
    if hi is not None and value > hi:
        raise InputError(f"{name}={value} must be <= {hi}")


def check_choice(name: str, value, choices) -> None:
    if value is not None and value not in choices:
        raise InputError(f"{name}={value!r} must be one of {', '.join(map(str, choices))}")


def validate(options) -> None:
    """Check every field of an Options dataclass against its declared bounds."""
    for f in dataclasses.fields(options):
        v = getattr(options, f.name)
        m = f.metadata
        if m.get("choices") is not None:
            check_choice(_flag(f), v, m["choices"])
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            check_range(_flag(f), v, m.get("min"), m.get("max"), lo_open=m.get("min_open", False))


def options_dict(options) -> dict:
    """The options as plain values (for report attributes and the zoo's task key)."""
    out = {}
    for f in dataclasses.fields(options):
        if not f.metadata.get("report", True):
            continue
        v = getattr(options, f.name)
        if isinstance(v, (tuple, list)):
            v = list(v)
        out[f.name] = v
    return out


def _coerce(value, tp):
    """Convert a string (from an options file or the zoo's pass-through) to ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0])
    if not isinstance(value, str):
        if tp is float and isinstance(value, int):
            return float(value)
        return value
    if tp is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    if tp in (int, float, str):
        return tp(value)
    return value


def options_from_mapping(options_type: type, values: Mapping[str, Any], *, where: str = "options") -> Any:
    """Build ``options_type`` from a mapping of field names (or flag names) to values."""
    hints = typing.get_type_hints(options_type)
    fields = {f.name: f for f in dataclasses.fields(options_type)}
    kw = {}
    for key, value in values.items():
        name = key.lstrip("-").replace("-", "_")
        if name not in fields:
            raise InputError(
                f"{where}: unknown option {key!r}; known: {', '.join(sorted(fields))}"
            )
        try:
            kw[name] = _coerce(value, hints[name])
        except (TypeError, ValueError) as e:
            raise InputError(f"{where}: option {key}={value!r}: {e}") from e
    return options_type(**kw)


class Options:
    """Base of every Options dataclass: bounds and choices checked on construction.

    Subclasses are ``@dataclasses.dataclass(frozen=True, kw_only=True)`` with
    fields declared by :func:`option`; cross-field rules go in ``check()``.
    """

    def __post_init__(self) -> None:
        validate(self)
        self.check()

    def check(self) -> None:
        """Cross-field validation; raise InputError naming the options."""


class Result:
    """Base of every analysis result (a dataclass).

    The report writer turns fields into the HDF5 group: arrays become
    datasets, scalars attributes, dicts and dataclasses subgroups, lists of
    dicts tables. Fields with ``metadata={"report": False}`` are not written.
    ``summary()`` returns the JSON summary (plain JSON types).
    """

    analysis: ClassVar[str] = ""

    def summary(self) -> dict:  # pragma: no cover - every result overrides it
        raise TypeError(f"{type(self).__name__} must define summary()")


class Progress:
    """Progress reporting an analysis may use; the default does nothing."""

    def start(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def stop(self) -> None:
        pass


@dataclasses.dataclass
class RunContext:
    """What an analysis gets besides the model and its options.

    Attributes:
        device, dtype: where and in which precision to compute.
        seed: the run's seed; use :meth:`generator` / :meth:`rng`.
        task_source: ``task_source(batch)`` returns the task data (see
            :meth:`task`), or ``None`` when no task is known.
        progress: a :class:`Progress`.
        warnings: messages collected with :meth:`warn`; they reach stderr
            and the JSON summary's ``warnings``.
    """

    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float64
    seed: int = 0
    task_source: Callable[[int], Any] | None = None
    task_hint: str = "give --task NAME or --data FILE"
    progress: Progress = dataclasses.field(default_factory=Progress)
    warnings: list[str] = dataclasses.field(default_factory=list)
    on_warning: Callable[[str], None] | None = None
    _task_cache: dict = dataclasses.field(default_factory=dict, repr=False)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A torch generator seeded from the run's seed (on the run's device)."""
        g = torch.Generator(device=self.device)
        g.manual_seed(self.seed + offset)
        return g

    def rng(self, offset: int = 0) -> np.random.Generator:
        return np.random.default_rng(self.seed + offset)

    @property
    def has_task(self) -> bool:
        return self.task_source is not None

    def task(self, batch: int = 256, why: str = "this analysis needs task data"):
        """The task data (a TaskData of ``batch`` trials for generated tasks; a
        data file as it is), or InputError saying how to give one."""
        if self.task_source is None:
            raise InputError(f"{why}; the checkpoint's sidecar names no task: {self.task_hint}")
        if batch not in self._task_cache:
            self._task_cache[batch] = self.task_source(batch)
        return self._task_cache[batch]

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        if self.on_warning is not None:
            self.on_warning(message)

    def tensor(self, x) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=self.dtype, device=self.device)


@dataclasses.dataclass(frozen=True)
class AnalysisSpec:
    """An analysis as the CLI, the zoo and the report writer see it.

    Attributes:
        name: the command and report group name (``schur``).
        help: one line for ``rnnprobe --help``.
        description: the command's longer help (markdown-ish text).
        example: a worked example shown at the end of ``--help``.
        options: the Options dataclass.
        run: ``run(model, options, ctx) -> Result``.
        plot: ``plot(result, model) -> {name: Figure}``, or ``"module:function"`` naming
            it (imported only when plots are drawn, so matplotlib stays out of
            runs that make none), or None.
        gate: ``gate(result, options) -> [failure messages]`` for exit 1, or None.
        uses_task: whether ``--task/--data`` mean anything to it (shown in help).
        render: ``render(summary) -> rich renderable`` for the terminal, or None
            for the default key/value table.
    """

    name: str
    help: str
    options: type
    run: Callable
    example: str
    description: str = ""
    plot: Callable | str | None = None
    gate: Callable | None = None
    uses_task: bool = True
    render: Callable | None = None

    def plot_function(self) -> Callable | None:
        """The plot function, imported if the spec names it."""
        if self.plot is None or callable(self.plot):
            return self.plot
        import importlib

        module, _, name = self.plot.partition(":")
        return getattr(importlib.import_module(module), name)
