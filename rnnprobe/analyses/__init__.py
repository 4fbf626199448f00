"""Analyses: one module each, Options -> Result, no I/O (see ``base``)."""

from rnnprobe.analyses.base import AnalysisSpec, Options, Result, RunContext, option
from rnnprobe.analyses.registry import analyses, get_analysis

__all__ = ["AnalysisSpec", "Options", "Result", "RunContext", "option", "analyses", "get_analysis"]
