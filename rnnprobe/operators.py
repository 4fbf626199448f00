"""The recurrent operator W_hh behind one interface: a dense matrix or a convolution on a lattice.

Every product with W_hh in rnnprobe goes through an :class:`Operator`, so a
dense network and a convolutional one share one code path. States are batched
as rows, ``x [..., N]``:

``matvec(x)``
    ``W x`` for every row (``x @ W^T``).
``rmatvec(x)``
    ``W^T x`` for every row (``x @ W``).
``mat_cols(X)`` / ``rmat_cols(X)``
    ``W X_b`` / ``W^T X_b`` for a stack of column blocks ``X [B, N, k]``.
``dense(limit=None)``
    the [N, N] matrix; structured operators build it only up to ``limit``
    units (:data:`DENSE_MAX` by default) and raise :class:`DenseTooLarge`
    beyond, saying what to use instead.
``eigenvalues()``, ``logabsdet()``, ``to(dtype, device)``, ``transpose()``,
``parameters()`` (what a report stores), ``attrs()``, ``describe()``.

Implementations:

:class:`DenseOperator`
    a tensor ``W [N, N]``; every product is the same GEMM the cells ran before
    operators existed.
:class:`CircularConvOperator`
    a convolution with periodic (circular) boundaries on a 1-D or 2-D lattice
    ``L`` with ``C`` channels (``N = C * prod(L)``). Products cost
    ``O(N log N)`` by ``torch.fft.rfftn``; the spectrum is exact from the FFT
    of the kernel (Magnasco 2023): a circulant is diagonalised by the Fourier
    basis, so its eigenvalues are the kernel's Fourier transform (one C x C
    block per frequency for C channels).
:class:`ZeroPaddedConvOperator`
    the same convolution with zero-padded boundaries (``nn.Conv2d``'s
    default). Not circulant (Toeplitz): products by ``torch.nn.functional.conv``,
    but its spectrum needs the dense matrix.

Layout and convention (the same everywhere in rnnprobe). A state on a lattice
``L = (L_0[, L_1])`` with ``C`` channels is flattened channel-major, row-major
over sites, as ``x.reshape(C, *L)`` reads it (the order of torch's
``[C, H, W]`` tensors). A kernel ``K [C_out, C_in, *L]`` acts by
cross-correlation, as torch's ``nn.Conv`` and the paper's stencils do,

    (W h)[o, x] = sum_{i, d} K[o, i, d] h[i, x + d]      (indices modulo L),

with the offset ``d = 0`` at index 0 (a circular offset: ``K[..., -1]`` is
the neighbour at ``x - 1``). So ``W`` is antisymmetric exactly when
``K[o, i, d] = -K[i, o, -d]``, and its eigenvalues at frequency ``w`` are
the eigenvalues of the C x C *symbol* ``M(w) = sum_d K[:, :, d] exp(2 pi i w.d / L)``
(``prod(L) * ifftn(K)``; for a real kernel ``conj(fftn(K))``; as a set, with
all frequencies, the same numbers as ``fftn(K)``).

Citations: Magnasco (2023), "Convolutional unitary or orthogonal recurrent
neural networks" (the FFT spectrum and the convolutional exponential).
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import numpy as np
import torch

from rnnprobe.errors import InputError

__all__ = [
    "Operator",
    "DenseOperator",
    "CircularConvOperator",
    "ZeroPaddedConvOperator",
    "DenseTooLarge",
    "DENSE_MAX",
    "as_operator",
    "parse_lattice",
    "format_lattice",
    "flip",
    "symbol",
    "from_symbol",
    "place_stencil",
]

DENSE_MAX = 4096
"""Largest number of units whose dense W_hh a structured operator builds (128 MiB in float64)."""


class DenseTooLarge(InputError):
    """The dense form of a structured operator was asked for above the size limit."""


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex64 if dtype in (torch.float32, torch.complex64) else torch.complex128


def parse_lattice(text, *, what: str = "--lattice") -> tuple[int, ...]:
    """``"64x64"``, ``"128"``, ``[64, 64]`` or ``(32,)`` -> a tuple of 1 or 2 positive sides."""
    if isinstance(text, (list, tuple)):
        parts = list(text)
    else:
        s = str(text).strip().lower().strip("[]() ").replace(" ", "").replace("*", "x").replace(",", "x")
        parts = [p for p in s.split("x")] if s else []
    try:
        sides = tuple(int(p) for p in parts)
        bad = any(float(p) != int(p) for p in parts)
    except (TypeError, ValueError):
        sides, bad = (), True
    if bad or len(sides) not in (1, 2) or any(n < 1 for n in sides):
        raise InputError(f"{what} {text!r} must be one or two positive sizes, e.g. 64x64 (2-D) or 128 (1-D)")
    return sides


def format_lattice(lattice) -> str:
    return "x".join(str(int(n)) for n in lattice)


def _lattice_words(lattice, periodic: bool = True) -> str:
    if len(lattice) == 1:
        return f"the {lattice[0]}-site {'ring' if periodic else 'chain'}"
    return f"the {format_lattice(lattice)} {'torus' if periodic else 'grid'}"


def _dims(lattice) -> tuple[int, ...]:
    return tuple(range(-len(lattice), 0))


def flip(K: torch.Tensor, ndim: int) -> torch.Tensor:
    """``K[..., d] -> K[..., -d]`` (circular offsets) over the last ``ndim`` axes: the central reflection."""
    return torch.roll(torch.flip(K, dims=_dims(K.shape[-ndim:])), shifts=(1,) * ndim, dims=_dims(K.shape[-ndim:]))


def symbol(K: torch.Tensor, ndim: int) -> torch.Tensor:
    """The symbol ``M(w) = sum_d K[..., d] exp(2 pi i w.d / L)`` of a kernel (``prod(L) ifftn(K)``), complex."""
    dims = _dims(K.shape[-ndim:])
    P = math.prod(K.shape[-ndim:])
    if not K.is_complex():
        return torch.conj(torch.fft.fftn(K, dim=dims)).resolve_conj()
    return torch.fft.ifftn(K, dim=dims) * P


def from_symbol(M: torch.Tensor, ndim: int, *, real: bool = True) -> torch.Tensor:
    """The kernel whose symbol is ``M`` (inverse of :func:`symbol`); its real part when ``real``."""
    dims = _dims(M.shape[-ndim:])
    P = math.prod(M.shape[-ndim:])
    K = torch.fft.fftn(M, dim=dims) / P
    return K.real.contiguous() if real else K


def place_stencil(stencil: torch.Tensor, lattice: tuple[int, ...], center=None, *,
                  dilation=1) -> torch.Tensor:
    """A small stencil ``[C, C, *k]`` (or ``[*k]``) as a lattice kernel ``[C, C, *L]`` (or ``[*L]``), circular offsets.

    Entry ``j`` (per axis) multiplies the site at offset ``dilation * j - center``
    (cross-correlation): ``center`` defaults to ``k // 2`` per axis, which is
    torch's ``padding`` for a 'same' convolution: a ``nn.Conv`` weight with
    ``padding=p`` is ``place_stencil(weight, L, center=p)`` (see
    :meth:`CircularConvOperator.from_conv`). Offsets that wrap onto the same
    site add up, as a circular convolution does.
    """
    nd = len(lattice)
    s = stencil
    if s.dim() == nd:
        s = s[None, None]
    if s.dim() != nd + 2:
        raise InputError(f"a stencil on a {nd}-D lattice must be [*k] or [C, C, *k] with {nd} spatial axes; "
                         f"got shape {list(stencil.shape)}")
    ks = s.shape[2:]
    center = tuple(k // 2 for k in ks) if center is None else tuple(np.broadcast_to(np.asarray(center), (nd,)))
    dil = tuple(np.broadcast_to(np.asarray(dilation), (nd,)))
    # scatter-add along each axis in turn: index (dil * j - center) mod L
    out = s
    for a in range(nd):
        idx = (torch.arange(ks[a], device=s.device) * int(dil[a]) - int(center[a])) % lattice[a]
        shape = list(out.shape)
        shape[2 + a] = lattice[a]
        out = torch.zeros(shape, dtype=s.dtype, device=s.device).index_add_(2 + a, idx, out)
    return out[0, 0] if stencil.dim() == nd else out


def _too_large(desc: str, n: int, limit: int, itemsize: int) -> DenseTooLarge:
    gb = n * n * itemsize / 1e9
    return DenseTooLarge(
        f"W_hh is {desc} ({n} units): its dense form [{n} x {n}] would take {gb:.3g} GB, over the limit of "
        f"{limit} units for a dense W_hh; this step needs the dense matrix (Jacobians, Schur form, eigenvectors): "
        "use a smaller lattice, or what works through the operator (rnnprobe schur's FFT path, lyapunov with "
        "--k K, fixedpoints)"
    )


# ---------------------------------------------------------------------------------
# the interface
# ---------------------------------------------------------------------------------
class Operator(abc.ABC):
    """A linear map on R^N applied to row-batched states; see the module docstring."""

    kind: ClassVar[str] = "operator"
    exact_spectrum: ClassVar[bool] = False
    """Whether :meth:`eigenvalues` is exact without the dense matrix (O(N log N))."""

    n: int
    dtype: torch.dtype
    device: torch.device

    def _set_lattice(self, weights: torch.Tensor, lattice: tuple[int, ...]) -> None:
        """The geometry both convolution operators record: ``weights`` [C, C, ...] on ``lattice``."""
        self.lattice = lattice
        self.ndim = len(lattice)
        self.channels = int(weights.shape[0])
        self.sites = math.prod(lattice)
        self.n = self.channels * self.sites
        self.dtype = weights.dtype
        self.device = weights.device

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    @abc.abstractmethod
    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """``W x`` for each row of ``x [..., N]``, into a new tensor (callers may update it in place)."""

    @abc.abstractmethod
    def rmatvec(self, x: torch.Tensor) -> torch.Tensor:
        """``W^T x`` for each row of ``x [..., N]``, into a new tensor (callers may update it in place)."""

    def matvec_add(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``W x + c`` for each row of ``x [B, N]`` (``c`` [N] or [B, N]); one fused GEMM for a dense W."""
        return self.matvec(x).add_(c)

    def rmatvec_add(self, x: torch.Tensor, c: torch.Tensor, *, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
        """``alpha W^T x + beta c`` for each row of ``x [B, N]`` (``c`` [B, N]); one fused GEMM for a dense W."""
        out = self.rmatvec(x)
        if alpha != 1.0:
            out.mul_(alpha)
        return out.add_(c, alpha=beta) if beta != 0.0 else out

    def mat_cols(self, X: torch.Tensor) -> torch.Tensor:
        """``W X_b`` for every b of ``X [B, N, k]``."""
        return self.matvec(X.transpose(1, 2)).transpose(1, 2)

    def rmat_cols(self, X: torch.Tensor) -> torch.Tensor:
        """``W^T X_b`` for every b of ``X [B, N, k]``."""
        return self.rmatvec(X.transpose(1, 2)).transpose(1, 2)

    @abc.abstractmethod
    def dense(self, limit: int | None = None) -> torch.Tensor:
        """The [N, N] matrix (structured operators: only up to ``limit`` units)."""

    @abc.abstractmethod
    def to(self, dtype: torch.dtype | None = None, device=None) -> "Operator":
        """A copy on another dtype / device."""

    @abc.abstractmethod
    def transpose(self) -> "Operator":
        """``W^T`` as an operator of the same kind."""

    @abc.abstractmethod
    def parameters(self) -> dict[str, torch.Tensor]:
        """The tensors that define the operator, by report name (``W_hh`` or ``W_hh_kernel``)."""

    def attrs(self) -> dict:
        """Scalar attributes for reports (``recurrent``: the operator's kind, ...)."""
        return {"recurrent": self.kind}

    def describe(self) -> str:
        return f"{self.kind} W_hh, N={self.n}"

    def describe_short(self) -> str:
        return self.describe()

    def eigenvalues(self) -> torch.Tensor:
        """All N eigenvalues (complex); the dense path for operators without an exact structured one."""
        return torch.linalg.eigvals(self.dense())

    def logabsdet(self) -> float:
        """``ln |det W|``."""
        return float(torch.linalg.slogdet(self.dense())[1])

    def check_finite(self) -> None:
        from rnnprobe.cells.base import check_finite

        for name, t in self.parameters().items():
            check_finite(name, t)


# ---------------------------------------------------------------------------------
# dense
# ---------------------------------------------------------------------------------
class DenseOperator(Operator):
    """A dense ``W [N, N]``: the products are the GEMMs the cells always ran."""

    kind: ClassVar[str] = "dense"

    def __init__(self, W: torch.Tensor):
        if not isinstance(W, torch.Tensor) or W.dim() != 2 or W.shape[0] != W.shape[1]:
            shape = list(W.shape) if hasattr(W, "shape") else type(W).__name__
            raise InputError(f"W_hh must be square [N, N]; got shape {shape}")
        self.W = W
        self.n = W.shape[0]
        self.dtype = W.dtype
        self.device = W.device

    def matvec(self, x):
        return x @ self.W.T

    def rmatvec(self, x):
        return x @ self.W

    def matvec_add(self, x, c):
        return torch.addmm(c, x, self.W.T)

    def rmatvec_add(self, x, c, *, alpha=1.0, beta=1.0):
        return torch.addmm(c, x, self.W, beta=beta, alpha=alpha)

    @staticmethod
    def _cols(M: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        # one GEMM over all B*k columns (torch.matmul would broadcast M and run B small products)
        B, N, k = X.shape
        if k == 1:  # one column each: [B, N] @ M^T, no transposed copies in or out
            return (X[:, :, 0] @ M.T)[:, :, None]
        Y = M @ X.permute(1, 0, 2).reshape(N, B * k)
        return Y.reshape(M.shape[0], B, k).permute(1, 0, 2)

    def mat_cols(self, X):
        return self._cols(self.W, X)

    def rmat_cols(self, X):
        return self._cols(self.W.T, X)

    def dense(self, limit=None):
        return self.W

    def to(self, dtype=None, device=None):
        return DenseOperator(self.W.to(dtype=dtype or self.dtype, device=device or self.device))

    def transpose(self):
        return DenseOperator(self.W.T)

    def parameters(self):
        return {"W_hh": self.W}

    def describe(self):
        return f"dense W_hh [{self.n} x {self.n}]"


def as_operator(W, *, dtype: torch.dtype | None = None, device=None) -> Operator:
    """An :class:`Operator` from an operator or a square matrix (array or tensor)."""
    if isinstance(W, Operator):
        return W if dtype is None and device is None else W.to(dtype=dtype, device=device)
    t = W if isinstance(W, torch.Tensor) else torch.as_tensor(np.asarray(W))
    return DenseOperator(t.to(dtype=dtype or (t.dtype if t.is_floating_point() else torch.float64),
                              device=device or t.device))


# ---------------------------------------------------------------------------------
# circular convolution
# ---------------------------------------------------------------------------------
class CircularConvOperator(Operator):
    """A circular (periodic) convolution on a 1-D or 2-D lattice with C channels.

    ``CircularConvOperator(kernel, lattice=None, *, generator=None, construction="kernel", complex_channels=False)``

    Arguments:
        kernel: ``[C, C, *L]`` (or ``[*L]`` for one channel) real lattice kernel,
            cross-correlation convention, offset 0 at index 0 (module docstring).
            Small stencils go through :meth:`from_stencil` / :meth:`from_conv`.
        lattice: the lattice ``L`` (default: the kernel's spatial shape).
        generator: optional kernel ``G`` of the same shape with ``W = exp(G)``
            (a convolutional exponential), kept so that analyses can report
            the generator's antisymmetry.
        construction: how the kernel was made, in words (``kernel``,
            ``exp(generator)``, ``bipartite cos/sin``, ...), for reports.
        complex_channels: the 2C channels are ``[Re, Im]`` of C complex ones
            (a realified complex convolution): reports then speak of
            anti-Hermitian rather than antisymmetric generators.

    Products: ``rfftn`` of the rows, one multiplication by the symbol per
    frequency (a C x C matrix for C channels), ``irfftn``.
    """

    kind: ClassVar[str] = "circular-conv"
    exact_spectrum: ClassVar[bool] = True

    def __init__(self, kernel: torch.Tensor, lattice=None, *, generator: torch.Tensor | None = None,
                 construction: str = "kernel", complex_channels: bool = False):
        K = kernel if isinstance(kernel, torch.Tensor) else torch.as_tensor(np.asarray(kernel))
        if K.is_complex():
            raise InputError("a CircularConvOperator kernel must be real; realify complex kernels "
                             "(rnnprobe.numerics.conv.realify)")
        if not K.is_floating_point():
            K = K.to(torch.float64)
        if lattice is None:
            if K.dim() in (1, 2):
                lattice = tuple(K.shape)
            elif K.dim() in (3, 4) and K.shape[0] == K.shape[1]:
                lattice = tuple(K.shape[2:])
            else:
                raise InputError(f"a lattice kernel must be [*L] or [C, C, *L] on a 1-D or 2-D lattice; got shape "
                                 f"{list(K.shape)}")
        lattice = tuple(int(n) for n in lattice)
        nd = len(lattice)
        if nd not in (1, 2):
            raise InputError(f"lattice {format_lattice(lattice)} must be 1-D or 2-D")
        if K.dim() == nd:
            K = K[None, None]
        if K.dim() != nd + 2 or K.shape[0] != K.shape[1] or tuple(K.shape[2:]) != lattice:
            raise InputError(f"the recurrent kernel must be [C, C, {', '.join(map(str, lattice))}] (or "
                             f"[{', '.join(map(str, lattice))}] for one channel) on the lattice "
                             f"{format_lattice(lattice)}; got shape {list(kernel.shape)}")
        self.kernel = K
        self._set_lattice(K, lattice)
        if generator is not None:
            G = torch.as_tensor(generator).to(dtype=K.dtype, device=K.device)
            G = G[None, None] if G.dim() == nd else G
            if G.shape != K.shape:
                raise InputError(f"the generator kernel has shape {list(G.shape)}; it must match the kernel "
                                 f"{list(K.shape)}")
            generator = G
        self.generator = generator
        self.construction = construction
        self.complex_channels = bool(complex_channels)
        self._dims = _dims(lattice)
        # the symbol on rfft's half grid, [C, C, *Lr]: products multiply by it
        self._half = torch.conj(torch.fft.rfftn(K, dim=self._dims)).resolve_conj()
        self._dense_cache: torch.Tensor | None = None

    # ---- construction ----------------------------------------------------------------
    @classmethod
    def from_stencil(cls, stencil, lattice, center=None, *, dilation=1, **kw) -> "CircularConvOperator":
        """From a small cross-correlation stencil ``[*k]`` / ``[C, C, *k]`` centred at ``center`` (default k//2)."""
        s = stencil if isinstance(stencil, torch.Tensor) else torch.as_tensor(np.asarray(stencil))
        if not s.is_floating_point():
            s = s.to(torch.float64)
        lattice = parse_lattice(lattice)
        return cls(place_stencil(s, lattice, center, dilation=dilation), lattice, **kw)

    @classmethod
    def from_conv(cls, weight, lattice, padding=None, dilation=1, **kw) -> "CircularConvOperator":
        """From a torch ``nn.Conv1d``/``nn.Conv2d`` weight ``[C, C, *k]`` with ``padding_mode='circular'``.

        ``y[o, x] = sum_{i, j} w[o, i, j] h[i, x + dilation * j - padding]``
        (torch's cross-correlation on the circularly padded input); ``padding``
        defaults to 'same' (``dilation * (k - 1) / 2``).
        """
        w = weight if isinstance(weight, torch.Tensor) else torch.as_tensor(np.asarray(weight))
        lattice = parse_lattice(lattice)
        ks = w.shape[2:]
        dil = tuple(int(d) for d in np.broadcast_to(np.asarray(dilation), (len(lattice),)))
        if padding is None:
            padding = tuple(d * (k - 1) // 2 for d, k in zip(dil, ks))
        return cls(place_stencil(w if w.is_floating_point() else w.double(), lattice, padding, dilation=dil),
                   lattice, **kw)

    # ---- products --------------------------------------------------------------------
    def _apply(self, x: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if shape[-1] != self.n:
            raise InputError(f"a state of width {shape[-1]} (shape {list(shape)}) does not fit the convolution on "
                             f"{self.channels} x {format_lattice(self.lattice)} = {self.n} units")
        X = x.reshape(-1, self.channels, *self.lattice)
        if X.shape[0] == 0:  # an empty batch (MKL's FFT refuses one)
            return x.new_zeros(shape)
        F = torch.fft.rfftn(X, dim=self._dims)
        if self.channels == 1:
            Y = F * M[0, 0] if (F.requires_grad or M.requires_grad) else F.mul_(M[0, 0])
        else:
            Y = torch.einsum("oi...,bi...->bo...", M, F)
        return torch.fft.irfftn(Y, s=self.lattice, dim=self._dims).reshape(shape)

    def matvec(self, x):
        return self._apply(x, self._half)

    def rmatvec(self, x):
        # W^T has the conjugate-transposed symbol
        return self._apply(x, torch.conj(self._half).transpose(0, 1).resolve_conj())

    # ---- dense form ------------------------------------------------------------------
    def dense(self, limit=None):
        limit = DENSE_MAX if limit is None else int(limit)
        if self.n > limit:
            raise _too_large(self.describe_short(), self.n, limit, self.kernel.element_size())
        if self._dense_cache is None:
            # W[(o, x), (i, x')] = K[o, i, x' - x]: gathered exactly from the kernel's entries
            idx = [(torch.arange(L, device=self.device)[None, :] - torch.arange(L, device=self.device)[:, None]) % L
                   for L in self.lattice]
            if self.ndim == 1:
                B = self.kernel[:, :, idx[0]]  # [C, C, x, x']
                W = B.permute(0, 2, 1, 3)
            else:
                L0, L1 = self.lattice
                B = self.kernel[:, :, idx[0].reshape(L0, 1, L0, 1), idx[1].reshape(1, L1, 1, L1)]
                W = B.permute(0, 2, 3, 1, 4, 5)  # [o, x0, x1, i, x0', x1']
            self._dense_cache = W.reshape(self.n, self.n).contiguous()
        return self._dense_cache

    # ---- spectrum (exact, from the FFT) -------------------------------------------------
    def blocks(self) -> torch.Tensor:
        """The symbol on the full frequency grid as ``[P, C, C]`` blocks (P = prod(L), C-order over frequencies)."""
        M = symbol(self.kernel, self.ndim)  # [C, C, *L]
        return M.reshape(self.channels, self.channels, self.sites).permute(2, 0, 1)

    def eigenvalues(self) -> torch.Tensor:
        """All N eigenvalues, exact: the FFT of the kernel (one C x C block's eigenvalues per frequency).

        Order: frequencies in C order over the lattice's FFT grid, channels within.
        """
        Bk = self.blocks()
        if self.channels == 1:
            return Bk.reshape(-1)
        return torch.linalg.eigvals(Bk).reshape(-1)

    def singular_values(self) -> torch.Tensor:
        """``[P, C]`` singular values of each frequency's block (``|FFT(K)|`` for one channel)."""
        Bk = self.blocks()
        if self.channels == 1:
            return Bk.abs().reshape(-1, 1)
        return torch.linalg.svdvals(Bk)

    def logabsdet(self) -> float:
        Bk = self.blocks()
        if self.channels == 1:
            return float(torch.log(Bk.abs()).sum())
        return float(torch.linalg.slogdet(Bk)[1].sum())

    # ---- the rest of the interface ----------------------------------------------------
    def to(self, dtype=None, device=None):
        dtype, device = dtype or self.dtype, device or self.device
        G = None if self.generator is None else self.generator.to(dtype=dtype, device=device)
        return CircularConvOperator(self.kernel.to(dtype=dtype, device=device), self.lattice, generator=G,
                                    construction=self.construction, complex_channels=self.complex_channels)

    def transpose(self):
        KT = flip(self.kernel, self.ndim).transpose(0, 1).contiguous()
        G = None if self.generator is None else flip(self.generator, self.ndim).transpose(0, 1).contiguous()
        return CircularConvOperator(KT, self.lattice, generator=G, construction=f"transpose of {self.construction}",
                                    complex_channels=self.complex_channels)

    def parameters(self):
        out = {"W_hh_kernel": self.kernel}
        if self.generator is not None:
            out["W_hh_generator"] = self.generator
        return out

    def attrs(self):
        return {"recurrent": self.kind, "lattice": format_lattice(self.lattice), "channels": self.channels,
                "boundary": "circular", "construction": self.construction,
                "complex_channels": self.complex_channels}

    def describe_short(self) -> str:
        ch = f"{self.channels} channels" if self.channels > 1 else "1 channel"
        return f"a circular convolution on {_lattice_words(self.lattice)} with {ch}"

    def describe(self):
        return f"{self.describe_short()} ({self.construction}), N={self.n}"


# ---------------------------------------------------------------------------------
# zero-padded convolution
# ---------------------------------------------------------------------------------
class ZeroPaddedConvOperator(Operator):
    """A 'same' convolution with zero-padded boundaries: torch's ``nn.Conv`` default.

    ``ZeroPaddedConvOperator(weight [C, C, *k], lattice, padding=None, dilation=1)``

    Products are ``torch.nn.functional.conv1d/conv2d`` (and their transposes
    for ``W^T``). The matrix is block Toeplitz, not circulant: the FFT of the
    kernel is *not* its spectrum, so :meth:`eigenvalues` uses the dense
    matrix (within :data:`DENSE_MAX`).
    """

    kind: ClassVar[str] = "zero-padded-conv"
    exact_spectrum: ClassVar[bool] = False

    def __init__(self, weight: torch.Tensor, lattice, padding=None, dilation=1):
        w = weight if isinstance(weight, torch.Tensor) else torch.as_tensor(np.asarray(weight))
        if not w.is_floating_point():
            w = w.to(torch.float64)
        lattice = parse_lattice(lattice)
        nd = len(lattice)
        if w.dim() != nd + 2 or w.shape[0] != w.shape[1]:
            raise InputError(f"a recurrent convolution weight on a {nd}-D lattice must be [C, C, *k] with {nd} "
                             f"spatial axes (out channels = in channels); got shape {list(w.shape)}")
        ks = tuple(w.shape[2:])
        dil = tuple(int(d) for d in np.broadcast_to(np.asarray(dilation), (nd,)))
        pad = tuple(d * (k - 1) // 2 for d, k in zip(dil, ks)) if padding is None else \
            tuple(int(p) for p in np.broadcast_to(np.asarray(padding), (nd,)))
        for L, k, p, d in zip(lattice, ks, pad, dil):
            if 2 * p != d * (k - 1):
                raise InputError(f"a recurrent convolution must keep the lattice size: kernel {k}, dilation {d} and "
                                 f"padding {p} give {L + 2 * p - d * (k - 1)} sites from {L}; use padding "
                                 f"{d * (k - 1) / 2:g} ('same')")
        self.weight = w
        self._set_lattice(w, lattice)
        self.padding = pad
        self.dilation = dil
        self._dense_cache: torch.Tensor | None = None

    def _fn(self, transposed: bool):
        F = torch.nn.functional
        if self.ndim == 1:
            return F.conv_transpose1d if transposed else F.conv1d
        return F.conv_transpose2d if transposed else F.conv2d

    def _apply(self, x: torch.Tensor, transposed: bool) -> torch.Tensor:
        shape = x.shape
        if shape[-1] != self.n:
            raise InputError(f"a state of width {shape[-1]} does not fit the convolution on {self.channels} x "
                             f"{format_lattice(self.lattice)} = {self.n} units")
        X = x.reshape(-1, self.channels, *self.lattice)
        if X.shape[0] == 0:
            return x.new_zeros(shape)
        Y = self._fn(transposed)(X, self.weight, padding=self.padding, dilation=self.dilation)
        return Y.reshape(shape)

    def matvec(self, x):
        return self._apply(x, False)

    def rmatvec(self, x):
        return self._apply(x, True)

    def dense(self, limit=None):
        limit = DENSE_MAX if limit is None else int(limit)
        if self.n > limit:
            raise _too_large(self.describe_short(), self.n, limit, self.weight.element_size())
        if self._dense_cache is None:
            eye = torch.eye(self.n, dtype=self.dtype, device=self.device)
            self._dense_cache = self.matvec(eye).T.contiguous()  # rows of I -> columns W e_j
        return self._dense_cache

    def to(self, dtype=None, device=None):
        return ZeroPaddedConvOperator(self.weight.to(dtype=dtype or self.dtype, device=device or self.device),
                                      self.lattice, self.padding, self.dilation)

    def transpose(self):
        # the adjoint of a 'same' zero-padded correlation is the correlation with the flipped,
        # channel-transposed weight (same padding)
        wt = torch.flip(self.weight, dims=_dims(self.weight.shape[2:])).transpose(0, 1).contiguous()
        pad = tuple(d * (k - 1) - p for d, k, p in zip(self.dilation, self.weight.shape[2:], self.padding))
        return ZeroPaddedConvOperator(wt, self.lattice, pad, self.dilation)

    def parameters(self):
        return {"W_hh_weight": self.weight}

    def attrs(self):
        return {"recurrent": self.kind, "lattice": format_lattice(self.lattice), "channels": self.channels,
                "boundary": "zeros", "padding": list(self.padding), "dilation": list(self.dilation)}

    def describe_short(self) -> str:
        return (f"a zero-padded convolution ({'x'.join(map(str, self.weight.shape[2:]))} kernel) on "
                f"{_lattice_words(self.lattice, False)} with {self.channels} channel(s)")

    def describe(self):
        return f"{self.describe_short()}, N={self.n}"
