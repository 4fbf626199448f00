"""Pointwise nonlinearities phi and their derivatives phi', by name."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from rnnprobe.numerics import kernels

__all__ = ["Nonlinearity", "NONLINEARITIES", "get_nonlinearity"]


class Nonlinearity(NamedTuple):
    name: str
    phi: Callable[[torch.Tensor], torch.Tensor]
    dphi: Callable[[torch.Tensor], torch.Tensor]
    odd: bool  # phi(-x) = -phi(x): needed for the sign symmetry
    # phi' written in terms of y = phi(x), where that saves recomputing phi (tanh, sigmoid)
    dphi_from_output: Callable[[torch.Tensor], torch.Tensor] | None = None


def _dtanh(x):
    t = kernels.tanh(x)
    return 1.0 - t * t


def _dsigmoid(x):
    s = torch.sigmoid(x)
    return s * (1.0 - s)


NONLINEARITIES: dict[str, Nonlinearity] = {
    "tanh": Nonlinearity("tanh", kernels.tanh, _dtanh, True, lambda y: 1.0 - y * y),
    # relu'(0) = 0, as torch's autograd has it
    "relu": Nonlinearity("relu", torch.relu, lambda x: (x > 0).to(x.dtype), False),
    "linear": Nonlinearity("linear", lambda x: x, torch.ones_like, True),
    "softplus": Nonlinearity("softplus", torch.nn.functional.softplus, torch.sigmoid, False),
    "sigmoid": Nonlinearity("sigmoid", torch.sigmoid, _dsigmoid, False, lambda y: y * (1.0 - y)),
}

_ALIASES = {"identity": "linear", "none": "linear"}


def get_nonlinearity(name: str) -> Nonlinearity:
    from rnnprobe.errors import InputError

    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in NONLINEARITIES:
        raise InputError(
            f"nonlinearity {name!r} is not supported; choose one of {', '.join(NONLINEARITIES)} "
            "(--nonlinearity NAME)"
        )
    return NONLINEARITIES[key]
