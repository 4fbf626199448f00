"""The one timer the benchmark scripts share (imported as ``from _timing import best``; not a benchmark)."""
from __future__ import annotations

import time

import torch


def best(fn, repeat: int = 7) -> tuple[float, object]:
    """``(minimum wall time of `repeat` calls, the last call's result)``: the minimum is the run least
    disturbed by other work on a shared machine. Waits for queued CUDA work around each call."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times, out = [], None
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times), out
