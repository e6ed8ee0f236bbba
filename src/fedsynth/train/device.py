"""Where tensors live (``run.device``), in what precision they are computed
(``train.precision``) and how reproducible the kernels are (``run.deterministic``).

The rules every device path follows, so that a CPU run is unchanged and a GPU run differs from
it only by floating-point rounding:

* Random draws (data order, latents, labels, augmentations, DP noise) are always made on the CPU
  from the seeded ``torch.Generator`` and then moved: the same seed draws the same numbers on
  every device.
* Weights that leave the model workspace (updates, aggregation, checkpoints, Flower messages) are
  CPU tensors; the workspace, its optimizer state, a client's optimizer state between rounds,
  its images (``uint8``, moved once when they fit) and the feature network live on the device.
* On the CPU every ``.to(device)`` here is a no-op, so results stay bit-identical to a build
  without device support.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Any

import numpy as np
import torch

from ..config import UserError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str = "auto") -> torch.device:
    """The ``torch.device`` that ``run.device`` names; a :class:`UserError` if it is not here.

    ``auto``: the first CUDA device if one is available, else the CPU (never MPS by itself: its
    kernels are incomplete for some of the metrics' operations).
    """
    spec = (spec or "auto").strip()
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError("config key 'run.device' is 'mps' but this machine has no MPS device "
                            "(Apple silicon with a PyTorch build that supports it); use cpu or auto")
        return torch.device("mps")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else \
                "no CUDA device is visible (driver, CUDA_VISIBLE_DEVICES?)"
            raise UserError(f"config key 'run.device' is {spec!r} but {why}; use cpu or auto")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"config key 'run.device' is {spec!r} but this machine has "
                            f"{torch.cuda.device_count()} CUDA device(s) (cuda:0 .. "
                            f"cuda:{torch.cuda.device_count() - 1})")
        return dev
    raise UserError(f"config key 'run.device' must be auto, cpu, cuda, cuda:N or mps; got {spec!r}")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` for ``device``: ``auto`` is fp32 everywhere (see docs/performance.md:
    bf16 autocast measured stable for the DCGAN on CPU but slower on CPUs without AVX512-BF16, and
    unmeasured on GPUs here); fp16 needs CUDA."""
    p = precision if precision != "auto" else "fp32"
    if p == "fp16" and device.type != "cuda":
        raise UserError(f"config key 'train.precision' = 'fp16' needs a CUDA device, not {device.type}")
    if p not in PRECISIONS:
        raise UserError(f"config key 'train.precision' must be auto, fp32, bf16 or fp16; got {precision!r}")
    return p


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def set_deterministic(on: bool) -> None:
    """``run.deterministic``: deterministic kernels only (errors on an operation that has none),
    cuDNN's autotuner off. The CPU kernels fedsynth uses are deterministic either way. Off puts
    torch's defaults back, so a process that serves several runs (a node's warm worker) gives each
    the setting of its own config."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s weights, always on the CPU (what travels, aggregates and is saved)."""
    return {k: v.detach().clone() if v.device.type == "cpu" else v.detach().cpu()
            for k, v in module.state_dict().items()}


class PerDataSet:
    """Values computed once per data set (e.g. a client's images moved to the device, or their
    latents) and kept while the set lives: keyed by the set's identity, forgotten once it is dropped."""

    def __init__(self) -> None:
        self._hits: dict[int, tuple[Any, Any]] = {}  # id(data) -> (weak reference, value)

    def get(self, data: Any, make: Any) -> Any:
        """The value for ``data``, made by ``make(data)`` the first time."""
        hit = self._hits.get(id(data))
        if hit is not None and hit[0]() is data:
            return hit[1]
        self._hits = {k: v for k, v in self._hits.items() if v[0]() is not None}  # forget dropped sets
        value = make(data)
        self._hits[id(data)] = (weakref.ref(data), value)
        return value


def images_and_labels(data: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A data set's ``uint8`` images (:func:`images_on`) and its labels beside them."""
    images = images_on(data.images, device)
    return images, torch.from_numpy(data.labels).to(images.device)


def images_on(images: np.ndarray, device: torch.device, budget: float = 0.25) -> torch.Tensor:
    """A client's ``uint8`` images ``(N, C, H, W)`` as a tensor on ``device`` when they fit in
    ``budget`` of its free memory (else on the CPU: batches are then moved one by one). On the CPU
    this shares the array's memory (no copy)."""
    t = torch.from_numpy(images)
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        if t.numel() > budget * free:
            return t
    return t.to(device)


def to_device(obj: Any, device: torch.device | str) -> Any:
    """``obj`` (tensors in dicts, lists and tuples) with every tensor on ``device``; tensors
    already there are returned as they are (no copy)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
