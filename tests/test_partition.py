import numpy as np
import pytest

from fedsynth.config import UserError
from fedsynth.data import make_phantom, partition


def _majority(part):
    c = part.class_counts()
    return max(c) / len(part)


def test_label_skew_09_over_six_clients():
    d = make_phantom("phantom-xray", 2000, 16, seed=0)
    parts = partition(d, "label-skew", 6, seed=0, majority=0.9)
    for k, p in enumerate(parts):
        assert abs(_majority(p) - 0.9) <= 0.02
        assert int(np.argmax(p.class_counts())) == k % 2


def test_label_skew_two_clients_095():
    d = make_phantom("phantom-histo", 400, 16, seed=0)
    a, b = partition(d, "label-skew", 2, seed=0, majority=0.95)
    assert abs(_majority(a) - 0.95) <= 0.02 and abs(_majority(b) - 0.95) <= 0.02


def test_by_label_gives_each_label_to_different_clients():
    d = make_phantom("phantom-ct", 300, 16, seed=0)
    parts = partition(d, "by-label", 3, seed=0)
    assert [set(np.unique(p.labels)) for p in parts] == [{0}, {1}, {2}]
    more = partition(d, "by-label", 5, seed=0)   # more clients than classes: classes shared
    assert sum(len(p) for p in more) == 300 and all(len(np.unique(p.labels)) == 1 for p in more)


@pytest.mark.parametrize("scheme", ["iid", "label-skew", "by-label", "dirichlet", "quantity-skew"])
def test_every_scheme_is_seeded_disjoint_and_nonempty(scheme):
    d = make_phantom("phantom-ct", 240, 16, seed=0)
    d.images[:, 0, 0, 0] = np.arange(240) % 256          # make images distinguishable
    d.images[:, 0, 0, 1] = np.arange(240) // 256
    a = partition(d, scheme, 4, seed=1)
    b = partition(d, scheme, 4, seed=1)
    assert all(np.array_equal(p.images, q.images) for p, q in zip(a, b))
    assert all(len(p) > 0 for p in a)
    keys = np.concatenate([p.images[:, 0, 0, 0].astype(int) + 256 * p.images[:, 0, 0, 1].astype(int) for p in a])
    assert len(keys) == len(np.unique(keys))


def test_dirichlet_small_alpha_is_more_skewed():
    d = make_phantom("phantom-ct", 900, 16, seed=0)
    skew = lambda a: np.mean([_majority(p) for p in partition(d, "dirichlet", 3, seed=0, alpha=a)])  # noqa: E731
    assert skew(0.05) > skew(100.0)


def test_dirichlet_min_size_draws_again_until_every_client_has_enough():
    d = make_phantom("phantom-histo", 600, 16, seed=0)
    one = partition(d, "dirichlet", 6, seed=0, alpha=0.1)
    assert min(len(p) for p in one) < 50                       # one draw: some site has a handful
    same = partition(d, "dirichlet", 6, seed=0, alpha=0.1, min_size=0)
    assert all(np.array_equal(p.images, q.images) for p, q in zip(one, same))  # 0: today's single draw
    parts = partition(d, "dirichlet", 6, seed=0, alpha=0.1, min_size=50)
    assert min(len(p) for p in parts) >= 50 and sum(len(p) for p in parts) == 600
    assert np.mean([_majority(p) for p in parts]) > 0.8         # still label-skewed
    again = partition(d, "dirichlet", 6, seed=0, alpha=0.1, min_size=50)
    assert all(np.array_equal(p.images, q.images) for p, q in zip(parts, again))


def test_dirichlet_min_size_that_cannot_be_met_is_a_clear_error(tmp_path):
    from typer.testing import CliRunner

    from fedsynth.cli import app
    d = make_phantom("phantom-histo", 60, 16, seed=0)
    with pytest.raises(UserError, match="'partition.min-size' = 20: 6 clients cannot each get 20 of 60"):
        partition(d, "dirichlet", 6, seed=0, alpha=0.1, min_size=20)
    res = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "r"), "--set", "partition.scheme=dirichlet",
                                   "--set", "partition.clients=3",  # two classes, each on one client
                                   "--set", "partition.alpha=0.001", "--set", "partition.min-size=21",
                                   "--set", "data.num-images=64", "--set", "data.image-size=16"])
    assert res.exit_code == 2 and "config key 'partition.min-size' = 21: no Dirichlet(alpha = 0.001)" in res.output
    assert "Traceback" not in res.output


def test_quantity_skew_varies_sizes_not_labels():
    d = make_phantom("phantom-xray", 1000, 16, seed=0)
    parts = partition(d, "quantity-skew", 5, seed=0, beta=0.5)
    sizes = [len(p) for p in parts]
    assert sum(sizes) == 1000 and max(sizes) > 2 * min(sizes)


def test_too_many_clients():
    d = make_phantom("phantom-xray", 5, 16, seed=0)
    with pytest.raises(UserError, match="partition.clients"):
        partition(d, "iid", 6, seed=0)
