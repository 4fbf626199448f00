"""One analysis of one checkpoint, start to finish, for the CLI and the zoo alike.

    settings + LoadOptions -> load_checkpoint -> Model
    -> spec.run(model, options, ctx) -> Result
    -> plots, HDF5 report, JSON summary -> Outcome (with gate failures)

Nothing here prints: the caller decides what reaches the terminal.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import torch

from rnnprobe._version import __version__
from rnnprobe.analyses.base import AnalysisSpec, Progress, Result, RunContext, options_dict
from rnnprobe.errors import AnalysisError, InputError, RnnprobeError
from rnnprobe.model import Model
from rnnprobe.report.hdf5 import jsonable
from rnnprobe.report.writer import SCHEMA_VERSION, Provenance, ReportPaths, report_stem, write_report

__all__ = ["RunSettings", "Outcome", "analyze", "resolve_device", "resolve_dtype", "task_source"]

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How to run, independent of which analysis.

    Attributes:
        out_dir: where reports go (``--out``).
        seed: seeds every random choice of the analysis (``--seed``).
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto`` (``--device``).
        dtype: ``float64`` (default) or ``float32`` (``--dtype``).
        task: a task spec overriding the sidecar's (``--task``).
        data: a data file overriding both (``--data``).
        plots: write plots (``--no-plots`` turns them off).
        argv: the command line, recorded in the report.
        stem: the report file stem; defaults to the checkpoint's name.
    """

    out_dir: Path = Path("rnnprobe-reports")
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float64"
    task: str | None = None
    data: Path | None = None
    plots: bool = True
    argv: str = ""
    stem: str | None = None


@dataclasses.dataclass
class Outcome:
    summary: dict
    paths: ReportPaths
    result: Result
    model: Model
    gate_failures: list[str]
    warnings: list[str]
    seconds: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return dev


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise InputError(f"--dtype {name!r} must be one of {', '.join(DTYPES)}")
    return DTYPES[name]


def task_source(model: Model, settings: RunSettings) -> tuple[Callable[[int], Any] | None, str]:
    """The task data provider for ``model``: ``--data``, else ``--task``, else the sidecar's task.

    Returns ``(source, description)``; ``source`` is ``None`` when no task is known.
    """
    from rnnprobe import tasks

    cell = model.cell
    where = str(model.source or "model")
    if settings.data is not None:
        path = Path(settings.data)

        def from_file(batch: int):
            data = tasks.load_data(path)
            tasks.check_fits(data, cell.n_inputs, cell.n_outputs, source=where)
            return data

        return from_file, f"data file {path}"
    spec = settings.task or model.task
    if not spec:
        return None, ""

    # The sidecar's task is generated on the held-out trials its stated accuracy
    # was measured on (eval_seed), so the two can be compared; --task uses --seed.
    seed = settings.seed
    if not settings.task and isinstance(model.metadata.get("eval_seed"), int):
        seed = model.metadata["eval_seed"]

    def generated(batch: int):
        data = tasks.make_task(spec, batch=batch, seed=seed)
        tasks.check_fits(data, cell.n_inputs, cell.n_outputs, source=where)
        return data

    return generated, f"task {spec}, seed {seed}" + ("" if settings.task else " (the sidecar's, on its held-out seed)")


def analyze(spec: AnalysisSpec, checkpoint: str | Path, options, settings: RunSettings, *,
            load_options=None, model: Model | None = None, progress: Progress | None = None,
            on_warning: Callable[[str], None] | None = None, extra_summary: dict | None = None) -> Outcome:
    """Run ``spec`` on ``checkpoint`` and write its report; return the Outcome.

    Raises InputError (bad checkpoint, bad options or data: exit 2) and
    AnalysisError (the analysis failed: exit 3). Any other exception from the
    analysis is wrapped in AnalysisError, naming the checkpoint.
    """
    t0 = time.perf_counter()
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype)
    path = Path(checkpoint)
    if model is None:
        from rnnprobe.checkpoints import LoadOptions, load_checkpoint

        lo = load_options or LoadOptions()
        lo = dataclasses.replace(lo, dtype=dtype, device=str(device))
        model = load_checkpoint(path, lo)
    else:
        model = model.to(dtype=dtype, device=device)
    source, source_desc = task_source(model, settings)
    ctx = RunContext(device=device, dtype=dtype, seed=settings.seed, task_source=source,
                     progress=progress or Progress(), on_warning=on_warning)
    try:
        result = spec.run(model, options, ctx)
    except RnnprobeError as e:
        if e.path is None:
            e.path = str(path)
            e.args = (f"{path}: {e.message}",)
        raise
    except torch.cuda.OutOfMemoryError as e:  # pragma: no cover - GPU only
        raise AnalysisError(f"out of GPU memory ({e}); try --device cpu or fewer samples", path=path) from e
    except MemoryError as e:
        raise AnalysisError("out of memory; reduce the problem size (see the command's --help)", path=path) from e
    except Exception as e:
        raise AnalysisError(f"{spec.name} failed: {type(e).__name__}: {e}", path=path) from e

    gate_failures = list(spec.gate(result, options)) if spec.gate else []
    figures = {}
    if settings.plots and spec.plot is not None:
        try:
            figures = spec.plot_function()(result, model)
        except Exception as e:  # a plot must never cost the user the report
            ctx.warn(f"plots failed ({type(e).__name__}: {e}); the report is complete without them")
    sha = ""
    if path.is_file():
        from rnnprobe.checkpoints import sha256_file

        sha = sha256_file(path)
    provenance = Provenance(checkpoint=str(path), checkpoint_sha256=sha,
                            argv=settings.argv, seed=settings.seed, device=str(device), dtype=settings.dtype)
    summary = {
        "analysis": spec.name,
        "checkpoint": str(path),
        "checkpoint_sha256": provenance.checkpoint_sha256,
        "rnnprobe_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "created": provenance.created,
        "seed": settings.seed,
        "device": str(device),
        "dtype": settings.dtype,
        "task_source": source_desc or None,
        "options": jsonable(options_dict(options)),
    }
    summary.update(jsonable(result.summary()))
    summary["warnings"] = list(ctx.warnings)
    summary["gate_failures"] = gate_failures
    if extra_summary:
        summary.update(extra_summary)
    paths = write_report(settings.out_dir, settings.stem or report_stem(path), spec.name, model=model,
                         result=result, options=options, provenance=provenance, summary=summary,
                         figures=figures)
    summary["report"] = str(paths.h5)
    summary["plots"] = {k: str(v) for k, v in paths.plots.items()}
    return Outcome(summary=summary, paths=paths, result=result, model=model, gate_failures=gate_failures,
                   warnings=list(ctx.warnings), seconds=time.perf_counter() - t0)
