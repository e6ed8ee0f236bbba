"""Metrics: feature extractors, mergeable statistics, Frechet distance and KID."""

from .features import (FeatureExtractor, InceptionFeatures, RandomConvFeatures, build_extractor,
                       find_inception_weights)
from .prdc import prdc
from .stats import FeatureStats, fd_from_stats, frechet_distance, kernel_inception_distance
from .swd import laplacian_pyramid, sliced_wasserstein

__all__ = ["FeatureExtractor", "RandomConvFeatures", "InceptionFeatures", "build_extractor",
           "find_inception_weights", "FeatureStats", "frechet_distance", "fd_from_stats",
           "kernel_inception_distance", "prdc", "sliced_wasserstein", "laplacian_pyramid"]
