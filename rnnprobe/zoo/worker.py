"""Running one zoo task, in whatever process: the calling one, a pool worker or a dask worker.

:func:`run_task` never raises for a bad checkpoint or a failing analysis: it
returns a row with ``status`` ``ok``, ``skipped`` or ``failed``. The files of
a task's slot (``<stem>.<analysis>.*`` in the output folder) always describe
its last attempt: a success removes an old failure record and stale plots, a
failure removes the old report and writes ``<stem>.<analysis>.failed.json``.

The task key is the SHA-256 of the checkpoint's bytes, its sidecar's bytes
and :func:`rnnprobe.zoo.tasks.static_key`; it is stored as ``zoo_key`` in the
report's JSON summary, which the report writer writes last. A task whose
JSON summary exists with the same key (and whose HDF5 file exists) is skipped.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import threading
import time
import traceback
from pathlib import Path

from rnnprobe.zoo.summary import FAILED_SUFFIX, result_summary

__all__ = ["run_task", "task_key", "init_worker", "THREAD_ENV"]

# set to 1 in worker processes, before numpy or torch is imported there
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
              "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS")


def init_worker(parent_pid: int | None = None) -> None:
    """Initializer of a worker process: one thread for BLAS and torch; exit when the parent dies;
    ignore Ctrl-C (the parent handles it and terminates the workers).

    The thread variables are already in the environment the worker was
    started with (the parent sets them, so they hold before numpy loads); this
    repeats them for the worker's own children and sets torch's threads. The
    watcher ends a worker orphaned by a killed parent (it would otherwise wait
    for work forever); a report it was writing is left as a temporary file,
    which the next attempt at that task removes.
    """
    import signal

    # Ctrl-C reaches the whole process group: the parent decides, and stops the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in THREAD_ENV:
        os.environ[name] = "1"
    os.environ.setdefault("MPLBACKEND", "Agg")
    import torch

    torch.set_num_threads(1)
    if parent_pid is not None:
        def watch() -> None:
            while True:
                time.sleep(0.5)
                if os.getppid() != parent_pid:
                    os._exit(1)

        threading.Thread(target=watch, name="rnnprobe-zoo-parent-watch", daemon=True).start()


def task_key(checkpoint_sha256: str, sidecar_sha256: str | None, static: dict) -> str:
    """The task key: SHA-256 of the canonical JSON of the checkpoint's and sidecar's hashes and ``static``."""
    doc = {"checkpoint_sha256": checkpoint_sha256, "sidecar_sha256": sidecar_sha256, **static}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _paths(task) -> tuple[Path, Path, Path, str]:
    out = Path(task.settings.out_dir)
    base = f"{task.settings.stem}.{task.analysis}"
    return out / f"{base}.json", out / f"{base}.h5", out / f"{base}{FAILED_SUFFIX}", base


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _clear_temporaries(out: Path, base: str) -> None:
    # left by a worker killed while writing this slot; no other task writes it
    for tmp in glob.glob(os.path.join(glob.escape(str(out)), f".{glob.escape(base)}.*.tmp")):
        _unlink(Path(tmp))


def _plots(out: Path, base: str) -> list[Path]:
    return [Path(p) for p in glob.glob(os.path.join(glob.escape(str(out)), f"{glob.escape(base)}.*.png"))]


def _existing(json_path: Path, h5_path: Path, key: str) -> dict | None:
    try:
        summary = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(summary, dict) and summary.get("zoo_key") == key and h5_path.is_file():
        return summary
    return None


def _row(task, status: str, t0: float, **fields) -> dict:
    row = {"index": task.index, "checkpoint": task.checkpoint, "analysis": task.analysis, "status": status,
           "error": None, "seconds": round(time.perf_counter() - t0, 4), "report": None, "checkpoint_sha256": None,
           "key": None, "gate_failures": [], "warnings": [], "summary": {}}
    row.update(fields)
    return row


def _fail(task, t0: float, message: str, *, sha: str | None = None, key: str | None = None,
          tb: str | None = None) -> dict:
    json_path, h5_path, failed_path, base = _paths(task)
    out = json_path.parent
    row = _row(task, "failed", t0, error=message, checkpoint_sha256=sha, key=key)
    try:
        # the slot now says "failed": an older report of this task would contradict it
        for p in (json_path, h5_path, *_plots(out, base)):
            _unlink(p)
        from rnnprobe.report.writer import write_json_atomic

        record = {k: v for k, v in row.items() if k not in ("index", "summary")}
        write_json_atomic(failed_path, record)
    except OSError as e:
        row["error"] = f"{message} (and the failure record could not be written: {e})"
    if tb:
        row["traceback"] = tb
    return row


def run_task(task) -> dict:
    """Run one :class:`~rnnprobe.zoo.tasks.ZooTask`; return its row (never raises for a bad checkpoint)."""
    from rnnprobe.checkpoints.safety import one_line, sha256_file
    from rnnprobe.checkpoints.sidecar import find_sidecar
    from rnnprobe.errors import RnnprobeError
    from rnnprobe.pipeline import analyze

    t0 = time.perf_counter()
    path = Path(task.checkpoint)
    json_path, h5_path, failed_path, base = _paths(task)
    out = json_path.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        _clear_temporaries(out, base)
        sha = sha256_file(path)
        side, _ = find_sidecar(path)
        side_sha = sha256_file(side) if side is not None else None
    except OSError as e:
        why = e.strerror or one_line(e)
        return _fail(task, t0, f"{task.checkpoint}: cannot be read ({why}); check the path and its permissions")
    key = task_key(sha, side_sha, dict(task.static_key))
    if not task.force:
        summary = _existing(json_path, h5_path, key)
        if summary is not None:
            _unlink(failed_path)
            return _row(task, "skipped", t0, report=str(h5_path), checkpoint_sha256=sha, key=key,
                        gate_failures=list(summary.get("gate_failures") or []),
                        warnings=list(summary.get("warnings") or []), summary=result_summary(summary))
    try:
        outcome = analyze(task.spec, path, task.options, task.settings, load_options=task.load_options,
                          extra_summary={"zoo_key": key})
    except RnnprobeError as e:
        return _fail(task, t0, one_line(e, limit=1000), sha=sha, key=key)
    except Exception as e:  # noqa: BLE001 - whatever breaks on one checkpoint is that checkpoint's failure
        return _fail(task, t0, f"{task.checkpoint}: {type(e).__name__}: {one_line(e, limit=1000)}", sha=sha,
                     key=key, tb=traceback.format_exc())
    if outcome.summary.get("checkpoint_sha256") != sha:
        return _fail(task, t0, f"{task.checkpoint}: the file changed while it was analysed; run the zoo again",
                     sha=sha, key=key)
    _unlink(failed_path)
    keep = {Path(p) for p in outcome.paths.plots.values()}
    for stale in _plots(out, base):
        if stale not in keep:
            _unlink(stale)
    return _row(task, "ok", t0, report=str(outcome.paths.h5), checkpoint_sha256=sha, key=key,
                gate_failures=list(outcome.gate_failures), warnings=list(outcome.warnings),
                summary=result_summary(outcome.summary))
