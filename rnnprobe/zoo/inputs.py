"""Which checkpoints a zoo run covers: files, folders searched recursively, lists of paths.

Rules (also in the README):

* A file named on the command line or in a ``--from-file`` list is taken
  whatever its extension (the loader sniffs the content); ``--exclude``
  still applies to it.
* A folder is searched recursively for :data:`CHECKPOINT_EXTENSIONS`; hidden
  files and folders (``.git``, ``.venv``, temporary files) and the output
  folder are skipped, ``*.json`` sidecars are never checkpoints. With
  ``--include`` a file must also match one of the patterns.
* Patterns are shell globs (``*``, ``?``, ``[ab]``, case-sensitive). A
  pattern without ``/`` matches the file name or any folder name on the way
  (``old`` skips every ``old/`` folder), one with ``/`` the path relative to
  the folder searched or one of its leading folders (``seed*/net.pt``,
  ``runs/2024*``); listed files are matched by the path as given.
* The result is sorted by absolute path and free of duplicates (the same file
  reached twice, also through a symbolic link, is one checkpoint), so every
  process that lists the same inputs gets the same list: ``--shard`` relies on it.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from pathlib import Path
from typing import Iterable, TextIO

from rnnprobe.errors import InputError

__all__ = ["CHECKPOINT_EXTENSIONS", "find_checkpoints", "read_path_list", "matches"]

CHECKPOINT_EXTENSIONS = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".npz", ".h5", ".hdf5", ".keras")


def matches(rel: str, patterns: Iterable[str]) -> bool:
    """Whether the posix path ``rel`` matches any of ``patterns``.

    A pattern without ``/`` matches the file name or any folder name on the
    path (like .gitignore); one with ``/`` matches the whole path or one of its
    leading folders (``seed*/old`` matches ``seed1/old/net.pt``).
    """
    parts = rel.split("/")
    for p in patterns:
        p = p.rstrip("/") or p
        if "/" in p:
            if any(fnmatch.fnmatchcase("/".join(parts[:i]), p) for i in range(1, len(parts) + 1)):
                return True
        elif any(fnmatch.fnmatchcase(part, p) for part in parts):
            return True
    return False


def read_path_list(source: str, stdin: TextIO | None = None) -> list[str]:
    """Paths from ``--from-file``: one a line, ``-`` for stdin; blank lines and ``#`` comments skipped."""
    if source == "-":
        text = (stdin or sys.stdin).read()
    else:
        try:
            text = Path(source).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"--from-file {source}: cannot read it ({e}); give a text file with one path a line")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _walk(root: Path, skip: set[Path]) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and _real(here / d) not in skip)
        for name in sorted(filenames):
            if not name.startswith("."):
                yield here / name


def _real(p: Path) -> Path:
    try:
        return p.resolve()
    except OSError:
        return p.absolute()


def _add(found: dict[Path, Path], p: Path) -> None:
    # one entry per real file; of several paths to it, whatever the order of the inputs: one that is not
    # reached through a symbolic link, else the smallest
    a = Path(os.path.abspath(p))
    real = _real(p)
    rank = (a != real, str(a))
    if real not in found or rank < (found[real] != real, str(found[real])):
        found[real] = a


def find_checkpoints(paths: Iterable[str | Path], *, include: Iterable[str] = (), exclude: Iterable[str] = (),
                     skip_dirs: Iterable[str | Path] = ()) -> list[Path]:
    """The sorted, de-duplicated absolute checkpoint paths the inputs describe.

    ``skip_dirs`` (the output folder) are not searched; a folder to search that
    is one of them or inside one is refused. Raises InputError for a path that
    does not exist, for that, and when nothing is found.
    """
    paths, include, exclude = list(paths), list(include), list(exclude)
    skip = {_real(Path(d)) for d in skip_dirs}
    found: dict[Path, Path] = {}  # real path -> absolute path as reached
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise InputError(f"{raw}: no such file or folder; check the path (or drop it from the --from-file list)")
        if p.is_dir():
            real = _real(p)
            inside = [d for d in skip if real == d or d in real.parents]
            if inside:
                raise InputError(f"{raw}: the output folder {inside[0]} is this folder or holds it, and reports (.h5) "
                                 "would be taken for checkpoints; give --out a folder outside the zoo")
            for f in _walk(p, skip):
                rel = f.relative_to(p).as_posix()
                if f.suffix.lower() not in CHECKPOINT_EXTENSIONS:
                    continue
                if include and not matches(rel, include):
                    continue
                if exclude and matches(rel, exclude):
                    continue
                _add(found, f)
        else:
            if exclude and matches(Path(raw).as_posix(), exclude):
                continue
            _add(found, p)
    if not paths:
        raise InputError("no inputs: give checkpoint files or folders (PATH...), or --from-file FILE (- for stdin)")
    if not found:
        filt = " matching --include/--exclude" if include or exclude else ""
        raise InputError(f"no checkpoints found{filt} in {', '.join(map(str, paths))}; folders are searched for "
                         f"{' '.join(CHECKPOINT_EXTENSIONS)}")
    return sorted(found.values(), key=lambda a: str(a))
