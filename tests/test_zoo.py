"""rnnprobe zoo: a zoo of small checkpoints in mixed formats and folders, two broken and one unsafe.

Every expected value is computed here, independently of rnnprobe: spectral
radii with numpy's eigvals of the matrices this module wrote, the gate
language against Python's own evaluation of the same expression, the shard
partition by counting.
"""

import csv
import dataclasses
import importlib.util
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from typer.testing import CliRunner

from rnnprobe.analyses import analyses
from rnnprobe.analyses.base import AnalysisSpec, Options, Result, option
from rnnprobe.errors import InputError
from rnnprobe.zoo import (Gate, evaluate_gates, find_checkpoints, flatten, parse_gate, parse_set, parse_shard, plan,
                          read_options_file, report_name, rows_from_reports)
from rnnprobe.zoo.runner import ZooResult, exit_code
from rnnprobe.zoo.summary import csv_text, jsonl_text
from rnnprobe.zoo.tasks import analysis_options, in_shard

N_GOOD = 40
SCALES = (0.5, 0.8, 0.95, 1.1, 1.3)  # spectral radii of the zoo's W_hh (orthogonal times a scale)
THRESHOLD = 1.05


# ---- a small analysis, used until a real cheap one (schur) is registered ----------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class RadiusOptions(Options):
    power: int = option(1, help="Report radius ** power.", min=1)


@dataclasses.dataclass
class RadiusResult(Result):
    analysis = "radius"
    eigenvalues: np.ndarray
    radius: float

    def summary(self):
        return {"spectral_radius": self.radius, "moduli": sorted(np.abs(self.eigenvalues).tolist(), reverse=True)}


def run_radius(model, options, ctx):
    ev = np.linalg.eigvals(model.cell.matrices()["W_hh"].cpu().numpy())
    return RadiusResult(eigenvalues=ev, radius=float(np.abs(ev).max()) ** options.power)


RADIUS = AnalysisSpec(name="radius", help="Spectral radius.", options=RadiusOptions, run=run_radius,
                      example="rnnprobe radius net.pt", uses_task=False)


POISON = 0.4242  # W_hh[0, 0] of a checkpoint that kills the worker process analysing it


def run_crash(model, options, ctx):
    W = model.cell.matrices()["W_hh"]
    if abs(float(W[0, 0]) - POISON) < 1e-6:
        os._exit(7)  # what an out-of-memory kill or a segfault in native code looks like to the pool
    return run_radius(model, options, ctx)


CRASH = AnalysisSpec(name="crash", help="Spectral radius, or death.", options=RadiusOptions, run=run_crash,
                     example="rnnprobe crash net.pt", uses_task=False)


def _register_radius():
    import rnnprobe.analyses.registry as registry

    registry._CACHE = {**registry.analyses(), "radius": RADIUS}


# whether schur has landed, without importing every analysis here: worker processes import this module
REAL = importlib.util.find_spec("rnnprobe.analyses.schur") is not None
ANALYSIS = "schur" if REAL else "radius"
RADIUS_KEY = f"{ANALYSIS}.spectral_radius"
# how a subprocess runs the CLI: the real entry point, or one that registers the test analysis first
TESTS = str(Path(__file__).parent)
CLI = [sys.executable, "-m", "rnnprobe"] if REAL else [
    sys.executable, "-c",
    f"import sys; sys.path.insert(0, {TESTS!r}); import test_zoo; test_zoo._register_radius(); "
    "from rnnprobe.cli.app import main; main()",
]


@pytest.fixture(autouse=True)
def _analysis(monkeypatch):
    if not REAL:
        import rnnprobe.analyses.registry as registry

        monkeypatch.setattr(registry, "_CACHE", {**registry.analyses(), "radius": RADIUS})


