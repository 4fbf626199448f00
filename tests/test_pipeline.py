"""The analysis framework: Options -> run -> Result -> one report writer; and its CLI.

A small analysis defined here exercises every path a real one takes, so the
layout contract of DESIGN.md is checked independently of any real analysis.
"""

import dataclasses
import json
import os

import h5py
import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from rnnprobe.analyses.base import AnalysisSpec, Options, Result, RunContext, option, options_from_mapping
from rnnprobe.cells import ElmanCell
from rnnprobe.cli.analysis import add_analysis_command
from rnnprobe.errors import AnalysisError, InputError
from rnnprobe.model import Model
from rnnprobe.pipeline import RunSettings, analyze


@dataclasses.dataclass(frozen=True, kw_only=True)
class PowerOptions(Options):
    steps: int = option(5, help="How many powers.", min=1)
    scale: float = option(1.0, help="Scale.", min=0.0, min_open=True)
    mode: str = option("fro", help="Norm.", choices=("fro", "spec"))
    fail: bool = option(False, help="Raise inside the analysis.")
    limit: float | None = option(None, help="Gate: fail when the last norm exceeds this.")


@dataclasses.dataclass
class PowerResult(Result):
    analysis = "power"
    norms: np.ndarray
    eigenvalues: np.ndarray
    stable: np.ndarray
    table: list
    details: dict
    label: str
    secret: np.ndarray = dataclasses.field(default=None, metadata={"report": False})

    def summary(self):
        return {"last_norm": float(self.norms[-1]), "n": int(self.norms.size), "nan_value": float("nan")}


def run_power(model, options, ctx: RunContext):
    if options.fail:
        raise RuntimeError("deliberate")
    W = model.cell.matrices()["W_hh"] * options.scale
    P = torch.eye(W.shape[0], dtype=W.dtype)
    norms = []
    for _ in range(options.steps):
        P = P @ W
        norms.append(torch.linalg.matrix_norm(P, ord="fro" if options.mode == "fro" else 2).item())
    ctx.warn("a warning from the analysis")
    ev = np.linalg.eigvals(W.numpy())
    return PowerResult(norms=np.array(norms), eigenvalues=ev, stable=np.abs(ev) < 1,
                       table=[{"blocks": ["T_RR"], "value": 1.0, "flag": True},
                              {"blocks": ["T_CC", "T_C->R"], "value": None, "flag": False}],
                       details={"inner": np.arange(3), "note": "x"}, label="ok", secret=np.zeros(2))


def gate_power(result, options):
    if options.limit is not None and result.norms[-1] > options.limit:
        return [f"last norm {result.norms[-1]:.3g} > {options.limit}"]
    return []


def plot_power(result, model):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot(result.norms)
    return {"norms": fig}


SPEC = AnalysisSpec(name="power", help="Norms of powers of W_hh.", options=PowerOptions, run=run_power,
                    example="rnnprobe power net.pt --steps 3", plot=plot_power, gate=gate_power, uses_task=False)


@pytest.fixture
def model():
    W = np.array([[0.5, -0.6, 0.1], [0.6, 0.5, 0.1], [0.0, 0.0, 0.2]])  # a complex pair and 0.2
    return Model(cell=ElmanCell(W, np.ones((3, 1)), None, np.ones((2, 3))), format="memory")


def test_report_layout(tmp_path, model):
    out = analyze(SPEC, tmp_path / "net.pt", PowerOptions(steps=3), RunSettings(out_dir=tmp_path, seed=7),
                  model=model)
    assert out.paths.h5 == tmp_path / "net.power.h5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.power.h5", "net.power.json", "net.power.norms.png"]
    with h5py.File(out.paths.h5, "r") as f:
        for key in ("rnnprobe_version", "schema_version", "analysis", "created", "argv", "checkpoint",
                    "checkpoint_sha256", "seed", "device", "dtype", "torch_version", "numpy_version"):
            assert key in f.attrs, key
        assert f.attrs["analysis"] == "power" and f.attrs["seed"] == 7
        np.testing.assert_array_equal(f["model/W_hh"][()], model.cell.W_hh.numpy())
        assert f["model"].attrs["cell"] == "elman"
        g = f["power"]
        assert g.attrs["option_steps"] == 3 and g.attrs["option_mode"] == "fro"
        assert g["norms"].compression == "gzip"
        # no complex or boolean datasets: _real/_imag pairs and int8 flags
        assert "eigenvalues" not in g and g["eigenvalues_real"].dtype == np.float64
        assert g["stable"].dtype == np.int8
        assert "secret" not in g
        assert json.loads(g["table"].attrs["table_columns"]) == ["blocks", "value", "flag"]
        assert list(g["table/blocks"].asstr()[()]) == ['["T_RR"]', '["T_CC", "T_C->R"]']
        assert np.isnan(g["table/value"][1]) and list(g["table/flag"][()]) == [1, 0]
        assert list(g["details/inner"][()]) == [0, 1, 2] and g["details"].attrs["note"] == "x"

        def no_bool_or_complex(name, obj):
            if isinstance(obj, h5py.Dataset):
                assert obj.dtype.kind not in "bc", name

        f.visititems(no_bool_or_complex)
    summary = json.loads(out.paths.json.read_text())
    assert summary["last_norm"] == pytest.approx(out.result.norms[-1])
    assert summary["nan_value"] is None  # JSON has no NaN
    assert summary["warnings"] == ["a warning from the analysis"]
    assert summary["report"] == str(out.paths.h5) and summary["options"]["steps"] == 3


