"""Zoo tasks: one checkpoint x one analysis, with everything a worker needs and nothing it must look up.

A :class:`ZooTask` carries the analysis spec and its options objects
themselves (pickled by reference to their modules), so worker processes and
dask workers run exactly what the calling process validated.

Options pass-through (:func:`analysis_options`): ``--options FILE`` (JSON or
TOML, ``{"lyapunov": {"k": 16}}``) and ``--set lyapunov.k=16`` (repeatable,
wins over the file). Names are the option's field name or its flag without
dashes (``lyapunov.n_steps`` or ``lyapunov.n-steps``).

Reports of checkpoint ``.../net.pt`` go to ``OUT/net-<h>.<analysis>.*`` with
``<h>`` the first 12 hex digits of the SHA-256 of the file's real absolute
path: two folders holding ``net.pt`` never collide, the name does not depend on
the working directory or on which other checkpoints are in the run, and every
shard and every rerun finds the same report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from rnnprobe._version import __version__
from rnnprobe.analyses.base import AnalysisSpec, options_dict, options_from_mapping
from rnnprobe.errors import InputError
from rnnprobe.report.hdf5 import jsonable
from rnnprobe.report.writer import report_stem

__all__ = ["ZooTask", "plan", "parse_shard", "in_shard", "parse_set", "read_options_file", "analysis_options",
           "report_name", "static_key"]

# LoadOptions fields that decide whether a file loads, not what is loaded: not part of the key
_LOAD_LIMITS = ("max_bytes", "max_hidden", "dtype", "device")


@dataclasses.dataclass(frozen=True)
class ZooTask:
    """One checkpoint x one analysis.

    Attributes:
        index: position in the full, sorted task list (checkpoint-major).
        checkpoint: absolute path of the checkpoint.
        spec: the analysis.
        options: its Options object.
        settings: RunSettings with ``out_dir`` (absolute) and the report ``stem``.
        load_options: LoadOptions for the checkpoint.
        static_key: the key inputs known before the checkpoint is read (see :func:`static_key`).
        force: redo the task even when a report with the same key exists.
    """

    index: int
    checkpoint: str
    spec: AnalysisSpec
    options: Any
    settings: Any
    load_options: Any
    static_key: Mapping[str, Any]
    force: bool = False

    @property
    def analysis(self) -> str:
        return self.spec.name


def report_name(checkpoint: str | Path) -> str:
    """``.../net.pt`` -> ``net-<12 hex digits of sha256(real path)>``: unique per file, stable across runs."""
    p = Path(checkpoint)
    try:
        real = p.resolve()
    except OSError:
        real = Path(os.path.abspath(p))
    h = hashlib.sha256(str(real).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{report_stem(p)}-{h}"


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"2/3"`` -> ``(2, 3)``; ``None`` -> ``(1, 1)``."""
    if text is None:
        return 1, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not (1 <= int(m.group(1)) <= int(m.group(2))):
        raise InputError(f"--shard {text!r} must be i/n with 1 <= i <= n, e.g. --shard 2/4 "
                         "(Slurm: --shard $((SLURM_ARRAY_TASK_ID+1))/$SLURM_ARRAY_TASK_COUNT)")
    return int(m.group(1)), int(m.group(2))


def in_shard(checkpoint_index: int, shard: tuple[int, int]) -> bool:
    """Checkpoint ``k`` (0-based, in the sorted list) belongs to shard ``(k mod n) + 1`` of ``n``."""
    i, n = shard
    return checkpoint_index % n == i - 1


