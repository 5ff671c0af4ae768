"""Models: diffusers subclasses that add spectral training to stock architectures, their loaders and presets."""

from .autoencoder_kl_spectral import LatentStats, SpectrumAutoencoderKL, SpectrumAutoencoderKLTrainingOutput
from .dit_repa import (
    REPA_DEFAULTS,
    REPADiTTransformer2DModel,
    REPADiTTransformer2DModelOutput,
    check_class_labels,
    default_repa_depth,
    drop_labels,
)
from .encoders import RepresentationEncoder, resample_position_embedding
from .latent_conventions import (
    LATENT_CONVENTIONS,
    check_vae_config,
    fold_latent_shift,
    latent_convention,
    latents_from_vae,
    latents_to_vae,
)
from .loading import load_autoencoder
from .unet_presets import UNET_PRESETS, build_unet


__all__ = [
    "LATENT_CONVENTIONS",
    "LatentStats",
    "REPADiTTransformer2DModel",
    "REPADiTTransformer2DModelOutput",
    "REPA_DEFAULTS",
    "RepresentationEncoder",
    "SpectrumAutoencoderKL",
    "SpectrumAutoencoderKLTrainingOutput",
    "UNET_PRESETS",
    "build_unet",
    "check_class_labels",
    "check_vae_config",
    "default_repa_depth",
    "drop_labels",
    "fold_latent_shift",
    "latent_convention",
    "latents_from_vae",
    "latents_to_vae",
    "load_autoencoder",
    "resample_position_embedding",
]
