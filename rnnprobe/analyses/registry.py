"""Every analysis that has landed, discovered from the modules of this package.

A module of ``rnnprobe.analyses`` registers itself by defining ``ANALYSIS``
(an :class:`~rnnprobe.analyses.base.AnalysisSpec`); nothing else needs editing
when an analysis is added.
"""

from __future__ import annotations

import importlib
import pkgutil

from rnnprobe.analyses.base import AnalysisSpec
from rnnprobe.errors import InputError

__all__ = ["analyses", "get_analysis"]

_CACHE: dict[str, AnalysisSpec] | None = None


def analyses() -> dict[str, AnalysisSpec]:
    """name -> spec for every registered analysis, in a stable order."""
    global _CACHE
    if _CACHE is None:
        import rnnprobe.analyses as pkg

        found: dict[str, AnalysisSpec] = {}
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if info.name.startswith("_") or info.name in ("base", "registry"):
                continue
            mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
            spec = getattr(mod, "ANALYSIS", None)
            if isinstance(spec, AnalysisSpec):
                found[spec.name] = spec
        _CACHE = found
    return _CACHE


def get_analysis(name: str) -> AnalysisSpec:
    table = analyses()
    if name not in table:
        raise InputError(f"unknown analysis {name!r}; available: {', '.join(table) or 'none'}")
    return table[name]
