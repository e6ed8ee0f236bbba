"""The Kubernetes manifests under deploy/kubernetes parse and agree with each other and with
what Flower needs (TLS on, node auth on, each hospital's data on its own volume)."""

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

K8S = Path(__file__).parent.parent / "deploy" / "kubernetes"
FLWR_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def _docs():
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        out += [(f.name, d) for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def _args(container) -> dict[str, str]:
    return dict(a.lstrip("-").split("=", 1) if "=" in a else (a.lstrip("-"), "") for a in container["args"])


def _mounts(pod) -> dict[str, dict]:
    """mountPath -> the volume behind it."""
    vols = {v["name"]: v for v in pod["volumes"]}
    c = pod["containers"][0]
    return {m["mountPath"]: vols[m["volumeName"] if "volumeName" in m else m["name"]] for m in c["volumeMounts"]}


def test_manifests_parse_and_cross_check():
    docs = _docs()
    kinds = [(f, d["kind"]) for f, d in docs]
    assert ("superlink.yaml", "Service") in kinds and ("superlink.yaml", "Deployment") in kinds
    deployments = [d for _, d in docs if d["kind"] == "Deployment"]
    link = next(d for d in deployments if d["metadata"]["name"] == "fedsynth-superlink")
    svc = next(d for _, d in docs if d["kind"] == "Service")
    nodes = [d for d in deployments if d is not link]
    assert len(nodes) >= 2

    for d in deployments:  # selectors select their own pods; Flower's env is set; TLS everywhere
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        c = d["spec"]["template"]["spec"]["containers"][0]
        assert {e["name"]: e["value"] for e in c["env"]}.items() >= FLWR_ENV.items()
        assert "insecure" not in _args(c)

    # the Service reaches the SuperLink on the port it listens on
    pod = link["spec"]["template"]["spec"]
    c = pod["containers"][0]
    a = _args(c)
    assert svc["spec"]["selector"].items() <= link["spec"]["template"]["metadata"]["labels"].items()
    port = int(a["port"])
    assert svc["spec"]["ports"][0]["targetPort"] == port == c["ports"][0]["containerPort"]
    assert "enable-supernode-auth" in a
    mounts = _mounts(pod)
    tls = next(p for p in mounts if a["ssl-certfile"].startswith(p + "/"))
    assert mounts[tls]["secret"]["secretName"] == "fedsynth-superlink-tls"
    assert all(a[k].startswith(tls + "/") for k in ("ssl-ca-certfile", "ssl-certfile", "ssl-keyfile"))

    client_ids = []
    for d in nodes:
        pod = d["spec"]["template"]["spec"]
        c = pod["containers"][0]
        a = _args(c)
        host, p = a["superlink"].split(":")
        assert host == svc["metadata"]["name"] and int(p) == svc["spec"]["ports"][0]["port"]
        mounts = _mounts(pod)
        # the CA comes from the SuperLink's Secret, but only ca.crt (never its private key)
        ca_dir = a["root-certificates"].rsplit("/", 1)[0]
        ca = mounts[ca_dir]["secret"]
        assert ca["secretName"] == "fedsynth-superlink-tls" and [i["key"] for i in ca["items"]] == ["ca.crt"]
        key_dir, key_file = a["auth-supernode-private-key"].rsplit("/", 1)
        key = mounts[key_dir]["secret"]
        assert [i["path"] for i in key["items"]] == [key_file] and key["defaultMode"] == 0o400
        cfg = dict(kv.split("=", 1) for kv in a["node-config"].split())
        data = cfg["data-path"].strip('"')
        assert "persistentVolumeClaim" in mounts[data]           # the hospital's own image volume
        assert next(m for m in c["volumeMounts"] if m["mountPath"] == data)["readOnly"] is True
        client_ids.append(cfg["client-id"].strip('"'))
        assert d["spec"]["template"]["metadata"]["labels"]["fedsynth/client-id"] == client_ids[-1]
    assert len(set(client_ids)) == len(client_ids)
    assert len({d["metadata"]["name"] for d in nodes}) == len(nodes)
