"""Step equivariance error, 10^4 states x 64 group elements, N = 256. Not a timed test.

    .venv/bin/python bench/equivariance.py [--n 256] [--states 10000] [--elements 64] [--repeat 3] [--device cpu]

A tanh net with a circulant W_hh (N units, 8 inputs), float64, the cyclic
group (N elements, 64 of them used) acting by gathering. Times, best of
``--repeat`` interleaved rounds, all in the same run:

* floor: the 64 x 10^4 forward steps themselves, ``cell.step`` on states
  that are already transformed (the work no method can avoid);
* ``step_errors``: transform states and inputs (gather), step, transform the
  next states, norms, for every (element, state) pair, batched;
* a per-element loop with dense permutation matrices (``P x``, one step and
  one ``P F`` per element), the straightforward way;
* the whole analysis (``run`` with ``--states random``: sampling, errors,
  readout, rollout of 200 steps) and ``--discover`` (signed permutations and
  commutant of the N x N circulant).

Timings on a shared machine are noisy: the ratios to the floor are the
figures to compare.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from _timing import best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="hidden units")
    ap.add_argument("--states", type=int, default=10_000, help="sampled states")
    ap.add_argument("--elements", type=int, default=64, help="group elements")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()

    from rnnprobe.analyses.base import RunContext
    from rnnprobe.analyses.equivariance import _CHUNK_ELEMENTS, EquivarianceOptions, run, step_errors
    from rnnprobe.cells import ElmanCell
    from rnnprobe.groups import parse_group
    from rnnprobe.model import Model

    dev = torch.device(args.device)
    print(f"torch {torch.__version__} on {dev}: {torch.get_num_threads()} intra-op threads; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}")
    N, S, G, d = args.n, args.states, args.elements, 8
    rng = np.random.default_rng(0)
    i = np.arange(N)
    W = (rng.normal(size=N) * 1.5 / np.sqrt(N))[(i[:, None] - i[None, :]) % N]
    U = np.tile(rng.normal(size=(1, d)), (N, 1))  # shift-invariant input weights: inputs transform trivially
    cell = ElmanCell(W, U, np.full(N, 0.1), rng.normal(size=(2, N)), None, device=dev)
    group = parse_group("cyclic", n_state=N, n_inputs=d, n_outputs=2)
    sub, _ = group.sample(G, np.random.default_rng(1))
    g = torch.Generator(device=dev).manual_seed(0)
    X = torch.randn(S, N, generator=g, dtype=torch.float64, device=dev)
    Uin = torch.randn(S, d, generator=g, dtype=torch.float64, device=dev)
    print(f"N={N}, {S} states x {G} elements = {S * G} steps, float64; chunks of {_CHUNK_ELEMENTS} entries")

    # floor: the same steps on states already transformed, in the same chunking
    chunk = max(1, _CHUNK_ELEMENTS // (S * N))
    Xg = X.repeat(chunk, 1)
    Ug = Uin.repeat(chunk, 1)

    def floor():
        for start in range(0, G, chunk):
            k = min(chunk, G - start)
            cell.step(Xg[: k * S], Ug[: k * S])

    E = step_errors(cell, sub, X, Uin)["errors"]

    Pd = torch.as_tensor(sub.hidden.matrices(), device=dev)

    def loop():
        F = cell.step(X, Uin)
        worst = torch.zeros((), dtype=torch.float64, device=dev)
        for P in Pd:
            e = torch.linalg.vector_norm(cell.step(X @ P.T, Uin) - F @ P.T, dim=-1) / (1 + F.norm(dim=-1))
            worst = torch.maximum(worst, e.max())
        return worst

    assert abs(float(loop()) - float(E.max())) <= 1e-14
    # interleaved rounds, so that a burst of load on the shared machine hits every candidate alike
    times = {"floor": [], "batched": [], "loop": []}
    for _ in range(args.repeat):
        for name, fn in (("floor", floor), ("batched", lambda: step_errors(cell, sub, X, Uin)), ("loop", loop)):
            times[name].append(best(fn, 1)[0])
    t_floor, t_batched, t_loop = (min(times[k]) for k in ("floor", "batched", "loop"))
    model = Model(cell=cell)
    opts = EquivarianceOptions(group="cyclic", states="random", samples=S, elements=G)
    t_run, r = best(lambda: run(model, opts, RunContext(device=dev)), 1)
    t_disc, rd = best(lambda: run(model, EquivarianceOptions(discover=True, states="random", samples=100,
                                                             rollout_steps=1), RunContext(device=dev)), 1)

    def row(name, t, note=""):
        print(f"  {name:<44s} {t * 1e3:9.1f} ms  {t / t_floor:6.2f} x floor  {note}")

    print("results:")
    row("floor: 64 x 10^4 forward steps", t_floor)
    row("step_errors (batched, gather)", t_batched, f"E_eq = {float(E.max()):.3g}")
    row("per-element loop, dense P", t_loop, f"batched is {t_loop / t_batched:.2f}x faster")
    row("whole analysis (random states, rollout 200)", t_run, f"E_eq = {r.error:.3g}")
    row("--discover (N x N circulant, + 100-state run)", t_disc,
        f"found {rd.discovered['group']} ({', '.join(rd.discovered['generators'])}); "
        f"commutant {rd.discovered['commutant_dim']}-dim, {rd.discovered['continuous_dim']} survive tanh")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
