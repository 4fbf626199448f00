"""Where zoo tasks run: in this process, in a pool of worker processes, or on a dask.distributed cluster.

:func:`iter_rows` yields one row per task as tasks finish, whatever the
executor; rows are plain dicts, so all three give the same summary.

* ``local``, ``jobs=1``: in the calling process, one task after another
  (torch limited to one thread while the zoo runs).
* ``local``, ``jobs>=2``: a ``ProcessPoolExecutor`` with the ``spawn`` start
  method (no forked torch state). The workers start with one BLAS/OpenMP
  thread (the variables are in their environment before numpy loads) and one
  torch thread. At most ``2 * jobs`` tasks are in flight; when a worker dies
  (out of memory, a crash in a native library) the tasks in flight are run
  again one at a time in a fresh one-worker pool, so that only the checkpoint
  that kills a worker is recorded as failed.
* ``dask``: a ``dask.distributed`` ``LocalCluster`` of ``jobs`` one-thread
  worker processes, or an existing scheduler (``--scheduler tcp://host:port``,
  e.g. started by dask-jobqueue on Slurm or PBS): the workers must see the
  checkpoints and the output folder at the same paths and have rnnprobe
  installed. Dask is optional (``pip install rnnprobe[dask]``) and imported
  only here.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Iterator, Sequence

from rnnprobe.errors import AnalysisError, InputError
from rnnprobe.zoo.worker import THREAD_ENV, _fail, init_worker, run_task

__all__ = ["iter_rows", "check_executor", "EXECUTORS", "thread_env"]

EXECUTORS = ("local", "dask")
WORKER_DIED = ("the worker process died while analysing this checkpoint (killed by the system, e.g. out of "
               "memory, or a crash in native code), also when it was retried alone; check the file and "
               "--max-bytes / --max-hidden")


@contextlib.contextmanager
def thread_env() -> Iterator[None]:
    """One BLAS/OpenMP thread in the environment of processes started inside the block."""
    old = {k: os.environ.get(k) for k in THREAD_ENV}
    os.environ.update({k: "1" for k in THREAD_ENV})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_executor(executor: str, jobs: int, scheduler: str | None) -> None:
    """InputError for a bad combination, or for ``dask`` when dask.distributed is not installed."""
    if executor not in EXECUTORS:
        raise InputError(f"--executor {executor!r} must be one of {', '.join(EXECUTORS)}")
    if jobs < 1:
        raise InputError(f"--jobs {jobs} must be >= 1 (or 0 for one worker per CPU)")
    if scheduler and executor != "dask":
        raise InputError(f"--scheduler {scheduler} needs --executor dask")
    if executor == "dask":
        try:
            import dask.distributed  # noqa: F401
        except ImportError:
            raise InputError("--executor dask needs dask.distributed, an optional extra: "
                             "pip install 'rnnprobe[dask]'") from None


def iter_rows(tasks: Sequence, *, executor: str = "local", jobs: int = 1,
              scheduler: str | None = None) -> Iterator[dict]:
    """Run ``tasks`` and yield their rows as they finish (in completion order)."""
    check_executor(executor, jobs, scheduler)
    if not tasks:
        return _serial_rows(())
    if executor == "dask":
        return _dask_rows(tasks, jobs, scheduler)
    if jobs == 1:
        return _serial_rows(tasks)
    return _pool_rows(tasks, jobs)


def _serial_rows(tasks: Sequence) -> Iterator[dict]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for task in tasks:
            yield run_task(task)
    finally:
        torch.set_num_threads(threads)


def _new_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_worker, initargs=(os.getpid(),))


def _stop(pool: ProcessPoolExecutor) -> None:
    """Shut a pool down now: pending tasks cancelled, running workers terminated."""
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        with contextlib.suppress(Exception):
            terminate()
    else:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):
                proc.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


class _Health:
    """Whether any worker ever returned a row: if none did and workers keep dying, they cannot start at all."""

    def __init__(self) -> None:
        self.rows = 0
        self.deaths = 0

    def died(self) -> None:
        self.deaths += 1
        if self.rows == 0 and self.deaths >= 3:
            raise AnalysisError("worker processes die before finishing any task (they cannot start here?); run "
                                "with --jobs 1 to see the error, or --debug")


def _pool_rows(tasks: Sequence, jobs: int) -> Iterator[dict]:
    started = time.time()
    queue = collections.deque(tasks)
    suspects: collections.deque = collections.deque()
    health = _Health()
    with thread_env():
        pool = _new_pool(jobs)
        inflight: dict = {}
        try:
            while queue or inflight:
                while queue and len(inflight) < 2 * jobs:
                    task = queue.popleft()
                    inflight[pool.submit(run_task, task)] = task
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    task = inflight.pop(fut)
                    try:
                        row = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        suspects.append(task)
                        continue
                    health.rows += 1
                    yield row
                if broken:
                    health.died()
                    suspects.extend(inflight.values())
                    inflight.clear()
                    _stop(pool)
                    yield from _run_alone(suspects, health, started)
                    pool = _new_pool(jobs)
        finally:
            _stop(pool)


def _this_runs_report(row: dict, started: float) -> dict:
    """A retried task's row: "skipped" becomes "ok" where its report was written by this run.

    A task in flight when its pool broke may have finished (and written its report) in a
    worker that died or was stopped before the result came back; its retry then finds that
    report up to date. It is this run's result, not one found from an earlier run.
    """
    if row.get("status") == "skipped" and row.get("report"):
        with contextlib.suppress(OSError):
            if os.stat(row["report"]).st_mtime >= started:
                row = {**row, "status": "ok"}
    return row


def _run_alone(suspects: collections.deque, health: _Health, started: float) -> Iterator[dict]:
    """Each task in its own turn in a one-worker pool: a crash then names its checkpoint."""
    pool = _new_pool(1)
    try:
        while suspects:
            task = suspects.popleft()
            t0 = time.perf_counter()
            try:
                row = pool.submit(run_task, task).result()
            except BrokenProcessPool:
                health.died()
                yield _fail(task, t0, f"{task.checkpoint}: {WORKER_DIED}")
                _stop(pool)
                pool = _new_pool(1)
                continue
            health.rows += 1
            yield _this_runs_report(row, started)
    finally:
        _stop(pool)


def run_task_one_thread(task) -> dict:
    """:func:`run_task` with torch on one thread (for dask workers, which run it in a thread of theirs)."""
    import torch

    torch.set_num_threads(1)
    return run_task(task)


def _dask_rows(tasks: Sequence, jobs: int, scheduler: str | None) -> Iterator[dict]:
    from dask.distributed import Client, LocalCluster, as_completed
    with thread_env():
        cluster = None
        if scheduler:
            try:
                client = Client(scheduler, timeout="30s")
            except (OSError, TimeoutError, ValueError) as e:
                raise InputError(f"--scheduler {scheduler}: cannot connect ({e}); check the address "
                                 "(tcp://host:port) and that the scheduler is running") from None
        else:
            cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=logging.ERROR)
            client = Client(cluster)
        by_key: dict = {}
        futures: list = []
        try:
            for task in tasks:
                key = f"rnnprobe-zoo-{os.getpid()}-{time.monotonic_ns()}-{task.index}"
                fut = client.submit(run_task_one_thread, task, pure=False, key=key)
                by_key[fut.key] = task
                futures.append(fut)
            for fut in as_completed(futures):
                task = by_key[fut.key]
                t0 = time.perf_counter()
                try:
                    yield fut.result()
                except Exception as e:  # noqa: BLE001 - KilledWorker and the like: the task's failure
                    yield _fail(task, t0, f"{task.checkpoint}: the dask task failed ({type(e).__name__}: {e})")
        finally:
            with contextlib.suppress(Exception):
                client.cancel(futures)
            client.close()
            if cluster is not None:
                cluster.close()
