"""Filters for REPA target feature maps on the token grid (DoG-REPA: Ning et al. 2026, "Spectrum Matching").

- `dog_filter`: Difference of Gaussians band-pass, G_sigma1 * y - G_sigma2 * y per channel, then divided by the
  per-channel spatial std (DoG-REPA).
- `spatial_normalize`: (y - alpha * mean) / std over the grid (iREPA, Singh et al., 2025; unbiased std, as theirs).
- `rmsc`: RMS spatial contrast of per-token L2-normalised features, the directional AC energy of the map.
- `apply_target_filter`: pick one of them for `(B, N, D)` tokens.

The Gaussians use scipy.ndimage's "reflect" boundary (the edge sample is repeated: d c b a | a b c d) and its kernel
size (radius = int(truncate * sigma + 0.5), truncate 4). On an n-sample axis that extension is 2n-periodic and even,
so the blur is diagonal in the orthonormal DCT-II basis: blur = D^T diag(H) D with H_k = sum_j g[j] cos(pi k j / n).
The cosine is 2n-periodic in j, so the taps are first folded modulo 2n: any kernel length costs O(radius + n^2), and
sigma2 may exceed the grid (the limit sigma2 -> infinity is the exact mean). Each blur is one small (n x n) matrix
per axis, built once per (size, sigma, truncate, device, dtype); the DoG is four such products per map. (One (N x N)
operator for small grids measured ~20% faster at 16 x 16 tokens and slower at 32 x 32 on CPU: not worth a second path.)
"""

import functools
import math

import torch
import torch.nn.functional as F

from ._checks import (
    as_float,
    as_int,
    compute_dtype,
    require_4d,
    require_finite,
    require_finite_sum,
    require_tensor,
    should_check_finite,
)
from .dct import dct_matrix


__all__ = ["TARGET_FILTERS", "apply_target_filter", "dog_filter", "gaussian_blur_matrix", "rmsc", "spatial_normalize"]

TARGET_FILTERS = ("none", "spatial_norm", "dog")
# The folded kernel needs 2 * radius + 1 taps in memory once; beyond this radius (sigma ~2.6e5 at truncate 4) the
# Gaussian has long since become the grid mean (for sigma >= 3 n every non-DC response is below 1e-19).
_MAX_KERNEL_RADIUS = 2**20


# ------------------------------------------------------------------------------------------------
# Gaussian blur with reflect boundary as an (n x n) matrix, exact for any kernel length.


def _check_blur_args(func: str, sigma, truncate, name: str = "sigma") -> tuple[float, float, int]:
    """Validate ``sigma >= 0`` and ``truncate > 0`` (finite numbers); return them with scipy's kernel radius."""
    sigma = as_float(sigma, func, name, minimum=0.0)
    truncate = as_float(truncate, func, "truncate", minimum=0.0, strict=True)
    radius = int(truncate * sigma + 0.5)
    if radius > _MAX_KERNEL_RADIUS:
        raise ValueError(
            f"{func}: {name}={sigma:g} with truncate={truncate:g} needs a kernel radius of {radius} taps (more than "
            f"{_MAX_KERNEL_RADIUS}); a Gaussian wider than a few grid sizes already averages the grid to its mean, "
            f"so pass {name} of at most 3 x the grid side."
        )
    return sigma, truncate, radius


