"""Encoding Spectrum Matching (ESM; Ning et al. 2026, "Spectrum Matching", arXiv:2603.14645).

The image branch (zero-padded 7x7 Gaussian blur, bicubic resize, orthonormal DCT) is linear and separable over the two
axes, so it collapses into one precomputed ``(h, H)`` matrix per axis: ``DCT(resize(blur(x))) = M_y x M_x^T``. The
matrices are built by pushing an identity basis through exactly those torch operations, once per size and device.

Provenance (the authors' conventions, checked): docs/PROVENANCE.md#esm
"""

import functools

import torch
import torch.nn.functional as F

from ._checks import (
    as_float,
    as_int,
    as_optional_bool,
    require_4d,
    require_finite,
    require_nonempty_batch,
    require_tensor,
    should_check_finite,
)
from .dct import dct_2d, dct_matrix
from .psd import band_means, bin_frequencies, channel_power


ESM_BLUR_KERNEL_SIZE = 7  # the authors' anti-alias kernel: 7 x 7 ...
ESM_BLUR_SIGMA = 1.2  # ... with sigma 1.2, normalised to sum 1, zero padding
ESM_EPS = 1e-8  # the authors' single eps: power floor, log offset and normalisation offset
ESM_LOSS_TYPES = ("kl", "l2")


