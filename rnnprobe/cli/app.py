"""The ``rnnprobe`` command: every subcommand assembled in one place."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from rnnprobe._version import __version__

app = typer.Typer(
    name="rnnprobe",
    help="Reverse-engineer trained recurrent networks from their checkpoints.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # the locals are weight matrices
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rnnprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Reverse-engineer trained recurrent networks from their checkpoints.

    Every analysis writes an HDF5 report, PNG plots and a JSON summary into --out
    (default rnnprobe-reports/). Exit codes: 0 done, 1 a gate failed, 2 bad usage or
    bad input, 3 an analysis failed.
    """


def _assemble() -> None:
    from rnnprobe.analyses import analyses
    from rnnprobe.cli import inspect as inspect_cmd
    from rnnprobe.cli import report
    from rnnprobe.cli import zoo as zoo_cmd
    from rnnprobe.cli.analysis import add_analysis_command

    app.command("inspect", epilog=f"Example: {inspect_cmd.EXAMPLE}")(inspect_cmd.inspect)
    # the headline analyses first, in the order a user meets them; any other after, by name
    first = ("schur", "fixedpoints", "lyapunov", "equivariance", "dynamics")
    table = analyses()
    for name in [*[n for n in first if n in table], *[n for n in table if n not in first]]:
        add_analysis_command(app, table[name])
    app.command("zoo", epilog=f"Example: {zoo_cmd.EXAMPLE}")(zoo_cmd.zoo)
    app.add_typer(report.app, name="report")


_assemble()


def main() -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    app(prog_name="rnnprobe")


if __name__ == "__main__":
    sys.exit(main())
