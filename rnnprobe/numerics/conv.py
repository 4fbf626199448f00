"""Functions of convolution kernels by FFT (Magnasco 2023): exponential, sine, cosine, and their checks.

A kernel is ``[*L]`` (one channel) or ``[C, C, *L]`` on a 1-D or 2-D lattice,
in the convention of :mod:`rnnprobe.operators` (cross-correlation, offset 0 at
index 0). Its operator ``W_K`` is diagonalised by the Fourier basis, so an
analytic function of the operator is the operator of a kernel computed
frequency by frequency (Magnasco 2023, eqs. 1.2-1.3):

    f(W_K) = W_G,   symbol(G)(w) = f(symbol(K)(w))

(for C channels ``f`` is the matrix function of each C x C block). This costs
``O(N log N)`` instead of the ``O(N^3)`` of a dense ``expm``. For a real
kernel ``G = ifftn(f(fftn(K)))``, the paper's formula; the imaginary part
left by rounding is dropped and reported.

Public functions (stable signatures):

``conv_function(K, fn="exp", t=1.0)`` -> ``(G, imag_residual)``
    ``exp``, ``sin`` or ``cos`` of ``t K``.
``conv_exp(K, t=1.0)``, ``conv_sin(K, t=1.0)``, ``conv_cos(K, t=1.0)`` -> ``G``.
``adjoint_kernel(K)``
    the kernel of ``W_K^H`` (central reflection, channel transpose, conjugate).
``antisymmetry_error(K)``, ``anti_hermitian_error(K)``, ``symmetry_error(K)``
    ``||W + W^H||_F / (2 ||W||_F)`` (0: antisymmetric / anti-Hermitian; 1:
    symmetric / Hermitian) and its mirror image.
``unitarity_error(K)``
    ``max | sigma - 1 |`` over the singular values of every frequency's block
    (one channel: ``max | |FFT(K)| - 1 |``); 0 exactly when ``W_K`` is
    orthogonal / unitary.
``antisymmetrize(U)``, ``anti_hermitian_from_real(U)``
    ``(U - U~)/2`` and Magnasco's bijection ``(U - U~)/2 + i (U + U~)/2``
    (``U~`` the adjoint kernel), whose exponentials are orthogonal / unitary.
``realify(K)``
    a complex ``[C, C, *L]`` kernel as the real ``[2C, 2C, *L]`` kernel acting
    on ``[Re z, Im z]``: ``[[Re K, -Im K], [Im K, Re K]]``.
``bipartite_generator(S)``, ``bipartite_kernel(S, t=1.0)``
    Magnasco's bipartite X/P architecture (section 8): for a symmetric kernel
    S, the 2C-channel generator ``[[0, S], [-S, 0]]`` (antisymmetric) and its
    exponential ``[[cos S, sin S], [-sin S, cos S]]`` (orthogonal).
``circulant_nonnormality(op, steps=200)``
    Henrici departure, commutator, eigenvector condition, 2-norm and transient
    amplification of a circular convolution, exactly, frequency by frequency.
"""

from __future__ import annotations

import math

import torch

from rnnprobe.errors import InputError
from rnnprobe.operators import flip, from_symbol, symbol

__all__ = [
    "FUNCTIONS",
    "canonical_kernel",
    "conv_function",
    "conv_exp",
    "conv_sin",
    "conv_cos",
    "adjoint_kernel",
    "antisymmetry_error",
    "anti_hermitian_error",
    "symmetry_error",
    "unitarity_error",
    "antisymmetrize",
    "anti_hermitian_from_real",
    "realify",
    "bipartite_generator",
    "bipartite_kernel",
    "circulant_nonnormality",
]

FUNCTIONS = ("exp", "sin", "cos")


