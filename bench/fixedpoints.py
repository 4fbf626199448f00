"""Fixed points of the 3-bit flip-flop net (N = 128, 1024 states, noise 0.5), and scaling to N = 2048.

    .venv/bin/python bench/fixedpoints.py [--threads 2] [--repeat 7] [--sizes 128,256,512,1024,2048]

Flip-flop: ``../shared/bench/flipflop_rnn128_tanh.pt`` (``nn.RNN`` 3 -> 128, tanh, and a
Linear readout), float64. Initial states: 1024 states drawn without replacement from
128 trials x 64 steps of the flip-flop task (``rnnprobe.tasks.flipflop``, pulse
probability 0.5) plus N(0, 0.5^2) noise; zero input. The peer, FixedPointFinder
(PyTorch version, default settings, float32) takes a median 3.6 s per
``find_fixed_points`` call on a 2-core machine with 2 threads (optimisation 2.8 s,
Jacobians 0.26-0.45 s, eigendecomposition 0.21-0.32 s).

Timed (wall clock; best and median of ``--repeat`` interleaved rounds, the call
only, after a warm-up call; imports and data are outside):

* floor: one float64 evaluation of the map at the 1024 candidates (``cell.step``),
  the unit of the ratios below;
* solve: ``find_fixed_points`` (warm start, Newton-Krylov, merging and its
  verification, deduplication), the counterpart of the peer's optimisation;
* solve + eigenvalues: plus Jacobians and eigenvalues (no eigenvectors) of the
  distinct points;
* solve + linearize: plus Jacobians and the eigendecomposition (eigenvalues
  and eigenvectors) of the distinct points, the same work as the peer's call;
* analysis: the whole ``rnnprobe fixedpoints`` run function (sampling from the
  task, solve, linearize, memory basis, cyclic test, PCA), no file I/O.

Checks: 27 distinct points, every q <= 1e-20, 8 stable.

Scaling (``--sizes``): a planted 3-bit memory ``W = 0.5 G / sqrt(N) + 2 P D P^T``
(``G`` Gaussian; three groups of units, ``P`` their indicators, ``D`` one over
the group sizes: each group excites itself through its mean, a bistable bit),
1024 candidates from autonomous trajectories plus noise 0.5; each size runs in
a subprocess that reports the wall time of solve and of solve + linearize and
the peak resident memory above the level before the call (sampled every 2 ms).

The machine may be shared: the load average is printed; compare ratios to the
floor, and rerun when the load is low.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FLIPFLOP = ROOT.parent / "shared" / "bench" / "flipflop_rnn128_tanh.pt"
PEER_CALL = 3.6  # s, median FixedPointFinder find_fixed_points call
PEER_OPT = 2.8  # s, median of its optimisation phase


def timed(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def flipflop_cell():
    from rnnprobe.cells import ElmanCell

    sd = torch.load(FLIPFLOP, weights_only=True)
    return ElmanCell(sd["rnn.weight_hh_l0"], sd["rnn.weight_ih_l0"], sd["rnn.bias_ih_l0"] + sd["rnn.bias_hh_l0"],
                     sd["readout.weight"], sd["readout.bias"])


def flipflop_states(cell, seed: int = 0):
    from rnnprobe import tasks

    data = tasks.flipflop(batch=128, seed=seed, length=64, p=0.5)
    with torch.no_grad():
        H = cell.rollout(cell.initial_state(128), torch.as_tensor(data.inputs)).reshape(-1, cell.n_state)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(H.shape[0], generator=g)[:1024]
    return H[idx] + 0.5 * torch.randn(1024, cell.n_state, generator=g, dtype=H.dtype)


def planted_cell(N: int, seed: int = 0):
    """Three groups of units (i mod 3), each exciting itself through its mean: three bistable
    "bits" (27 fixed points, 8 stable) in a weak random background."""
    from rnnprobe.cells import ElmanCell

    rng = np.random.default_rng(seed)
    group = np.arange(N) % 3
    P = (group[:, None] == np.arange(3)[None, :]).astype(float)
    W = 0.5 * rng.standard_normal((N, N)) / np.sqrt(N) + 2.0 * P @ (P / P.sum(0)).T
    return ElmanCell(W, np.zeros((N, 1)), None)


def planted_states(cell, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s0 = torch.randn(32, cell.n_state, generator=g, dtype=torch.float64)
    with torch.no_grad():
        H = cell.autonomous(s0, 64).reshape(-1, cell.n_state)
    idx = torch.randperm(H.shape[0], generator=g)[:1024]
    return H[idx] + 0.5 * torch.randn(1024, cell.n_state, generator=g, dtype=H.dtype)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn):
    """``(result, peak RSS above the level before the call, bytes)``, sampled every 2 ms by a thread."""
    import threading

    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = fn()
    finally:
        stop.set()
        t.join()
    return out, max(peak[0], _rss()) - base


def one_size(N: int, repeat: int, with_linearize: bool = True) -> dict:
    """Run in a subprocess: time and peak memory at one size."""
    from rnnprobe.numerics.fixedpoints import find_fixed_points, linearize

    cell = planted_cell(N)
    x0 = planted_states(cell)
    linearize(cell, find_fixed_points(cell, None, x0[:64]).states[:2])  # one-time start-up allocations
    fps, mem_solve = peak_memory(lambda: find_fixed_points(cell, None, x0))
    solve, fps = timed(lambda: find_fixed_points(cell, None, x0), repeat)
    if with_linearize:
        _, mem_all = peak_memory(lambda: linearize(cell, find_fixed_points(cell, None, x0).states))
        both, _ = timed(lambda: linearize(cell, find_fixed_points(cell, None, x0).states), repeat)
    else:
        mem_all, both = float("nan"), [float("nan")]
    return {"N": N, "solve_s": min(solve), "solve_linearize_s": min(both), "n_unique": fps.n_unique,
            "n_unconverged": fps.n_label(2), "max_q": float(fps.q.max()) if fps.n_unique else None,
            "newton_iterations": fps.stats["newton_iterations"],
            "peak_mb_solve": mem_solve / 2**20, "peak_mb_solve_linearize": mem_all / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--repeat", type=int, default=7, help="timed rounds")
    ap.add_argument("--sizes", default="128,256,512,1024,2048", help="scaling sizes ('' to skip)")
    ap.add_argument("--scaling-repeat", type=int, default=3, help="timed rounds per size (1 above N=1024)")
    ap.add_argument("--linearize-max", type=int, default=2048, help="sizes above this: solve only")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one is not None:
        print(json.dumps(one_size(args.one, args.scaling_repeat, args.one <= args.linearize_max)))
        return 0

    from rnnprobe.analyses.base import RunContext
    from rnnprobe.analyses.fixedpoints import FixedpointsOptions, run
    from rnnprobe.model import Model
    from rnnprobe.numerics.fixedpoints import STABLE, classify, find_fixed_points, linearize
    from rnnprobe import tasks

    print(f"# bench/fixedpoints.py  torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cpus, {platform.processor() or platform.machine()}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    cell = flipflop_cell()
    x0 = flipflop_states(cell)
    model = Model(cell=cell, task="flipflop:length=64,p=0.5")
    ctx = RunContext(task_source=lambda b: tasks.make_task(model.task, batch=b, seed=0))
    opts = FixedpointsOptions(n_init=1024, noise=0.5)

    def solve():
        return find_fixed_points(cell, None, x0)

    def solve_linearize():
        fps = find_fixed_points(cell, None, x0)
        return fps, linearize(cell, fps.states)

    def solve_eigenvalues():
        fps = find_fixed_points(cell, None, x0)
        return fps, linearize(cell, fps.states, eigenvectors=False)

    def analysis():
        ctx._task_cache.clear()
        return run(model, opts, ctx)

    def floor():
        with torch.no_grad():
            return cell.step(x0)

    solve_linearize()  # warm-up (first-call allocations, autograd engine start)
    analysis()
    rounds = {"floor": [], "solve": [], "solve_eigenvalues": [], "solve_linearize": [], "analysis": []}
    for _ in range(args.repeat):
        t, _ = timed(floor, 20)
        rounds["floor"].append(min(t))
        t, fps = timed(solve, 1)
        rounds["solve"] += t
        t, _ = timed(solve_eigenvalues, 1)
        rounds["solve_eigenvalues"] += t
        t, (fps2, lin) = timed(solve_linearize, 1)
        rounds["solve_linearize"] += t
        t, res = timed(analysis, 1)
        rounds["analysis"] += t
    fl = min(rounds["floor"])
    codes, n_unstable, _ = classify(lin.eigenvalues, 1e-3)
    checks = {
        "n_unique": fps.n_unique,
        "max_q": float(fps.q.max()),
        "all_q_le_1e-20": bool(fps.q.max() <= 1e-20),
        "n_stable": int((codes == STABLE).sum()),
        "n_unconverged": fps.n_label(2),
        "analysis_n_unique": res.n_unique,
        "analysis_max_q": float(res.q.max()),
    }
    print(f"flip-flop N=128, 1024 candidates: {json.dumps(checks)}")
    print(f"solver stats: {json.dumps({k: v for k, v in fps.stats.items() if k != 'active'})}")
    print(f"{'what':<22} {'best s':>9} {'median s':>9} {'max s':>9} {'x floor':>9} {'vs 3.6 s':>9} {'vs 2.8 s':>9}")
    print(f"{'floor (1 step)':<22} {fl:9.5f} {statistics.median(rounds['floor']):9.5f} "
          f"{max(rounds['floor']):9.5f} {1.0:9.1f}")
    for k in ("solve", "solve_eigenvalues", "solve_linearize", "analysis"):
        b, m = min(rounds[k]), statistics.median(rounds[k])
        print(f"{k:<22} {b:9.4f} {m:9.4f} {max(rounds[k]):9.4f} {b / fl:9.0f} {PEER_CALL / m:8.1f}x "
              f"{PEER_OPT / m:8.1f}x")
    print("(speed-ups use the median; the peer's 3.6 s is its whole call, 2.8 s its optimisation phase)")

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if sizes:
        print(f"\nscaling: planted 3-bit memory, 1024 candidates, {args.threads} threads")
        print(f"{'N':>6} {'solve s':>9} {'+lin s':>9} {'unique':>7} {'unconv':>7} {'max q':>9} {'iters':>6} "
              f"{'MB solve':>9} {'MB +lin':>9}")
    for N in sizes:
        rep = args.scaling_repeat if N <= 1024 else 1
        out = subprocess.run([sys.executable, __file__, "--one", str(N), "--threads", str(args.threads),
                              "--scaling-repeat", str(rep), "--linearize-max", str(args.linearize_max)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['N']:>6} {r['solve_s']:9.3f} {r['solve_linearize_s']:9.3f} {r['n_unique']:>7} "
              f"{r['n_unconverged']:>7} {r['max_q'] or float('nan'):9.1e} {r['newton_iterations']:>6} "
              f"{r['peak_mb_solve']:9.0f} {r['peak_mb_solve_linearize']:9.0f}")
    print(f"# load average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
