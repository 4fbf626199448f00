"""User cells: a torch module the user names with ``--cell package.module:Class``.

This is the only place rnnprobe imports code that is not its own, and it does
so only for a class the user names on the command line (trusted code); the
checkpoint still provides nothing but tensors.

The class must be a ``torch.nn.Module`` constructible with keyword arguments
(``cell_kwargs`` from the sidecar, or none) and provide

    step(h, u) -> h'          batched: h [B, S], u [B, d_in]
    readout(h) -> y           optional
    n_state / state_size / hidden_size      the state dimension S
    n_inputs / input_size                   d_in
    n_outputs / output_size                 d_out (optional; 0 without readout)
"""

from __future__ import annotations

import importlib
from typing import ClassVar

import torch

from rnnprobe.cells.base import Cell
from rnnprobe.errors import InputError

__all__ = ["UserCell", "import_cell_class", "module_outputs"]


def import_cell_class(spec: str) -> type:
    """Import ``package.module:Class`` (the user's trusted code)."""
    if ":" not in spec:
        raise InputError(f"--cell {spec!r} must have the form package.module:Class")
    mod_name, cls_name = spec.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise InputError(f"--cell {spec!r}: cannot import module {mod_name!r} ({e}); is it on PYTHONPATH?") from e
    cls = getattr(mod, cls_name, None)
    if cls is None:
        raise InputError(f"--cell {spec!r}: module {mod_name!r} has no attribute {cls_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise InputError(f"--cell {spec!r} is not a torch.nn.Module subclass")
    if not callable(getattr(cls, "step", None)):
        raise InputError(f"--cell {spec!r} has no step(h, u) method; rnnprobe drives cells through it")
    return cls


def module_outputs(module: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Outputs ``[B, T, d_out]`` of a user-cell module driven by ``inputs`` ``[B, T, d_in]`` from the zero state.

    ``module.step`` then ``module.readout`` at every step, with autograd: the ``forward`` that trains such a
    module (:class:`rnnprobe.samples.TrainedSample`) as :class:`UserCell` will run it.
    """
    s = torch.zeros(inputs.shape[0], module.n_state, dtype=inputs.dtype, device=inputs.device)
    outputs = []
    for t in range(inputs.shape[1]):
        s = module.step(s, inputs[:, t])
        outputs.append(module.readout(s))
    return torch.stack(outputs, dim=1)


def _size(module: torch.nn.Module, names: tuple[str, ...], what: str, spec: str, default=None) -> int:
    for n in names:
        v = getattr(module, n, None)
        if v is not None:
            return int(v)
    if default is not None:
        return default
    raise InputError(f"--cell {spec}: the module must define one of {', '.join(names)} (its {what})")


class UserCell(Cell):
    """Adapter from a user's module (``step``/``readout``) to the Cell interface."""

    kind: ClassVar[str] = "user"

    def __init__(self, module: torch.nn.Module, *, spec: str = "", kwargs: dict | None = None,
                 dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"):
        self.spec = spec or f"{type(module).__module__}:{type(module).__qualname__}"
        self.kwargs = dict(kwargs or {})
        self.dtype = dtype
        self.device = torch.device(device)
        self.module = module.to(dtype=dtype, device=self.device).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.n_state = _size(module, ("n_state", "state_size", "hidden_size"), "state dimension", self.spec)
        self.n_hidden = _size(module, ("n_hidden", "hidden_size", "n_state", "state_size"), "hidden size", self.spec)
        self.n_inputs = _size(module, ("n_inputs", "input_size"), "input width", self.spec, default=0)
        has_readout = callable(getattr(module, "readout", None))
        self.n_outputs = _size(module, ("n_outputs", "output_size"), "output width", self.spec,
                               default=0) if has_readout else 0

    def to(self, dtype=None, device=None) -> "UserCell":
        import copy

        return UserCell(copy.deepcopy(self.module), spec=self.spec, kwargs=self.kwargs,
                        dtype=dtype or self.dtype, device=device or self.device)

    def attrs(self) -> dict:
        return {"cell": self.kind, "class": self.spec, "n_state": self.n_state, "n_hidden": self.n_hidden,
                "n_inputs": self.n_inputs, "n_outputs": self.n_outputs}

    def arrays(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.module.state_dict().items()}

    def step(self, h: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        return self.module.step(h, self._inputs(u, h.shape[0]))

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        if self.n_outputs == 0:
            return super().readout(h)
        return self.module.readout(h)

    def hidden(self, s: torch.Tensor) -> torch.Tensor:
        fn = getattr(self.module, "hidden", None)
        return fn(s) if callable(fn) else s

    def matrices(self):
        fn = getattr(self.module, "matrices", None)
        if callable(fn):
            return fn()
        return super().matrices()

    def recurrent_operator(self):
        """The module's ``recurrent_operator()`` when it has one (e.g. a convolutional cell's
        :class:`~rnnprobe.operators.CircularConvOperator`), else the dense ``matrices()["W_hh"]``."""
        fn = getattr(self.module, "recurrent_operator", None)
        if callable(fn):
            return fn()
        return super().recurrent_operator()

    def describe(self) -> str:
        return f"user cell {self.spec}, state {self.n_state}, {self.n_inputs} inputs, {self.n_outputs} outputs"