# ---- the zoo -------------------------------------------------------------------------------------------------
class Boom:
    """Unpickling this would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _orthogonal(n, rng):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _save_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for k, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def _write(path, kind, W, U, R, rng):
    """Write one checkpoint of ``kind`` whose recurrent matrix is W (float32 on disk); return the matrix stored."""
    path.parent.mkdir(parents=True, exist_ok=True)
    W32, U32, R32 = (torch.tensor(x, dtype=torch.float32) for x in (W, U, R))
    b = torch.tensor(rng.standard_normal(W.shape[0]) * 0.1, dtype=torch.float32)
    rnn = {"weight_hh_l0": W32, "weight_ih_l0": U32, "bias_hh_l0": b, "bias_ih_l0": torch.zeros_like(b)}
    fc = {"weight": R32, "bias": torch.zeros(R.shape[0])}
    if kind == "torch_prefixed":
        torch.save({**{f"rnn.{k}": v for k, v in rnn.items()}, **{f"fc.{k}": v for k, v in fc.items()}}, path)
    elif kind == "torch_bare":
        torch.save(rnn, path)
    elif kind == "torch_nested":
        sd = {**{f"model.rnn.{k}": v for k, v in rnn.items()}, **{f"model.readout.{k}": v for k, v in fc.items()}}
        torch.save({"state_dict": sd, "epoch": 3, "hyper_parameters": {"lr": 1e-3}}, path)
    elif kind == "npz":
        np.savez(path, W_hh=W32.numpy(), W_in=U32.numpy(), W_out=R32.numpy())
    elif kind == "safetensors":
        _save_safetensors(path, {f"rnn.{k}": v.numpy() for k, v in rnn.items()})
    elif kind == "hdf5":
        with h5py.File(path, "w") as f:
            g = f.create_group("net")
            g["W_rec"], g["W_in"], g["W_out"] = W32.numpy(), U32.numpy(), R32.numpy()
    elif kind == "relu_sidecar":
        torch.save({f"rnn.{k}": v for k, v in rnn.items()}, path)
        Path(str(path) + ".json").write_text(json.dumps({"nonlinearity": "relu"}))
    return W32.numpy().astype(np.float64)


KINDS = {"torch_prefixed": ".pt", "torch_bare": ".pth", "torch_nested": ".ckpt", "npz": ".npz",
         "safetensors": ".safetensors", "hdf5": ".h5", "relu_sidecar": ".pt"}


@dataclasses.dataclass
class Zoo:
    root: Path
    radius: dict  # absolute path -> spectral radius of the stored W_hh (numpy)
    broken: list
    unsafe: Path
    marker: Path

    @property
    def good(self):
        return sorted(self.radius)

    def all(self):
        return sorted([*self.radius, *self.broken, self.unsafe])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    marker = root.parent / "PAYLOAD_RAN"
    rng = np.random.default_rng(7)
    radius = {}
    kinds = list(KINDS)
    for i in range(N_GOOD - 2):
        kind = kinds[i % len(kinds)]
        n = 8 + 2 * (i % 5)
        W = SCALES[i % len(SCALES)] * _orthogonal(n, rng)
        path = root / f"family{i % 3}" / kind / f"net{i:02d}{KINDS[kind]}"
        stored = _write(path, kind, W, rng.standard_normal((n, 2)), rng.standard_normal((1, n)), rng)
        radius[str(path)] = float(np.abs(np.linalg.eigvals(stored)).max())
    for d, scale in (("runA", 1.2), ("runB", 0.7)):  # two folders holding net.pt
        path = root / d / "net.pt"
        stored = _write(path, "torch_prefixed", scale * _orthogonal(10, rng), np.ones((10, 1)), np.ones((1, 10)), rng)
        radius[str(path)] = float(np.abs(np.linalg.eigvals(stored)).max())
    good = root / "family0" / "torch_prefixed" / "net00.pt"
    (root / "bad").mkdir()
    truncated = root / "bad" / "broken_truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    nokeys = root / "bad" / "broken_nokeys.npz"
    np.savez(nokeys, foo=np.eye(3))
    unsafe = root / "bad" / "unsafe.pt"
    torch.save({"w": torch.zeros(2), "x": Boom(str(marker))}, unsafe)
    # not checkpoints: a note, a hidden file, a sidecar alone
    (root / "README.txt").write_text("a zoo")
    (root / ".hidden.pt").write_bytes(good.read_bytes())
    (root / "family1" / "orphan.json").write_text("{}")
    return Zoo(root=root, radius=radius, broken=[str(truncated), str(nokeys)], unsafe=str(unsafe), marker=marker)


def invoke(args, **kw):
    from rnnprobe.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args], **kw)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _gated(stderr):
    """checkpoint -> gate detail, from the '<ckpt>: gate '...' failed: ...' lines."""
    out = {}
    for line in stderr.splitlines():
        if ": gate '" in line and "' failed: " in line:
            body = line.split("error: ", 1)[1]
            out[body.split(": gate '", 1)[0]] = body.split("' failed: ", 1)[1]
    return out


EXCLUDE_BAD = ["--exclude", "broken_*", "--exclude", "unsafe.pt"]
FAST = ["--analyses", ANALYSIS, "--no-plots"]


# ---- the whole flow in this process ------------------------------------------------------------------------
def test_zoo_end_to_end(zoo, tmp_path):
    out = tmp_path / "out"
    r = invoke(["zoo", zoo.root, *FAST, "--out", out])
    assert r.exit_code == 3, r.output
    assert not zoo.marker.exists(), "the unsafe pickle's payload ran"
    rows = read_csv(out / "summary.csv")
    assert [row["checkpoint"] for row in rows] == zoo.all()  # sorted, one row each, nothing else found
    lines = read_jsonl(out / "summary.jsonl")
    assert [(x["checkpoint"], x["status"], x.get(RADIUS_KEY)) for x in lines] == \
        [(x["checkpoint"], x["status"], float(x[RADIUS_KEY]) if x[RADIUS_KEY] else None) for x in rows]
    by = {row["checkpoint"]: row for row in rows}
    for path, rho in zoo.radius.items():
        row = by[path]
        assert row["status"] == "ok" and row["error"] == "", row
        assert float(row[RADIUS_KEY]) == pytest.approx(rho, rel=1e-9)
        summary = json.loads(Path(row["report"]).with_suffix(".json").read_text())
        assert summary["checkpoint"] == path and summary["zoo_key"] == row["key"]
        with h5py.File(row["report"], "r") as f:
            assert f.attrs["analysis"] == ANALYSIS and f.attrs["checkpoint_sha256"] == row["checkpoint_sha256"]
    # two folders holding net.pt: two reports
    a, b = (by[str(zoo.root / d / "net.pt")]["report"] for d in ("runA", "runB"))
    assert a != b and Path(a).name.startswith("net-") and Path(b).name.startswith("net-")
    expect = {zoo.broken[0]: "truncated", zoo.broken[1]: "no recurrent weights", zoo.unsafe: "--trust-pickle"}
    for path, why in expect.items():
        row = by[path]
        assert row["status"] == "failed" and path in row["error"] and why in row["error"], row
        assert row["report"] == ""
        record = out / f"{report_name(path)}.{ANALYSIS}.failed.json"
        assert json.loads(record.read_text())["error"] == row["error"]
        assert f"failed: {ANALYSIS}: {path}" in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert f"{len(zoo.all())} tasks: {N_GOOD} ok, 0 skipped, 3 failed" in last and last.endswith("exit 3")
    assert r.stdout == ""
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob(f"*.{ANALYSIS}.json")}

    # again: finished tasks are skipped (their files untouched), failures are tried again
    r = invoke(["zoo", zoo.root, *FAST, "--out", out, "-q"])
    assert r.exit_code == 3
    again = read_csv(out / "summary.csv")
    assert [x["status"] for x in again] == [("skipped" if x["status"] == "ok" else "failed") for x in rows]
    assert {p: p.stat().st_mtime_ns for p in out.glob(f"*.{ANALYSIS}.json")} == mtimes
    assert [x[RADIUS_KEY] for x in again] == [x[RADIUS_KEY] for x in rows]
    assert r.stderr.count("failed: ") == 3 and "checkpoints x" not in r.stderr  # -q: errors and verdict only

    # a gate, on the good checkpoints: exit 1 naming exactly those above the threshold, with their values
    r = invoke(["zoo", zoo.root, *FAST, "--out", out, *EXCLUDE_BAD, "--fail-if", f"{RADIUS_KEY} > {THRESHOLD}"])
    gated = _gated(r.stderr)
    assert r.exit_code == 1, r.output
    want = {p for p, rho in zoo.radius.items() if rho > THRESHOLD}
    assert set(gated) == want and 0 < len(want) < N_GOOD
    for p in want:
        assert gated[p] == f"{RADIUS_KEY}={zoo.radius[p]:.6g}"
    assert r.stderr.strip().splitlines()[-1].endswith(f"0 failed; gates: {len(want)} checkpoints failed; exit 1")
    # a key no checkpoint has: the gate cannot be evaluated, so it fails everywhere, saying "missing"
    r = invoke(["zoo", zoo.root, *FAST, "--out", out, *EXCLUDE_BAD, "--fail-if", f"{ANALYSIS}.no_such_key > 0", "-q"])
    assert r.exit_code == 1 and set(_gated(r.stderr)) == set(zoo.radius)
    assert all(v.startswith(f"{ANALYSIS}.no_such_key=missing") for v in _gated(r.stderr).values())
    # gate and failures together: failures win (3), both are said
    r = invoke(["zoo", zoo.root, *FAST, "--out", out, "--fail-if", f"{RADIUS_KEY} > {THRESHOLD}", "-q"])
    assert r.exit_code == 3 and "exit 3 (failed tasks take precedence" in r.stderr
    assert f"gates: {len(want)} checkpoints failed" in r.stderr

    # shards 1/3, 2/3, 3/3 cover the zoo exactly once; -q with exit 0 prints nothing
    seen = []
    for i in (1, 2, 3):
        r = invoke(["zoo", zoo.root, *FAST, "--out", out, *EXCLUDE_BAD, "--shard", f"{i}/3", "-q"])
        assert r.exit_code == 0 and r.stderr == "", r.output
        shard_rows = read_csv(out / f"summary.shard-{i}-of-3.csv")
        assert {x["status"] for x in shard_rows} == {"skipped"}
        seen += [x["checkpoint"] for x in shard_rows]
    assert sorted(seen) == zoo.good and len(set(seen)) == len(seen)

    # --from-file - (stdin), and the table rebuilt from the reports
    listed = zoo.good[:3]
    r = invoke(["zoo", "--from-file", "-", *FAST, "--out", out, "--json"], input="\n".join(["# three", *listed]))
    assert r.exit_code == 0, r.output
    assert [json.loads(x)["checkpoint"] for x in r.stdout.splitlines()] == listed
    if "lyapunov" in analyses():  # a second analysis, options passed through, a gate over both
        listed = [p for p in zoo.good if zoo.radius[p] > THRESHOLD][:2] + [p for p in zoo.good if
                                                                          zoo.radius[p] < THRESHOLD][:1]
        gate = f"{RADIUS_KEY} > {THRESHOLD} and lyapunov.exponents[2] < 1e9"
        r = invoke(["zoo", *listed, "--analyses", f"{ANALYSIS},lyapunov", "--no-plots", "--out", tmp_path / "two",
                    "--set", "lyapunov.k=3", "--set", "lyapunov.steps=50", "--set", "lyapunov.warmup=10",
                    "--set", "lyapunov.inits=2", "--fail-if", gate, "--json", "-q"])
        assert r.exit_code == 1, r.output
        assert set(_gated(r.stderr)) == set(listed[:2])
        two = [json.loads(x) for x in r.stdout.splitlines()]
        assert [(x["checkpoint"], x["analysis"]) for x in two] == [(p, a) for p in sorted(listed)
                                                                   for a in (ANALYSIS, "lyapunov")]
        assert all(x["lyapunov.k"] == 3 and "lyapunov.exponents[3]" not in x for x in two[1::2])
    r = invoke(["report", "table", out, "--format", "jsonl"])
    assert r.exit_code == 3
    rebuilt = [json.loads(x) for x in r.stdout.splitlines()]
    strip = ("seconds", "status")
    assert [{k: v for k, v in x.items() if k not in strip} for x in rebuilt] == \
        [{k: v for k, v in x.items() if k not in strip} for x in lines]  # the first run's summary


def test_table_on_a_terminal_honours_no_color(zoo, tmp_path):
    out = tmp_path / "out"
    invoke(["zoo", zoo.root / "bad", zoo.good[0], *FAST, "--out", out, "-q"])
    colour = invoke(["report", "table", out], env={"TTY_COMPATIBLE": "1", "NO_COLOR": None, "COLUMNS": "200"})
    plain = invoke(["report", "table", out], env={"TTY_COMPATIBLE": "1", "NO_COLOR": "1", "COLUMNS": "200"})
    assert colour.exit_code == plain.exit_code == 3
    assert "━" in colour.stdout and "━" in plain.stdout  # rich tables on a terminal
    assert "\x1b[31m" in colour.stdout and "\x1b[31m" not in plain.stdout  # failed rows red unless NO_COLOR
    piped = invoke(["report", "table", out], env={"TTY_COMPATIBLE": "0"})
    assert "━" not in piped.stdout and piped.stdout.splitlines()[0].startswith("failed")


# ---- SIGKILL mid-way, then resume ---------------------------------------------------------------------------
def _children(pid):
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_gone(pids, timeout=15.0):
    t0 = time.monotonic()
    while any(_alive(p) for p in pids) and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    assert pids and not any(_alive(p) for p in pids), "worker processes outlived the zoo"


def _start_and_signal(args, out, n_reports, sig):
    """Start the CLI in a subprocess, send ``sig`` once ``n_reports`` reports exist; return it and its workers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.Popen([*CLI, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # generous: a loaded machine must not turn this into a race
    workers: list = []
    scanned = 0.0
    while time.monotonic() < deadline and proc.poll() is None:
        if Path("/proc").is_dir() and time.monotonic() - scanned > 0.25:  # a scan of /proc is not free
            workers = sorted(set(workers) | set(_children(proc.pid)))
            scanned = time.monotonic()
        if len(list(out.glob(f"*.{ANALYSIS}.json"))) >= n_reports:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc, workers


def test_sigterm_stops_the_run_keeping_the_summary(zoo, tmp_path, monkeypatch):
    """SIGTERM (a Slurm time limit, a cancelled CI job) mid-way: exit 130, the finished tasks in the summary."""
    import rnnprobe.cli.zoo as cli_zoo

    real = cli_zoo._Reporter.__call__

    def call(self, row):
        real(self, row)
        if sum(self.counts.values()) == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli_zoo._Reporter, "__call__", call)
    r = invoke(["zoo", zoo.root, *FAST, "--out", tmp_path])
    assert r.exit_code == 130, r.output
    assert "interrupted after 5/43 tasks" in r.stderr and "run the same command again to resume" in r.stderr
    assert [x["checkpoint"] for x in read_csv(tmp_path / "summary.csv")] == zoo.all()[:5]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is the zoo's only while it runs


def test_sigkill_midway_then_resume(zoo, tmp_path):
    # part of the zoo, with plots: tasks slow enough to be caught in flight, few enough to finish quickly
    roots = [zoo.root / "family0", zoo.root / "bad"]
    good = [p for p in zoo.good if p.startswith(str(roots[0]) + os.sep)]
    everything = sorted([*good, *zoo.broken, zoo.unsafe])
    out = tmp_path / "out"
    args = ["zoo", *map(str, roots), "--analyses", ANALYSIS, "--out", str(out)]
    proc, workers = _start_and_signal([*args, "--jobs", "2", "-q"], out, 4, signal.SIGKILL)
    # the orphaned workers notice and exit (a task they were running may still finish its report)
    _wait_gone(workers)
    done = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob(f"*.{ANALYSIS}.json")}
    assert 4 <= len(done) < len(good), f"not killed mid-way ({len(done)} reports): {proc.stderr.read()}"
    for p in done:  # whatever exists is whole
        json.loads(p.read_text())
        with h5py.File(p.with_suffix(".h5"), "r") as f:
            assert f.attrs["analysis"] == ANALYSIS

    r = invoke([*args, "-q"])
    assert r.exit_code == 3
    rows = read_csv(out / "summary.csv")
    assert [x["checkpoint"] for x in rows] == everything  # every task once
    finished = {json.loads(p.read_text())["checkpoint"] for p in done}
    for x in rows:
        if x["checkpoint"] in finished:
            assert x["status"] == "skipped"
        elif x["checkpoint"] in zoo.radius:
            assert x["status"] == "ok"
        else:
            assert x["status"] == "failed"
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done} == done  # not done twice
    assert not list(out.glob(".*.tmp")) and not zoo.marker.exists()
    assert sorted(json.loads(p.read_text())["checkpoint"] for p in out.glob(f"*.{ANALYSIS}.json")) == good


