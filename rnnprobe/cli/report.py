"""``rnnprobe report show FILE.h5``: read any report back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.tree import Tree

from rnnprobe.cli.common import guarded
from rnnprobe.cli.console import Terminal, kv_table, print_json

app = typer.Typer(help="Read reports back.", no_args_is_help=True)


def _tree(label: str, g: dict) -> Tree:
    t = Tree(label)
    if g.get("attrs"):
        t.add(kv_table(g["attrs"]))
    for name, info in g.get("datasets", {}).items():
        extra = ""
        if "value" in info:
            extra = f" = {info['value']}"
        elif "min" in info:
            extra = f"  [{info['min']:.4g} .. {info['max']:.4g}]"
        t.add(f"{name}  {info['dtype']} {tuple(info['shape'])}{extra}")
    for name, sub in g.get("groups", {}).items():
        t.add(_tree(f"[bold]{name}/[/bold]", sub))
    return t


@app.command("show", epilog="Example: rnnprobe report show rnnprobe-reports/copy16_rnn64.schur.h5")
def show(
    report: Annotated[Path, typer.Argument(help="An .h5 report written by rnnprobe.", dir_okay=False)],
    json_: Annotated[bool, typer.Option("--json", help="Print the description as JSON.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Print a readable summary of any report: provenance, model, results."""
    from rnnprobe.report.reader import describe_report

    term = Terminal(command="rnnprobe report show")
    with guarded(term, debug=debug):
        d = describe_report(report)
        if json_:
            print_json(d)
            return
        prov = d["provenance"]
        term.show_data(kv_table(prov, title=f"{report} ({d['analysis']})"))
        if d["model"]:
            term.show_data(kv_table(d["model"]["attrs"], title="model"))
        term.show_data(_tree(f"[bold]/{d['analysis']}[/bold]", d["results"]))
        if d["summary"]:
            skip = ("options", "plots", "report", "warnings", "gate_failures", "checkpoint_sha256")
            term.show_data(kv_table(d["summary"], title="summary", skip=skip))


@app.command("table", epilog="Example: rnnprobe report table rnnprobe-reports --format csv > summary.csv")
def table(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="The --out folder of a zoo run.")],
    format_: Annotated[str, typer.Option("--format", help="table, csv or jsonl (on stdout).")] = "table",
    write: Annotated[bool, typer.Option("--write", help="Also rewrite DIR/summary.csv and DIR/summary.jsonl.")] = False,
    fail_if: Annotated[Optional[list[str]], typer.Option(
        "--fail-if", metavar="EXPR", help="A gate as in rnnprobe zoo (repeatable): exit 1 where it holds.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """The zoo's summary table, rebuilt from the reports and failure records in DIR (exit codes as the zoo's)."""
    from rnnprobe.cli.zoo import report_table

    if format_ not in ("table", "csv", "jsonl"):
        raise typer.BadParameter(f"--format {format_!r} must be table, csv or jsonl")
    report_table(directory, fmt=format_, write=write, fail_if=fail_if, debug=debug)
