"""The volumetric DCGAN over the Flower deployment engine on 127.0.0.1: two SuperNodes, each
reading its own folder of NIfTI volumes (written by `fedsynth data split`); two rounds give the
in-process engine's global weights bit for bit, and the 2.5-D scores computed from per-plane
statistics merged on the server equal the in-process numbers. Skipped without flwr."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from test_flower import _federation, _run_app  # noqa: E402  (the Flower tests' helpers)

CONFIG = ("[data]\ndims = 3\nsource = \"phantom-ct\"\nimage-size = 16\n[model]\nnz = 8\nngf = 4\nndf = 4\n"
          "[train]\nbatch-size = 4\nthreads = 1\n[fed]\nrounds = 2\nmin-local-steps = 0\n"
          "[eval]\nnum-samples = 8\ngrid-size = 4\nkid-subset-size = 16\nkid-subsets = 3\nvolume-slices = 4\n"
          "feature-extractor = \"random\"\n")


@pytest.fixture(scope="module")
def volume_sites(tmp_path_factory):
    from typer.testing import CliRunner

    from fedsynth.cli import app
    root = tmp_path_factory.mktemp("vsites")
    res = CliRunner().invoke(app, ["data", "split", "phantom-ct", "-k", "2", "--out", str(root / "sites"),
                                   "--set", "data.dims=3", "--set", "data.num-images=12",
                                   "--set", "data.image-size=16"])
    assert res.exit_code == 0, res.output
    return root / "sites"


@pytest.mark.timeout(600)
def test_volumes_over_flower_match_the_in_process_engine(tmp_path, volume_sites):
    from fedsynth.config import load_config
    from fedsynth.data import load_dataset
    from fedsynth.fed import build_in_process
    assert sorted(p.name for p in (volume_sites / "client-0").rglob("*.nii.gz"))  # NIfTI volumes per site
    cfg_path = tmp_path / "fedsynth.toml"
    cfg_path.write_text(CONFIG)
    nodes = [(str(volume_sites / f"client-{k}"), str(k), {"data-source": "nifti"}) for k in (0, 1)]
    _run_app(_federation(tmp_path, volume_sites, nodes=nodes), cfg_path, tmp_path / "run")
    out = tmp_path / "run"
    ck = torch.load(out / "checkpoints" / "round-0002.pt", weights_only=True)

    cfg = load_config(cfg_path)
    parts = [load_dataset(dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, source="nifti", path=str(volume_sites / f"client-{k}")))) for k in (0, 1)]
    assert parts[0].images.shape[1:] == (1, 16, 16, 16)
    ref = build_in_process(cfg, parts, client_ids=["0", "1"]).run()
    assert ck["model"]["dims"] == 3
    assert all(torch.equal(ref.global_state[k], ck["global"][k]) for k in ref.global_state)

    def key(r):
        return (r["round"], r["client"], r.get("real"), r["metric"])
    flower = {key(r): r for r in map(json.loads, Path(out / "metrics.jsonl").read_text().splitlines())
              if "extractor" in r}
    inproc = {key(r): r for r in ref.records if "extractor" in r}
    # KID and the realism score need real features, which never leave a site: none on the union over Flower
    union_kid = {k for k in inproc if k[2] == "union" and k[3].startswith(("kid", "realism"))}
    assert set(flower) == set(inproc) - union_kid
    assert {k[3] for k in flower} >= {"fd-random", "fd-random-plane-xy", "fd-random-plane-yz", "fd-random-plane-zx"}
    for k, r in flower.items():
        assert r["value"] == pytest.approx(inproc[k]["value"], rel=1e-6, abs=1e-9), k
