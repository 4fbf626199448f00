"""Many checkpoints x many analyses: parallel, resumable, sharded, gated (``rnnprobe zoo``).

    inputs.find_checkpoints -> tasks.plan -> executors.iter_rows (worker.run_task per task)
    -> runner.run_tasks (rows, summary.csv / summary.jsonl) -> runner.evaluate_gates -> exit code

One module per concern: ``inputs`` (which files), ``tasks`` (task list, keys,
report names, shards, options pass-through), ``worker`` (one task, in any
process), ``executors`` (in-process, process pool, dask), ``summary`` (rows,
flattening, CSV / JSON lines, rebuilding from reports), ``gates`` (the
``--fail-if`` language) and ``runner`` (a run start to finish).
"""

from rnnprobe.zoo.gates import Gate, parse_gate
from rnnprobe.zoo.inputs import CHECKPOINT_EXTENSIONS, find_checkpoints, read_path_list
from rnnprobe.zoo.runner import GateFailure, ZooResult, evaluate_gates, exit_code, run_tasks, summary_name
from rnnprobe.zoo.summary import csv_text, flat_row, flatten, jsonl_text, rows_from_reports, write_summary
from rnnprobe.zoo.tasks import ZooTask, analysis_options, parse_set, parse_shard, plan, read_options_file, report_name
from rnnprobe.zoo.worker import run_task, task_key

__all__ = [
    "Gate", "parse_gate", "CHECKPOINT_EXTENSIONS", "find_checkpoints", "read_path_list", "GateFailure", "ZooResult",
    "evaluate_gates", "exit_code", "run_tasks", "summary_name", "csv_text", "flat_row", "flatten", "jsonl_text",
    "rows_from_reports", "write_summary", "ZooTask", "analysis_options", "parse_set", "parse_shard", "plan",
    "read_options_file", "report_name", "run_task", "task_key",
]
