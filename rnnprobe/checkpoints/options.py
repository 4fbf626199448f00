"""What the user says about a checkpoint that the file does not: ``LoadOptions``.

Every field maps onto one command-line option (``--key``, ``--alpha``, ...).
``None`` means "not given": the sidecar, then the file's own metadata, then a
documented default decide. The options check themselves on construction.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import torch

from rnnprobe.cells import FORMS, get_nonlinearity
from rnnprobe.errors import InputError

__all__ = ["LoadOptions", "CANONICAL_KEYS", "DIRECTIONS"]

CANONICAL_KEYS = ("W_hh", "W_uh", "W_r", "b", "b_r")
DIRECTIONS = ("forward", "reverse")


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """How to read a checkpoint (see :func:`rnnprobe.checkpoints.load_checkpoint`).

    Attributes:
        keys: canonical name -> path of the tensor in the file (``--key W_hh=rnn.weight_hh_l0``);
            names are ``W_hh``, ``W_uh``, ``W_r``, ``b``, ``b_r``; paths may use ``.`` or ``/``.
        alpha: leak in (0, 1] (``--alpha``); ``dt / tau`` for leaky networks.
        nonlinearity: phi (``--nonlinearity``): tanh, relu, linear, softplus or sigmoid.
        dt: time per step in the model's time units (``--dt``).
        form: ``leaky``, ``rate-outside`` or ``residual`` (``--form``).
        eps: Euler step of a residual cell (``--eps``); it becomes the cell's alpha.
        layer: which layer of a multi-layer torch RNN (``--layer``).
        direction: ``forward`` or ``reverse`` for a bidirectional torch RNN (``--direction``).
        readout: the readout Linear's key or prefix (``--readout``); ``none`` for no readout.
        cell: ``package.module:Class`` of a user cell (``--cell``), trusted code the user names.
        trust_pickle: load torch pickles with ``weights_only=False`` (``--trust-pickle``).
            DANGEROUS: a pickle can run any code.
        max_bytes: refuse files (and decompressed members) larger than this (``--max-bytes``).
        max_hidden: refuse models with more hidden units than this (``--max-hidden``).
        lattice: the lattice a convolutional recurrence runs on (``--lattice 64x64``, 1-D or 2-D),
            which torch Conv weights do not store.
        dtype, device: where the loaded cell lives (float64 on the CPU by default).
    """

    keys: Mapping[str, str] = dataclasses.field(default_factory=dict)
    alpha: float | None = None
    nonlinearity: str | None = None
    dt: float | None = None
    form: str | None = None
    eps: float | None = None
    layer: int = 0
    direction: str = "forward"
    readout: str | None = None
    cell: str | None = None
    trust_pickle: bool = False
    max_bytes: int = 2 * 1024**3
    max_hidden: int = 16384
    lattice: str | None = None
    dtype: torch.dtype = torch.float64
    device: str = "cpu"

    def __post_init__(self) -> None:
        keys = dict(self.keys or {})
        for name, path in keys.items():
            if name not in CANONICAL_KEYS:
                raise InputError(
                    f"--key {name}={path}: {name!r} is not a canonical name; use one of {', '.join(CANONICAL_KEYS)}"
                )
            if not isinstance(path, str) or not path.strip():
                raise InputError(f"--key {name}={path!r}: give the tensor's path in the file, e.g. rnn.weight_hh_l0")
        object.__setattr__(self, "keys", keys)
        if self.alpha is not None and not (math.isfinite(self.alpha) and 0.0 < self.alpha):
            raise InputError(f"--alpha {self.alpha} must be a positive number (in (0, 1] for leaky cells)")
        if self.eps is not None and not (math.isfinite(self.eps) and self.eps > 0.0):
            raise InputError(f"--eps {self.eps} must be a positive number (the residual Euler step)")
        if self.dt is not None and not (math.isfinite(self.dt) and self.dt > 0.0):
            raise InputError(f"--dt {self.dt} must be a positive number (time per step)")
        if self.nonlinearity is not None:
            get_nonlinearity(self.nonlinearity)
        if self.form is not None and self.form not in FORMS:
            raise InputError(f"--form {self.form!r} is not one of {', '.join(FORMS)}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise InputError(f"--layer {self.layer!r} must be an integer >= 0")
        if self.direction not in DIRECTIONS:
            raise InputError(f"--direction {self.direction!r} is not one of {', '.join(DIRECTIONS)}")
        if not isinstance(self.max_bytes, int) or self.max_bytes <= 0:
            raise InputError(f"--max-bytes {self.max_bytes!r} must be a positive number of bytes")
        if not isinstance(self.max_hidden, int) or self.max_hidden <= 0:
            raise InputError(f"--max-hidden {self.max_hidden!r} must be a positive integer")
        if self.cell is not None and ":" not in self.cell:
            raise InputError(f"--cell {self.cell!r} must have the form package.module:Class")
        if self.lattice is not None:
            from rnnprobe.operators import parse_lattice

            parse_lattice(self.lattice)
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise InputError(f"dtype {self.dtype!r} must be a floating torch dtype (float64 or float32)")
