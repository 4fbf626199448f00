"""The JSON sidecar next to a checkpoint: what the weights file does not say.

For ``dir/net.pt`` the sidecar is ``dir/net.pt.json`` or ``dir/net.json``; when
both exist ``net.pt.json`` wins (it names exactly one checkpoint, while
``net.json`` could belong to ``net.pt`` and ``net.npz`` alike) and the loader
notes that ``net.json`` was not read.

Fields the loader uses (all optional; anything else lands in
``Model.metadata``): ``alpha``, ``tau`` (with ``dt``: alpha = dt / tau),
``nonlinearity``, ``dt``, ``form``, ``eps``, ``task``, ``keys`` (like ``--key``),
``readout``, ``cell`` and ``cell_kwargs``, ``trained_dtype``, ``lattice`` and ``conv``
(convolutional recurrences, :mod:`rnnprobe.checkpoints.conv`). A sidecar is plain
JSON: it can name a cell class, but only classes inside ``rnnprobe.`` are ever
imported because of it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rnnprobe.errors import InputError

__all__ = ["read_sidecar", "sidecar_paths", "find_sidecar", "SIDECAR_FIELDS", "MAX_SIDECAR_BYTES"]

MAX_SIDECAR_BYTES = 16 * 1024**2

# field -> (accepted JSON types, what it must be)
SIDECAR_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "alpha": ((int, float), "a number in (0, 1]"),
    "tau": ((int, float), "a positive number (time constant)"),
    "dt": ((int, float), "a positive number (time per step)"),
    "eps": ((int, float), "a positive number (residual Euler step)"),
    "nonlinearity": ((str,), "a string such as \"tanh\""),
    "form": ((str,), "leaky, rate-outside or residual"),
    "task": ((str,), "a task specification such as \"flipflop:length=25\""),
    "readout": ((str,), "the readout's key or prefix"),
    "cell": ((str,), "package.module:Class"),
    "trained_dtype": ((str,), "a dtype name such as \"float32\""),
    "keys": ((dict,), "an object {\"W_hh\": \"path.in.file\", ...}"),
    "cell_kwargs": ((dict,), "an object of keyword arguments"),
    "lattice": ((str, list), "a lattice shape such as \"64x64\" or [64, 64]"),
    "conv": ((dict,), "an object such as {\"padding_mode\": \"circular\", \"padding\": 1}"),
}


def sidecar_paths(path: str | Path) -> list[Path]:
    """Where a sidecar of ``path`` may be, in order of precedence."""
    path = Path(path)
    out = [path.with_name(path.name + ".json")]
    if path.suffix and path.suffix != ".json":
        out.append(path.with_suffix(".json"))
    return out


def find_sidecar(path: str | Path) -> tuple[Path | None, list[str]]:
    """The sidecar that applies to ``path`` (or None) and notes about the ones passed over."""
    found = [p for p in sidecar_paths(path) if p.is_file()]
    if not found:
        return None, []
    notes = [f"sidecar {p.name} not read: {found[0].name} takes precedence" for p in found[1:]]
    return found[0], notes


def read_sidecar(path: str | Path) -> dict:
    """The sidecar of checkpoint ``path`` as a dict (``{}`` when there is none).

    Raises InputError naming the sidecar file when it is not a JSON object or a
    field has the wrong type.
    """
    side, _ = find_sidecar(path)
    if side is None:
        return {}
    return _parse(side)


def _parse(side: Path) -> dict:
    size = side.stat().st_size
    if size == 0:  # e.g. `rnnprobe ... --json > net.json` beside net.pt: an empty file says nothing
        return {}
    if size > MAX_SIDECAR_BYTES:
        raise InputError(f"sidecar is {size} bytes (limit {MAX_SIDECAR_BYTES}); a sidecar holds a few settings, "
                         "not data: remove or shrink it", path=side)
    try:
        data = json.loads(side.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        where = f" (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        raise InputError(f"sidecar is not valid JSON{where}: fix it or remove it", path=side) from None
    if not isinstance(data, dict):
        raise InputError(f"sidecar must be a JSON object {{...}}, not a {type(data).__name__}", path=side)
    for name, (types, what) in SIDECAR_FIELDS.items():
        v = data.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, types):
            raise InputError(f"sidecar field {name!r} is {v!r}; it must be {what}", path=side)
        if isinstance(v, float) and not math.isfinite(v):
            raise InputError(f"sidecar field {name!r} is {v!r}; it must be {what}", path=side)
    for k, v in (data.get("keys") or {}).items():
        if not isinstance(v, str):
            raise InputError(f"sidecar field 'keys' maps {k!r} to {v!r}; give the tensor's key as a string", path=side)
    return data
