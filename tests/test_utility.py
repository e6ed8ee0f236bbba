"""`fedsynth utility` (issue 14, parts 5-6): a classifier trained on real, synthetic and real +
synthetic images, scored on held-out real ones; per-class generation for conditional runs; a
pretrained backbone through its library's loader; the t-SNE figure in the report; bad inputs."""

import csv
import html
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.config import build_config
from fedsynth.evaluate import balanced_labels, build_classifier, train_classifier
from fedsynth.fed.run import run_experiment

runner = CliRunner()
# 24 training and 12 held-out test phantoms (another seed), one epoch, a 16-point t-SNE
SMALL = ["--train-set", "data.num-images=24", "--test-set", "data.num-images=12", "--test-set", "run.seed=99",
         "--epochs", "1", "--min-steps", "0", "--tsne-points", "16", "--device", "cpu"]


def _tiny_run(tmp_path_factory, name, overrides):
    from conftest import TINY
    tmp = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDSYNTH_CACHE", str(tmp / "cache"))
        mp.chdir(tmp)
        torch.set_num_threads(1)
        run_experiment(build_config(overrides=TINY + ["fed.rounds=1"] + overrides), tmp / "run")
    return tmp / "run"


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    """A finished one-round class-conditional run on phantom-ct (3 classes, 16 px, gray)."""
    return _tiny_run(tmp_path_factory, "cond", ["data.source=phantom-ct", "model.conditional=multiply",
                                                 "model.d-conditioning=acgan"])


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """A finished one-round unconditional run on phantom-xray, evaluation off."""
    return _tiny_run(tmp_path_factory, "plain", ["data.source=phantom-xray", "eval.enabled=false"])


def _utility(run, *args):
    res = runner.invoke(app, ["utility", str(run), *args])
    return res


