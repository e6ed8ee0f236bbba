"""Experiment tracking (run.tensorboard, run.mlflow-uri): what a run logs, read back from the
trackers' own local stores with their own readers."""

import ast
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fedsynth.report.tracking as tracking
from fedsynth.cli import app
from fedsynth.config import UserError, load_config
from fedsynth.fed.run import run_experiment
from fedsynth.report import RunDir, read_metrics
from fedsynth.report.tracking import TrackedRun, Tracker, series_tag

runner = CliRunner()


def test_one_run_logs_to_tensorboard_and_mlflow(tiny, tmp_path, monkeypatch):
    """One tiny run with both trackers on, its last round lost and resumed: every metric record
    comes back from TensorBoard's event files (once per round: the resume purged the lost round)
    and from MLflow's store (the same MLflow run, continued), with the config as parameters and
    the report, grids and checkpoints as artifacts."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's fast local store, for tests
    uri = (tmp_path / "mlruns").as_uri()
    cfg = load_config(None, tiny + ["run.tensorboard=true", f"run.mlflow-uri={uri}",
                                    "run.mlflow-experiment=tests"])
    run = run_experiment(cfg, tmp_path / "run").run_dir.path
    first_id = json.loads((run / "mlflow.json").read_text())["run_id"]
    (run / "checkpoints" / "round-0002.pt").unlink()  # round 2 lost: --resume runs it again
    resumed = run_experiment(load_config(run / "config.toml"), resume=run)
    assert resumed.resumed_from == 1
    records = read_metrics(run)
    wanted = {}
    for r in records:
        wanted.setdefault(series_tag(r), {})[r["round"]] = r["value"]
    assert {"fd-random/global", "fd-random/client-0", "fd-random/global-on-1", "d-loss/client-1"} <= set(wanted)

    # TensorBoard: scalars per client and global, the sample grids, the config
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert set(wanted) <= set(tags["scalars"])
    for tag, by_round in wanted.items():
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert got == pytest.approx(by_round, rel=1e-6), tag  # event files hold float32
    assert "timing/seconds/0" in tags["scalars"]
    grids = sorted(p.name for p in (run / "samples").glob("round-*.png"))
    assert [e.step for e in acc.Images("samples")] == [int(g[6:10]) for g in grids]
    assert acc.Images("samples")[-1].encoded_image_string[:4] == b"\x89PNG"
    assert "config" in "".join(tags["tensors"])

    # MLflow: one finished run with the flattened config, the metrics per round and the artifacts
    state = json.loads((run / "mlflow.json").read_text())
    assert state["run_id"] == first_id
    client = MlflowClient(uri)
    mrun = client.get_run(state["run_id"])
    assert mrun.info.status == "FINISHED" and mrun.info.run_name == run.name
    assert client.get_experiment(mrun.info.experiment_id).name == "tests"
    params = mrun.data.params
    assert params["fed.rounds"] == "2" and params["fed.share"] == '["G", "D"]'
    assert params["eval.feature-extractor"] == "random" and len(params) == len(tracking.flatten(cfg))
    for tag, by_round in wanted.items():
        history = client.get_metric_history(state["run_id"], tag)
        assert {m.step: m.value for m in history} == pytest.approx(by_round), tag
        # round 2 was logged by both processes (the same, deterministic value): MLflow keeps both
        assert sorted(m.step for m in history) == sorted(list(by_round) + [2] * (2 in by_round)), tag
    files = {a.path for a in client.list_artifacts(state["run_id"])}
    assert {"report.html", "config.toml", "metrics.jsonl", "fd.png", "checkpoints", "samples"} <= files
    ckpts = {Path(a.path).name for a in client.list_artifacts(state["run_id"], "checkpoints")}
    assert ckpts == {p.name for p in (run / "checkpoints").iterdir()}
    assert {Path(a.path).name for a in client.list_artifacts(state["run_id"], "samples")} == set(grids)


def test_a_missing_package_names_the_key_and_the_pip_command(tiny, tmp_path, monkeypatch):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name))
    res = runner.invoke(app, ["run", *[a for o in tiny for a in ("-s", o)], "-s", "run.mlflow-uri=sqlite:///x.db",
                              "-o", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert "run.mlflow-uri" in res.output and "pip install 'fedsynth[tracking]'" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "run").exists()


def test_a_tracker_that_cannot_start_is_a_user_error_and_leaves_no_run(tiny, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # MLflow 3 refuses its file store
    cfg = load_config(None, tiny + [f"run.mlflow-uri={(tmp_path / 'mlruns').as_uri()}"])
    with pytest.raises(UserError, match="run.mlflow-uri.*cannot start tracking"):
        run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_tracker_failing_mid_run_is_dropped_with_one_warning(tmp_path):
    class Broken(Tracker):
        name = "broken"

        def scalars(self, records):
            raise ConnectionError("tracking server gone")

    class Seen(Tracker):
        def __init__(self):
            self.got = []

        def scalars(self, records):
            self.got += records

    warnings = []
    seen = Seen()
    sink = TrackedRun(RunDir(tmp_path), [Broken(), seen], warnings.append)
    rec = {"round": 1, "client": "global", "real": "union", "metric": "fd-random", "value": 1.5}
    sink.log([rec])
    sink.log([dict(rec, round=2)])
    assert [r["round"] for r in read_metrics(tmp_path)] == [1, 2]  # the run directory has everything
    assert [r["round"] for r in seen.got] == [1, 2] and sink.records == read_metrics(tmp_path)
    assert len(warnings) == 1 and "broken tracking stopped" in warnings[0] and "server gone" in warnings[0]


def test_series_tags():
    tag = lambda **r: series_tag({"metric": "fd-random", **r})  # noqa: E731
    assert tag(client="global", real="union") == "fd-random/global"
    assert tag(client="global", real="sites") == "fd-random/global"
    assert tag(client="global", real="0") == "fd-random/global-on-0"
    assert tag(client="0", real="0") == "fd-random/client-0"
    assert tag(client="0", real="union") == "fd-random/client-0-on-union"
    assert tag(client="1") == "fd-random/client-1"


@pytest.mark.parametrize("bad,message", [
    ("run.tensorboard=yes", "run.tensorboard' must be true or false"),
    ("run.mlflow-experiment=", "experiment name must not be empty"),
])
def test_tracking_keys_are_validated(bad, message):
    with pytest.raises(UserError, match=message):
        load_config(None, ["run.mlflow-uri=sqlite:///m.db", bad])


def test_tracking_libraries_are_imported_only_when_a_run_enables_them():
    """``import fedsynth`` must not grow: no module-level import of tensorboard or mlflow."""
    src = Path(tracking.__file__).read_text()
    top = [n for n in ast.parse(src).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names} | \
            {n.module or "" for n in top if isinstance(n, ast.ImportFrom)}
    assert not any(m.split(".")[0] in ("mlflow", "tensorboard") or "tensorboard" in m for m in names)


@pytest.mark.parametrize("resume_from", [0, 1])
def test_tensorboard_resume_hides_the_lost_rounds(tmp_path, resume_from):
    """A resume continues from checkpoint round k (0: none readable, the run starts over at round
    0): whatever the killed process wrote after k is purged, every round shows once."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from fedsynth.config import build_config
    cfg = build_config()
    rec = lambda r, v: {"round": r, "client": "global", "real": "union", "metric": "fd-random", "value": v}  # noqa: E731
    first = tracking.TensorBoardTracker(cfg, tmp_path, None)
    first.scalars([rec(r, 10.0 + r) for r in range(3)])  # rounds 0-2, then killed before checkpoint 2
    first.close(tmp_path, "KILLED")
    again = tracking.TensorBoardTracker(cfg, tmp_path, resume_from)
    again.scalars([rec(r, 20.0 + r) for r in range(resume_from + 1 if resume_from else 0, 4)])
    again.close(tmp_path, "FINISHED")
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    got = [(e.step, e.value) for e in acc.Scalars("fd-random/global")]  # duplicates would show here
    kept = [(r, 10.0 + r) for r in range(resume_from + 1)] if resume_from else []
    assert got == kept + [(r, 20.0 + r) for r in range(resume_from + 1 if resume_from else 0, 4)]
