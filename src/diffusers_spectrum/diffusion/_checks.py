"""Shape helpers of the diffusion maths: per-sample values broadcast against a batch, checked once."""

import torch

from ..spectral._checks import compute_dtype, require_tensor


def append_dims(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """`(B,)` -> `(B, 1, ..., 1)` with `ndim` dimensions in total, for broadcasting against a batch."""
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def per_sample(values, x: torch.Tensor, func: str, name: str) -> torch.Tensor:
    """A float, a `(B,)` tensor or a scalar tensor, as a float32/64 `(B, 1, ..., 1)` tensor on `x`'s device."""
    values = torch.as_tensor(values, device=x.device, dtype=compute_dtype(x.dtype))
    if values.ndim == 0:
        values = values.expand(x.shape[0])
    if values.ndim != 1 or values.shape[0] != x.shape[0]:
        raise ValueError(
            f"{func}: `{name}` must be a scalar or have shape (batch,) = ({x.shape[0]},), got {tuple(values.shape)}."
        )
    return append_dims(values, x.ndim)


def checkable(values: torch.Tensor) -> bool:
    """Whether value checks on `values` are free: CPU tensors only (on an accelerator a check is a host sync on the
    training hot path; values are validated where data enters instead)."""
    return values.device.type == "cpu"


def check_pair(model_output: torch.Tensor, x_t: torch.Tensor, func: str) -> None:
    require_tensor(model_output, func, "model_output")
    require_tensor(x_t, func, "x_t")
    if model_output.shape != x_t.shape:
        raise ValueError(
            f"{func}: `model_output` {tuple(model_output.shape)} and `x_t` {tuple(x_t.shape)} must have the same "
            "shape; for a DiT that learns sigma, split off the variance channels first (`model_output[:, :C]`)."
        )
