"""Reading any rnnprobe report back (``rnnprobe report show``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rnnprobe.errors import InputError

__all__ = ["describe_report", "load_summary"]


def _describe_group(g: h5py.Group, depth: int, max_depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {"attrs": {k: _plain(v) for k, v in g.attrs.items()}, "datasets": {}, "groups": {}}
    for name, obj in g.items():
        if isinstance(obj, h5py.Group):
            if depth < max_depth:
                out["groups"][name] = _describe_group(obj, depth + 1, max_depth)
            else:
                out["groups"][name] = {"attrs": {}, "datasets": {}, "groups": {}, "truncated": True}
        else:
            info: dict[str, Any] = {"shape": list(obj.shape), "dtype": str(obj.dtype)}
            if obj.size <= 8:
                data = obj.asstr()[()] if h5py.check_string_dtype(obj.dtype) else obj[()]
                info["value"] = _plain(data)
            elif obj.dtype.kind in "iuf":
                data = obj[()]
                finite = data[np.isfinite(data)] if data.dtype.kind == "f" else data
                if finite.size:
                    info["min"], info["max"] = float(finite.min()), float(finite.max())
            out["datasets"][name] = info
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def describe_report(path: str | Path, *, max_depth: int = 3) -> dict[str, Any]:
    """Provenance, the model's attributes and the analysis group's contents, as plain data."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such report file; give the .h5 file rnnprobe wrote", path=path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"not an HDF5 report ({e}); give the .h5 file rnnprobe wrote", path=path) from e
    with f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        if "analysis" not in attrs:
            raise InputError("an HDF5 file, but not an rnnprobe report (no 'analysis' attribute)", path=path)
        analysis = attrs["analysis"]
        return {
            "file": str(path),
            "provenance": attrs,
            "model": _describe_group(f["model"], 0, 0) if "model" in f else {},
            "analysis": analysis,
            "results": _describe_group(f[analysis], 0, max_depth) if analysis in f else {},
            "summary": load_summary(path.with_suffix(".json")),
        }


def load_summary(path: str | Path) -> dict | None:
    """The JSON summary beside a report, or None if there is none (or it is unreadable)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
