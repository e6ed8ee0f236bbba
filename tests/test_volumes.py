"""Volumes in (data.dims = 3): 3-D phantoms, NIfTI volumes and DICOM series resampled to a cube,
partitions and caching, and one-line errors for bad volumes."""

import shutil

import numpy as np
import pytest

from fedsynth.config import UserError, build_config
from fedsynth.data import PHANTOMS3D, DataError, load_dataset, make_volume_phantom, partition_for

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")


def _cfg(*overrides):
    return build_config(overrides=["data.dims=3", "data.image-size=16", *overrides])


@pytest.mark.parametrize("name", list(PHANTOMS3D))
def test_phantom_volumes_shape_classes_and_seeding(name):
    a = make_volume_phantom(name, 6, 16, seed=2)
    assert a.images.shape == (6, 1, 16, 16, 16) and a.images.dtype == np.uint8 and a.dims == 3
    assert a.class_names == PHANTOMS3D[name] and a.images.std() > 10
    b = make_volume_phantom(name, 9, 16, seed=2)
    c = make_volume_phantom(name, 6, 16, seed=3)
    assert np.array_equal(a.images, b.images[:6]) and np.array_equal(a.labels, b.labels[:6])
    assert not np.array_equal(a.images, c.images)


def test_chest_ct_phantom_has_its_anatomy():
    """Mid axial slice at 32 voxels: air outside, dark lungs left and right of the midline, a
    bright spine behind them (posterior = larger H)."""
    v = make_volume_phantom("phantom-ct", 4, 32, seed=0).images[:, 0].astype(float)
    ax = v[:, 16]                                     # (N, H, W) mid axial slices
    assert ax[:, 1, 1].max() < 10                     # air in the corner
    lung_r = ax[:, 12:18, 6:12].min(axis=(1, 2))      # within each lung field
    lung_l = ax[:, 12:18, 20:26].min(axis=(1, 2))
    spine = ax[:, 22, 15:17].mean(axis=1)
    muscle = ax[:, 15, 15:17].mean(axis=1)            # mediastinum between the lungs
    assert (lung_r < 60).all() and (lung_l < 60).all()
    assert (spine > muscle + 25).all() and (muscle > lung_r + 60).all()


def test_head_mr_sequences_swap_csf_contrast():
    d = make_volume_phantom("phantom-mr", 12, 32, seed=0)
    v = d.images[:, 0, 14, 12:18].astype(float)       # mid axial rows through the lateral ventricles
    vents = v[:, :, [14, 17]].mean(axis=(1, 2))
    white = v[:, :, [10, 11, 20, 21]].mean(axis=(1, 2))
    t1, t2 = (vents - white)[d.labels == 0], (vents - white)[d.labels == 1]
    assert len(t1) and len(t2) and (t1 < -10).all() and (t2 > 10).all()  # CSF dark in T1, bright in T2


def test_phantom_run_data_and_partitions():
    cfg = _cfg("data.source=phantom-ct", "data.num-images=10", "partition.clients=2")
    data = load_dataset(cfg)
    parts = partition_for(cfg, data)
    assert data.images.shape == (10, 1, 16, 16, 16)
    assert sum(len(p) for p in parts) == 10 and all(p.images.ndim == 5 for p in parts)
    assert data.batch(np.array([0, 1])).shape == (2, 1, 16, 16, 16)


# ------------------------------------------------------------------ NIfTI


def _nifti(path, shape=(20, 24, 10), zooms=(1.0, 1.0, 2.4), seed=0):
    rng = np.random.default_rng(seed)
    vol = rng.normal(100, 20, shape).astype(np.float32)
    vol[4:8, 4:8, 2:4] = 600                          # a bright block near the left, posterior, inferior corner
    nib.save(nib.Nifti1Image(vol, np.diag([*zooms, 1.0])), path)
    return vol


def test_nifti_volume_resampled_to_a_cube_with_its_spacing(tmp_path):
    (tmp_path / "v" / "a").mkdir(parents=True)
    (tmp_path / "v" / "b").mkdir()
    _nifti(tmp_path / "v" / "a" / "one.nii.gz")
    _nifti(tmp_path / "v" / "b" / "two.nii", seed=1)
    d = load_dataset(_cfg("data.source=nifti", f'data.path="{tmp_path / "v"}"'))
    assert d.images.shape == (2, 1, 16, 16, 16) and d.class_names == ("a", "b")
    v = d.images[0, 0]
    # field of view 20 x 24 x 24 mm (x, y, z): the longest side (24 mm) fills the cube, x is padded
    assert v[:, :, 0].max() == 0 and v[:, :, -1].max() == 0 and v[:, 0, :].max() > 0
    # the block sits at low x, y, z indices of an identity (RAS+) affine: towards the patient's
    # left, posterior and inferior, so at high W, H and D in the radiological axes
    hot = np.argwhere(v == v.max()).mean(axis=0)
    assert hot[0] > 8 and hot[1] > 8 and hot[2] > 8


