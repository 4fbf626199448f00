"""safetensors, parsed here with numpy (no extra dependency).

Layout: an 8-byte little-endian header length ``n``, ``n`` bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}``), then the raw little-endian tensor bytes; offsets count from the
end of the header. Every number in the header is checked against the file's
length before anything is allocated or read, so a hostile header cannot cause
a huge allocation or an out-of-bounds read: :func:`parse_header` raises
:class:`CheckpointError` and nothing else.
"""

from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from rnnprobe.checkpoints.store import Entry, Store
from rnnprobe.errors import CheckpointError

__all__ = ["read_safetensors", "parse_header", "DTYPES", "MAX_HEADER_BYTES"]

MAX_HEADER_BYTES = 100 * 1024**2  # the format's own limit
MAX_TENSORS = 1_000_000

# safetensors dtype -> (numpy dtype read from the file, name shown as trained_dtype)
DTYPES: dict[str, tuple[str, str]] = {
    "F64": ("<f8", "float64"),
    "F32": ("<f4", "float32"),
    "F16": ("<f2", "float16"),
    "BF16": ("<u2", "bfloat16"),  # converted through float32 by a 16-bit shift
    "I64": ("<i8", "int64"),
    "I32": ("<i4", "int32"),
    "I16": ("<i2", "int16"),
    "I8": ("i1", "int8"),
    "U8": ("u1", "uint8"),
}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8}


def _fail(path, message: str) -> CheckpointError:
    return CheckpointError(f"safetensors header: {message}", path=path)


def parse_header(f: BinaryIO, file_size: int, path: str | Path | None = None) -> tuple[dict, dict, int, list[str]]:
    """Validate a safetensors header.

    Returns ``(tensors, metadata, data_start, skipped)``: ``tensors`` maps a name
    to ``(dtype, shape, begin, end)`` with absolute byte offsets, all inside the
    file; ``skipped`` lists tensors of dtypes rnnprobe does not read.
    """
    if file_size < 8:
        raise _fail(path, f"the file has {file_size} bytes, fewer than the 8-byte header length; it is truncated")
    head = f.read(8)
    if len(head) != 8:
        raise _fail(path, "cannot read the 8-byte header length; the file is truncated")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES:
        raise _fail(path, f"declared length {n} exceeds the format's {MAX_HEADER_BYTES}-byte limit; not safetensors")
    if 8 + n > file_size:
        raise _fail(path, f"declares {n} bytes but the file has only {file_size - 8} after the length; truncated")
    raw = f.read(n)
    if len(raw) != n:
        raise _fail(path, "the JSON header is cut short; the file is truncated")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _fail(path, "is not valid UTF-8 JSON; the file is corrupt or not safetensors") from None
    if not isinstance(header, dict):
        raise _fail(path, f"is a JSON {type(header).__name__}, not an object; not safetensors")
    if len(header) > MAX_TENSORS:
        raise _fail(path, f"lists {len(header)} tensors (limit {MAX_TENSORS})")
    data_start = 8 + n
    data_len = file_size - data_start
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _fail(path, "__metadata__ must be an object of strings")
    metadata = {str(k): v for k, v in metadata.items() if isinstance(v, (str, int, float, bool))}
    tensors: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
    skipped: list[str] = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise _fail(path, f"entry {name!r} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str):
            raise _fail(path, f"entry {name!r} has no dtype string")
        if not isinstance(shape, list) or len(shape) > 16 or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s for s in shape
        ):
            raise _fail(path, f"entry {name!r} has an invalid shape {str(shape)[:60]}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise _fail(path, f"entry {name!r} has invalid data_offsets {str(offsets)[:60]}")
        begin, end = offsets
        if not (0 <= begin <= end <= data_len):
            raise _fail(path, f"entry {name!r} spans bytes {begin}..{end} of a {data_len}-byte data section; "
                              "the file is truncated or corrupt")
        item = _ITEMSIZE.get(dtype)
        if item is None:
            raise _fail(path, f"entry {name!r} has unknown dtype {dtype[:20]!r}")
        numel = math.prod(shape)
        if numel * item != end - begin:
            raise _fail(path, f"entry {name!r} of dtype {dtype} and shape {shape} needs {numel * item} bytes "
                              f"but spans {end - begin}; the file is corrupt")
        if dtype not in DTYPES:
            skipped.append(f"{name} ({dtype})")
            continue
        tensors[name] = (dtype, tuple(shape), data_start + begin, data_start + end)
    return tensors, metadata, data_start, skipped


def _reader(path: Path, dtype: str, shape: tuple[int, ...], begin: int, end: int):
    def read() -> np.ndarray:
        np_dtype = np.dtype(DTYPES[dtype][0])
        count = (end - begin) // np_dtype.itemsize
        buf = bytearray(end - begin)  # writable, so torch can share it without a copy
        with open(path, "rb") as f:
            f.seek(begin)
            got = f.readinto(buf)
        if got != end - begin:
            raise CheckpointError(f"tensor bytes {begin}..{end} are missing; the file is truncated", path=path)
        a = np.frombuffer(buf, dtype=np_dtype, count=count)
        if dtype == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        return a.reshape(shape)

    return read


def read_safetensors(path: Path, size: int) -> Store:
    """A safetensors file as a :class:`Store`; ``__metadata__`` becomes the store's metadata."""
    with open(path, "rb") as f:
        tensors, metadata, _, skipped = parse_header(f, size, path)
    entries = {
        name: Entry(key=name, shape=shape, dtype=DTYPES[dt][1], read=_reader(path, dt, shape, b, e))
        for name, (dt, shape, b, e) in tensors.items()
    }
    notes = [f"skipped tensors of dtypes rnnprobe does not read: {', '.join(skipped[:6])}"] if skipped else []
    if not entries:
        raise CheckpointError("safetensors file holds no tensors rnnprobe can read", path=path)
    return Store(path=path, format="safetensors", entries=entries, metadata=metadata, notes=notes)


def parse_bytes(blob: bytes) -> tuple[dict, dict, int, list[str]]:
    """:func:`parse_header` on an in-memory file (used by the fuzz tests)."""
    return parse_header(io.BytesIO(blob), len(blob))
