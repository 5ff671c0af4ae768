"""Filters for REPA target feature maps on the token grid (SPEC.md, "REPA and DoG-REPA").

- `dog_filter`: Difference of Gaussians band-pass, G_sigma1 * y - G_sigma2 * y per channel, then divided by the
  per-channel spatial std (DoG-REPA).
- `spatial_normalize`: (y - alpha * mean) / std over the grid (iREPA, Singh et al., 2025).
- `rmsc`: RMS spatial contrast of per-token L2-normalised features, the directional AC energy of the map.
- `apply_target_filter`: pick one of them for `(B, N, D)` tokens.

The Gaussians use scipy.ndimage's "reflect" boundary (the edge sample is repeated: d c b a | a b c d) and its kernel
size (radius = int(truncate * sigma + 0.5), truncate 4). On an n-sample axis that extension is 2n-periodic and even,
so the blur is diagonal in the orthonormal DCT-II basis: blur = D^T diag(H) D with H_k = sum_j g[j] cos(pi k j / n).
This holds for any kernel length, so sigma2 may exceed the grid (the limit sigma2 -> infinity is the exact mean),
and each blur is one small (n x n) matrix per axis, built once per (size, sigma, device, dtype). On grids up to
32 x 32 tokens the whole DoG is one (N x N) operator (the Kronecker product of the axis matrices), applied to every
channel in a single matrix product straight on `(B, N, D)` tokens.
"""

import functools
import math

import torch
import torch.nn.functional as F

from ._checks import compute_dtype, require_4d, require_tensor
from .dct import dct_matrix


__all__ = ["TARGET_FILTERS", "apply_target_filter", "dog_filter", "gaussian_blur_matrix", "rmsc", "spatial_normalize"]

TARGET_FILTERS = ("none", "spatial_norm", "dog")
# Beyond this radius the (periodised) sampled kernel is replaced by its closed-form response exp(-(sigma w)^2 / 2);
# the two differ by less than exp(-2 pi^2 sigma^2) there.
_MAX_DIRECT_RADIUS = 1024


# ------------------------------------------------------------------------------------------------
# Gaussian blur with reflect boundary as an (n x n) matrix, exact for any kernel length.


