"""Hostile and broken checkpoints through the real command line (subprocesses).

Each must exit 2 with exactly one line on stderr naming the file, no traceback,
nothing on stdout, and no report left behind. Every input goes through
``rnnprobe inspect`` (and a few through the first registered analysis command,
if any, which writes reports into --out), each in its own forked process
running the real entry point; two also run as separate console-script
processes end to end.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnprobe.analyses import analyses

N, D = 5, 3


class Boom:
    """Unpickling this would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _state_dict(seed=0):
    torch.manual_seed(seed)
    rnn, fc = torch.nn.RNN(D, N), torch.nn.Linear(N, 2)
    return {**{"rnn." + k: v for k, v in rnn.state_dict().items()},
            **{"fc." + k: v for k, v in fc.state_dict().items()}}


def _files(d: Path, marker: Path) -> dict[str, tuple[Path, list[str]]]:
    torch.save({"w": torch.zeros(2), "x": Boom(str(marker))}, d / "evil.pt")
    torch.save(_state_dict(), d / "good.pt")
    data = (d / "good.pt").read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    (d / "text.pt").write_text("not a checkpoint\nat all\n")
    (d / "empty.pt").write_bytes(b"")
    (d / "adir.pt").mkdir()
    sd = _state_dict()
    sd["rnn.weight_hh_l0"] = torch.randn(N, N - 1)
    torch.save(sd, d / "nonsquare.pt")
    sd = _state_dict()
    sd["rnn.weight_hh_l0"][1, 2] = float("nan")
    torch.save(sd, d / "nan.pt")
    np.savez(d / "mismatch.npz", W_hh=np.eye(N), W_uh=np.ones((N + 2, D)))
    np.savez(d / "big.npz", W_hh=np.eye(40))
    return {
        "malicious_pickle": (d / "evil.pt", []),
        "truncated": (d / "truncated.pt", []),
        "text": (d / "text.pt", []),
        "empty": (d / "empty.pt", []),
        "nonsquare": (d / "nonsquare.pt", []),
        "nan": (d / "nan.pt", []),
        "mismatched_shapes": (d / "mismatch.npz", []),
        "oversized_file": (d / "good.pt", ["--max-bytes", "100"]),
        "oversized_hidden": (d / "big.npz", ["--max-hidden", "16"]),
        "directory": (d / "adir.pt", []),
        "missing": (d / "missing.pt", []),
    }


# What each message must tell the user.
EXPECT = {
    "malicious_pickle": "--trust-pickle", "truncated": "truncated", "text": "text file", "empty": "empty",
    "nonsquare": "square", "nan": "rnn.weight_hh_l0", "mismatched_shapes": "W_uh", "oversized_file": "--max-bytes",
    "oversized_hidden": "--max-hidden", "directory": "is a directory", "missing": "no such file",
}
# Refused by Typer's own argument validation (exists=True, dir_okay=False) before rnnprobe's loader runs.
TYPER_CHECKED = ("directory", "missing")
# Through an analysis command too (it writes reports into --out: none may be left behind).
WITH_ANALYSIS = ("malicious_pickle", "truncated", "nan", "mismatched_shapes")


# Runs the real ``rnnprobe`` entry point (rnnprobe.cli.app:main) once per job in a forked child
# process with its own stdout/stderr files and exit status: torch is imported once, not per job.
RUNNER = r"""
import json, os, sys
jobs = json.loads(sys.argv[1])
from rnnprobe.cli.app import main
results = {}
for key, out, argv in jobs:
    pid = os.fork()
    if pid == 0:
        os.chdir(out)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(os.path.join(os.path.dirname(out), key.replace(":", "-") + "." + name),
                            os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = ["rnnprobe", *argv]
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            import traceback; traceback.print_exc(); code = 99
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    results[key] = os.waitstatus_to_exitcode(status)
print(json.dumps(results))
"""
# These also run as separate `rnnprobe` console-script processes, end to end.
CONSOLE = ("malicious_pickle", "nan")


def _jobs(d: Path, files: dict) -> list[tuple[str, Path, Path, list[str]]]:
    names = list(analyses())
    jobs = []
    for name, (path, extra) in files.items():
        commands = [["inspect"]]
        if names and name in WITH_ANALYSIS:
            commands.append([names[0], "--no-plots"])
        for cmd in commands:
            out = d / f"out-{cmd[0]}-{name}"
            out.mkdir()
            argv = [*cmd, str(path), *extra]
            if cmd[0] != "inspect":
                argv += ["--out", str(out)]
            jobs.append((f"{cmd[0]}:{name}", path, out, argv))
    return jobs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    marker = d / "PWNED"
    files = _files(d, marker)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "COLUMNS": "400"}
    jobs = _jobs(d, files)
    script = Path(sys.executable).with_name("rnnprobe")
    console = {}
    for name in CONSOLE:  # started first, so they run while the forked jobs do
        path, extra = files[name]
        out = d / f"out-console-{name}"
        out.mkdir()
        console[name] = (path, out, subprocess.Popen([str(script), "inspect", str(path), *extra], cwd=out, env=env,
                                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    forked = subprocess.run([sys.executable, "-c", RUNNER, json.dumps([(k, str(o), a) for k, _, o, a in jobs])],
                            capture_output=True, text=True, env=env, timeout=600)
    assert forked.returncode == 0, forked.stderr
    codes = json.loads(forked.stdout.splitlines()[-1])
    results = {}
    for key, path, out, _ in jobs:
        stem = d / key.replace(":", "-")
        results[key] = (path, out, codes[key], Path(f"{stem}.stdout").read_text(), Path(f"{stem}.stderr").read_text())
    for name, (path, out, proc) in console.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[f"console:{name}"] = (path, out, proc.returncode, stdout, stderr)
    return results, marker


def _check(key, path, out, code, stdout, stderr):
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2, (key, code, stderr)
    assert len(lines) == 1, (key, stderr)
    assert "Traceback" not in stderr and str(path) in lines[0], (key, stderr)
    assert EXPECT[key.split(":", 1)[1]] in lines[0], (key, stderr)
    assert stdout == "", (key, stdout)
    assert list(out.iterdir()) == [], (key, list(out.iterdir()))


def test_hostile_inputs_exit_2_with_one_line_and_no_report(runs):
    results, marker = runs
    assert not marker.exists(), "a pickle payload ran"
    checked = [k for k in results if k.split(":", 1)[1] not in TYPER_CHECKED]
    assert len(checked) >= 11 and "console:nan" in checked
    for key in checked:
        _check(key, *results[key])


def test_missing_file_and_directory_one_line(runs):
    results, _ = runs
    for key in [k for k in results if k.split(":", 1)[1] in TYPER_CHECKED]:
        _check(key, *results[key])
