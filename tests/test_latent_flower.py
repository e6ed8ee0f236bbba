"""3-D latent diffusion over the Flower deployment engine on 127.0.0.1: two SuperNodes, each
reading its own folder of chest-CT NIfTI volumes (16^3, written by `fedsynth data split`), and a
frozen stage-1 autoencoder trained in-process on the same kind of data.

* Stage 2 over Flower (site 1 holds its copy of the autoencoder at a path of its own, node config
  ``autoencoder.path``): two rounds give the in-process engine's global weights bit for bit and
  its scores; only the UNet and its EMA travel and are stored; the run's config.toml holds the
  autoencoder's pinned hash.
* A node holding another autoencoder (a stage-1 run from another seed) stops the run with an
  error naming that site and the hash; ``fedsynth deploy run`` exits with 2.
Skipped without flwr."""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from test_flower import _federation, _run_app  # noqa: E402  (the Flower tests' helpers)

VOLUMES = ["data.dims=3", "data.source=phantom-ct", "data.image-size=16", "data.num-images=12"]


def _config(ae: Path, evaluate: bool = True) -> str:
    return ("[data]\ndims = 3\nsource = \"phantom-ct\"\nimage-size = 16\n"
            "[model]\nfamily = \"latent-diffusion\"\n"
            f"[autoencoder]\npath = {json.dumps(str(ae))}\n"
            "[diffusion]\nchannels = [8, 8]\nattention = [false, false]\ntimesteps = 20\nsampling-steps = 3\n"
            "[train]\nbatch-size = 4\nthreads = 1\n[fed]\nrounds = 2\nmin-local-steps = 0\n"
            + ("[eval]\nnum-samples = 8\ngrid-size = 4\nkid-subset-size = 16\nkid-subsets = 3\nvolume-slices = 4\n"
               "feature-extractor = \"random\"\n" if evaluate else "[eval]\nenabled = false\n"))


@pytest.fixture(scope="module")
def latent_sites(tmp_path_factory):
    """Two sites' NIfTI folders (client-0/, client-1/, 6 volumes of 16^3 each) and two stage-1
    runs on chest-CT volumes of that size: ``ae`` (the consortium's autoencoder) and ``other``
    (another seed: a site that holds the wrong file)."""
    from typer.testing import CliRunner

    from fedsynth.cli import app
    from fedsynth.config import load_config
    from fedsynth.fed.run import run_experiment
    root = tmp_path_factory.mktemp("latent")
    res = CliRunner().invoke(app, ["data", "split", "phantom-ct", "-k", "2", "--out", str(root / "sites"),
                                   *[a for o in VOLUMES for a in ("--set", o)]])
    assert res.exit_code == 0, res.output
    for name, seed in (("ae", 0), ("other", 1)):
        run_experiment(load_config(None, [*VOLUMES, "model.family=autoencoder", "autoencoder.channels=[8, 8]",
                                          "train.batch-size=4", "train.threads=1", "fed.rounds=1",
                                          "fed.min-local-steps=0", "eval.enabled=false", f"run.seed={seed}"]),
                       out=root / name)
    return root


def _nodes(root: Path, site1: dict) -> list:
    return [(str(root / "sites" / "client-0"), "0", {"data-source": "nifti"}),
            (str(root / "sites" / "client-1"), "1", {"data-source": "nifti", **site1})]


