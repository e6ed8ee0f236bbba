import json

import pytest
from typer.testing import CliRunner

from fedsynth.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args,key", [
    (["--set", "fed.roundz=3"], "fed.roundz"),
    (["--set", "fed.rounds=abc"], "fed.rounds"),
    (["--set", "partition.clients=0"], "partition.clients"),
    (["--set", "data.image-size=100"], "data.image-size"),
])
def test_bad_config_exits_2_with_one_line_and_no_run_dir(tmp_path, args, key):
    res = runner.invoke(app, ["run", *args, "--set", f"run.out-dir={tmp_path / 'runs'}"])
    assert res.exit_code == 2
    text = res.output.strip()
    assert key in text and "Traceback" not in text
    assert len(text.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_bad_config_file_exits_2(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[fed]\nrounds = -1\n")
    res = runner.invoke(app, ["run", "--config", str(p)])
    assert res.exit_code == 2 and "fed.rounds" in res.output


def test_dry_run_prints_resolved_config(tmp_path):
    res = runner.invoke(app, ["run", "--dry-run", "--set", "fed.rounds=3"])
    assert res.exit_code == 0
    assert "rounds = 3" in res.output and "[partition]" in res.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.smoke
def test_whole_tiny_federated_run_via_cli(tiny, tmp_path):
    args = ["run"] + [a for o in tiny for a in ("--set", o)] + ["--out", str(tmp_path / "r")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = tmp_path / "r"
    for name in ("config.toml", "partition.json", "metrics.jsonl", "timings.jsonl", "fd.png"):
        assert (out / name).is_file(), name
    assert "image-size = 16" in (out / "config.toml").read_text()
    part = json.loads((out / "partition.json").read_text())
    assert sum(c["images"] for c in part["clients"].values()) == 64
    assert "fd-random (lower is better)" in res.output and "global, all sites" in res.output
    # --out refuses to overwrite a finished run
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already holds a run" in again.output


def test_data_preview_writes_a_montage(tmp_path):
    res = runner.invoke(app, ["data", "preview", "phantom-ct", "--out", str(tmp_path / "m.png"), "--n", "6", "--size", "32"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m.png").stat().st_size > 1000
    bad = runner.invoke(app, ["data", "preview", "nope", "--out", str(tmp_path / "m.png")])
    assert bad.exit_code == 2


def test_data_split_then_run_on_a_client_folder(tiny, tmp_path):
    res = runner.invoke(app, ["data", "split", "phantom-ct", "--clients", "2", "--scheme", "by-label",
                              "--out", str(tmp_path / "sites"), "--set", "data.num-images=60",
                              "--set", "data.image-size=16"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "sites").iterdir()) == ["client-0", "client-1", "partition.json"]
    assert sorted(p.name for p in (tmp_path / "sites" / "client-0").iterdir()) == ["shoulders", "upper-liver"]
    again = runner.invoke(app, ["data", "split", "phantom-ct", "-k", "2", "--out", str(tmp_path / "sites")])
    assert again.exit_code == 2 and "not empty" in again.output
    args = ["run"] + [a for o in tiny for a in ("--set", o)] + [
        "--set", "data.source=folder", "--set", f'data.path="{tmp_path / "sites" / "client-0"}"',
        "--out", str(tmp_path / "r")]
    run = runner.invoke(app, args)
    assert run.exit_code == 0, run.output
    part = json.loads((tmp_path / "r" / "partition.json").read_text())
    assert part["class_names"] == ["shoulders", "upper-liver"] and part["data"]["source"] == "folder"


def test_data_inspect_source_path_guessing(tmp_path):
    import numpy as np
    np.savez(tmp_path / "pathmnist_64.npz", train_images=np.zeros((4, 64, 64, 3), np.uint8),
             train_labels=np.arange(4).reshape(4, 1))
    res = runner.invoke(app, ["data", "inspect", str(tmp_path / "pathmnist_64.npz"), "--montage", str(tmp_path / "m.png")])
    assert res.exit_code == 0, res.output
    assert "4 images, 3 channel(s)" in res.output and (tmp_path / "m.png").is_file()


def test_bad_data_exits_2_naming_the_file_and_leaves_no_run_dir(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.png").write_bytes(b"garbage")
    res = runner.invoke(app, ["run", "--set", "data.source=folder", "--set", f'data.path="{tmp_path / "imgs"}"',
                              "--set", f"run.out-dir={tmp_path / 'runs'}"])
    assert res.exit_code == 2 and "broken.png" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "runs").exists()


def test_deploy_certs_writes_ca_server_and_node_keys(tmp_path):
    pytest.importorskip("cryptography")
    res = runner.invoke(app, ["deploy", "certs", "--out", str(tmp_path / "c"), "--nodes", "2", "--name", "superlink.example"])
    assert res.exit_code == 0, res.output
    c = tmp_path / "c"
    assert (c / "ca.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert (c / "keys" / "node1.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert oct((c / "keys" / "node0").stat().st_mode & 0o777) == "0o600"
    from cryptography import x509
    cert = x509.load_pem_x509_certificate((c / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName) and "superlink.example" in sans.get_values_for_type(x509.DNSName)
    again = runner.invoke(app, ["deploy", "certs", "--out", str(c), "--nodes", "1"])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output


def test_help_does_not_import_torch():
    """`fedsynth --help` and every command's help stay fast: the CLI module imports no torch."""
    import subprocess
    import sys
    code = "import sys, fedsynth.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_ctrl_c_writes_the_report_so_far_and_says_how_to_go_on(tiny, tmp_path, monkeypatch):
    from fedsynth.report.terminal import RichReporter
    end = RichReporter.round_end

    def interrupted(self, r, *a, **k):
        end(self, r, *a, **k)
        if r == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(RichReporter, "round_end", interrupted)
    out = tmp_path / "r"
    res = runner.invoke(app, ["run", *[a for o in tiny for a in ("--set", o)], "--set", "fed.rounds=3",
                              "--set", "eval.enabled=false", "--out", str(out)])  # evaluation off: seconds
    assert res.exit_code == 130, res.output
    assert (out / "report.html").is_file() and "Traceback" not in res.output
    text = " ".join(res.output.split())
    assert f"fedsynth run --resume {out}" in text and f"fedsynth report {out}" in text


def test_resume_before_the_first_checkpoint_says_it_starts_again(tiny, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    from fedsynth.config import build_config
    (out / "config.toml").write_text(build_config(overrides=tiny + ["fed.rounds=1", "eval.enabled=false"]).to_toml())
    res = runner.invoke(app, ["run", "--resume", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "has no checkpoint yet" in text and "starting again from round 1" in text


def test_a_finished_run_can_be_extended_by_more_rounds(tiny, tmp_path):
    out = tmp_path / "r"
    base = ["run", *[a for o in tiny for a in ("--set", o)], "--set", "fed.rounds=1", "--set", "eval.enabled=false"]
    assert runner.invoke(app, [*base, "--out", str(out)]).exit_code == 0
    done = runner.invoke(app, ["run", "--resume", str(out)])
    assert done.exit_code == 0 and "--set fed.rounds=N" in " ".join(done.output.split())
    more = runner.invoke(app, ["run", "--resume", str(out), "--set", "fed.rounds=2"])
    assert more.exit_code == 0, more.output
    assert "extending the run from 1 to 2 rounds" in " ".join(more.output.split())
    assert "rounds = 2" in (out / "config.toml").read_text()
    session = json.loads((out / "run.json").read_text())["sessions"][-1]
    assert session["rounds_extended"] == {"from": 1, "to": 2} and session["last_round"] == 2
    assert any(json.loads(line)["round"] == 2 for line in (out / "metrics.jsonl").read_text().splitlines())
    fewer = runner.invoke(app, ["run", "--resume", str(out), "--set", "fed.rounds=1"])
    assert fewer.exit_code == 2 and "has already done 2 rounds" in fewer.output
