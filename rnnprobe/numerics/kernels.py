"""Elementwise and product kernels of the hot loops, fastest library per device.

The analyses write their inner loops once, in torch. On the CPU two of torch's
float64 kernels are much slower than NumPy's on the same buffers (measured on
the development machines, one thread; ``bench/schur.py`` reports both):

* ``tanh``: torch's vectorised double tanh runs at about 5 ns per element,
  NumPy's SIMD ufunc at about 1.7 ns;
* the small batched products of a rollout (``[V, B, N] @ [V, N, N]`` at
  N = 64): torch's MKL ``bmm`` reaches about half the speed of a large GEMM,
  NumPy's OpenBLAS about 0.75 of it.

So on the CPU these functions hand the tensors' memory to NumPy (zero copy:
``Tensor.numpy()`` shares it) and elsewhere call torch. Both paths compute
the same thing to rounding (tests/test_kernels.py compares them). The NumPy
path tracks no derivatives, so tensors that autograd, forward-mode AD or a
``torch.func`` transform follows always take torch's op.

``RNNPROBE_NUMPY_KERNELS=0`` in the environment, or ``with numpy_kernels(False):``,
keeps everything in torch (to compare, or to rule the NumPy path out).
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch._C._functorch import is_functorch_wrapped_tensor

__all__ = ["tanh", "tanh_", "matmul_", "on_numpy", "numpy_kernels"]

_enabled = os.environ.get("RNNPROBE_NUMPY_KERNELS", "1").strip() != "0"


@contextlib.contextmanager
def numpy_kernels(enabled: bool):
    """Within the block, use the NumPy kernels on the CPU (True) or torch everywhere (False)."""
    global _enabled
    before, _enabled = _enabled, bool(enabled)
    try:
        yield
    finally:
        _enabled = before


def _has_tangent(t: torch.Tensor) -> bool:
    """Whether ``t`` carries a forward-mode tangent (``torch.autograd.forward_ad``), which NumPy would drop."""
    return fwAD._current_level >= 0 and fwAD.unpack_dual(t).tangent is not None


def on_numpy(*tensors: torch.Tensor) -> bool:
    """Whether the NumPy kernels can take these tensors: on the CPU, real floating point, and
    neither tracked by autograd (reverse or forward mode) nor wrapped by a ``torch.func``
    transform (jvp, vmap, grad)."""
    return _enabled and all(
        t.device.type == "cpu" and t.layout == torch.strided and t.dtype in (torch.float64, torch.float32)
        and not t.requires_grad and not t.is_neg() and not is_functorch_wrapped_tensor(t)
        and not _has_tangent(t)
        for t in tensors)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """``tanh(x)`` into a new tensor (what ``torch.tanh`` does, autograd included where it applies)."""
    if on_numpy(x):
        out = torch.empty_like(x)
        np.tanh(x.numpy(), out=out.numpy())
        return out
    return torch.tanh(x)


def tanh_(x: torch.Tensor) -> torch.Tensor:
    """``x = tanh(x)`` in place; returns ``x``."""
    if on_numpy(x):
        a = x.numpy()
        np.tanh(a, out=a)
        return x
    return x.tanh_()


def matmul_(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = a @ b`` (batched like ``torch.matmul``) into ``out``; returns ``out``.

    ``out`` must not overlap ``a`` or ``b``.
    """
    if on_numpy(a, b, out) and a.dtype == b.dtype == out.dtype:
        np.matmul(a.numpy(), b.numpy(), out=out.numpy())
        return out
    return torch.matmul(a, b, out=out)
