"""Input checks shared by the spectral functions: each raises a ValueError/TypeError that names the fix."""

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype spectral maths runs in: float64 stays float64, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def require_tensor(x, func: str, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{func}: `{name}` must be a torch.Tensor, got {type(x).__name__}.")
    if not torch.is_floating_point(x):
        raise TypeError(
            f"{func}: `{name}` must be a floating-point tensor, got dtype {x.dtype}; call `.float()` first."
        )


def require_min_dims(x, ndim: int, func: str, name: str) -> None:
    require_tensor(x, func, name)
    if x.ndim < ndim:
        raise ValueError(f"{func}: `{name}` needs at least {ndim} dimensions, got shape {tuple(x.shape)}.")


def require_4d(x, func: str, name: str, channels: int | None = None) -> None:
    """``x`` must be a float ``(B, C, H, W)`` tensor (with ``C == channels`` when given)."""
    require_tensor(x, func, name)
    if x.ndim != 4:
        raise ValueError(
            f"{func}: `{name}` must be a 4-D (B, C, H, W) tensor, got shape {tuple(x.shape)}"
            + ("; add a batch axis with `x[None]`." if x.ndim == 3 else ".")
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{func}: `{name}` must have {channels} channels (RGB), got shape {tuple(x.shape)}; "
            "convert grayscale/RGBA images to RGB first."
        )


def require_finite(x: torch.Tensor, func: str, name: str) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(
            f"{func}: `{name}` contains NaN or Inf values; check the data and the model's outputs "
            "(a diverged step or a corrupt image)."
        )
