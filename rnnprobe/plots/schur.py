"""Plots of ``rnnprobe schur``: |T| heatmap, eigenvalues, ablation bars, pairs heatmap.

``plot(result, model) -> {name: Figure}``; the report writer saves each as
``<stem>.schur.<name>.png``. Figures are built with ``matplotlib.figure.Figure``
(no pyplot state, any backend).
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

__all__ = ["plot"]

_R, _C = "#c0392b", "#2c7fb8"


def _heatmap(result) -> Figure:
    T = np.abs(np.asarray(result.T))
    n = T.shape[0]
    m = int(result.n_retained)
    fig = Figure(figsize=(6.2, 5.2))
    ax = fig.add_subplot()
    positive = T[T > 0]
    if positive.size:
        vmax = float(positive.max())
        vmin = max(float(positive.min()), vmax * 1e-8)
        img = ax.imshow(np.where(T > 0, T, np.nan), norm=LogNorm(vmin=vmin, vmax=vmax), cmap="viridis",
                        interpolation="nearest")
        fig.colorbar(img, ax=ax, label="|T_ij| (log scale)")
    if 0 < m < n:
        for x in (m - 0.5,):
            ax.axhline(x, color="w", lw=1.2)
            ax.axvline(x, color="w", lw=1.2)
        ax.text((m / 2) / n, 1.01, "R", transform=ax.transAxes, ha="center", va="bottom", color=_R,
                fontweight="bold")
        ax.text(((m + n) / 2) / n, 1.01, "C", transform=ax.transAxes, ha="center", va="bottom", color=_C,
                fontweight="bold")
    ax.set_title(f"|T| of the ordered real Schur form (order {result.order}, |R| = {m})", fontsize=10, pad=18)
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    return fig


def _eigenvalues(result) -> Figure:
    lam = np.asarray(result.eigenvalues)
    keep = np.asarray(result.retained, dtype=bool)
    rho = float(result.spectral_radius)
    fig = Figure(figsize=(7.0, 5.2))
    ax = fig.add_subplot()
    t = np.linspace(0, 2 * np.pi, 400)
    ax.plot(np.cos(t), np.sin(t), color="0.6", lw=1, label="unit circle")
    if getattr(result, "retain", None) is None and rho > 0:  # R by the threshold, not by --retain K
        r = result.retain_alpha * rho
        ax.plot(r * np.cos(t), r * np.sin(t), color=_R, lw=0.8, ls="--", label=f"alpha rho = {r:.3g}")
    ax.scatter(lam.real[keep], lam.imag[keep], s=18, color=_R, label=f"R ({int(keep.sum())})", zorder=3)
    ax.scatter(lam.real[~keep], lam.imag[~keep], s=18, color=_C, label=f"C ({int((~keep).sum())})", zorder=3)
    ax.axhline(0, color="0.85", lw=0.6)
    ax.axvline(0, color="0.85", lw=0.6)
    ax.set_aspect("equal")
    ax.set_xlabel("Re lambda")
    ax.set_ylabel("Im lambda")
    ax.set_title(f"eigenvalues of W_hh (rho = {rho:.4g})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def _bars(result) -> Figure:
    rows = result.ablations
    names = [" + ".join(r["blocks"]) or "none" for r in rows]
    d = np.array([np.nan if r["delta_fvu"] is None else r["delta_fvu"] for r in rows], dtype=float)
    fig = Figure(figsize=(max(6.0, 0.7 * len(rows) + 2), 4.4))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    ax.bar(x, d, color="0.35", label="ablation dFVU", zorder=2)
    bands = (("control_delta_fvu", "#e67e22", -0.22, "dense controls, median and 10-90%"),
             ("control_pattern_delta_fvu", "#8e44ad", 0.22, "pattern controls, median and 10-90%"))
    for attr, color, off, label in bands:
        c = getattr(result, attr, None)
        if c is None:
            continue
        c = np.asarray(c, dtype=float)
        for i in range(min(len(rows), c.shape[0])):
            vals = c[i][np.isfinite(c[i])]
            if vals.size == 0:
                continue
            lo, med, hi = np.percentile(vals, [10, 50, 90])
            ax.errorbar(x[i] + off, med, yerr=[[med - lo], [hi - med]], fmt="o", ms=3, color=color, capsize=3,
                        zorder=3, label=label)
            label = None
    eps = [r.get("invariant") for r in rows]
    if any(e is not None for e in eps):
        ax.axhline(0, color="0.5", lw=0.6)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("dFVU (ablated - unablated)")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_title("coupling ablations against random controls of the same norm", fontsize=10)
    ax.legend(fontsize=8)
    fig.subplots_adjust(bottom=0.3)
    return fig


def _pairs(result) -> Figure:
    S = np.asarray(result.pairs_sensitivity, dtype=float)
    D = np.asarray(result.pairs_delta_fvu, dtype=float)
    G = S.shape[0]
    fig = Figure(figsize=(9.0, 4.2))
    for k, (M, title) in enumerate(((D, "dFVU"), (S, "sensitivity dFVU / rel_norm"))):
        ax = fig.add_subplot(1, 2, k + 1)
        img = ax.imshow(M, cmap="magma", interpolation="nearest")
        fig.colorbar(img, ax=ax)
        ax.set_xticks(range(G))
        ax.set_yticks(range(G))
        ax.set_xticklabels([f"G{h + 1}" for h in range(G)])
        ax.set_yticklabels([f"G{g + 1}" for g in range(G)])
        ax.set_xlabel("from group (columns)")
        ax.set_ylabel("into group (rows)")
        ax.set_title(title, fontsize=10)
    return fig


def plot(result, model) -> dict[str, Figure]:
    """The figures of a :class:`rnnprobe.analyses.schur.SchurResult`."""
    if result.method == "fft":  # a convolution: no Schur vectors, the spectrum over the lattice's frequencies
        from rnnprobe.plots.convexp import spectrum_figure

        return {"eigenvalues": _eigenvalues(result),
                "spectrum": spectrum_figure(result.symbol_modulus,
                                            "|eigenvalue| over the lattice's frequencies (FFT of the kernel)")}
    figs = {"T": _heatmap(result), "eigenvalues": _eigenvalues(result)}
    if result.ablations:
        figs["ablation"] = _bars(result)
    if result.pairs_sensitivity is not None:
        figs["pairs"] = _pairs(result)
    return figs
