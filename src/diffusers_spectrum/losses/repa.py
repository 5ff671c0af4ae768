"""REPA alignment loss (Yu et al., 2024, "Representation Alignment for Generation", Eq. 8)."""

import torch
import torch.nn.functional as F

from ..spectral._checks import compute_dtype, require_tensor


__all__ = ["repa_loss"]


def repa_loss(projected: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Negative cosine similarity between projected DiT tokens and target encoder tokens.

    Args:
        projected: `(B, N, D)` projector output (`REPADiTTransformer2DModelOutput.repa_tokens`).
        target: `(B, N, D)` (filtered) encoder tokens; treated as a constant (no gradient flows into it).
        reduction: `"mean"` over tokens and batch (a scalar, -1 for identical inputs) or `"none"` for the per-sample
            mean over tokens, `(B,)`.

    Returns:
        The loss in float32 (float64 for float64 inputs); the trainer applies the weight (REPA: 0.5).
    """
    require_tensor(projected, "repa_loss", "projected")
    require_tensor(target, "repa_loss", "target")
    if projected.ndim != 3 or projected.shape != target.shape:
        hint = ""
        if projected.ndim == 3 and target.ndim == 3 and projected.shape[:2] == target.shape[:2]:
            hint = (
                f"; the projector width {projected.shape[-1]} differs from the encoder's feature width "
                f"{target.shape[-1]}: set the transformer's repa_target_dim={target.shape[-1]}"
            )
        elif projected.ndim == 3 and target.ndim == 3 and projected.shape[1] != target.shape[1]:
            hint = "; the token grids differ: encode targets with grid_size equal to the DiT token grid"
        raise ValueError(
            f"repa_loss: `projected` and `target` must both be (B, N, D) with equal shapes, got "
            f"{tuple(projected.shape)} and {tuple(target.shape)}{hint}."
        )
    if projected.shape[0] == 0 or projected.shape[1] == 0:
        raise ValueError(
            f"repa_loss: empty batch or token grid, shape {tuple(projected.shape)}; the mean over it is undefined."
        )
    if reduction not in ("mean", "none"):
        raise ValueError(f"repa_loss: reduction must be 'mean' or 'none', got {reduction!r}.")
    dtype = compute_dtype(projected.dtype)
    cosine = (F.normalize(projected.to(dtype), dim=-1) * F.normalize(target.detach().to(dtype), dim=-1)).sum(-1)
    per_sample = -cosine.mean(dim=1)  # (B,)
    return per_sample.mean() if reduction == "mean" else per_sample
