"""Encoding Spectrum Matching (SPEC.md, "ESM: Encoding Spectrum Matching").

The image branch (zero-padded 7x7 Gaussian blur, bicubic resize, orthonormal DCT) is linear and separable over the two
axes, so it collapses into one precomputed ``(h, H)`` matrix per axis: ``DCT(resize(blur(x))) = M_y x M_x^T``. The
matrices are built by pushing an identity basis through exactly those torch operations, once per size and device.
"""

import functools

import torch
import torch.nn.functional as F

from ._checks import require_4d, require_finite
from .dct import dct_2d, dct_matrix
from .psd import band_means, bin_frequencies, channel_power


ESM_BLUR_KERNEL_SIZE = 7  # the authors' anti-alias kernel: 7 x 7 ...
ESM_BLUR_SIGMA = 1.2  # ... with sigma 1.2, normalised to sum 1, zero padding
ESM_EPS = 1e-8
ESM_LOSS_TYPES = ("kl", "l2")


def gaussian_kernel_1d(kernel_size: int, sigma: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``(kernel_size,)``; the outer product of two is the normalised 2-D kernel."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}.")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}.")
    offsets = torch.arange(kernel_size, dtype=dtype) - (kernel_size - 1) / 2
    taps = torch.exp(-offsets.square() / (2 * sigma**2))
    return taps / taps.sum()


def esm_uses_blur(latent_width: int, blur: bool | None = None) -> bool:
    """The authors' rule: anti-alias the image before resizing, except when the latent grid is 32 wide."""
    return latent_width != 32 if blur is None else bool(blur)


