"""Spectral maths on tensors: transforms, spectra, ESM/DSM and target filters. Pure functions, no models."""

from .audio import (
    band_center_frequencies,
    band_power_spectrum,
    dwt_1d,
    frequency_band_edges,
    level_invariant_log_spectral_distance,
    log_spectral_distance,
    mean_level_offset_db,
    spectral_slope,
)
from .dct import blockwise_dct_2d, blockwise_idct_2d, dct_2d, dct_matrix, idct_2d
from .dsm import DSM_DEFAULT_LEVELS, check_dsm_level, dsm_lowpass, dsm_mask
from .esm import (
    esm_band_powers,
    esm_divergence,
    esm_loss,
    esm_spectra,
    flattened_log_spectra,
    gaussian_kernel_1d,
    normalize_log_spectrum,
    spectral_kl,
)
from .filters import TARGET_FILTERS, apply_target_filter, dog_filter, gaussian_blur_matrix, rmsc, spatial_normalize
from .psd import (
    POWER_FLOOR,
    band_average_matrix,
    band_means,
    bin_frequencies,
    channel_power,
    power_law_slope,
    radial_bin_index,
    radial_spectrum,
)
from .wavelets import dwt_2d, idwt_2d


__all__ = [
    "band_center_frequencies",
    "band_power_spectrum",
    "dwt_1d",
    "frequency_band_edges",
    "level_invariant_log_spectral_distance",
    "log_spectral_distance",
    "mean_level_offset_db",
    "spectral_slope",
    "DSM_DEFAULT_LEVELS",
    "POWER_FLOOR",
    "band_average_matrix",
    "band_means",
    "bin_frequencies",
    "blockwise_dct_2d",
    "blockwise_idct_2d",
    "channel_power",
    "check_dsm_level",
    "dct_2d",
    "dct_matrix",
    "dsm_lowpass",
    "dsm_mask",
    "dwt_2d",
    "esm_band_powers",
    "esm_divergence",
    "esm_loss",
    "esm_spectra",
    "flattened_log_spectra",
    "gaussian_kernel_1d",
    "idct_2d",
    "idwt_2d",
    "normalize_log_spectrum",
    "power_law_slope",
    "radial_bin_index",
    "radial_spectrum",
    "spectral_kl",
]
__all__ += [
    "TARGET_FILTERS",
    "apply_target_filter",
    "dog_filter",
    "gaussian_blur_matrix",
    "rmsc",
    "spatial_normalize",
]