def test_three_arms_table_tsne_and_report(cond_run):
    res = _utility(cond_run, "--real-train", "phantom-ct", "--real-test", "phantom-ct", *SMALL)
    assert res.exit_code == 0, res.output
    out = cond_run / "utility"
    doc = json.loads((out / "utility.json").read_text())
    rows = doc["classifiers"]["smallcnn"]["rows"]
    assert [r["train"] for r in rows] == ["real", "synthetic", "real + synthetic"]
    assert [r["images"] for r in rows] == [24, 24, 48]
    assert [(r["real_images"], r["synthetic_images"]) for r in rows] == [(24, 0), (0, 24), (24, 24)]
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["f1"] <= 1.0
    table = list(csv.DictReader((out / "utility.csv").open()))
    assert [(t["classifier"], t["train"]) for t in table] == [("smallcnn", a) for a in ("real", "synthetic",
                                                                                         "real + synthetic")]
    assert all(0.0 <= float(t["accuracy"]) <= 1.0 for t in table)
    assert "| smallcnn | real + synthetic | 48 |" in (out / "utility.md").read_text()
    assert "real + synthetic" in res.output and "macro F1" in res.output  # the printed table
    # t-SNE: the run's own feature network (random), 16 points per side, the figure in the report
    assert doc["tsne"]["kind"] == "random" and doc["tsne"]["real"] == doc["tsne"]["synthetic"] == 16
    assert (out / "tsne.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (cond_run / "report.html").read_text()
    assert 'href="#utility"' in page and "<h2 id=utility>Downstream utility</h2>" in page
    assert 'alt="t-SNE of real and synthetic features"' in page and "t-SNE (scikit-learn, seeded)" in page


def test_the_utility_section_fits_a_phone(chromium_bin, cond_run):
    """The table scrolls in its box and the t-SNE figure shrinks: nothing wider than 420 px."""
    from tools.browser import check_report
    if not (cond_run / "utility" / "tsne.png").is_file():  # this test alone (another xdist worker ran the first)
        assert _utility(cond_run, "--real-train", "phantom-ct", "--real-test", "phantom-ct", *SMALL).exit_code == 0
    (narrow,) = check_report(cond_run / "report.html", (420,))
    assert narrow["broken"] == [] and narrow["hidden"] == [], narrow
    assert narrow["wider_than_window"] == [] and narrow["page_width"] <= 420, narrow


def test_conditional_run_generates_per_class_with_the_real_balance(cond_run, monkeypatch):
    from fedsynth.models.base import GenerativeModel
    asked = []
    sample = GenerativeModel.sample

    def spy(self, state, z, y=None, *a, **k):
        asked.append(None if y is None else y.clone())
        return sample(self, state, z, y, *a, **k)
    monkeypatch.setattr(GenerativeModel, "sample", spy)
    res = _utility(cond_run, "--real-train", "phantom-ct", "--real-test", "phantom-ct", "--synthetic", "12", *SMALL)
    assert res.exit_code == 0, res.output
    entry = json.loads((cond_run / "utility" / "utility.json").read_text())["classifiers"]["smallcnn"]
    counts = entry["real_train"]["class_counts"]
    assert sum(counts) == 24
    y = asked[0]
    assert len(y) == 12 and np.bincount(y.numpy(), minlength=3).tolist() == balanced_labels(counts, 12).bincount(
        minlength=3).tolist()
    assert entry["rows"][1]["images"] == 12


def test_balanced_labels_keep_the_real_class_proportions():
    assert torch.bincount(balanced_labels([10, 5, 1], 16), minlength=3).tolist() == [10, 5, 1]
    assert torch.bincount(balanced_labels([10, 5, 1], 8), minlength=3).tolist() == [5, 3, 0]   # 5, 2.5, 0.5 -> largest remainder
    assert torch.bincount(balanced_labels([1, 1, 1], 7), minlength=3).tolist() == [3, 2, 2]


def test_unconditional_run_skips_the_synthetic_arms_and_says_why(plain_run):
    res = _utility(plain_run, "--real-train", "phantom-xray", "--real-test", "phantom-xray", *SMALL)
    assert res.exit_code == 0, res.output
    doc = json.loads((plain_run / "utility" / "utility.json").read_text())
    real, syn, both = doc["classifiers"]["smallcnn"]["rows"]
    assert 0.0 <= real["accuracy"] <= 1.0
    assert "unconditional" in syn["skipped"] and "no class labels" in both["skipped"]
    assert "synthetic arms skipped" in res.output
    assert (plain_run / "utility" / "tsne.png").is_file()  # images need no labels for the figure
    page = html.unescape((plain_run / "report.html").read_text())
    assert "Skipped: the run's model is unconditional" in page


def test_seeded_augmented_training_repeats_exactly():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(12, 1, 16, 16, generator=g) * 2 - 1, torch.arange(12) % 2
    a, b, c = (train_classifier(x, y, 2, epochs=2, batch_size=6, seed=s, min_steps=0, augment=True)
               for s in (3, 3, 4))
    wa, wb, wc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_pretrained_backbone_loads_through_torchvision_from_the_cache(cond_run, tmp_path, monkeypatch):
    """A resnet18 state dict placed where torchvision's weights enum looks
    ($TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth): the classifier's trunk holds exactly
    those weights, and the command trains from them (no network)."""
    import torchvision
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    absent = _utility(cond_run, "--real-train", "phantom-ct", "--real-test", "phantom-ct", "--classifier",
                      "resnet18", "--pretrained", *SMALL)
    assert absent.exit_code == 2 and "resnet18-f37072fd.pth" in absent.output
    assert "fedsynth weights fetch resnet18" in absent.output
    torch.manual_seed(7)
    ref = torchvision.models.resnet18().state_dict()
    ck = tmp_path / "torch" / "hub" / "checkpoints"
    ck.mkdir(parents=True)
    torch.save(ref, ck / "resnet18-f37072fd.pth")
    clf = build_classifier("resnet18", 1, 16, 3, pretrained=True)
    assert torch.equal(clf.trunk.net.conv1.weight, ref["conv1.weight"])
    res = _utility(cond_run, "--real-train", "phantom-ct", "--real-test", "phantom-ct", "--classifier",
                   "resnet18", "--pretrained", "--tsne-points", "0", *SMALL[:-4], "--device", "cpu")
    assert res.exit_code == 0, res.output
    doc = json.loads((cond_run / "utility" / "utility.json").read_text())
    entry = doc["classifiers"]["resnet18-pretrained"]
    assert entry["settings"]["pretrained"] and entry["settings"]["lr"] == 1e-4
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in entry["rows"])


