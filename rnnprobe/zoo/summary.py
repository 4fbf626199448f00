"""The zoo's summary: one row per checkpoint x analysis, flattened for CSV, JSON lines and gates.

A row is a plain dict (it crosses process and dask boundaries) with the fixed
fields of :data:`FIXED` plus ``summary``, the analysis's own JSON summary
(nested). :func:`flat_row` flattens the summary with the analysis name as
prefix: ``{"spectral_radius": 0.9}`` of schur becomes ``schur.spectral_radius``,
nested dicts join with dots, list items get ``[i]`` (the first
:data:`MAX_LIST_ITEMS` in the files; gates see them all).

Rows can always be rebuilt from the files in the output folder
(:func:`rows_from_reports`): a report's JSON summary is an ``ok`` row, a
``<stem>.<analysis>.failed.json`` record a ``failed`` one.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Iterator

from rnnprobe.report.hdf5 import jsonable
from rnnprobe.report.writer import atomic_path

__all__ = [
    "FIXED", "PROVENANCE_KEYS", "MAX_LIST_ITEMS", "FAILED_SUFFIX", "flatten", "flat_row", "columns",
    "write_summary", "csv_text", "jsonl_text", "rows_from_reports", "result_summary", "checkpoint_values",
]

FIXED = ("checkpoint", "analysis", "status", "error", "seconds", "report", "checkpoint_sha256", "key",
         "gate_failures", "warnings")
# keys the pipeline adds around an analysis's own summary (not flattened into columns)
PROVENANCE_KEYS = frozenset({
    "analysis", "checkpoint", "checkpoint_sha256", "rnnprobe_version", "schema_version", "created", "seed",
    "device", "dtype", "task_source", "options", "warnings", "gate_failures", "report", "plots", "zoo_key",
})
MAX_LIST_ITEMS = 16
FAILED_SUFFIX = ".failed.json"


def result_summary(summary: dict) -> dict:
    """The analysis's own keys of a report's JSON summary (provenance removed)."""
    return {k: v for k, v in summary.items() if k not in PROVENANCE_KEYS}


def flatten(value: Any, prefix: str, *, max_items: int | None = MAX_LIST_ITEMS) -> Iterator[tuple[str, Any]]:
    """``(key, scalar)`` pairs of a nested JSON value: dicts join with ``.``, lists index with ``[i]``.

    Lists longer than ``max_items`` keep their first ``max_items`` items
    (``None``: all). An empty dict or list yields nothing.
    """
    if isinstance(value, dict):
        for k, v in value.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k), max_items=max_items)
    elif isinstance(value, (list, tuple)):
        items = value if max_items is None else value[:max_items]
        for i, v in enumerate(items):
            yield from flatten(v, f"{prefix}[{i}]", max_items=max_items)
    else:
        yield prefix, value


def flat_row(row: dict, *, max_items: int | None = MAX_LIST_ITEMS) -> dict:
    """The fixed fields of ``row`` followed by its summary flattened under the analysis name."""
    out = {k: row.get(k) for k in FIXED}
    for k in ("gate_failures", "warnings"):
        out[k] = " | ".join(row.get(k) or []) or None
    out.update(flatten(row.get("summary") or {}, row["analysis"], max_items=max_items))
    return out


def checkpoint_values(rows: Iterable[dict]) -> dict[str, dict[str, Any]]:
    """checkpoint -> every flattened summary key of its analyses (for gates; lists kept whole)."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        values = out.setdefault(row["checkpoint"], {})
        if row.get("summary"):
            values.update(flatten(row["summary"], row["analysis"], max_items=None))
            values.update({k: v for k, v in _whole_lists(row["summary"], row["analysis"])})
    return out


def _whole_lists(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    # the un-indexed key of a list, so that a gate naming it says "is a list; index it"
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _whole_lists(v, f"{prefix}.{k}")
    elif isinstance(value, list):
        yield prefix, value


def columns(flat_rows: list[dict]) -> list[str]:
    """The fixed columns, then every other key in order of first appearance."""
    seen = dict.fromkeys(FIXED)
    for r in flat_rows:
        seen.update(dict.fromkeys(r))
    return list(seen)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def csv_text(rows: list[dict]) -> str:
    """The rows as CSV (a header line, then one line per row; missing values empty)."""
    flat = [flat_row(r) for r in rows]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = columns(flat)
    w.writerow(cols)
    for r in flat:
        w.writerow([_cell(r.get(c)) for c in cols])
    return buf.getvalue()


def jsonl_text(rows: list[dict]) -> str:
    """The rows as JSON lines (one flattened object per row; NaN as null)."""
    return "".join(json.dumps(jsonable(flat_row(r)), allow_nan=False) + "\n" for r in rows)


def write_summary(out_dir: Path, rows: list[dict], *, name: str = "summary") -> tuple[Path, Path]:
    """Write ``<name>.csv`` and ``<name>.jsonl`` into ``out_dir``, each atomically; return their paths."""
    out_dir = Path(out_dir)
    paths = (out_dir / f"{name}.csv", out_dir / f"{name}.jsonl")
    for path, text in zip(paths, (csv_text(rows), jsonl_text(rows))):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return paths


def rows_from_reports(out_dir: Path, analysis_order: Iterable[str] = ()) -> list[dict]:
    """Rows rebuilt from the report JSON summaries and failure records under ``out_dir``.

    Reports give ``ok`` rows (``seconds`` is not recorded in a report, so it is
    empty), failure records ``failed`` rows. Rows are ordered by checkpoint,
    then by ``analysis_order`` (then by name). Unreadable JSON files are skipped:
    a report's JSON is written last and atomically, so an unreadable one is not
    rnnprobe's.
    """
    rows = []
    for path in sorted(Path(out_dir).rglob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict) or not isinstance(data.get("analysis"), str) or "checkpoint" not in data:
            continue
        if path.name.endswith(FAILED_SUFFIX) and data.get("status") == "failed":
            rows.append({k: data.get(k) for k in (*FIXED, "summary")})
        elif "report" in data and "checkpoint_sha256" in data:
            rows.append({
                "checkpoint": data["checkpoint"], "analysis": data["analysis"], "status": "ok", "error": None,
                "seconds": None, "report": data["report"], "checkpoint_sha256": data["checkpoint_sha256"],
                "key": data.get("zoo_key"), "gate_failures": list(data.get("gate_failures") or []),
                "warnings": list(data.get("warnings") or []), "summary": result_summary(data),
            })
    order = {name: i for i, name in enumerate(analysis_order)}
    rows.sort(key=lambda r: (str(r["checkpoint"]), order.get(r["analysis"], len(order)), r["analysis"]))
    return rows
