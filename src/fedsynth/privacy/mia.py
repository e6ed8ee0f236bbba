"""Membership-inference audits of a released GAN (Hayes et al. 2019, LOGAN; Chen et al. 2020,
GAN-Leaks). Members are training images, non-members held-out images of the same distribution;
the AUC of telling them apart is reported (0.5 = no leak).

* ``discriminator``: the (white-box) discriminator's logit as the membership score -- an
  overfitted D scores its training images higher.
* ``distance``: the (black-box) distance from each image to its nearest generated sample --
  a generator that reproduces training images lies closer to members.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc


def _auc(member_scores: torch.Tensor, non_member_scores: torch.Tensor) -> float:
    scores = torch.cat([member_scores, non_member_scores]).double()
    target = torch.cat([torch.ones(len(member_scores)), torch.zeros(len(non_member_scores))]).long()
    return float(binary_auroc(scores, target))


@torch.inference_mode()
def discriminator_mia(D: torch.nn.Module, members: torch.Tensor, non_members: torch.Tensor) -> float:
    D.eval()
    score = lambda x: torch.cat([(o[0] if isinstance(o := D(x[i:i + 256]), tuple) else o)  # noqa: E731
                                 for i in range(0, len(x), 256)])
    return _auc(score(members), score(non_members))


@torch.inference_mode()
def distance_mia(generated: torch.Tensor, members: torch.Tensor, non_members: torch.Tensor, side: int = 32) -> float:
    flat = lambda x: F.interpolate(x.double(), size=(side, side), mode="bilinear", antialias=True).flatten(1)  # noqa: E731
    g = flat(generated)
    score = lambda x: -torch.cdist(flat(x), g).min(dim=1).values  # noqa: E731
    return _auc(score(members), score(non_members))
