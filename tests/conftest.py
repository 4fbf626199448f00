"""Shared test settings: deterministic hypothesis runs, headless plots."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

from hypothesis import settings  # noqa: E402

# Tests must be deterministic: hypothesis draws the same examples every run.
settings.register_profile("rnnprobe", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("rnnprobe")
