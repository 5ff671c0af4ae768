"""DCTdiff's entropy-weighted diffusion loss in DCT space."""

import torch

from ..spectral._checks import require_4d


def dct_weighted_mse(prediction: torch.Tensor, target: torch.Tensor, channel_weights: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of ``channel_weights[c] * (prediction - target)^2``: the diffusion loss with DCTdiff's
    frequency weights (from :func:`estimate_entropy_weights`; all-ones gives the plain MSE).

    Args:
        prediction, target: ``(B, C, h, w)``.
        channel_weights: ``(C,)``.

    Returns:
        ``(B,)`` float32 losses (average them, or weight them per timestep first).
    """
    require_4d(prediction, "dct_weighted_mse", "prediction")
    if prediction.shape != target.shape:
        raise ValueError(f"dct_weighted_mse: shapes {tuple(prediction.shape)} and {tuple(target.shape)} differ.")
    if channel_weights.shape != (prediction.shape[1],):
        raise ValueError(
            f"dct_weighted_mse: `channel_weights` must have shape ({prediction.shape[1]},), "
            f"got {tuple(channel_weights.shape)}."
        )
    weights = channel_weights.to(device=prediction.device, dtype=torch.float32)[None, :, None, None]
    return (weights * (prediction.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
