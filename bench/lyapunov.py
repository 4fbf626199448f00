"""Lyapunov spectra: rnnprobe's batched propagator against its floor, a plain NumPy loop and lyapynov.

    .venv/bin/python bench/lyapunov.py [--threads 1] [--quick] [--lyapynov-python /tmp/lyvenv/bin/python]

Random tanh nets h' = tanh(W h), W = g * randn(N, N) / sqrt(N), g = 2 (chaotic),
float64, all in one run (BLAS threads as given, printed):

1. Full spectrum, N = 256, 10^4 steps after 10^3 warm-up, one trajectory:
   the sum rule residual (accuracy), the QR interval chosen and the blocks
   redone; seconds per step (best of 5 runs of 200 steps continuing the long
   run, and the long run's wall-clock average) against one float64 N x N x N
   matrix product (the floor: the full spectrum needs one W Q per step), best
   of 30, timed in the same run. Also with ``qr_every = 1``.
2. The same net against a plain NumPy Benettin loop (explicit J, ``np.linalg.qr``
   every step) and lyapynov's ``LCE`` at its defaults (explicit Jacobian, QR
   every step): seconds per step (fewer steps for the references; per-step
   cost does not depend on the count).
3. The leading 16 exponents at N = 1024 from 16 initial conditions (one batch)
   against lyapynov on the same 16 initial conditions (one after the other).
4. Seconds per step against N (64 .. 1024) and k, with each N's floor.

lyapynov (PyPI) is not a dependency: it is imported if it can be, else run in
the interpreter given by ``--lyapynov-python`` (a scratch venv with numpy and
lyapynov), else skipped with a message. Timings on a shared machine are
noisy: every per-step figure is the best of several short runs (and so is
each floor), measured in the same run; compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import timeit


def _threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


LYAPYNOV_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import lyapynov
    d = np.load(sys.argv[1])
    W, X0 = d["W"], d["X0"]
    p, n_forward, n_compute, repeat = (int(a) for a in sys.argv[2:6])
    f = lambda x, t: np.tanh(W @ x)
    jac = lambda x, t: (1.0 - np.tanh(W @ x) ** 2)[:, None] * W
    best, exps = [], []
    for x0 in X0:
        system = lyapynov.DiscreteDS(x0, 0, f, jac)
        lam = lyapynov.LCE(system, p, n_forward, n_compute, False)  # from x0: warm-up, then n_compute
        exps.append(np.asarray(lam).tolist())
        times = []
        for _ in range(repeat):  # more n_compute-step runs from where it stands, timed
            t0 = time.perf_counter()
            lyapynov.LCE(system, p, 0, n_compute, False)
            times.append(time.perf_counter() - t0)
        best.append(min(times) / n_compute)
    print(json.dumps({"per_step": best, "exponents": exps, "version": getattr(lyapynov, "__version__", "?")}))
""")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="BLAS / torch threads")
    ap.add_argument("--quick", action="store_true", help="a tenth of the steps (a smoke run)")
    ap.add_argument("--lyapynov-python", default=None, help="interpreter with lyapynov installed")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--sections", default="1,2,3,4", help="which sections to run (2 runs with 1)")
    args = ap.parse_args()
    _threads(args.threads)

    import numpy as np
    import torch

    from rnnprobe.cells import ElmanCell
    from rnnprobe.numerics import lyapunov as lyap

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    scale = 10 if args.quick else 1
    sections = {int(x) for x in args.sections.split(",")}
    figures: dict = {"threads": args.threads, "device": str(dev), "torch": torch.__version__,
                     "numpy": np.__version__, "quick": args.quick}
    load = os.getloadavg()
    print(f"# bench/lyapunov.py: threads={args.threads}, device={dev}, torch {torch.__version__}, "
          f"numpy {np.__version__}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"on {os.cpu_count()} CPUs")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def net(N: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        W = 2.0 * rng.standard_normal((N, N)) / np.sqrt(N)
        return W, ElmanCell(W, device=dev)

    def ours(cell, h0, **kw):
        sync()
        t0 = time.perf_counter()
        est = lyap.lyapunov_spectrum(cell, torch.as_tensor(h0, device=dev), generator=gen(), **kw)
        sync()
        return time.perf_counter() - t0, est

    def gen():
        return torch.Generator(device=dev).manual_seed(0)

    def floor_loop(N: int, n: int) -> float:
        """Seconds per product of ``n`` consecutive float64 N x N x N products (a loop as long as a
        segment of the run, so that both see the same share of a busy machine)."""
        A = torch.randn(N, N, dtype=torch.float64, device=dev)
        Q = torch.randn(N, N, dtype=torch.float64, device=dev)
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            A @ Q
        sync()
        return (time.perf_counter() - t0) / n

    def ours_best(cell, est, segment, repeat):
        """Interleaved rounds: ``segment`` steps continuing ``est`` (its end state and frame, no warm-up,
        its QR interval), then ``segment`` floor products of size S; best of ``repeat`` for each.
        Returns (seconds per step, seconds per product)."""
        run_t, floor_t = [], []
        S = cell.n_state
        for _ in range(repeat):
            t, _ = ours(cell, est.state, steps=segment, warmup=0, qr_every=est.qr_every, frame=est.vectors,
                        k=est.k)
            run_t.append(t / segment)
            floor_t.append(floor_loop(S, segment))
        return min(run_t), min(floor_t)

    def numpy_loop(W, h, steps, warmup, repeat=1, segment=0):
        N = W.shape[0]
        Q, acc, ld = np.eye(N), np.zeros(N), 0.0
        _, logdetW = np.linalg.slogdet(W)

        def go(h, Q, n, acc, ld, count):
            for _ in range(n):
                h = np.tanh(W @ h)
                d = 1 - h * h
                Q, R = np.linalg.qr(d[:, None] * W @ Q)
                if count:
                    acc += np.log(np.abs(np.diag(R)))
                    ld += np.log(d).sum() + logdetW
            return h, Q, acc, ld

        h, Q, _, _ = go(h, Q, warmup, acc, ld, False)
        h, Q, acc, ld = go(h, Q, steps, acc, ld, True)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            h, Q, _, _ = go(h, Q, segment, np.zeros(N), 0.0, True)
            times.append((time.perf_counter() - t0) / segment)
        return min(times), acc / steps, ld / steps

    def run_lyapynov(W, X0, p, n_forward, n_compute, repeat):
        try:
            import lyapynov  # noqa: F401

            python = sys.executable
        except ImportError:
            python = args.lyapynov_python
            if python is None:
                return None, "lyapynov is not importable here and --lyapynov-python was not given: skipped"
        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "net.npz")
            np.savez(data, W=W, X0=X0)
            script = os.path.join(tmp, "run_lyapynov.py")
            with open(script, "w") as fh:
                fh.write(LYAPYNOV_SCRIPT)
            proc = subprocess.run([python, script, data, str(p), str(n_forward), str(n_compute), str(repeat)],
                                  capture_output=True, text=True, env=dict(os.environ))
            if proc.returncode != 0:
                return None, f"lyapynov run failed ({python}): {proc.stderr.strip().splitlines()[-1:]}"
            return json.loads(proc.stdout), None

    rep = 5
    if 1 in sections or 2 in sections:
        # ---- 1. full spectrum, N = 256 ----------------------------------------------------------
        N, steps, warmup = 256, 10_000 // scale, 1_000 // scale
        seg = 200 // scale
        W, cell = net(N)
        h0 = 0.5 * np.random.default_rng(1).standard_normal((1, N))
        secs, est = ours(cell, h0, steps=steps, warmup=warmup)
        best, fl = ours_best(cell, est, seg, rep)
        secs1, est1 = ours(cell, h0, steps=steps, warmup=warmup, qr_every=1)
        best1, fl1 = ours_best(cell, est1, seg, rep)
        fl = min(fl, fl1)
        per_wall = secs / (steps + warmup)
        n_blocks = (steps + warmup) / max(est.qr_every, 1)
        figures["full_256"] = {
            "steps": steps, "warmup": warmup, "floor_ms": fl * 1e3, "ms_per_step": best * 1e3, "ratio": best / fl,
            "wall_ms_per_step": per_wall * 1e3, "wall_ratio": per_wall / fl,
            "qr_every": est.qr_every, "spread": est.spread, "redone": est.redone,
            "redone_fraction": est.redone / n_blocks, "sum_rule_residual": est.sum_rule_residual,
            "lambda_1": float(est.exponents[0]), "sum": float(est.exponents.sum()),
            "m1_ms_per_step": best1 * 1e3, "m1_ratio": best1 / fl, "m1_sum_rule_residual": est1.sum_rule_residual,
            "max_abs_diff_vs_m1": float(np.max(np.abs(est.exponents - est1.exponents))),
        }
        print("\n## 1. Full spectrum, N = 256, gain 2, %d steps after %d warm-up, 1 trajectory" % (steps, warmup))
        print(f"ms / step: best of {rep} runs of {seg} steps continuing the long run, each followed by {seg} floor "
              "products (best of those); in brackets: the long run's wall-clock average")
        print("| run | ms / step | / floor | QR every | sum rule residual |")
        print("|---|---|---|---|---|")
        print(f"| floor: one {N}x{N}x{N} float64 matmul (best of {rep} loops of {seg}) | {fl * 1e3:.3f} | 1.00 | | |")
        print(f"| rnnprobe, automatic interval (spread {est.spread:.2f}/step; {est.redone} of {n_blocks:.0f} blocks "
              f"redone) | {best * 1e3:.3f} ({per_wall * 1e3:.3f}) | {best / fl:.2f} ({per_wall / fl:.2f}) | "
              f"{est.qr_every} | {est.sum_rule_residual:.1e} |")
        print(f"| rnnprobe, QR every step | {best1 * 1e3:.3f} ({secs1 / (steps + warmup) * 1e3:.3f}) | {best1 / fl:.2f} | "
              f"1 | {est1.sum_rule_residual:.1e} |")
        print(f"lambda_1 = {est.exponents[0]:.5f}, sum = {est.exponents.sum():.6f}, "
              f"max |difference| to QR-every-step = {figures['full_256']['max_abs_diff_vs_m1']:.1e}")

        # ---- 2. against a plain NumPy loop and lyapynov ------------------------------------------------
        ref_steps, ref_warm, ref_seg = 1_000 // scale, 100 // scale, 50 // scale
        np_per, lam_np, ld_np = numpy_loop(W, h0[0].copy(), ref_steps, ref_warm, repeat=rep, segment=ref_seg)
        ly, why = run_lyapynov(W, h0, N, ref_warm, ref_seg, rep)
        ly_per = None if ly is None else ly["per_step"][0]
        faster = min(x for x in (np_per, ly_per) if x is not None)
        figures["references_256"] = {"numpy_ms_per_step": np_per * 1e3,
                                     "numpy_sum_rule_residual": float(abs(lam_np.sum() - ld_np)),
                                     "lyapynov_ms_per_step": None if ly_per is None else ly_per * 1e3,
                                     "lyapynov_skipped": why, "speedup_vs_faster": faster / best}
        print(f"\n## 2. The same net against the references (best of {rep} runs of {ref_seg} steps each)")
        print("| program | ms / step | / floor | rnnprobe faster by |")
        print("|---|---|---|---|")
        print(f"| plain NumPy loop (explicit J, np.linalg.qr every step) | {np_per * 1e3:.3f} | {np_per / fl:.2f} | "
              f"{np_per / best:.1f}x |")
        if ly_per is not None:
            print(f"| lyapynov {ly.get('version', '')} LCE (defaults: explicit J, QR every step) | {ly_per * 1e3:.3f} | "
                  f"{ly_per / fl:.2f} | {ly_per / best:.1f}x |")
        else:
            print(f"| lyapynov | skipped: {why} | | |")
        print(f"rnnprobe against the faster reference: {faster / best:.1f}x; NumPy loop over {ref_steps} steps: "
              f"lambda_1 = {lam_np[0]:.4f}, sum = {lam_np.sum():.4f}, sum rule residual {abs(lam_np.sum() - ld_np):.1e}")

    if 3 in sections:
        # ---- 3. leading 16 at N = 1024, 16 initial conditions ------------------------------------------
        N3, k3, B3 = 1024, 16, 16
        W3, cell3 = net(N3, seed=3)
        X0 = 0.5 * np.random.default_rng(4).standard_normal((B3, N3))
        s3, w3 = 2_000 // scale, 200 // scale
        t3, est3 = ours(cell3, X0, k=k3, steps=s3, warmup=w3)
        best3 = ours_best(cell3, est3, 100 // scale, rep)[0] / B3  # per trajectory-step
        # the floor: the one product no method avoids, W [h | Q] for all inits (N x N x B(k+1))
        Wt = torch.as_tensor(W3, dtype=torch.float64)
        Xt = torch.randn(N3, B3 * (k3 + 1), dtype=torch.float64)
        floor3 = min(timeit.repeat(lambda: Wt @ Xt, number=5, repeat=rep)) / 5 / B3
        ly3, why3 = run_lyapynov(W3, X0, k3, 20 // scale, 20 // scale, 3)
        ly3_per = None if ly3 is None else float(np.mean(ly3["per_step"]))
        figures["leading16_1024"] = {"steps": s3, "warmup": w3, "inits": B3, "ms_per_trajectory_step": best3 * 1e3,
                                     "wall_ms_per_trajectory_step": t3 / (s3 + w3) / B3 * 1e3,
                                     "qr_every": est3.qr_every, "lambda_1": float(est3.exponents[0]),
                                     "lyapynov_ms_per_trajectory_step": None if ly3_per is None else ly3_per * 1e3,
                                     "lyapynov_skipped": why3,
                                     "speedup": None if ly3_per is None else ly3_per / best3,
                                     "floor_ms_per_trajectory_step": floor3 * 1e3}
        print(f"\n## 3. Leading {k3} exponents, N = {N3}, {B3} initial conditions ({s3} steps after {w3}); "
              f"per trajectory-step, best of repeated short runs")
        print("| program | ms per trajectory-step | / floor | rnnprobe faster by |")
        print("|---|---|---|---|")
        print(f"| floor: one {N3}x{N3}x{B3 * (k3 + 1)} GEMM (W [h, Q] for all inits) | {floor3 * 1e3:.3f} | 1.00 | |")
        print(f"| rnnprobe, one batch of {B3} (QR every {est3.qr_every}) | {best3 * 1e3:.3f} "
              f"(wall {t3 / (s3 + w3) / B3 * 1e3:.3f}) | {best3 / floor3:.2f} | |")
        if ly3_per is not None:
            print(f"| lyapynov LCE, the {B3} one after the other | {ly3_per * 1e3:.3f} | {ly3_per / floor3:.2f} "
                  f"| {ly3_per / best3:.1f}x |")
        else:
            print(f"| lyapynov | skipped: {why3} | |")

    if 4 in sections:
        # ---- 4. against N and k -------------------------------------------------------------------------
        print("\n## 4. Per step against N and k (one trajectory, automatic QR interval, best of 3 short runs)")
        print("| N | k | ms / step | floor ms (N^3 matmul) | / floor | QR every |")
        print("|---|---|---|---|---|---|")
        rows = []
        for Nn in (64, 128, 256, 512, 1024):
            Wn, celln = net(Nn, seed=5)
            hn = 0.5 * np.random.default_rng(6).standard_normal((1, Nn))
            for k in (16, 64, Nn):
                if k > Nn or (k == 64 and Nn == 64):
                    continue
                full = k == Nn
                sn = max(20, (1000 if Nn <= 256 else 200 if not full else 40) // scale)
                _, en = ours(celln, hn, k=k, steps=sn, warmup=max(10, sn // 4))
                pn, fn = ours_best(celln, en, max(10, sn // 2), 3)
                rows.append({"N": Nn, "k": k, "ms_per_step": pn * 1e3, "floor_ms": fn * 1e3, "ratio": pn / fn,
                             "qr_every": en.qr_every})
                print(f"| {Nn} | {'all' if full else k} | {pn * 1e3:.3f} | {fn * 1e3:.3f} | {pn / fn:.2f} | "
                      f"{en.qr_every} |")
        figures["scaling"] = rows
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
