"""`fedsynth data inspect` writes a montage only where it is asked to."""

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from fedsynth.cli import app

runner = CliRunner()


def _files(root):
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file() and "cache" not in p.relative_to(root).parts}


def _folder(tmp_path):
    d = tmp_path / "scans"
    for c in ("a", "b"):
        (d / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((12, 12), 40 * i, np.uint8)).save(d / c / f"{i}.png")
    return d


def test_inspect_writes_nothing_without_montage(tmp_path):
    src = _folder(tmp_path)  # the working directory is tmp_path (conftest)
    before = _files(tmp_path)
    res = runner.invoke(app, ["data", "inspect", str(src)])
    assert res.exit_code == 0, res.output
    assert "6 images" in res.output and "montage: not written (add --montage FILE.png" in res.output
    assert _files(tmp_path) == before  # neither the working directory nor the data folder gained a file


def test_inspect_writes_the_montage_where_asked(tmp_path):
    src = _folder(tmp_path)
    for opt, name in (("--montage", "m1.png"), ("--out", "sub/m2.png"), ("-o", "m3.png")):
        res = runner.invoke(app, ["data", "inspect", str(src), opt, str(tmp_path / "reports" / name)])
        assert res.exit_code == 0, res.output
        assert (tmp_path / "reports" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p for p in _files(tmp_path) if p.suffix == ".png" and p.parts[0] != "scans"} == {
        tmp_path.joinpath("reports", n).relative_to(tmp_path) for n in ("m1.png", "sub/m2.png", "m3.png")}


def test_inspect_refuses_a_folder_as_montage_file(tmp_path):
    src = _folder(tmp_path)
    res = runner.invoke(app, ["data", "inspect", str(src), "--montage", str(tmp_path)])
    assert res.exit_code == 2
    assert res.output.strip() == f"error: --montage {tmp_path}: it is a folder; give a file name such as {tmp_path / 'montage.png'}"


def test_inspect_says_what_a_phantoms_classes_are(wide_cli):
    res = runner.invoke(app, ["data", "inspect", "phantom-xray", "-s", "data.num-images=16", "-s", "data.image-size=16"])
    assert res.exit_code == 0, res.output
    assert "classes: body habitus: a slimmer or a broader chest outline" in res.output
    own = runner.invoke(app, ["data", "inspect", "phantom-histo", "-s", "data.num-images=16", "-s", "data.image-size=16"])
    assert "classes: the tissue: normal, or tumour" in own.output
