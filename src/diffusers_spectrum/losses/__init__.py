"""Loss terms, each a small function returning an unreduced or scalar loss; trainers choose the weights."""

from ..spectral import esm_loss
from .alignment import VFAlignmentLoss, VFAlignmentLossOutput, vf_alignment_terms
from .alignment import adaptive_weight as vf_adaptive_weight
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
from .dct import dct_weighted_mse
from .equivariance import (
    EQ_VAE_BRANCHES,
    EquivarianceTransform,
    apply_spatial_transform,
    equivariance_targets,
    sample_equivariance_transform,
)
from .repa import repa_loss
from .spectral_regularizers import fourier_loss, radial_frequency_weights, rfft_frequency_weights, wavelet_loss
from .stft import fit_stft_resolutions, multi_resolution_stft_loss, stft_loss_terms, stft_magnitude


__all__ = [
    "EQ_VAE_BRANCHES",
    "EquivarianceTransform",
    "VFAlignmentLoss",
    "VFAlignmentLossOutput",
    "apply_spatial_transform",
    "dct_weighted_mse",
    "equivariance_targets",
    "fit_stft_resolutions",
    "multi_resolution_stft_loss",
    "rfft_frequency_weights",
    "sample_equivariance_transform",
    "stft_loss_terms",
    "stft_magnitude",
    "vf_adaptive_weight",
    "vf_alignment_terms",
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