def test_nifti_cache_hit_and_preprocessing_recorded(tmp_path):
    _nifti(tmp_path / "one.nii.gz")
    cfg = _cfg("data.source=nifti", f'data.path="{tmp_path / "one.nii.gz"}"')
    a = load_dataset(cfg)
    b = load_dataset(cfg)
    assert a.provenance["cache"] == "miss" and b.provenance["cache"] == "hit"
    assert np.array_equal(a.images, b.images)
    c = load_dataset(_cfg("data.source=nifti", f'data.path="{tmp_path / "one.nii.gz"}"', "preprocess.gamma=2.0"))
    assert c.provenance["cache"] == "miss" and c.images.mean() < a.images.mean()


def test_a_2d_nifti_in_a_3d_run_is_named(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((20, 20, 1), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    _nifti(tmp_path / "ok.nii.gz")
    with pytest.raises(DataError, match=r"flat\.nii\.gz: is a 2-D image .* data\.dims = 3 needs volumes"):
        load_dataset(_cfg("data.source=nifti", f'data.path="{tmp_path}"'))
    d = load_dataset(_cfg("data.source=nifti", f'data.path="{tmp_path}"', "data.skip-bad=true"))
    assert len(d) == 1 and d.provenance["skipped"][0]["file"].endswith("flat.nii.gz")


# ------------------------------------------------------------------ DICOM series


def _series(folder, positions, uid="1.2.3.4", rows_value=None):
    """A series of slices of pydicom's CT test file at the given positions along z (mm)."""
    from pydicom.data import get_testdata_file
    folder.mkdir(parents=True, exist_ok=True)
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for k, z in enumerate(positions):
        ds = src.copy()
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = f"{uid}.{k + 1}"
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, float(z)]
        ds.PixelSpacing = [0.66, 0.66]
        ds.save_as(folder / f"s{k:03d}.dcm")
    return folder


def test_dicom_series_one_volume_per_series_ordered_by_position(tmp_path):
    root = tmp_path / "dcm"
    _series(root / "chest" / "p1", [5.0 * k for k in (3, 0, 2, 1, 4, 5)])      # files out of order
    _series(root / "chest" / "p2", [2.5 * k for k in range(8)], uid="1.2.3.5")
    d = load_dataset(_cfg("data.source=dicom", f'data.path="{root}"', "data.window=[40, 400]"))
    assert d.images.shape == (2, 1, 16, 16, 16) and d.class_names == ("chest",)
    # every axial slice of the first series is the same picture: ordering by position kept them whole
    assert d.provenance["files"] == 2


def test_dicom_series_missing_slice_and_uneven_spacing_are_named(tmp_path):
    _series(tmp_path / "gap", [0.0, 2.0, 4.0, 8.0, 10.0])
    with pytest.raises(DataError, match=r"missing slice\(s\) between s002\.dcm and s003\.dcm"):
        load_dataset(_cfg("data.source=dicom", f'data.path="{tmp_path / "gap"}"'))
    _series(tmp_path / "uneven", [0.0, 2.0, 4.0, 7.0, 9.0])
    with pytest.raises(DataError, match=r"inconsistent slice spacing between s002\.dcm and s003\.dcm"):
        load_dataset(_cfg("data.source=dicom", f'data.path="{tmp_path / "uneven"}"'))


def test_single_dicom_slice_in_a_3d_run_is_named(tmp_path):
    from pydicom.data import get_testdata_file
    (tmp_path / "one").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "one" / "x.dcm")
    with pytest.raises(DataError, match=r"single 2-D slice, but data\.dims = 3 needs a series"):
        load_dataset(_cfg("data.source=dicom", f'data.path="{tmp_path / "one"}"'))


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("overrides,match", [
    (["data.source=phantom-xray"], r"data\.dims' = 3 needs volumes"),
    (["data.source=phantom-ct", "train.diffaugment=translation"], r"train\.diffaugment"),
    (["data.source=phantom-ct", "model.d-arch=resnet18"], r"volumetric DCGAN"),
    (["data.source=phantom-ct", "preprocess.channels=rgb"], r"volumes are gray"),
])
def test_config_refuses_what_volumes_cannot_do(overrides, match):
    with pytest.raises(UserError, match=match):
        _cfg(*overrides)


def test_phantom_mr_needs_dims_3():
    with pytest.raises(UserError, match=r"phantom-mr.*data\.dims = 3"):
        build_config(overrides=["data.source=phantom-mr"])
