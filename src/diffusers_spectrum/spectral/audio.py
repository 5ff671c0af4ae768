"""Spectral maths on waveforms ``(B, C, T)``: a multi-level 1-D DWT, band power spectra on log-spaced (or mel)
frequency bands, their log-log slope, and the log-spectral distance between a generated and a real set.

Pure tensor functions: no models, no I/O, inputs never modified. Float32 inside (float64 stays float64).

- :func:`dwt_1d`: Mallat's (1989) multi-level DWT over time; Haar on lengths divisible by ``2**levels`` is written
  here as sums and differences of sample pairs (PyWavelets' coefficients and signs), other wavelets/lengths go
  through ptwt (Wolter et al., JMLR 2024).
- :func:`band_power_spectrum`: the windowed periodogram ``|FFT(w x)|^2 / sum(w^2)`` (power per frequency bin,
  white noise of variance s^2 -> s^2 in every bin), averaged over channels and then over the bins whose frequency in
  Hz falls in each band. Bands are log-spaced (geometric) or evenly spaced on the mel scale (HTK formula
  ``mel = 2595 log10(1 + f / 700)``, O'Shaughnessy 1987).
- :func:`spectral_slope`: least-squares slope of log band power against log band-centre frequency (a ``1/f^a``
  power law gives ``-a``: pink noise -1, brown noise -2).
- :func:`log_spectral_distance`: RMS over bands of ``10 log10(P_gen / P_real)`` in dB between the two sets' mean
  band powers (the log-spectral distance of Gray & Markel 1976, on bands, between sets).
"""

import math

import ptwt
import torch

from ._checks import compute_dtype, require_min_dims, require_tensor
from .psd import power_law_slope
from .wavelets import _check_wavelet


BAND_SCALES = ("log", "mel")
WINDOWS = ("hann", "rectangular")


def require_waveforms(x, func: str, name: str) -> None:
    """``x`` must be a float ``(B, C, T)`` waveform tensor."""
    require_tensor(x, func, name)
    if x.ndim != 3:
        raise ValueError(
            f"{func}: `{name}` must be a 3-D (B, C, T) waveform tensor (batch, channels, samples), got shape "
            f"{tuple(x.shape)}" + ("; add axes with `x[None, None]` / `x[:, None]`." if x.ndim < 3 else ".")
        )


# ------------------------------------------------------------------------------------------------
# 1-D discrete wavelet transform. Haar per sample pair (a, b): approximation (a + b) / sqrt(2), detail (a - b) /
# sqrt(2) (PyWavelets' signs); orthonormal, so sum(x^2) = sum(approximation^2) + sum(details^2).


