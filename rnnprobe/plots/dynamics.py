"""Plots of ``rnnprobe dynamics``: trajectories and cycles in the top-2 PC plane, multipliers, invariant drift."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot"]


def _np(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _trajectories(result) -> Figure:
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    pca = result.pca
    for k, tr in enumerate(_np(pca["transients"])):
        ok = np.isfinite(tr).all(1)
        ax.plot(tr[ok, 0], tr[ok, 1], lw=0.5, alpha=0.35, color="C7",
                label="from the initial states" if k == 0 else None)
        ax.plot(tr[:1, 0], tr[:1, 1], ".", color="C7", ms=3)
    for k, tr in enumerate(_np(pca["trajectories"])):
        ok = np.isfinite(tr).all(1)
        ax.plot(tr[ok, 0], tr[ok, 1], lw=0.6, alpha=0.6, color="0.3", label="after the warm-up" if k == 0 else None)
    for name in sorted(k for k in pca if k.startswith("cycle_") and not k.endswith("_flow")):
        c = _np(pca[name])
        closed = np.vstack([c, c[:1]])
        ax.plot(closed[:, 0], closed[:, 1], lw=2.2, label=f"{name.replace('_', ' ')} (map)")
        if name + "_flow" in pca:
            f = _np(pca[name + "_flow"])
            ax.plot(f[:, 0], f[:, 1], "k--", lw=1.2, label=f"{name.replace('_', ' ')} (flow)")
    fp = _np(pca["fixed_points"])
    if fp.size:
        ax.plot(fp[:, 0], fp[:, 1], "o", ms=7, mfc="none", mec="C3", label="fixed points")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(f"attractor: {result.classification}")
    ax.legend(fontsize=7, loc="best")
    return fig


def _multipliers(result) -> Figure:
    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot()
    th = np.linspace(0, 2 * np.pi, 400)
    ax.plot(np.cos(th), np.sin(th), color="0.6", lw=1, label="unit circle")
    for name, c in sorted(result.cycles.items()):
        if c.get("floquet") is not None:
            mu = np.asarray(c["floquet"])
            ax.plot(mu.real, mu.imag, "o", mfc="none", ms=8, label=f"{name.replace('_', ' ')}: Floquet (flow)")
        mu = np.asarray(c["map_multipliers"])
        ax.plot(mu.real, mu.imag, "x", ms=7, label=f"{name.replace('_', ' ')}: map over one period")
    ev = np.asarray(result.euler_eigenvalues)
    if ev.size:
        for i, row in enumerate(result.euler):
            m = 1.0 + result.dt * ev[i]
            ax.plot(m.real, m.imag, ".", ms=5, label=f"1 + dt lambda at {row['state']}")
    ax.axhline(0, color="0.85", lw=0.5)
    ax.axvline(0, color="0.85", lw=0.5)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("Re")
    ax.set_ylabel("Im")
    ax.set_title("multipliers and the unit circle")
    ax.legend(fontsize=7, loc="best")
    return fig


def _invariant(result) -> Figure | None:
    inv = result.invariant
    if not inv or not inv.get("applies"):
        return None
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    t = _np(inv["series_time"])
    H = _np(inv["series"])
    Hf = _np(inv["series_flow"])
    ax.plot(t, H, label=f"map (dt = {result.dt:g}): drift {inv['drift']:.3g} per time unit")
    ax.plot(t[: Hf.size], Hf, "--", label=f"flow (RK4): drift {inv['drift_flow']:.3g} per time unit")
    ax.set_xlabel(f"time ({result.time_unit})", fontsize=8)
    ax.set_ylabel("H(t) = sum Phi(W h + U u + b)")
    ax.set_title("motion invariant drift" + (" (W skew: H conserved by the flow)" if inv.get("conserved_by_flow")
                                              else ""), fontsize=9)
    ax.legend(fontsize=8)
    return fig


def plot(result, model) -> dict[str, Figure]:
    """``{"trajectories", "floquet", "invariant"}`` figures (the last only for residual cells)."""
    figs = {"trajectories": _trajectories(result), "floquet": _multipliers(result)}
    inv = _invariant(result)
    if inv is not None:
        figs["invariant"] = inv
    return figs
