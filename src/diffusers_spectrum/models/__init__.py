"""Models: diffusers subclasses that add spectral training to stock architectures."""

from .autoencoder_kl_spectral import SpectrumAutoencoderKL, SpectrumAutoencoderKLTrainingOutput


__all__ = ["SpectrumAutoencoderKL", "SpectrumAutoencoderKLTrainingOutput"]