@functools.lru_cache(maxsize=128)
def _blur_matrix_cached(n: int, sigma: float, truncate: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    if radius == 0:
        return torch.eye(n, dtype=dtype, device=device)
    k = torch.arange(n, dtype=torch.float64)
    if radius <= _MAX_DIRECT_RADIUS:
        taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
        kernel = kernel / kernel.sum()
        response = (kernel[None, :] * torch.cos(math.pi * k[:, None] * taps[None, :] / n)).sum(1)  # (n,)
    else:
        response = torch.exp(-0.5 * (sigma * math.pi * k / n) ** 2)
    response[0] = 1.0  # the kernel sums to 1: constants pass unchanged
    basis = dct_matrix(n, "cpu", torch.float64)
    return (basis.T @ torch.diag(response) @ basis).to(device=device, dtype=dtype)


def gaussian_blur_matrix(
    n: int, sigma: float, truncate: float = 4.0, device=None, dtype=torch.float32
) -> torch.Tensor:
    """`(n, n)` matrix `A` with `A @ y` = 1-D Gaussian blur of `y` (reflect boundary, scipy.ndimage conventions).

    Cached per (n, sigma, truncate, device, dtype); never modify the returned tensor in place.
    """
    if n < 1:
        raise ValueError(f"gaussian_blur_matrix needs a positive size, got n={n}.")
    if not sigma >= 0 or not math.isfinite(sigma):
        raise ValueError(f"gaussian_blur_matrix: sigma must be a finite number >= 0, got {sigma}.")
    return _blur_matrix_cached(int(n), float(sigma), float(truncate), str(torch.device(device or "cpu")), dtype)


# Grids up to this many tokens (32 x 32) apply DoG as one (N x N) operator, a single GEMM over all channels; larger
# grids use the separable form (four small matrix products).
_MAX_OPERATOR_TOKENS = 1024


@functools.lru_cache(maxsize=32)
def _dog_operator_cached(
    h: int, w: int, sigma1: float, sigma2: float, truncate: float, device: str, dtype: torch.dtype
) -> torch.Tensor:
    blur = [
        torch.kron(
            gaussian_blur_matrix(h, s, truncate, "cpu", torch.float64),
            gaussian_blur_matrix(w, s, truncate, "cpu", torch.float64),
        )
        for s in (sigma1, sigma2)
    ]
    return (blur[0] - blur[1]).to(device=device, dtype=dtype)  # (N, N), row-major tokens


def _dog_tokens(tokens: torch.Tensor, grid_hw: tuple[int, int], sigma1, sigma2, normalize, eps, truncate):
    """DoG of `(B, N, D)` float tokens along the token axis (the shared core of `dog_filter`)."""
    h, w = grid_hw
    # DoG removes the mean exactly; subtracting it first keeps constant maps at exactly 0 in floating point.
    y = tokens - tokens.mean(dim=1, keepdim=True)  # (B, N, D)
    if h * w <= _MAX_OPERATOR_TOKENS:
        operator = _dog_operator_cached(h, w, float(sigma1), float(sigma2), float(truncate), str(y.device), y.dtype)
        out = operator @ y  # (B, N, D)
    else:
        grid = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], h, w)  # (B, D, h, w)
        a1_h, a2_h = (gaussian_blur_matrix(h, s, truncate, y.device, y.dtype) for s in (sigma1, sigma2))
        a1_w, a2_w = (gaussian_blur_matrix(w, s, truncate, y.device, y.dtype) for s in (sigma1, sigma2))
        out = (a1_h @ grid @ a1_w.T - a2_h @ grid @ a2_w.T).flatten(2).transpose(1, 2)  # (B, N, D)
    if normalize:
        out = out / (out.var(dim=1, correction=0, keepdim=True).sqrt() + eps)
    return out


def _grid_std(x: torch.Tensor) -> torch.Tensor:
    """Population std over the last two axes, `(..., 1, 1)`."""
    return x.var(dim=(-2, -1), correction=0, keepdim=True).sqrt()


# ------------------------------------------------------------------------------------------------
# Target filters on (B, D, h, w) feature maps.


def dog_filter(
    features: torch.Tensor,
    sigma1: float = 0.6,
    sigma2: float = 2.0,
    normalize: bool = True,
    eps: float = 1e-6,
    truncate: float = 4.0,
) -> torch.Tensor:
    """Difference of Gaussians band-pass per channel (DoG-REPA): y' = G_sigma1 * y - G_sigma2 * y, then
    y' / (std + eps) with the per-channel spatial std.

    Args:
        features: `(B, D, h, w)` feature map (sigmas in token units).
        sigma1, sigma2: inner and outer widths, `0 <= sigma1 < sigma2`; sigma2 may exceed the grid
            (sigma1 -> 0, sigma2 -> infinity gives (y - mean) / std).
        normalize: divide by the per-channel spatial std (population std over h, w). A constant map gives 0.
        eps: added to the std so constant maps stay 0.
        truncate: kernel radius in sigmas (scipy's convention).

    Returns:
        `(B, D, h, w)` in the input's dtype (computed in float32, float64 for float64 input).
    """
    require_4d(features, "dog_filter", "features")
    _check_sigmas(sigma1, sigma2)
    b, d, h, w = features.shape
    tokens = features.to(compute_dtype(features.dtype)).flatten(2).transpose(1, 2)  # (B, N, D)
    out = _dog_tokens(tokens, (h, w), sigma1, sigma2, normalize, eps, truncate)
    return out.transpose(1, 2).reshape(b, d, h, w).to(features.dtype)


