"""The terminal: the only module of rnnprobe that imports rich.

stdout carries data only (``--json``, ``report show``); messages, warnings,
tables about a run and progress go to stderr. ``NO_COLOR`` is honoured by rich
itself; ``--quiet`` silences everything but errors.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from rnnprobe.analyses.base import Progress

__all__ = ["Terminal", "kv_table", "rows_table", "print_json", "TaskBar"]


def print_json(data: Any) -> None:
    """Data on stdout, as one JSON document (no markup, no colour)."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        if len(v) > 8:
            return "[" + ", ".join(_fmt(x) for x in v[:8]) + f", ... ({len(v)} in all)]"
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in list(v.items())[:6]) + (", ..." if len(v) > 6 else "") + "}"
    return str(v)


def kv_table(data: dict, *, title: str | None = None, skip: tuple[str, ...] = ()) -> Table:
    """A two-column table of a summary's keys and values."""
    t = Table(title=title, show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    for k, v in data.items():
        if k in skip or v is None or v == [] or v == {}:
            continue
        t.add_row(str(k), _fmt(v))
    return t


def rows_table(columns: list[str], rows: list[list[str]], *, title: str | None = None,
               row_styles: list[str | None] | None = None) -> Table:
    """A table with a header; cells are plain text (no markup), ``row_styles`` colour whole rows."""
    t = Table(title=title, header_style="bold", pad_edge=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for i, row in enumerate(rows):
        style = row_styles[i] if row_styles else None
        t.add_row(*(Text(str(v)) for v in row), style=style)
    return t


class TaskBar:
    """A progress bar over many tasks whose description changes (``rnnprobe zoo``), on stderr."""

    def __init__(self, console: Console, total: int, description: str):
        self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def update(self, completed: int, description: str) -> None:
        self._bar.update(self._task, completed=completed, description=description)

    def stop(self) -> None:
        self._bar.stop()


class _RichProgress(Progress):
    def __init__(self, console: Console):
        self._console = console
        self._bar: RichProgress | None = None
        self._task = None

    def start(self, description: str, total: int | None = None) -> None:
        self.stop()
        self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self._console, transient=True)
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class Terminal:
    """Messages for one command run: errors always, the rest unless ``quiet``."""

    def __init__(self, *, quiet: bool = False, command: str = "rnnprobe"):
        self.quiet = quiet
        self.command = command
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.out = Console(highlight=False, soft_wrap=True)

    @property
    def interactive(self) -> bool:
        return self.err.is_terminal and not os.environ.get("CI")

    def error(self, message: str) -> None:
        # one line, no markup interpretation of user data (paths with [brackets])
        self.err.print(f"{self.command}: error: {message}", markup=False, highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        if not self.quiet:
            self.err.print(f"{self.command}: warning: {message}", markup=False, style="yellow")

    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message, markup=False)

    def show(self, renderable) -> None:
        """A human-readable view of results, on stderr (stdout is for data)."""
        if not self.quiet:
            self.err.print(renderable)

    def show_data(self, renderable) -> None:
        """A table that *is* the command's output (``inspect``, ``report show``), on stdout."""
        self.out.print(renderable)

    def task_bar(self, total: int, description: str) -> TaskBar | None:
        """A :class:`TaskBar` on a terminal; ``None`` in CI, in pipes and with ``--quiet``."""
        return TaskBar(self.err, total, description) if (self.interactive and not self.quiet) else None

    def progress(self) -> Progress:
        return _RichProgress(self.err) if (self.interactive and not self.quiet) else Progress()
