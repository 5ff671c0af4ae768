"""Radial power spectra of images and latents, and power-law fits (the spectra of Ning et al. 2026, "Spectrum
Matching"; the authors' `utils_DCT.py`, forever208/SpectrumMatching, branch SDVAE_and_ESM)."""

import functools

import torch

from ._checks import as_float, as_int, compute_dtype, require_4d, require_finite, require_tensor, should_check_finite
from .dct import dct_2d


POWER_FLOOR = 1e-8  # the authors' clamp_min(eps) on the channel-aggregated power, before binning


# ------------------------------------------------------------------------------------------------
# Radial bands: r(u, v) = sqrt(u^2 + v^2), r_max = sqrt((H-1)^2 + (W-1)^2), band = floor(r / r_max * n_bins)
# clipped to n_bins - 1.


@functools.lru_cache(maxsize=128)
def _radial_bins_cached(height: int, width: int, n_bins: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    u = torch.arange(height, dtype=torch.int64)[:, None]
    v = torch.arange(width, dtype=torch.int64)[None, :]
    r2 = u * u + v * v  # (H, W) squared radius, exact integers
    r2_max = (height - 1) ** 2 + (width - 1) ** 2
    # floor(n * r / r_max) is the largest k with k^2 * r_max^2 <= n^2 * r^2: integer arithmetic, so cells that sit
    # exactly on a band edge land in the upper band as the formula says (float rounding can put them either side).
    ks = torch.arange(n_bins + 1, dtype=torch.int64)
    band = (ks[None, None, :] ** 2 * r2_max <= (n_bins**2) * r2[..., None]).sum(-1) - 1 if r2_max > 0 else r2 * 0
    band = band.clamp(0, n_bins - 1).reshape(-1)  # (H*W,)
    counts = torch.bincount(band, minlength=n_bins)  # (n_bins,)
    return band.to(device), counts.to(device)


def radial_bin_index(height: int, width: int, n_bins: int = 16, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Band index of every DCT cell and the number of cells per band.

    Returns:
        ``band`` of shape ``(H * W,)`` (row-major cells, ``int64``) and ``counts`` of shape ``(n_bins,)``.
    """
    n_bins = as_int(n_bins, "radial_bin_index", "n_bins", minimum=1)
    height = as_int(height, "radial_bin_index", "height", minimum=1)
    width = as_int(width, "radial_bin_index", "width", minimum=1)
    return _radial_bins_cached(height, width, n_bins, str(torch.device(device or "cpu")))


@functools.lru_cache(maxsize=128)
def _band_average_cached(height: int, width: int, n_bins: int, remove_dc: bool, device: str, dtype) -> torch.Tensor:
    band, counts = _radial_bins_cached(height, width, n_bins, "cpu")
    average = torch.zeros(height * width, n_bins, dtype=torch.float64)
    average[torch.arange(height * width), band] = 1.0 / counts.clamp_min(1).double()[band]
    if remove_dc:
        average[0] = 0  # the DC cell keeps its place in band 0 with power 0
    return average.to(device=device, dtype=dtype)


def band_average_matrix(
    height: int, width: int, n_bins: int = 16, remove_dc: bool = False, device=None, dtype=torch.float32
) -> torch.Tensor:
    """``(H * W, n_bins)`` matrix ``A`` with ``power.reshape(B, -1) @ A`` = the mean power of each radial band.

    ``A[cell, k] = 1 / count_k`` for the cells of band ``k``; with ``remove_dc`` the DC row is zero, so the DC power
    counts as 0 in band 0. A band with no cell (grids much smaller than ``n_bins``) gets 0. Cached; do not modify.
    """
    n_bins = as_int(n_bins, "band_average_matrix", "n_bins", minimum=1)
    height = as_int(height, "band_average_matrix", "height", minimum=1)
    width = as_int(width, "band_average_matrix", "width", minimum=1)
    key = (height, width, n_bins, bool(remove_dc), str(torch.device(device or "cpu")), dtype)
    return _band_average_cached(*key)


def band_means(power: torch.Tensor, n_bins: int = 16, remove_dc: bool = False) -> torch.Tensor:
    """Mean of ``power`` ``(B, H, W)`` over each radial band -> ``(B, n_bins)`` (DC counted as 0 if ``remove_dc``)."""
    require_tensor(power, "band_means", "power")
    if power.ndim != 3:
        raise ValueError(f"band_means: `power` must be (B, H, W), got shape {tuple(power.shape)}.")
    batch, height, width = power.shape
    average = band_average_matrix(height, width, n_bins, remove_dc, power.device, power.dtype)
    return power.reshape(batch, height * width) @ average  # (B, n_bins)


def channel_power(coefficients: torch.Tensor, floor: float = POWER_FLOOR) -> torch.Tensor:
    """Channel-aggregated power ``P[b, u, v] = max(mean_c X[b, c, u, v]^2, floor)``: ``(B, C, H, W) -> (B, H, W)``.

    The floor is the authors' ``clamp_min(eps)`` (eps = 1e-8): it matters for latents of tiny scale (std ~1e-3), whose
    high bands would otherwise sit far below it. ``floor=0`` gives the raw power.
    """
    return coefficients.square().mean(dim=1).clamp_min(floor)


def radial_spectrum(
    x: torch.Tensor,
    n_bins: int = 16,
    *,
    remove_dc: bool = True,
    subtract_mean: bool = False,
    floor: float = POWER_FLOOR,
    check_finite: bool | None = None,
) -> torch.Tensor:
    """Channel-aggregated DCT power averaged within radial bands (the authors' `radial_band_energy` in `utils_DCT.py`).

    ``P = max(mean_c DCT(x)^2, floor)`` per cell, then the mean of ``P`` over each radial band. The two conventions:

    - ESM (the loss): ``remove_dc=True`` (the default here): the DC power counts as 0 in band 0.
    - The authors' analysis (``latent_analysis.py``, ``spectrum_distribution``: ``center="none", remove_dc=False``):
      ``remove_dc=False, subtract_mean=False``: DC kept, no mean removal. The authors' reference curves use it.

    Args:
        x: ``(B, C, H, W)`` images or latents.
        n_bins: number of radial bands (16 in the paper).
        remove_dc: set the DC power to 0 after the floor (the authors' ``remove_dc``).
        subtract_mean: subtract each channel's spatial mean before the DCT (the authors' ``center="mean"``); the DC
            coefficient becomes 0, so with ``remove_dc=False`` the DC cell holds ``floor``.
        floor: lower clamp of the per-cell power (the authors' 1e-8); 0 disables it.
        check_finite: raise on NaN/Inf (checked on the ``(B, n_bins)`` result); ``None`` checks unless autograd is
            recording through ``x`` (see ``spectral/_checks.py``).

    Returns:
        ``(B, n_bins)`` band energies (raw power, not log), float32 (float64 for float64 input).
    """
    require_4d(x, "radial_spectrum", "x")
    n_bins = as_int(n_bins, "radial_spectrum", "n_bins", minimum=1)
    floor = as_float(floor, "radial_spectrum", "floor", minimum=0.0)
    work = x.to(compute_dtype(x.dtype))
    if subtract_mean:
        work = work - work.mean(dim=(-2, -1), keepdim=True)
    power = channel_power(dct_2d(work), floor)  # (B, H, W)
    bands = band_means(power, n_bins, remove_dc=remove_dc)  # (B, n_bins)
    if should_check_finite(check_finite, x):
        require_finite(bands, "radial_spectrum", "x")
    return bands


def bin_frequencies(n_bins: int = 16, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The frequency attached to band ``k``: ``f_k = k + 1`` (the ESM flattening's convention), ``(n_bins,)``."""
    return torch.arange(1, n_bins + 1, device=device, dtype=dtype)


def power_law_slope(
    spectrum: torch.Tensor, frequencies: torch.Tensor | str = "index", check_finite: bool | None = None
) -> torch.Tensor:
    """Least-squares slope of ``log(spectrum)`` against ``log(frequency)``.

    Args:
        spectrum: ``(..., n_bins)`` positive values (raw power or normalised log power). Entries that are not
            strictly positive (an empty band, the removed DC) are left out of that row's fit.
        frequencies: ``"index"`` (default): ``f_k = k + 1``, the convention of the ESM flattening and of the
            authors' reported slopes (flattening by ``f^delta`` then shifts the slope by exactly ``delta``);
            ``"center"``: the band's centre radius ``k + 1/2``, which recovers the exponent of a ``1/f^alpha`` field
            (white noise ~0, ``1/f^2`` ~-2; with ``"index"`` the low bands bend that to about -2.4);
            or a ``(n_bins,)`` tensor of positive frequencies.
        check_finite: raise on NaN/Inf in ``spectrum`` (else a NaN band would silently leave the fit); ``None``
            checks unless autograd is recording through ``spectrum``.

    Returns:
        ``(...)`` slopes.
    """
    require_tensor(spectrum, "power_law_slope", "spectrum")
    if spectrum.ndim == 0 or spectrum.shape[-1] < 2:
        raise ValueError(f"power_law_slope: `spectrum` needs at least 2 bands, got shape {tuple(spectrum.shape)}.")
    if should_check_finite(check_finite, spectrum):
        require_finite(spectrum, "power_law_slope", "spectrum")
    work = spectrum.to(compute_dtype(spectrum.dtype))
    n_bins = work.shape[-1]
    if isinstance(frequencies, str):
        if frequencies not in ("index", "center"):
            raise ValueError(
                f"power_law_slope: frequencies must be 'index', 'center' or a tensor, got {frequencies!r}."
            )
        offset = 0.5 if frequencies == "center" else 0.0
        frequencies = bin_frequencies(n_bins, work.device, work.dtype) - offset
    frequencies = frequencies.to(device=work.device, dtype=work.dtype)
    if frequencies.shape != (n_bins,) or not (frequencies > 0).all():
        raise ValueError(
            f"power_law_slope: `frequencies` must be {n_bins} positive values, got {tuple(frequencies.shape)}."
        )
    valid = (work > 0).to(work.dtype)  # (..., n_bins) weights of the fit
    if (valid.sum(-1) < 2).any():
        raise ValueError("power_law_slope: each spectrum needs at least two positive bands to fit a slope.")
    log_f = frequencies.log().expand_as(work)
    log_p = torch.where(valid > 0, work.clamp_min(torch.finfo(work.dtype).tiny).log(), torch.zeros_like(work))
    count = valid.sum(-1, keepdim=True)
    mean_f = (valid * log_f).sum(-1, keepdim=True) / count
    mean_p = (valid * log_p).sum(-1, keepdim=True) / count
    cov = (valid * (log_f - mean_f) * (log_p - mean_p)).sum(-1)
    var = (valid * (log_f - mean_f).square()).sum(-1)
    return (cov / var).to(spectrum.dtype)