def _axis_resize_matrix(size: int, latent_size: int, blur: bool) -> torch.Tensor:
    """The ``(h, H)`` matrix of the 1-D blur (optional) + bicubic resize, by pushing an identity basis through them."""
    signals = torch.eye(size, dtype=torch.float64).reshape(size, 1, size, 1)  # a batch of H one-pixel-wide impulses
    if blur:
        taps = gaussian_kernel_1d(ESM_BLUR_KERNEL_SIZE, ESM_BLUR_SIGMA)
        signals = F.conv2d(signals, taps.reshape(1, 1, -1, 1), padding=(ESM_BLUR_KERNEL_SIZE // 2, 0))
    # Resizing a width of 1 to 1 is the identity, so this is the 1-D bicubic resize along the height axis.
    signals = F.interpolate(signals, size=(latent_size, 1), mode="bicubic", align_corners=False)  # (H, 1, h, 1)
    return signals.reshape(size, latent_size).T  # (h, H)


def _periodic_taps(resize: torch.Tensor) -> tuple[int, torch.Tensor] | None:
    """``(first, weights)`` if output ``d`` reads exactly pixels ``f*d + first + t`` with the same weights for every
    ``d`` (an integer-factor bicubic downsample without blur, e.g. the authors' unblurred f8 case), else ``None``."""
    latent_size, size = resize.shape
    if size % latent_size:
        return None
    factor = size // latent_size
    support = resize[0].nonzero().flatten()
    if support.numel() == 0 or int(support[-1]) >= factor + int(support[0]) + factor:
        return None
    first, last = int(support[0]), int(support[-1]) + 1
    weights = resize[0, first:last]
    for d in range(latent_size):
        lo, hi = factor * d + first, factor * d + last
        if hi > size or not torch.equal(resize[d, lo:hi], weights) or resize[d].abs().sum() != weights.abs().sum():
            return None
    return first, weights


@functools.lru_cache(maxsize=64)
def _image_operator_cached(size: int, latent_size: int, blur: bool, device: str):
    resize = _axis_resize_matrix(size, latent_size, blur)  # (h, H)
    dct = dct_matrix(latent_size, "cpu", torch.float64)
    taps = _periodic_taps(resize)
    dense = (dct @ resize).to(device=device, dtype=torch.float32)  # (h, H)
    if taps is not None:
        taps = (taps[0], taps[1].to(device=device, dtype=torch.float32))
    return dense, dct.to(device=device, dtype=torch.float32), taps


def esm_image_operator(size: int, latent_size: int, blur: bool, device=None):
    """One axis of the ESM image branch, cached per (size, latent size, blur, device).

    Returns ``(dense, dct, taps)``: ``dense`` is the ``(h, H)`` float32 matrix ``D_h @ Resize @ Blur``; for an
    integer-factor downsample without blur, ``taps = (first, weights)`` describes the same resize as a strided read
    (pixel ``f*d + first + t`` times ``weights[t]``) to be followed by ``dct`` ``(h, h)``; otherwise ``taps`` is None.
    """
    return _image_operator_cached(int(size), int(latent_size), bool(blur), str(torch.device(device or "cpu")))


def resized_image_dct(images: torch.Tensor, latent_hw: tuple[int, int], blur: bool) -> torch.Tensor:
    """``DCT(resize(blur(images)))`` in one pass: ``(B, 3, H, W) -> (B, 3, h, w)`` float32."""
    height, width = images.shape[-2:]
    dense_y, dct_y, taps_y = esm_image_operator(height, latent_hw[0], blur, images.device)
    dense_x, _, _ = esm_image_operator(width, latent_hw[1], blur, images.device)
    pixels = images.float()
    if taps_y is None:
        return dense_y @ pixels @ dense_x.T  # (B, 3, h, w)
    # Rows through the strided taps (contiguous reads of whole rows), then the small dense product for the columns.
    first, weights = taps_y
    grouped = pixels.unflatten(-2, (latent_hw[0], height // latent_hw[0]))  # (B, 3, h, f, W)
    rows = (weights[None, :] @ grouped[..., first : first + len(weights), :]).squeeze(-2)  # (B, 3, h, W)
    return dct_y @ (rows @ dense_x.T)  # (B, 3, h, w)


def normalize_log_spectrum(spectrum: torch.Tensor, eps: float = ESM_EPS) -> torch.Tensor:
    """ESM step 4: ``log(s + 1 + eps)``, clamped at 0, each row divided by (its sum + eps). ``(B, K) -> (B, K)``."""
    logs = torch.log(spectrum + 1 + eps).clamp_min(0)
    return logs / (logs.sum(dim=-1, keepdim=True) + eps)


def _check_pair(images: torch.Tensor, latents: torch.Tensor, func: str) -> None:
    require_4d(images, func, "images", channels=3)
    require_4d(latents, func, "latents")
    if images.shape[0] != latents.shape[0]:
        raise ValueError(f"{func}: batch sizes differ: images {images.shape[0]}, latents {latents.shape[0]}.")
    if latents.shape[-2] > images.shape[-2] or latents.shape[-1] > images.shape[-1]:
        raise ValueError(
            f"{func}: the latent grid {tuple(latents.shape[-2:])} is larger than the image "
            f"{tuple(images.shape[-2:])}; pass images first and latents second."
        )
    # Finiteness is checked on the small (B, n_bins) spectra in `esm_spectra`: NaN/Inf propagate through the linear
    # image branch, and checking the full-resolution images would cost more than the loss itself.


def esm_band_powers(
    images: torch.Tensor, latents: torch.Tensor, n_bins: int = 16, blur: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """ESM steps 1-2: raw DC-free radial band powers of the resized image and of the latent.

    Args:
        images: ``(B, 3, H, W)`` in [-1, 1].
        latents: ``(B, C, h, w)`` with ``h <= H`` and ``w <= W``.
        blur: anti-alias the image; ``None`` follows the authors (blur unless the latent grid is 32 wide).

    Returns:
        ``(image_bands, latent_bands)``: two ``(B, n_bins)`` float32 tensors (compute once, flatten with any delta).
    """
    _check_pair(images, latents, "esm_band_powers")
    latent_hw = (latents.shape[-2], latents.shape[-1])
    image_coeffs = resized_image_dct(images, latent_hw, esm_uses_blur(latent_hw[1], blur))  # (B, 3, h, w)
    image_bands = band_means(channel_power(image_coeffs), n_bins, remove_dc=True)  # (B, n_bins)
    latent_bands = band_means(channel_power(dct_2d(latents.float())), n_bins, remove_dc=True)  # (B, n_bins)
    if not bool(torch.isfinite(image_bands).all() & torch.isfinite(latent_bands).all()):
        require_finite(images, "esm_band_powers", "images")
        require_finite(latents, "esm_band_powers", "latents")
    return image_bands, latent_bands


def flattened_log_spectra(
    image_bands: torch.Tensor, latent_bands: torch.Tensor, delta: float = 1.0, eps: float = ESM_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """ESM steps 3-4 on band powers ``(B, n_bins)``: ``s_x[k] *= (k + 1) ** delta``, then both rows to normalised
    log power. Returns ``(target, latent)``, each ``(B, n_bins)`` summing to 1."""
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two normalised log spectra ESM compares: the flattened image target and the latent's.

    Args:
        images: ``(B, 3, H, W)`` in [-1, 1].
        latents: ``(B, C, h, w)`` with ``h <= H`` and ``w <= W``.
        delta: flattening exponent; ``s_x[k] *= (k + 1) ** delta`` (0 keeps the image's law, 1 is ESM).
        n_bins: radial bands.
        blur: anti-alias the image; ``None`` follows the authors (blur unless the latent grid is 32 wide).
        eps: the log / normalisation offset.

    Returns:
        ``(target, latent)``: two ``(B, n_bins)`` float32 rows that each sum to 1.
    """
    return flattened_log_spectra(*esm_band_powers(images, latents, n_bins, blur), delta=delta, eps=eps)


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
    finite); ``"l2"``: squared L2 distance between the normalised rows.
    """
    _check_loss_type(loss_type)
    target, latent = flattened_log_spectra(image_bands, latent_bands, delta=delta, eps=eps)
    if loss_type == "kl":
        return (target * (torch.log(target + eps) - torch.log(latent + eps))).sum(dim=-1)  # (B,)
    return (target - latent).square().sum(dim=-1)  # (B,)


def esm_loss(
    images: torch.Tensor,
    latents: torch.Tensor,
    delta: float = 1.0,
    n_bins: int = 16,
    loss_type: str = "kl",
    blur: bool | None = None,
    eps: float = ESM_EPS,
) -> torch.Tensor:
    """Encoding Spectrum Matching loss: divergence of the latent's radial PSD from the flattened image power law.

    Follows the authors: Gaussian blur (7 x 7, sigma 1.2, zero padding; skipped by default when the latent grid is 32
    wide, as in their code), bicubic resize to the latent grid (``align_corners=False``, no antialias), DC-free
    16-band radial spectra, ``s_x[k] *= (k + 1) ** delta``, ``log(s + 1 + eps)`` clamped at 0 and normalised to sum
    1, then ``KL(s_x || s_z)`` (``loss_type="kl"``) or the squared L2 distance (``"l2"``), averaged over the batch.

    Args:
        images: ``(B, 3, H, W)`` in [-1, 1] (the target; gradients flow only if it requires them).
        latents: ``(B, C, h, w)``, e.g. the sampled posterior before any scaling factor.

    Returns:
        Scalar float32 loss.
    """
    _check_loss_type(loss_type)
    bands = esm_band_powers(images, latents, n_bins, blur)
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
) -> torch.Tensor:
    """Per-sample ESM divergence without gradient, for diagnostics: ``(B, 3, H, W), (B, C, h, w) -> (B,)``."""
    _check_loss_type(loss_type)
    bands = esm_band_powers(images, latents, n_bins, blur)
    return esm_divergence(*bands, delta=delta, loss_type=loss_type, eps=eps)
