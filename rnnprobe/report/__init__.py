"""Reports: one writer for every analysis (HDF5 + plots + JSON), and readers."""

from rnnprobe.report.hdf5 import jsonable, read_tree
from rnnprobe.report.writer import SCHEMA_VERSION, Provenance, ReportPaths, report_stem, write_report

__all__ = ["SCHEMA_VERSION", "Provenance", "ReportPaths", "report_stem", "write_report", "read_tree", "jsonable"]
