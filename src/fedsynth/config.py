"""Run configuration: frozen dataclasses built once from TOML plus ``--set`` overrides.

TOML keys are kebab-case (``local-epochs``); Python fields are snake_case (``local_epochs``).
The conversion happens here and nowhere else. Every field carries its help text and its
constraints (``choices``, ``min``, ``max``) as dataclass metadata, so validation is generic and
every error names the offending key, e.g. ``fed.rounds``.

Bad user input raises :class:`UserError`; the CLI turns it into a one-line message and exit
code 2.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

import tomli_w

from .registry import (BACKBONES, D_ARCHS, EXTRACTORS, FAMILIES, FEATURE_NETWORKS, G_ARCHS, LOSSES, ROBUST_RULES,
                       SOURCES, STRATEGIES)

# Fewest local steps a round trains by default. A site of 84 images at batch 32 takes 2 steps per
# epoch, and a DCGAN given 2 steps a round learned nothing in 6 rounds; the built-in default
# (1,000 images per site) takes 31 steps an epoch, so this floor leaves it unchanged.
MIN_LOCAL_STEPS = 30


class UserError(Exception):
    """An error caused by user input (config, paths, data). Shown as one line, exit code 2."""


def _why_not(folder: Path, e: OSError) -> str:
    import errno
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to write in {folder}"
    if e.errno == errno.EROFS:
        return f"{folder} is on a read-only file system"
    return f"cannot write in {folder} ({e.strerror or e})"


def check_output_path(path: str | Path, option: str, *, folder: bool = True, example: str = "out") -> Path:
    """Check that ``path`` (a folder to create or fill, or with ``folder=False`` a file to write)
    can be written, before any work starts; a one-line :class:`UserError` naming ``option``,
    the path and the reason otherwise (a parent that is a file, no permission, a read-only or
    virtual file system such as /proc). Probes with a temporary folder it removes again:
    nothing is left behind."""
    import tempfile
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise UserError(f"{option} {path}: it is a file, not a folder")
        if not folder and path.is_dir():
            raise UserError(f"{option} {path}: it is a folder; give a file name such as {path / example}")
    probe = (path if folder and path.is_dir() else path.parent).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{option} {path}: {probe} is a file, not a folder")
    try:
        tempfile.TemporaryDirectory(prefix=".fedsynth-probe-", dir=probe).cleanup()
    except OSError as e:
        raise UserError(f"{option} {path}: {_why_not(probe, e)}") from None
    return path


def _f(default: Any, help: str, **constraints: Any) -> Any:
    return field(default=default, metadata={"help": help, **constraints})


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from: a built-in phantom, a folder, DICOM, NIfTI, MedMNIST or a
    packaged sample (``[data]``)."""

    source: str = _f("phantom-xray", SOURCES.help(), choices=SOURCES.names())
    path: str = _f("", "file or folder for folder/dicom/nifti sources; MedMNIST root folder")
    image_size: int = _f(64, "image side in pixels (a power of two, 16-256); volumes: the cube's side in voxels",
                         choices=(16, 32, 64, 128, 256))
    dims: int = _f(2, "2: images; 3: volumes (nifti files, dicom series, phantom-ct, phantom-mr) resampled to "
                   "a cube of data.image-size voxels, scored with 2.5-D distances (docs/volumes.md)",
                   choices=(2, 3))
    num_images: int = _f(2000, "phantoms: number of images generated", min=1)
    max_images: int = _f(0, "file and sample sources: use at most this many images, a seeded "
                         "random subset (0: all)", min=0)
    labels_csv: str = _f("", "folder/dicom: CSV with columns file,label (default: class subfolders)")
    skip_bad: bool = _f(False, "skip unreadable or invalid files (counted in the summary) "
                        "instead of stopping")
    cache: bool = _f(True, "cache the prepared data set on disk, keyed by source and parameters")
    medmnist_flag: str = _f("pneumoniamnist", "MedMNIST data set, e.g. pneumoniamnist, pathmnist")
    medmnist_split: str = _f("train", "MedMNIST split", choices=("train", "val", "test"))
    medmnist_size: int = _f(64, "MedMNIST file resolution", choices=(28, 64, 128, 224))
    medmnist_download: bool = _f(False, "download the MedMNIST file if missing (needs the network "
                                 "and the medmnist package)")
    slice_range: tuple = _f((0.0, 1.0), "NIfTI: axial slices kept, as fractions of the volume "
                            "[start, stop]", length=2, min=0.0, max=1.0)
    min_foreground: float = _f(0.1, "NIfTI: drop slices whose foreground fraction is below this",
                               min=0.0, max=1.0)
    window: tuple = _f((0.0, 0.0), "DICOM: window [center, width] in rescaled units "
                       "(width 0: no window)", length=2)


@dataclass(frozen=True)
class PreprocessConfig:
    """How images are prepared before training: intensity rescaling, crop, resize to a square,
    channels, CLAHE, gamma, binning (``[preprocess]``)."""

    rescale: str = _f("auto", "intensity to [0, 1]: auto (quantiles for >8-bit data, /255 for "
                      "8-bit), quantile, minmax, none (/255)",
                      choices=("auto", "quantile", "minmax", "none"))
    quantiles: tuple = _f((0.02, 0.98), "low/high intensity quantiles for rescale", length=2,
                          min=0.0, max=1.0)
    crop: tuple = _f((0.0, 0.0, 0.0, 0.0), "crop fractions [top, bottom, left, right] "
                     "(e.g. [0.05, 0.25, 0.05, 0.05])", length=4, min=0.0, max=0.49)
    resize: str = _f("pad", "to a square: pad (keep all, letterbox) or crop (centre crop); "
                     "none requires square images", choices=("pad", "crop", "none"))
    channels: str = _f("auto", "auto (all images must agree), gray (converts RGB), rgb",
                       choices=("auto", "gray", "rgb"))
    clahe: float = _f(0.0, "CLAHE clip limit (0: off; 0.01-0.03 typical)", min=0.0, max=1.0)
    gamma: float = _f(1.0, "gamma correction x**gamma (1: off)", min=0.0, exclusive_min=True)
    bins: int = _f(0, "intensity binning to this many levels (0: off)", min=0, max=256)


@dataclass(frozen=True)
class PartitionConfig:
    """How the images are split among the clients (hospitals), seeded (``[partition]``)."""

    clients: int = _f(2, "number of clients (hospitals)", min=1, max=10_000)
    scheme: str = _f("iid", "iid | label-skew | by-label | dirichlet | quantity-skew",
                     choices=("iid", "label-skew", "by-label", "dirichlet", "quantity-skew"))
    majority: float = _f(0.9, "label-skew: fraction of each client's images from its majority class",
                         min=0.0, max=1.0)
    alpha: float = _f(0.5, "dirichlet: concentration (small: more skewed)", min=0.0, exclusive_min=True)
    min_size: int = _f(0, "dirichlet: draw again until every client has at least this many images "
                          "(0: one draw)", min=0)
    beta: float = _f(1.0, "quantity-skew: Dirichlet concentration of client sizes", min=0.0,
                     exclusive_min=True)


