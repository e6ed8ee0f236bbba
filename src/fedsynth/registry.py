"""One registry per list of names: model families, strategies, GAN losses, feature extractors,
data sources.

Each registry is the single place a name is spelled. Config validation takes its ``choices``
from here, the builders resolve a name to its implementation here (imported only when used,
so reading a config never imports torch), and the Flower server asks here whether a strategy
can run across nodes. Standard library only: this module sits below everything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Iterator


@dataclass(frozen=True)
class Entry:
    """A registered name.

    Attributes
    ----------
    name : str
        What users write in a config.
    target : str
        ``"module:attribute"`` of the implementation, relative to the ``fedsynth`` package.
    help : str
        One line for ``--help`` texts and the configuration reference.
    flower : str
        Empty if the entry runs over Flower; otherwise why it cannot (shown to the user).
    secagg : str
        Strategies: empty if the strategy's aggregation needs nothing but the (weighted) mean
        of the updates, so it runs under secure aggregation (the server learns only that mean);
        otherwise why it cannot (shown to the user). ``tests/test_secagg.py`` checks every
        strategy that claims it.
    server_sites : str
        Strategies: empty if the server can train the global model on samples of the sites'
        updated models (``fed.server-data = "sites"``); otherwise why it cannot (shown to the user).
    kind : str
        A family tag the builders branch on (data sources: ``phantom``, ``files``, ``sample``).
    volumes : bool
        Data sources: whether it gives volumes too (``data.dims = 3``).
    """

    name: str
    target: str = ""
    help: str = ""
    flower: str = ""
    secagg: str = ""
    server_sites: str = ""
    kind: str = ""
    volumes: bool = False

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        return getattr(import_module(f"fedsynth.{module}"), attr)


class Registry:
    def __init__(self, key: str, entries: list[Entry]):
        self.key = key  # the config key whose values these are, e.g. "fed.strategy"
        self._entries = {e.name: e for e in entries}

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __getitem__(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.key} {name!r}; choose from {', '.join(self._entries)}") from None

    def load(self, name: str) -> Any:
        """The implementation registered under ``name`` (imported now)."""
        return self[name].load()

    def help(self) -> str:
        return "; ".join(f"{e.name}: {e.help}" if e.help else e.name for e in self._entries.values())


FAMILIES = Registry("model.family", [
    Entry("gan", "models.gan:GANModel", "generator and discriminator trained adversarially (DCGAN family)"),
    Entry("diffusion", "models.diffusion:DiffusionModel", "denoising UNet trained to predict the noise (DDPM), "
          "sampled with DDIM or DDPM (MONAI)"),
    Entry("autoencoder", "models.autoencoder:AutoencoderModel", "stage 1 of latent diffusion: a KL autoencoder "
          "(MONAI AutoencoderKL), optionally with a patch adversarial loss"),
    Entry("latent-diffusion", "models.latent:LatentDiffusionModel", "stage 2: a denoising UNet on the latents of a "
          "frozen stage-1 autoencoder (autoencoder.path)"),
])

# Image backbones (models/backbones.py): discriminator trunks (model.d-arch) and utility classifiers.
# The one place their names are spelled; each target is what the name is in its library.
BACKBONES = Registry("backbone", [
    Entry("resnet18", "models.backbones:RESNET18", "torchvision ResNet-18 (11 M parameters)"),
    Entry("resnet50", "models.backbones:RESNET50", "torchvision ResNet-50 (24 M)"),
    Entry("vit_b_16", "models.backbones:VIT_B_16", "torchvision ViT-B/16 (86 M; 224 px with ImageNet weights)"),
    Entry("swin_t", "models.backbones:SWIN_T", "torchvision Swin-T (28 M)"),
    Entry("deit_tiny", "models.backbones:DEIT_TINY", "timm DeiT-Tiny/16 (5.5 M)"),
    Entry("levit_128s", "models.backbones:LEVIT_128S", "timm LeViT-128S (7 M; 224 px with ImageNet weights)"),
])

# Generator architectures (model.g-arch). Each target builds the generator from a GAN's ModelSpec:
# ``target(spec)``.
G_ARCHS = Registry("model.g-arch", [
    Entry("dcgan", "models.gan:dcgan_generator", "transposed convolutions (DCGAN; images and volumes)"),
    Entry("upsample-cnn", "models.gan:upsample_generator", "the histopathology study's: three upsample + 3x3 "
          "conv blocks with norm, LeakyReLU, dropout; class embedding multiplied into the latent"),
])

# Discriminator architectures (model.d-arch): DCGAN's, or any backbone with heads (models/heads.py).
# Each target builds the discriminator from a GAN's ModelSpec: ``target(spec, pretrained=...)``.
D_ARCHS = Registry("model.d-arch", [
    Entry("dcgan", "models.gan:dcgan_discriminator", "DCGAN convolutions (model.ndf, model.d-norm)"),
    *(Entry(name, "models.gan:backbone_discriminator", BACKBONES[name].help) for name in BACKBONES),
])

_ONE_MODEL = "clients never share one model to aggregate"
_NO_MEAN = "it needs each client's update, and secure aggregation shows the server only their sum"
_NO_GLOBAL = "keeps no global model for the server to train"
_NO_MIXTURE = "passes one model from site to site: there is no mixture of site models to sample"
STRATEGIES = Registry("fed.strategy", [
    Entry("fedavg", "fed.strategies:FedAvg", "federated averaging (McMahan et al. 2017)"),
    Entry("fedsgd", "fed.strategies:FedSGD", "FedAvg with one local step per round"),
    Entry("fedprox", "fed.strategies:FedProx", "proximal term mu/2 ||w - w_global||^2 (Li et al. 2020)"),
    Entry("fednova", "fed.strategies:FedNova", "normalised averaging (Wang et al. 2020)",
          secagg="it weights each client's change by that client's own step count"),
    Entry("scaffold", "fed.strategies:Scaffold", "control variates (Karimireddy et al. 2020)",
          secagg="its control-variate changes travel beside the weights, outside the secure sum"),
    Entry("feddyn", "fed.strategies:FedDyn", "dynamic regularisation (Acar et al. 2021)",
          secagg="its correction sums the unweighted drift of each client's update"),
    Entry("fedavgm", "fed.strategies:FedAvgM", "server momentum (Hsu et al. 2019)"),
    Entry("fedadam", "fed.strategies:FedAdam", "server Adam (Reddi et al. 2021)"),
    Entry("fedyogi", "fed.strategies:FedYogi", "server Yogi (Reddi et al. 2021)"),
    Entry("fedbn", "fed.strategies:FedBN", "FedAvg with normalisation layers kept local (Li et al. 2021)"),
    Entry("fixbn", "fed.strategies:FixBN", "FedAvg whose BatchNorm statistics are frozen after fed.fixbn-round "
          "(Zhong et al. 2024)"),
    Entry("fbn", "fed.skew:FBN", "FedAvg whose BatchNorm variance adds the between-site variance of the means: "
          "the pooled data's statistics (FBN, Guerraoui et al. 2024)",
          secagg="its BatchNorm variance needs each site's mean, and secure aggregation shows only their sum"),
    Entry("fedcar", "fed.skew:FedCAR", "FedAvg weighted down for sites whose generated features are far from the "
          "consensus (FedCAR, Kim et al. 2024; fed.fedcar-*)",
          secagg="the server samples each site's generator, and secure aggregation shows only their sum"),
    Entry("swt", "fed.strategies:SingleWeightTransfer", "single weight transfer: one block of rounds per client",
          flower="it passes one model from site to site", secagg=_NO_MEAN, server_sites=_NO_MIXTURE),
    Entry("cwt", "fed.strategies:CyclicWeightTransfer", "cyclic weight transfer: every client in turn each round",
          flower="it passes one model from site to site", secagg=_NO_MEAN, server_sites=_NO_MIXTURE),
    Entry("ensemble", "fed.strategies:Ensemble", "clients train alone; samples from the mixture of their models",
          flower=_ONE_MODEL, secagg=_NO_MEAN,
          server_sites=_NO_GLOBAL + " (it releases the mixture itself)"),
    Entry("local", "fed.strategies:Local", "baseline: every hospital alone", flower=_ONE_MODEL, secagg=_NO_MEAN,
          server_sites=_NO_GLOBAL),
    Entry("centralized", "fed.strategies:Centralized", "baseline: all data pooled in one client",
          flower="it pools every site's images in one place", secagg=_NO_MEAN),
])

LOSSES = Registry("train.loss", [
    Entry("bce", "train.losses:NonSaturatingBCE", "non-saturating BCE (Goodfellow et al. 2014), as in DCGAN"),
    Entry("hinge", "train.losses:Hinge", "hinge loss (Lim & Ye 2017)"),
    Entry("wgan-gp", "train.losses:WGANGP", "Wasserstein loss with gradient penalty (Gulrajani et al. 2017)"),
])

EXTRACTORS = Registry("eval.feature-extractor", [
    Entry("auto", "", "Inception if its weights are on disk, else the random network"),
    Entry("inception", "metrics.features:InceptionFeatures", "the standard FID Inception-v3 (local weights file)"),
    Entry("effnet-lite0", "metrics.features:EffNetLite0Features", "ImageNet EfficientNet-Lite0 (fd-effnet; weights ship in a package)"),
    Entry("dinov2", "metrics.features:DinoV2Features", "DINOv2 ViT-L/14 (fd-dinov2; weights from the cache)"),
    Entry("xrv", "metrics.features:XrvFeatures", "torchxrayvision's chest-radiograph DenseNet (fd-xrv; weights from the cache)"),
    Entry("random", "metrics.features:RandomConvFeatures", "a frozen, seeded random conv net (fd-random, not FID)"),
])
#: the feature networks themselves (``auto`` is a rule that picks one)
FEATURE_NETWORKS = tuple(n for n in EXTRACTORS.names() if EXTRACTORS[n].target)

# Each target loads the whole data set from the config: ``target(cfg, progress) -> ImageSet``
SOURCES = Registry("data.source", [
    Entry("phantom-xray", "data:load_phantom", "built-in chest radiograph phantoms", kind="phantom"),
    Entry("phantom-ct", "data:load_phantom", "built-in axial CT phantoms (data.dims = 3: chest CT volumes)",
          kind="phantom", volumes=True),
    Entry("phantom-histo", "data:load_phantom", "built-in RGB H&E tile phantoms", kind="phantom"),
    Entry("phantom-mr", "data:load_phantom", "built-in head MR volumes, T1 or T2 (data.dims = 3)",
          kind="phantom", volumes=True),
    Entry("folder", "data.sources:load_source", "PNG/JPEG/TIFF/BMP files under data.path", kind="files"),
    Entry("dicom", "data.sources:load_source", "DICOM files under data.path", kind="files", volumes=True),
    Entry("nifti", "data.sources:load_source", "NIfTI volumes under data.path", kind="files", volumes=True),
    Entry("medmnist", "data.sources:load_source", "a MedMNIST .npz file under data.path", kind="files"),
    Entry("sample-retina", "data.sources:load_source", "fundus tiles shipped with scikit-image", kind="sample"),
    Entry("sample-ihc", "data.sources:load_source", "IHC tiles shipped with scikit-image", kind="sample"),
    Entry("sample-ct", "data.sources:load_source", "pydicom's CT test slices", kind="sample"),
])

# Robust aggregation rules; each target is the rule RobustAggregation applies in place of the mean
ROBUST_RULES = Registry("privacy.robust", [
    Entry("none", "", "plain (weighted) mean"),
    Entry("median", "privacy.robust:median_rule", "coordinate-wise median (Yin et al. 2018)"),
    Entry("trimmed-mean", "privacy.robust:trimmed_mean_rule", "coordinate-wise trimmed mean (Yin et al. 2018)"),
    Entry("krum", "privacy.robust:krum_rule", "Krum (Blanchard et al. 2017)"),
    Entry("multi-krum", "privacy.robust:multi_krum_rule", "Multi-Krum (Blanchard et al. 2017)"),
    Entry("clip", "privacy.robust:clip_rule", "norm clipping, then the mean (Sun et al. 2019)"),
])


def is_fd_metric(metric: str) -> bool:
    """A Fréchet distance record's metric: ``fid`` or ``fd-<network>`` (not its sites summary, nor
    one plane's distance of a volume, ``fd-<network>-plane-<xy|yz|zx>``: the headline is their mean)."""
    return (metric == "fid" or metric.startswith("fd-")) and "-sites-" not in metric and "-plane-" not in metric


def is_kid_metric(metric: str) -> bool:
    return (metric == "kid" or metric.startswith("kid-")) and "-sites-" not in metric and "-plane-" not in metric


def kid_metric(fd_metric: str) -> str:
    """The KID metric measured with the same network: fid -> kid, fd-random -> kid-random."""
    return "kid" if fd_metric == "fid" else "kid-" + fd_metric[3:]
