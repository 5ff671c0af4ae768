"""Loss terms, each a small function returning an unreduced or scalar loss; trainers choose the weights."""

from ..spectral import esm_loss
from .autoencoder import (
    FeaturePerceptualLoss,
    LPIPSLoss,
    NLayerDiscriminator,
    adaptive_discriminator_weight,
    hinge_d_loss,
    hinge_g_loss,
    lpips_available,
    reconstruction_loss,
)
from .repa import repa_loss
from .spectral_regularizers import fourier_loss, radial_frequency_weights, wavelet_loss


__all__ = [
    "FeaturePerceptualLoss",
    "LPIPSLoss",
    "NLayerDiscriminator",
    "adaptive_discriminator_weight",
    "esm_loss",
    "fourier_loss",
    "hinge_d_loss",
    "hinge_g_loss",
    "lpips_available",
    "radial_frequency_weights",
    "reconstruction_loss",
    "repa_loss",
    "wavelet_loss",
]
