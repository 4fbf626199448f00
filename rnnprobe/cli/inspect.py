"""``rnnprobe inspect CKPT``: what was read from the file, and how."""

from __future__ import annotations

from rich.table import Table

from rnnprobe.cli.analysis import CHECKPOINT
from rnnprobe.cli.common import LOAD, guarded, with_options
from rnnprobe.cli.console import kv_table, print_json

EXAMPLE = "rnnprobe inspect sample_checkpoints/copy_rnn64.pt --json"


@with_options(LOAD, only=("json", "quiet", "debug"))
def inspect(checkpoint: CHECKPOINT, common) -> None:
    """What was read from a checkpoint, and how.

    Which file keys became which part of the canonical model, shapes, cell type,
    alpha, phi, spectral radius, norms, and what was ignored. Writes nothing.
    """
    from rnnprobe.checkpoints import load_checkpoint, model_summary

    term = common.terminal
    with guarded(term, debug=common.debug):
        model = load_checkpoint(checkpoint, common.load_options())
        summary = model_summary(model)
        if common.json:
            print_json(summary)
            return
        skip = ("keys", "ignored", "notes", "norms", "shapes")
        term.show_data(kv_table(summary, title=str(checkpoint), skip=skip))
        keys = Table("canonical", "file key", "shape", title="keys", box=None)
        shapes = summary.get("shapes", {})
        for name, key in summary.get("keys", {}).items():
            keys.add_row(name, str(key), str(shapes.get(name, "")))
        term.show_data(keys)
        for note in summary.get("notes", []):
            term.show_data(f"note: {note}")
        if summary.get("ignored"):
            term.show_data(f"ignored: {', '.join(summary['ignored'])}")
