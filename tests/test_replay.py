"""`fedsynth run --replay RUN_DIR --sites SITES`: bad input is one line naming what is wrong,
exit 2. (That a replay of a Flower run with a SuperNode killed mid-run is bit-identical is
tested in tests/test_flower.py; the soak in benchmarks/soak.py replays 200 rounds.)"""

import json
import shutil

from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.fed.replay import replay_config


def _recorded(tmp_path):
    """A recorded Flower run's files, as the server writes them: two clients, client 1 missed round 2."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("[data]\nimage-size = 16\n[fed]\nrounds = 3\n[eval]\nenabled = false\n")
    (run / "nodes.json").write_text(json.dumps({"0": {"node-id": 5, "images": 32},
                                                "1": {"node-id": 9, "images": 32, "settings": {"train.batch-size": 8}}}))
    recs = [{"round": 1, "client": "0", "metric": "d-loss", "value": 1.0},
            {"round": 2, "client": "1", "metric": "dropped", "value": 1, "reason": "Error: Node Unavailable"},
            {"round": 3, "client": "0", "metric": "rejected", "value": 1, "reason": "malformed reply"}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return run


def _fails(args, *words):
    res = CliRunner().invoke(app, ["run", *args])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    for w in words:
        assert w in text, text
    return text


def test_the_replay_config_forces_the_recorded_misses_and_each_sites_settings(tmp_path):
    cfg, ids, missed = replay_config(_recorded(tmp_path))
    assert ids == ["0", "1"] and cfg.faults.dropout_schedule == ("2:1", "3:0")
    assert [m["why"] for m in missed] == ["Error: Node Unavailable", "malformed reply"]
    assert cfg.site_overrides("1") == {"train.batch-size": 8} and cfg.site_overrides("0") == {}


def test_replay_errors_are_one_line_and_exit_2(tmp_path, sites):
    run = _recorded(tmp_path)
    _fails(["--replay", str(run)], "--replay and --sites go together")
    _fails(["--replay", str(tmp_path / "nowhere"), "--sites", str(sites)], "no config.toml")
    _fails(["--replay", str(run), "--sites", str(sites), "-s", "fed.rounds=9"], "--replay takes no")
    part = tmp_path / "part"
    shutil.copytree(sites / "client-0", part / "client-0")
    _fails(["--replay", str(run), "--sites", str(part), "-o", str(tmp_path / "out")], "no folder client-1 for site 1")
    assert not (tmp_path / "out").exists()  # checked before anything is written
    (run / "config.toml").write_text((run / "config.toml").read_text().replace("rounds = 3", "rounds = 3\n"
                                                                                "secure-aggregation = true"))
    _fails(["--replay", str(run), "--sites", str(sites)], "used secure aggregation")