# ---- dask gives the same summary as a process pool -----------------------------------------------------------
def test_dask_local_cluster_matches_process_pool(zoo, tmp_path):
    pytest.importorskip("dask.distributed")
    runs = {}
    for name, extra in (("pool", ["--jobs", "2"]), ("dask", ["--executor", "dask", "--jobs", "2"])):
        out = tmp_path / name
        r = invoke(["zoo", zoo.root, *FAST, "--out", out, "-q", *extra])
        assert r.exit_code == 3, r.output
        rows = read_jsonl(out / "summary.jsonl")
        for x in rows:
            del x["seconds"]
            x["report"] = x["report"] and Path(x["report"]).name
        runs[name] = rows
    assert runs["pool"] == runs["dask"]
    assert [x["status"] for x in runs["dask"]].count("ok") == N_GOOD
    assert not zoo.marker.exists()


# ---- a checkpoint that kills its worker costs only itself ---------------------------------------------------
def test_a_worker_death_costs_one_checkpoint(tmp_path, monkeypatch):
    import rnnprobe.analyses.registry as registry

    monkeypatch.setattr(registry, "_CACHE", {**registry.analyses(), "crash": CRASH})
    rng = np.random.default_rng(3)
    paths = []
    for i in range(5):
        W = 0.5 * _orthogonal(6, rng)
        if i == 2:
            W[0, 0] = POISON
        paths.append(tmp_path / "zoo" / f"n{i}.npz")
        paths[-1].parent.mkdir(exist_ok=True)
        np.savez(paths[-1], W_hh=W, W_in=np.ones((6, 1)))
    r = invoke(["zoo", tmp_path / "zoo", "--analyses", "crash", "--no-plots", "--out", tmp_path / "out", "--jobs", "2",
                "-q"])
    assert r.exit_code == 3, r.output
    rows = read_csv(tmp_path / "out" / "summary.csv")
    assert [x["status"] for x in rows] == ["ok", "ok", "failed", "ok", "ok"]
    assert "worker process died" in rows[2]["error"] and str(paths[2]) in rows[2]["error"]


