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


@functools.lru_cache(maxsize=64)
def _image_operator_cached(size: int, latent_size: int, blur: bool, device: str) -> torch.Tensor:
    basis = torch.eye(size, dtype=torch.float64)  # (H, H): column j is the unit impulse at pixel j
    signals = basis.reshape(size, 1, size, 1)  # (H, 1, H, 1): a batch of H one-pixel-wide images
    if blur:
        taps = gaussian_kernel_1d(ESM_BLUR_KERNEL_SIZE, ESM_BLUR_SIGMA)
        signals = F.conv2d(signals, taps.reshape(1, 1, -1, 1), padding=(ESM_BLUR_KERNEL_SIZE // 2, 0))
    # Resizing a width of 1 to 1 is the identity, so this is the 1-D bicubic resize along the height axis.
    signals = F.interpolate(signals, size=(latent_size, 1), mode="bicubic", align_corners=False)  # (H, 1, h, 1)
    resize = signals.reshape(size, latent_size).T  # (h, H)
    operator = dct_matrix(latent_size, "cpu", torch.float64) @ resize  # (h, H)
    return operator.to(device=device, dtype=torch.float32)


def esm_image_operator(size: int, latent_size: int, blur: bool, device=None) -> torch.Tensor:
    """The ``(latent_size, size)`` matrix ``D_h @ Resize @ Blur`` for one axis (float32, cached)."""
    return _image_operator_cached(int(size), int(latent_size), bool(blur), str(torch.device(device or "cpu")))


def resized_image_dct(images: torch.Tensor, latent_hw: tuple[int, int], blur: bool) -> torch.Tensor:
    """``DCT(resize(blur(images)))`` in one pass: ``(B, 3, H, W) -> (B, 3, h, w)`` float32."""
    height, width = images.shape[-2:]
    op_y = esm_image_operator(height, latent_hw[0], blur, images.device)  # (h, H)
    op_x = esm_image_operator(width, latent_hw[1], blur, images.device)  # (w, W)
    return op_y @ images.float() @ op_x.T  # (B, 3, h, w)


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
    require_finite(images, func, "images")
    require_finite(latents, func, "latents")


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
    _check_pair(images, latents, "esm_spectra")
    latent_hw = (latents.shape[-2], latents.shape[-1])
    image_coeffs = resized_image_dct(images, latent_hw, esm_uses_blur(latent_hw[1], blur))  # (B, 3, h, w)
    image_bands = band_means(channel_power(image_coeffs, remove_dc=True), n_bins)  # (B, n_bins)
    latent_bands = band_means(channel_power(dct_2d(latents.float()), remove_dc=True), n_bins)  # (B, n_bins)
    if delta != 0:
        image_bands = image_bands * bin_frequencies(n_bins, images.device).pow(delta)
    return normalize_log_spectrum(image_bands, eps), normalize_log_spectrum(latent_bands, eps)


def _divergence(target: torch.Tensor, latent: torch.Tensor, loss_type: str, eps: float) -> torch.Tensor:
    if loss_type == "kl":
        # KL(target || latent) = sum_k p_k (log p_k - log q_k); eps inside the logs keeps empty bands finite.
        return (target * (torch.log(target + eps) - torch.log(latent + eps))).sum(dim=-1)  # (B,)
    return (target - latent).square().sum(dim=-1)  # (B,) squared L2 between the normalised rows


def _check_loss_type(loss_type: str) -> None:
    if loss_type not in ESM_LOSS_TYPES:
        raise ValueError(f"Unknown ESM loss_type {loss_type!r}; choose one of {ESM_LOSS_TYPES}.")


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
    target, latent = esm_spectra(images, latents, delta=delta, n_bins=n_bins, blur=blur, eps=eps)
    return _divergence(target, latent, loss_type, eps).mean()


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
    target, latent = esm_spectra(images, latents, delta=delta, n_bins=n_bins, blur=blur, eps=eps)
    return _divergence(target, latent, loss_type, eps)