def canonical_kernel(K) -> tuple[torch.Tensor, int, bool]:
    """``K`` as ``[C, C, *L]``, the lattice's number of axes, and whether it was ``[*L]`` (one channel)."""
    K = K if isinstance(K, torch.Tensor) else torch.as_tensor(K)
    if not (K.is_floating_point() or K.is_complex()):
        K = K.to(torch.float64)
    if K.dim() in (1, 2):
        return K[None, None], K.dim(), True
    if K.dim() in (3, 4) and K.shape[0] == K.shape[1]:
        return K, K.dim() - 2, False
    raise InputError(f"a kernel must be [*L] or [C, C, *L] on a 1-D or 2-D lattice; got shape {list(K.shape)}")


def _blocks(M: torch.Tensor, nd: int) -> torch.Tensor:
    C = M.shape[0]
    return M.reshape(C, C, -1).permute(2, 0, 1)


def _unblocks(B: torch.Tensor, shape) -> torch.Tensor:
    C = B.shape[-1]
    return B.permute(1, 2, 0).reshape(C, C, *shape)


def _matrix_function(B: torch.Tensor, fn: str) -> torch.Tensor:
    """``fn`` of each square block of ``B [P, C, C]`` (complex)."""
    if B.shape[-1] == 1:
        return {"exp": torch.exp, "sin": torch.sin, "cos": torch.cos}[fn](B)
    if fn == "exp":
        return torch.linalg.matrix_exp(B)
    ep, em = torch.linalg.matrix_exp(1j * B), torch.linalg.matrix_exp(-1j * B)
    return (ep + em) / 2 if fn == "cos" else (ep - em) / 2j


def conv_function(K, fn: str = "exp", t: float = 1.0) -> tuple[torch.Tensor, float]:
    """conv_function(K, fn="exp", t=1.0) -> (G, imag_residual)

    The kernel ``G`` with ``W_G = f(t W_K)`` for ``f`` = ``exp``, ``sin`` or
    ``cos``, computed frequency by frequency (Magnasco 2023, eqs. 1.2-1.3).

    Returns ``G`` in ``K``'s layout (real for a real ``K``, complex for a
    complex one) and, for a real ``K``, ``max |Im G| / max |G|`` left by
    rounding (0.0 for complex kernels).
    """
    if fn not in FUNCTIONS:
        raise InputError(f"--function {fn!r} must be one of {', '.join(FUNCTIONS)}")
    if not math.isfinite(t):
        raise InputError(f"--t {t} must be finite")
    K4, nd, single = canonical_kernel(K)
    M = symbol(K4 * t, nd)
    F = _unblocks(_matrix_function(_blocks(M, nd), fn), K4.shape[2:])
    G = from_symbol(F, nd, real=False)
    residual = 0.0
    if not K4.is_complex():
        Gd = G.detach()
        scale = float(Gd.abs().max()) if Gd.numel() else 0.0
        residual = float(Gd.imag.abs().max()) / scale if scale > 0 else 0.0
        G = G.real.contiguous()
    return (G[0, 0] if single else G), residual


def conv_exp(K, t: float = 1.0) -> torch.Tensor:
    """The convolutional exponential ``e^{tK}`` (Magnasco 2023, eq. 1.2)."""
    return conv_function(K, "exp", t)[0]


def conv_sin(K, t: float = 1.0) -> torch.Tensor:
    """The convolutional sine ``sin(tK)`` (Magnasco 2023, eq. 1.3)."""
    return conv_function(K, "sin", t)[0]


def conv_cos(K, t: float = 1.0) -> torch.Tensor:
    """The convolutional cosine ``cos(tK)`` (Magnasco 2023, eq. 1.3)."""
    return conv_function(K, "cos", t)[0]


def adjoint_kernel(K) -> torch.Tensor:
    """The kernel of ``W_K^H``: ``K~[o, i, d] = conj(K[i, o, -d])`` (the transpose for real kernels)."""
    K4, nd, single = canonical_kernel(K)
    A = torch.conj(flip(K4, nd).transpose(0, 1)).resolve_conj().contiguous()
    return A[0, 0] if single else A


