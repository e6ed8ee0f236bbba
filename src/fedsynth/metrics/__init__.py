"""Metrics: feature extractors, mergeable statistics, Fréchet distance, KID, precision/recall
and the per-sample realism score."""

from .features import (KINDS, DinoV2Features, EffNetLite0Features, FeatureExtractor, InceptionFeatures,
                       RandomConvFeatures, XrvFeatures, build_extractor, find_inception_weights)
from .prdc import prdc
from .realism import realism_scores, realism_summary
from .stats import FeatureStats, fd_from_stats, frechet_distance, kernel_inception_distance
from .swd import laplacian_pyramid, sliced_wasserstein

__all__ = ["FeatureExtractor", "RandomConvFeatures", "InceptionFeatures", "EffNetLite0Features",
           "DinoV2Features", "XrvFeatures", "KINDS", "build_extractor",
           "find_inception_weights", "FeatureStats", "frechet_distance", "fd_from_stats",
           "kernel_inception_distance", "prdc", "realism_scores", "realism_summary",
           "sliced_wasserstein", "laplacian_pyramid"]
