"""NumPy ``.npz`` archives, with pickles refused (``allow_pickle=False``).

Each member's ``.npy`` header (shape, dtype) is read first; object arrays are
skipped without being unpickled, and a header that declares more bytes than
the member holds (or more than ``--max-bytes`` once decompressed) is refused
before numpy allocates anything. 0-d numeric and string arrays (``alpha``,
``dt``, ...) become metadata.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from rnnprobe.checkpoints.safety import one_line
from rnnprobe.checkpoints.store import Entry, Store
from rnnprobe.errors import CheckpointError

__all__ = ["read_npz"]


def _header(fp) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    # version 3.0 only allows utf-8 in field names; its header is laid out as 2.0's
    return np.lib.format.read_array_header_2_0(fp)


def _reader(path: Path, member: str):
    def read() -> np.ndarray:
        with zipfile.ZipFile(path) as zf, zf.open(member) as fp:
            return np.lib.format.read_array(fp, allow_pickle=False)

    return read


def read_npz(path: Path, max_bytes: int) -> Store:
    """An ``.npz`` archive as a :class:`Store` (lazy: arrays are read when used)."""
    entries: dict[str, Entry] = {}
    metadata: dict = {}
    skipped: list[str] = []
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[: -len(".npy")]
                if info.file_size > max_bytes:
                    raise CheckpointError(
                        f"member '{info.filename}' decompresses to {info.file_size} bytes, over the --max-bytes "
                        f"limit of {max_bytes}; raise --max-bytes if you trust this file",
                        path=path,
                    )
                with zf.open(info) as fp:
                    try:
                        shape, fortran, dtype = _header(fp)
                    except (ValueError, OSError, EOFError, SyntaxError) as e:
                        raise CheckpointError(f"member '{info.filename}' has a corrupt .npy header ({one_line(e)})",
                                              path=path) from None
                    if dtype.hasobject:
                        skipped.append(key)
                        continue
                    nbytes = math.prod(shape) * dtype.itemsize
                    if nbytes > info.file_size:
                        raise CheckpointError(
                            f"member '{info.filename}' declares shape {list(shape)} of {dtype} ({nbytes} bytes) but "
                            f"holds {info.file_size} bytes; the file is corrupt",
                            path=path,
                        )
                    if len(shape) == 0:
                        if dtype.kind in "fiubU" and nbytes <= 4096:
                            value = np.frombuffer(fp.read(nbytes), dtype=dtype, count=1)
                            metadata[key] = value[0].item()
                        continue
                    if dtype.kind not in "fiub":
                        skipped.append(key)
                        continue
                entries[key] = Entry(key=key, shape=tuple(int(s) for s in shape), dtype=str(dtype.newbyteorder("=")),
                                     read=_reader(path, info.filename))
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
        raise CheckpointError(f"is a truncated or corrupt npz archive ({one_line(e)}); re-save it", path=path) from None
    notes = []
    if skipped:
        notes.append(f"skipped object/non-numeric arrays (never unpickled): {', '.join(skipped[:8])}")
    if not entries:
        raise CheckpointError("npz archive holds no numeric arrays" + (f" (skipped: {', '.join(skipped[:8])})"
                                                                        if skipped else ""), path=path)
    return Store(path=path, format="npz", entries=entries, metadata=metadata, notes=notes)