def test_a_retried_task_whose_report_this_run_wrote_is_ok_not_skipped(tmp_path):
    # a task in flight when a worker died may have written its report before the pool broke; its
    # retry finds that report: this run's result ("ok"), unlike one left by an earlier run ("skipped")
    from rnnprobe.zoo.executors import _this_runs_report

    report = tmp_path / "n1.crash.h5"
    report.write_bytes(b"")
    started = time.time() - 5.0
    row = {"status": "skipped", "report": str(report)}
    assert _this_runs_report(row, started)["status"] == "ok"
    os.utime(report, (started - 60, started - 60))  # written before this run started
    assert _this_runs_report(row, started)["status"] == "skipped"
    assert _this_runs_report({"status": "skipped", "report": str(tmp_path / "gone.h5")}, started)["status"] == "skipped"
    assert _this_runs_report({"status": "failed", "report": None}, started)["status"] == "failed"
    assert row["status"] == "skipped"  # the row given is not modified


# ---- parts ---------------------------------------------------------------------------------------------------
def test_find_checkpoints_rules(zoo, tmp_path):
    found = find_checkpoints([zoo.root], skip_dirs=[zoo.root / "bad"])
    assert [str(p) for p in found] == zoo.good  # sorted; .txt, .json, hidden files and the skipped folder left out
    only = find_checkpoints([zoo.root], include=["*.npz"], exclude=["family2"])
    assert {p.suffix for p in only} == {".npz"} and not any("family2" in str(p) for p in only)
    assert find_checkpoints([zoo.root], include=["runA/*"]) == [zoo.root / "runA" / "net.pt"]
    link = tmp_path / "link.pt"
    link.symlink_to(zoo.good[0])
    assert find_checkpoints([zoo.good[0], link, zoo.root / "runA"]) == sorted(
        [Path(zoo.good[0]), zoo.root / "runA" / "net.pt"])
    odd = tmp_path / "weights.data"
    odd.write_bytes(b"x")
    assert find_checkpoints([odd]) == [odd]  # named files are taken whatever their extension
    with pytest.raises(InputError, match="nope.pt: no such file"):
        find_checkpoints([tmp_path / "nope.pt"])
    with pytest.raises(InputError, match="no checkpoints found matching"):
        find_checkpoints([zoo.root], include=["*.keras"])


