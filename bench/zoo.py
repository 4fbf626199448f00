"""rnnprobe zoo throughput: many checkpoints x analyses with --jobs 1, --jobs 2 and dask (2 workers).

    .venv/bin/python bench/zoo.py [--n 200] [--hidden 64] [--analyses schur,lyapunov]
                                  [--set lyapunov.k=16 ...] [--plots] [--skip-floor]

Writes ``--n`` float32 ``nn.RNN(3, hidden)`` + ``Linear(hidden, 2)`` state
dicts (seeded, in two folders) into a temporary folder, then times:

* floor: the same tasks through ``rnnprobe.pipeline.analyze`` in a plain loop
  in this process (one torch/BLAS thread): the analysis work no zoo runner
  can avoid, without interpreter start, hashing, keys or summaries;
* ``rnnprobe zoo --jobs 1`` (in-process executor), ``--jobs 2`` (two spawned
  worker processes) and ``--executor dask --jobs 2`` (a LocalCluster of two
  one-thread workers), each a fresh subprocess with ``--force`` (every task
  runs), wall time including interpreter start and worker start-up;
* resume: ``rnnprobe zoo --jobs 1`` once more: every task is skipped (hash of
  the checkpoint, key check, summary).

Prints tasks per second, the ratio of each run's wall time to the floor, the
speed-up over ``--jobs 1`` and the parallel efficiency (speed-up / workers),
and the CPU time of each run (user + system, the zoo process and every worker
it started) against the floor's: the CPU figures show the runner's overhead
even when the machine is shared; the wall figures (speed-up, efficiency) need
free cores. The load average before and after is printed. Checks that the three
runs' summaries agree.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"  # before numpy/torch load: the floor runs on one thread, as the zoo's workers do

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402


def write_zoo(root: Path, n: int, hidden: int) -> list[Path]:
    paths = []
    for i in range(n):
        torch.manual_seed(i)
        rnn, fc = torch.nn.RNN(3, hidden), torch.nn.Linear(hidden, 2)
        torch.nn.init.orthogonal_(rnn.weight_hh_l0)
        with torch.no_grad():
            rnn.weight_hh_l0.mul_(0.8 + 0.4 * (i % 5) / 4)  # radii 0.8 .. 1.2
        sd = {**{"rnn." + k: v for k, v in rnn.state_dict().items()},
              **{"fc." + k: v for k, v in fc.state_dict().items()}}
        path = root / f"seed{i % 2}" / f"net{i:04d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(sd, path)
        paths.append(path)
    return paths


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def floor(paths: list[Path], names: list[str], sets: list[str], plots: bool, out: Path) -> tuple[float, float]:
    from rnnprobe.analyses import analyses
    from rnnprobe.pipeline import RunSettings, analyze
    from rnnprobe.zoo import analysis_options, parse_set

    torch.set_num_threads(1)
    specs = analyses()
    options = analysis_options(specs, names, set_values=parse_set(sets))
    t0, c0 = time.perf_counter(), _cpu(resource.RUSAGE_SELF)
    for i, p in enumerate(paths):
        for name in names:
            analyze(specs[name], p, options[name], RunSettings(out_dir=out, plots=plots, stem=f"{p.stem}-{i}"))
    return time.perf_counter() - t0, _cpu(resource.RUSAGE_SELF) - c0


def zoo(root: Path, out: Path, names: list[str], sets: list[str], plots: bool, extra: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (the zoo process and every worker it started) of one ``rnnprobe zoo`` run."""
    cmd = [sys.executable, "-m", "rnnprobe", "zoo", str(root), "--analyses", ",".join(names), "--out", str(out),
           "-q", "--plots" if plots else "--no-plots", *[a for s in sets for a in ("--set", s)], *extra]
    t0, c0 = time.perf_counter(), _cpu(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt, cpu = time.perf_counter() - t0, _cpu(resource.RUSAGE_CHILDREN) - c0
    if r.returncode != 0:
        sys.exit(f"bench/zoo.py: {' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-3000:]}")
    return dt, cpu


def rows(out: Path) -> list[dict]:
    keep = []
    for line in (out / "summary.jsonl").read_text().splitlines():
        r = json.loads(line)
        keep.append({k: v for k, v in r.items() if k not in ("seconds", "status", "report")})
    return keep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="checkpoints")
    ap.add_argument("--hidden", type=int, default=64, help="hidden units N")
    ap.add_argument("--analyses", default="schur,lyapunov")
    ap.add_argument("--set", action="append", default=None, metavar="ANALYSIS.OPTION=VALUE",
                    help="analysis options (default: lyapunov.k=16)")
    ap.add_argument("--plots", action="store_true", help="write plots too (default: --no-plots)")
    ap.add_argument("--skip-floor", action="store_true", help="do not time the plain analyze() loop")
    args = ap.parse_args()
    names = [a for a in args.analyses.split(",") if a]
    sets = args.set if args.set is not None else (["lyapunov.k=16"] if "lyapunov" in names else [])

    from rnnprobe.analyses import analyses

    missing = [a for a in names if a not in analyses()]
    if missing:
        sys.exit(f"bench/zoo.py: analyses {', '.join(missing)} are not registered; registered: {', '.join(analyses())}")
    load0 = os.getloadavg()
    print(f"rnnprobe zoo bench: {args.n} checkpoints nn.RNN(3, {args.hidden}) x {','.join(names)} "
          f"({' '.join(sets) or 'default options'}; {'with' if args.plots else 'no'} plots); torch "
          f"{torch.__version__}, 1 thread per worker, {os.cpu_count()} CPUs; load average {load0[0]:.2f} (1 min)")
    with tempfile.TemporaryDirectory(prefix="rnnprobe-zoo-bench-") as tmp:
        tmp = Path(tmp)
        paths = write_zoo(tmp / "zoo", args.n, args.hidden)
        tasks = len(paths) * len(names)
        results: dict[str, tuple[float, float]] = {}
        if not args.skip_floor:
            results["floor: analyze() loop, 1 thread"] = floor(paths, names, sets, args.plots, tmp / "floor")
        results["zoo --jobs 1"] = zoo(tmp / "zoo", tmp / "j1", names, sets, args.plots, ["--jobs", "1", "--force"])
        results["zoo --jobs 2"] = zoo(tmp / "zoo", tmp / "j2", names, sets, args.plots, ["--jobs", "2", "--force"])
        results["zoo --executor dask --jobs 2"] = zoo(tmp / "zoo", tmp / "dask", names, sets, args.plots,
                                                      ["--executor", "dask", "--jobs", "2", "--force"])
        results["resume: zoo --jobs 1, all skipped"] = zoo(tmp / "zoo", tmp / "j1", names, sets, args.plots,
                                                           ["--jobs", "1"])
        same = rows(tmp / "j1") == rows(tmp / "j2") == rows(tmp / "dask")
    load1 = os.getloadavg()
    base, base_cpu = results.get("floor: analyze() loop, 1 thread", (None, None))
    one = results["zoo --jobs 1"][0]
    print()
    print("| run | wall s | tasks/s | wall / floor | speed-up vs --jobs 1 | parallel efficiency | CPU s | CPU / floor |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (t, cpu) in results.items():
        workers = 2 if ("jobs 2" in name) else 1
        ratio = f"{t / base:.2f}" if base else "-"
        cpu_ratio = f"{cpu / base_cpu:.2f}" if base_cpu else "-"
        if name.startswith("zoo"):
            speed = one / t
            eff = f"{speed / workers:.2f}"
            speed_s = f"{speed:.2f}"
        else:
            speed_s = eff = "-"
        print(f"| {name} | {t:.1f} | {tasks / t:.2f} | {ratio} | {speed_s} | {eff} | {cpu:.1f} | {cpu_ratio} |")
    print()
    print(f"{tasks} tasks per run; load average (1/5/15 min) before {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, "
          f"after {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}; summaries of --jobs 1, --jobs 2 and dask "
          f"{'agree' if same else 'DIFFER'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
