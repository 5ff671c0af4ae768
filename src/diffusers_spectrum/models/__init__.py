"""Models: diffusers subclasses that add spectral training to stock architectures."""

from .autoencoder_kl_spectral import SpectrumAutoencoderKL, SpectrumAutoencoderKLTrainingOutput, load_autoencoder
from .dit_repa import REPADiTTransformer2DModel, REPADiTTransformer2DModelOutput, drop_labels


__all__ = [
    "REPADiTTransformer2DModel",
    "REPADiTTransformer2DModelOutput",
    "SpectrumAutoencoderKL",
    "SpectrumAutoencoderKLTrainingOutput",
    "drop_labels",
    "load_autoencoder",
]
