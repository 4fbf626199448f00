"""Options shared by every command that reads a checkpoint, declared once.

``with_options(*groups)`` adds the parameters of the named groups (loading,
task data, output) to a command's signature and hands the command one
:class:`CommonOptions` object instead, so no command repeats them. Errors are
turned into one line on stderr and DESIGN.md's exit codes by :func:`guarded`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import inspect
import re
import shlex
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import click
import typer

from rnnprobe.cli.console import Terminal
from rnnprobe.errors import EXIT_ANALYSIS, EXIT_INPUT, RnnprobeError

__all__ = ["CommonOptions", "with_options", "guarded", "parse_size", "choice_enum", "plain", "LOAD", "TASK", "OUTPUT"]

LOAD, TASK, OUTPUT = "Loading", "Task data", "Output"


def choice_enum(name: str, choices) -> type[enum.Enum]:
    """A str Enum for a fixed set of choices (how Typer spells a choice option)."""
    return enum.Enum(name, {c: c for c in choices}, type=str)


def plain(value: Any) -> Any:
    """Enum members back to their string values."""
    return value.value if isinstance(value, enum.Enum) else value


_NONLIN = choice_enum("Nonlinearity", ["tanh", "relu", "linear", "softplus", "sigmoid"])
_FORM = choice_enum("Form", ["leaky", "rate-outside", "residual"])
_DIRECTION = choice_enum("Direction", ["forward", "reverse"])
_DTYPE = choice_enum("DType", ["float64", "float32"])


def parse_size(text: str) -> int:
    """``2G``, ``500MiB``, ``1048576`` -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise typer.BadParameter(f"{text!r} is not a size (e.g. 2G, 500M, 1048576)")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


# name -> (group, annotation, default)
_PARAMS: dict[str, tuple[str, Any, Any]] = {
    # loading
    "key": (LOAD, Annotated[Optional[list[str]], typer.Option(
        "--key", metavar="NAME=PATH", rich_help_panel=LOAD,
        help="Which file key holds a canonical tensor, e.g. --key W_hh=net.rec.weight (W_hh, W_uh, W_r, b, b_r); repeatable.")], None),
    "alpha": (LOAD, Annotated[Optional[float], typer.Option(
        help="Leak alpha = dt/tau in (0, 1] (1 = Elman).", rich_help_panel=LOAD)], None),
    "nonlinearity": (LOAD, Annotated[Optional[_NONLIN], typer.Option(
        help="phi, when the file does not say it (nn.RNN files never do; default tanh).",
        rich_help_panel=LOAD)], None),
    "dt": (LOAD, Annotated[Optional[float], typer.Option(
        help="Time per step in your time units (for time constants in time units).", rich_help_panel=LOAD)], None),
    "form": (LOAD, Annotated[Optional[_FORM], typer.Option(
        help="leaky (default), rate-outside (PsychRNN) or residual (Euler: h + eps phi(.)).",
        rich_help_panel=LOAD)], None),
    "eps": (LOAD, Annotated[Optional[float], typer.Option(
        help="Euler step of a residual cell (with --form residual).", rich_help_panel=LOAD)], None),
    "layer": (LOAD, Annotated[int, typer.Option(min=0, help="Which layer of a multi-layer RNN.",
                                                rich_help_panel=LOAD)], 0),
    "direction": (LOAD, Annotated[_DIRECTION, typer.Option(
        help="Direction of a bidirectional RNN.", rich_help_panel=LOAD)], "forward"),
    "readout": (LOAD, Annotated[Optional[str], typer.Option(
        help="Key (prefix) of the readout Linear when several fit.", rich_help_panel=LOAD)], None),
    "cell": (LOAD, Annotated[Optional[str], typer.Option(
        metavar="PKG.MODULE:CLASS", rich_help_panel=LOAD,
        help="A user cell class (a torch module with step(h, u)); runs your code, never the file's.")], None),
    "trust_pickle": (LOAD, Annotated[bool, typer.Option(
        "--trust-pickle", rich_help_panel=LOAD,
        help="Load a torch pickle that weights_only refuses. DANGEROUS: runs code from the file.")], False),
    "max_bytes": (LOAD, Annotated[str, typer.Option(
        metavar="SIZE", help="Refuse checkpoints larger than this (e.g. 2G, 500M).", rich_help_panel=LOAD)], "2G"),
    "max_hidden": (LOAD, Annotated[int, typer.Option(
        min=1, help="Refuse models with more hidden units than this.", rich_help_panel=LOAD)], 16384),
    "lattice": (LOAD, Annotated[Optional[str], typer.Option(
        metavar="HxW|L", rich_help_panel=LOAD,
        help="Lattice of a convolutional recurrence (a torch Conv state dict does not store it), e.g. 64x64.")],
        None),
    # task data
    "task": (TASK, Annotated[Optional[str], typer.Option(
        metavar="NAME[:k=v,...]", rich_help_panel=TASK,
        help="Task to generate inputs from (copy, flipflop, sine, cdi, s1, lattice); default: the sidecar's task.")], None),
    "data": (TASK, Annotated[Optional[Path], typer.Option(
        dir_okay=False, rich_help_panel=TASK,
        help="npz or h5 file with inputs [B,T,d_in], targets [B,T,d_out], optional mask [B,T].")], None),
    # output
    "out": (OUTPUT, Annotated[Path, typer.Option(
        "--out", "-o", file_okay=False, help="Folder for reports.", rich_help_panel=OUTPUT)], Path("rnnprobe-reports")),
    "json": (OUTPUT, Annotated[bool, typer.Option(
        "--json", help="Print the JSON summary on stdout.", rich_help_panel=OUTPUT)], False),
    "quiet": (OUTPUT, Annotated[bool, typer.Option(
        "--quiet", "-q", help="No messages or progress (errors only).", rich_help_panel=OUTPUT)], False),
    "debug": (OUTPUT, Annotated[bool, typer.Option(
        "--debug", help="Show tracebacks.", rich_help_panel=OUTPUT)], False),
    "seed": (OUTPUT, Annotated[int, typer.Option(help="Seed of every random choice.", rich_help_panel=OUTPUT)], 0),
    "device": (OUTPUT, Annotated[str, typer.Option(
        help="cpu, cuda, cuda:N or auto.", rich_help_panel=OUTPUT)], "cpu"),
    "dtype": (OUTPUT, Annotated[_DTYPE, typer.Option(
        help="Precision of the analysis.", rich_help_panel=OUTPUT)], "float64"),
    "plots": (OUTPUT, Annotated[bool, typer.Option(
        "--plots/--no-plots", help="Write PNG plots beside the report.", rich_help_panel=OUTPUT)], True),
}