def _as_kernel(K) -> torch.Tensor:
    """A kernel given as an array or a tensor, as a tensor (arrays are copied, tensors kept)."""
    return K if isinstance(K, torch.Tensor) else torch.as_tensor(K)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    nb = float(torch.linalg.vector_norm(b))
    return float(torch.linalg.vector_norm(a)) / nb if nb > 0 else 0.0


def antisymmetry_error(K) -> float:
    """``||W + W^H||_F / (2 ||W||_F)`` of the kernel's operator: 0 for an antisymmetric kernel
    (anti-Hermitian if complex), 1 for a symmetric one."""
    K = _as_kernel(K)
    return _relative(K + adjoint_kernel(K), 2 * K)


anti_hermitian_error = antisymmetry_error
"""The same measure for complex kernels: ``||K + K~||_F / (2 ||K||_F)``, 0 exactly when ``K = -K~``."""


def symmetry_error(K) -> float:
    """``||W - W^H||_F / (2 ||W||_F)``: 0 for a symmetric (Hermitian) kernel."""
    K = _as_kernel(K)
    return _relative(K - adjoint_kernel(K), 2 * K)


def unitarity_error(K) -> float:
    """``max | sigma - 1 |`` over the singular values of every frequency's block of ``W_K``.

    One channel: ``max_w | |FFT(K)(w)| - 1 |``. Zero exactly when ``W_K`` is orthogonal (unitary).
    """
    K4, nd, _ = canonical_kernel(K)
    B = _blocks(symbol(K4, nd), nd)
    sv = B.abs().reshape(-1) if B.shape[-1] == 1 else torch.linalg.svdvals(B).reshape(-1)
    return float((sv - 1).abs().max())


def antisymmetrize(U) -> torch.Tensor:
    """``(U - U~) / 2``: the antisymmetric part (its exponential is orthogonal)."""
    U = _as_kernel(U)
    return (U - adjoint_kernel(U)) / 2


def anti_hermitian_from_real(U) -> torch.Tensor:
    """Magnasco's bijection (section 4): ``(U - U~)/2 + i (U + U~)/2`` for a real kernel U; anti-Hermitian."""
    U = _as_kernel(U)
    A = adjoint_kernel(U)
    return torch.complex((U - A) / 2, (U + A) / 2)


def realify(K) -> torch.Tensor:
    """A complex kernel ``[C, C, *L]`` (or ``[*L]``) as the real ``[2C, 2C, *L]`` one on ``[Re z, Im z]``."""
    K4, _, _ = canonical_kernel(K)
    if not K4.is_complex():
        K4 = torch.complex(K4, torch.zeros_like(K4))
    a, b = K4.real, K4.imag
    return torch.cat([torch.cat([a, -b], dim=1), torch.cat([b, a], dim=1)], dim=0).contiguous()


def bipartite_generator(S) -> torch.Tensor:
    """``[[0, S], [-S, 0]]`` as a 2C-channel kernel (X channels first, then P): the generator of
    Magnasco's bipartite architecture (antisymmetric when S is symmetric)."""
    S4, _, _ = canonical_kernel(S)
    Z = torch.zeros_like(S4)
    return torch.cat([torch.cat([Z, S4], dim=1), torch.cat([-S4, Z], dim=1)], dim=0).contiguous()


def bipartite_kernel(S, t: float = 1.0) -> torch.Tensor:
    """``[[cos tS, sin tS], [-sin tS, cos tS]]`` (2C channels, X then P): Magnasco's eq. 1.5 coupling,
    orthogonal for a symmetric kernel S."""
    c, s = conv_cos(S, t), conv_sin(S, t)
    c4, _, _ = canonical_kernel(c)
    s4, _, _ = canonical_kernel(s)
    return torch.cat([torch.cat([c4, s4], dim=1), torch.cat([-s4, c4], dim=1)], dim=0).contiguous()


