"""HDF5 files (.h5/.hdf5, Keras 2 ``model.save``/``save_weights`` files) and Keras 3 ``.keras`` archives.

Datasets at any group depth become entries keyed by their path
(``model_weights/simple_rnn/simple_rnn/simple_rnn_cell/kernel:0``). Only hard
links are followed: soft and external links, datasets stored in external files
and virtual datasets are skipped, so a hostile file cannot make rnnprobe read
other files on the machine. A ``.keras`` archive is a zip: its
``model.weights.h5`` is read from memory with h5py, and its ``config.json`` is
read as plain JSON (layer class names and activations) and never deserialised.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np

from rnnprobe.checkpoints.safety import one_line
from rnnprobe.checkpoints.store import Entry, Store
from rnnprobe.errors import CheckpointError

__all__ = ["read_hdf5", "read_keras"]

_MAX_OBJECTS = 200_000
_MAX_DEPTH = 64
_MAX_CONFIG_BYTES = 16 * 1024**2


def _plain(v):
    """An HDF5 attribute as a plain Python value (None when it is not a small scalar or string)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, str):
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray) and v.ndim == 0 and v.dtype.kind in "fiub":
        return v.item()
    if isinstance(v, (int, float, bool)):
        return v
    return None


def _bf16(a: np.ndarray) -> np.ndarray:
    return (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _walk(root: h5py.Group, opener, path: Path) -> tuple[dict[str, Entry], dict, list[str]]:
    entries: dict[str, Entry] = {}
    metadata: dict = {}
    skipped: list[str] = []
    count = 0

    def visit(group: h5py.Group, prefix: str, depth: int) -> None:
        nonlocal count
        if depth > _MAX_DEPTH:
            raise CheckpointError(f"nests groups more than {_MAX_DEPTH} levels deep at '{prefix}'", path=path)
        for name in group:
            count += 1
            if count > _MAX_OBJECTS:
                raise CheckpointError(f"holds more than {_MAX_OBJECTS} objects; not a single model's weights",
                                      path=path)
            key = f"{prefix}/{name}" if prefix else name
            link = group.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                skipped.append(f"{key} ({type(link).__name__})")
                continue
            obj = group.get(name)
            if isinstance(obj, h5py.Group):
                visit(obj, key, depth + 1)
            elif isinstance(obj, h5py.Dataset):
                add(obj, key)

    def add(ds: h5py.Dataset, key: str) -> None:
        if ds.external or ds.is_virtual:
            skipped.append(f"{key} (data stored outside this file)")
            return
        if ds.shape is None:
            return
        kind = ds.dtype.kind
        bf16 = _plain(ds.attrs.get("dtype")) == "bfloat16" and ds.dtype.itemsize == 2
        if ds.shape == ():
            if kind in "fiub":
                metadata[key] = ds[()].item()
            elif kind in "SO" and ds.dtype.itemsize <= 4096 and h5py.check_string_dtype(ds.dtype) is not None:
                metadata[key] = _plain(ds[()])
            return
        if not bf16 and (kind not in "fiub" or ds.dtype.names is not None):
            skipped.append(f"{key} ({ds.dtype})")
            return

        def read(key=key, bf16=bf16):
            with opener() as f:
                a = f[key][()]
            return _bf16(a) if bf16 else a

        entries[key] = Entry(key=key, shape=tuple(int(s) for s in ds.shape),
                             dtype="bfloat16" if bf16 else str(ds.dtype.newbyteorder("=")), read=read)

    visit(root, "", 0)
    for k, v in root.attrs.items():
        pv = _plain(v)
        if pv is not None:
            metadata[k] = pv
    return entries, metadata, skipped


def _config_from(metadata: dict) -> dict | None:
    raw = metadata.pop("model_config", None)
    if not isinstance(raw, str):
        return None
    try:
        cfg = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _store(path: Path, fmt: str, opener, config: dict | None = None) -> Store:
    try:
        with opener() as f:
            entries, metadata, skipped = _walk(f, opener, path)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"cannot be read as HDF5 ({one_line(e)}); it is truncated or corrupt", path=path) \
            from None
    notes = [f"skipped (links, external or non-numeric data): {', '.join(skipped[:6])}"] if skipped else []
    cfg = config if config is not None else _config_from(metadata)
    metadata.pop("training_config", None)
    if not entries:
        raise CheckpointError("HDF5 file holds no numeric datasets", path=path)
    return Store(path=path, format=fmt, entries=entries, metadata=metadata, notes=notes, config=cfg)


def read_hdf5(path: Path) -> Store:
    """An HDF5 file as a :class:`Store` (a Keras 2 ``model_config`` attribute becomes ``config``)."""
    return _store(path, "hdf5", lambda: h5py.File(path, "r"))


def read_keras(path: Path, max_bytes: int) -> Store:
    """A Keras 3 ``.keras`` archive: ``model.weights.h5`` read from memory, ``config.json`` as plain JSON."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            member = next((n for n in names if n == "model.weights.h5" or n.endswith("/model.weights.h5")), None)
            if member is None:
                raise CheckpointError(
                    f"is a .keras archive without model.weights.h5 (members: {', '.join(names[:5])}); "
                    "re-save it with model.save('net.keras')",
                    path=path,
                )
            info = zf.getinfo(member)
            if info.file_size > max_bytes:
                raise CheckpointError(
                    f"member {member} decompresses to {info.file_size} bytes, over the --max-bytes limit of "
                    f"{max_bytes}; raise --max-bytes if you trust this file",
                    path=path,
                )
            data = zf.read(member)
            config = None
            if "config.json" in names and zf.getinfo("config.json").file_size <= _MAX_CONFIG_BYTES:
                try:
                    config = json.loads(zf.read("config.json").decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError):
                    config = None
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
        raise CheckpointError(f"is a truncated or corrupt .keras archive ({one_line(e)})", path=path) from None
    return _store(path, "keras", lambda: h5py.File(io.BytesIO(data), "r"),
                  config if isinstance(config, dict) else None)