@pytest.mark.parametrize("args,says", [
    (["--classifier", "alexnet"], "--classifier: unknown classifier 'alexnet'; choose from smallcnn, resnet18"),
    (["--real-train", "phantom-histo"], "--real-train phantom-histo: 3-channel images, but the run's model makes "
                                        "1-channel ones"),
    (["--real-train", "phantom-xray", "--real-test", "phantom-xray"], "--real-train phantom-xray has classes"),
    (["--train-set", "data.image-size=32"], "--real-train phantom-ct: images of 32 px, but the run's model makes 16 px"),
    (["--test-set", "run.seed=0"], "--real-test holds the same images as --real-train"),  # the first 12 of 24
    (["--real-test", "nowhere/at/all"], "--real-test nowhere/at/all: no such data source or path"),
    (["--pretrained"], "--pretrained: smallcnn has no pretrained weights"),
    (["--epochs", "0"], "--epochs must be at least 1"),
])
def test_bad_inputs_give_one_clear_line(cond_run, args, says):
    base = {"--real-train": "phantom-ct", "--real-test": "phantom-ct"}
    given = dict(zip(args[::2], args[1::2]))
    opts = [a for k, v in base.items() if k not in given for a in (k, v)]
    small = ["--train-set", "data.num-images=24", "--test-set", "data.num-images=12"]
    if "--test-set" not in given:
        small += ["--test-set", "run.seed=99"]
    res = _utility(cond_run, *opts, *small, *args)
    assert res.exit_code == 2, res.output
    assert says in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output and res.output.strip().startswith("error:")


def test_a_run_without_checkpoints_or_config_is_refused(cond_run, tmp_path):
    (tmp_path / "empty").mkdir()
    res = _utility(tmp_path / "empty", "--real-train", "phantom-ct", "--real-test", "phantom-ct")
    assert res.exit_code == 2 and "is not a run directory (no config.toml)" in res.output
    run = tmp_path / "nock"
    run.mkdir()
    (run / "config.toml").write_text((cond_run / "config.toml").read_text())
    res = _utility(run, "--real-train", "phantom-ct", "--real-test", "phantom-ct")
    assert res.exit_code == 2 and "no checkpoints in" in res.output and "Traceback" not in res.output


def test_seeds_give_intervals_chance_and_cannot_tell(cond_run):
    """Each arm over --seeds seeds: the mean and its t-interval (fedsynth.metrics.intervals), the
    per-seed values, the chance level, and "cannot tell" where the intervals overlap."""
    from fedsynth.evaluate.utility import verdicts
    from fedsynth.metrics.intervals import mean_interval
    res = _utility(cond_run, "--real-train", "phantom-ct", "--real-test", "phantom-ct", *SMALL, "--seeds", "3")
    assert res.exit_code == 0, res.output
    doc = json.loads((cond_run / "utility" / "utility.json").read_text())
    entry = doc["classifiers"]["smallcnn"]
    chance = entry["settings"]["chance"]
    assert entry["settings"]["seeds"] == 3 and chance["classes"] == 3 and 1 / 3 <= chance["accuracy"] <= 1
    for r in entry["rows"]:
        assert len(r["accuracy_seeds"]) == 3
        iv = mean_interval(r["accuracy_seeds"])
        assert r["accuracy"] == pytest.approx(iv.mean, abs=1e-5) and r["accuracy_low"] == pytest.approx(iv.low, abs=1e-5)
    assert "chance level" in res.output and "3 seeds" in res.output
    # the verdicts themselves, on made-up rows: overlapping intervals cannot be told apart
    row = lambda name, m, lo, hi: {"train": name, "accuracy": m, "accuracy_low": lo, "accuracy_high": hi,  # noqa: E731
                                   "accuracy_seeds": [m] * 3}
    ch = {"accuracy": 0.5, "f1": 0.33, "classes": 2}
    assert verdicts([row("real", 0.41, 0.30, 0.52), row("synthetic", 0.41, 0.35, 0.47),
                     row("real + synthetic", 0.85, 0.80, 0.90)], ch) == {
        "real": "at chance", "synthetic": "cannot tell; at chance", "real + synthetic": "better than real only"}
    one = [{"train": "real", "accuracy": 0.9, "accuracy_seeds": [0.9]},
           {"train": "synthetic", "accuracy": 0.95, "accuracy_seeds": [0.95]}]
    assert verdicts(one, ch) == {"synthetic": "cannot tell"}  # one seed: no interval, no conclusion
