"""Models: diffusers subclasses that add spectral training to stock architectures, their loaders and presets.

Public names are imported on first use (`_lazy.lazy_namespace`, PEP 562)."""

from .._lazy import lazy_namespace


# public name -> the module that defines it (or (module, name) for a renamed export)
_LAZY_NAMES = {
    "DCTTransform": ".dct_transform",
    "estimate_dct_eta": ".dct_statistics",
    "estimate_dct_statistics": ".dct_statistics",
    "estimate_entropy_weights": ".dct_statistics",
    "LatentStats": ".autoencoder_kl_spectral",
    "SpectrumAutoencoderKL": ".autoencoder_kl_spectral",
    "SpectrumAutoencoderKLTrainingOutput": ".autoencoder_kl_spectral",
    "REPA_DEFAULTS": ".dit_repa",
    "REPADiTTransformer2DModel": ".dit_repa",
    "REPADiTTransformer2DModelOutput": ".dit_repa",
    "check_class_labels": ".dit_repa",
    "default_repa_depth": ".dit_repa",
    "drop_labels": ".dit_repa",
    "RepresentationEncoder": ".encoders",
    "resample_position_embedding": ".encoders",
    "LATENT_CONVENTIONS": ".latent_conventions",
    "check_vae_config": ".latent_conventions",
    "fold_latent_shift": ".latent_conventions",
    "latent_convention": ".latent_conventions",
    "latents_from_vae": ".latent_conventions",
    "latents_to_vae": ".latent_conventions",
    "load_autoencoder": ".loading",
    "AUDIO_UNET_PRESETS": ".presets",
    "DIT_PRESETS": ".presets",
    "UNET_PRESETS": ".presets",
    "VAE_PRESETS": ".presets",
    "build_audio_unet": ".presets",
    "build_transformer": ".presets",
    "build_unet": ".presets",
    "build_vae": ".presets",
}
__getattr__, __dir__ = lazy_namespace(__name__, _LAZY_NAMES, globals())

__all__ = [
    "AUDIO_UNET_PRESETS",
    "DCTTransform",
    "DIT_PRESETS",
    "LATENT_CONVENTIONS",
    "LatentStats",
    "REPADiTTransformer2DModel",
    "REPADiTTransformer2DModelOutput",
    "REPA_DEFAULTS",
    "RepresentationEncoder",
    "SpectrumAutoencoderKL",
    "SpectrumAutoencoderKLTrainingOutput",
    "UNET_PRESETS",
    "VAE_PRESETS",
    "build_audio_unet",
    "build_transformer",
    "build_unet",
    "build_vae",
    "check_class_labels",
    "check_vae_config",
    "default_repa_depth",
    "drop_labels",
    "estimate_dct_eta",
    "estimate_dct_statistics",
    "estimate_entropy_weights",
    "fold_latent_shift",
    "latent_convention",
    "latents_from_vae",
    "latents_to_vae",
    "load_autoencoder",
    "resample_position_embedding",
]
