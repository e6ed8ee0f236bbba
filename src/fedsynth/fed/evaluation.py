"""Evaluation hooks of a federated run: the study's protocol.

Every evaluated round:

(a) each sampled client's *local* model (right after its local training) against that client's
    own data, and
(b) the *global* model against the union of all clients' data.

Real-data statistics are computed once per run per client (and cached on disk by data
fingerprint + extractor); the union's statistics are the exact merge of the clients'
(:meth:`FeatureStats.merge`), as a real federation would compute them. Generated images come
from fixed latent seeds, so curves move only because the model does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import EvalConfig, UserError
from ..data import ImageSet
from ..metrics import FeatureExtractor, FeatureStats, kernel_inception_distance
from ..metrics.planes import block_distances, plane_blocks
from ..metrics.realism import RealismReference, realism_summary
from ..metrics.stats import few_real_note, sqrtm_psd
from ..updates import State
from ..utils import atomic_write_bytes, cache_dir, derive_seed, numpy_rng, torch_generator

KID_MAX_REAL = 2000  # real features kept per client for KID
MIN_REAL_PER_SITE = 2  # a Frechet distance needs the real features' covariance: at least 2 images
REALISM_K = 3  # the realism score's neighbourhood size (Kynkaanniemi et al. 2019's default)


def _too_few(sizes: dict[str, int]) -> str | None:
    """The one-line complaint if a site has fewer real images than evaluation needs, else None."""
    small = [(cid, n) for cid, n in sizes.items() if n < MIN_REAL_PER_SITE]
    if not small:
        return None
    k, total = len(sizes), sum(sizes.values())
    where = ", ".join(f"site {cid} has {n}" for cid, n in small[:3]) + (", ..." if len(small) > 3 else "")
    fewer = "" if k == 1 else " (or fewer sites: partition.clients)"
    return (f"too few images to evaluate: {where} of {total} image(s) over {k} site(s); evaluation scores every "
            f"site against its own real images and a Fréchet distance needs at least {MIN_REAL_PER_SITE} of "
            f"them per site, so at least {MIN_REAL_PER_SITE * k} images here{fewer}; "
            f"or set eval.enabled = false to train without evaluation")


def check_enough_images(cfg, parts: list[ImageSet]) -> None:
    """Refuse, before a run writes anything, data that evaluation cannot score: every site
    (the pooled one for ``centralized``) needs ``MIN_REAL_PER_SITE`` real images. Splitting
    needs one image per site (:func:`fedsynth.data.partition` says so itself)."""
    if not cfg.eval.enabled:
        return
    if cfg.fed.strategy == "centralized":
        sizes = {"pooled": sum(len(p) for p in parts)}
    else:
        sizes = {str(k): len(p) for k, p in enumerate(parts)}
    msg = _too_few(sizes)
    if msg:
        raise UserError(msg)




HOLDOUT_MIN = 10  # held-out images a site needs for held-out evaluation (half select the best round, half report)
HOLDOUT_SPLITS = ("select", "test", "matched")  # matched: training images, as many as the test half


def split_holdout(data: ImageSet, share: float, seed: int, site: str) -> tuple[ImageSet, ImageSet, ImageSet]:
    """``(train, select, test)``: a seeded ``share`` of a site's images kept out of training,
    halved into the images that select the best round and the images the run reports on. The
    draw depends only on the run seed, the site and its images, so a node splits exactly as the
    in-process engine does."""
    n = len(data)
    k = int(round(share * n))
    perm = numpy_rng(seed, "holdout", site).permutation(n)
    held, train = perm[:k], np.sort(perm[k:])
    return (data.subset(train, data.name), data.subset(np.sort(held[: k // 2]), f"{data.name}-select"),
            data.subset(np.sort(held[k // 2:]), f"{data.name}-test"))


def holdout_check(share: float, sizes: dict[str, int]) -> str | None:
    """None when every site can keep ``share`` of its images out of training (at least
    ``HOLDOUT_MIN``), else the notice that held-out evaluation is off. A share that leaves a site
    without a training image is an error."""
    if share <= 0:
        return None
    for cid, n in sizes.items():
        if n - int(round(share * n)) < 1:
            raise UserError(f"config key 'eval.holdout' = {share} leaves site {cid} ({n} image{'s' if n != 1 else ''}) "
                            f"without a training image; lower it, or set eval.holdout = 0 to evaluate against the "
                            f"training images")
    small = [(cid, n) for cid, n in sizes.items() if int(round(share * n)) < HOLDOUT_MIN]
    if small:
        cid, n = small[0]
        return (f"held-out evaluation off: site {cid} has {n} image{'s' if n != 1 else ''}, so eval.holdout = {share} "
                f"would keep {int(round(share * n))} out of training (at least {HOLDOUT_MIN} needed); distances are "
                f"measured against the training images, no best round is selected")
    return ""


def holdout_statistics(train: ImageSet, select: ImageSet, test: ImageSet, extractor: FeatureExtractor,
                       cfg: EvalConfig, seed: int) -> dict[str, RealStats]:
    """A site's held-out statistics, computed where its images are: the selection half, the
    test half, and as many of its training images as the test half (``matched``: the same
    sample size, so the train-vs-held-out gap is not a sample-size effect)."""
    return {"select": real_statistics(select, extractor, cfg.max_real, seed),
            "test": real_statistics(test, extractor, cfg.max_real, seed),
            "matched": real_statistics(train, extractor, len(test), seed)}


def holdout_for(cfg, parts: list[ImageSet]) -> tuple[list[ImageSet], dict[str, tuple[ImageSet, ImageSet]] | None, str]:
    """The sites' training images, their held-out ``(select, test)`` images by site id (None when
    held-out evaluation is off) and the notice to show when it was turned off for small sites."""
    if not cfg.eval.enabled or cfg.eval.holdout <= 0:
        return parts, None, ""
    notice = holdout_check(cfg.eval.holdout, {str(k): len(p) for k, p in enumerate(parts)})
    if notice:
        return parts, None, notice
    train, held = [], {}
    for k, p in enumerate(parts):
        t, sel, test = split_holdout(p, cfg.eval.holdout, cfg.run.seed, str(k))
        train.append(t)
        held[str(k)] = (sel, test)
    return train, held, ""


@dataclass
class RealStats:
    stats: FeatureStats
    kid_features: np.ndarray | None  # (<= KID_MAX_REAL, D); None where only moments travelled


def real_statistics(data: ImageSet, extractor: FeatureExtractor, max_real: int = 0,
                    seed: int = 0, use_cache: bool = True) -> RealStats:
    """Feature statistics of a client's real images (cached by the data's fingerprint, the
    extractor's name and the kernels it runs: its device and memory format, which change the
    features' last bits)."""
    from .assembly import memory_format
    kernels = f"{extractor.device}|{memory_format(extractor)}"
    key = hashlib.blake2b(f"{data.fingerprint()}|{extractor.name}|{max_real}|{seed}|{kernels}".encode(),
                          digest_size=16).hexdigest()
    path = cache_dir() / "stats" / f"{key}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path) as z:
                return RealStats(FeatureStats.from_npz_dict(z), z["kid_features"])
        except Exception:  # a damaged cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    n = len(data)
    idx = np.arange(n)
    if max_real and n > max_real:
        idx = np.sort(numpy_rng(seed, "max-real", data.name).choice(n, max_real, replace=False))
    stats = FeatureStats.empty(extractor.dims)
    feats = []
    for i in range(0, len(idx), 250):
        f = extractor.extract(data.batch(idx[i:i + 250])).double()
        stats.update(f)
        feats.append(f.numpy())
    allf = np.concatenate(feats)
    if len(allf) > KID_MAX_REAL:
        allf = allf[np.sort(numpy_rng(seed, "kid-real", data.name).choice(len(allf), KID_MAX_REAL, replace=False))]
    out = RealStats(stats, allf)
    if use_cache:
        import io
        buf = io.BytesIO()
        np.savez(buf, kid_features=allf, **stats.to_npz_dict())
        atomic_write_bytes(path, buf.getvalue())
    return out


