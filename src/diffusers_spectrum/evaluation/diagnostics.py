"""Spectral diagnostics of latents and feature maps: slopes, spectral KL, per-channel spectra, RMSC and a verdict.

Pure functions on tensors (no models, no I/O): `analyze.py` drives them over a dataset, `plotting.py` draws them.

The verdict follows the Spectrum Matching view (SPEC.md, "Why spectra matter"): compare the log-log slope of the
latent's normalised log spectrum with the slope of the delta = 1 target built from the same images.

- flatter than the target by more than `slope_tolerance` -> "over-noisy" (too much high-frequency power, SD-VAE),
- steeper by more than `slope_tolerance` -> "over-smoothed" (too little high-frequency power),
- otherwise "matched".

The default tolerance, 0.15, separates the authors' reference latents (SPEC.md, "Reference spectra"): against the
delta = 1 target slope -0.89, SD-VAE's -0.55 is over-noisy; scale-equivariant -0.91, ESM -0.82, DSM -0.85 are matched.
"""

from collections.abc import Callable, Iterable

import torch

from ..spectral import (
    dct_2d,
    dsm_lowpass,
    esm_band_powers,
    esm_divergence,
    flattened_log_spectra,
    idct_2d,
    normalize_log_spectrum,
    power_law_slope,
    radial_spectrum,
    rmsc,
)
from ..spectral._checks import compute_dtype, require_4d
from ..spectral.psd import radial_bin_index


__all__ = [
    "REFERENCE_SPECTRA",
    "VERDICTS",
    "VERDICT_SLOPE_TOLERANCE",
    "channel_spectra",
    "flatten_spectrum",
    "lowpass_reconstruction_errors",
    "normalized_log_spectrum",
    "power_law_field",
    "rms_spatial_contrast",
    "spectrum_slope",
    "spectrum_summary",
    "spectrum_verdict",
]

VERDICTS = ("over-noisy", "matched", "over-smoothed")
# The authors' reference slopes / spectral KL to the delta = 1 target (SPEC.md, "Reference spectra"), for context.
REFERENCE_SPECTRA = {
    "celeba_rgb": {"slope": -1.89, "spectral_kl_delta1": 0.294},
    "target_delta1": {"slope": -0.89},
    "sd_vae": {"slope": -0.55, "spectral_kl_delta1": 0.038, "verdict": "over-noisy"},
    "scale_equivariant": {"slope": -0.91, "spectral_kl_delta1": 0.020},
    "esm_autoencoder": {"slope": -0.82, "spectral_kl_delta1": 0.0044},
    "dsm_autoencoder": {"slope": -0.85, "spectral_kl_delta1": 0.0054},
    "dinov2_features": {"slope": -0.83},
}
VERDICT_SLOPE_TOLERANCE = 0.15  # |latent slope - delta=1 target slope| counted as matched (see module docstring)
# Spectral KL to the delta = 1 target above which a curve is not "matched" even when its overall slope is (a bent
# spectrum: too much mid-band and too little top-band power, say). The authors' matched autoencoders measure 0.004 to
# 0.02, SD-VAE 0.038 (already over-noisy by slope).
VERDICT_KL_THRESHOLD = 0.05


# ------------------------------------------------------------------------------------------------
# Synthetic fields and spectrum shaping


