"""``rnnprobe zoo PATH...``: every registered analysis over many checkpoints; and ``rnnprobe report table DIR``.

The work is :mod:`rnnprobe.zoo`'s; this module reads the options, shows
progress (a bar on a terminal, a plain line every :data:`PLAIN_EVERY` seconds
in CI logs and pipes, nothing with ``--quiet``), prints failures as they
happen, the table at the end and one last line with the counts and the exit
code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from rnnprobe.cli.common import LOAD, OUTPUT, TASK, CommonOptions, choice_enum, guarded, with_options
from rnnprobe.cli.console import Terminal, rows_table
from rnnprobe.errors import EXIT_ANALYSIS, EXIT_GATE, InputError

__all__ = ["zoo", "report_table", "EXAMPLE", "PLAIN_EVERY", "MAX_TABLE_ROWS"]

EXAMPLE = "rnnprobe zoo sample_checkpoints --include 'copy*' --analyses schur,lyapunov --jobs 2 --fail-if 'schur.spectral_radius > 1.05'"
PLAIN_EVERY = 10.0
MAX_TABLE_ROWS = 100
ZOO = "Zoo"
_EXECUTOR = choice_enum("Executor", ["local", "dask"])


def _display(path: str | None) -> str:
    """A path relative to the working directory when it is inside it."""
    if not path:
        return ""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, bool):
        return "true" if v else "false"
    return "null" if v is None else str(v)


def _result_text(row: dict, first: tuple[str, ...], limit: int = 4) -> str:
    """The row's error, or its first few scalar summary values (gated keys first)."""
    from rnnprobe.zoo.summary import flatten

    if row["status"] == "failed":
        return row.get("error") or ""
    flat = dict(flatten(row.get("summary") or {}, row["analysis"]))
    keys = [k for k in first if k in flat] + [k for k in flat if k not in first]
    shown = [f"{k.split('.', 1)[1]}={_fmt(flat[k])}" for k in keys[:limit]]
    more = len(flat) - limit
    return ", ".join(shown) + (f", ... (+{more})" if more > 0 else "")


def show_rows(term: Terminal, rows: list[dict], *, gate_keys: tuple[str, ...] = (), data: bool = False,
              limit: int | None = MAX_TABLE_ROWS, more_in: str = "") -> None:
    """The rows as a rich table on a terminal, as plain lines otherwise.

    ``data``: the table is the command's output (stdout, even with --quiet).
    """
    if not data and term.quiet:
        return
    shown = rows if limit is None else rows[:limit]
    cells = [[_display(r["checkpoint"]), r["analysis"], r["status"],
              "" if r.get("seconds") is None else f"{r['seconds']:.2f}", _result_text(r, gate_keys)] for r in shown]
    header = ["checkpoint", "analysis", "status", "seconds", "result"]
    tail = f"... {len(rows) - len(shown)} more rows{' in ' + more_in if more_in else ''}" if len(shown) < len(rows) \
        else ""
    console = term.out if data else term.err
    if console.is_terminal if data else term.interactive:
        styles = {"failed": "red", "skipped": "dim"}
        table = rows_table(header, cells, row_styles=[styles.get(r["status"]) for r in shown])
        (term.show_data if data else term.show)(table)
        if tail:
            (term.show_data if data else term.info)(tail)
        return
    write = (lambda s: console.print(s, markup=False, highlight=False, soft_wrap=True)) if data else term.info
    for c in cells:
        write(f"{c[2]:<7}  {c[1]}  {c[0]}  {c[3] + ' s  ' if c[3] else ''}{c[4]}")
    if tail:
        write(tail)


