"""What every role's process takes from a configuration, decided and applied in one place.

A run has three kinds of process: the in-process engine (:func:`fedsynth.fed.inprocess.build_in_process`),
the Flower server (:func:`fedsynth.fed.flower.server_app.server_setup`) and a hospital node
(:class:`fedsynth.fed.flower.node.Node`). Each calls :func:`assemble` with its configuration
(a node's already carries its own ``device``) and builds its feature network with
:meth:`Process.extractor`, so device, torch threads, determinism and the feature network's
memory layout cannot drift between them: a setting that differed would break the engines'
bit-identity (``train.threads`` changes the last bits of CPU sums) or their evaluation.
``tests/test_assembly.py`` runs each role's set-up on one config and compares what it applied.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

ROLES = ("in-process", "server", "node")


def threads_for(cfg: Any, role: str) -> int:
    """The torch CPU threads a role's process uses: ``train.threads``; 0 means all cores, except
    on a node, where it means 1 (several SuperNodes often share one machine: two nodes with all
    cores each on a two-core machine made an epoch 15-25x slower). The thread count changes the
    last bits of CPU sums, so a run that must match the other engine bit for bit sets
    ``train.threads``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {ROLES}")
    if cfg.train.threads > 0:
        return cfg.train.threads
    return 1 if role == "node" else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Process:
    """The process-level settings a role applied (:func:`assemble`)."""

    role: str
    device: torch.device        # run.device resolved here (a node's own node-config device wins)
    threads: int                # torch intra-op threads (:func:`threads_for`)
    deterministic: bool         # run.deterministic: deterministic kernels, cuDNN autotuner off
    channels_last: bool         # the feature network's memory format (train.channels-last)

    @classmethod
    def of(cls, cfg: Any, role: str) -> "Process":
        """The settings ``cfg`` asks of ``role`` (nothing applied yet)."""
        from ..train.device import resolve_device
        return cls(role, resolve_device(cfg.run.device), threads_for(cfg, role), bool(cfg.run.deterministic),
                   bool(cfg.train.channels_last))

    def apply(self) -> None:
        """Set them on this process (cheap: a warm node applies them on every message, since the
        process may have served another run with other settings)."""
        from ..train.device import set_deterministic
        from ..utils import set_torch_threads
        set_torch_threads(self.threads)
        set_deterministic(self.deterministic)

    def extractor(self, cfg: Any):
        """The feature network ``cfg.eval`` names, on this process's device and in its memory
        format -- built the same way by every role, so the sites' real statistics and the
        server's generated features come from the same kernels."""
        from ..metrics import build_extractor
        ex = build_extractor(cfg.eval.feature_extractor, cfg.eval.inception_weights, dims=cfg.data.dims,
                             slices=cfg.eval.volume_slices).to(self.device)
        if self.channels_last:
            ex = ex.to(memory_format=torch.channels_last)
        return ex


def assemble(cfg: Any, role: str) -> Process:
    """Resolve and apply the process-level settings ``cfg`` asks of ``role`` (one of
    :data:`ROLES`); returns them (its :meth:`Process.extractor` builds the feature network)."""
    proc = Process.of(cfg, role)
    proc.apply()
    return proc


def applied() -> dict[str, Any]:
    """What this process runs with now (torch's global settings), for checks that the roles agree."""
    return {"threads": torch.get_num_threads(), "deterministic": torch.are_deterministic_algorithms_enabled(),
            "cudnn-benchmark": torch.backends.cudnn.benchmark, "cudnn-deterministic": torch.backends.cudnn.deterministic}


def memory_format(module: torch.nn.Module) -> str:
    """``"channels_last"`` if ``module``'s 4-D weights are laid out NHWC, else ``"contiguous"``."""
    four = [p for p in module.parameters() if p.dim() == 4]
    if any(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in four):
        return "channels_last"
    return "contiguous"
