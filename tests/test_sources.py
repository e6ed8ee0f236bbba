"""Every source kind loads from data the tests make or an installed package ships; bad input
gives one line naming the file, or is skipped and counted with data.skip-bad."""

import shutil

import numpy as np
import pytest
from PIL import Image

from fedsynth.config import UserError, build_config
from fedsynth.data import DataError, load_dataset

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")


def _cfg(*overrides):
    return build_config(overrides=["data.image-size=32", *overrides])


def _png_folder(root, n_per_class=4, classes=("a", "b"), mode="L", size=(40, 30), bits=8):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            if bits == 16:
                arr = rng.integers(0, 65535, size[::-1], dtype=np.uint16)
                Image.fromarray(arr).save(root / c / f"{i}.png")
            else:
                shape = size[::-1] + ((3,) if mode == "RGB" else ())
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")
    return root


def test_folder_with_class_subfolders(tmp_path):
    root = _png_folder(tmp_path / "imgs")
    d = load_dataset(_cfg("data.source=folder", f'data.path="{root}"'))
    assert d.images.shape == (8, 1, 32, 32) and d.class_names == ("a", "b")
    assert d.class_counts() == [4, 4] and d.provenance["raw_sizes"] == {"30x40": 8}


def test_folder_16_bit_uses_quantile_rescale(tmp_path):
    root = tmp_path / "x16"
    root.mkdir()
    arr = np.linspace(1000, 60000, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(arr).save(root / "a.png")
    d = load_dataset(_cfg("data.source=folder", f'data.path="{root}"', "preprocess.resize=none"))
    # 2 % and 98 % quantiles map to 0 and 255: the darkest/brightest 2 % saturate
    assert d.images.min() == 0 and d.images.max() == 255 and abs(d.images.mean() - 127.5) < 3


def test_folder_rgb_and_labels_csv(tmp_path):
    root = tmp_path / "rgb"
    root.mkdir()
    for i in range(5):
        Image.fromarray(np.full((20, 20, 3), i * 40, np.uint8)).save(root / f"{i}.jpg")
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\n" + "".join(f"{i}.jpg,{'tumour' if i % 2 else 'normal'}\n" for i in range(5)))
    d = load_dataset(_cfg("data.source=folder", f'data.path="{root}"', f'data.labels-csv="{csv}"'))
    assert d.images.shape == (5, 3, 32, 32) and d.class_names == ("normal", "tumour")
    assert d.class_counts() == [3, 2]
    gray = load_dataset(_cfg("data.source=folder", f'data.path="{root}"', f'data.labels-csv="{csv}"',
                             "preprocess.channels=gray", "data.cache=false"))
    assert gray.channels == 1


def test_dicom_folder_rescale_and_window(tmp_path):
    from pydicom.data import get_testdata_file
    src = get_testdata_file("CT_small.dcm")
    for c in ("chest", "other"):
        (tmp_path / "dcm" / c).mkdir(parents=True)
        shutil.copy(src, tmp_path / "dcm" / c / "slice1.dcm")
    d = load_dataset(_cfg("data.source=dicom", f'data.path="{tmp_path / "dcm"}"'))
    assert d.images.shape == (2, 1, 32, 32) and d.class_names == ("chest", "other")
    w = load_dataset(_cfg("data.source=dicom", f'data.path="{tmp_path / "dcm"}"', "data.window=[40, 400]"))
    assert not np.array_equal(d.images, w.images)


def test_dicom_without_pixel_data_is_named(tmp_path):
    from pydicom.data import get_testdata_file
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    (tmp_path / "d").mkdir()
    ds.save_as(tmp_path / "d" / "nopix.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "d" / "ok.dcm")
    with pytest.raises(DataError, match=r"nopix\.dcm: DICOM file has no pixel data"):
        load_dataset(_cfg("data.source=dicom", f'data.path="{tmp_path / "d"}"'))
    d = load_dataset(_cfg("data.source=dicom", f'data.path="{tmp_path / "d"}"', "data.skip-bad=true"))
    assert len(d) == 1 and d.provenance["skipped"][0]["file"].endswith("nopix.dcm")


def test_nifti_slices_range_and_foreground(tmp_path):
    vol = np.zeros((24, 24, 10), np.float32)
    vol[4:20, 4:20, 2:8] = np.random.default_rng(0).uniform(100, 200, (16, 16, 6))
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    d = load_dataset(_cfg("data.source=nifti", f'data.path="{tmp_path / "v.nii.gz"}"'))
    assert len(d) == 6  # empty slices dropped by the foreground filter
    half = load_dataset(_cfg("data.source=nifti", f'data.path="{tmp_path / "v.nii.gz"}"', "data.slice-range=[0.0, 0.5]"))
    assert len(half) == 3


def test_nifti_from_nibabel_test_data():
    import nibabel.testing
    from pathlib import Path
    p = Path(nibabel.testing.__file__).parent.parent / "tests" / "data" / "anatomical.nii"
    if not p.is_file():
        pytest.skip("nibabel test data not installed")
    d = load_dataset(_cfg("data.source=nifti", f'data.path="{p}"', "data.cache=false"))
    assert len(d) > 5 and d.channels == 1


def _medmnist(root, flag="pneumoniamnist", size=64, n=12):
    rng = np.random.default_rng(0)
    np.savez(root / f"{flag}_{size}.npz", train_images=rng.integers(0, 255, (n, size, size), dtype=np.uint8),
             train_labels=rng.integers(0, 2, (n, 1)), val_images=np.zeros((2, size, size), np.uint8),
             val_labels=np.zeros((2, 1)))


def test_medmnist_npz_layout(tmp_path):
    _medmnist(tmp_path)
    d = load_dataset(_cfg("data.source=medmnist", f'data.path="{tmp_path}"'))
    assert d.images.shape == (12, 1, 32, 32) and d.num_classes == 2
    v = load_dataset(_cfg("data.source=medmnist", f'data.path="{tmp_path}"', "data.medmnist-split=val"))
    assert len(v) == 2


def test_medmnist_missing_file_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match=r"pneumoniamnist_64\.npz.*medmnist-download"):
        load_dataset(_cfg("data.source=medmnist", f'data.path="{tmp_path}"'))


@pytest.mark.parametrize("src,label,min_n", [("sample-retina", "retina-fundus", 300),
                                            ("sample-ihc", "ihc-colon (IHC, not H&E)", 60),
                                            ("sample-ct", "ct", 1)])
def test_package_samples_are_labelled_honestly(src, label, min_n):
    pytest.importorskip("skimage")
    d = load_dataset(_cfg(f"data.source={src}"))
    assert d.class_names == (label,) and len(d) >= min_n


# ------------------------------------------------------------------ bad input

def test_corrupt_and_truncated_images_are_named_or_skipped(tmp_path):
    root = _png_folder(tmp_path / "imgs")
    (root / "a" / "corrupt.png").write_bytes(b"not a png at all")
    good = (root / "b" / "0.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError) as e:
        load_dataset(_cfg("data.source=folder", f'data.path="{root}"'))
    assert "corrupt.png" in str(e.value) and "\n" not in str(e.value)
    d = load_dataset(_cfg("data.source=folder", f'data.path="{root}"', "data.skip-bad=true"))
    assert len(d) == 8 and {s["file"].rsplit("/", 1)[1] for s in d.provenance["skipped"]} == {"corrupt.png", "truncated.png"}


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no usable files"):
        load_dataset(_cfg("data.source=folder", f'data.path="{tmp_path / "empty"}"'))


def test_csv_naming_missing_files_and_missing_files_in_csv(tmp_path):
    root = tmp_path / "f"
    root.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / f"{i}.png")
    csv = tmp_path / "l.csv"
    csv.write_text("file,label\n0.png,x\n1.png,y\n9.png,y\n")
    with pytest.raises(DataError, match=r"does not exist: .*9\.png"):
        load_dataset(_cfg("data.source=folder", f'data.path="{root}"', f'data.labels-csv="{csv}"'))
    csv.write_text("file,label\n0.png,x\n1.png,y\n")
    with pytest.raises(DataError, match=r"2\.png: not listed"):
        load_dataset(_cfg("data.source=folder", f'data.path="{root}"', f'data.labels-csv="{csv}"'))
    d = load_dataset(_cfg("data.source=folder", f'data.path="{root}"', f'data.labels-csv="{csv}"', "data.skip-bad=true"))
    assert len(d) == 2 and len(d.provenance["skipped"]) == 1


def test_mixed_channels_are_named_unless_converted(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "a_gray.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "b_rgb.png")
    with pytest.raises(DataError, match=r"b_rgb\.png: has 3 channel\(s\) but .*a_gray\.png has 1"):
        load_dataset(_cfg("data.source=folder", f'data.path="{root}"'))
    assert load_dataset(_cfg("data.source=folder", f'data.path="{root}"', "preprocess.channels=rgb")).channels == 3


def test_non_square_with_resize_none_is_named(tmp_path):
    root = _png_folder(tmp_path / "ns", n_per_class=1, classes=("a",))
    with pytest.raises(DataError, match=r"0\.png: image is 40x30, not square"):
        load_dataset(_cfg("data.source=folder", f'data.path="{root}"', "preprocess.resize=none"))


def test_path_is_required_and_checked(tmp_path):
    with pytest.raises(UserError, match="data.path"):
        build_config(overrides=["data.source=folder"])
    with pytest.raises(DataError, match="not found"):
        load_dataset(_cfg("data.source=folder", f'data.path="{tmp_path / "nope"}"'))


# ------------------------------------------------------------------ cache

def test_prepared_data_is_cached_and_invalidated(tmp_path):
    from fedsynth.utils import cache_dir
    root = _png_folder(tmp_path / "imgs")
    cfg = _cfg("data.source=folder", f'data.path="{root}"')
    a = load_dataset(cfg)
    b = load_dataset(cfg)
    assert a.provenance["cache"] == "miss" and b.provenance["cache"] == "hit"
    assert np.array_equal(a.images, b.images) and a.class_names == b.class_names
    c = load_dataset(_cfg("data.source=folder", f'data.path="{root}"', "preprocess.gamma=2"))
    assert c.provenance["cache"] == "miss"          # a parameter changed
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(root / "a" / "new.png")
    assert load_dataset(cfg).provenance["cache"] == "miss"  # the file list changed
    assert not list((cache_dir() / "data").glob("*.tmp"))


def test_failed_load_leaves_nothing_in_the_cache(tmp_path):
    from fedsynth.utils import cache_dir
    root = _png_folder(tmp_path / "imgs")
    (root / "a" / "bad.png").write_bytes(b"xx")
    with pytest.raises(DataError):
        load_dataset(_cfg("data.source=folder", f'data.path="{root}"'))
    assert not (cache_dir() / "data").exists() or not any((cache_dir() / "data").iterdir())