def _check_sigmas(sigma1: float, sigma2: float) -> None:
    if not 0 <= sigma1 < sigma2:
        raise ValueError(f"dog_filter: need 0 <= sigma1 < sigma2, got sigma1={sigma1}, sigma2={sigma2}.")


def spatial_normalize(features: torch.Tensor, alpha: float = 0.6, eps: float = 1e-6) -> torch.Tensor:
    """iREPA's spatial normalisation (y - alpha * mean) / (std + eps) per image and channel over the grid.

    Args:
        features: `(B, D, h, w)` feature map.
        alpha: fraction of the spatial mean removed (iREPA: 0.6; 1.0 removes the DC entirely).

    Returns:
        `(B, D, h, w)` in the input's dtype.
    """
    require_4d(features, "spatial_normalize", "features")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"spatial_normalize: alpha must be in [0, 1], got {alpha}.")
    y = features.to(compute_dtype(features.dtype))
    out = (y - alpha * y.mean(dim=(-2, -1), keepdim=True)) / (_grid_std(y) + eps)
    return out.to(features.dtype)


def _as_tokens(features: torch.Tensor, func: str) -> torch.Tensor:
    require_tensor(features, func, "features")
    if features.ndim == 4:
        return features.flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, N, D)
    if features.ndim == 3:
        return features
    raise ValueError(
        f"{func}: `features` must be (B, N, D) tokens or a (B, D, h, w) map, got {tuple(features.shape)}."
    )


def rmsc(features: torch.Tensor) -> torch.Tensor:
    """RMS spatial contrast: sqrt(mean_n ||u_n - mean_n u||^2) for per-token L2-normalised features u_n, per image.

    It equals the AC (non-DC) energy of the normalised map: 0 for a map whose tokens all point the same way, at most
    1. Accepts `(B, N, D)` tokens or a `(B, D, h, w)` map; returns `(B,)` float32 (float64 for float64 input).
    """
    tokens = _as_tokens(features, "rmsc")
    unit = F.normalize(tokens.to(compute_dtype(tokens.dtype)), dim=-1)  # (B, N, D)
    centered = unit - unit.mean(dim=1, keepdim=True)
    return centered.square().sum(-1).mean(1).sqrt()  # (B,)


def apply_target_filter(
    tokens: torch.Tensor,
    grid_hw: tuple[int, int],
    filter: str = "none",
    sigma1: float = 0.6,
    sigma2: float = 2.0,
    alpha: float = 0.6,
) -> torch.Tensor:
    """Filter REPA target tokens on their grid: `"none"`, `"spatial_norm"` (iREPA) or `"dog"` (DoG-REPA).

    Args:
        tokens: `(B, N, D)` with `N = h * w`, row-major over the grid.
        grid_hw: `(h, w)` of the token grid.
        filter: which filter; `sigma1`, `sigma2` are used by `"dog"`, `alpha` by `"spatial_norm"`.

    Returns:
        `(B, N, D)` filtered tokens in the input's dtype.
    """
    if filter not in TARGET_FILTERS:
        raise ValueError(f"apply_target_filter: filter must be one of {TARGET_FILTERS}, got {filter!r}.")
    require_tensor(tokens, "apply_target_filter", "tokens")
    h, w = (int(v) for v in grid_hw)
    if tokens.ndim != 3 or tokens.shape[1] != h * w:
        raise ValueError(
            f"apply_target_filter: `tokens` must be (B, N, D) with N = h * w = {h * w} for grid_hw={tuple(grid_hw)}, "
            f"got shape {tuple(tokens.shape)}."
        )
    if filter == "none":
        return tokens
    if filter == "dog":  # straight on the token axis: no layout change
        _check_sigmas(sigma1, sigma2)
        out = _dog_tokens(tokens.to(compute_dtype(tokens.dtype)), (h, w), sigma1, sigma2, True, 1e-6, 4.0)
        return out.to(tokens.dtype)
    grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)  # (B, D, h, w)
    return spatial_normalize(grid, alpha).flatten(2).transpose(1, 2)  # (B, N, D)
