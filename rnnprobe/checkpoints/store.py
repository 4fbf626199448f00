"""A checkpoint's tensors as a flat, lazy table: key -> shape, dtype, reader.

Every format reader produces a :class:`Store`; layout inference looks at names
and shapes only, and a tensor's bytes are read when the loader needs it (after
the hidden size has been checked against ``--max-hidden``). Keys keep the
file's own spelling: ``.`` between levels of torch dicts, ``/`` between HDF5
groups; :func:`normalize` makes the two comparable for ``--key``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rnnprobe.cells.base import check_finite
from rnnprobe.errors import CheckpointError, InputError

__all__ = ["Entry", "Store", "normalize", "leaf", "parent", "to_tensor", "BOOKKEEPING"]

# Top-level containers of training checkpoints that hold no model weights.
BOOKKEEPING = (
    "optimizer", "optimizers", "optimizer_states", "optimizer_weights", "optimizer_state_dict", "optim", "opt",
    "scheduler", "schedulers", "lr_scheduler", "lr_schedulers", "scheduler_state_dict",
    "loops", "callbacks", "scaler", "grad_scaler", "amp", "rng_state", "rng_states",
)


def normalize(key: str) -> str:
    """A key with ``/`` and ``.`` made equivalent and Keras ``:0`` suffixes dropped."""
    parts = [p for p in key.replace("/", ".").split(".") if p]
    return ".".join(p[:-2] if p.endswith(":0") else p for p in parts)


def leaf(key: str) -> str:
    """The last component of a normalized key."""
    return normalize(key).rsplit(".", 1)[-1]


def parent(key: str) -> str:
    """Everything before the last component of a normalized key ('' at the top)."""
    n = normalize(key)
    return n.rsplit(".", 1)[0] if "." in n else ""


@dataclasses.dataclass
class Entry:
    """One tensor in a file: its key, shape and dtype, and how to read it."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    read: Callable[[], "np.ndarray | torch.Tensor"]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        if self.dtype == "bfloat16":
            return 2
        try:
            return np.dtype(self.dtype).itemsize
        except TypeError:
            return 8


def to_tensor(x, *, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """An array or tensor from a reader as a ``dtype`` tensor on ``device``."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(dtype=dtype, device=device)
    a = np.asarray(x)
    if a.dtype.byteorder not in ("=", "|"):
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype.kind in "iub":
        a = a.astype(np.float64)
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(a).to(dtype=dtype, device=device)


@dataclasses.dataclass
class Store:
    """The tensors and plain metadata read from one checkpoint file.

    Attributes:
        path: the file.
        format: ``torch``, ``safetensors``, ``npz``, ``hdf5`` or ``keras``.
        entries: file key -> :class:`Entry`, in file order.
        metadata: plain values from the file (safetensors ``__metadata__``, scalars of a
            training dict, HDF5 attributes, 0-d arrays of an npz).
        notes: what the reader skipped or assumed.
        config: a Keras model configuration read as plain JSON (layer classes, activations).
    """

    path: Path
    format: str
    entries: dict[str, Entry]
    metadata: dict = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    config: dict | None = None

    def __post_init__(self) -> None:
        self._by_norm: dict[str, list[str]] = {}
        for k in self.entries:
            self._by_norm.setdefault(normalize(k), []).append(k)

    def error(self, message: str) -> CheckpointError:
        return CheckpointError(message, path=self.path)

    def by_norm(self, norm_key: str) -> str | None:
        """The file key whose normalized form is ``norm_key`` (None if absent)."""
        keys = self._by_norm.get(norm_key)
        return keys[0] if keys else None

    def find(self, user_key: str, what: str) -> str:
        """The file key a user named (``--key``/sidecar ``keys``): exact, normalized, or a unique suffix."""
        if user_key in self.entries:
            return user_key
        n = normalize(user_key)
        if n in self._by_norm:
            return self._by_norm[n][0]
        hits = [k for nk, ks in self._by_norm.items() for k in ks if nk.endswith("." + n)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise self.error(f"{what}={user_key} matches several keys ({', '.join(hits[:6])}); give the full key")
        import difflib

        close = difflib.get_close_matches(n, list(self._by_norm), n=4, cutoff=0.5)
        hint = f"; close keys: {', '.join(close)}" if close else f"; the file has {len(self.entries)} tensors"
        raise self.error(f"{what}={user_key}: no tensor with that key in the file{hint}")

    def is_bookkeeping(self, key: str) -> bool:
        first = normalize(key).split(".", 1)[0]
        return first in BOOKKEEPING

    def model_keys(self) -> list[str]:
        """Keys outside optimizer/scheduler/... containers of a training checkpoint."""
        return [k for k in self.entries if not self.is_bookkeeping(k)]

    def tensor(self, key: str, name: str, *, dtype: torch.dtype, device, max_bytes: int) -> torch.Tensor:
        """Read ``key`` as ``dtype`` on ``device``; refuse non-finite values naming ``name`` and the key."""
        e = self.entries[key]
        if e.numel * e.itemsize > max_bytes:
            raise self.error(
                f"{name} (file key '{key}', shape {list(e.shape)}) needs {e.numel * e.itemsize} bytes, over the "
                f"--max-bytes limit {max_bytes}; raise --max-bytes if this is intended"
            )
        try:
            raw = e.read()
        except CheckpointError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError, EOFError) as err:
            msg = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise self.error(f"cannot read {name} (file key '{key}'): {msg}; the file is truncated or corrupt") from err
        if getattr(raw, "dtype", None) is not None and str(raw.dtype).replace("torch.", "").startswith("complex"):
            raise self.error(f"{name} (file key '{key}') is complex ({raw.dtype}); rnnprobe needs real weights")
        t = to_tensor(raw, dtype=dtype, device=device)
        if tuple(t.shape) != tuple(e.shape):
            raise self.error(f"{name} (file key '{key}') has shape {list(t.shape)}, not the declared {list(e.shape)}")
        # any NaN/inf makes the sum non-finite; a finite sum proves all entries finite, in one cheap pass
        if t.numel() and not bool(torch.isfinite(t.sum())):
            try:
                check_finite(f"{name} (file key '{key}')", t)
            except InputError as err:
                raise self.error(err.message) from None
        return t