@functools.lru_cache(maxsize=128)
def _blur_matrix_cached(n: int, sigma: float, radius: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    if radius == 0:
        return torch.eye(n, dtype=dtype, device=device)
    taps = torch.arange(-radius, radius + 1, dtype=torch.int64)
    kernel = torch.exp(-0.5 * (taps.double() / sigma) ** 2)
    kernel = kernel / kernel.sum()  # (2 radius + 1,) scipy's normalised sampled kernel
    folded = torch.bincount(taps.remainder(2 * n), weights=kernel, minlength=2 * n)  # (2n,) taps modulo the period
    k = torch.arange(n, dtype=torch.float64)[:, None]
    m = torch.arange(2 * n, dtype=torch.float64)[None, :]
    response = (folded[None, :] * torch.cos(math.pi * k * m / n)).sum(1)  # (n,) H_k
    response[0] = 1.0  # the kernel sums to 1: constants pass unchanged
    basis = dct_matrix(n, "cpu", torch.float64)
    return (basis.T @ torch.diag(response) @ basis).to(device=device, dtype=dtype)


def gaussian_blur_matrix(
    n: int, sigma: float, truncate: float = 4.0, device=None, dtype=torch.float32
) -> torch.Tensor:
    """`(n, n)` matrix `A` with `A @ y` = 1-D Gaussian blur of `y` (reflect boundary, scipy.ndimage conventions).

    Args:
        n: axis length. sigma: width in samples, >= 0 (0 is the identity). truncate: kernel radius in sigmas, > 0.

    Cached per (n, sigma, truncate, device, dtype); never modify the returned tensor in place.
    """
    n = as_int(n, "gaussian_blur_matrix", "n", minimum=1)
    sigma, _, radius = _check_blur_args("gaussian_blur_matrix", sigma, truncate)
    return _blur_matrix_cached(n, sigma, radius, str(torch.device(device or "cpu")), dtype)


def _check_dog_args(func: str, sigma1, sigma2, truncate, eps) -> tuple[float, float, float, float]:
    sigma1, truncate, _ = _check_blur_args(func, sigma1, truncate, "sigma1")
    sigma2, _, radius2 = _check_blur_args(func, sigma2, truncate, "sigma2")
    eps = as_float(eps, func, "eps", minimum=0.0, strict=True)
    if not sigma1 < sigma2:
        raise ValueError(f"{func}: need 0 <= sigma1 < sigma2, got sigma1={sigma1}, sigma2={sigma2}.")
    if radius2 == 0:
        raise ValueError(
            f"{func}: truncate={truncate:g} gives sigma2={sigma2:g} a kernel radius of 0 taps, so both Gaussians are "
            f"the identity and the DoG is identically 0; use truncate >= {0.5 / sigma2:.3g} (scipy's default is 4.0)."
        )
    return sigma1, sigma2, truncate, eps


def _dog_grid(grid: torch.Tensor, sigma1: float, sigma2: float, truncate: float, normalize: bool, eps: float):
    """DoG of a float `(B, D, h, w)` map per channel, separable: `A1_h y A1_w^T - A2_h y A2_w^T`."""
    h, w = grid.shape[-2:]
    # DoG removes the mean exactly; subtracting it first keeps constant maps at exactly 0 in floating point.
    y = grid - grid.mean(dim=(-2, -1), keepdim=True)  # (B, D, h, w)
    a1_h, a2_h = (gaussian_blur_matrix(h, s, truncate, y.device, y.dtype) for s in (sigma1, sigma2))
    a1_w, a2_w = (gaussian_blur_matrix(w, s, truncate, y.device, y.dtype) for s in (sigma1, sigma2))
    out = a1_h @ y @ a1_w.T - a2_h @ y @ a2_w.T  # (B, D, h, w)
    if normalize:
        out = out / (out.var(dim=(-2, -1), correction=0, keepdim=True).sqrt() + eps)
    return out


# ------------------------------------------------------------------------------------------------
# Target filters on (B, D, h, w) feature maps.


def dog_filter(
    features: torch.Tensor,
    sigma1: float = 0.6,
    sigma2: float = 2.0,
    normalize: bool = True,
    eps: float = 1e-6,
    truncate: float = 4.0,
    *,
    check_finite: bool | None = None,
) -> torch.Tensor:
    """Difference of Gaussians band-pass per channel (DoG-REPA): y' = G_sigma1 * y - G_sigma2 * y, then
    y' / (std + eps) with the per-channel spatial std.

    Args:
        features: `(B, D, h, w)` feature map (sigmas in token units).
        sigma1, sigma2: inner and outer widths, `0 <= sigma1 < sigma2`; sigma2 may exceed the grid
            (sigma1 -> 0, sigma2 -> infinity gives (y - mean) / std).
        normalize: divide by the per-channel spatial std (population std over h, w). A constant map gives 0.
        eps: added to the std so constant maps stay 0 (> 0).
        truncate: kernel radius in sigmas (scipy's convention, > 0); the outer kernel must have at least one tap
            each side (`truncate * sigma2 >= 0.5`), else the DoG would be identically 0.
        check_finite: raise on NaN/Inf (one sum of the output); `None` checks unless autograd records through
            `features` (see `spectral/_checks.py`).

    Returns:
        `(B, D, h, w)` in the input's dtype (computed in float32, float64 for float64 input).
    """
    require_4d(features, "dog_filter", "features")
    sigma1, sigma2, truncate, eps = _check_dog_args("dog_filter", sigma1, sigma2, truncate, eps)
    out = _dog_grid(features.to(compute_dtype(features.dtype)), sigma1, sigma2, truncate, bool(normalize), eps)
    if should_check_finite(check_finite, features):
        require_finite_sum(out, "dog_filter", "features")
    return out.to(features.dtype)


def spatial_normalize(
    features: torch.Tensor, alpha: float = 0.6, eps: float = 1e-6, *, check_finite: bool | None = None
) -> torch.Tensor:
    """iREPA's spatial normalisation (y - alpha * mean) / (std + eps) per image and channel over the grid.

    The std is the unbiased (N - 1) one over the h * w tokens, as iREPA's ``feat.std(dim=1)``.

    Args:
        features: `(B, D, h, w)` feature map with at least 2 tokens.
        alpha: fraction of the spatial mean removed, in [0, 1] (iREPA: 0.6; 1.0 removes the DC entirely).
        eps: added to the std (> 0).
        check_finite: raise on NaN/Inf (one sum of the output); `None` checks unless autograd records through
            `features`.

    Returns:
        `(B, D, h, w)` in the input's dtype.
    """
    require_4d(features, "spatial_normalize", "features")
    if features.shape[-2] * features.shape[-1] < 2:
        raise ValueError(
            f"spatial_normalize: `features` needs at least 2 tokens for a spatial std, got shape "
            f"{tuple(features.shape)}."
        )
    alpha = as_float(alpha, "spatial_normalize", "alpha", minimum=0.0)
    if alpha > 1.0:
        raise ValueError(f"spatial_normalize: `alpha` must be in [0, 1], got {alpha}.")
    eps = as_float(eps, "spatial_normalize", "eps", minimum=0.0, strict=True)
    y = features.to(compute_dtype(features.dtype))
    std = y.std(dim=(-2, -1), keepdim=True)  # unbiased (N - 1), as iREPA
    out = (y - alpha * y.mean(dim=(-2, -1), keepdim=True)) / (std + eps)
    if should_check_finite(check_finite, features):
        require_finite_sum(out, "spatial_normalize", "features")
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


def rmsc(features: torch.Tensor, *, check_finite: bool | None = None) -> torch.Tensor:
    """RMS spatial contrast: sqrt(mean_n ||u_n - mean_n u||^2) for per-token L2-normalised features u_n, per image.

    It equals the AC (non-DC) energy of the normalised map: 0 for a map whose tokens all point the same way, at most
    1. Accepts `(B, N, D)` tokens or a `(B, D, h, w)` map; returns `(B,)` float32 (float64 for float64 input).
    `check_finite`: raise on NaN/Inf (checked on the `(B,)` result); `None` checks unless autograd records.
    """
    tokens = _as_tokens(features, "rmsc")
    unit = F.normalize(tokens.to(compute_dtype(tokens.dtype)), dim=-1)  # (B, N, D)
    centered = unit - unit.mean(dim=1, keepdim=True)
    out = centered.square().sum(-1).mean(1).sqrt()  # (B,)
    if should_check_finite(check_finite, features):
        require_finite(out, "rmsc", "features")
    return out


def apply_target_filter(
    tokens: torch.Tensor,
    grid_hw: tuple[int, int],
    filter: str = "none",
    sigma1: float = 0.6,
    sigma2: float = 2.0,
    alpha: float = 0.6,
    *,
    check_finite: bool = False,
) -> torch.Tensor:
    """Filter REPA target tokens on their grid: `"none"`, `"spatial_norm"` (iREPA) or `"dog"` (DoG-REPA).

    This is the trainers' entry point (called every step), so it does not check for NaN/Inf unless
    `check_finite=True` (the trainer's non-finite guard sees them in the loss).

    Args:
        tokens: `(B, N, D)` with `N = h * w`, row-major over the grid.
        grid_hw: `(h, w)` of the token grid (positive integers).
        filter: which filter; `sigma1`, `sigma2` are used by `"dog"`, `alpha` by `"spatial_norm"`.

    Returns:
        `(B, N, D)` filtered tokens in the input's dtype.
    """
    if filter not in TARGET_FILTERS:
        raise ValueError(f"apply_target_filter: filter must be one of {TARGET_FILTERS}, got {filter!r}.")
    require_tensor(tokens, "apply_target_filter", "tokens")
    if not isinstance(grid_hw, (tuple, list)) or len(grid_hw) != 2:
        raise TypeError(f"apply_target_filter: `grid_hw` must be a pair (h, w), got {grid_hw!r}.")
    h, w = (as_int(v, "apply_target_filter", "grid_hw", minimum=1) for v in grid_hw)
    if tokens.ndim != 3 or tokens.shape[1] != h * w:
        raise ValueError(
            f"apply_target_filter: `tokens` must be (B, N, D) with N = h * w = {h * w} for grid_hw={tuple(grid_hw)}, "
            f"got shape {tuple(tokens.shape)}."
        )
    if filter == "none":
        return tokens
    grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)  # (B, D, h, w)
    if filter == "dog":
        out = dog_filter(grid, sigma1, sigma2, check_finite=check_finite)
    else:
        out = spatial_normalize(grid, alpha, check_finite=check_finite)
    return out.flatten(2).transpose(1, 2)  # (B, N, D)
