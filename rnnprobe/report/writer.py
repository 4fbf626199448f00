"""The one report writer: HDF5 + plots + JSON summary, for every analysis.

For checkpoint ``path/to/net.pt`` and analysis ``schur`` under ``out_dir``:

* ``net.schur.h5``: root attributes (provenance), ``/model`` (the canonical
  parameters as loaded and the cell's attributes), ``/schur`` (the options as
  attributes, the result's arrays as datasets).
* ``net.schur.<plot>.png`` for each figure.
* ``net.schur.json``: the summary; written last, so its presence means the
  report is complete (the zoo's resume logic relies on this).

Every file is written under a temporary name in the same folder and renamed
when complete: an interrupted run leaves no half-written report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import torch

from rnnprobe._version import __version__
from rnnprobe.report.hdf5 import jsonable, write_attrs, write_tree

__all__ = ["SCHEMA_VERSION", "Provenance", "ReportPaths", "write_report", "report_stem", "atomic_path",
           "write_json_atomic"]

SCHEMA_VERSION = 1


@dataclasses.dataclass
class Provenance:
    """Where a report came from (the root attributes of the HDF5 file)."""

    checkpoint: str = ""
    checkpoint_sha256: str = ""
    argv: str = ""
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float64"
    created: str = dataclasses.field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )

    def attrs(self, analysis: str) -> dict[str, Any]:
        return {
            "rnnprobe_version": __version__,
            "schema_version": SCHEMA_VERSION,
            "analysis": analysis,
            "created": self.created,
            "argv": self.argv,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "seed": int(self.seed),
            "device": self.device,
            "dtype": self.dtype,
            "torch_version": torch.__version__,
            "numpy_version": np.__version__,
        }


@dataclasses.dataclass
class ReportPaths:
    h5: Path
    json: Path
    plots: dict[str, Path]

    def all(self) -> list[Path]:
        return [self.h5, *self.plots.values(), self.json]


def report_stem(checkpoint: str | Path) -> str:
    """``path/to/net.pt`` -> ``net``."""
    name = Path(checkpoint).name
    stem = Path(name).stem
    return stem or name


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` on success."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json_atomic(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(jsonable(data), indent=2) + "\n")


def _model_tree(model) -> dict[str, Any]:
    cell = model.cell
    tree: dict[str, Any] = {k: v for k, v in cell.arrays().items() if v is not None}
    tree.update(cell.attrs())
    tree.update({
        "format": model.format,
        "keys": json.dumps(model.keys),
        "notes": json.dumps(model.notes),
        "trained_dtype": model.trained_dtype,
    })
    if model.dt is not None:
        tree["dt"] = float(model.dt)
    if model.task:
        tree["task"] = model.task
    return tree


def write_report(out_dir: str | Path, stem: str, analysis: str, *, model, result, options,
                 provenance: Provenance, summary: dict, figures: dict | None = None) -> ReportPaths:
    """Write the HDF5 report, the plots and the JSON summary; return their paths.

    ``summary`` is the complete JSON summary (the caller adds provenance keys
    to the result's own ``summary()``); ``figures`` maps plot names to
    matplotlib Figures, which are closed once saved.
    """
    from rnnprobe.analyses.base import options_dict

    out = Path(out_dir)
    base = f"{stem}.{analysis}"
    paths = ReportPaths(h5=out / f"{base}.h5", json=out / f"{base}.json", plots={})

    for name, fig in (figures or {}).items():
        target = out / f"{base}.{name}.png"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
        paths.plots[name] = target

    with atomic_path(paths.h5) as tmp:
        with h5py.File(tmp, "w") as f:
            write_attrs(f, provenance.attrs(analysis))
            write_tree(f.create_group("model"), _model_tree(model))
            g = f.create_group(analysis)
            write_attrs(g, {f"option_{k}": v for k, v in options_dict(options).items()})
            write_tree(g, result)

    full = dict(summary)
    full["report"] = str(paths.h5)
    full["plots"] = {k: str(v) for k, v in paths.plots.items()}
    write_json_atomic(paths.json, full)
    return paths
