"""A zoo run from tasks to rows, summary files, gate verdicts and an exit code.

Exit codes (DESIGN.md): 0 done; 3 when any task failed; 1 when a gate failed
and every task succeeded. A gate over an incomplete zoo is not a verdict, so a
failed checkpoint takes precedence; the last line always says both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Callable, Sequence

from rnnprobe.errors import EXIT_ANALYSIS, EXIT_GATE, EXIT_OK
from rnnprobe.zoo.executors import iter_rows
from rnnprobe.zoo.gates import Gate
from rnnprobe.zoo.summary import checkpoint_values, write_summary

__all__ = ["ZooResult", "GateFailure", "run_tasks", "evaluate_gates", "exit_code", "summary_name", "STATUSES"]

STATUSES = ("ok", "skipped", "failed")


@dataclasses.dataclass(frozen=True)
class GateFailure:
    """One checkpoint failing one gate: ``gate`` is the expression (or the analysis's own gate)."""

    checkpoint: str
    gate: str
    detail: str

    def message(self) -> str:
        return f"{self.checkpoint}: gate {self.gate!r} failed: {self.detail}"


@dataclasses.dataclass
class ZooResult:
    """What a run produced: its rows (task order), whether it was interrupted, the summary files."""

    rows: list[dict]
    total: int
    interrupted: bool = False
    summary_paths: tuple[Path, ...] = ()
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for r in self.rows:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out


def summary_name(shard: tuple[int, int]) -> str:
    """``summary`` for an unsharded run, ``summary.shard-2-of-4`` for shard 2/4 (shards never overwrite)."""
    i, n = shard
    return "summary" if n == 1 else f"summary.shard-{i}-of-{n}"


def run_tasks(tasks: Sequence, out_dir: Path, *, executor: str = "local", jobs: int = 1, scheduler: str | None = None,
              name: str = "summary", on_row: Callable[[dict], None] | None = None,
              write_every: float = 15.0) -> ZooResult:
    """Run ``tasks``; write ``<name>.csv`` / ``<name>.jsonl`` every ``write_every`` s and at the end.

    A KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one by the CLI) stops
    the run: the summary then holds the tasks that finished, and
    ``interrupted`` is set. Every summary write is atomic.
    """
    t0 = time.perf_counter()
    done: dict[int, dict] = {}
    result = ZooResult(rows=[], total=len(tasks))
    last = time.monotonic()

    def flush() -> None:
        result.rows = [done[i] for i in sorted(done)]
        result.summary_paths = write_summary(out_dir, result.rows, name=name)

    rows = iter_rows(tasks, executor=executor, jobs=jobs, scheduler=scheduler)
    try:
        # closing(): an interrupt raised in on_row stops the workers now, not when the generator is collected
        with contextlib.closing(rows):
            for row in rows:
                done[row["index"]] = row
                if on_row is not None:
                    on_row(row)
                if time.monotonic() - last > write_every:
                    flush()
                    last = time.monotonic()
    except KeyboardInterrupt:
        result.interrupted = True
    flush()
    result.seconds = time.perf_counter() - t0
    return result


def evaluate_gates(rows: Sequence[dict], gates: Sequence[Gate]) -> list[GateFailure]:
    """Every (checkpoint, gate) that fails, in checkpoint order.

    Gates are evaluated for checkpoints whose tasks all finished (ok or
    skipped); a checkpoint with a failed task is already counted as failed.
    The analyses' own gates (e.g. ``--set equivariance.max_error=1e-6``) are
    reported here too.
    """
    by_ckpt: dict[str, list[dict]] = {}
    for r in rows:
        by_ckpt.setdefault(r["checkpoint"], []).append(r)
    values = checkpoint_values(rows)
    out = []
    for ckpt, its in by_ckpt.items():
        if any(r["status"] == "failed" for r in its):
            continue
        for r in its:
            for msg in r.get("gate_failures") or []:
                out.append(GateFailure(ckpt, f"{r['analysis']} options", msg))
        for gate in gates:
            verdict = gate.evaluate(values.get(ckpt, {}))
            if verdict.failed:
                out.append(GateFailure(ckpt, gate.text, verdict.detail))
    return out


def exit_code(result: ZooResult, gate_failures: Sequence[GateFailure]) -> int:
    """3 when a task failed, else 1 when a gate failed, else 0 (an interrupted run is the caller's 130)."""
    if result.counts()["failed"]:
        return EXIT_ANALYSIS
    if gate_failures:
        return EXIT_GATE
    return EXIT_OK
