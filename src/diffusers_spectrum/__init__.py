"""diffusers-spectrum: Spectrum Matching (ESM / DSM), DoG-REPA and spectral tools for latent diffusion on diffusers."""

# diffusers' pipeline loader looks the base classes up on the library named in `model_index.json`
# (`["diffusers_spectrum", "SpectrumAutoencoderKL"]`), so they must be attributes of this package too.
from diffusers import DiffusionPipeline, ModelMixin, SchedulerMixin  # noqa: F401

from ._version import __version__  # noqa: F401
from .evaluation.analyze import analyze_vae, compare_vaes
from .evaluation.diagnostics import (
    SpectrumStatistics,
    posterior_latents,
    power_law_field,
    spectrum_summary,
    spectrum_verdict,
    verdict_from_moments,
)
from .evaluation.encoder_analysis import analyze_encoder
from .evaluation.feature_net import SmallFeatureNet, feature_net_for
from .evaluation.generation_metrics import (
    blur_separation,
    kid,
    laplacian_pyramid,
    pyramid_swd,
    sliced_wasserstein,
    spectrum_distance,
)
from .evaluation.metrics import frechet_distance, frechet_distance_from_stats, psnr, reconstruction_metrics, ssim
from .evaluation.statistics import compare_arms, holm_adjust, t_interval
from .evaluation.study_metrics import GenerationMetricSuite
from .losses import (
    EquivarianceTransform,
    VFAlignmentLoss,
    equivariance_targets,
    multi_resolution_stft_loss,
    repa_loss,
    sample_equivariance_transform,
    vf_adaptive_weight,
    vf_alignment_terms,
)
from .losses.dct import dct_weighted_mse
from .losses.spectral_regularizers import fourier_loss, wavelet_loss
from .models import (
    LatentStats,
    REPADiTTransformer2DModel,
    REPADiTTransformer2DModelOutput,
    RepresentationEncoder,
    SpectrumAutoencoderKL,
    SpectrumAutoencoderKLTrainingOutput,
    build_unet,
    check_class_labels,
    default_repa_depth,
    drop_labels,
    fold_latent_shift,
    latent_convention,
    latents_from_vae,
    latents_to_vae,
    load_autoencoder,
)
from .pipelines.dct_transform import DCTTransform
from .pipelines.edm_pipeline import EDMPipeline, edm_scheduler
from .pipelines.export import export_pipeline, export_vae
from .pipelines.sampling import load_pipeline, pipeline_samples
from .pipelines.schedulers import default_scheduler, flow_matching_scheduler, snr_scaled_scheduler
from .spectral import (
    apply_target_filter,
    blockwise_dct_2d,
    blockwise_idct_2d,
    dct_2d,
    dog_filter,
    dsm_lowpass,
    esm_loss,
    idct_2d,
    power_law_slope,
    radial_spectrum,
    rmsc,
    spatial_normalize,
    spectral_kl,
)
from .spectral.audio import (
    band_power_spectrum,
    level_invariant_log_spectral_distance,
    log_spectral_distance,
    spectral_slope,
)
from .training.audio_data import AudioTransform, embedded_audio_dir, load_audio_dataset
from .training.dct_statistics import estimate_dct_eta, estimate_dct_statistics, estimate_entropy_weights
from .training.edm import edm_denoise, edm_loss_weight, edm_sample_sigmas
from .training.objectives import DiffusionObjective, x0_from_edm, x0_from_epsilon, x0_from_flow, x0_from_v


__all__ = [
    "DCTTransform",
    "DiffusionObjective",
    "SpectrumAutoencoderKL",
    "SpectrumAutoencoderKLTrainingOutput",
    "blockwise_dct_2d",
    "blockwise_idct_2d",
    "dct_2d",
    "dsm_lowpass",
    "esm_loss",
    "idct_2d",
    "power_law_slope",
    "radial_spectrum",
    "spectral_kl",
    "dct_weighted_mse",
    "estimate_dct_eta",
    "estimate_dct_statistics",
    "estimate_entropy_weights",
    "fourier_loss",
    "snr_scaled_scheduler",
    "wavelet_loss",
    "x0_from_edm",
    "x0_from_epsilon",
    "x0_from_flow",
    "x0_from_v",
]
__all__ += [
    "REPADiTTransformer2DModel",
    "REPADiTTransformer2DModelOutput",
    "RepresentationEncoder",
    "apply_target_filter",
    "default_scheduler",
    "dog_filter",
    "drop_labels",
    "export_pipeline",
    "export_vae",
    "flow_matching_scheduler",
    "repa_loss",
    "rmsc",
    "spatial_normalize",
]
__all__ += [
    "analyze_encoder",
    "analyze_vae",
    "compare_vaes",
    "frechet_distance",
    "frechet_distance_from_stats",
    "power_law_field",
    "psnr",
    "reconstruction_metrics",
    "spectrum_summary",
    "spectrum_verdict",
    "ssim",
]
__all__ += [
    "AudioTransform",
    "EDMPipeline",
    "EquivarianceTransform",
    "LatentStats",
    "SpectrumStatistics",
    "VFAlignmentLoss",
    "band_power_spectrum",
    "build_unet",
    "check_class_labels",
    "default_repa_depth",
    "edm_denoise",
    "edm_loss_weight",
    "edm_sample_sigmas",
    "edm_scheduler",
    "embedded_audio_dir",
    "equivariance_targets",
    "fold_latent_shift",
    "laplacian_pyramid",
    "latent_convention",
    "latents_from_vae",
    "latents_to_vae",
    "load_audio_dataset",
    "load_autoencoder",
    "load_pipeline",
    "log_spectral_distance",
    "multi_resolution_stft_loss",
    "pipeline_samples",
    "posterior_latents",
    "pyramid_swd",
    "sample_equivariance_transform",
    "sliced_wasserstein",
    "spectral_slope",
    "spectrum_distance",
    "vf_adaptive_weight",
    "vf_alignment_terms",
]
__all__ += [
    "GenerationMetricSuite",
    "SmallFeatureNet",
    "blur_separation",
    "compare_arms",
    "feature_net_for",
    "holm_adjust",
    "kid",
    "level_invariant_log_spectral_distance",
    "t_interval",
    "verdict_from_moments",
]