def parse_set(items: Iterable[str]) -> dict[str, dict[str, str]]:
    """``["lyapunov.k=16", ...]`` -> ``{"lyapunov": {"k": "16"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        m = re.fullmatch(r"\s*([A-Za-z_]\w*)\.([A-Za-z_][\w-]*)\s*=(.*)", item)
        if not m:
            raise InputError(f"--set {item!r} must be ANALYSIS.OPTION=VALUE, e.g. --set lyapunov.k=16")
        out.setdefault(m.group(1), {})[m.group(2)] = m.group(3).strip()
    return out


def _load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise InputError(f"--options {path}: reading TOML needs Python 3.11 or `pip install tomli`; "
                             "or write the file as JSON") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"--options {path}: not valid TOML ({e})") from None


def read_options_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """An options file (``.json`` or ``.toml``): ``{analysis: {option: value}}``."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".toml":
            data = _load_toml(path)
        else:
            data = json.loads(path.read_text())
    except OSError as e:
        raise InputError(f"--options {path}: cannot read it ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"--options {path}: not valid JSON ({e}); write {{\"lyapunov\": {{\"k\": 16}}}} "
                         "or use a .toml file") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise InputError(f"--options {path}: must map analysis names to tables of options, e.g. "
                         "{\"lyapunov\": {\"k\": 16}}")
    out: dict[str, dict[str, Any]] = {}
    for name, values in data.items():
        out[name] = {}
        for k, v in values.items():
            if isinstance(v, list):  # sequence options are comma-separated strings
                v = ",".join(map(str, v))
            elif isinstance(v, dict):
                raise InputError(f"--options {path}: {name}.{k} is a table; options are numbers, strings, "
                                 "booleans or lists")
            out[name][k] = v
    return out


def analysis_options(specs: Mapping[str, AnalysisSpec], selected: Iterable[str], *,
                     file_values: Mapping[str, Mapping[str, Any]] | None = None,
                     set_values: Mapping[str, Mapping[str, Any]] | None = None,
                     options_file: str | None = None) -> dict[str, Any]:
    """The Options object of every selected analysis, from the options file and ``--set`` (which wins).

    Raises InputError for an unknown analysis or option, a bad value, or a
    ``--set`` on an analysis that is not selected. A file may hold sections
    for registered analyses that this run does not select.
    """
    selected = list(selected)
    where_file = f"--options {options_file}" if options_file else "--options"
    for name in file_values or {}:
        if name not in specs:
            raise InputError(f"{where_file}: unknown analysis {name!r}; registered: {', '.join(specs)}")
    for name, values in (set_values or {}).items():
        if name not in selected:
            item = f"{name}.{next(iter(values))}"
            if name not in specs:
                raise InputError(f"--set {item}: unknown analysis {name!r}; registered: {', '.join(specs)}")
            raise InputError(f"--set {item}: {name} is not among --analyses {','.join(selected)}; add it or drop "
                             "the --set")
    out = {}
    for name in selected:
        merged: dict[str, Any] = {}
        for source in (file_values or {}, set_values or {}):
            for k, v in (source.get(name) or {}).items():
                merged[k.lstrip("-").replace("-", "_")] = v
        where = f"--set/--options for {name}"
        out[name] = options_from_mapping(specs[name].options, merged, where=where)
    return out


def static_key(spec: AnalysisSpec, options, settings, load_options, data_sha256: str | None) -> dict[str, Any]:
    """What the task key covers besides the checkpoint's (and its sidecar's) bytes.

    The analysis and its full options, the loading options that change what is
    loaded (not the size limits), the run settings that change the report
    (seed, dtype, device, task, data file contents, plots) and rnnprobe's version.
    """
    load = {f.name: getattr(load_options, f.name) for f in dataclasses.fields(load_options)
            if f.name not in _LOAD_LIMITS}
    return jsonable({
        "analysis": spec.name,
        "options": options_dict(options),
        "load": {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in load.items()},
        "run": {"seed": settings.seed, "dtype": settings.dtype, "device": settings.device, "task": settings.task,
                "data_sha256": data_sha256, "plots": settings.plots},
        "rnnprobe_version": __version__,
    })


def plan(checkpoints: list[Path], specs: list[AnalysisSpec], options: Mapping[str, Any], settings, load_options, *,
         shard: tuple[int, int] = (1, 1), force: bool = False, data_sha256: str | None = None) -> list[ZooTask]:
    """The tasks of this run: every checkpoint of the shard x every analysis, checkpoint-major.

    ``index`` counts over the whole (unsharded) list, so the tasks of all
    shards together are exactly the tasks of an unsharded run.
    """
    out_dir = Path(os.path.abspath(settings.out_dir))
    keys = {s.name: static_key(s, options[s.name], settings, load_options, data_sha256) for s in specs}
    tasks = []
    for k, ckpt in enumerate(checkpoints):
        if not in_shard(k, shard):
            continue
        stem = report_name(ckpt)
        for j, spec in enumerate(specs):
            tasks.append(ZooTask(
                index=k * len(specs) + j, checkpoint=str(ckpt), spec=spec, options=options[spec.name],
                settings=dataclasses.replace(settings, out_dir=out_dir, stem=stem), load_options=load_options,
                static_key=keys[spec.name], force=force,
            ))
    return tasks
