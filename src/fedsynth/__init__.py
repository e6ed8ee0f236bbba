"""fedsynth: federated generative models (GANs, diffusion models) for medical image synthesis.

Package map
-----------
config   frozen dataclass configuration, TOML + overrides, the UserError type
data     ImageSet, built-in phantoms (x-ray, CT, H&E), partitioning among clients
models   the model families: GAN (DCGAN and backbones), diffusion (MONAI UNet)
train    one client's local GAN training: loss objects and the loop
fed      aggregation strategies (pure functions) and the in-process engine
metrics  feature extractors, mergeable statistics, Fréchet distance, KID
report   run directory, metric records, figures
cli      the ``fedsynth`` command (Typer)
"""

__version__ = "0.1.0"
