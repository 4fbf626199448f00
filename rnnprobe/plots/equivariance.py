"""Plots of ``rnnprobe equivariance``: the error distribution per group element, the rollout error against time."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot"]


def _floors(ax, result) -> None:
    ax.axhline(result.dtype_floor, color="tab:red", ls="--", lw=1, label=f"{result.trained_dtype} eps (trained)")
    if result.analysis_floor != result.dtype_floor:
        ax.axhline(result.analysis_floor, color="tab:gray", ls=":", lw=1, label=f"{result.analysis_dtype} eps")


def plot(result, model) -> dict[str, Figure]:
    """``{"elements": ..., "rollout": ...}``: per-element error distributions and the rollout error (log scales).

    Errors of exactly 0 (the identity, exact symmetries) are drawn at a tenth of the analysis dtype's epsilon.
    """
    figures: dict[str, Figure] = {}
    if result.errors is None:
        return figures
    clip = result.analysis_floor / 10
    E = np.maximum(np.asarray(result.errors), clip)
    G = E.shape[0]
    fig = Figure(figsize=(max(6.0, min(0.18 * G + 2.0, 16.0)), 4.0))
    ax = fig.add_subplot()
    ax.boxplot(np.log10(E).T, positions=np.arange(G), widths=0.6, showfliers=False)
    ax.plot(np.arange(G), np.log10(E.max(axis=1)), "v", color="tab:blue", ms=4, label="max over states")
    for y, style in ((result.dtype_floor, "--"), (result.analysis_floor, ":")):
        ax.axhline(np.log10(y), color="tab:red" if style == "--" else "tab:gray", ls=style, lw=1)
    step = max(1, G // 24)
    ax.set_xticks(np.arange(0, G, step))
    ax.set_xticklabels([str(result.element_labels[i])[:14] for i in range(0, G, step)], rotation=60, ha="right",
                       fontsize=7)
    ax.set_ylabel("log10 step equivariance error")
    ax.set_title(f"{model.name}: {result.group_name}, {result.n_states} states; "
                 f"red: {result.trained_dtype} eps, grey: {result.analysis_dtype} eps", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    figures["elements"] = fig

    if result.rollout_error is not None:
        fig = Figure(figsize=(6.0, 4.0))
        ax = fig.add_subplot()
        t = np.asarray(result.rollout_time)
        ax.semilogy(t, np.maximum(result.rollout_error, clip), label="max over elements and starts")
        ax.semilogy(t, np.maximum(result.rollout_mean_error, clip), label="mean")
        _floors(ax, result)
        ax.set_xlabel("step")
        ax.set_ylabel("||s_t(g.x) - g.s_t(x)|| / (1 + ||s_t||)")
        ax.set_title(f"{model.name}: rollout equivariance error, {result.group_name}", fontsize=9)
        ax.legend(fontsize=8)
        figures["rollout"] = fig
    return figures
