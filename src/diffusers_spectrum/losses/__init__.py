"""Loss terms, each a small function returning an unreduced or scalar loss; trainers choose the weights.

Public names are imported on first use (`_lazy.lazy_namespace`, PEP 562)."""

from .._lazy import lazy_namespace


# public name -> the module that defines it (or (module, name) for a renamed export)
_LAZY_NAMES = {
    "esm_loss": "..spectral.esm",
    "VFAlignmentLoss": ".alignment",
    "VFAlignmentLossOutput": ".alignment",
    "vf_alignment_terms": ".alignment",
    "vf_adaptive_weight": (".alignment", "adaptive_weight"),
    "FeaturePerceptualLoss": ".autoencoder",
    "FourierAmplitudeLoss": ".autoencoder",
    "LPIPSLoss": ".autoencoder",
    "NLayerDiscriminator": ".autoencoder",
    "adaptive_discriminator_weight": ".autoencoder",
    "hinge_d_loss": ".autoencoder",
    "hinge_g_loss": ".autoencoder",
    "lpips_available": ".autoencoder",
    "reconstruction_loss": ".autoencoder",
    "dct_weighted_mse": ".dct",
    "EQ_VAE_BRANCHES": ".equivariance",
    "EquivarianceTransform": ".equivariance",
    "apply_spatial_transform": ".equivariance",
    "equivariance_targets": ".equivariance",
    "sample_equivariance_transform": ".equivariance",
    "repa_loss": ".repa",
    "fourier_loss": ".spectral_regularizers",
    "radial_frequency_weights": ".spectral_regularizers",
    "rfft_frequency_weights": ".spectral_regularizers",
    "wavelet_loss": ".spectral_regularizers",
    "fit_stft_resolutions": ".stft",
    "multi_resolution_stft_loss": ".stft",
    "stft_loss_terms": ".stft",
    "stft_magnitude": ".stft",
}
__getattr__, __dir__ = lazy_namespace(__name__, _LAZY_NAMES, globals())

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
    "FourierAmplitudeLoss",
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