def gaussian_kernel_1d(kernel_size: int, sigma: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``(kernel_size,)``; the outer product of two is the normalised 2-D kernel."""
    kernel_size = as_int(kernel_size, "gaussian_kernel_1d", "kernel_size", minimum=1)
    if kernel_size % 2 == 0:
        raise ValueError(f"gaussian_kernel_1d: `kernel_size` must be a positive odd integer, got {kernel_size}.")
    sigma = as_float(sigma, "gaussian_kernel_1d", "sigma", minimum=0.0, strict=True)
    offsets = torch.arange(kernel_size, dtype=dtype) - (kernel_size - 1) / 2
    taps = torch.exp(-offsets.square() / (2 * sigma**2))
    return taps / taps.sum()


def esm_uses_blur(latent_height: int, blur: bool | None = None) -> bool:
    """The authors' rule: anti-alias the image before resizing, except when the latent grid is 32 high.

    Their code tests the latent height (``if hz == 32``, both branches); for square latents that is the width too.
    """
    return latent_height != 32 if blur is None else bool(blur)


def _axis_resize_matrix(size: int, latent_size: int, blur: bool) -> torch.Tensor:
    """The ``(h, H)`` matrix of the 1-D blur (optional) + bicubic resize, by pushing an identity basis through them."""
    signals = torch.eye(size, dtype=torch.float64).reshape(size, 1, size, 1)  # a batch of H one-pixel-wide impulses
    if blur:
        taps = gaussian_kernel_1d(ESM_BLUR_KERNEL_SIZE, ESM_BLUR_SIGMA)
        signals = F.conv2d(signals, taps.reshape(1, 1, -1, 1), padding=(ESM_BLUR_KERNEL_SIZE // 2, 0))
    # Resizing a width of 1 to 1 is the identity, so this is the 1-D bicubic resize along the height axis.
    signals = F.interpolate(signals, size=(latent_size, 1), mode="bicubic", align_corners=False)  # (H, 1, h, 1)
    return signals.reshape(size, latent_size).T  # (h, H)


@functools.lru_cache(maxsize=64)
def _image_operator_cached(size: int, latent_size: int, blur: bool, device: str) -> torch.Tensor:
    resize = _axis_resize_matrix(size, latent_size, blur)  # (h, H)
    dct = dct_matrix(latent_size, "cpu", torch.float64)  # (h, h)
    return (dct @ resize).to(device=device, dtype=torch.float32)  # (h, H)


def esm_image_operator(size: int, latent_size: int, blur: bool, device=None) -> torch.Tensor:
    """One axis of the ESM image branch: the ``(h, H)`` float32 matrix ``D_h @ Resize @ Blur``.

    Cached per (size, latent size, blur, device); never modify the returned tensor in place.
    """
    return _image_operator_cached(int(size), int(latent_size), bool(blur), str(torch.device(device or "cpu")))


def resized_image_dct(images: torch.Tensor, latent_hw: tuple[int, int], blur: bool) -> torch.Tensor:
    """``DCT(resize(blur(images)))`` in one pass: ``(B, 3, H, W) -> (B, 3, h, w)`` float32."""
    height, width = images.shape[-2:]
    operator_y = esm_image_operator(height, latent_hw[0], blur, images.device)  # (h, H)
    operator_x = esm_image_operator(width, latent_hw[1], blur, images.device)  # (w, W)
    return operator_y @ images.float() @ operator_x.T  # (B, 3, h, w)


def normalize_log_spectrum(spectrum: torch.Tensor, eps: float = ESM_EPS) -> torch.Tensor:
    """ESM step 4: ``log(s + 1 + eps)``, clamped at 0, each row divided by (its sum + eps). ``(B, K) -> (B, K)``.

    Evaluated as ``log1p(s + eps)``: the same number, without the float32 rounding of ``1 + s`` that would quantise
    the band powers of small-scale latents (``s ~ 1e-6`` keeps only ~1 significant digit in ``log(1 + s)``).
    """
    logs = torch.log1p(spectrum + eps).clamp_min(0)
    return logs / (logs.sum(dim=-1, keepdim=True) + eps)


def _check_pair(images: torch.Tensor, latents: torch.Tensor, func: str) -> None:
    require_4d(images, func, "images", channels=3)
    require_4d(latents, func, "latents")
    if images.shape[0] != latents.shape[0]:
        raise ValueError(
            f"{func}: batch sizes differ: images {images.shape[0]}, latents {latents.shape[0]}; pass the latents of "
            "exactly these images."
        )
    require_nonempty_batch(latents, func, "latents")
    if latents.shape[-2] > images.shape[-2] or latents.shape[-1] > images.shape[-1]:
        raise ValueError(
            f"{func}: the latent grid {tuple(latents.shape[-2:])} is larger than the image "
            f"{tuple(images.shape[-2:])}; pass images first and latents second."
        )


def _band_powers(images, latents, n_bins, blur, remove_dc, floor, check_finite, func: str, floor_name: str):
    """:func:`esm_band_powers` with the caller's name in its error messages (``floor_name``: ``floor`` or ``eps``)."""
    _check_pair(images, latents, func)
    n_bins = as_int(n_bins, func, "n_bins", minimum=1)
    blur = as_optional_bool(blur, func, "blur")
    floor = as_float(floor, func, floor_name, minimum=0.0, strict=floor_name == "eps")
    latent_hw = (latents.shape[-2], latents.shape[-1])
    image_coeffs = resized_image_dct(images, latent_hw, esm_uses_blur(latent_hw[0], blur))  # (B, 3, h, w)
    image_bands = band_means(channel_power(image_coeffs, floor), n_bins, remove_dc=remove_dc)  # (B, n_bins)
    latent_power = channel_power(dct_2d(latents.float()), floor)  # (B, h, w)
    latent_bands = band_means(latent_power, n_bins, remove_dc=remove_dc)  # (B, n_bins)
    if should_check_finite(check_finite, images, latents):
        # One sync on two small tensors; NaN/Inf anywhere in an input reaches every band of that sample.
        if not bool(torch.isfinite(image_bands).all() & torch.isfinite(latent_bands).all()):
            require_finite(image_bands, func, "images")
            require_finite(latent_bands, func, "latents")
    return image_bands, latent_bands


def _check_scalars(func: str, delta, eps, loss_type: str | None = None) -> None:
    """Validate the scalar options before any tensor work, naming the public function."""
    as_float(delta, func, "delta")
    as_float(eps, func, "eps", minimum=0.0, strict=True)
    if loss_type is not None:
        _check_loss_type(loss_type)


def esm_band_powers(
    images: torch.Tensor,
    latents: torch.Tensor,
    n_bins: int = 16,
    blur: bool | None = None,
    *,
    remove_dc: bool = True,
    floor: float = ESM_EPS,
    check_finite: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ESM steps 1-2: radial band powers of the resized image and of the latent.

    Args:
        images: ``(B, 3, H, W)`` in [-1, 1].
        latents: ``(B, C, h, w)`` with ``h <= H`` and ``w <= W``.
        n_bins: radial bands.
        blur: anti-alias the image; ``None`` follows the authors (blur unless the latent grid is 32 high).
        remove_dc: zero the DC power after the floor (ESM, the default); ``False`` keeps it, the authors' analysis
            convention (``spectrum_distribution``: ``center="none", remove_dc=False``).
        floor: the authors' ``clamp_min(eps)`` on the channel-averaged power, before binning.
        check_finite: raise on NaN/Inf, checked on the two ``(B, n_bins)`` results; ``None`` checks unless autograd
            records through the call (a training step: the trainer's non-finite guard handles it).

    Returns:
        ``(image_bands, latent_bands)``: two ``(B, n_bins)`` float32 tensors (compute once, flatten with any delta).
    """
    return _band_powers(images, latents, n_bins, blur, remove_dc, floor, check_finite, "esm_band_powers", "floor")


def flattened_log_spectra(
    image_bands: torch.Tensor, latent_bands: torch.Tensor, delta: float = 1.0, eps: float = ESM_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """ESM steps 3-4 on band powers ``(B, n_bins)``: ``s_x[k] *= (k + 1) ** delta``, then both rows to normalised
    log power. Returns ``(target, latent)``, each ``(B, n_bins)`` summing to 1."""
    require_tensor(image_bands, "flattened_log_spectra", "image_bands")
    require_tensor(latent_bands, "flattened_log_spectra", "latent_bands")
    if image_bands.ndim != 2 or image_bands.shape != latent_bands.shape:
        raise ValueError(
            "flattened_log_spectra: `image_bands` and `latent_bands` must both be (B, n_bins) with equal shapes, got "
            f"{tuple(image_bands.shape)} and {tuple(latent_bands.shape)}; compute them with esm_band_powers."
        )
    delta = as_float(delta, "flattened_log_spectra", "delta")
    eps = as_float(eps, "flattened_log_spectra", "eps", minimum=0.0, strict=True)
    if delta != 0:
        image_bands = image_bands * bin_frequencies(image_bands.shape[-1], image_bands.device).pow(delta)
    return normalize_log_spectrum(image_bands, eps), normalize_log_spectrum(latent_bands, eps)


def esm_spectra(
    images: torch.Tensor,
    latents: torch.Tensor,
    delta: float = 1.0,
    n_bins: int = 16,
    blur: bool | None = None,
    eps: float = ESM_EPS,
    *,
    remove_dc: bool = True,
    check_finite: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two normalised log spectra ESM compares: the flattened image target and the latent's.

    Args:
        images: ``(B, 3, H, W)`` in [-1, 1].
        latents: ``(B, C, h, w)`` with ``h <= H`` and ``w <= W``.
        delta: flattening exponent; ``s_x[k] *= (k + 1) ** delta`` (0 keeps the image's law, 1 is ESM).
        n_bins: radial bands.
        blur: anti-alias the image; ``None`` follows the authors (blur unless the latent grid is 32 high).
        eps: the authors' single eps: power floor, log offset and normalisation offset.
        remove_dc: ``False`` keeps the DC power (the authors' analysis convention); see :func:`esm_band_powers`.
        check_finite: see :func:`esm_band_powers`.

    Returns:
        ``(target, latent)``: two ``(B, n_bins)`` float32 rows that each sum to 1.
    """
    _check_scalars("esm_spectra", delta, eps)
    bands = _band_powers(images, latents, n_bins, blur, remove_dc, eps, check_finite, "esm_spectra", "eps")
    return flattened_log_spectra(*bands, delta=delta, eps=eps)


def _check_loss_type(loss_type: str) -> None:
    if loss_type not in ESM_LOSS_TYPES:
        raise ValueError(f"Unknown ESM loss_type {loss_type!r}; choose one of {ESM_LOSS_TYPES}.")


def esm_divergence(
    image_bands: torch.Tensor,
    latent_bands: torch.Tensor,
    delta: float = 1.0,
    loss_type: str = "kl",
    eps: float = ESM_EPS,
) -> torch.Tensor:
    """ESM step 5 on band powers from :func:`esm_band_powers`: per-sample divergence ``(B,)``.

    ``"kl"``: ``KL(target || latent) = sum_k p_k (log p_k - log q_k)`` with eps inside the logs (keeps empty bands
    finite); ``"l2"``: the mean over bins of ``(p_k - q_k)^2``, so its batch mean is the authors'
    ``mse_loss(s_z, s_x)``.
    """
    _check_loss_type(loss_type)
    target, latent = flattened_log_spectra(image_bands, latent_bands, delta=delta, eps=eps)
    if loss_type == "kl":
        return (target * (torch.log(target + eps) - torch.log(latent + eps))).sum(dim=-1)  # (B,)
    return (target - latent).square().mean(dim=-1)  # (B,)


def esm_loss(
    images: torch.Tensor,
    latents: torch.Tensor,
    delta: float = 1.0,
    n_bins: int = 16,
    loss_type: str = "kl",
    blur: bool | None = None,
    eps: float = ESM_EPS,
    *,
    check_finite: bool | None = None,
) -> torch.Tensor:
    """Encoding Spectrum Matching loss: divergence of the latent's radial PSD from the flattened image power law.

    Follows the authors: Gaussian blur (7 x 7, sigma 1.2, zero padding; skipped by default when the latent grid is 32
    high, as in their code), bicubic resize to the latent grid (``align_corners=False``, no antialias),
    channel-averaged DCT power clamped at ``eps``, DC zeroed, 16-band radial means, ``s_x[k] *= (k + 1) ** delta``,
    ``log(s + 1 + eps)`` clamped at 0 and normalised to sum 1, then ``KL(s_x || s_z)`` (``loss_type="kl"``) or the
    authors' ``mse_loss(s_z, s_x)`` (``"l2"``, mean over bins), averaged over the batch.

    Args:
        images: ``(B, 3, H, W)`` in [-1, 1] (the target; gradients flow only if it requires them).
        latents: ``(B, C, h, w)``, e.g. the sampled posterior before any scaling factor; ``B >= 1``.
        delta: flattening exponent (1 is ESM). n_bins: a positive integer. blur: True, False or None (the authors').
        eps: the authors' single eps (power floor, log and normalisation offsets).
        check_finite: see :func:`esm_band_powers` (``None``: checked unless this is a recorded training step).

    Returns:
        Scalar float32 loss.
    """
    _check_scalars("esm_loss", delta, eps, loss_type)
    bands = _band_powers(images, latents, n_bins, blur, True, eps, check_finite, "esm_loss", "eps")
    return esm_divergence(*bands, delta=delta, loss_type=loss_type, eps=eps).mean()


@torch.no_grad()
def spectral_kl(
    images: torch.Tensor,
    latents: torch.Tensor,
    delta: float = 1.0,
    n_bins: int = 16,
    loss_type: str = "kl",
    blur: bool | None = None,
    eps: float = ESM_EPS,
    *,
    remove_dc: bool = True,
    check_finite: bool | None = None,
) -> torch.Tensor:
    """Per-sample ESM divergence without gradient, for diagnostics: ``(B, 3, H, W), (B, C, h, w) -> (B,)``.

    ``remove_dc=False`` gives the authors' analysis number (``spectrum_distribution``'s KL: DC kept, no centring).
    """
    _check_scalars("spectral_kl", delta, eps, loss_type)
    bands = _band_powers(images, latents, n_bins, blur, remove_dc, eps, check_finite, "spectral_kl", "eps")
    return esm_divergence(*bands, delta=delta, loss_type=loss_type, eps=eps)
