"""Plots of ``rnnprobe lyapunov``: the spectrum with error bars, running estimates, the tangent exponent."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot"]

_MAX_CURVES = 8


def _spectrum(result, model) -> Figure:
    lam = np.asarray(result.exponents)
    err = np.nan_to_num(np.asarray(result.stderr), nan=0.0)
    k = lam.size
    fig = Figure(figsize=(6.5, 4.0))
    ax = fig.add_subplot()
    i = np.arange(1, k + 1)
    ax.errorbar(i, lam, yerr=err, fmt="o" if k <= 64 else ".", ms=3 if k <= 64 else 2, capsize=2 if k <= 64 else 0,
                color="tab:blue", ecolor="tab:gray")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xlabel("index i")
    ax.set_ylabel("lambda_i (per step)")
    title = (f"{model.name}: {result.classification}, {k} exponents, {result.inits} inits x {result.steps} steps; "
             f"D_KY = {result.kaplan_yorke_dimension:.3g}")
    if result.sum_rule_residual is not None:
        title += f"\nsum rule residual {result.sum_rule_residual:.2g}"
    ax.set_title(title, fontsize=9)
    if result.dt is not None:
        sec = ax.secondary_yaxis("right", functions=(lambda y: y / result.dt, lambda y: y * result.dt))
        sec.set_ylabel("per time unit")
    return fig


def _running(result, model) -> Figure:
    steps = np.asarray(result.running_steps)
    R = np.asarray(result.running)
    k = R.shape[1] if R.ndim == 2 else 0
    fig = Figure(figsize=(6.5, 4.0))
    ax = fig.add_subplot()
    if k:
        show = np.arange(k) if k <= _MAX_CURVES else np.unique(np.r_[np.arange(_MAX_CURVES - 2), k - 2, k - 1])
        for i in show:
            ax.plot(steps, R[:, i], lw=1, label=f"lambda_{i + 1}")
            ax.axhline(result.exponents[i], color="tab:gray", lw=0.5, ls=":")
        ax.set_xscale("log")
        ax.legend(fontsize=7, ncol=2)
    ax.set_xlabel("accumulated steps T")
    ax.set_ylabel("running estimate (per step)")
    note = "" if not np.any(result.unsettled) else "; NOT settled (halves disagree)"
    ax.set_title(f"{model.name}: running estimates, mean over {result.inits} inits{note}", fontsize=9)
    return fig


def _tangent(result, model) -> Figure:
    t = result.tangent
    j = int(t["selected"])
    fig = Figure(figsize=(11.0, 4.0))
    ax = fig.add_subplot(1, 2, 1)
    steps = np.asarray(t["running_steps"])
    run = np.asarray(t["running"])  # [R, B, g]
    if run.size:
        for b in range(run.shape[1]):
            ax.plot(steps, run[:, b, j], color="tab:blue", lw=0.6, alpha=0.5)
        ok = np.isfinite(run[:, :, j])
        mean = np.where(ok, run[:, :, j], 0.0).sum(1) / np.maximum(ok.sum(1), 1)
        ax.plot(steps, np.where(ok.any(1), mean, np.nan), color="tab:blue", lw=2, label="lambda_xi(T), mean")
        ax.set_xscale("log")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.axhline(t["tangent_exponent"], color="tab:red", ls="--", lw=1, label=f"lambda_xi = {t['tangent_exponent']:.3g}")
    ax.set_xlabel("T (steps)")
    ax.set_ylabel("lambda_xi(T) per step")
    ax.legend(fontsize=7)
    ax.set_title(f"{model.name}: tangent exponent, group {t['group']} ({t['labels'][j] if t['labels'] else j})",
                 fontsize=9)

    ax = fig.add_subplot(1, 2, 2)
    rel = t["relaxation"]
    tt = np.asarray(rel["t"], dtype=np.float64)
    D = np.asarray(rel["distance"])  # [B, g, n]
    for b in range(D.shape[0]):
        ax.semilogy(tt, D[b, j], color="tab:blue", lw=0.6, alpha=0.6)
    pred, meas = t["predicted_lifetime"], t["measured_lifetime"]
    if math.isfinite(pred):
        ax.semilogy(tt, np.exp(-tt / pred), color="tab:red", ls="--", lw=1, label=f"predicted tau = {pred:.4g}")
    if math.isfinite(meas):
        ax.semilogy(tt, np.exp(-tt / meas), color="tab:green", ls=":", lw=1.5, label=f"measured tau = {meas:.4g}")
    ax.set_xlabel("steps after the displacement")
    ax.set_ylabel("distance / initial distance")
    moves = "; the zero-input orbit MOVES along the group" if t["orbit_moves"] else ""
    ax.set_title(f"relaxation of a displacement along the orbit{moves}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot(result, model) -> dict[str, Figure]:
    """``{"spectrum", "running"}`` and, with a group, ``"tangent"`` (lambda_xi(T) and the relaxation)."""
    figures = {"spectrum": _spectrum(result, model), "running": _running(result, model)}
    if result.tangent is not None:
        figures["tangent"] = _tangent(result, model)
    return figures