def site_statistics(clients: dict[str, ImageSet], extractor: FeatureExtractor, cfg: EvalConfig, seed: int,
                    num_classes: int) -> tuple[dict[str, RealStats], dict[str, np.ndarray]]:
    """Each site's real-image statistics and class counts, computed where its data is."""
    real = {cid: real_statistics(d, extractor, cfg.max_real, seed) for cid, d in clients.items()}
    return real, class_counts(clients, num_classes)


def class_counts(clients: dict[str, ImageSet], num_classes: int) -> dict[str, np.ndarray]:
    """Each site's images per class, ``num_classes`` long (what a Flower node reports)."""
    return {cid: np.bincount(d.labels, minlength=num_classes) for cid, d in clients.items()}


class Evaluator:
    """Frechet distance and KID of a model's samples against the sites' real statistics.

    The evaluator never sees an image: each site's statistics (and class counts) were computed
    where its data lives (:func:`site_statistics`); the union's are their exact merge. Without
    ``kid_features`` no KID is scored against that target (KID needs real features, which do
    not leave a site). Samples come from ``model`` (a :class:`fedsynth.models.GenerativeModel`)
    from fixed latents, so curves move only because the weights do.
    """

    def __init__(self, cfg: EvalConfig, extractor: FeatureExtractor, real: dict[str, RealStats],
                 class_counts: dict[str, np.ndarray], model: Any, seed: int,
                 holdout: dict[str, dict[str, RealStats]] | None = None):
        self.cfg, self.extractor, self.seed, self.model = cfg, extractor, seed, model
        self._last: tuple[np.ndarray, Any] | None = None  # the last generated features' moments
        self.conditional = model.conditional
        msg = _too_few({cid: r.stats.n for cid, r in real.items()})
        if msg:  # callers that did not check first (a sweep, a Flower server) still get a clear error
            raise UserError(msg)
        self.real = real
        merged = None
        for r in self.real.values():
            merged = r.stats if merged is None else merged.merge(r.stats)
        kid = [r.kid_features for r in self.real.values()]
        self.union = RealStats(merged, None if any(f is None for f in kid) else np.concatenate(kid))
        # held-out images: per split ("select", "test", "matched") the exact merge of the sites' moments
        self.holdout: dict[str, FeatureStats] | None = None
        if holdout:
            self.holdout = {}
            for split in HOLDOUT_SPLITS:
                m = None
                for cid in sorted(holdout):
                    st = holdout[cid][split].stats
                    m = st if m is None else m.merge(st)
                self.holdout[split] = m
        # fixed latents: the same noise every round, so curves move only with the model
        self.z_eval = model.latents(cfg.num_samples, torch_generator(seed, "eval-latents"))
        self.z_grid = model.latents(cfg.grid_size, torch_generator(seed, "grid-latents"))
        # conditional models: fixed labels per evaluation target, drawn from its class mix
        counts: dict[str | None, np.ndarray] = dict(class_counts)
        k = len(next(iter(counts.values())))
        counts[None] = sum(class_counts.values())
        self.y_eval = {t: torch.multinomial(torch.tensor(c, dtype=torch.float64), cfg.num_samples, True,
                                            generator=torch_generator(seed, "eval-labels", t))
                       for t, c in counts.items()}
        self.y_grid = torch.arange(cfg.grid_size) * k // cfg.grid_size  # rows of classes
        self._realism_ref: RealismReference | None = None  # the union's real k-NN balls, built on first use
        self.realism_last: tuple[int, np.ndarray] | None = None  # (round, scores) of the global model's samples

    def for_model(self, model: Any) -> "Evaluator":
        """This evaluator drawing samples with ``model`` (a site's own workspace, when its
        architecture differs from the server's): the same latents, labels and real statistics."""
        if model is self.model:
            return self
        import copy
        other = copy.copy(self)
        other.model = model
        other.forget_moments()
        return other

    def forget_moments(self) -> None:
        """Drop the cached moments of the last generated features (another model's)."""
        self._last = None

    def grid(self, state: State | None) -> torch.Tensor:
        """The sample grid of ``state`` (``None``: the weights loaded in the model now)."""
        return self.model.sample(state, self.z_grid, self.y_grid if self.conditional else None, bf16=self.cfg.bf16)

    @torch.inference_mode()
    def fake_features(self, state: State | None, against: str | None, mask: torch.Tensor | None = None) -> np.ndarray:
        """Features of the model's images from the fixed latents (and labels) for target ``against``.

        Generation and feature extraction are fused batch by batch on the model's device: each
        batch of images goes through the feature network while it is hot, and no full set of
        images is ever held."""
        z, y = self.z_eval, self.y_eval[against]
        if mask is not None:
            z, y = z[mask], y[mask]
        if len(z) == 0:
            return np.zeros((0, self.extractor.dims))
        batches = self.model.sample_batches(state, z, y if self.conditional else None, bf16=self.cfg.bf16)
        feats = torch.cat([self.extractor.extract(images) for images in batches])
        return feats.double().numpy()

    def evaluate(self, state: State | None, round_: int, who: str, against: str | None) -> list[dict[str, Any]]:
        """Records for the model ``state`` (named ``who``) against client ``against`` (None: union)."""
        return self.score(self.fake_features(state, against), round_, who, against)

    def _moments(self, fake: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """Mean, covariance and covariance square root of generated features, one triple per plane
        block (:func:`fedsynth.metrics.planes.plane_blocks`; images: one block); one set scored
        against several targets (the union, each site) computes them once."""
        if self._last is not None and self._last[0] is fake:
            return self._last[1]
        st = FeatureStats.of(fake)
        out = []
        for _, cols in plane_blocks(self.extractor):
            mu, cov = st.mean[cols], st.cov[cols, cols]
            out.append((mu, cov, sqrtm_psd(cov) if np.isfinite(mu).all() and np.isfinite(cov).all() else None))
        self._last = (fake, out)
        return out

    def score(self, fake: np.ndarray, round_: int, who: str, against: str | None) -> list[dict[str, Any]]:
        real = self.union if against is None else self.real[against]
        blocks = plane_blocks(self.extractor)
        fds = block_distances(self._moments(fake), blocks, real.stats)
        base = {"round": round_, "client": who, "extractor": self.extractor.name,
                "real": "union" if against is None else against, "num_fake": len(fake),
                "num_real": real.stats.n}
        precision = "bf16" if self.cfg.bf16 else self.model.precision
        if precision != "fp32":  # provenance of a cheaper precision (fp32, the reference, is implied)
            base["precision"] = precision
        base.update(self.model.provenance())  # how the samples were made (diffusion: sampler, steps)
        kids = []
        if real.kid_features is not None:
            kids = [kernel_inception_distance(real.kid_features[:, cols], fake[:, cols], self.cfg.kid_subsets,
                                              self.cfg.kid_subset_size, seed=derive_seed(self.seed, "kid", round_, who))
                    for _, cols in blocks]
        recs = []
        if blocks[0][0] is not None:  # volumes: each plane's distances, then their mean as the headline
            for k, (plane, _) in enumerate(blocks):
                recs.append({**base, "plane": plane, "metric": f"{self.extractor.metric}-plane-{plane}", "value": fds[k]})
                if kids:
                    recs.append({**base, "plane": plane, "metric": f"{self.extractor.kid_metric}-plane-{plane}",
                                 "value": kids[k][0], "std": kids[k][1]})
            base = {**base, "plane": "mean"}
        recs.append({**base, "metric": self.extractor.metric, "value": float(np.mean(fds))})
        if kids:
            recs.append({**base, "metric": self.extractor.kid_metric, "value": float(np.mean([v for v, _ in kids])),
                         "std": float(np.mean([sd for _, sd in kids]))})
        if against is None:  # the run's model (or, where each site keeps its own, each site's model)
            if who == "global":
                recs += self.realism(fake, round_, base)
            if self.holdout is not None:  # a site's own model is held to the same held-out images
                recs += self.held_out(self._moments(fake), blocks, base)
        return [{**r, **self._few_real(r["num_real"])} for r in recs]  # each by the real images it rests on

    def held_out(self, moments: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], blocks: list,
                 base: dict[str, Any]) -> list[dict[str, Any]]:
        """The released model against the held-out images: the reported distance (test half,
        ``real = "holdout"``), the score that selects the best round (other half,
        ``selection-score``, never reported as the model's quality), and the memorisation gap: the
        test-half distance minus the distance to as many training images."""
        fd = {split: float(np.mean(block_distances(moments, blocks, st))) for split, st in self.holdout.items()}
        n = {split: st.n for split, st in self.holdout.items()}
        metric = self.extractor.metric
        return [{**base, "real": "holdout", "num_real": n["test"], "metric": metric, "value": fd["test"]},
                {**base, "real": "holdout-select", "num_real": n["select"], "metric": "selection-score",
                 "value": fd["select"], "score": metric},
                {**base, "real": "holdout", "num_real": n["test"], "metric": "memorisation-gap",
                 "value": fd["test"] - fd["matched"], "score": metric}]

    def _few_real(self, num_real: int) -> dict[str, bool]:
        """``{"few_real": True}`` for a record whose distance rests on too few real feature rows
        (:func:`fedsynth.metrics.stats.few_real_note`: fewer than the feature dimension of one
        plane, or than its stated minimum), else nothing: the caveat travels with the number."""
        dims = getattr(self.extractor, "plane_dims", getattr(self.extractor, "dims", None))
        return {"few_real": True} if few_real_note(num_real, dims) else {}

    def realism(self, fake: np.ndarray, round_: int, base: dict[str, Any]) -> list[dict[str, Any]]:
        """Summary records of the per-sample realism score (Kynkaanniemi et al. 2019) of the global
        model's samples against the union's real features, from the features already extracted.
        Needs the real features themselves (kept for KID), so nothing where only moments
        travelled (Flower). The scores stay in ``realism_last`` for the report's extreme samples."""
        real = self.union.kid_features
        if real is None or len(real) <= REALISM_K or len(fake) == 0:
            return []
        if self._realism_ref is None:
            self._realism_ref = RealismReference(real, k=REALISM_K)
        scores = self._realism_ref.scores(fake)
        self.realism_last = (round_, scores)
        base = {**base, "num_real": len(real), "k": REALISM_K}
        return [{**base, "metric": name, "value": v} for name, v in realism_summary(scores).items()]

    def realism_extremes(self, state: State | None, n: int = 8) -> torch.Tensor | None:
        """The ``n`` most realistic samples of the last realism-scored round, then its ``n`` least
        realistic (best first, worst last), re-drawn from their fixed latents; None if no round
        was scored. Only for a model whose evaluation samples came from ``z_eval`` in order."""
        if self.realism_last is None:
            return None
        scores = self.realism_last[1]
        if len(scores) != len(self.z_eval):
            return None
        order = np.argsort(-scores, kind="stable")
        n = min(n, len(order) // 2)
        idx = torch.as_tensor(np.concatenate([order[:n], order[len(order) - n:]]))
        y = self.y_eval[None][idx] if self.conditional else None
        return self.model.sample(state, self.z_eval[idx], y, bf16=self.cfg.bf16)


def sites_summary(site_records: list[dict[str, Any]], extractor: FeatureExtractor, round_: int) -> list[dict[str, Any]]:
    """Mean, worst and best of the global model's per-site scores (the fairness summary)."""
    out = []
    for metric in (extractor.metric, extractor.kid_metric):
        vals = [r["value"] for r in site_records if r["metric"] == metric]
        if not vals:
            continue
        base = {"round": round_, "client": "global", "real": "sites", "extractor": extractor.name}
        out += [{**base, "metric": f"{metric}-sites-mean", "value": float(np.mean(vals))},
                {**base, "metric": f"{metric}-sites-worst", "value": float(np.max(vals))},
                {**base, "metric": f"{metric}-sites-best", "value": float(np.min(vals))}]
    return out
