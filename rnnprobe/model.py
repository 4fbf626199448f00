"""The canonical model: a cell plus what was read about it from its file.

``Model.cell`` is the dynamics (:class:`rnnprobe.cells.Cell`); the rest is
provenance that reports and ``rnnprobe inspect`` show: which file keys became
which canonical parameter, what was ignored, what was assumed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from rnnprobe.cells import Cell

__all__ = ["Model"]


@dataclasses.dataclass
class Model:
    """A loaded recurrent network.

    Attributes:
        cell: the dynamics, on the analysis dtype/device.
        source: the checkpoint path (``None`` for a model built in code).
        format: the file format read (``torch``, ``npz``, ``safetensors``, ``hdf5``, ``keras``, ...).
        keys: canonical name -> key in the file (``{"W_hh": "rnn.weight_hh_l0", ...}``).
        ignored: keys present in the file and not used.
        notes: what the loader inferred or assumed, in words (shown by ``inspect``).
        dt: time per step in the model's own time units, if known (``tau = dt / alpha``).
        task: the task specification the model was trained on (sidecar), if known.
        trained_dtype: the dtype of the weights in the file (``float32``, ...):
            it sets the floor of any equality test, e.g. equivariance errors.
        metadata: everything else from the sidecar / file metadata.
    """

    cell: Cell
    source: Path | None = None
    format: str = "memory"
    keys: dict[str, str] = dataclasses.field(default_factory=dict)
    ignored: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    dt: float | None = None
    task: str | None = None
    trained_dtype: str = "float64"
    metadata: dict = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.source.name if self.source else "model"

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "Model":
        return dataclasses.replace(self, cell=self.cell.to(dtype=dtype, device=device))

    def with_cell(self, cell: Cell) -> "Model":
        return dataclasses.replace(self, cell=cell)
