"""Load + inspect of a 4096-unit checkpoint (goal: under 3 s). Not a timed test.

    .venv/bin/python bench/load_inspect.py [--n 4096] [--repeat 3] [--orthogonal]

Writes a float32 nn.RNN(3, N) + Linear(N, 2) state dict into a temporary
folder, then times, best of ``--repeat``:

* floor: ``torch.load(weights_only=True, mmap=True)`` and every tensor cast to
  float64, the work no loader can avoid;
* ``load_checkpoint`` (format sniffing, layout inference, float64 cell);
* ``model_summary`` (spectral radius of W_hh: ARPACK above 1024 units, norms);
* ``rnnprobe inspect --json`` as a subprocess, against a floor of the same
  interpreter importing ``rnnprobe.cli.app``.

Timings on a shared machine are noisy: the ratios to the floors measured in
the same run are the figures to compare. ``--orthogonal`` uses an orthogonal
W_hh (every eigenvalue on the unit circle), the worst case for ARPACK, which
then falls back to the full eigendecomposition.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _timing import best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="hidden units")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    ap.add_argument("--orthogonal", action="store_true", help="orthogonal W_hh (ARPACK's worst case)")
    args = ap.parse_args()

    from rnnprobe.checkpoints import load_checkpoint, model_summary

    print(f"torch {torch.__version__}: {torch.get_num_threads()} intra-op threads; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.pt"
        torch.manual_seed(0)
        rnn, fc = torch.nn.RNN(3, args.n, batch_first=True), torch.nn.Linear(args.n, 2)
        if args.orthogonal:
            torch.nn.init.orthogonal_(rnn.weight_hh_l0)
        sd = {**{"rnn." + k: v for k, v in rnn.state_dict().items()},
              **{"readout." + k: v for k, v in fc.state_dict().items()}}
        torch.save(sd, path)
        del rnn, fc, sd
        size = path.stat().st_size
        print(f"checkpoint: nn.RNN(3, {args.n}) + Linear, float32, {size / 2**20:.1f} MiB"
              f"{', orthogonal W_hh' if args.orthogonal else ', torch default init'}")

        def floor():
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return {k: v.to(torch.float64) for k, v in sd.items()}

        t_floor, _ = best(floor, args.repeat)
        t_load, model = best(lambda: load_checkpoint(path), args.repeat)
        t_sum, summary = best(lambda: model_summary(model), args.repeat)
        total = t_load + t_sum
        print(f"floor (torch.load mmap + cast to float64): {t_floor:.3f} s")
        print(f"load_checkpoint:                           {t_load:.3f} s  ({t_load / t_floor:.1f}x floor)")
        print(f"model_summary:                             {t_sum:.3f} s  "
              f"(spectral radius {summary['spectral_radius']:.6f} by {summary['spectral_radius_method']})")
        print(f"load + inspect in-process:                 {total:.3f} s  ({total / t_floor:.1f}x floor); "
              f"goal < 3 s: {'met' if total < 3 else 'NOT met'}")

        env = {**os.environ, "NO_COLOR": "1"}
        exe = [sys.executable, "-m", "rnnprobe", "inspect", str(path), "--json"]
        t_imp, _ = best(lambda: subprocess.run([sys.executable, "-c", "import rnnprobe.cli.app"], check=True,
                                               env=env), max(1, args.repeat - 1))
        t_cli, _ = best(lambda: subprocess.run(exe, check=True, env=env, stdout=subprocess.DEVNULL),
                        max(1, args.repeat - 1))
        print(f"subprocess floor (import rnnprobe.cli.app): {t_imp:.3f} s")
        print(f"rnnprobe inspect --json (subprocess):        {t_cli:.3f} s  ({t_cli / t_imp:.1f}x floor); "
              f"goal < 3 s: {'met' if t_cli < 3 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