def test_shards_partition_the_checkpoints():
    for n in range(1, 6):
        owners = [[i for i in range(1, n + 1) if in_shard(k, (i, n))] for k in range(23)]
        assert all(len(o) == 1 for o in owners)
        sizes = [sum(o == [i] for o in owners) for i in range(1, n + 1)]
        assert max(sizes) - min(sizes) <= 1
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) == (1, 1)
    for bad in ("0/3", "4/3", "1-3", "a/b"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)


def test_plan_keys_and_names(zoo, tmp_path):
    from rnnprobe.checkpoints import LoadOptions
    from rnnprobe.pipeline import RunSettings

    spec = analyses()[ANALYSIS]
    opts = {ANALYSIS: spec.options()}
    ckpts = [Path(p) for p in zoo.good]
    full = plan(ckpts, [spec], opts, RunSettings(out_dir=tmp_path), LoadOptions())
    parts = [t for i in (1, 2, 3) for t in plan(ckpts, [spec], opts, RunSettings(out_dir=tmp_path), LoadOptions(),
                                                shard=(i, 3))]
    assert sorted(t.index for t in parts) == [t.index for t in full] == list(range(len(ckpts)))
    stems = [t.settings.stem for t in full]
    assert len(set(stems)) == len(stems) and all(t.settings.out_dir == tmp_path for t in full)
    other = plan(ckpts, [spec], opts, RunSettings(out_dir=tmp_path, seed=1), LoadOptions(alpha=0.5))
    assert other[0].static_key != full[0].static_key
    same = plan(ckpts, [spec], opts, RunSettings(out_dir=tmp_path), LoadOptions(max_bytes=10**6))
    assert same[0].static_key == full[0].static_key  # size limits do not change what is computed


