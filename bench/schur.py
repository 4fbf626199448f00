"""Benchmarks of rnnprobe schur, each against a floor timed in the same run.

1. Ordered decomposition, N = 256 .. 2048: ``scipy.linalg.schur`` alone (the
   floor) against what rnnprobe adds: the full reordering of the blocks
   (``reorder_schur``) and the R/C split's condition numbers
   (``split_condition``, what ``dtrsen(job="B")`` computes). Goal: the
   addition costs at most the unordered decomposition itself at N = 1024.
   Two starting orders: the one LAPACK returns for a random Gaussian matrix,
   and the worst case (ascending moduli: every block travels the whole way).
   LAPACK's own ``dtrsen`` is timed as well where it is affordable.
2. Ablation sweep, 256 trials x 100 steps, 8 variants + 32 controls (40
   recurrent matrices), tanh Elman cell, at N = 64 and N = 512:
   ``rollout_variants`` (one batched program) against (a) the same float64
   flops as one large square matrix product (goal: within 1.5x), and (b) a
   Python loop of ``torch.nn.RNN`` forwards in float64, one per matrix; and
   the same rollout with ``RNNPROBE_NUMPY_KERNELS=0`` (torch's bmm and tanh).
   Two components are timed alone as well, in the rollout's own chunks,
   buffers and kernels: the batched products (``matmul_`` of the [chunk, B, N]
   state by the chunk's W^T, every step) and the nonlinearity (NumPy's tanh, which
   ``tanh_`` calls, of a [chunk, B, N] buffer, every step). Their sum is what any rollout built from
   these kernels must spend, whatever it does around them.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/schur.py [--quick]``. One
thread everywhere (torch, OpenBLAS), stated in the output. Absolute times on
a shared machine are noisy; the ratios are measured within one run.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402
from _timing import best  # noqa: E402
from scipy.linalg.lapack import dtrsen  # noqa: E402

from rnnprobe.analyses.schur import rollout_variants, variant_chunk  # noqa: E402
from rnnprobe.cells import ElmanCell  # noqa: E402
from rnnprobe.numerics import kernels  # noqa: E402
from rnnprobe.numerics import schur as ns  # noqa: E402


def bench_decomposition(sizes, repeats):
    print("\n## 1. Ordered real Schur decomposition (random Gaussian W / sqrt(N), --retain-alpha 0.9)\n")
    print("| N | start | schur (floor) s | reorder s | moves | split s | order+split / schur | dtrsen(B) s |")
    print("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        rng = np.random.default_rng(n)
        W = rng.standard_normal((n, n)) / np.sqrt(n)
        reps = repeats if n <= 1024 else 2
        T0, Q0 = scipy.linalg.schur(W, output="real")
        lam = ns.block_eigenvalues(T0)
        rho = float(np.abs(lam).max())
        first = np.abs(lam) >= 0.9 * rho
        for start in ("lapack", "ascending"):
            T1, Q1 = np.array(T0, order="F"), np.array(Q0, order="F")
            if start == "ascending":
                r = ns.order_ranks(lam, "modulus", rho=rho, first=first)
                ns.reorder_schur(T1, Q1, r.max() - r)
            lam1 = ns.block_eigenvalues(T1)
            box = {}

            def order():
                T, Q = np.array(T1, order="F"), np.array(Q1, order="F")
                ranks = ns.order_ranks(lam1, "modulus", rho=rho, first=np.abs(lam1) >= 0.9 * rho)
                box["stats"] = ns.reorder_schur(T, Q, ranks)
                box["T"], box["Q"] = T, Q

            def split():
                T = box["T"]
                m = int(np.count_nonzero(np.abs(ns.block_eigenvalues(T)) >= 0.9 * rho))
                box["m"] = m
                ns.split_condition(T, m)

            # interleaved rounds, minimum of each: all three see the same background load
            t_schur = t_order = t_split = float("inf")
            for _ in range(reps):
                t_schur = min(t_schur, best(lambda: scipy.linalg.schur(W, output="real"), 1)[0])
                t_order = min(t_order, best(order, 1)[0])
                t_split = min(t_split, best(split, 1)[0])
            T, Q, m = box["T"], box["Q"], box["m"]
            assert box["stats"].complete and np.linalg.norm(Q @ T @ Q.T - W) <= 1e-12 * np.linalg.norm(W)
            t_lapack = "-"
            if n <= 1024 and start == "lapack":
                sel = np.zeros(n, dtype=np.int32)
                sel[:m] = 1
                work = dict(lwork=2 * m * (n - m), liwork=m * (n - m))
                t_lapack = f"{best(lambda: dtrsen(sel, T, Q, job='B', wantq=0, **work), 1)[0]:.3f}"
            ratio = (t_order + t_split) / t_schur
            print(f"| {n} | {start} | {t_schur:.3f} | {t_order:.3f} | {box['stats'].moves} | {t_split:.3f} | "
                  f"**{ratio:.2f}** | {t_lapack} |", flush=True)


def bench_ablation(sizes, repeats, trials=256, steps=100, n_w=40):
    print(f"\n## 2. Ablation sweep: {trials} trials x {steps} steps, {n_w} recurrent matrices "
          "(8 variants + 32 controls), tanh, float64\n")
    print("| N | variants per batch | batched rollout s | GFlop/s | one-GEMM floor s (same flops) | "
          "batched / floor | products alone s | tanh alone s | (products + tanh) / floor | "
          "nn.RNN loop s | loop / batched | batched, torch kernels s | torch / NumPy kernels |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        rng = np.random.default_rng(n)
        W0 = rng.standard_normal((n, n)) / np.sqrt(n)
        cell = ElmanCell(W0, rng.standard_normal((n, 1)), rng.standard_normal(n) * 0.1, rng.standard_normal((1, n)),
                         np.zeros(1))
        Ws = torch.as_tensor(W0 + 0.01 * rng.standard_normal((n_w, n, n)) / np.sqrt(n))
        inputs = torch.as_tensor(rng.choice([-1.0, 1.0], size=(trials, steps, 1)))
        reps = repeats if n <= 128 else 2
        out = {}
        chunk = variant_chunk(cell, trials, steps)  # what the analysis uses

        def batched():
            out["y"] = torch.cat([rollout_variants(cell, Ws[i:i + chunk], inputs) for i in range(0, n_w, chunk)])

        flops = 2.0 * n_w * trials * steps * n * n
        side = int(round((flops / 2) ** (1 / 3)))
        A = torch.randn(side, side, dtype=torch.float64)
        B = torch.randn(side, side, dtype=torch.float64)
        An, Bn = A.numpy(), B.numpy()
        rnn = torch.nn.RNN(1, n, batch_first=True, nonlinearity="tanh").double()
        with torch.no_grad():
            rnn.weight_ih_l0.copy_(cell.W_uh)
            rnn.bias_ih_l0.copy_(cell.b)
            rnn.bias_hh_l0.zero_()

        def loop():
            ys = []
            with torch.no_grad():
                for v in range(n_w):
                    rnn.weight_hh_l0.copy_(Ws[v])
                    h, _ = rnn(inputs)
                    ys.append(h @ cell.W_r.T + cell.b_r)
            out["ref"] = torch.stack(ys)

        # interleaved rounds, minimum of each: the three see the same background load
        def batched_torch():  # the same rollout with RNNPROBE_NUMPY_KERNELS=0: torch's bmm and tanh
            with kernels.numpy_kernels(False):
                out["y_torch"] = torch.cat([rollout_variants(cell, Ws[i:i + chunk], inputs)
                                            for i in range(0, n_w, chunk)])

        # the two components alone, in the rollout's chunks and buffers (inputs: a bounded state)
        parts = [(torch.tanh(torch.randn(min(chunk, n_w - i), trials, n, dtype=torch.float64)),
                  Ws[i:i + chunk].transpose(1, 2)) for i in range(0, n_w, chunk)]
        bufs = [torch.empty_like(h) for h, _ in parts]

        def products():
            for (h, WT), p in zip(parts, bufs):
                for _ in range(steps):
                    kernels.matmul_(h, WT, p)

        pre = [torch.randn(h.shape, dtype=torch.float64) for h, _ in parts]  # preactivation-like values

        def nonlinearity():  # what tanh_ does in place, from a fixed source so every step sees the same values
            for x, p in zip(pre, bufs):
                for _ in range(steps):
                    np.tanh(x.numpy(), out=p.numpy())

        t_gemm = t_batched = t_loop = t_torch = t_prod = t_tanh = float("inf")
        for _ in range(reps):
            t_prod = min(t_prod, best(products, 1)[0])
            t_tanh = min(t_tanh, best(nonlinearity, 1)[0])
            t_torch = min(t_torch, best(batched_torch, 1)[0])
            # the floor is the faster of the two BLAS libraries at hand (torch's MKL, NumPy's OpenBLAS)
            t_gemm = min(t_gemm, best(lambda: A @ B, 1)[0] * flops / (2.0 * side**3),
                         best(lambda: An @ Bn, 1)[0] * flops / (2.0 * side**3))
            t_batched = min(t_batched, best(batched, 1)[0])
            t_loop = min(t_loop, best(loop, 1)[0])
        err = float(max((out["ref"] - out["y"]).abs().max(), (out["y_torch"] - out["y"]).abs().max()))
        assert err < 1e-10, err
        print(f"| {n} | {chunk} | {t_batched:.3f} | {flops / t_batched / 1e9:.1f} | {t_gemm:.3f} | "
              f"**{t_batched / t_gemm:.2f}** | {t_prod:.3f} | {t_tanh:.3f} | {(t_prod + t_tanh) / t_gemm:.2f} | "
              f"{t_loop:.3f} | **{t_loop / t_batched:.2f}** | {t_torch:.3f} | "
              f"{t_torch / t_batched:.2f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("# rnnprobe schur benchmarks\n")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} logical CPUs (shared); "
          f"threads: torch {torch.get_num_threads()}, OMP/OpenBLAS {os.environ['OPENBLAS_NUM_THREADS']}; "
          f"torch {torch.__version__}, numpy {np.__version__}, scipy {scipy.__version__}")
    if args.quick:
        bench_decomposition([128, 256], 1)
        bench_ablation([32], 1, trials=64, steps=20)
    else:
        bench_decomposition([256, 512, 1024, 2048], 3)
        bench_ablation([64, 512], 3)


if __name__ == "__main__":
    main()
