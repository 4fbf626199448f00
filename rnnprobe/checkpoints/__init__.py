"""Checkpoint loading: files -> the canonical model, never running code from a file.

One module per concern: ``safety`` (size cap, content sniffing, hashes),
``sidecar`` (``<ckpt>.json``), a reader per format (``torch_format``,
``safetensors_format``, ``numpy_format``, ``hdf5_format``), ``layouts`` (which
key is which canonical tensor), ``loader`` (options + sidecar + layout -> Model)
and ``summary`` (what ``rnnprobe inspect`` prints).
"""

from rnnprobe.checkpoints.loader import load_checkpoint
from rnnprobe.checkpoints.options import LoadOptions
from rnnprobe.checkpoints.safety import sha256_file
from rnnprobe.checkpoints.sidecar import read_sidecar
from rnnprobe.checkpoints.summary import model_summary, spectral_radius

__all__ = ["LoadOptions", "load_checkpoint", "read_sidecar", "model_summary", "sha256_file", "spectral_radius"]
