"""rnnprobe: reverse-engineer trained recurrent networks from their checkpoints.

    from rnnprobe import load_checkpoint
    model = load_checkpoint("net.pt")          # canonical model (float64)
    model.cell.jacobian(h, u)                 # the cell interface

The analyses live in :mod:`rnnprobe.analyses`; the command line in :mod:`rnnprobe.cli`.
"""

from rnnprobe._version import __version__
from rnnprobe.cells import Cell, ElmanCell, GRUCell, LSTMCell, UserCell
from rnnprobe.errors import AnalysisError, GateFailed, InputError, RnnprobeError
from rnnprobe.model import Model

__all__ = [
    "__version__",
    "Cell",
    "ElmanCell",
    "GRUCell",
    "LSTMCell",
    "UserCell",
    "Model",
    "RnnprobeError",
    "InputError",
    "AnalysisError",
    "GateFailed",
    "load_checkpoint",
]


def __getattr__(name):
    if name == "load_checkpoint":
        from rnnprobe.checkpoints import load_checkpoint

        return load_checkpoint
    raise AttributeError(name)
