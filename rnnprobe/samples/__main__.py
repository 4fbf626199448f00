"""``python -m rnnprobe.samples --out sample_checkpoints [--only NAME ...] [--list]``.

Trains every sample declared in the package (or those named with ``--only``),
writes each checkpoint with its JSON sidecar into ``--out``, and rewrites
``--out/README.md`` from all sidecars there. Runs on one torch thread by
default so that results are deterministic on a given machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from rnnprobe.errors import RnnprobeError
from rnnprobe.samples import discover, produce, write_readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rnnprobe.samples",
        description="Train rnnprobe's sample checkpoints (deterministic, CPU, float32).",
        epilog="example: python -m rnnprobe.samples --out sample_checkpoints --only copy_rnn64 cdi_ctrnn",
    )
    parser.add_argument("--out", type=Path, default=Path("sample_checkpoints"), help="output folder")
    parser.add_argument("--only", nargs="+", action="extend", metavar="NAME", help="produce only these samples")
    parser.add_argument("--list", action="store_true", help="list the samples and exit")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: deterministic)")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        if args.list:
            for name, sample in discover().items():
                print(f"{name}\t{sample.description}")
            return 0
        torch.set_num_threads(args.threads)
        produce(args.out, args.only, log=log)
        write_readme(args.out)
    except RnnprobeError as e:
        log(f"error: {e}")
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
