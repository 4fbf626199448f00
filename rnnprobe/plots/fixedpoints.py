"""Plots of ``rnnprobe fixedpoints``: points in trajectory PCA space, spectra, |Phi|."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from rnnprobe.numerics.fixedpoints import STABILITY

__all__ = ["plot"]

_COLOURS = {"stable": "tab:blue", "marginal": "tab:green", "saddle": "tab:red", "repeller": "tab:purple"}


def _unstable_directions(J: np.ndarray, n_unstable: int) -> list[np.ndarray]:
    """Unit vectors along the eigenvectors of the ``n_unstable`` largest-modulus eigenvalues
    (real and imaginary parts of a complex pair)."""
    lam, V = np.linalg.eig(J)
    out = []
    for k in np.argsort(-np.abs(lam), kind="stable")[:n_unstable]:
        if lam[k].imag < 0:
            continue
        for v in (V[:, k].real, V[:, k].imag):
            nv = np.linalg.norm(v)
            if nv > 1e-12 * np.linalg.norm(V[:, k]):
                out.append(v / nv)
    return out


def _pca_figure(result) -> Figure:
    pca = result.pca
    fig = Figure(figsize=(11, 5))
    comps = np.asarray(pca["components"])
    mean = np.asarray(pca["mean"])
    pairs = [(0, 1), (0, 2)] if comps.shape[0] >= 3 else [(0, min(1, comps.shape[0] - 1))]
    P = (result.states - mean) @ comps.T if result.n_unique else np.zeros((0, comps.shape[0]))
    traj = np.asarray(pca["trajectories"])
    span = np.ptp(traj.reshape(-1, traj.shape[-1]), axis=0).max() if traj.size else 1.0
    directions = {}
    for i in range(result.n_unique):
        if int(result.n_unstable[i]) > 0 and np.asarray(result.jacobians).size:  # none when matrix-free
            directions[i] = [v @ comps.T for v in _unstable_directions(result.jacobians[i], int(result.n_unstable[i]))]
    for j, (a, b) in enumerate(pairs):
        ax = fig.add_subplot(1, len(pairs), j + 1)
        for t in traj:
            ax.plot(t[:, a], t[:, b], color="0.8", lw=0.6, zorder=1)
        for name, colour in _COLOURS.items():
            sel = np.asarray([STABILITY[int(s)] == name for s in result.stability], dtype=bool)
            if sel.any():
                ax.scatter(P[sel, a], P[sel, b], s=36, color=colour, label=name, zorder=3,
                           edgecolor="k", linewidth=0.4)
        for i, dirs in directions.items():
            for d in dirs:
                seg = 0.15 * span * d / max(np.linalg.norm(d[[a, b]]), 1e-12)
                ax.plot([P[i, a] - seg[a], P[i, a] + seg[a]], [P[i, b] - seg[b], P[i, b] + seg[b]],
                        color=_COLOURS["saddle"], lw=1.2, zorder=2)
        ax.set_xlabel(f"PC{a + 1}")
        ax.set_ylabel(f"PC{b + 1}")
        if j == 0:
            ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"{result.n_unique} points in the PCA space of the trajectories (lines: unstable directions)")
    return fig


def _eigen_figure(result) -> Figure:
    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot(1, 1, 1)
    th = np.linspace(0, 2 * np.pi, 400)
    ax.plot(np.cos(th), np.sin(th), color="k", lw=0.8)
    for name, colour in _COLOURS.items():
        sel = np.asarray([STABILITY[int(s)] == name for s in result.stability], dtype=bool)
        if sel.any():
            ev = np.asarray(result.eigenvalues)[sel].ravel()
            ax.scatter(ev.real, ev.imag, s=8, color=colour, alpha=0.6, label=f"{name} ({int(sel.sum())})")
    ax.set_aspect("equal")
    ax.axhline(0, color="0.85", lw=0.5)
    ax.axvline(0, color="0.85", lw=0.5)
    ax.set_xlabel("Re lambda")
    ax.set_ylabel("Im lambda")
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Jacobian eigenvalues at the points")
    return fig


def _phi_figure(result) -> Figure:
    mb = result.memory_basis
    periods = np.asarray(mb["cyclic_period"])
    i = int(np.nonzero(periods)[0][0]) if periods.any() else 0
    Phi = np.abs(np.asarray(mb["Phi"][i]))
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot(1, 1, 1)
    positive = Phi[Phi > 0]
    vmin = max(positive.min(), positive.max() * 1e-8) if positive.size else 1e-16
    im = ax.imshow(np.maximum(Phi, vmin), norm=LogNorm(vmin=vmin, vmax=max(Phi.max(), vmin * 10)),
                   cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="|Phi|")
    title = f"|Phi| at point {i} ({mb['basis']} basis)"
    if periods[i]:
        title += f": cyclic shift, period {int(periods[i])}"
    ax.set_title(title, fontsize=9)
    return fig


def plot(result, model) -> dict[str, Figure]:
    """``points`` (PCA of the trajectories), ``eigenvalues`` (unit circle), ``phi`` (|Phi| heatmap)."""
    figs: dict[str, Figure] = {}
    if result.n_unique == 0:
        return figs
    if result.pca:
        figs["points"] = _pca_figure(result)
    figs["eigenvalues"] = _eigen_figure(result)
    if result.memory_basis.get("Phi") is not None:  # no memory basis when the Jacobian is matrix-free
        figs["phi"] = _phi_figure(result)
    return figs
