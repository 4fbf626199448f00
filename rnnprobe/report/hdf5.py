"""Turning plain Python results into HDF5 groups, and back, netCDF-safely.

No boolean or complex datasets (int8 flags; ``_real``/``_imag`` pairs), gzip
on every non-scalar dataset, variable-length UTF-8 strings for text. Readers
(``rnnprobe report show``, xarray with h5netcdf) see nothing exotic.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import h5py
import numpy as np
import torch

__all__ = ["write_tree", "write_attrs", "read_tree", "to_numpy", "jsonable"]

_STR = h5py.string_dtype(encoding="utf-8")


def to_numpy(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return x


def jsonable(x: Any) -> Any:
    """``x`` as plain JSON values: arrays to lists, numpy scalars to Python,
    non-finite floats to ``None`` (JSON has no NaN)."""
    x = to_numpy(x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        if np.iscomplexobj(x):
            return {"real": jsonable(x.real), "imag": jsonable(x.imag)}
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, complex):
        return {"real": jsonable(x.real), "imag": jsonable(x.imag)}
    return x


def _dataset(group: h5py.Group, name: str, arr: np.ndarray) -> None:
    if np.iscomplexobj(arr):
        _dataset(group, f"{name}_real", np.ascontiguousarray(arr.real))
        _dataset(group, f"{name}_imag", np.ascontiguousarray(arr.imag))
        return
    if arr.dtype == bool:
        arr = arr.astype(np.int8)
    if arr.dtype.kind in ("U", "O"):
        group.create_dataset(name, data=np.asarray(arr, dtype=object).astype(str).astype(object), dtype=_STR)
        return
    kw = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if arr.ndim and arr.size > 1 else {}
    group.create_dataset(name, data=arr, **kw)


def _attr(group: h5py.Group, name: str, value: Any) -> None:
    if isinstance(value, (bool, np.bool_)):
        group.attrs[name] = np.int8(value)
    elif isinstance(value, str):
        group.attrs.create(name, value, dtype=_STR)
    elif isinstance(value, complex):
        group.attrs[f"{name}_real"] = value.real
        group.attrs[f"{name}_imag"] = value.imag
    else:
        group.attrs[name] = value


def write_attrs(group: h5py.Group, attrs: dict) -> None:
    """Scalars as attributes (bools as int8); anything else JSON-encoded."""
    for k, v in attrs.items():
        v = to_numpy(v)
        if v is None:
            continue
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, (bool, int, float, str, complex)):
            _attr(group, k, v)
        else:
            _attr(group, k, json.dumps(jsonable(v)))


def _is_table(x: list) -> bool:
    return bool(x) and all(isinstance(r, dict) for r in x)


def _write_table(group: h5py.Group, rows: list[dict]) -> None:
    """A list of records as one dataset per column (a netCDF-friendly table)."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    group.attrs["table_columns"] = json.dumps(columns)
    group.attrs["n_rows"] = len(rows)
    for c in columns:
        values = [r.get(c) for r in rows]
        if all(v is None or isinstance(v, (bool, np.bool_)) for v in values) and any(v is not None for v in values):
            _dataset(group, c, np.array([-1 if v is None else int(v) for v in values], dtype=np.int8))
        elif all(v is None or (isinstance(v, (int, float, np.number)) and not isinstance(v, bool)) for v in values):
            _dataset(group, c, np.array([np.nan if v is None else float(v) for v in values]))
        elif all(v is None or isinstance(v, str) for v in values):
            _dataset(group, c, np.array(["" if v is None else v for v in values], dtype=object))
        else:
            _dataset(group, c, np.array([json.dumps(jsonable(v)) for v in values], dtype=object))


def write_tree(group: h5py.Group, tree: Any) -> None:
    """Write a dict / dataclass into ``group``: arrays as datasets, scalars as attributes."""
    if dataclasses.is_dataclass(tree):
        items = [(f.name, getattr(tree, f.name)) for f in dataclasses.fields(tree)
                 if f.metadata.get("report", True)]
    else:
        items = list(tree.items())
    for name, value in items:
        value = to_numpy(value)
        if value is None:
            continue
        if isinstance(value, np.ndarray):
            _dataset(group, name, value)
        elif isinstance(value, (np.generic,)):
            _attr(group, name, value.item())
        elif isinstance(value, (bool, int, float, str, complex)):
            _attr(group, name, value)
        elif isinstance(value, dict) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            write_tree(group.create_group(name), value)
        elif isinstance(value, (list, tuple)):
            if _is_table(list(value)):
                _write_table(group.create_group(name), list(value))
            elif len(value) == 0:
                _dataset(group, name, np.zeros(0))
            elif all(isinstance(v, str) for v in value):
                _dataset(group, name, np.array(value, dtype=object))
            else:
                try:
                    arr = np.asarray([to_numpy(v) for v in value])
                except ValueError:
                    arr = None
                if arr is not None and arr.dtype.kind in "biufc":
                    _dataset(group, name, arr)
                else:
                    _attr(group, name, json.dumps(jsonable(value)))
        else:
            _attr(group, name, json.dumps(jsonable(value)))


def read_tree(group: h5py.Group) -> dict:
    """Read a group back as nested dicts (attributes under ``@name``)."""
    out: dict[str, Any] = {f"@{k}": _plain(v) for k, v in group.attrs.items()}
    for name, obj in group.items():
        if isinstance(obj, h5py.Group):
            out[name] = read_tree(obj)
        else:
            data = obj[()]
            if obj.dtype.kind == "O" or h5py.check_string_dtype(obj.dtype):
                data = obj.asstr()[()]
            out[name] = data
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v