def test_options_pass_through(tmp_path):
    specs = {"radius": RADIUS}
    assert parse_set(["radius.power=3", "radius.power = 2"]) == {"radius": {"power": "2"}}
    js = tmp_path / "o.json"
    js.write_text(json.dumps({"radius": {"power": 4}}))
    toml = tmp_path / "o.toml"
    toml.write_text("[radius]\npower = 5\n")
    assert analysis_options(specs, ["radius"], file_values=read_options_file(js))["radius"].power == 4
    assert analysis_options(specs, ["radius"], file_values=read_options_file(toml))["radius"].power == 5
    both = analysis_options(specs, ["radius"], file_values=read_options_file(js), set_values=parse_set(["radius.power=6"]))
    assert both["radius"].power == 6  # --set wins
    with pytest.raises(InputError, match="--power=0 must be >= 1"):
        analysis_options(specs, ["radius"], set_values=parse_set(["radius.power=0"]))
    with pytest.raises(InputError, match="unknown option 'pow'"):
        analysis_options(specs, ["radius"], set_values=parse_set(["radius.pow=1"]))
    with pytest.raises(InputError, match="unknown analysis 'nope'"):
        analysis_options(specs, ["radius"], set_values=parse_set(["nope.k=1"]))
    with pytest.raises(InputError, match="must be ANALYSIS.OPTION=VALUE"):
        parse_set(["power=3"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_options_file(bad)


def test_summary_flattening_and_files():
    summary = {"r": 0.5, "ex": [1.0, float("nan"), 3.0], "d": {"a": {"b": True}}, "long": list(range(40)), "s": "x,y"}
    flat = dict(flatten(summary, "an"))
    assert flat["an.r"] == 0.5 and flat["an.ex[2]"] == 3.0 and flat["an.d.a.b"] is True and flat["an.s"] == "x,y"
    assert "an.long[15]" in flat and "an.long[16]" not in flat  # the files keep the first 16 items
    assert len(dict(flatten(summary, "an", max_items=None))) == 3 + 1 + 1 + 40 + 1
    rows = [{"checkpoint": "a.pt", "analysis": "an", "status": "ok", "seconds": 0.1, "summary": summary},
            {"checkpoint": "b.pt", "analysis": "an", "status": "failed", "error": "b.pt: broken, badly", "summary": {}}]
    parsed = list(csv.DictReader(io.StringIO(csv_text(rows))))
    assert parsed[0]["an.ex[1]"] == "" and parsed[0]["an.d.a.b"] == "true" and parsed[0]["an.s"] == "x,y"
    assert parsed[1]["error"] == "b.pt: broken, badly" and parsed[1]["an.r"] == ""
    lines = [json.loads(x) for x in jsonl_text(rows).splitlines()]
    assert lines[0]["an.ex[1]"] is None and "an.r" not in lines[1]


# ---- the gate language ---------------------------------------------------------------------------------------
KEYS = {"s.x": "x0", "s.y[0]": "x1", "l.z": "x2"}
NUMS = st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0])
OPS = st.sampled_from(["<", "<=", ">", ">=", "==", "!="])


