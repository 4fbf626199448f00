"""Recurrent cells behind one interface (see :mod:`rnnprobe.cells.base`)."""

from rnnprobe.cells.base import Cell, NoRecurrentMatrix
from rnnprobe.cells.elman import FORMS, ElmanCell
from rnnprobe.cells.gated import GRUCell, LSTMCell
from rnnprobe.cells.nonlinearities import NONLINEARITIES, get_nonlinearity
from rnnprobe.cells.user import UserCell, import_cell_class

__all__ = [
    "Cell",
    "NoRecurrentMatrix",
    "ElmanCell",
    "FORMS",
    "GRUCell",
    "LSTMCell",
    "UserCell",
    "import_cell_class",
    "NONLINEARITIES",
    "get_nonlinearity",
]
