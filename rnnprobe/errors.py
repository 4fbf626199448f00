"""Errors that map onto rnnprobe's exit codes (DESIGN.md).

Every user-facing failure is one of these, carrying a message that names the
file, the key or option, the shape or value, and the fix. The CLI prints the
message on one line of stderr and exits with ``exit_code``; no traceback
unless ``--debug``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "RnnprobeError",
    "InputError",
    "UnsafeCheckpointError",
    "CheckpointError",
    "AnalysisError",
    "GateFailed",
    "EXIT_OK",
    "EXIT_GATE",
    "EXIT_INPUT",
    "EXIT_ANALYSIS",
]

EXIT_OK = 0
EXIT_GATE = 1
EXIT_INPUT = 2
EXIT_ANALYSIS = 3


class RnnprobeError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code: int = EXIT_ANALYSIS

    def __init__(self, message: str, *, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(RnnprobeError):
    """Bad usage or bad input: unreadable, inconsistent or oversized data (exit 2)."""

    exit_code = EXIT_INPUT


class CheckpointError(InputError):
    """A checkpoint that cannot be read or mapped onto the canonical model (exit 2)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle needs globals outside torch's weights-only allow list."""

    def __init__(self, message: str, *, path: str | Path | None = None, globals_: list[str] | None = None):
        self.globals = list(globals_ or [])
        super().__init__(message, path=path)


class AnalysisError(RnnprobeError):
    """An analysis that could not produce a result (exit 3)."""

    exit_code = EXIT_ANALYSIS


class GateFailed(RnnprobeError):
    """A ``--fail-if`` or ``--max-error`` gate failed (exit 1)."""

    exit_code = EXIT_GATE