@pytest.mark.timeout(600)
def test_volume_latent_diffusion_over_flower_matches_the_in_process_engine(tmp_path, latent_sites):
    from fedsynth.config import load_config
    from fedsynth.data import load_dataset
    from fedsynth.fed.evaluation import holdout_for
    from fedsynth.models.latent import load_autoencoder
    try:
        from fedsynth.fed import build_in_process
    except ImportError:  # before the move to fedsynth.fed.inprocess
        from fedsynth.fed.engine import build_in_process
    root = latent_sites
    _, _, sha = load_autoencoder(root / "ae")
    # site 1 keeps its copy of the same autoencoder elsewhere: the same weights, accepted
    shutil.copytree(root / "ae" / "checkpoints", tmp_path / "site1-ae" / "checkpoints")
    cfg_path = tmp_path / "fedsynth.toml"
    cfg_path.write_text(_config(root / "ae"))
    fed = _federation(tmp_path, root / "sites", nodes=_nodes(root, {"autoencoder.path": str(tmp_path / "site1-ae")}))
    _run_app(fed, cfg_path, tmp_path / "run")
    out = tmp_path / "run"
    ck = torch.load(out / "checkpoints" / "round-0002.pt", weights_only=True)

    # the hash of the frozen autoencoder, pinned in the run's config before anything was written
    assert load_config(out / "config.toml").autoencoder.sha256 == sha
    assert ck["model"]["family"] == "latent-diffusion" and ck["model"]["dims"] == 3
    assert ck["model"]["autoencoder"]["sha256"] == sha
    # nothing of the autoencoder travels or is stored: the UNet, its EMA and the EMA's step count
    keys = set(ck["global"])
    assert {"G.unet.conv_in.conv.weight", "G.ema.conv_in.conv.weight", "G.ema_steps"} <= keys
    assert all(k.startswith(("G.unet.", "G.ema.")) or k == "G.ema_steps" for k in keys), sorted(keys)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    sent = {r["value"] for r in records if r["metric"] == "bytes-sent"}
    assert sent == {sum(v.numel() * v.element_size() for v in ck["global"].values())}

    cfg = load_config(cfg_path)
    parts = [load_dataset(dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, source="nifti", path=str(root / "sites" / f"client-{k}")))) for k in (0, 1)]
    assert parts[0].images.shape[1:] == (1, 16, 16, 16)
    parts, held, _ = holdout_for(cfg, parts)  # split as each node splits its own images
    ref = build_in_process(cfg, parts, client_ids=["0", "1"], holdout=held).run()
    assert set(ref.global_state) == keys
    assert all(torch.equal(ref.global_state[k], ck["global"][k]) for k in ref.global_state)

    # the nodes and the server score through the frozen decoder: the in-process numbers
    def key(r):
        return (r["round"], r["client"], r.get("real"), r["metric"])
    flower = {key(r): r for r in records if "extractor" in r}
    inproc = {key(r): r for r in ref.records if "extractor" in r}
    union_kid = {k for k in inproc if k[2] == "union" and k[3].startswith(("kid", "realism"))}
    assert flower and set(flower) == set(inproc) - union_kid
    assert {k[3] for k in flower} >= {"fd-random", "fd-random-plane-xy", "fd-random-plane-yz", "fd-random-plane-zx"}
    for k, r in flower.items():
        assert r["value"] == pytest.approx(inproc[k]["value"], rel=1e-6, abs=1e-9), k


@pytest.mark.timeout(600)
def test_a_node_with_another_autoencoder_stops_the_run_naming_the_site(tmp_path, latent_sites):
    root = latent_sites
    cfg_path = tmp_path / "fedsynth.toml"
    cfg_path.write_text(_config(root / "ae", evaluate=False))
    fed = _federation(tmp_path, root / "sites", nodes=_nodes(root, {"autoencoder.path": str(root / "other")}))
    out = tmp_path / "run"
    try:
        fed.start()
        run = subprocess.run([sys.executable, "-m", "fedsynth.cli", "deploy", "run", "--clients", "2",
                              "--config", str(cfg_path), "--out", str(out)],
                             env=fed.env, capture_output=True, text=True, timeout=300)
    finally:
        fed.stop()
    text = run.stdout + run.stderr
    assert run.returncode == 2, text[-3000:]  # the server reported an error ([fedsynth] error)
    line = next((x for x in text.splitlines() if "error: site 1" in x), None)
    assert line is not None, text[-3000:]
    print(line)
    assert "sha256" in line and "not the run's" in line and str(root / "other") in line, line
    assert "site 0" not in line
    assert not (out / "checkpoints").exists()
