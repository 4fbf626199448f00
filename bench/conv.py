"""Convolutional recurrences at lattice scale: the FFT / matrix-free paths against the dense ones.

    .venv/bin/python bench/conv.py [--threads 1] [--quick] [--sections spectrum,lyapunov,fixedpoints,dense]
                                   [--json out.json] [--before REV]

The model: a convolutional orthogonal tanh network ``h' = tanh(e_conv^G h + b)``
on an L x L torus, one channel, ``G = (U - U~)/2`` from a 5 x 5 stencil
``U ~ N(0, 0.25)`` (seed 0), ``b = 0.1`` on every site, float64, zero input.

1. spectrum: ``rnnprobe schur`` (the analysis function) on the FFT path
   (exact spectrum, normality, kernel checks) against its dense path (ordered
   real Schur form of the dense W_hh) for L = 16 .. 2048, with the spectral
   radius and the largest eigenvalue mismatch (optimal matching) where both
   ran; the dense path runs while its N^3-extrapolated time stays under
   ``--dense-budget`` seconds. "Largest in 60 s": the largest L measured
   under 60 s (dense: extrapolated by N^3 beyond what was run, and said so).
2. lyapunov: the leading 16 exponents from 2 initial conditions, 50 warm-up
   + 300 accumulated steps (QR interval automatic), through the FFT operator
   and through the dense matrix (L^2 <= 4096; beyond, extrapolated by N^2 from
   the largest dense run: the products are GEMMs), the exponents' largest
   difference where both ran,
   and the 256 x 256 lattice with 100 + 1000 steps.
3. fixedpoints at 256 x 256 (65,536 units): matrix-free Newton-Krylov from 8
   candidates and the 16 leading eigenvalues of each point (FFT at the
   translation-invariant points), then the same with a site-dependent bias
   (ARPACK), and ``rnnprobe fixedpoints``'s analysis function end to end
   (trajectory sampling, PCA); at 32 x 32 the solver's default mode (merging,
   explicit Jacobians allowed) on the dense W_hh of the same network.
4. dense: ``ElmanCell.step_and_jvp`` at N = 1024 (B = 8, k = 16 and 64)
   against the same products written inline (the floor: one GEMM over the
   state and all tangent columns); with ``--before REV`` also against the
   ElmanCell of git revision REV (before W_hh went through the operator).

Floors, measured in the same run, best of 7, interleaved with the sections:
``fft`` = ``rfft2`` + ``irfft2`` of [34, 256, 256] float64 (the products of
one 256^2 Lyapunov step with k = 16, B = 2) and ``gemm`` = [1024, 1024] @
[1024, 34] float64. Timings on a shared machine are noisy: compare the ratios
to the floors, printed with the load average.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="BLAS / torch threads")
    ap.add_argument("--quick", action="store_true", help="smaller lattices and fewer steps (a smoke run)")
    ap.add_argument("--sections", default="spectrum,lyapunov,fixedpoints,dense")
    ap.add_argument("--dense-budget", type=float, default=150.0, help="seconds a dense run may be predicted to take")
    ap.add_argument("--before", default=None, help="git revision whose ElmanCell section 4 compares against")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    _threads(args.threads)

    import numpy as np
    import torch
    from _timing import best

    torch.set_num_threads(args.threads)
    from rnnprobe.analyses import fixedpoints as fpa
    from rnnprobe.analyses import schur as schur_mod
    from rnnprobe.analyses.base import RunContext
    from rnnprobe.cells import ElmanCell
    from rnnprobe.model import Model
    from rnnprobe.numerics import fixedpoints as nfp
    from rnnprobe.numerics.conv import antisymmetrize, conv_exp
    from rnnprobe.numerics.lyapunov import lyapunov_spectrum
    from rnnprobe.operators import CircularConvOperator, place_stencil

    F64 = torch.float64
    sections = set(args.sections.split(","))
    out: dict = {"threads": args.threads, "torch": torch.__version__, "load_start": os.getloadavg(), "sections": {}}

    X_fft = torch.randn(34, 256, 256, dtype=F64)
    A_gemm, B_gemm = torch.randn(1024, 1024, dtype=F64), torch.randn(1024, 34, dtype=F64)
    floors: dict[str, list[float]] = {"fft": [], "gemm": []}

    def floor():
        floors["fft"].append(best(lambda: torch.fft.irfft2(torch.fft.rfft2(X_fft), s=(256, 256)))[0])
        floors["gemm"].append(best(lambda: A_gemm @ B_gemm)[0])
        return min(floors["fft"]), min(floors["gemm"])

    def log(msg):
        print(msg, flush=True)

    def network(L: int, bias=0.1):
        g = torch.Generator().manual_seed(0)
        U = 0.5 * torch.randn(5, 5, generator=g, dtype=F64)
        G = antisymmetrize(place_stencil(U, (L, L)))
        op = CircularConvOperator(conv_exp(G), generator=G, construction="exp of an antisymmetric 5x5 stencil")
        b = torch.full((L * L,), bias, dtype=F64) if np.isscalar(bias) else bias
        return ElmanCell(op, b=b)

    fft0, gemm0 = floor()
    log(f"floors: fft {fft0 * 1e3:.2f} ms, gemm {gemm0 * 1e3:.3f} ms; threads {args.threads}; load "
        f"{out['load_start'][0]:.2f}")

    # ---- 1. spectrum ----------------------------------------------------------------------------------
    if "spectrum" in sections:
        from scipy.optimize import linear_sum_assignment

        sizes = [16, 32, 64, 128, 256] if args.quick else [16, 24, 32, 48, 64, 128, 256, 512, 1024, 2048]
        rows, dense_fit = [], None
        for L in sizes:
            cell = network(L)
            model = Model(cell=cell)
            opts = schur_mod.SchurOptions(transient_steps=200)
            t0 = time.perf_counter()
            res = schur_mod.run(model, opts, RunContext())
            t_fft = time.perf_counter() - t0
            row = {"L": L, "N": L * L, "fft_s": t_fft, "fft_over_floor": t_fft / min(floors["fft"]),
                   "rho": res.spectral_radius, "unitarity_error": res.conv["unitarity_error"]}
            N = L * L
            predicted = None if dense_fit is None else dense_fit * N**3
            if N <= 4096 and (predicted is None or predicted <= args.dense_budget):
                t0 = time.perf_counter()
                dres = schur_mod.run(model, schur_mod.SchurOptions(method="dense", transient_steps=200), RunContext())
                t_dense = time.perf_counter() - t0
                dense_fit = t_dense / N**3
                row.update(dense_s=t_dense, dense_over_floor=t_dense / min(floors["gemm"]),
                           rho_dense=dres.spectral_radius, speedup=t_dense / t_fft)
                if N <= 2304:
                    cost = np.abs(res.eigenvalues[:, None] - dres.eigenvalues[None, :])
                    r, c = linear_sum_assignment(cost)
                    row["max_eig_mismatch"] = float(cost[r, c].max())
            elif dense_fit is not None:
                row["dense_s_extrapolated"] = dense_fit * N**3
            rows.append(row)
            log(f"spectrum L={L:5d} N={N:8d}: fft {t_fft:8.3f} s" + (
                f", dense {row['dense_s']:8.2f} s (x{row['speedup']:.0f}), rho {row['rho']:.15f} vs "
                f"{row['rho_dense']:.15f}, eig mismatch {row.get('max_eig_mismatch', float('nan')):.1e}"
                if "dense_s" in row else (f", dense ~{row['dense_s_extrapolated']:.3g} s (N^3 extrapolated)"
                                          if "dense_s_extrapolated" in row else "")))
            del cell, model, res
            if t_fft > 60:
                break
        fft_60 = max((r["L"] for r in rows if r["fft_s"] <= 60), default=None)
        measured = [r for r in rows if "dense_s" in r]
        dense_60 = max((r["L"] for r in measured if r["dense_s"] <= 60), default=None)
        dense_60_extrap = int(math.sqrt((60 / dense_fit) ** (1 / 3))) if dense_fit else None
        out["sections"]["spectrum"] = {"rows": rows, "largest_L_fft_60s": fft_60, "largest_L_dense_60s": dense_60,
                                       "dense_L_60s_extrapolated": dense_60_extrap}
        log(f"spectrum: largest lattice in 60 s: fft L={fft_60} (largest run), dense L={dense_60} measured, "
            f"~{dense_60_extrap} by N^3 extrapolation")
        floor()

    # ---- 2. lyapunov ----------------------------------------------------------------------------------
    if "lyapunov" in sections:
        sizes = [32, 64, 128] if args.quick else [32, 64, 128, 256]
        steps, warmup = (100, 20) if args.quick else (300, 50)
        rows, last_dense = [], None
        for L in sizes:
            N = L * L
            cell = network(L)
            h0 = 0.5 * torch.randn(2, N, generator=torch.Generator().manual_seed(1), dtype=F64)
            t0 = time.perf_counter()
            est = lyapunov_spectrum(cell, h0, k=16, steps=steps, warmup=warmup,
                                    generator=torch.Generator().manual_seed(2))
            t_fft = time.perf_counter() - t0
            row = {"L": L, "N": N, "steps": steps + warmup, "fft_s": t_fft, "fft_s_per_step": t_fft / (steps + warmup),
                   "fft_per_step_over_floor": t_fft / (steps + warmup) / min(floors["fft"]),
                   "lambda_1": float(est.exponents[0]), "lambda_16": float(est.exponents[-1]),
                   "qr_every": est.qr_every}
            if N <= 4096:
                dense_cell = cell.replace(W_hh=cell.op.dense())
                t0 = time.perf_counter()
                dest = lyapunov_spectrum(dense_cell, h0, k=16, steps=steps, warmup=warmup,
                                         generator=torch.Generator().manual_seed(2))
                t_dense = time.perf_counter() - t0
                last_dense = (N, t_dense)
                row.update(dense_s=t_dense, speedup=t_dense / t_fft,
                           max_exponent_difference=float(np.abs(dest.exponents - est.exponents).max()))
                del dense_cell
            else:  # GEMM-bound: N^2 per step from the largest dense run (the matrix alone: N^2 * 8 bytes)
                row["dense_s_extrapolated"] = last_dense[1] * (N / last_dense[0]) ** 2
                row["dense_matrix_gb"] = N * N * 8 / 1e9
            rows.append(row)
            log(f"lyapunov L={L:4d} N={N:6d}: fft {t_fft:7.2f} s ({row['fft_s_per_step'] * 1e3:.1f} ms/step, "
                f"x{row['fft_per_step_over_floor']:.2f} floor), lambda_1 {row['lambda_1']:.5f}" + (
                    f"; dense {row['dense_s']:.2f} s (x{row['speedup']:.1f}), exponents differ by "
                    f"{row['max_exponent_difference']:.1e}" if "dense_s" in row else
                    f"; dense ~{row['dense_s_extrapolated']:.0f} s (N^2 extrapolated, W_hh alone "
                    f"{row['dense_matrix_gb']:.1f} GB)"))
            del cell
        big = None
        if not args.quick:
            cell = network(256)
            h0 = 0.5 * torch.randn(2, 65536, generator=torch.Generator().manual_seed(1), dtype=F64)
            t0 = time.perf_counter()
            est = lyapunov_spectrum(cell, h0, k=16, steps=1000, warmup=100, generator=torch.Generator().manual_seed(2))
            big = {"L": 256, "steps": 1100, "seconds": time.perf_counter() - t0,
                   "exponents": [float(x) for x in est.exponents], "stderr_max": float(np.nanmax(est.stderr)),
                   "qr_every": est.qr_every}
            log(f"lyapunov 256x256, k=16, 2 inits, 100 + 1000 steps: {big['seconds']:.1f} s, lambda_1..16 "
                f"{big['exponents'][0]:.5f} .. {big['exponents'][-1]:.5f} (stderr <= {big['stderr_max']:.1e})")
        fft_60 = max((r["L"] for r in rows if r["fft_s"] <= 60), default=None)
        dense_60 = max((r["L"] for r in rows if r.get("dense_s", math.inf) <= 60), default=None)
        out["sections"]["lyapunov"] = {"rows": rows, "big": big, "largest_L_fft_60s": fft_60,
                                       "largest_L_dense_60s": dense_60}
        log(f"lyapunov ({steps + warmup} steps): largest lattice in 60 s: fft L={fft_60}, dense L={dense_60}")
        floor()

    # ---- 3. fixedpoints ---------------------------------------------------------------------------------
    if "fixedpoints" in sections:
        L = 128 if args.quick else 256
        N = L * L
        res = {"L": L}
        cell = network(L)
        x0 = 0.5 * torch.randn(8, N, generator=torch.Generator().manual_seed(3), dtype=F64)
        t0 = time.perf_counter()
        fps = nfp.find_fixed_points(cell, None, x0)
        t1 = time.perf_counter()
        lin, info = nfp.linearize_matrix_free(cell, fps.states, k=16)
        t2 = time.perf_counter()
        res["uniform"] = {"solve_s": t1 - t0, "linearize_s": t2 - t1, "n_fixed": fps.n_label(nfp.FIXED),
                          "n_unique": fps.n_unique, "max_q": float(fps.q.max()) if fps.n_unique else None,
                          "methods": info["method"], "newton": fps.stats["newton_iterations"],
                          "krylov_steps": fps.stats["krylov_steps"], "matrix_free": fps.stats["matrix_free"],
                          "max_abs_eig": float(lin.eigenvalues.abs()[:, 0].max()) if fps.n_unique else None}
        log(f"fixedpoints {L}x{L} uniform bias: {t1 - t0:.1f} s solve ({fps.n_unique} point(s), q <= "
            f"{res['uniform']['max_q']:.1e}), {t2 - t1:.2f} s linearisation ({info['method']})")
        ramp = torch.linspace(-0.5, 0.5, N, dtype=F64)
        cell2 = network(L, bias=ramp)
        t0 = time.perf_counter()
        fps2 = nfp.find_fixed_points(cell2, None, x0)
        t1 = time.perf_counter()
        lin2, info2 = nfp.linearize_matrix_free(cell2, fps2.states[:2], k=16)
        t2 = time.perf_counter()
        res["ramp"] = {"solve_s": t1 - t0, "linearize_s": t2 - t1, "n_unique": fps2.n_unique,
                       "n_fixed_candidates": fps2.n_label(nfp.FIXED), "n_slow_candidates": fps2.n_label(nfp.SLOW),
                       "max_q": float(fps2.q.max()) if fps2.n_unique else None, "methods": info2["method"],
                       "converged": info2["converged"], "newton": fps2.stats["newton_iterations"]}
        log(f"fixedpoints {L}x{L} site-dependent bias: {t1 - t0:.1f} s solve ({fps2.n_unique} point(s); candidates "
            f"{fps2.n_label(nfp.FIXED)} fixed, {fps2.n_label(nfp.SLOW)} slow), "
            f"{t2 - t1:.1f} s linearisation of {min(2, fps2.n_unique)} ({info2['method']}, converged "
            f"{info2['converged']})")
        t0 = time.perf_counter()
        ares = fpa.run(Model(cell=cell), fpa.FixedpointsOptions(n_init=16), RunContext())
        res["analysis_s"] = time.perf_counter() - t0
        res["analysis_points"] = ares.n_unique
        log(f"fixedpoints analysis {L}x{L} (16 candidates from autonomous trajectories, PCA): "
            f"{res['analysis_s']:.1f} s, {ares.n_unique} point(s)")
        small = network(32)
        xs = 0.5 * torch.randn(64, 1024, generator=torch.Generator().manual_seed(4), dtype=F64)
        t0 = time.perf_counter()
        a = nfp.find_fixed_points(small, None, xs, jacobian_memory=1e4)
        t1 = time.perf_counter()
        b = nfp.find_fixed_points(small.replace(W_hh=small.op.dense()), None, xs)
        t2 = time.perf_counter()
        res["small"] = {"L": 32, "candidates": 64, "matrix_free_s": t1 - t0, "dense_mode_s": t2 - t1,
                        "points": [a.n_unique, b.n_unique], "direct_steps_dense": b.stats["direct_steps"]}
        log(f"fixedpoints 32x32, 64 candidates: matrix-free {t1 - t0:.2f} s, default mode on the dense W_hh "
            f"(merging, explicit Jacobians allowed: {b.stats['direct_steps']} direct steps) {t2 - t1:.2f} s "
            f"({a.n_unique} vs {b.n_unique} points)")
        out["sections"]["fixedpoints"] = res
        floor()

    # ---- 4. dense ---------------------------------------------------------------------------------------
    if "dense" in sections:
        N, B = 1024, 8
        g = torch.Generator().manual_seed(5)
        W = torch.randn(N, N, generator=g, dtype=F64) / math.sqrt(N)
        U = torch.randn(N, 3, generator=g, dtype=F64)
        cell = ElmanCell(W, U, alpha=0.5)
        h = torch.randn(B, N, generator=g, dtype=F64)
        u = torch.randn(B, 3, generator=g, dtype=F64)
        before = None
        if args.before:
            try:
                src = subprocess.run(["git", "show", f"{args.before}:rnnprobe/cells/elman.py"], capture_output=True,
                                     text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout
                with tempfile.NamedTemporaryFile("w", suffix="_elman_before.py", delete=False) as f:
                    f.write(src)
                spec = importlib.util.spec_from_file_location("elman_before", f.name)
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
                before = mod.ElmanCell(W, U, alpha=0.5)
            except (subprocess.CalledProcessError, OSError, AttributeError, ImportError) as e:
                log(f"--before {args.before}: cannot load its ElmanCell ({e}); skipped")
        rows = []
        for k in (16, 64):
            V = torch.randn(B, N, k, generator=g, dtype=F64)

            def inline():  # the same products by hand: one GEMM over the state and all the columns
                Y = W @ torch.cat([h[:, :, None], V], dim=2).permute(1, 0, 2).reshape(N, B * (k + 1))
                Y = Y.reshape(N, B, k + 1).permute(1, 0, 2)
                x = Y[:, :, 0] + u @ U.T
                p = torch.tanh(x)
                return h + 0.5 * (p - h), (0.5 * (1 - p * p))[:, :, None] * Y[:, :, 1:] + 0.5 * V

            ref = inline()
            got = cell.step_and_jvp(h, u, V)
            assert torch.equal(ref[0], got[0]) and torch.allclose(ref[1], got[1], rtol=0, atol=1e-13)
            t_cell, t_floor, t_before = [], [], []
            for _ in range(5):  # interleaved rounds
                t_floor.append(best(inline, 5)[0])
                t_cell.append(best(lambda: cell.step_and_jvp(h, u, V), 5)[0])
                if before is not None:
                    t_before.append(best(lambda: before.step_and_jvp(h, u, V), 5)[0])
            row = {"k": k, "cell_ms": min(t_cell) * 1e3, "inline_ms": min(t_floor) * 1e3,
                   "cell_over_inline": min(t_cell) / min(t_floor)}
            if t_before:
                row.update(before_ms=min(t_before) * 1e3, after_over_before=min(t_cell) / min(t_before),
                           bit_identical=bool(all(torch.equal(a, b) for a, b in
                                                  zip(before.step_and_jvp(h, u, V), got))))
            rows.append(row)
            log(f"dense step_and_jvp N=1024 B=8 k={k}: cell {row['cell_ms']:.3f} ms, inline {row['inline_ms']:.3f} ms "
                f"(x{row['cell_over_inline']:.3f})" + (
                    f", before {row['before_ms']:.3f} ms (after/before x{row['after_over_before']:.3f}, "
                    f"bit-identical {row['bit_identical']})" if "before_ms" in row else ""))
        out["sections"]["dense"] = {"rows": rows, "before": args.before}
        floor()

    out["floors_ms"] = {k: [x * 1e3 for x in v] for k, v in floors.items()}
    out["load_end"] = os.getloadavg()
    log(f"floors over the run (ms): fft {', '.join(f'{x * 1e3:.2f}' for x in floors['fft'])}; gemm "
        f"{', '.join(f'{x * 1e3:.3f}' for x in floors['gemm'])}; load at the end {out['load_end'][0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