@st.composite
def comparisons(draw):
    n = draw(st.integers(1, 2))
    operands = [draw(st.one_of(st.sampled_from(list(KEYS)), NUMS)) for _ in range(n + 1)]
    if not any(isinstance(o, str) for o in operands):
        operands[0] = "s.x"
    ops = [draw(OPS) for _ in range(n)]
    gate = " ".join(f"{o} {op}" for o, op in zip(operands, ops)) + f" {operands[-1]}"
    py = " ".join(f"{KEYS.get(o, o)} {op}" for o, op in zip(operands, ops)) + f" {KEYS.get(operands[-1], operands[-1])}"
    return gate, py


def _combine(children):
    return st.one_of(
        st.tuples(children, children, st.sampled_from(["and", "or"])).map(
            lambda t: (f"{t[0][0]} {t[2]} {t[1][0]}", f"{t[0][1]} {t[2]} {t[1][1]}")),
        children.map(lambda c: (f"not {c[0]}", f"not {c[1]}")),
        children.map(lambda c: (f"({c[0]})", f"({c[1]})")),
    )


@given(st.recursive(comparisons(), _combine, max_leaves=6), st.tuples(NUMS, NUMS, NUMS))
def test_gate_agrees_with_python(expr, values):
    gate_text, py_text = expr
    env = dict(zip(KEYS.values(), values))
    want = eval(py_text, {"__builtins__": {}}, env)  # the independent reference: Python's own semantics
    assert Gate(gate_text).evaluate(dict(zip(KEYS, values))).failed == bool(want)


def test_gate_missing_null_and_errors():
    g = parse_gate("schur.spectral_radius > 1.05 or lyapunov.exponents[0] > 0", analyses=("schur", "lyapunov"))
    assert g.keys == ("schur.spectral_radius", "lyapunov.exponents[0]")
    ok = g.evaluate({"schur.spectral_radius": 0.9, "lyapunov.exponents[0]": -0.1})
    assert not ok.failed and ok.detail == "schur.spectral_radius=0.9, lyapunov.exponents[0]=-0.1"
    missing = g.evaluate({"schur.spectral_radius": 0.9})
    assert missing.failed and "lyapunov.exponents[0]=missing" in missing.detail
    assert g.evaluate({"schur.spectral_radius": None, "lyapunov.exponents[0]": -1}).failed  # NaN became null
    s = Gate("a.kind == 'gru' and not a.stable == true")
    assert s.evaluate({"a.kind": "gru", "a.stable": False}).failed
    assert not s.evaluate({"a.kind": "lstm", "a.stable": False}).failed
    assert Gate("a.kind < 1").evaluate({"a.kind": "gru"}).failed  # cannot compare: fails, never passes
    for text, msg in (("a.x >", "expected a key"), ("a.x > 1 )", "expected 'and'"), ("(a.x > 1", r"expected '\)'"),
                      ("a.x", "expected a comparison"), ("1 < 2", "compares constants"), ("a.x > 1 $", "unexpected '\\$'"),
                      ("", "is empty")):
        with pytest.raises(InputError, match=msg):
            Gate(text)
    with pytest.raises(InputError, match="must start with the name of an analysis being run"):
        parse_gate("shur.spectral_radius > 1", analyses=("schur",))


