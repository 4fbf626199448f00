"""Checks made before a checkpoint is parsed: existence, size, content sniffing.

Nothing here interprets a file's content as code. The format is decided from
the first bytes (and, for zip archives, the member names), never from the
extension alone; the size cap is checked from the file system before a byte is
read. Pickles are only ever disassembled statically (:func:`pickle_globals`).
"""

from __future__ import annotations

import hashlib
import io
import pickletools
import struct
import zipfile
from pathlib import Path

from rnnprobe.errors import CheckpointError

__all__ = ["check_file", "sniff", "sha256_file", "pickle_globals", "one_line", "EXTENSIONS", "FORMATS_HELP"]

EXTENSIONS = {
    ".pt": "torch", ".pth": "torch", ".ckpt": "torch", ".bin": "torch", ".tar": "torch",
    ".safetensors": "safetensors", ".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5", ".keras": "keras",
}
FORMATS_HELP = "PyTorch (.pt/.pth/.ckpt/.bin), safetensors, .npz, HDF5 (.h5/.hdf5) or Keras (.keras)"

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def one_line(err: BaseException | str, limit: int = 240) -> str:
    """The most informative line of an exception message, shortened to ``limit`` characters."""
    text = str(err)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__ if isinstance(err, BaseException) else ""
    line = lines[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def check_file(path: Path, max_bytes: int) -> int:
    """The size of ``path`` in bytes, after refusing what is not a readable, non-empty file under the cap."""
    if not path.exists():
        raise CheckpointError("no such file; check the path", path=path)
    if path.is_dir():
        raise CheckpointError(f"is a directory, not a checkpoint file; pass one of its files ({FORMATS_HELP})",
                              path=path)
    if not path.is_file():
        raise CheckpointError("is not a regular file; pass a checkpoint file", path=path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError("is empty (0 bytes); the checkpoint was not written completely", path=path)
    if size > max_bytes:
        raise CheckpointError(
            f"is {size} bytes, over the --max-bytes limit of {max_bytes} bytes; raise --max-bytes (e.g. "
            f"--max-bytes {_human(size * 2)}) if you trust this file's size",
            path=path,
        )
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise CheckpointError("is not readable (permission denied); check the file's permissions", path=path) from None
    return size


def _human(n: int) -> str:
    for unit, scale in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= scale:
            return f"{-(-n // scale)}{unit}"
    return str(n)


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(
            f"is a truncated or corrupt zip archive ({one_line(e)}); re-save or re-download the checkpoint",
            path=path,
        ) from None
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "torch"
    if any(n == "model.weights.h5" or n.endswith("/model.weights.h5") for n in names):
        return "keras"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else "no members"
    raise CheckpointError(
        f"is a zip archive without a torch data.pkl, a Keras model.weights.h5 or .npy arrays ({shown}); "
        f"expected {FORMATS_HELP}",
        path=path,
    )


def sniff(path: Path, size: int) -> str:
    """The format of ``path`` from its content: torch, safetensors, npz, hdf5 or keras.

    Refuses text files, lone .npy arrays and unknown content with one line each.
    """
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_kind(path)
    if head.startswith(_HDF5_MAGIC):
        return "hdf5"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "torch"
    # safetensors: u64 header length (far below 2**32 in practice: its top bytes are 0), then '{'
    if len(head) >= 9 and head[8:9] == b"{" and head[4:8] == b"\0\0\0\0":
        (n,) = struct.unpack("<Q", head[:8])
        if 8 + n <= size:
            return "safetensors"
        raise CheckpointError(
            f"looks like safetensors but its header claims {n} bytes and the file has {size}: it is truncated; "
            "re-save or re-download it",
            path=path,
        )
    if head.startswith(b"\x93NUMPY"):
        raise CheckpointError(
            "is a single .npy array, not a checkpoint; save the weights together with names, e.g. "
            "np.savez('net.npz', W_hh=..., W_uh=..., W_r=...)",
            path=path,
        )
    if _is_text(head):
        start = head[:24].decode("utf-8", "replace").strip().replace("\n", " ")
        what = "a JSON file (a sidecar?)" if start.startswith(("{", "[")) else "a text file"
        raise CheckpointError(
            f"is {what} (starts with {start!r}), not a checkpoint; pass the weights file ({FORMATS_HELP})",
            path=path,
        )
    raise CheckpointError(
        f"is not a recognised checkpoint (first bytes {head[:8].hex()}); expected {FORMATS_HELP}", path=path
    )


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character cut at the end of the sample is still text
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pickle_globals(data: bytes, limit: int = 16) -> list[str]:
    """The ``module.name`` globals a pickle stream would import, found by disassembly (nothing runs).

    Follows GLOBAL and STACK_GLOBAL (protocol 4+, with its string operands
    tracked through the memo); scans successive pickles (a legacy torch file is
    several) until the data stops parsing.
    """
    found: list[str] = []
    f = io.BytesIO(data)
    for _ in range(limit):
        strings: list[str] = []
        memo: dict[int, object] = {}
        try:
            for op, arg, _pos in pickletools.genops(f):
                name = op.name
                if name == "GLOBAL" or name == "INST":
                    mod, _, attr = str(arg).partition(" ")
                    found.append(f"{mod}.{attr}")
                elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
                              "BINSTRING", "SHORT_BINSTRING"):
                    strings.append(str(arg))
                elif name == "MEMOIZE":
                    memo[len(memo)] = strings[-1] if strings else None
                elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = strings[-1] if strings else None
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    v = memo.get(int(arg))
                    if isinstance(v, str):
                        strings.append(v)
                elif name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                if name == "STOP":
                    break
        except Exception:  # noqa: BLE001 - hostile or non-pickle data simply ends the scan
            break
        if f.tell() >= len(data):
            break
    seen: dict[str, None] = {}
    for g in found:
        seen.setdefault(g, None)
    return list(seen)