@dataclass(frozen=True)
class ModelConfig:
    """The generative model: family, architecture, widths, normalisation, conditioning
    (``[model]``)."""

    family: str = _f("gan", "model family: " + FAMILIES.help(), choices=FAMILIES.names())
    arch: str = _f("dcgan", "generator/discriminator family", choices=("dcgan",))
    nz: int = _f(100, "latent dimension", min=1)
    ngf: int = _f(32, "generator width (channels of the last hidden layer)", min=1, site="G")
    ndf: int = _f(16, "discriminator width (channels of the first layer)", min=1, site="D")
    g_norm: str = _f("batch", "generator normalisation", choices=("batch", "group", "none"), site="G")
    d_norm: str = _f("batch", "discriminator normalisation (use group/none with wgan-gp)",
                     choices=("batch", "group", "none"), site="D")
    spectral_norm: bool = _f(False, "spectral normalisation of the discriminator", site="D")
    conditional: str = _f("none", "class-conditional generator: multiply (label embedding times "
                          "noise) or concat (one-hot label appended to noise)",
                          choices=("none", "multiply", "concat"))
    d_conditioning: str = _f("none", "conditional discriminator: projection or acgan "
                             "(auxiliary classifier)", choices=("none", "projection", "acgan"))
    # -- issue 14: the histopathology study's networks
    g_arch: str = _f("dcgan", "generator: " + G_ARCHS.help(), choices=G_ARCHS.names(), site="G")
    g_dropout: float = _f(0.25, "upsample-cnn: dropout after each block", min=0.0, max=0.9, site="G")
    d_arch: str = _f("dcgan", "discriminator: " + D_ARCHS.help() + ". Backbones take gray or RGB "
                     "images (gray repeated to RGB, ImageNet normalisation) and ignore ndf and d-norm",
                     choices=D_ARCHS.names(), site="D")
    d_pretrained: bool = _f(False, "start the discriminator backbone from ImageNet weights, read from "
                            "the library's cache only (`fedsynth weights fetch NAME` on a connected "
                            "machine first; never downloads)", site="D")


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion family (``model.family = "diffusion"``): a denoising UNet trained to predict
    the noise (DDPM), its noise schedule, sampler, class conditioning and EMA
    (``[diffusion]``; MONAI's ``DiffusionModelUNet`` and schedulers, docs/models.md)."""

    timesteps: int = _f(1000, "diffusion steps T of the forward (noising) process", min=2, max=10_000)
    schedule: str = _f("linear", "noise schedule of the betas: linear (Ho et al. 2020), scaled-linear, sigmoid, "
                       "cosine (Nichol & Dhariwal 2021)", choices=("linear", "scaled-linear", "sigmoid", "cosine"))
    beta_start: float = _f(1e-4, "first beta of the linear, scaled-linear and sigmoid schedules",
                           min=0.0, max=1.0, exclusive_min=True)
    beta_end: float = _f(0.02, "last beta of the linear, scaled-linear and sigmoid schedules",
                         min=0.0, max=1.0, exclusive_min=True)
    sampler: str = _f("ddim", "sampler for evaluation and generation: ddim (deterministic, eta = 0, "
                      "sampling-steps steps; Song et al. 2021) or ddpm (ancestral, every one of the timesteps; "
                      "its noise is derived from each sample's latent)", choices=("ddim", "ddpm"))
    sampling_steps: int = _f(10, "ddim: denoising steps per sample (the cost of evaluation grows with it)",
                             min=1)
    channels: tuple = _f((16, 32, 64), "UNet widths, one per resolution level (each a multiple of "
                         "norm-groups; the image side must halve len - 1 times)", length=0, item=int)
    attention: tuple = _f((False, False, True), "self-attention at each level (true/false, as many as "
                          "channels)", length=0, item=bool)
    res_blocks: int = _f(1, "residual blocks per level", min=1, max=8)
    norm_groups: int = _f(8, "GroupNorm groups (FedBN keeps these layers local)", min=1)
    conditional: bool = _f(False, "class-conditional UNet: a label embedding added to the time embedding, "
                           "trained with label dropout for classifier-free guidance")
    cond_drop: float = _f(0.1, "conditional: probability that a training label is replaced by the null "
                          "label (what classifier-free guidance needs)", min=0.0, max=1.0)
    guidance_scale: float = _f(1.0, "conditional: classifier-free guidance weight w in eps_u + w (eps_c - "
                               "eps_u) (1: plain conditional sampling, one UNet pass per step; > 1: two)",
                               min=0.0)
    ema_decay: float = _f(0.999, "EMA of the UNet's weights per local step, with warm-up min(decay, "
                          "(1 + n) / (10 + n)); the EMA copy is what is sampled and travels beside the "
                          "weights (0: off)", min=0.0, max=0.99999)
    lr: float = _f(1e-3, "UNet Adam learning rate (betas 0.9, 0.999)", min=0.0, exclusive_min=True)
    clip_sample: bool = _f(True, "clip the predicted clean image to [-1, 1] at every sampling step")
    prediction: str = _f("v", "what the UNet learns to predict: v (sqrt(a) noise - sqrt(1 - a) image; Salimans & "
                         "Ho 2022; the default: anatomy within minutes on a CPU, docs/diffusion.md) or epsilon "
                         "(the noise; Ho et al. 2020)", choices=("v", "epsilon"))


@dataclass(frozen=True)
class AutoencoderConfig:
    """Latent diffusion (docs/latent-diffusion.md): the stage-1 autoencoder (``model.family =
    "autoencoder"``: MONAI's ``AutoencoderKL``, trained federated like any model) and, for stage 2
    (``model.family = "latent-diffusion"``: the ``[diffusion]`` UNet on its latents), which trained
    autoencoder every site holds frozen (``[autoencoder]``)."""

    channels: tuple = _f((16, 32, 64), "stage 1: encoder/decoder widths per level (each a multiple of "
                         "norm-groups); the latent grid's side is the image side halved len - 1 times",
                         length=0, item=int)
    latent_channels: int = _f(3, "stage 1: channels of the latent grid", min=1)
    res_blocks: int = _f(1, "stage 1: residual blocks per level", min=1, max=8)
    norm_groups: int = _f(8, "stage 1: GroupNorm groups", min=1)
    kl_weight: float = _f(1e-6, "stage 1: weight of the KL term (small, as in latent diffusion: the latents "
                          "keep detail, the diffusion model learns their distribution)", min=0.0)
    adversarial_weight: float = _f(0.0, "stage 1: weight of the patch adversarial loss (0: off; 0.01-0.1 sharpens "
                                   "reconstructions; a MONAI PatchDiscriminator D trained with the hinge loss)",
                                   min=0.0)
    discriminator_width: int = _f(16, "stage 1: channels of the patch discriminator's first layer", min=1)
    lr: float = _f(1e-4, "stage 1: Adam learning rate (betas 0.5, 0.9) of the autoencoder and its discriminator",
                   min=0.0, exclusive_min=True)
    path: str = _f("", "stage 2: the frozen autoencoder, a stage-1 run directory (its released round) or a "
                   "checkpoint file; a site may keep its copy elsewhere (sites.<id>.autoencoder.path, or the node "
                   "config of a Flower node)", site=True)
    sha256: str = _f("", "stage 2: the hash of the frozen autoencoder's weights every site must hold; pinned from "
                     "autoencoder.path when a run starts (set it to the hash the sites agreed on to check the "
                     "server's copy too)")


@dataclass(frozen=True)
class TrainConfig:
    """Local training on each client: loss, optimizer, batch size, threads (``[train]``)."""

    loss: str = _f("bce", "GAN loss: " + LOSSES.help(), choices=LOSSES.names(), site=True)
    n_critic: int = _f(5, "wgan-gp: critic steps per generator step", min=1, site=True)
    gp_lambda: float = _f(10.0, "wgan-gp: gradient-penalty weight", min=0.0, site=True)
    diffaugment: str = _f("", "DiffAugment policy for small data, e.g. color,translation,cutout", site=True)
    aux_weight: float = _f(1.0, "acgan: weight of the auxiliary classification loss", min=0.0, site=True)
    batch_size: int = _f(32, "images per local step", min=1, site=True)
    lr_g: float = _f(2e-4, "generator Adam learning rate", min=0.0, exclusive_min=True, site=True)
    lr_d: float = _f(2e-4, "discriminator Adam learning rate", min=0.0, exclusive_min=True, site=True)
    beta1: float = _f(0.5, "Adam beta1", min=0.0, max=1.0, site=True)
    beta2: float = _f(0.999, "Adam beta2", min=0.0, max=1.0, site=True)
    reset_optimizer: bool = _f(False, "reset each client's Adam state at the start of every round", site=True)
    threads: int = _f(0, "torch CPU threads for this process (0: all cores)", min=0)
    channels_last: bool = _f(True, "channels-last memory layout (measured 15-25 % faster on CPU)")
    # -- issue 13 (hardware): precision of training and evaluation
    precision: str = _f("auto", "auto (fp32; see docs/performance.md), fp32, bf16 (bfloat16 autocast), "
                        "fp16 (float16 autocast with a gradient scaler; CUDA only)",
                        choices=("auto", "fp32", "bf16", "fp16"))


@dataclass(frozen=True)
class FedConfig:
    """The federation: strategy, what is shared, server optimizer, rounds, aggregation period,
    client sampling (``[fed]``)."""

    strategy: str = _f("fedavg", STRATEGIES.help(), choices=STRATEGIES.names())
    share: tuple = _f(("G", "D"), "modules/keys that travel: [\"G\", \"D\"] is full sharing, "
                      "[\"G\"] keeps each discriminator local; fnmatch patterns allowed (diffusion: G holds the "
                      "UNet, G.unet, and its EMA, G.ema)",
                      length=0, item=str)
    mu: float = _f(0.01, "fedprox: proximal weight", min=0.0)
    fixbn_round: int = _f(5, "fixbn: rounds of ordinary BatchNorm training; from the next round on every "
                          "BatchNorm layer normalises with its aggregated running statistics, frozen", min=1)
    fedcar_samples: int = _f(256, "fedcar: images the server generates from each site's generator per round to "
                             "compare the sites (features of the seeded random network)", min=2)
    fedcar_temperature: float = _f(1.0, "fedcar: temperature of the weights, in units of the round's median "
                                   "distance to the consensus: weight ∝ n_k exp(-d_k / (temperature x median d))",
                                   min=0.0, exclusive_min=True)
    fedcar_mix: float = _f(0.5, "fedcar: share of the distance-based weights; the rest is FedAvg's sample-count "
                           "weights (0: FedAvg)", min=0.0, max=1.0)
    dyn_alpha: float = _f(0.01, "feddyn: regularisation weight", min=0.0, exclusive_min=True)
    server_lr: float = _f(0.0, "fedavgm/fedadam/fedyogi server learning rate (0: 0.3 for "
                          "fedavgm, 1e-2 for fedadam/fedyogi; see docs/results.md)", min=0.0)
    server_momentum: float = _f(0.9, "fedavgm: server momentum", min=0.0, max=1.0)
    server_beta1: float = _f(0.9, "fedadam/fedyogi: beta1", min=0.0, max=1.0)
    server_beta2: float = _f(0.99, "fedadam/fedyogi: beta2", min=0.0, max=1.0)
    server_tau: float = _f(1e-3, "fedadam/fedyogi: adaptivity tau", min=0.0, exclusive_min=True)
    server_bias_correction: bool = _f(True, "fedadam/fedyogi: Adam's bias correction of the server "
                                      "step, lr sqrt(1-beta2^t)/(1-beta1^t) at server step t")
    server_lr_decay: str = _f("none", "fedavgm/fedadam/fedyogi: the server learning rate's schedule over "
                              "fed.rounds: none (constant), cosine or linear, from server-lr at the first round "
                              "to server-lr x server-lr-floor at the last", choices=("none", "cosine", "linear"))
    server_lr_floor: float = _f(0.1, "fedavgm/fedadam/fedyogi with server-lr-decay: the last round's share of "
                                "server-lr", min=0.0, max=1.0)
    init_from: str = _f("", "start from this checkpoint's global weights (pretrain, then fine-tune)")
    # -- issue 14: a server that holds data of its own (docs/heterogeneous.md)
    server_data: str = _f("", "data the server owns and trains the global model on after each aggregation: "
                          "a built-in or sample source (phantom-ct, sample-retina), KIND:PATH (folder:/data/public, "
                          "dicom:..., nifti:..., medmnist:...) or a folder path; preprocessed like the sites' "
                          "images; \"sites\": images the sites' updated models generate each round, drawn in "
                          "proportion to their images (a FedDDPM-style server correction; a folder named sites: "
                          "folder:sites) (empty: off)")
    server_steps: int = _f(50, "local steps the server trains on fed.server-data after each aggregation "
                           "(batch train.batch-size)", min=1)
    server_images: int = _f(0, "fed.server-data: phantoms generate this many images, file and sample sources "
                            "keep a seeded subset of this many (0: data.num-images for phantoms, all files); "
                            "\"sites\": images generated per round, over all sites (0: server-steps x "
                            "train.batch-size)", min=0)
    ema: float = _f(0.0, "server-side EMA of the global model per round (0: off; e.g. 0.5); the "
                    "diffusion family also keeps its own per-step EMA (diffusion.ema-decay)",
                    min=0.0, max=0.9999)
    rounds: int = _f(20, "communication rounds", min=1)
    local_epochs: int = _f(1, "aggregation period: local epochs per round", min=1, site=True)
    local_steps: int = _f(0, "if > 0, local steps per round instead of local-epochs", min=0, site=True)
    min_local_steps: int = _f(MIN_LOCAL_STEPS, "each round trains at least this many local steps: a "
                              "small site repeats its data (0: exactly local-epochs; ignored when "
                              "local-steps is set)", min=0, site=True)
    fraction: float = _f(1.0, "fraction of clients sampled each round", min=0.0, max=1.0,
                         exclusive_min=True)
    min_clients: int = _f(1, "minimum clients sampled per round", min=1)
    # -- issue 13 (hardware)
    parallel_clients: int = _f(1, "train up to this many clients of a round at once, each in its own "
                               "process (one per GPU when several); results identical to one after "
                               "another", min=1)
    weighted: bool = _f(True, "weight FedAvg by client sample count (else a plain mean)")
    secure_aggregation: bool = _f(False, "Flower deployment only: the server learns only the (weighted) sum "
                                  "of the updates (SecAgg+, Flower's secaggplus_mod); needs privacy.validate = "
                                  "false, no robust rule or client-level DP, a strategy that averages, and at "
                                  "least 2 clients per round (docs/deployment.md)")
    secagg_clipping_range: float = _f(8.0, "secure aggregation: bound on each weight's change in one round "
                                      "(Flower's clipping_range; a larger change is refused by its node); "
                                      "the quantisation step is 2 x this / 2^22", min=0.0, exclusive_min=True)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: when, how many samples, which feature network, KID, sample grids, per-site
    scores (``[eval]``)."""

    enabled: bool = _f(True, "evaluate at all (false: no metrics but losses, no sample grids)")
    every: int = _f(1, "evaluate every N rounds (0: only before training and at the end)", min=0)
    num_samples: int = _f(1000, "generated images per Fréchet distance (volumes, data.dims = 3: 64 unless set, "
                                "each scored as slices along three axes)", min=2)
    max_real: int = _f(0, "real images per client for statistics (0: all)", min=0)
    feature_extractor: str = _f("auto", EXTRACTORS.help() + "; `fedsynth weights fetch NAME` gets weights",
                                choices=EXTRACTORS.names())
    inception_weights: str = _f("", "path to the FID Inception weights "
                                "(weights-inception-2015-12-05-6726825d.pth); never downloaded")
    kid_subsets: int = _f(50, "KID: number of random subsets", min=1)
    kid_subset_size: int = _f(100, "KID: images per subset", min=2)
    grid_size: int = _f(64, "images in each sample grid (fixed latents)", min=1)
    per_site: bool = _f(True, "also score the global model on each client's own data (fairness)")
    holdout: float = _f(0.1, "share of each site's images kept out of training, seeded: half selects the best "
                        "round, half is what distances are reported against (off with a notice when a site would "
                        "keep fewer than 10; 0: off, distances against the training images)", min=0.0, max=0.9)
    local_every: int = _f(5, "score each site's own local model (the studies' per-client protocol) every N rounds "
                          "and at the last; the global model is scored every eval.every rounds (0: only at the last)",
                          min=0)
    last_k: int = _f(3, "a run's summary score (sweeps, compare): the median of its last k evaluations, beside "
                     "the final one (one evaluation of a GAN swings 2-5x)", min=1)
    volume_slices: int = _f(0, "volumes: slices per axis whose features are scored (evenly spaced; 0: all)",
                            min=0)
    bf16: bool = _f(False, "generate evaluation samples under bfloat16 autocast: ~2.5x faster on "
                    "CPUs with AVX512-BF16/AMX, slower elsewhere; numbers shift slightly")


@dataclass(frozen=True)
class PrivacyConfig:
    """Privacy and robustness: DP-SGD, client-level DP, update validation, robust aggregation
    (``[privacy]``)."""

    dp_sgd: bool = _f(False, "sample-level DP-SGD on the network that sees real images: each client's "
                      "discriminator (gan: needs model.d-norm = group or none; loss bce or hinge), "
                      "denoising UNet (diffusion, latent-diffusion: its guarantee covers stage 2 only, the "
                      "frozen autoencoder's training counts apart) or autoencoder (stage 1, without its "
                      "adversarial loss)", site=True)
    dp_noise: float = _f(1.0, "DP-SGD noise multiplier sigma", min=0.0, site=True)
    dp_clip: float = _f(1.0, "DP-SGD per-sample gradient clip norm", min=0.0, exclusive_min=True, site=True)
    dp_delta: float = _f(1e-5, "delta for the reported (epsilon, delta)", min=0.0, max=1.0,
                         exclusive_min=True)
    client_dp: bool = _f(False, "client-level DP at the server: clip each update, add noise")
    client_dp_clip: float = _f(0.1, "client-level DP: update norm bound", min=0.0, exclusive_min=True)
    client_dp_noise: float = _f(1.0, "client-level DP: noise multiplier", min=0.0)
    robust: str = _f("none", "robust aggregation: " + ROBUST_RULES.help(), choices=ROBUST_RULES.names())
    trim: float = _f(0.2, "trimmed-mean: fraction dropped at each end", min=0.0, max=0.49)
    byzantine: int = _f(1, "krum/multi-krum: number of clients assumed malicious", min=0)
    clip_norm: float = _f(0.0, "clip: bound on each update's norm (0: the round's median norm)", min=0.0)
    validate: bool = _f(True, "reject updates with NaN/Inf, wrong keys, shapes or dtypes")
    outlier_factor: float = _f(5.0, "reject an update whose norm exceeds this many times the "
                               "median of the others' (0: off)", min=0.0)


@dataclass(frozen=True)
class FaultsConfig:
    """Simulated faults for testing the defences: attackers and drop-outs (``[faults]``)."""

    attack: str = _f("none", "simulate malicious clients: scale, sign-flip, random, nan",
                     choices=("none", "scale", "sign-flip", "random", "nan"))
    attackers: tuple = _f((), "ids of the attacking clients, e.g. [\"0\"]", length=0, item=str,
                          allow_empty=True)
    attack_scale: float = _f(10.0, "scale of scaled / sign-flipped / random updates", min=0.0)
    dropout: float = _f(0.0, "probability that a sampled client fails mid-round", min=0.0, max=1.0)
    dropout_schedule: tuple = _f((), "forced failures as \"round:client\", e.g. [\"3:1\"]",
                                 length=0, item=str, allow_empty=True)


@dataclass(frozen=True)
class RunOptions:
    """The run itself: seed, name, output folder, checkpoints kept (``[run]``)."""

    seed: int = _f(0, "run seed; every random draw derives from it", min=0)
    name: str = _f("", "short description used in the run directory name (default: derived)")
    out_dir: str = _f("runs", "parent folder of numbered run directories")
    keep_checkpoints: int = _f(2, "how many round checkpoints to keep (the newest)", min=1)
    # experiment tracking (the optional extra: pip install 'fedsynth[tracking]'); see fedsynth.report.tracking
    tensorboard: bool = _f(False, "also write TensorBoard event files to <run dir>/tensorboard/ (scalars per "
                           "client and global, sample grids)")
    mlflow_uri: str = _f("", "also log to MLflow at this tracking URI, e.g. sqlite:///mlflow.db or "
                         "http://host:5000 (parameters, metrics per round, report and checkpoints); empty: off")
    mlflow_experiment: str = _f("fedsynth", "MLflow experiment the run is logged under (created if missing)")
    # -- issue 13 (hardware): where tensors live and how reproducible the kernels are
    device: str = _f("auto", "auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps: models, "
                     "batches, the feature network and evaluation run there")
    deterministic: bool = _f(False, "deterministic kernels only (torch.use_deterministic_algorithms, "
                             "cuDNN benchmark off): the same seed on the same device gives the same "
                             "weights on GPUs too; CPU runs are deterministic either way")


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "preprocess": PreprocessConfig,
    "partition": PartitionConfig,
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "autoencoder": AutoencoderConfig,
    "train": TrainConfig,
    "fed": FedConfig,
    "eval": EvalConfig,
    "privacy": PrivacyConfig,
    "faults": FaultsConfig,
    "run": RunOptions,
}


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration of one run."""

    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    run: RunOptions = field(default_factory=RunOptions)
    # -- issue 14: per-site overrides, ``((site id, (("model.ndf", 32), ...)), ...)``, validated
    # (:func:`check_site_overrides`); written as ``[sites.<id>.<section>]`` tables (docs/heterogeneous.md)
    sites: tuple = ()

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Kebab-case nested dict, as written to ``config.toml`` (``sites`` only when some site
        overrides a key, so configs without overrides read as before)."""
        out: dict[str, Any] = {
            section: {_kebab(f.name): getattr(getattr(self, section), f.name)
                      for f in dataclasses.fields(cls)}
            for section, cls in SECTIONS.items()
        }
        if self.sites:
            out["sites"] = {cid: _nest(dict(body)) for cid, body in self.sites}
        return out

    def site_overrides(self, cid: str) -> dict[str, Any]:
        """Site ``cid``'s overrides as ``{"section.key": value}`` (empty: it runs the run's settings)."""
        return dict(next((body for c, body in self.sites if c == str(cid)), ()))

    def for_site(self, cid: str) -> "Config":
        """The configuration site ``cid`` trains with: this one with its ``[sites.<cid>]`` overrides."""
        return apply_overrides(self, self.site_overrides(cid))

    def to_toml(self) -> str:
        """TOML (tomli_w), with each array of plain values on one line: ``channels = [16, 32, 64]``."""
        def one_line(m: re.Match) -> str:
            return "= [" + ", ".join(x.strip().rstrip(",") for x in m.group(1).splitlines()) + "]"
        return re.sub(r"= \[\n((?:    [^\n\[\]{}]+,\n)+)\]", one_line, tomli_w.dumps(self.to_dict()))


def _nest(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"model.ndf": 32}`` -> ``{"model": {"ndf": 32}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def site_keys() -> list[str]:
    """The keys a site may set for itself (``site`` in the field's metadata), as ``section.key``."""
    return [f"{section}.{_kebab(f.name)}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
            if f.metadata.get("site")]


def _part_travels(part: str, patterns: Sequence[str]) -> bool:
    """Whether ``fed.share`` sends weights of network ``part`` (``"G"``, ``"D"``): the same rule
    as :func:`fedsynth.updates.shared_keys`, on a weight of that network."""
    from fnmatch import fnmatchcase
    probe = f"{part}.weight"
    return any(p == part or probe.startswith(p + ".") or fnmatchcase(probe, p) or fnmatchcase(part, p)
               for p in patterns)


def check_site_overrides(cfg: "Config", cid: str, overrides: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate site ``cid``'s overrides ``{"section.key": value}`` against ``cfg``; return them typed.

    Only keys marked per-site may differ; a key that shapes a network (``model.ndf`` shapes D)
    may differ only where that network stays on the site (``fed.share``). ``where`` is how the
    user wrote them (``"config key 'sites.1.'"`` or ``"node config key '"``): every error names it.
    """
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        at = f"{where}{key}'"
        section, _, name = key.partition(".")
        cls = SECTIONS.get(section)
        f = {x.name: x for x in dataclasses.fields(cls)}.get(_snake(name)) if cls is not None and name else None
        if f is None or "_" in name:
            raise UserError(f"{at}: unknown config key '{key}' for site {cid}")
        part = f.metadata.get("site")
        if not part:
            raise UserError(f"{at}: '{key}' cannot differ between sites; a site may set only "
                            f"{', '.join(site_keys())}")
        typed = _coerce_at(at, value, f)
        same = typed == getattr(getattr(cfg, section), f.name)  # agrees with the run: nothing changes
        if isinstance(part, str) and _part_travels(part, cfg.fed.share) and not same:
            raise UserError(f"{at}: site {cid} sets '{key}', which shapes {part}, and {part} travels "
                            f"(fed.share = {list(cfg.fed.share)}): every site must build the shared part the same "
                            f"way; keep {part} on the sites (e.g. fed.share = [\"{'G' if part == 'D' else 'D'}\"]) "
                            f"or drop the override")
        out[key] = typed
    site = apply_overrides(cfg, out)
    try:
        _check_cross_field(site)
    except UserError as e:
        raise UserError(f"site {cid} (its overrides): {e}") from None
    return out


def _coerce_at(at: str, value: Any, f: dataclasses.Field) -> Any:
    """:func:`_coerce`, its errors naming ``at`` (e.g. ``config key 'sites.1.model.ndf'``)."""
    try:
        return _coerce("?", value, f)
    except UserError as e:
        raise UserError(str(e).replace("config key '?'", at)) from None


def apply_overrides(cfg: "Config", overrides: Mapping[str, Any]) -> "Config":
    """``cfg`` with validated ``{"section.key": value}`` overrides applied."""
    if not overrides:
        return cfg
    changes: dict[str, Any] = {}
    for section, body in _nest(overrides).items():
        changes[section] = dataclasses.replace(getattr(cfg, section), **{_snake(k): v for k, v in body.items()})
    return dataclasses.replace(cfg, **changes)


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _snake(name: str) -> str:
    return name.replace("-", "_")


def _coerce(key: str, value: Any, f: dataclasses.Field) -> Any:
    """Check ``value`` against the field's type and constraints; return the typed value."""
    kind = type(f.default)
    meta = f.metadata
    if kind is tuple and meta.get("item") is str:
        if not isinstance(value, (list, tuple)) or (not value and not meta.get("allow_empty")) or not all(
                isinstance(v, str) and v for v in value):
            raise UserError(f"config key '{key}' must be a non-empty list of strings, got {value!r}")
        return tuple(value)
    if kind is tuple and meta.get("item") in (int, bool):
        item = meta["item"]
        ok = isinstance(value, (list, tuple)) and value and all(
            isinstance(v, bool) if item is bool else (isinstance(v, int) and not isinstance(v, bool) and v > 0)
            for v in value)
        if not ok:
            what = "true/false values" if item is bool else "positive integers"
            raise UserError(f"config key '{key}' must be a non-empty list of {what}, got {value!r}")
        return tuple(value)
    if kind is tuple:
        n = meta["length"]
        if not isinstance(value, (list, tuple)) or len(value) != n or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise UserError(f"config key '{key}' must be a list of {n} numbers, got {value!r}")
        lo, hi = meta.get("min"), meta.get("max")
        if any((lo is not None and v < lo) or (hi is not None and v > hi) for v in value):
            raise UserError(f"config key '{key}' values must lie in [{lo}, {hi}], got {value!r}")
        return tuple(float(v) for v in value)
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key '{key}' must be true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key '{key}' must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key '{key}' must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise UserError(f"config key '{key}' must be finite, got {value!r}")
    elif kind is str:
        if not isinstance(value, str):
            raise UserError(f"config key '{key}' must be a string, got {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        choices = ", ".join(str(c) for c in meta["choices"])
        raise UserError(f"config key '{key}' must be one of {choices}; got {value!r}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("exclusive_min") and value == lo)):
        op = ">" if meta.get("exclusive_min") else ">="
        raise UserError(f"config key '{key}' must be {op} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise UserError(f"config key '{key}' must be <= {hi}, got {value!r}")
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value``; the value is a TOML literal, or a bare string."""
    if "=" not in text:
        raise UserError(f"--set expects section.key=value, got {text!r}")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare word such as phantom-ct
    return key, value


#: eval.num-samples of a volume run (data.dims = 3) that does not set it: each volume gives
#: 3 x eval.volume-slices slices to score, so 64 volumes at 32^3 are 6,144 slices per evaluation
VOLUME_NUM_SAMPLES = 64


def build_config(tree: Mapping[str, Any] | None = None,
                 overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a validated :class:`Config` from a nested (kebab-case) mapping plus overrides."""
    merged: dict[str, dict[str, Any]] = {}
    sites: dict[str, dict[str, Any]] = {}  # site id -> {"section.key": value}
    for section, body in (tree or {}).items():
        if section == "sites":
            _collect_sites(body, sites)
            continue
        if section not in SECTIONS:
            raise UserError(f"unknown config section '[{section}]' "
                            f"(known: {', '.join(SECTIONS)})")
        if not isinstance(body, Mapping):
            raise UserError(f"config section '[{section}]' must be a table")
        merged.setdefault(section, {}).update(body)
    for text in overrides:
        key, value = parse_override(text)
        if "." not in key:
            raise UserError(f"unknown config key '{key}' (use section.key, e.g. fed.rounds)")
        section, name = key.split(".", 1)
        if section == "sites":  # sites.<id>.<section>.<key>
            parts = name.split(".", 2)
            if len(parts) != 3:
                raise UserError(f"config key '{key}': a site's override is sites.<id>.<section>.<key>, "
                                f"e.g. sites.1.model.ndf=32")
            sites.setdefault(parts[0], {})[f"{parts[1]}.{parts[2]}"] = value
            continue
        if section not in SECTIONS:
            import difflib
            close = difflib.get_close_matches(section, list(SECTIONS), n=1)
            hint = f"did you mean '{close[0]}.{name}'? " if close else ""
            raise UserError(f"unknown config key '{key}' ({hint}unknown section '{section}'; "
                            f"known: {', '.join(SECTIONS)})")
        f = {x.name: x for x in dataclasses.fields(SECTIONS[section])}.get(_snake(name))
        if f is not None and type(f.default) is str and not isinstance(value, str):
            value = text.split("=", 1)[1].strip()  # a string key: `nan`, `inf`, `1e3` stay text
        merged.setdefault(section, {})[name] = value

    if merged.get("data", {}).get("dims") == 3 and not any(_snake(k) == "num_samples" for k in merged.get("eval", {})):
        # a volume is scored as 3 x S slices: 1,000 of them would take minutes per evaluation
        merged.setdefault("eval", {})["num-samples"] = VOLUME_NUM_SAMPLES
    built = {}
    for section, cls in SECTIONS.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for name, value in merged.get(section, {}).items():
            key = f"{section}.{name}"
            f = fields.get(_snake(name))
            if f is None:
                import difflib
                known = ", ".join(_kebab(n) for n in fields)
                close = difflib.get_close_matches(name, [_kebab(n) for n in fields], n=1)
                hint = f"did you mean '{section}.{close[0]}'? " if close else ""
                raise UserError(f"unknown config key '{key}' ({hint}known in [{section}]: {known})")
            if "_" in name:
                raise UserError(f"unknown config key '{key}': keys are kebab-case, "
                                f"write '{section}.{_kebab(name)}'")
            kwargs[f.name] = _coerce(key, value, f)
        built[section] = cls(**kwargs)
    cfg = Config(**built)
    _check_cross_field(cfg)
    return _with_sites(cfg, sites)


def _collect_sites(body: Any, sites: dict[str, dict[str, Any]]) -> None:
    """``[sites.<id>.<section>]`` tables of a TOML tree into ``{id: {"section.key": value}}``."""
    if not isinstance(body, Mapping):
        raise UserError("config section '[sites]' must hold one table per site, e.g. [sites.1.model] ndf = 32")
    for cid, site in body.items():
        if not isinstance(site, Mapping):
            raise UserError(f"config key 'sites.{cid}' must be a table, e.g. [sites.{cid}.model] ndf = 32")
        for section, keys in site.items():
            if not isinstance(keys, Mapping):
                raise UserError(f"config key 'sites.{cid}.{section}' must be a table of keys, "
                                f"e.g. [sites.{cid}.model] ndf = 32")
            for name, value in keys.items():
                sites.setdefault(str(cid), {})[f"{section}.{name}"] = value


def _with_sites(cfg: Config, sites: Mapping[str, Mapping[str, Any]]) -> Config:
    """``cfg`` with its validated per-site overrides. Sites are the partition's clients,
    numbered ``0`` to ``partition.clients - 1`` (the ``client-id`` of a Flower node)."""
    n = cfg.partition.clients
    out = []
    for cid, flat in sites.items():
        if not re.fullmatch(r"\d+", cid) or int(cid) >= n:
            raise UserError(f"config key 'sites.{cid}': there is no site '{cid}': sites are numbered 0 to {n - 1} "
                            f"(partition.clients = {n})")
        typed = check_site_overrides(cfg, cid, flat, f"config key 'sites.{cid}.")
        if typed:
            out.append((str(int(cid)), tuple(sorted(typed.items()))))
    return dataclasses.replace(cfg, sites=tuple(sorted(out, key=lambda x: int(x[0])))) if out else cfg


def _check_cross_field(cfg: Config) -> None:
    if cfg.data.source.startswith("phantom-") and cfg.data.num_images < cfg.partition.clients:
        raise UserError(f"config key 'data.num-images' ({cfg.data.num_images}) must be at least "
                        f"'partition.clients' ({cfg.partition.clients}): every client needs data")
    if cfg.fed.min_clients > cfg.partition.clients:
        raise UserError(f"config key 'fed.min-clients' ({cfg.fed.min_clients}) exceeds "
                        f"'partition.clients' ({cfg.partition.clients})")
    if SOURCES[cfg.data.source].kind == "files" and not cfg.data.path:
        raise UserError(f"config key 'data.path' is required for data.source = '{cfg.data.source}'")
    q = cfg.preprocess.quantiles
    if q[0] >= q[1]:
        raise UserError(f"config key 'preprocess.quantiles' must be [low, high] with low < high, got {list(q)}")
    r = cfg.data.slice_range
    if r[0] >= r[1]:
        raise UserError(f"config key 'data.slice-range' must be [start, stop] with start < stop, got {list(r)}")
    if cfg.model.d_conditioning != "none" and cfg.model.conditional == "none":
        raise UserError("config key 'model.d-conditioning' needs a conditional generator "
                        "(set model.conditional = 'multiply' or 'concat')")
    if cfg.model.d_pretrained and cfg.model.d_arch == "dcgan":
        raise UserError("config key 'model.d-pretrained' needs a backbone discriminator "
                        f"(model.d-arch = {', '.join(BACKBONES.names()[:-1])} or {BACKBONES.names()[-1]})")
    if cfg.fed.init_from and not Path(cfg.fed.init_from).expanduser().is_file():
        raise UserError(f"config key 'fed.init-from': checkpoint not found: {cfg.fed.init_from}")
    pv = cfg.privacy
    if pv.dp_sgd and cfg.model.family == "gan":
        if cfg.model.d_arch != "dcgan":
            raise UserError("config key 'privacy.dp-sgd' needs model.d-arch = 'dcgan' (backbones "
                            "hold BatchNorm or layers Opacus cannot take per-sample gradients of)")
    if cfg.data.dims == 3:
        _check_volumes(cfg)
    elif cfg.data.source == "phantom-mr":
        raise UserError("config key 'data.source' = 'phantom-mr' makes head MR volumes: set data.dims = 3")
    if cfg.model.family in ("diffusion", "latent-diffusion"):
        _check_diffusion(cfg)
    elif cfg.model.family == "autoencoder":
        _check_autoencoder(cfg)
    elif pv.dp_sgd:
        if cfg.model.d_norm == "batch":
            raise UserError("config key 'privacy.dp-sgd' needs model.d-norm = 'group' or 'none' "
                            "(BatchNorm mixes samples, so per-sample gradients are undefined)")
        if cfg.train.loss == "wgan-gp" or cfg.train.diffaugment or cfg.model.spectral_norm:
            raise UserError("config key 'privacy.dp-sgd' supports loss bce or hinge, without "
                            "diffaugment or spectral norm")
    if pv.client_dp and pv.robust != "none":
        raise UserError("config keys 'privacy.client-dp' and 'privacy.robust' cannot be combined")
    if cfg.fed.secure_aggregation:
        _check_secure_aggregation(cfg)
    for item in cfg.faults.dropout_schedule:
        if not re.fullmatch(r"\d+:[^:]+", item):
            raise UserError(f"config key 'faults.dropout-schedule': {item!r} is not 'round:client'")
    if cfg.run.mlflow_uri and (not cfg.run.mlflow_experiment.strip() or cfg.run.mlflow_uri != cfg.run.mlflow_uri.strip()):
        raise UserError("config keys 'run.mlflow-uri' / 'run.mlflow-experiment': the URI must have no surrounding "
                        "spaces and the experiment name must not be empty")
    _check_hardware(cfg)
    if server_source(cfg.fed.server_data) == (SERVER_SITES, ""):  # else its syntax; the files are checked when it loads
        _check_server_sites(cfg)
    if cfg.eval.inception_weights and cfg.eval.feature_extractor == "random":
        raise UserError("config key 'eval.inception-weights' is set but "
                        "'eval.feature-extractor' is 'random'")


#: ``fed.server-data`` for the samples of the sites' updated models (a server-side correction)
SERVER_SITES = "sites"


def feature_network(name: str, option: str = "--extractor") -> str:
    """``name`` if it names a feature network (not ``auto``, which picks one), else a
    :class:`UserError` naming ``option`` and the choices."""
    if name not in FEATURE_NETWORKS:
        raise UserError(f"{option} {name!r}: choose from {', '.join(FEATURE_NETWORKS)}")
    return name


def server_source(spec: str) -> tuple[str, str] | None:
    """``fed.server-data`` as ``(data.source, data.path)``: a built-in or sample source by name,
    ``KIND:PATH`` for a file source, or a bare path (a folder); ``("sites", "")`` for
    :data:`SERVER_SITES`; None when empty."""
    if not spec.strip():
        return None
    if spec == SERVER_SITES:
        return SERVER_SITES, ""
    files = [n for n in SOURCES.names() if SOURCES[n].kind == "files"]
    if spec in SOURCES:
        if SOURCES[spec].kind == "files":
            raise UserError(f"config key 'fed.server-data': '{spec}' needs a path: write {spec}:PATH")
        return spec, ""
    kind, sep, path = spec.partition(":")
    if sep and re.fullmatch(r"[a-z][a-z0-9-]+", kind):
        if kind not in files:
            raise UserError(f"config key 'fed.server-data': unknown source kind '{kind}' in {spec!r} "
                            f"(KIND:PATH with KIND one of {', '.join(files)}; or a built-in source by name)")
        if not path:
            raise UserError(f"config key 'fed.server-data': {spec!r} names no path")
        return kind, path
    return "folder", spec


def _check_server_sites(cfg: Config) -> None:
    """``fed.server-data = "sites"`` trains the global model on samples of every site's own
    update: refused where there is no global model, no set of site models, or where a privacy
    or robustness setting promises something those samples would break."""
    fed, pv = cfg.fed, cfg.privacy
    why = STRATEGIES[fed.strategy].server_sites
    if why:
        raise UserError(f"config key 'fed.server-data' = 'sites': fed.strategy = '{fed.strategy}' {why}")
    conflicts = []
    if fed.secure_aggregation:
        conflicts.append("fed.secure-aggregation = true (the server sees only the sum of the updates)")
    if pv.client_dp:
        conflicts.append("privacy.client-dp = true (the samples come from each site's unclipped, un-noised "
                         "model, so the released model would lose the client-level guarantee)")
    if pv.robust != "none":
        conflicts.append(f"privacy.robust = '{pv.robust}' (a site the rule outvotes would still train the global "
                         f"model through its share of the samples)")
    if conflicts:
        raise UserError("config key 'fed.server-data' = 'sites' samples each site's own update, so it cannot be "
                        "used with: " + "; ".join(conflicts))


def _check_volumes(cfg: Config) -> None:
    """``data.dims = 3``: the sources that hold volumes, and what is built for them so far."""
    if not SOURCES[cfg.data.source].volumes:
        volumes = [n for n in SOURCES.names() if SOURCES[n].volumes]
        raise UserError(f"config key 'data.dims' = 3 needs volumes: data.source must be one of "
                        f"{', '.join(volumes)}, not '{cfg.data.source}'")
    m = cfg.model
    if m.family == "gan" and (m.g_arch != "dcgan" or m.d_arch != "dcgan"):
        raise UserError("config key 'data.dims' = 3 needs model.g-arch = 'dcgan' and model.d-arch = 'dcgan' "
                        "(the volumetric DCGAN; the other networks are 2-D)")
    if cfg.train.diffaugment:
        raise UserError("config key 'train.diffaugment' augments 2-D images; leave it empty with data.dims = 3")
    if cfg.preprocess.channels == "rgb":
        raise UserError("config key 'preprocess.channels' = 'rgb': volumes are gray (data.dims = 3)")


def _check_diffusion(cfg: Config) -> None:
    """The ``[diffusion]`` keys that constrain each other (the UNet's shape, the schedule)."""
    d = cfg.diffusion
    _no_fixbn(cfg, "the diffusion UNet")
    if cfg.model.family == "latent-diffusion" and not cfg.autoencoder.path:
        raise UserError("model.family = 'latent-diffusion' needs config key 'autoencoder.path': the released "
                        "model of a stage-1 run (model.family = 'autoencoder'), frozen at every site")
    if len(d.attention) != len(d.channels):
        raise UserError(f"config key 'diffusion.attention' needs one true/false per level of 'diffusion.channels' "
                        f"({len(d.channels)} levels), got {len(d.attention)}")
    bad = [c for c in d.channels if c % d.norm_groups]
    if bad:
        raise UserError(f"config key 'diffusion.channels': every width must be a multiple of "
                        f"'diffusion.norm-groups' ({d.norm_groups}); {bad} are not")
    if cfg.model.family == "diffusion" and cfg.data.image_size >> (len(d.channels) - 1) < 2:
        raise UserError(f"config key 'diffusion.channels' has {len(d.channels)} levels: the image side "
                        f"({cfg.data.image_size} px) halves {len(d.channels) - 1} times, to less than 2 px; "
                        f"use fewer levels")
    if d.sampler == "ddim" and d.sampling_steps > d.timesteps:
        raise UserError(f"config key 'diffusion.sampling-steps' ({d.sampling_steps}) exceeds "
                        f"'diffusion.timesteps' ({d.timesteps})")
    if d.schedule != "cosine" and d.beta_start >= d.beta_end:
        raise UserError(f"config keys 'diffusion.beta-start' ({d.beta_start}) and 'diffusion.beta-end' "
                        f"({d.beta_end}): the start must be below the end")
    if cfg.model.conditional != "none" or cfg.model.d_conditioning != "none":
        raise UserError("config keys 'model.conditional' / 'model.d-conditioning' belong to the GAN family; "
                        "a class-conditional diffusion model is 'diffusion.conditional = true'")


def _no_fixbn(cfg: Config, what: str) -> None:
    does = {"fixbn": "freezes", "fbn": "aggregates the pooled data's"}.get(cfg.fed.strategy)
    if does:
        raise UserError(f"config key 'fed.strategy' = '{cfg.fed.strategy}' {does} BatchNorm statistics; {what} "
                        f"normalises with GroupNorm (no running statistics): use fedavg or fedbn")


def _check_autoencoder(cfg: Config) -> None:
    """The ``[autoencoder]`` keys of stage 1 that constrain each other and the data."""
    a = cfg.autoencoder
    _no_fixbn(cfg, "the autoencoder")
    bad = [c for c in a.channels if c % a.norm_groups]
    if bad:
        raise UserError(f"config key 'autoencoder.channels': every width must be a multiple of "
                        f"'autoencoder.norm-groups' ({a.norm_groups}); {bad} are not")
    if cfg.data.image_size >> (len(a.channels) - 1) < 2:
        raise UserError(f"config key 'autoencoder.channels' has {len(a.channels)} levels: the image side "
                        f"({cfg.data.image_size} px) halves {len(a.channels) - 1} times, to less than 2 px; "
                        f"use fewer levels")
    if cfg.privacy.dp_sgd and a.adversarial_weight > 0:
        raise UserError("config key 'privacy.dp-sgd' privatises the autoencoder; its patch discriminator also sees "
                        "real images: set autoencoder.adversarial-weight = 0 with DP-SGD")
    if cfg.model.conditional != "none" or cfg.model.d_conditioning != "none":
        raise UserError("config keys 'model.conditional' / 'model.d-conditioning' belong to the GAN family; the "
                        "autoencoder is not conditional (condition the stage-2 UNet: diffusion.conditional = true)")


def _check_secure_aggregation(cfg: Config) -> None:
    """Secure aggregation shows the server only the sum of the updates: everything that needs a
    single client's update cannot run beside it. Neither side is switched off silently -- a
    hospital that asked for validation or a robust rule must not lose it without saying so."""
    pv = cfg.privacy
    conflicts = []
    if pv.validate:
        conflicts.append("privacy.validate = true (per-update validation checks each update; set it to false)")
    if pv.robust != "none":
        conflicts.append(f"privacy.robust = '{pv.robust}' (a robust rule ranks, trims or clips each update)")
    if pv.client_dp:
        conflicts.append("privacy.client-dp = true (clips each update before the noise)")
    why = STRATEGIES[cfg.fed.strategy].secagg
    if why:
        conflicts.append(f"fed.strategy = '{cfg.fed.strategy}' ({why})")
    if conflicts:
        raise UserError("config key 'fed.secure-aggregation' = true shows the server only the sum of the updates, "
                        "so these keys, which need each client's update, cannot be used with it: "
                        + "; ".join(conflicts))

# -- issue 13 (hardware): keys that say where a run computes, not what: a resume may change them
# (a checkpoint written on a GPU continues on a CPU), and checkpoints compare configs without them
HARDWARE_KEYS = ("run.device", "fed.parallel-clients", "train.threads")


#: keys a resume may raise: a finished run is extended by more rounds (recorded in run.json)
EXTEND_KEYS = ("fed.rounds",)


def without_hardware(tree: dict[str, dict[str, Any]], also: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """A ``Config.to_dict()`` tree without :data:`HARDWARE_KEYS` and ``also`` (what must match to resume)."""
    drop: dict[str, set[str]] = {}
    for key in HARDWARE_KEYS + also:
        section, name = key.split(".", 1)
        drop.setdefault(section, set()).add(name)
    return {sec: {k: v for k, v in body.items() if k not in drop.get(sec, ())} for sec, body in tree.items()}


# -- issue 13 (hardware): the syntax of run.device; whether the device exists is checked where
# torch is imported (fedsynth.train.device.resolve_device)
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _check_hardware(cfg: Config) -> None:
    if not DEVICE_PATTERN.fullmatch(cfg.run.device):
        raise UserError(f"config key 'run.device' must be auto, cpu, cuda, cuda:N or mps; got {cfg.run.device!r}")
    if cfg.train.precision == "fp16" and cfg.run.device in ("cpu", "mps"):
        raise UserError(f"config key 'train.precision' = 'fp16' needs a CUDA device (run.device is "
                        f"{cfg.run.device!r}); use bf16 on CPUs")
    if cfg.train.precision in ("bf16", "fp16") and cfg.privacy.dp_sgd:
        raise UserError("config key 'privacy.dp-sgd' needs train.precision = 'fp32' or 'auto' (per-sample "
                        "gradient clipping is done in full precision)")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a TOML file (optional) and apply ``--set`` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            tree = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"config file {p} is not valid TOML: {e}") from None
    return build_config(tree, overrides)


def _type_name(f: dataclasses.Field) -> str:
    kind, meta = type(f.default), f.metadata
    if kind is tuple and meta.get("item") is str:
        return "list of strings"
    if kind is tuple and meta.get("item") is int:
        return "list of integers"
    if kind is tuple and meta.get("item") is bool:
        return "list of booleans"
    if kind is tuple:
        return f"list of {meta['length']} numbers"
    return {bool: "bool", int: "int", float: "float", str: "string"}[kind]


def _constraint_text(f: dataclasses.Field) -> str:
    meta = f.metadata
    if "choices" in meta:
        return "one of " + ", ".join(f"`{c}`" for c in meta["choices"])
    lo, hi = meta.get("min"), meta.get("max")
    parts = []
    if lo is not None:
        parts.append(f"{'>' if meta.get('exclusive_min') else '>='} {lo}")
    if hi is not None:
        parts.append(f"<= {hi}")
    return ", ".join(parts)


def key_reference() -> list[dict[str, str]]:
    """Every configuration key, in declaration order, as the documentation shows it.

    One dict per key with ``section``, ``key`` (kebab-case, as in TOML), ``type``, ``default``
    (a TOML literal), ``help``, ``allowed`` (choices or bounds; empty if none) and ``site``
    (``"yes"`` if a site may set it for itself, ``"shapes D"`` if so where D stays local; empty if not). The field
    metadata is the single source: the configuration reference in the docs is generated from
    this at build time (``docs/hooks.py``) and validation reads the same metadata.
    """
    out = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            value = list(f.default) if isinstance(f.default, tuple) else f.default
            default = json.dumps(value)  # a TOML literal for every type used here
            site = f.metadata.get("site")
            out.append({"section": section, "key": _kebab(f.name), "type": _type_name(f),
                        "default": default, "help": f.metadata["help"], "allowed": _constraint_text(f),
                        "site": "" if not site else (f"shapes {site}" if isinstance(site, str) else "yes")})
    return out
