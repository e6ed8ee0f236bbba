"""The generative-model interface: everything the engines, strategies, evaluation, checkpoints
and the Flower adapter need from a model family, and nothing more.

A :class:`GenerativeModel` is a *workspace*: one set of networks and their optimizers, reused for
every client in turn. A client's own state (its optimizer moments, the weights it keeps) is a
plain dict the caller stores, so memory does not grow with the number of clients.

Weights are one flat state dict whose keys are ``"<net>.<name>"`` (the GAN family: ``G.*`` and
``D.*``); strategies, validation and aggregation see only those keys and tensors. Hooks change
gradients after each backward pass (``hook.after_backward(net, module)``): FedProx's proximal
term, SCAFFOLD's and FedDyn's corrections.

A family registers in :data:`fedsynth.registry.FAMILIES` and implements the abstract methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch

from ..train import TrainHook
from ..train.device import autocast

State = dict[str, torch.Tensor]


@dataclass
class TrainResult:
    """What one client's local training reports."""

    steps: int                      # local steps taken (a family defines what one step is)
    images: int                     # real images seen
    seconds: float
    losses: dict[str, float] = field(default_factory=dict)   # mean per step, e.g. {"d-loss", "g-loss"}
    private_steps: int = 0          # optimizer steps that DP-SGD noised (for the accountant)


Sampler = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def description_fields(desc: dict[str, Any], spec: type, what: str) -> dict[str, Any]:
    """The fields of dataclass ``spec`` in a checkpoint's model description ``desc`` (besides
    ``family`` and ``class_names``); a field ``spec`` does not know is an error naming it."""
    names = {f.name for f in fields(spec)}
    unknown = set(desc) - names - {"family", "class_names"}
    if unknown:
        raise ValueError(f"unknown {what} description field(s) {sorted(unknown)}")
    return {k: v for k, v in desc.items() if k in names}


class GenerativeModel(ABC):
    """One model family's networks, training and sampling.

    Build with :meth:`from_config` (a run) or :meth:`from_description` (a checkpoint).
    """

    family: ClassVar[str]
    # How pages, headers and help speak of this family (the report, the run header, the terminal):
    title: ClassVar[str] = "generative model"     # "GAN", "diffusion model"
    maker: ClassVar[str] = "model"                # what makes the images: "the untrained <maker>"
    loss_labels: ClassVar[dict[str, str]] = {}    # recorded loss metric -> its name on a plot
    loss_help: ClassVar[str] = ""                 # what the losses mean, for the report

    @classmethod
    def config_line(cls, cfg: dict[str, Any]) -> str:
        """One line naming the model of a run from its parsed config.toml (the report's
        summary, the run header)."""
        return cls.title

    num_classes: int
    conditional: bool      # samples depend on class labels
    device: torch.device = torch.device("cpu")   # where the networks live (run.device)
    precision: str = "fp32"                      # train.precision, resolved: fp32 | bf16 | fp16

    # ---- build
    @classmethod
    @abstractmethod
    def from_config(cls, cfg: Any, image_size: int, channels: int, num_classes: int) -> "GenerativeModel":
        """The model a run configuration describes, initialised from the run seed."""

    @classmethod
    def pinned(cls, cfg: Any) -> Any:
        """``cfg`` with what every site must hold identical pinned, before the run starts and its
        configuration is written and sent (the latent-diffusion family: the hash of its frozen
        autoencoder). Most families pin nothing."""
        return cfg

    @classmethod
    @abstractmethod
    def from_description(cls, desc: dict[str, Any]) -> "GenerativeModel":
        """Rebuild the architecture a checkpoint describes (weights are loaded separately)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-able description of the architecture, stored in checkpoints (with ``family``)."""

    # ---- weights
    @abstractmethod
    def state(self) -> State:
        """A copy of the current weights (all networks)."""

    @abstractmethod
    def load(self, state: State, opt_state: dict[str, Any] | None = None) -> None:
        """Set the weights and a client's optimizer state (``None``: fresh optimizers)."""

    @abstractmethod
    def opt_state(self) -> dict[str, Any]:
        """A copy of the optimizer state (to store as the client's)."""

    @abstractmethod
    def parameter_keys(self) -> set[str]:
        """State keys that are trainable parameters (not buffers)."""

    @abstractmethod
    def norm_keys(self) -> set[str]:
        """State keys of normalisation layers (what FedBN keeps local)."""

    @abstractmethod
    def learning_rates(self) -> dict[str, float]:
        """The learning rate each parameter key is trained with (SCAFFOLD's control variates)."""

    def provenance(self) -> dict[str, Any]:
        """How this model's samples are made, recorded beside every score of them (e.g. the
        diffusion family's sampler and its steps); empty where nothing needs saying."""
        return {}

    # ---- train
    @abstractmethod
    def train(self, data: Any, steps: int, batch_size: int, generator: torch.Generator,
              on_step: Callable[[int], None] | None = None, hooks: Sequence[TrainHook] = (),
              dp: Any = None) -> TrainResult:
        """``steps`` local steps on ``data`` (an :class:`fedsynth.data.ImageSet`). Every random
        draw comes from ``generator``. ``dp`` (:class:`fedsynth.privacy.dp.DPSGD`) privatises
        the network that sees real images."""

    # ---- sample
    @abstractmethod
    def latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` fixed latents (the noise a sample starts from)."""

    @abstractmethod
    def sampler(self, state: State | None) -> Sampler:
        """A function ``(latents, labels) -> images in [-1, 1]`` of the generative part of
        ``state`` (``None``: the weights loaded now). It uses this workspace: valid until the
        next :meth:`load` or :meth:`sampler`."""

    def sample_batches(self, state: State | None, z: torch.Tensor, y: torch.Tensor | None = None,
                       batch: int = 250, bf16: bool = False) -> Iterator[torch.Tensor]:
        """Images from ``state`` for latents ``z`` (and labels ``y``), ``batch`` at a time, on the
        model's device in its precision (``bf16``: bfloat16 autocast whatever the precision), as
        float32. Lets evaluation extract features batch by batch, without holding every image."""
        f = self.sampler(state)
        y = y if y is not None else torch.zeros(len(z), dtype=torch.long)
        dev = self.device
        for i in range(0, len(z), batch):  # (no context is held across a yield)
            with torch.inference_mode(), autocast(dev, "bf16" if bf16 else self.precision):
                out = f(z[i:i + batch].to(dev), y[i:i + batch].to(dev))
            yield out.float()  # (B, C, H, W)

    @torch.inference_mode()
    def sample(self, state: State | None, z: torch.Tensor, y: torch.Tensor | None = None, batch: int = 250,
               bf16: bool = False) -> torch.Tensor:
        """Images from ``state`` for latents ``z`` (and labels ``y``), in batches
        (:meth:`sample_batches`), returned on the CPU."""
        return torch.cat(list(self.sample_batches(state, z, y, batch, bf16))).cpu()

    def generate(self, state: State | None, n: int, seed: int, label: int | None = None) -> torch.Tensor:
        """``n`` images from ``state``, from latents (and, for a conditional model, labels --
        ``label`` or drawn uniformly) seeded by ``seed``."""
        g = torch.Generator().manual_seed(seed)
        z = self.latents(n, g)
        if self.conditional:
            y = torch.full((n,), label, dtype=torch.long) if label is not None else \
                torch.randint(0, self.num_classes, (n,), generator=g)
        else:
            if label is not None:
                raise ValueError("a label needs a class-conditional model (model.conditional)")
            y = None
        return self.sample(state, z, y)