class _Reporter:
    """Progress while rows arrive: a bar on a terminal, plain periodic lines in CI; failures at once."""

    def __init__(self, term: Terminal, total: int, *, debug: bool = False):
        self.term, self.total, self.debug = term, total, debug
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}
        self.t0 = self._last = time.monotonic()
        self.bar = term.task_bar(total, self._description())

    def _description(self) -> str:
        c = self.counts
        return f"zoo: {c['ok']} ok, {c['skipped']} skipped, {c['failed']} failed"

    def __call__(self, row: dict) -> None:
        self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
        if row["status"] == "failed":
            self.term.error(f"failed: {row['analysis']}: {row.get('error')}")
            if self.debug and row.get("traceback"):
                self.term.err.print(row["traceback"], markup=False, highlight=False)
        done = sum(self.counts.values())
        if self.bar is not None:
            self.bar.update(done, self._description())
        elif not self.term.quiet and time.monotonic() - self._last >= PLAIN_EVERY and done < self.total:
            self._last = time.monotonic()
            elapsed = self._last - self.t0
            left = elapsed / done * (self.total - done)
            self.term.info(f"rnnprobe zoo: {done}/{self.total} tasks done ({self._description()[5:]}), "
                           f"{elapsed:.0f} s elapsed, about {left:.0f} s left")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (Slurm's time limit, CI cancellation) stops the run like Ctrl-C: summary kept, workers stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _jobs(jobs: int) -> int:
    if jobs == 0:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows
            return os.cpu_count() or 1
    return jobs


def _select(names: str | None, registered: dict) -> list[str]:
    if not registered:
        raise InputError("no analyses are registered in this installation of rnnprobe")
    if not names:
        return list(registered)
    selected = list(dict.fromkeys(n.strip() for n in names.split(",") if n.strip()))
    unknown = [n for n in selected if n not in registered]
    if unknown or not selected:
        raise InputError(f"--analyses {names!r}: unknown analysis {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"available: {','.join(registered)}")
    return selected


def _n(k: int, one: str, many: str | None = None) -> str:
    return f"{k} {one if k == 1 else (many or one + 's')}"


def _last_line(counts: dict, total: int, gate_failures: list, code: int) -> str:
    gated = len({g.checkpoint for g in gate_failures})
    line = (f"rnnprobe zoo: {_n(total, 'task')}: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed; "
            f"gates: {'none failed' if not gated else _n(gated, 'checkpoint') + ' failed'}; exit {code}")
    if code == EXIT_ANALYSIS and gated:
        line += " (failed tasks take precedence: the gates saw an incomplete zoo)"
    return line


@with_options(LOAD, TASK, OUTPUT, command="zoo")
def zoo(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        metavar="PATH...", show_default=False,
        help="Checkpoint files and folders (searched recursively for .pt .pth .ckpt .bin .safetensors .npz .h5 "
             ".hdf5 .keras).")] = None,
    analyses_: Annotated[Optional[str], typer.Option(
        "--analyses", "-a", metavar="NAME,...", rich_help_panel=ZOO,
        help="Comma-separated analyses to run; default: every registered one.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", metavar="ANALYSIS.OPTION=VALUE", rich_help_panel=ZOO,
        help="An analysis option, e.g. --set lyapunov.k=16 (repeatable; wins over --options).")] = None,
    options_file: Annotated[Optional[Path], typer.Option(
        "--options", metavar="FILE", exists=True, dir_okay=False, rich_help_panel=ZOO,
        help='Analysis options from a JSON or TOML file: {"lyapunov": {"k": 16}}.')] = None,
    jobs: Annotated[int, typer.Option(
        "--jobs", "-j", min=0, rich_help_panel=ZOO,
        help="Worker processes (one BLAS/torch thread each); 1 runs in this process; 0: one per CPU.")] = 1,
    shard: Annotated[Optional[str], typer.Option(
        metavar="i/n", rich_help_panel=ZOO,
        help="Run only checkpoints k with k mod n = i-1 of the sorted list (Slurm arrays, CI matrices).")] = None,
    executor: Annotated[_EXECUTOR, typer.Option(
        rich_help_panel=ZOO, help="local (this machine) or dask (a LocalCluster of --jobs workers, or --scheduler).")
    ] = "local",
    scheduler: Annotated[Optional[str], typer.Option(
        metavar="ADDRESS", rich_help_panel=ZOO,
        help="An existing dask scheduler, e.g. tcp://host:8786 (with --executor dask).")] = None,
    fail_if: Annotated[Optional[list[str]], typer.Option(
        "--fail-if", metavar="EXPR", rich_help_panel=ZOO,
        help="Exit 1 naming every checkpoint where EXPR holds, e.g. 'schur.spectral_radius > 1.05' (repeatable).")
    ] = None,
    force: Annotated[bool, typer.Option(
        "--force", rich_help_panel=ZOO, help="Redo tasks whose report with the same key exists.")] = False,
    include: Annotated[Optional[list[str]], typer.Option(
        "--include", metavar="GLOB", rich_help_panel=ZOO,
        help="In folders, take only files matching GLOB (repeatable).")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(
        "--exclude", metavar="GLOB", rich_help_panel=ZOO, help="Skip files matching GLOB (repeatable).")] = None,
    from_file: Annotated[Optional[str], typer.Option(
        "--from-file", metavar="FILE|-", rich_help_panel=ZOO,
        help="More paths, one a line ('-': standard input).")] = None,
    *,
    common: CommonOptions,
) -> None:
    """Run analyses over a model zoo: one idempotent task per checkpoint x analysis, in parallel, resumable.

    Reports go to --out as <name>-<hash>.<analysis>.h5/.json/.png (the hash tells apart two folders'
    net.pt), with DIR/summary.csv and DIR/summary.jsonl (one row per task: checkpoint, analysis,
    status ok/skipped/failed, error, seconds, report and the analysis's JSON summary flattened, e.g.
    schur.spectral_radius, lyapunov.exponents[0]). A task whose report exists with the same key
    (checkpoint and sidecar SHA-256, options, rnnprobe version) is skipped, so an interrupted run
    resumes where it stopped. Exit codes: 0 done, 1 a gate failed, 2 bad usage, 3 some
    checkpoints failed (this wins over 1), 130 interrupted (run again to resume).
    """
    from rnnprobe.analyses import analyses
    from rnnprobe.checkpoints import sha256_file
    from rnnprobe.zoo import (analysis_options, evaluate_gates, exit_code, find_checkpoints, parse_gate, parse_set,
                              parse_shard, plan, read_options_file, read_path_list, run_tasks, summary_name)
    from rnnprobe.zoo.executors import check_executor
    from rnnprobe.zoo.summary import jsonl_text

    term = common.terminal
    with guarded(term, debug=common.debug):
        registered = analyses()
        selected = _select(analyses_, registered)
        gates = [parse_gate(g, analyses=tuple(selected)) for g in fail_if or []]
        file_values = read_options_file(options_file) if options_file else None
        options = analysis_options(registered, selected, file_values=file_values, set_values=parse_set(set_ or []),
                                   options_file=str(options_file) if options_file else None)
        shard_ = parse_shard(shard)
        n_jobs = _jobs(jobs)
        executor_ = str(getattr(executor, "value", executor))
        check_executor(executor_, n_jobs, scheduler)
        inputs = [str(p) for p in paths or []] + (read_path_list(from_file) if from_file else [])
        settings = common.run_settings()
        out_dir = Path(os.path.abspath(settings.out_dir))
        checkpoints = find_checkpoints(inputs, include=include or (), exclude=exclude or (), skip_dirs=[out_dir])
        data_sha = sha256_file(settings.data) if settings.data else None
        specs = [registered[n] for n in selected]
        tasks = plan(checkpoints, specs, options, settings, common.load_options(), shard=shard_, force=force,
                     data_sha256=data_sha)
        where = f"dask scheduler {scheduler}" if scheduler else (
            f"a dask LocalCluster of {n_jobs} worker(s)" if executor_ == "dask" else
            ("this process" if n_jobs == 1 else f"{n_jobs} worker processes"))
        part = f", shard {shard_[0]}/{shard_[1]}: {len(tasks)} tasks" if shard_[1] > 1 else ""
        term.info(f"rnnprobe zoo: {_n(len(checkpoints), 'checkpoint')} x {_n(len(specs), 'analysis', 'analyses')} "
                  f"({','.join(selected)}) = "
                  f"{len(checkpoints) * len(specs)} tasks{part}, on {where}; reports in {_display(str(out_dir))}")
        out_dir.mkdir(parents=True, exist_ok=True)
        reporter = _Reporter(term, len(tasks), debug=common.debug)
        try:
            with _sigterm_as_interrupt():
                result = run_tasks(tasks, out_dir, executor=executor_, jobs=n_jobs, scheduler=scheduler,
                                   name=summary_name(shard_), on_row=reporter)
        finally:
            reporter.stop()
        counts = result.counts()
        if result.interrupted:
            term.error(f"interrupted after {len(result.rows)}/{len(tasks)} tasks ({counts['ok']} ok, "
                       f"{counts['failed']} failed); {_display(str(result.summary_paths[0]))} lists the finished "
                       "ones; run the same command again to resume (finished tasks are skipped)")
            raise typer.Exit(130)
        gate_failures = evaluate_gates(result.rows, gates)
        code = exit_code(result, gate_failures)
        if common.json:
            import sys

            sys.stdout.write(jsonl_text(result.rows))
            sys.stdout.flush()
        gate_keys = tuple(k for g in gates for k in g.keys)
        show_rows(term, result.rows, gate_keys=gate_keys, more_in=_display(str(result.summary_paths[0])))
        for g in gate_failures:
            term.error(g.message())
        term.info(f"summary: {_display(str(result.summary_paths[0]))} and {result.summary_paths[1].name}")
        if code or not term.quiet:  # the verdict is shown even with --quiet when it is not 0
            term.err.print(_last_line(counts, len(tasks), gate_failures, code), markup=False, highlight=False,
                           soft_wrap=True)
        if code:
            raise typer.Exit(code)


