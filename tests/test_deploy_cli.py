"""fedsynth deploy helpers that need no running Flower: the environment every Flower command
gets, the exit code of a followed run, and clear errors before anything is sent."""

import os
import sys

from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.fed.flower.deploy import APP_DIR, flower_env, stream_run


def test_flower_env_turns_telemetry_update_check_and_runtime_installs_off_but_lets_the_user_win():
    env = flower_env({"PATH": "/usr/bin", "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.5"})
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.5"  # set by the caller: kept
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)


def test_a_followed_run_exits_by_what_the_server_said_not_by_flwr_run():
    def fake(lines: str, code: int = 0) -> int:
        out: list[str] = []
        rc = stream_run(["bash", "-c", f"printf '{lines}'; exit {code}"], dict(os.environ), echo=out.append)
        assert out == lines.rstrip("\\n").split("\\n")
        return rc
    assert fake("[fedsynth] round 1/1\\n[fedsynth] done: 1 rounds\\n") == 0
    assert fake("[fedsynth] error: client 1: data-path /x: no images\\n") == 2  # flwr run said 0
    assert fake("Using SuperLink\\n") == 1  # neither done nor error: the server never finished
    assert fake("boom\\n", 3) == 3


def test_deploy_run_rejects_a_bad_config_before_sending_anything(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[fed]\nrounds = 0\n")
    res = CliRunner().invoke(app, ["deploy", "run", "--config", str(bad)])
    assert res.exit_code == 2 and "fed.rounds" in res.output
    res = CliRunner().invoke(app, ["deploy", "run", "--config", str(tmp_path / "missing.toml")])
    assert res.exit_code == 2 and "missing.toml" in res.output
    assert (APP_DIR / "pyproject.toml").is_file()
    res = CliRunner().invoke(app, ["deploy", "run", "--print-app"])
    assert res.exit_code == 0 and res.output.strip() == str(APP_DIR)


def test_deploy_supernode_passes_every_option_through_and_starts_a_warm_worker(monkeypatch):
    import fedsynth.fed.flower.deploy
    calls = []

    def fake_execve(path, argv, env):
        calls.append((path, argv, env))
        raise SystemExit(0)
    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.setattr(fedsynth.fed.flower.deploy, "start_worker", lambda: "/tmp/fedsynth-node-x/worker.sock")
    args = ["--root-certificates=/tls/ca.crt", "--superlink", "h:8000", "--node-config", 'data-path="/d" client-id="0"']
    CliRunner().invoke(app, ["deploy", "supernode", *args])
    path, argv, env = calls[-1]
    assert path.endswith("flower-supernode") and argv == ["flower-supernode", *args]
    assert env["FEDSYNTH_NODE_WORKER"] == "/tmp/fedsynth-node-x/worker.sock"
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert "FEDSYNTH_NODE_WORKER" not in os.environ  # only the SuperNode's environment has it
    CliRunner().invoke(app, ["deploy", "supernode", "--no-warm-worker", *args])
    path, argv, env = calls[-1]
    assert argv == ["flower-supernode", *args] and env["FEDSYNTH_NODE_WORKER"] == ""
