"""A command for every registered analysis, derived from its Options dataclass.

The analysis declares its options once (``option(...)`` fields); this module
turns them into Typer options (``--max-error``, ``--order``, ...) next to the
shared loading / task / output options, and runs the pipeline.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from rnnprobe.analyses.base import AnalysisSpec
from rnnprobe.cli.common import LOAD, OUTPUT, TASK, CommonOptions, choice_enum, common_parameters, guarded, plain
from rnnprobe.cli.console import kv_table, print_json
from rnnprobe.errors import EXIT_GATE

__all__ = ["add_analysis_command", "CHECKPOINT"]

ANALYSIS_PANEL = "Analysis"

CHECKPOINT = Annotated[Path, typer.Argument(
    metavar="CKPT",
    help="Checkpoint file (.pt/.pth/.ckpt/.bin, .safetensors, .npz, .h5, .keras).")]


def _option_parameter(f: dataclasses.Field, tp: Any) -> inspect.Parameter:
    m = f.metadata
    flag = m.get("flag") or "--" + f.name.replace("_", "-")
    kw: dict[str, Any] = {"help": m.get("help", ""), "rich_help_panel": ANALYSIS_PANEL}
    if m.get("metavar"):
        kw["metavar"] = m["metavar"]
    base = tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        base = inner[0]
        tp = Optional[base]
    if m.get("choices"):
        choice = choice_enum(f"{f.name.title()}Choice", m["choices"])
        tp = Optional[choice] if tp is not base else choice
    if base is bool:
        decl = f"{flag}/--no-{flag[2:]}"
    else:
        decl = flag
    if isinstance(f.default, (tuple, list)):
        raise TypeError(f"option {f.name}: sequence options are given as comma-separated strings")
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                             annotation=Annotated[tp, typer.Option(decl, **kw)], default=default)


def _render(spec: AnalysisSpec, summary: dict):
    if spec.render is not None:
        return spec.render(summary)
    skip = ("checkpoint_sha256", "rnnprobe_version", "schema_version", "created", "options", "plots",
            "warnings", "gate_failures", "report", "seed", "device", "dtype")
    return kv_table(summary, title=f"rnnprobe {spec.name}", skip=skip)


def add_analysis_command(app: typer.Typer, spec: AnalysisSpec) -> None:
    """Register ``rnnprobe <spec.name> CKPT [options]`` on ``app``."""
    from rnnprobe import pipeline

    hints = typing.get_type_hints(spec.options)
    fields = dataclasses.fields(spec.options)
    own = [_option_parameter(f, hints[f.name]) for f in fields]
    groups = (LOAD, TASK, OUTPUT) if spec.uses_task else (LOAD, OUTPUT)
    shared = common_parameters(*groups)
    names = {p.name for p in shared}
    ckpt = inspect.Parameter("checkpoint", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=CHECKPOINT)

    def command(**kwargs):
        common = CommonOptions({k: kwargs.pop(k) for k in list(kwargs) if k in names}, command=spec.name)
        checkpoint = kwargs.pop("checkpoint")
        term = common.terminal
        with guarded(term, debug=common.debug):
            options = spec.options(**{k: plain(v) for k, v in kwargs.items()})
            progress = term.progress()
            try:
                outcome = pipeline.analyze(spec, checkpoint, options, common.run_settings(),
                                           load_options=common.load_options(), progress=progress,
                                           on_warning=term.warn)
            finally:
                progress.stop()
            if common.json:
                print_json(outcome.summary)
            term.show(_render(spec, outcome.summary))
            term.info(f"report: {outcome.paths.h5}")
            if outcome.gate_failures:
                for failure in outcome.gate_failures:
                    term.error(f"{checkpoint}: gate failed: {failure}")
                raise typer.Exit(EXIT_GATE)

    command.__signature__ = inspect.Signature([ckpt, *own, *shared])
    command.__name__ = spec.name
    command.__doc__ = spec.description or spec.help
    app.command(spec.name, help=(spec.description or spec.help), short_help=spec.help,
                epilog=f"Example: {spec.example}")(command)
