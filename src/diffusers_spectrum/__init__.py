"""diffusers-spectrum: Spectrum Matching (ESM / DSM), DoG-REPA and spectral tools for latent diffusion on diffusers."""

# diffusers' pipeline loader looks the base classes up on the library named in `model_index.json`
# (`["diffusers_spectrum", "SpectrumAutoencoderKL"]`), so they must be attributes of this package too.
from diffusers import DiffusionPipeline, ModelMixin, SchedulerMixin  # noqa: F401

from ._version import __version__  # noqa: F401
from .evaluation.analyze import analyze_vae, compare_vaes
from .evaluation.diagnostics import power_law_field, spectrum_summary, spectrum_verdict
from .evaluation.encoder_analysis import analyze_encoder
from .evaluation.metrics import frechet_distance, frechet_distance_from_stats, psnr, reconstruction_metrics, ssim
from .losses import repa_loss
from .losses.dct import dct_weighted_mse
from .losses.spectral_regularizers import fourier_loss, wavelet_loss
from .models import (
    REPADiTTransformer2DModel,
    REPADiTTransformer2DModelOutput,
    SpectrumAutoencoderKL,
    SpectrumAutoencoderKLTrainingOutput,
    drop_labels,
)
from .models.encoders import RepresentationEncoder
from .pipelines.dct_transform import DCTTransform
from .pipelines.export import export_pipeline, export_vae
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
from .training.dct_statistics import estimate_dct_eta, estimate_dct_statistics, estimate_entropy_weights
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
