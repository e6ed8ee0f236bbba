"""Downstream utility: does synthetic data help a classifier? And t-SNE of real vs synthetic.

* :mod:`.classifiers` -- the small CNN or a backbone with a linear head, the study's geometric
  augmentations, seeded training, accuracy and macro F1; the conditional-class check.
* :mod:`.utility` -- real only / synthetic only / real + synthetic, scored on held-out real
  images; ``utility.json`` and its tables (``fedsynth utility``).
* :mod:`.tsne` -- real and synthetic images' features embedded by t-SNE (scikit-learn).
"""

from .classifiers import (SMALLCNN, BackboneClassifier, SmallCNN, augmentation, build_classifier,
                          classifier_names, conditional_accuracy, predict, scores, train_classifier)
from .utility import (ARMS, UtilityResult, UtilitySettings, balanced_labels, downstream_utility, read_utility,
                      run_arms, synthesize, write_utility)

__all__ = ["SMALLCNN", "SmallCNN", "BackboneClassifier", "augmentation", "build_classifier", "classifier_names",
           "conditional_accuracy", "predict", "scores", "train_classifier", "ARMS", "UtilityResult",
           "UtilitySettings", "balanced_labels", "downstream_utility", "read_utility", "run_arms", "synthesize",
           "write_utility"]
