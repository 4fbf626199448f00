"""PyTorch files (.pt/.pth/.ckpt/.bin): ``torch.load(weights_only=True)``, always.

Zip-format files are memory-mapped (``mmap=True``), so a tensor's bytes are
read only when it is used. When ``weights_only`` refuses a file, the offending
globals are named (``torch.serialization.get_unsafe_globals_in_checkpoint``
for zip files, a static disassembly for legacy pickles) and the file is
rejected; ``trust_pickle`` (``--trust-pickle``) loads it with
``weights_only=False``, which runs whatever code the pickle contains.

Nested training dicts are flattened into dotted keys
(``state_dict.model.rnn.weight_hh_l0``); plain values (numbers, strings)
become metadata.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from rnnprobe.checkpoints.safety import one_line, pickle_globals
from rnnprobe.checkpoints.store import Entry, Store
from rnnprobe.errors import CheckpointError, UnsafeCheckpointError

__all__ = ["read_torch", "flatten"]

_MAX_ITEMS = 200_000
_MAX_DEPTH = 32


def _unsafe_globals(path: Path) -> list[str]:
    if zipfile.is_zipfile(path):
        try:
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:  # noqa: BLE001 - fall back to our own disassembly
            pass
        try:
            with zipfile.ZipFile(path) as zf:
                name = next(n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
                data = zf.read(name)
        except Exception:  # noqa: BLE001
            return []
    else:
        data = path.read_bytes()
    allowed = _allowed_globals()
    return [g for g in pickle_globals(data) if g not in allowed]


def _allowed_globals() -> set[str]:
    try:
        from torch import _weights_only_unpickler as wou

        return set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
    except Exception:  # noqa: BLE001 - a private API; without it nothing is assumed safe
        return {"collections.OrderedDict", "builtins.set", "builtins.frozenset", "_codecs.encode"}


def _load(path: Path, trust_pickle: bool):
    is_zip = zipfile.is_zipfile(path)
    with warnings.catch_warnings():
        # torch warns on stderr about pickle protocols and weights_only; our messages say what matters
        warnings.simplefilter("ignore")
        return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle, mmap=is_zip)


def read_torch(path: Path, *, trust_pickle: bool = False) -> Store:
    """A torch checkpoint as a :class:`Store`; refuses pickles that ``weights_only`` refuses."""
    notes: list[str] = []
    try:
        obj = _load(path, trust_pickle)
    except pickle.UnpicklingError as e:
        if trust_pickle:
            raise CheckpointError(f"cannot be unpickled ({one_line(e)}); the file is corrupt", path=path) from None
        found = _unsafe_globals(path)
        if found:
            shown = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "")
            raise UnsafeCheckpointError(
                f"refused: the pickle needs globals outside torch's weights-only allow list ({shown}); loading it "
                "could run code from the file. Only if you trust its source, re-run with --trust-pickle",
                path=path, globals_=found,
            ) from None
        detail = _torch_detail(e)
        raise CheckpointError(
            f"is not a loadable torch checkpoint ({detail}); it is truncated or corrupt, or not a torch.save file",
            path=path,
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, AttributeError,
            ImportError, TypeError, IndexError, MemoryError) as e:
        raise CheckpointError(
            f"cannot be read as a torch checkpoint ({one_line(e)}); it is truncated or corrupt: re-save or "
            "re-download it",
            path=path,
        ) from None
    if trust_pickle:
        notes.append("loaded with --trust-pickle (weights_only=False): the file's pickle was allowed to run code")
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
        notes.append("the file holds a whole nn.Module; its state_dict() was read")
    entries: dict[str, Entry] = {}
    metadata: dict = {}
    flatten(obj, "", entries, metadata, path)
    if not entries:
        raise CheckpointError(
            f"holds no tensors (a {type(obj).__name__}); expected a state dict or a training dict containing one",
            path=path,
        )
    return Store(path=path, format="torch", entries=entries, metadata=metadata, notes=notes)


def _torch_detail(e: BaseException) -> str:
    """The line of torch's weights_only message that says what went wrong."""
    for ln in str(e).splitlines():
        s = ln.strip()
        if s.startswith(("Unsupported", "Trying to", "Could not", "Can only", "Unpickler", "Expected")):
            return s[:200]
    return one_line(e, 160)


def _tensor_entry(key: str, t: torch.Tensor) -> Entry:
    return Entry(key=key, shape=tuple(int(s) for s in t.shape), dtype=str(t.dtype).replace("torch.", ""),
                 read=lambda t=t: t)


def _array_entry(key: str, a: np.ndarray) -> Entry:
    return Entry(key=key, shape=tuple(int(s) for s in a.shape), dtype=str(a.dtype), read=lambda a=a: a)


def flatten(obj, prefix: str, entries: dict[str, Entry], metadata: dict, path: Path, depth: int = 0) -> None:
    """Walk nested dicts/lists: tensors -> ``entries`` under dotted keys, plain values -> ``metadata``."""
    if depth > _MAX_DEPTH:
        raise CheckpointError(f"nests containers more than {_MAX_DEPTH} levels deep at '{prefix}'; "
                              "this is not a checkpoint layout rnnprobe reads", path=path)
    if len(entries) + len(metadata) > _MAX_ITEMS:
        raise CheckpointError(f"holds more than {_MAX_ITEMS} items; this is not a single model's checkpoint",
                              path=path)
    if isinstance(obj, torch.Tensor):
        if obj.is_sparse or obj.layout != torch.strided:
            return
        entries[prefix] = _tensor_entry(prefix, obj)
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind in "fiub" and obj.ndim > 0:
            entries[prefix] = _array_entry(prefix, obj)
        elif obj.ndim == 0 and obj.dtype.kind in "fiub":
            metadata[prefix] = obj.item()
    elif isinstance(obj, torch.nn.Module):
        flatten(obj.state_dict(), prefix, entries, metadata, path, depth + 1)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), entries, metadata, path, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            flatten(v, f"{prefix}.{i}" if prefix else str(i), entries, metadata, path, depth + 1)
    elif isinstance(obj, (bool, int, float, str)) or obj is None:
        if isinstance(obj, str) and len(obj) > 10_000:
            obj = obj[:10_000]
        metadata[prefix] = obj