def power_law_field(
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    alpha: float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Isotropic Gaussian random field with power spectrum ``P(f) ~ 1 / f^alpha``: ``(B, C, H, W)``.

    Independent standard normal DCT coefficients are scaled by ``r^(-alpha / 2)`` with the DCT radius
    ``r = sqrt(u^2 + v^2)`` (DC set to 0), then inverted with the orthonormal DCT-III. ``alpha = 0`` is white noise,
    ``alpha = 2`` has the ~1/f^2 law of natural images. Its `radial_spectrum` fitted with `spectrum_slope(...,
    frequencies="center")` recovers ``-alpha`` (within about 0.12 on a 64 x 64 grid for alpha <= 2).
    """
    if min(batch_size, channels, height, width) < 1:
        raise ValueError(f"power_law_field: sizes must be positive, got {(batch_size, channels, height, width)}.")
    u = torch.arange(height, dtype=torch.float64)[:, None]
    v = torch.arange(width, dtype=torch.float64)[None, :]
    radius = (u * u + v * v).sqrt()  # (H, W)
    amplitude = torch.where(radius > 0, radius.clamp_min(1.0).pow(-alpha / 2), torch.zeros_like(radius))
    device = generator.device if generator is not None else "cpu"
    coefficients = torch.randn(
        batch_size, channels, height, width, generator=generator, dtype=torch.float64, device=device
    )
    return idct_2d(coefficients * amplitude.to(device)).to(dtype)  # (B, C, H, W)


def flatten_spectrum(x: torch.Tensor, delta: float, n_bins: int = 16) -> torch.Tensor:
    """Multiply the radial band power of ``x`` by ``(k + 1)^delta`` (the ESM flattening, applied to a field).

    Each DCT coefficient in band ``k`` is scaled by ``(k + 1)^(delta / 2)``, so ``radial_spectrum(result)`` equals
    ``radial_spectrum(x) * (k + 1)^delta`` exactly. ``(B, C, H, W) -> (B, C, H, W)``, input dtype.
    Used to build latents that follow the delta target of given images.
    """
    require_4d(x, "flatten_spectrum", "x")
    height, width = x.shape[-2:]
    band, _ = radial_bin_index(height, width, n_bins, x.device)
    gain = (band.to(compute_dtype(x.dtype)) + 1).pow(delta / 2).reshape(height, width)  # (H, W)
    return idct_2d(dct_2d(x.to(compute_dtype(x.dtype))) * gain).to(x.dtype)


# ------------------------------------------------------------------------------------------------
# Spectra, slopes and contrast


def normalized_log_spectrum(x: torch.Tensor, n_bins: int = 16) -> torch.Tensor:
    """The ESM view of one field: DC-free radial power -> ``log(1 + s)`` -> rows summing to 1. ``(B, n_bins)``."""
    return normalize_log_spectrum(radial_spectrum(x, n_bins=n_bins, remove_dc=True))


def spectrum_slope(spectrum: torch.Tensor, frequencies: str = "index") -> torch.Tensor:
    """Log-log slope of spectra ``(..., n_bins) -> (...)``.

    ``frequencies="index"`` (``f_k = k + 1``) is the authors' convention for normalised log spectra (their reference
    slopes); ``"center"`` (``k + 1/2``) recovers the exponent of a raw ``1/f^alpha`` power spectrum.
    """
    return power_law_slope(spectrum, frequencies=frequencies)


def channel_spectra(x: torch.Tensor, n_bins: int = 16, normalized: bool = True) -> torch.Tensor:
    """Radial spectrum of each channel separately: ``(B, C, H, W) -> (B, C, n_bins)``.

    With ``normalized`` each row is the ESM-normalised log spectrum, otherwise raw DC-free power.
    """
    require_4d(x, "channel_spectra", "x")
    batch, channels, height, width = x.shape
    power = radial_spectrum(x.reshape(batch * channels, 1, height, width), n_bins=n_bins)  # (B*C, n_bins)
    if normalized:
        power = normalize_log_spectrum(power)
    return power.reshape(batch, channels, n_bins)


def rms_spatial_contrast(features: torch.Tensor) -> torch.Tensor:
    """RMS spatial contrast (RMSC) of a feature map ``(B, D, h, w) -> (B,)`` (SPEC.md, "REPA and DoG-REPA").

    Every token (the ``D``-vector at one grid position) is L2-normalised; RMSC is the square root of the mean squared
    distance of the tokens from their grid mean, i.e. the spatial AC energy of the normalised map. 0 for a constant
    map; at most 1.
    """
    require_4d(features, "rms_spatial_contrast", "features")
    return rmsc(features).to(features.dtype)  # the shared implementation in `spectral.filters`


# ------------------------------------------------------------------------------------------------
# Verdict


def spectrum_verdict(
    latent_slope: float,
    target_slope: float,
    slope_tolerance: float = VERDICT_SLOPE_TOLERANCE,
    spectral_kl: float | None = None,
    kl_threshold: float = VERDICT_KL_THRESHOLD,
) -> str:
    """``"over-noisy"``, ``"matched"`` or ``"over-smoothed"`` from two slopes of normalised log spectra.

    Rule: a slope gap ``latent - target`` above ``slope_tolerance`` is over-noisy (too flat), below
    ``-slope_tolerance`` over-smoothed (too steep). Within the tolerance the curve is matched only if its spectral KL
    to the target (when given) is at most ``kl_threshold``; otherwise the sign of the gap names the direction.

    Args:
        latent_slope: slope (``frequencies="index"``) of the latent's normalised log spectrum.
        target_slope: slope of the delta = 1 target built from the same images.
        slope_tolerance: largest ``|latent_slope - target_slope|`` still called matched.
        spectral_kl: mean spectral KL of the latents to the delta = 1 target, or None for the slope rule alone.
        kl_threshold: largest spectral KL still called matched.
    """
    if slope_tolerance < 0:
        raise ValueError(f"slope_tolerance must be non-negative, got {slope_tolerance}.")
    if kl_threshold < 0:
        raise ValueError(f"kl_threshold must be non-negative, got {kl_threshold}.")
    gap = float(latent_slope) - float(target_slope)
    if gap > slope_tolerance:
        return "over-noisy"
    if gap < -slope_tolerance:
        return "over-smoothed"
    if spectral_kl is not None and float(spectral_kl) > kl_threshold:
        return "over-noisy" if gap > 0 else "over-smoothed"
    return "matched"


def spectrum_summary(
    images: torch.Tensor,
    latents: torch.Tensor,
    n_bins: int = 16,
    blur: bool | None = None,
    slope_tolerance: float = VERDICT_SLOPE_TOLERANCE,
) -> dict:
    """Spectra, slopes, spectral KL and the verdict for a batch of images and their latents.

    Args:
        images: ``(B, 3, H, W)`` in [-1, 1].
        latents: ``(B, C, h, w)`` raw latents (before any scaling factor, as ESM sees them).

    Returns:
        A dict of tensors and numbers: ``image`` (delta 0 target), ``target`` (delta 1) and ``latent`` normalised log
        spectra ``(B, n_bins)``; ``spectral_kl_delta0`` / ``spectral_kl_delta1`` ``(B,)``; ``image_slope``,
        ``target_slope``, ``latent_slope`` (slopes of the batch-mean spectra, index frequencies); ``verdict``.
    """
    bands = esm_band_powers(images, latents, n_bins=n_bins, blur=blur)  # image and latent band powers, once
    image, latent = flattened_log_spectra(*bands, delta=0.0)  # (B, n_bins) each
    target, _ = flattened_log_spectra(*bands, delta=1.0)
    kl0 = esm_divergence(*bands, delta=0.0)  # (B,) KL(image law || latent)
    kl1 = esm_divergence(*bands, delta=1.0)  # (B,) KL(delta=1 target || latent)
    slopes = {
        name: float(spectrum_slope(s.mean(0)))
        for name, s in (("image", image), ("target", target), ("latent", latent))
    }
    return {
        "image": image,
        "target": target,
        "latent": latent,
        "spectral_kl_delta0": kl0,
        "spectral_kl_delta1": kl1,
        "image_slope": slopes["image"],
        "target_slope": slopes["target"],
        "latent_slope": slopes["latent"],
        "verdict": spectrum_verdict(slopes["latent"], slopes["target"], slope_tolerance, float(kl1.mean())),
    }


# ------------------------------------------------------------------------------------------------
# DSM view: decode low-passed latents against low-passed images


@torch.no_grad()
def lowpass_reconstruction_errors(
    decode: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    latents: torch.Tensor,
    levels: Iterable[int] = (0, 8, 10, 12),
    block_size: int = 8,
) -> dict[int, torch.Tensor]:
    """Per-sample MSE of ``decode(dsm_lowpass(latents, k))`` against ``dsm_lowpass(images, k)`` for each level ``k``.

    The DSM shared low-pass (SPEC.md, "DSM") applied to both sides; a decoder with frequency-to-frequency
    correspondence keeps the error flat across levels. Level 0 is the plain reconstruction error.

    Args:
        decode: maps latents ``(B, C, h, w)`` to images ``(B, 3, H, W)`` (e.g. ``lambda z: vae.decode(z).sample``).
        images: ``(B, 3, H, W)`` in [-1, 1]; ``H``, ``W`` divisible by ``block_size``.
        latents: ``(B, C, h, w)``; ``h``, ``w`` divisible by ``block_size``.

    Returns:
        ``{level: (B,) float32 MSE}``.
    """
    require_4d(images, "lowpass_reconstruction_errors", "images", channels=3)
    require_4d(latents, "lowpass_reconstruction_errors", "latents")
    errors = {}
    for level in levels:
        reconstruction = decode(dsm_lowpass(latents, int(level), block_size=block_size)).float()
        target = dsm_lowpass(images, int(level), block_size=block_size).float()
        if reconstruction.shape != target.shape:
            raise ValueError(
                f"lowpass_reconstruction_errors: decode returned {tuple(reconstruction.shape)}, images are "
                f"{tuple(target.shape)}."
            )
        errors[int(level)] = (reconstruction - target).square().mean(dim=(1, 2, 3))  # (B,)
    return errors


def mean_std(rows: torch.Tensor) -> dict:
    """`{"mean": [...], "std": [...]}` over the first axis of `rows` (population std), as the reports store them."""
    return {"mean": rows.mean(0).tolist(), "std": rows.std(0, unbiased=False).tolist()}