def test_gates_and_exit_codes_over_rows():
    rows = [{"checkpoint": "a", "analysis": "s", "status": "ok", "summary": {"r": 2.0}, "gate_failures": []},
            {"checkpoint": "b", "analysis": "s", "status": "skipped", "summary": {"r": 0.5},
             "gate_failures": ["own gate says no"]},
            {"checkpoint": "c", "analysis": "s", "status": "failed", "summary": {}, "gate_failures": []}]
    fails = evaluate_gates(rows, [Gate("s.r > 1")])
    assert [(f.checkpoint, f.gate) for f in fails] == [("a", "s.r > 1"), ("b", "s options")]
    assert exit_code(ZooResult(rows=rows, total=3), fails) == 3
    assert exit_code(ZooResult(rows=rows[:2], total=2), fails) == 1
    assert exit_code(ZooResult(rows=rows[:2], total=2), []) == 0


def test_usage_errors_exit_2(zoo, tmp_path):
    for args, msg in ((["--analyses", "nope"], "unknown analysis 'nope'"),
                      (["--fail-if", "nope.x > 1"], "must start with the name of an analysis"),
                      (["--shard", "4/3"], "--shard"), (["--scheduler", "tcp://x:1"], "needs --executor dask"),
                      (["--set", "radius"], "ANALYSIS.OPTION=VALUE")):
        r = invoke(["zoo", zoo.root, "--analyses", ANALYSIS, "--out", tmp_path, *args])
        assert r.exit_code == 2 and msg in r.stderr, (args, r.output)
    import sys as _sys

    with pytest.MonkeyPatch.context() as mp:  # dask is an optional extra: without it, a clear message
        mp.setitem(_sys.modules, "dask.distributed", None)
        r = invoke(["zoo", zoo.good[0], "--analyses", ANALYSIS, "--out", tmp_path / "d", "--executor", "dask"])
    assert r.exit_code == 2 and "pip install 'rnnprobe[dask]'" in r.stderr, r.output
    r = invoke(["zoo", tmp_path / "missing", "--out", tmp_path])
    assert r.exit_code == 2 and "no such file or folder" in r.stderr
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
    assert rows_from_reports(tmp_path) == []


def test_progress_lines_bar_and_quiet(zoo, tmp_path, monkeypatch):
    import rnnprobe.cli.zoo as cli_zoo

    monkeypatch.setattr(cli_zoo, "PLAIN_EVERY", 0.0)
    inputs = [zoo.root / "bad", *zoo.good[:3]]
    r = invoke(["zoo", *inputs, *FAST, "--out", tmp_path / "a"], env={"CI": "true"})
    assert r.exit_code == 3
    lines = r.stderr.splitlines()
    assert lines[0].startswith("rnnprobe zoo: 6 checkpoints x 1 analysis")
    assert any(f"/6 tasks done (" in x for x in lines) and lines[-1].endswith("exit 3")
    r = invoke(["zoo", *inputs, *FAST, "--out", tmp_path / "b", "-q"], env={"CI": "true"})
    assert r.exit_code == 3 and "tasks done" not in r.stderr and "checkpoints x" not in r.stderr
    # on a terminal: a rich progress bar and table on stderr, stdout untouched
    r = invoke(["zoo", *inputs, *FAST, "--out", tmp_path / "c"], env={"CI": None, "TTY_COMPATIBLE": "1",
                                                                        "COLUMNS": "200"})
    assert r.exit_code == 3 and "━" in r.stderr and r.stdout == ""


def test_output_folder_inside_the_zoo_is_refused(zoo, tmp_path):
    r = invoke(["zoo", zoo.root, *FAST, "--out", zoo.root])
    assert r.exit_code == 2 and "give --out a folder outside the zoo" in r.stderr
    r = invoke(["zoo", zoo.root / "runA", *FAST, "--out", zoo.root])
    assert r.exit_code == 2