def report_table(directory: Path, *, fmt: str = "table", write: bool = False, fail_if: list[str] | None = None,
                 debug: bool = False) -> None:
    """``rnnprobe report table DIR``: the zoo's table rebuilt from the reports (and failure records) in DIR.

    ``fmt``: ``table`` (rich on a terminal, plain lines in a pipe), ``csv`` or
    ``jsonl`` on stdout; ``write`` also rewrites DIR/summary.csv and
    DIR/summary.jsonl. Exits like the zoo: 3 when a failure record is present,
    else 1 when a ``--fail-if`` gate fails.
    """
    import sys

    from rnnprobe.analyses import analyses
    from rnnprobe.zoo import (ZooResult, csv_text, evaluate_gates, exit_code, jsonl_text, parse_gate,
                              rows_from_reports, write_summary)

    term = Terminal(command="rnnprobe report table")
    with guarded(term, debug=debug):
        if not directory.is_dir():
            raise InputError(f"{directory}: not a folder; give the --out folder of a zoo run")
        registered = list(analyses())
        rows = rows_from_reports(directory, registered)
        if not rows:
            raise InputError(f"{directory}: no rnnprobe reports (*.json summaries) found; give the --out folder of a "
                             "zoo run")
        names = tuple(dict.fromkeys([*registered, *(r["analysis"] for r in rows)]))
        gates = [parse_gate(g, analyses=names) for g in fail_if or []]
        if write:
            write_summary(directory, rows)
        if fmt == "csv":
            sys.stdout.write(csv_text(rows))
        elif fmt == "jsonl":
            sys.stdout.write(jsonl_text(rows))
        else:
            show_rows(term, rows, gate_keys=tuple(k for g in gates for k in g.keys), data=True, limit=None)
        sys.stdout.flush()
        gate_failures = evaluate_gates(rows, gates)
        for g in gate_failures:
            term.error(g.message())
        code = exit_code(ZooResult(rows=rows, total=len(rows)), gate_failures)
        if code == EXIT_ANALYSIS:
            term.error(f"{sum(r['status'] == 'failed' for r in rows)} task(s) failed; their records are "
                       f"<name>.<analysis>.failed.json in {directory}")
        if code in (EXIT_ANALYSIS, EXIT_GATE):
            raise typer.Exit(code)