def test_atomic_write_leaves_nothing_on_failure(tmp_path, model, monkeypatch):
    import rnnprobe.report.writer as writer

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(writer, "write_tree", boom)
    with pytest.raises(OSError):
        analyze(SPEC, tmp_path / "net.pt", PowerOptions(), RunSettings(out_dir=tmp_path), model=model)
    assert [p.name for p in tmp_path.iterdir() if p.suffix != ".png"] == []
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_analysis_exception_becomes_analysis_error(tmp_path, model):
    with pytest.raises(AnalysisError, match="net.pt: power failed: RuntimeError: deliberate"):
        analyze(SPEC, tmp_path / "net.pt", PowerOptions(fail=True), RunSettings(out_dir=tmp_path), model=model)
    assert list(tmp_path.iterdir()) == []


def test_options_validate_and_coerce():
    with pytest.raises(InputError, match=r"--steps=0 must be >= 1"):
        PowerOptions(steps=0)
    with pytest.raises(InputError, match=r"--scale=0.0 must be > 0.0"):
        PowerOptions(scale=0.0)
    with pytest.raises(InputError, match=r"--mode='max' must be one of fro, spec"):
        PowerOptions(mode="max")
    o = options_from_mapping(PowerOptions, {"steps": "4", "--limit": "2.5", "fail": "false"})
    assert (o.steps, o.limit, o.fail) == (4, 2.5, False)
    with pytest.raises(InputError, match="unknown option 'nope'"):
        options_from_mapping(PowerOptions, {"nope": 1})


def test_task_is_required_only_when_asked():
    ctx = RunContext()
    with pytest.raises(InputError, match="--task NAME or --data FILE"):
        ctx.task()


@pytest.fixture
def cli_app(model, monkeypatch):
    import rnnprobe.pipeline as pipeline

    app = typer.Typer()
    add_analysis_command(app, SPEC)

    @app.command("other")
    def _other():  # a second command so that Typer keeps the subcommand name
        pass

    real = pipeline.analyze
    monkeypatch.setattr(pipeline, "analyze", lambda *a, **k: real(*a, **{**k, "model": model}))
    return app


def test_cli_runs_the_pipeline_and_gates(tmp_path, cli_app):
    ckpt = tmp_path / "net.pt"
    ckpt.write_bytes(b"placeholder: the model is injected")
    runner = CliRunner()
    r = runner.invoke(cli_app, ["power", str(ckpt), "--steps", "2", "--out", str(tmp_path / "r"), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["n"] == 2 and summary["analysis"] == "power"
    r = runner.invoke(cli_app, ["power", str(ckpt), "--limit", "1e-9", "--out", str(tmp_path / "r"), "-q"])
    assert r.exit_code == 1
    assert "gate failed: last norm" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(cli_app, ["power", str(ckpt), "--steps", "0", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "--steps=0 must be >= 1" in r.stderr
    r = runner.invoke(cli_app, ["power", str(ckpt), "--fail", "--out", str(tmp_path / "r2")])
    assert r.exit_code == 3 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "r2").exists() or list((tmp_path / "r2").iterdir()) == []
    r = runner.invoke(cli_app, ["power", "--help"])
    assert "Example: rnnprobe power net.pt --steps 3" in r.stdout


def test_cli_help_of_every_command_has_an_example():
    from rnnprobe.cli.app import app

    runner = CliRunner()
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    commands = [c.name for c in typer.main.get_command(app).commands.values()]
    for name in commands:
        sub = ["report", "show"] if name == "report" else [name]
        r = runner.invoke(app, [*sub, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0, name
        assert "Example: rnnprobe" in r.stdout, name
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("rnnprobe ")


def test_report_show_reads_any_report(tmp_path, model):
    from rnnprobe.cli.app import app

    out = analyze(SPEC, tmp_path / "net.pt", PowerOptions(), RunSettings(out_dir=tmp_path), model=model)
    r = CliRunner().invoke(app, ["report", "show", str(out.paths.h5), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["analysis"] == "power" and d["results"]["datasets"]["norms"]["shape"] == [5]
    assert d["summary"]["n"] == 5
    r = CliRunner().invoke(app, ["report", "show", str(out.paths.h5)])
    assert r.exit_code == 0 and "norms" in r.stdout
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    r = CliRunner().invoke(app, ["report", "show", str(bad)])
    assert r.exit_code == 2 and "not an HDF5 report" in r.stderr and "Traceback" not in r.output
    os.remove(bad)