# ---------------------------------------------------------------------------------
# the spectrum of a circular convolution, frequency by frequency
# ---------------------------------------------------------------------------------
def circulant_nonnormality(op, *, steps: int = 200) -> tuple[dict, "np.ndarray"]:
    """circulant_nonnormality(op, *, steps=200) -> (stats, transient_norms)

    Departure from normality of a :class:`~rnnprobe.operators.CircularConvOperator`,
    exactly, from its per-frequency C x C blocks ``M(w)`` (``W`` is unitarily
    similar to ``blockdiag_w M(w)``, so Frobenius and 2-norms, commutators and
    powers are those of the blocks):

    * ``henrici``: ``sqrt(||W||_F^2 - sum |lambda|^2)``; 0 exactly for one
      channel (a circulant is normal), for C channels computed per block (to
      about ``sqrt(eps) ||W||_F`` near normality); ``henrici_relative`` divides by ``||W||_F``.
    * ``commutator``: ``||W W^T - W^T W||_F / ||W||_F^2``.
    * ``eigvec_condition``: ``cond_2`` of the eigenvector matrix with unit
      columns (1 for one channel; for C channels ``max sigma_max / min sigma_min``
      over the blocks' eigenvector matrices, inf when one is defective).
    * ``norm2``: ``||W||_2 = max_w sigma_max(M(w))``; ``norm2_over_rho``.
    * ``transient_amplification``: ``max_{1<=t<=steps} ||W^t||_2 = max_w ||M(w)^t||_2``,
      stopping at the first power of norm below 1 (which bounds all later ones),
      at ``transient_argmax``.
    * ``frobenius``, ``spectral_radius``.

    Returns ``(stats, norms)`` with ``norms[t-1] = ||W^t||_2`` for the powers computed.
    """
    import numpy as np

    from rnnprobe.numerics.schur import nonnormality_stats

    Bk = op.blocks()  # [P, C, C] complex
    C = op.channels
    fro2 = float((Bk.abs() ** 2).sum())
    if C == 1:
        lam_abs = Bk.abs().reshape(-1)
        rho = float(lam_abs.max())
        henrici = 0.0
        comm = 0.0
        kappa = 1.0
        norm2 = rho
    else:
        lam, V = torch.linalg.eig(Bk)
        rho = float(lam.abs().max())
        henrici = math.sqrt(max(0.0, fro2 - float((lam.abs() ** 2).sum())))
        BH = Bk.conj().transpose(1, 2)
        comm2 = float((torch.linalg.matrix_norm(Bk @ BH - BH @ Bk) ** 2).sum())
        comm = math.sqrt(comm2) / fro2 if fro2 > 0 else 0.0
        V = V / torch.linalg.vector_norm(V, dim=1, keepdim=True)
        sv = torch.linalg.svdvals(V)
        smin = float(sv[:, -1].min())
        kappa = float(sv[:, 0].max()) / smin if smin > 0 else math.inf
        norm2 = float(torch.linalg.svdvals(Bk)[:, 0].max())
    fro = math.sqrt(fro2)
    norms: list[float] = []
    if steps > 0:
        if C == 1:
            for t in range(1, steps + 1):
                norms.append(rho ** t)
                if rho ** t < 1.0:
                    break
        else:
            P = Bk
            for t in range(1, steps + 1):
                if t > 1:
                    P = P @ Bk
                x = float(torch.linalg.svdvals(P)[:, 0].max())
                norms.append(x)
                if x < 1.0:
                    break
    arr = np.asarray(norms, dtype=np.float64)
    stats = nonnormality_stats(henrici=henrici, couplings=None, blocks=None, frobenius=fro,
                               coupling_fraction=henrici / fro if fro > 0 else 0.0, commutator=comm,
                               eigvec_condition=kappa, norm2=norm2, rho=rho, norms=arr, steps=steps)
    stats.update({"frobenius": fro, "spectral_radius": rho})
    return stats, arr
