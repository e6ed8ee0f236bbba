import numpy as np
import pytest
import scipy.linalg
import torch

from fedsynth.metrics import (FeatureStats, RandomConvFeatures, build_extractor, fd_from_stats,
                              frechet_distance, kernel_inception_distance)
from fedsynth.config import UserError


def _scipy_fd(x, y):
    """Independent reference: the classic sqrtm formula (pytorch-fid's)."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fd_matches_scipy_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16))
    y = rng.normal(0.3, 1.5, size=(400, 16)) @ rng.normal(size=(16, 16)) * 0.3
    ours = fd_from_stats(FeatureStats.of(x), FeatureStats.of(y))
    assert ours == pytest.approx(_scipy_fd(x, y), rel=1e-6)


def test_the_statistics_linear_algebra_runs_numpy_blas_on_one_thread(monkeypatch):
    """The eigendecompositions and outer products run on one BLAS thread (torch's spinning
    threads and OpenBLAS's would wait on each other), and the caller's setting is back after."""
    from threadpoolctl import threadpool_info
    blas = lambda: [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]  # noqa: E731
    seen = []
    for name in ("eigvalsh", "eigh"):
        real = getattr(np.linalg, name)
        monkeypatch.setattr(np.linalg, name, lambda a, _real=real: seen.append(blas()) or _real(a))
    before = blas()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 24)), rng.normal(size=(200, 24))
    fd = fd_from_stats(FeatureStats.of(x), FeatureStats.of(y))
    assert seen and all(all(n == 1 for n in threads) for threads in seen), seen
    assert blas() == before and fd == pytest.approx(_scipy_fd(x, y), rel=1e-6)


def test_fd_matches_torchmetrics_with_the_same_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Ident(torch.nn.Module):  # torchmetrics computes statistics of whatever this returns
        num_features = 12
        def forward(self, x):
            return x.reshape(len(x), -1)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 12, generator=g, dtype=torch.float64)
    y = torch.randn(300, 12, generator=g, dtype=torch.float64) * 1.3 + 0.2
    tm = FrechetInceptionDistance(feature=Ident(), reset_real_features=False)
    tm.set_dtype(torch.float64)
    tm.update(x.view(300, 1, 3, 4), real=True)
    tm.update(y.view(300, 1, 3, 4), real=False)
    ours = fd_from_stats(FeatureStats.of(x), FeatureStats.of(y))
    assert ours == pytest.approx(float(tm.compute()), rel=1e-6)


def test_fd_identical_is_zero_and_shift_is_squared_norm():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8))
    s = FeatureStats.of(x)
    assert fd_from_stats(s, s) == pytest.approx(0, abs=1e-8)
    shifted = FeatureStats.of(x + 2.0)  # same covariance, mean moved by 2 in each of 8 dims
    assert fd_from_stats(s, shifted) == pytest.approx(8 * 4.0, rel=1e-9)
    assert frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), 4 * np.eye(2)) == pytest.approx(2.0)


def test_merged_statistics_equal_pooled():
    rng = np.random.default_rng(2)
    parts = [rng.normal(k, 1 + k, size=(50 + 30 * k, 10)) for k in range(3)]
    merged = FeatureStats.of(parts[0]).merge(FeatureStats.of(parts[1])).merge(FeatureStats.of(parts[2]))
    pooled = FeatureStats.of(np.concatenate(parts))
    assert merged.n == pooled.n
    np.testing.assert_allclose(merged.mean, pooled.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(merged.cov, pooled.cov, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pooled.cov, np.cov(np.concatenate(parts), rowvar=False), rtol=1e-9)


def test_extractor_output_does_not_depend_on_batch_size():
    ext = RandomConvFeatures()
    x = torch.rand(37, 1, 32, 32) * 2 - 1
    a = ext.extract(x, batch_size=37)
    b = ext.extract(x, batch_size=5)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    s1, s2 = FeatureStats.of(a.double()), FeatureStats.of(b.double())
    ref = FeatureStats.of(torch.rand(40, ext.dims).double())
    assert fd_from_stats(s1, ref) == pytest.approx(fd_from_stats(s2, ref), rel=1e-6)


def test_random_extractor_is_frozen_and_seeded():
    a, b = RandomConvFeatures(seed=0), RandomConvFeatures(seed=0)
    x = torch.rand(4, 3, 64, 64)
    assert torch.equal(a.extract(x), b.extract(x))
    assert a.metric == "fd-random" and "random" in a.name
    assert not any(p.requires_grad for p in a.parameters())


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_matches_torchmetrics_with_one_full_subset():
    from torchmetrics.image.kid import KernelInceptionDistance

    class Ident(torch.nn.Module):
        def forward(self, x):
            return x.reshape(len(x), -1)

    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    y = torch.randn(50, 6, generator=g, dtype=torch.float64) + 0.5
    tm = KernelInceptionDistance(feature=Ident(), subsets=1, subset_size=50)
    tm.update(x.view(50, 1, 2, 3), real=True)
    tm.update(y.view(50, 1, 2, 3), real=False)
    ours, _ = kernel_inception_distance(x.numpy(), y.numpy(), subsets=1, subset_size=50)
    assert ours == pytest.approx(float(tm.compute()[0]), rel=1e-6)


def _kid_float64_loop(real, fake, subsets, m, seed):
    """The all-float64 loop the batched KID replaced: the same subsets, subset by subset."""
    rng, d, out = np.random.default_rng(seed), real.shape[1], []
    for _ in range(subsets):
        x, y = real[rng.choice(len(real), m, replace=False)], fake[rng.choice(len(fake), m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        out.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                   - 2 * kxy.mean())
    return np.array(out)


@pytest.mark.parametrize("n, d, m, subsets", [(400, 480, 100, 20),    # the default shape: one batch
                                              (1300, 3, 1200, 13)])   # large subsets: in two chunks
def test_kid_float32_gram_agrees_with_float64(n, d, m, subsets):
    """The batched float32 Gram matrices move KID by far less than its spread over subsets."""
    g = np.random.default_rng(4)
    real = np.abs(g.normal(size=(n, d))) * 2
    fake = np.abs(g.normal(size=(n - 100, d))) * 2.1
    ours, std = kernel_inception_distance(real, fake, subsets=subsets, subset_size=m, seed=7)
    ref = _kid_float64_loop(real, fake, subsets, m, 7)
    assert ours == pytest.approx(ref.mean(), rel=1e-4)
    assert abs(ours - ref.mean()) < 1e-3 * ref.std() and std == pytest.approx(ref.std(), rel=1e-3)


def test_inception_is_never_downloaded(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert build_extractor("auto").metric in ("fd-effnet", "fd-random")  # no Inception weights: not FID
    with pytest.raises(UserError, match="eval.inception-weights"):
        build_extractor("inception")
    with pytest.raises(UserError, match="not found"):
        build_extractor("auto", inception_weights=str(tmp_path / "missing.pth"))
