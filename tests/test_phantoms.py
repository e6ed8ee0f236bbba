import numpy as np
import pytest

from fedsynth.data import PHANTOMS, make_phantom, partition


@pytest.mark.parametrize("name,channels,classes", [
    ("phantom-xray", 1, 2), ("phantom-ct", 1, 3), ("phantom-histo", 3, 2)])
@pytest.mark.parametrize("size", [16, 32, 64])
def test_shapes_dtypes_and_classes(name, channels, classes, size):
    d = make_phantom(name, 40, size, seed=1)
    assert d.images.shape == (40, channels, size, size) and d.images.dtype == np.uint8
    assert d.num_classes == classes == len(PHANTOMS[name])
    assert set(d.labels.tolist()) == set(range(classes))
    assert d.images.std() > 10  # not blank


@pytest.mark.parametrize("name", list(PHANTOMS))
def test_seeded_and_stable_under_count(name):
    a = make_phantom(name, 12, 32, seed=3)
    b = make_phantom(name, 200, 32, seed=3)
    c = make_phantom(name, 12, 32, seed=4)
    assert np.array_equal(a.images, b.images[:12]) and np.array_equal(a.labels, b.labels[:12])
    assert not np.array_equal(a.images, c.images)


def test_histology_classes_have_their_structure():
    """Tumour tiles: more, larger nuclei -> more haematoxylin (dark blue-purple) pixels."""
    d = make_phantom("phantom-histo", 200, 64, seed=0)
    rgb = d.images.astype(float)
    nuclear = ((rgb[:, 0] < 140) & (rgb[:, 2] > rgb[:, 1] + 20)).mean(axis=(1, 2))
    normal, tumour = nuclear[d.labels == 0].mean(), nuclear[d.labels == 1].mean()
    assert tumour > 2 * normal


def test_homogeneity_order_xray_lt_ct_lt_histo():
    """Mean per-pixel std across images (at the same scale): x-ray < CT < histology."""
    def spread(name):
        d = make_phantom(name, 200, 32, seed=0).images.astype(float) / 255
        return d.std(axis=0).mean()
    assert spread("phantom-xray") < spread("phantom-ct") < spread("phantom-histo")


def test_iid_partition_is_disjoint_equal_and_seeded():
    d = make_phantom("phantom-xray", 101, 16, seed=0)
    parts = partition(d, "iid", 3, seed=5)
    assert [len(p) for p in parts] == [34, 34, 33]
    flat = np.concatenate([p.images.reshape(len(p), -1) for p in parts])
    assert len(np.unique(flat, axis=0)) == 101
    again = partition(d, "iid", 3, seed=5)
    assert all(np.array_equal(p.images, q.images) for p, q in zip(parts, again))
