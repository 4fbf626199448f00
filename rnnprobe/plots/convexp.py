"""Plots of convolution kernels: ``rnnprobe convexp`` (kernel in and out, profile) and the FFT spectrum image.

``plot(result, model) -> {name: Figure}``; :func:`spectrum_figure` is also
used by ``rnnprobe schur``'s FFT path. Kernels are shown centred (offset 0 in
the middle, as ``numpy.fft.fftshift`` lays them out), channel (0, 0).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot", "spectrum_figure", "kernel_axes"]


def _lattice_kernel(K: np.ndarray) -> np.ndarray:
    """Channel (0, 0) of a ``[*L]`` / ``[C, C, *L]`` kernel."""
    K = np.asarray(K)
    return K if K.ndim in (1, 2) else K[0, 0]


def kernel_axes(ax, K: np.ndarray, title: str) -> None:
    """Draw a kernel centred on its origin: an image (2-D) or a stem of offsets (1-D)."""
    k = np.fft.fftshift(_lattice_kernel(K))
    if k.ndim == 2:
        H, W = k.shape
        extent = (-(W // 2) - 0.5, W - W // 2 - 0.5, H - H // 2 - 0.5, -(H // 2) - 0.5)
        vmax = float(np.abs(k).max()) or 1.0
        img = ax.imshow(k, cmap="RdBu_r", vmin=-vmax, vmax=vmax, extent=extent, interpolation="nearest")
        ax.figure.colorbar(img, ax=ax, fraction=0.046)
        ax.set_xlabel("offset (axis 1)")
        ax.set_ylabel("offset (axis 0)")
    else:
        L = k.size
        x = np.arange(L) - L // 2
        ax.plot(x, k, marker="o", ms=2.5, lw=0.8)
        ax.axhline(0, color="0.7", lw=0.6)
        ax.set_xlabel("offset")
    ax.set_title(title, fontsize=9)


def spectrum_figure(modulus: np.ndarray, title: str) -> Figure:
    """``|eigenvalue|`` against the lattice frequency (centred), with the unit level marked for 1-D lattices."""
    m = np.fft.fftshift(np.asarray(modulus, dtype=float))
    fig = Figure(figsize=(6.0, 4.6), layout="constrained")
    ax = fig.add_subplot()
    top = float(m.max()) if m.size else 1.0
    flat = m.size and float(np.ptp(m)) <= 1e-9 * max(top, 1e-300)
    if flat:  # e.g. a unitary kernel: every |eigenvalue| equal to rounding; do not colour the rounding
        title += f"\n(all {top:.15g} to {float(np.ptp(m)):.1e})"
    if m.ndim == 2:
        H, W = m.shape
        extent = (-(W // 2) - 0.5, W - W // 2 - 0.5, H - H // 2 - 0.5, -(H // 2) - 0.5)
        lim = dict(vmin=0.0, vmax=1.1 * top) if flat else {}
        img = ax.imshow(m, cmap="viridis", extent=extent, interpolation="nearest", **lim)
        fig.colorbar(img, ax=ax, label="|eigenvalue|")
        ax.set_xlabel("frequency (axis 1)")
        ax.set_ylabel("frequency (axis 0)")
    else:
        w = np.arange(m.size) - m.size // 2
        ax.plot(w, m, lw=1.0)
        if flat:
            ax.set_ylim(0.0, 1.1 * top)
        ax.axhline(1.0, color="0.6", lw=0.8, ls="--", label="unit modulus")
        ax.set_xlabel("frequency")
        ax.set_ylabel("|eigenvalue|")
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def plot(result, model) -> dict[str, Figure]:
    """The figures of a :class:`rnnprobe.analyses.convexp.ConvexpResult`: kernels and a log profile."""
    fig = Figure(figsize=(10.5, 4.2), layout="constrained")
    kernel_axes(fig.add_subplot(1, 2, 1), result.kernel_in, f"input kernel ({result.of})")
    kernel_axes(fig.add_subplot(1, 2, 2), result.kernel_out, f"{result.function}_conv({result.t:g} K)")
    prof = Figure(figsize=(6.0, 4.4), layout="constrained")
    ax = prof.add_subplot()
    k = np.fft.fftshift(_lattice_kernel(result.kernel_out))
    line = k[k.shape[0] // 2] if k.ndim == 2 else k
    x = np.arange(line.size) - line.size // 2
    ax.semilogy(x, np.abs(line) + np.finfo(float).tiny, lw=1.0)
    ax.set_xlabel("offset along the last axis, through the origin")
    ax.set_ylabel(f"|{result.function}_conv kernel|")
    ax.set_title("profile of the output kernel (a Gaussian of width sqrt(2t) for exp of the Laplacian)",
                 fontsize=9)
    return {"kernels": fig, "profile": prof, "spectrum": spectrum_figure(result.output_modulus,
                                                                         "|eigenvalue| of the output kernel")}