@dataclasses.dataclass
class CommonOptions:
    """The shared options of one command invocation, as given."""

    values: dict[str, Any]
    command: str

    def __post_init__(self) -> None:
        self.values = {k: plain(v) for k, v in self.values.items()}

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError as e:
            raise AttributeError(name) from e

    @functools.cached_property
    def terminal(self) -> Terminal:
        return Terminal(quiet=bool(self.values.get("quiet")), command=f"rnnprobe {self.command}")

    def load_options(self):
        """The LoadOptions these flags describe."""
        from rnnprobe.checkpoints import LoadOptions

        v = self.values
        keys = {}
        for item in v.get("key") or []:
            if "=" not in item:
                raise typer.BadParameter(f"--key {item!r} must be NAME=PATH, e.g. W_hh=rnn.weight_hh_l0")
            name, path = item.split("=", 1)
            keys[name.strip()] = path.strip()
        return LoadOptions(
            keys=keys, alpha=v.get("alpha"), nonlinearity=v.get("nonlinearity"), dt=v.get("dt"),
            form=v.get("form"), eps=v.get("eps"), layer=v.get("layer", 0),
            direction=v.get("direction", "forward"), readout=v.get("readout"), cell=v.get("cell"),
            trust_pickle=bool(v.get("trust_pickle")), max_bytes=parse_size(v.get("max_bytes", "2G")),
            max_hidden=v.get("max_hidden", 16384), lattice=v.get("lattice"),
        )

    def run_settings(self, **changes):
        """The RunSettings these flags describe."""
        from rnnprobe.pipeline import RunSettings

        v = self.values
        settings = RunSettings(
            out_dir=v.get("out", Path("rnnprobe-reports")), seed=v.get("seed", 0), device=v.get("device", "cpu"),
            dtype=v.get("dtype", "float64"), task=v.get("task"), data=v.get("data"), plots=v.get("plots", True),
            argv=shlex.join(["rnnprobe", *sys.argv[1:]]),
        )
        return dataclasses.replace(settings, **changes)


def common_parameters(*groups: str, only: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    return [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
        for name, (group, ann, default) in _PARAMS.items()
        if group in groups or name in only
    ]


def with_options(*groups: str, only: tuple[str, ...] = (), command: str | None = None) -> Callable:
    """Decorator: add the shared parameters of ``groups`` to a command.

    The command declares its own parameters plus ``common: CommonOptions``;
    the shared ones are appended to its signature for Typer and bundled into
    ``common`` when it is called. ``only`` adds single shared parameters.
    """

    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "common"]
        shared = common_parameters(*groups, only=only)
        names = {p.name for p in shared}

        @functools.wraps(fn)
        def wrapper(**kwargs):
            common = CommonOptions({k: kwargs.pop(k) for k in list(kwargs) if k in names},
                                   command=command or fn.__name__.rstrip("_").replace("_", "-"))
            return fn(common=common, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=own + shared)
        wrapper.__annotations__ = {}
        del wrapper.__wrapped__
        return wrapper

    return deco


@contextlib.contextmanager
def guarded(terminal: Terminal, *, debug: bool = False) -> Iterator[None]:
    """Map exceptions to DESIGN.md's exit codes with one line on stderr.

    RnnprobeError -> its exit code; anything else -> 3 ("analysis failed").
    Tracebacks only with ``--debug``.
    """
    try:
        yield
    except typer.Exit:
        raise
    except (click.exceptions.ClickException, click.exceptions.Abort):
        raise
    except RnnprobeError as e:
        if debug:
            traceback.print_exc()
        terminal.error(str(e))
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        terminal.error("interrupted; no partial report was left behind")
        raise typer.Exit(130) from None
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        if debug:
            traceback.print_exc()
        terminal.error(f"{e.filename}: {e.strerror}")
        raise typer.Exit(EXIT_INPUT) from None
    except Exception as e:  # the analysis itself broke: say so, exit 3
        if debug:
            traceback.print_exc()
        terminal.error(f"failed: {type(e).__name__}: {e} (run with --debug for the traceback)")
        raise typer.Exit(EXIT_ANALYSIS) from None
