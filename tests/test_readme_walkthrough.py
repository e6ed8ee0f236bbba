"""The Flower walkthrough of the docs (docs/flower.md), run as written: the bash block after the
``<!-- walkthrough`` marker. The lines before ``# terminal 1`` run first; each ``# terminal N``
section runs in a process group of its own, as if typed into its own terminal (terminal 1 first,
the others once its port answers); the last section starts the run, which must succeed. HOME is
a temporary folder (the block writes ~/.flwr/config.toml) and so is the working folder. Every
process started is stopped by PID."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")

WALKTHROUGH = Path(__file__).parent.parent / "docs" / "flower.md"


def _sections() -> list[tuple[str, list[str]]]:
    text = WALKTHROUGH.read_text()
    block = re.search(r"<!-- walkthrough.*?-->\s*```bash\n(.*?)```", text, re.S).group(1)
    out: list[tuple[str, list[str]]] = [("setup", [])]
    for line in block.splitlines():
        if line.startswith("# "):
            out.append((line[2:], []))
        elif line.strip():
            out[-1][1].append(line)
    return out


@pytest.mark.smoke
def test_readme_walkthrough_runs_as_written(tmp_path):
    from tools.local_federation import stop_processes, wait_port
    sections = _sections()
    terminals = [(t, cmds) for t, cmds in sections if t.startswith("terminal")]
    assert [t.split(":")[0] for t, _ in terminals] == ["terminal 1", "terminal 2", "terminal 3"]
    setup, final = sections[0][1], sections[-1][1]
    assert sections[-1][0].startswith("then") and len(final) == 1 and final[0].startswith("fedsynth deploy run")
    home = tmp_path / "home"
    home.mkdir()
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "HOME": str(home), "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
           "FEDSYNTH_CACHE": str(tmp_path / "cache")}
    for k in ("FLWR_HOME", "FLWR_TELEMETRY_ENABLED", "FLWR_DISABLE_UPDATE_CHECK",
              "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"):
        env.pop(k, None)  # fedsynth itself must set what Flower needs
    work = tmp_path / "work"
    work.mkdir()
    for cmd in setup:
        res = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"{cmd}\n{res.stdout[-1500:]}{res.stderr[-1500:]}"
    port = int(re.search(r"--port (\d+)", terminals[0][1][-1]).group(1))
    procs = []
    try:
        for i, (_title, cmds) in enumerate(terminals):
            log = open(tmp_path / f"terminal-{i + 1}.log", "w")
            procs.append(subprocess.Popen(["bash", "-c", "set -e\n" + "\n".join(cmds)], cwd=work, env=env,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            if i == 0:
                wait_port(port)
        run = subprocess.run(["bash", "-c", final[0]], cwd=work, env=env, capture_output=True, text=True, timeout=420)
        logs = "".join((tmp_path / f"terminal-{i + 1}.log").read_text()[-1500:] for i in range(3))
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:] + logs
    finally:
        stop_processes(procs)
    out = work / re.search(r"--out (\S+)", final[0]).group(1)
    rounds = int(re.search(r"fed\.rounds=(\d+)", final[0]).group(1))
    assert (out / "report.html").is_file() and (out / "checkpoints" / f"round-{rounds:04d}.pt").is_file()
    assert f"round {rounds}/{rounds}" in run.stdout