def dwt_1d(
    x: torch.Tensor, levels: int = 1, wavelet: str = "haar", mode: str = "reflect"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Multi-level 1-D DWT over the last axis.

    Args:
        x: ``(..., T)`` float tensor.
        levels: decomposition levels; each halves the length (rounding up).
        wavelet: a PyWavelets discrete wavelet name; ``"haar"`` is exact for ``T`` divisible by ``2**levels``.
        mode: boundary extension for odd lengths at some level and longer wavelets (as PyWavelets' modes).

    Returns:
        ``(approximation, details)``: approximation ``(..., T / 2**levels)``; details a list of ``levels`` tensors,
        finest first, ``details[l]`` of shape ``(..., T / 2**(l+1))``. All in ``x``'s dtype.
    """
    require_min_dims(x, 1, "dwt_1d", "x")
    _check_wavelet(wavelet, levels, mode, "dwt_1d")
    work = x.to(compute_dtype(x.dtype))
    if wavelet == "haar" and x.shape[-1] % 2**levels == 0:
        details = []
        for _ in range(levels):
            even, odd = work[..., 0::2], work[..., 1::2]  # (..., T / 2) each
            details.append(((even - odd) / math.sqrt(2)).to(x.dtype))
            work = (even + odd) / math.sqrt(2)
        return work.to(x.dtype), details
    coefficients = ptwt.wavedec(work, wavelet, mode=mode, level=levels, axis=-1)  # [cA_n, cD_n, ..., cD_1]
    return coefficients[0].to(x.dtype), [level.to(x.dtype) for level in reversed(coefficients[1:])]


# ------------------------------------------------------------------------------------------------
# Frequency bands.


def _hz_to_mel(frequency_hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + frequency_hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def frequency_band_edges(
    sample_rate: int,
    num_bands: int = 24,
    min_frequency_hz: float = 50.0,
    max_frequency_hz: float | None = None,
    scale: str = "log",
) -> torch.Tensor:
    """``(num_bands + 1,)`` float64 band edges in Hz from ``min_frequency_hz`` to ``max_frequency_hz``.

    ``scale="log"``: geometric spacing (equal width in octaves); ``"mel"``: equal width on the HTK mel scale.
    ``max_frequency_hz`` defaults to the Nyquist frequency ``sample_rate / 2``.
    """
    if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate < 1:
        raise ValueError(f"frequency_band_edges: `sample_rate` must be a positive integer in Hz, got {sample_rate!r}.")
    if not isinstance(num_bands, int) or num_bands < 1:
        raise ValueError(f"frequency_band_edges: `num_bands` must be a positive integer, got {num_bands!r}.")
    if scale not in BAND_SCALES:
        raise ValueError(f"frequency_band_edges: unknown scale {scale!r}; choose one of {BAND_SCALES}.")
    nyquist = sample_rate / 2
    high = nyquist if max_frequency_hz is None else float(max_frequency_hz)
    if not 0 < min_frequency_hz < high <= nyquist:
        raise ValueError(
            f"frequency_band_edges: need 0 < min_frequency_hz ({min_frequency_hz}) < max_frequency_hz ({high}) <= "
            f"the Nyquist frequency {nyquist} Hz of sample_rate={sample_rate}."
        )
    low = torch.tensor(float(min_frequency_hz), dtype=torch.float64)
    high = torch.tensor(high, dtype=torch.float64)
    steps = torch.linspace(0.0, 1.0, num_bands + 1, dtype=torch.float64)
    if scale == "log":
        return torch.exp(low.log() + steps * (high.log() - low.log()))
    return _mel_to_hz(_hz_to_mel(low) + steps * (_hz_to_mel(high) - _hz_to_mel(low)))


def band_center_frequencies(edges: torch.Tensor) -> torch.Tensor:
    """Geometric centres ``sqrt(f_k f_{k+1})`` of the bands, ``(num_bands + 1,) -> (num_bands,)``."""
    return (edges[:-1] * edges[1:]).sqrt()


# ------------------------------------------------------------------------------------------------
# Band power spectrum, slope, distance.


def band_power_spectrum(
    waveforms: torch.Tensor,
    sample_rate: int,
    num_bands: int = 24,
    min_frequency_hz: float = 50.0,
    max_frequency_hz: float | None = None,
    scale: str = "log",
    window: str = "hann",
) -> torch.Tensor:
    """Mean periodogram power in each frequency band, averaged over channels.

    The periodogram of each clip and channel is ``|rfft(w x)|^2 / sum(w^2)`` (``w`` a periodic Hann window or
    ones), so white noise of variance ``s^2`` has expected power ``s^2`` in every bin. Bin ``k`` has frequency
    ``k * sample_rate / T``; bins in ``[edge_i, edge_{i+1})`` (the last band closed) are averaged. A band that holds
    no bin (too short a clip for a narrow low band) gets power 0, which :func:`spectral_slope` and
    :func:`log_spectral_distance` leave out.

    Args:
        waveforms: ``(B, C, T)`` audio.
        sample_rate: samples per second of ``waveforms``.
        num_bands, min_frequency_hz, max_frequency_hz, scale: see :func:`frequency_band_edges`.
        window: ``"hann"`` (low leakage, the default) or ``"rectangular"``.

    Returns:
        ``(B, num_bands)`` band powers, float32 (float64 for float64 input).
    """
    require_waveforms(waveforms, "band_power_spectrum", "waveforms")
    if window not in WINDOWS:
        raise ValueError(f"band_power_spectrum: unknown window {window!r}; choose one of {WINDOWS}.")
    length = waveforms.shape[-1]
    work_dtype = compute_dtype(waveforms.dtype)
    edges = frequency_band_edges(sample_rate, num_bands, min_frequency_hz, max_frequency_hz, scale)
    if window == "hann":
        taper = torch.hann_window(length, periodic=True, dtype=work_dtype, device=waveforms.device)
    else:
        taper = torch.ones(length, dtype=work_dtype, device=waveforms.device)
    spectrum = torch.fft.rfft(waveforms.to(work_dtype) * taper, dim=-1)  # (B, C, T // 2 + 1)
    power = (spectrum.abs().square() / taper.square().sum()).mean(dim=1)  # (B, T // 2 + 1)
    # 1. Band index of each bin (-1 outside every band), then the mean over the bins of each band.
    bin_hz = torch.arange(length // 2 + 1, dtype=torch.float64) * sample_rate / length
    band = torch.bucketize(bin_hz, edges, right=True) - 1  # edge_i <= f < edge_{i+1} -> i
    band[bin_hz == edges[-1]] = num_bands - 1  # the last band includes its upper edge
    inside = (band >= 0) & (band < num_bands)
    assignment = torch.zeros(length // 2 + 1, num_bands, dtype=torch.float64)
    assignment[inside.nonzero().squeeze(1), band[inside]] = 1.0  # (F, num_bands) one-hot
    counts = assignment.sum(dim=0)
    average = (assignment / counts.clamp(min=1)).to(device=waveforms.device, dtype=work_dtype)
    return power @ average  # (B, num_bands)


def spectral_slope(
    band_power: torch.Tensor,
    sample_rate: int,
    min_frequency_hz: float = 50.0,
    max_frequency_hz: float | None = None,
    scale: str = "log",
) -> torch.Tensor:
    """Log-log slope of ``band_power`` ``(..., num_bands)`` (from :func:`band_power_spectrum` with the same band
    options) against the bands' geometric centre frequencies in Hz -> ``(...)``. Zero-power bands are left out."""
    require_tensor(band_power, "spectral_slope", "band_power")
    edges = frequency_band_edges(sample_rate, band_power.shape[-1], min_frequency_hz, max_frequency_hz, scale)
    return power_law_slope(band_power, band_center_frequencies(edges))


def _set_mean_db_difference(generated_power: torch.Tensor, real_power: torch.Tensor, func: str):
    """Per-band ``10 log10(mean_gen_k / mean_real_k)`` and the mask of bands where both means are positive."""
    for name, value in (("generated_power", generated_power), ("real_power", real_power)):
        require_tensor(value, func, name)
        if value.ndim != 2:
            raise ValueError(f"{func}: `{name}` must be (num_clips, num_bands), got shape {tuple(value.shape)}.")
    if generated_power.shape[1] != real_power.shape[1]:
        raise ValueError(
            f"{func}: the sets have {generated_power.shape[1]} and {real_power.shape[1]} bands; "
            "compute both with the same band options."
        )
    work_dtype = compute_dtype(generated_power.dtype)
    generated_mean = generated_power.to(work_dtype).mean(dim=0)  # (num_bands,)
    real_mean = real_power.to(work_dtype).mean(dim=0)
    valid = (generated_mean > 0) & (real_mean > 0)
    tiny = torch.finfo(work_dtype).tiny
    difference_db = 10.0 * (generated_mean.clamp(min=tiny).log10() - real_mean.clamp(min=tiny).log10())
    return difference_db, valid


def log_spectral_distance(generated_power: torch.Tensor, real_power: torch.Tensor) -> torch.Tensor:
    """Log-spectral distance in dB between two sets: ``sqrt(mean_k (10 log10(mean_gen_k / mean_real_k))^2)``.

    Args:
        generated_power: ``(N, num_bands)`` band powers of the generated clips (:func:`band_power_spectrum`).
        real_power: ``(M, num_bands)`` band powers of the real clips, same bands.

    The set means are taken in power (not in dB), so a handful of silent clips does not dominate; bands where either
    mean is 0 (no bin, or digital silence) are left out. A gain ``g`` on every generated clip gives exactly
    ``|20 log10 g|``: the distance mixes the level with the shape of the spectrum;
    :func:`level_invariant_log_spectral_distance` separates them. Returns a scalar in float32 (float64 for float64
    input).
    """
    difference_db, valid = _set_mean_db_difference(generated_power, real_power, "log_spectral_distance")
    squared = torch.where(valid, difference_db.square(), torch.zeros_like(difference_db))
    return (squared.sum() / valid.sum().clamp(min=1)).sqrt()


def level_invariant_log_spectral_distance(generated_power: torch.Tensor, real_power: torch.Tensor) -> torch.Tensor:
    """The log-spectral distance with the sets' mean level offset removed: the shape of the spectrum only.

    ``D_k = 10 log10(mean_gen_k / mean_real_k)`` over the valid bands (as :func:`log_spectral_distance`), then
    ``sqrt(mean_k (D_k - mean_j D_j)^2)``: the RMS of the per-band dB differences about their mean (the mean dB offset,
    a global level difference, reported separately by :func:`mean_level_offset_db`). Unchanged by a gain on either
    set; ``log_spectral_distance^2 = level_invariant^2 + offset^2``. Same arguments and return as
    :func:`log_spectral_distance`.
    """
    name = "level_invariant_log_spectral_distance"
    difference_db, valid = _set_mean_db_difference(generated_power, real_power, name)
    count = valid.sum().clamp(min=1)
    offset = torch.where(valid, difference_db, torch.zeros_like(difference_db)).sum() / count
    squared = torch.where(valid, (difference_db - offset).square(), torch.zeros_like(difference_db))
    return (squared.sum() / count).sqrt()


def mean_level_offset_db(generated_power: torch.Tensor, real_power: torch.Tensor) -> torch.Tensor:
    """The mean over valid bands of ``10 log10(mean_gen_k / mean_real_k)``: the level offset, in dB, that
    :func:`level_invariant_log_spectral_distance` removes (``20 log10 g`` for a gain ``g`` on the generated set)."""
    difference_db, valid = _set_mean_db_difference(generated_power, real_power, "mean_level_offset_db")
    return torch.where(valid, difference_db, torch.zeros_like(difference_db)).sum() / valid.sum().clamp(min=1)
