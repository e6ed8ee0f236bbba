"""Federated 2.5-D distances of volumes: slices along the three axes through a 2-D feature
network; each plane's statistics merge over sites exactly (merged == pooled), a plane's block is
that plane's own statistics, and every record names its plane and network."""

import numpy as np
import pytest
import torch

from fedsynth.config import build_config
from fedsynth.data import make_volume_phantom
from fedsynth.fed.evaluation import Evaluator, real_statistics
from fedsynth.metrics import RandomConvFeatures, build_extractor
from fedsynth.metrics.features import PlaneFeatures
from fedsynth.metrics.planes import plane_blocks, planes_of, slice_indices
from fedsynth.metrics.stats import frechet_distance
from fedsynth.models import build_model
from fedsynth.registry import is_fd_metric, is_kid_metric

VOL = ["data.dims=3", "data.source=phantom-ct", "data.image-size=16", "model.nz=8", "model.ngf=4",
       "model.ndf=4", "eval.num-samples=6", "eval.kid-subsets=3", "eval.kid-subset-size=20"]


def _ext(slices=0):
    return PlaneFeatures(RandomConvFeatures(seed=0, input_size=16), slices)


def test_planes_are_the_three_orthogonal_slices():
    x = torch.randn(2, 1, 6, 6, 6)
    idx = slice_indices(6, 3)
    assert idx.tolist() == [1, 3, 5]
    xy, yz, zx = planes_of(x, idx)
    for b in range(2):
        for j, i in enumerate(idx.tolist()):
            assert torch.equal(xy[b * 3 + j], x[b, :, i])             # axial: fixed D
            assert torch.equal(yz[b * 3 + j], x[b, :, :, :, i])       # sagittal: fixed W
            assert torch.equal(zx[b * 3 + j], x[b, :, :, i, :])       # coronal: fixed H


def test_plane_statistics_merged_over_sites_equal_the_pooled_ones():
    vols = make_volume_phantom("phantom-ct", 10, 16, seed=0)
    ext = _ext()
    sites = [real_statistics(vols.subset(np.arange(0, 4)), ext, use_cache=False),
             real_statistics(vols.subset(np.arange(4, 10)), ext, use_cache=False)]
    pooled = real_statistics(vols, ext, use_cache=False).stats
    merged = sites[0].stats.merge(sites[1].stats)
    assert merged.n == pooled.n == 10 * 16                      # one row per volume and slice index
    blocks = plane_blocks(ext)
    assert [p for p, _ in blocks] == ["xy", "yz", "zx"]
    slices = planes_of(vols.batch(), torch.arange(16))
    for (plane, cols), sl in zip(blocks, slices):
        np.testing.assert_allclose(merged.mean[cols], pooled.mean[cols], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(merged.cov[cols, cols], pooled.cov[cols, cols], rtol=1e-9, atol=1e-12)
        # the block is the plane's own statistics: the 2-D network on that plane's slices
        f = ext.inner(sl).double().numpy()
        np.testing.assert_allclose(pooled.mean[cols], f.mean(axis=0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(pooled.cov[cols, cols], np.cov(f, rowvar=False), rtol=1e-4, atol=1e-7)


def test_records_per_plane_and_their_mean_name_plane_and_network():
    cfg = build_config(overrides=VOL)
    vols = make_volume_phantom("phantom-ct", 8, 16, seed=1)
    ext = build_extractor("random", dims=3, slices=4)
    assert isinstance(ext, PlaneFeatures) and "random-conv" in ext.name and "slices=4" in ext.name
    real = {"0": real_statistics(vols.subset(np.arange(4)), ext, use_cache=False),
            "1": real_statistics(vols.subset(np.arange(4, 8)), ext, use_cache=False)}
    model = build_model(cfg, 16, 1, 2)
    counts = {cid: np.array([2, 2]) for cid in real}
    ev = Evaluator(cfg.eval, ext, real, counts, model, seed=0)
    recs = ev.evaluate(None, 0, "global", None)
    fd = {r["plane"]: r for r in recs if r["metric"].startswith("fd-random")}
    kid = {r["plane"]: r for r in recs if r["metric"].startswith("kid-random")}
    assert set(fd) == set(kid) == {"xy", "yz", "zx", "mean"}
    assert all(r["extractor"] == ext.name for r in recs)
    assert fd["mean"]["metric"] == "fd-random" and fd["xy"]["metric"] == "fd-random-plane-xy"
    assert fd["mean"]["value"] == np.mean([fd[p]["value"] for p in ("xy", "yz", "zx")])
    assert kid["mean"]["value"] == np.mean([kid[p]["value"] for p in ("xy", "yz", "zx")])
    # each plane's distance, recomputed from the generated rows and the pooled real rows
    fake = ev.fake_features(None, None)
    assert fake.shape == (6 * 4, 3 * 480)                        # 6 volumes x 4 slices per axis
    pooled = np.concatenate([r.kid_features for r in real.values()])
    for plane, cols in plane_blocks(ext):
        a, b = fake[:, cols], pooled[:, cols]
        want = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
        assert abs(fd[plane]["value"] - want) < 1e-6 * max(1.0, want)
    # the headline machinery (plots, tables, terminal) sees only the mean
    assert is_fd_metric("fd-random") and not is_fd_metric("fd-random-plane-xy")
    assert not is_kid_metric("kid-random-plane-zx")


def test_the_trained_effnet_scores_volumes_per_plane():
    """The offline EfficientNet-Lite0 under the same 2.5-D wrapper: 1,280 features per plane."""
    from fedsynth.metrics.features import effnet_unavailable
    if effnet_unavailable():
        import pytest
        pytest.skip(effnet_unavailable())
    ext = build_extractor("effnet-lite0", dims=3, slices=2, effnet_input=64)
    vols = make_volume_phantom("phantom-mr", 2, 16, seed=0).batch()
    rows = ext.extract(vols)
    assert rows.shape == (2 * 2, 3 * 1280) and ext.metric == "fd-effnet" and "effnet-lite0" in ext.name
    xy = planes_of(vols, slice_indices(16, 2))[0]
    assert torch.allclose(rows[:, :1280], ext.inner.extract(xy), atol=1e-5)


def test_evaluate_scores_each_plane_as_its_own_slices_scored_in_2d():
    """``fedsynth evaluate`` on volumes (compare_volumes): a plane's distance is the 2-D
    comparison of that plane's slices through the same network, the headline their mean."""
    from fedsynth.metrics.compare import compare_images, compare_volumes
    real = make_volume_phantom("phantom-ct", 6, 16, seed=0).batch()
    fake = make_volume_phantom("phantom-mr", 6, 16, seed=1).batch()
    ext = _ext()
    got = compare_volumes(real, fake, ext, seed=3)
    idx = slice_indices(16, 0)
    for plane, r, f in zip(("xy", "yz", "zx"), planes_of(real, idx), planes_of(fake, idx)):
        flat = compare_images(r.contiguous(), f.contiguous(), ext.inner, seed=3)
        assert got[f"fd-random-plane-{plane}"] == pytest.approx(flat["fd-random"], rel=1e-6)
        assert got[f"kid-random-plane-{plane}"] == pytest.approx(flat["kid-random"], rel=1e-6)
    assert got["fd-random"] == pytest.approx(np.mean([got[f"fd-random-plane-{p}"] for p in ("xy", "yz", "zx")]))
    same = compare_volumes(real, real, ext)
    assert same["fd-random"] < 1e-6 * got["fd-random"] and got["num_real"] == 6 and got["slices_real"] == 6 * 16
