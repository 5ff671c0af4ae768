"""REPA alignment loss (Yu et al., 2024, "Representation Alignment for Generation", Eq. 8), and the term the DiT
trainer adds: against the target filtered as REPA (none), iREPA (spatial normalisation) or DoG-REPA."""

import torch
import torch.nn.functional as F

from ..spectral._checks import compute_dtype, require_tensor
from ..spectral.filters import apply_target_filter


__all__ = ["repa_loss", "repa_term"]


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


def repa_term(
    repa_tokens: torch.Tensor,
    target_tokens: torch.Tensor,
    grid_hw: tuple[int, int],
    target_filter: str = "none",
    dog_sigma1: float = 0.6,
    dog_sigma2: float = 2.0,
    spatial_norm_alpha: float = 0.6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REPA alignment against the filtered target (`none`, iREPA `spatial_norm`, or `dog`).

    Args:
        repa_tokens: `(B, N, D)` projected DiT tokens (`return_repa_tokens=True`).
        target_tokens: `(B, N, D)` frozen encoder tokens of the clean images, unfiltered.
        grid_hw: the `(h, w)` token grid, `N = h * w`.

    Returns:
        `(loss, cosine)`: the negative cosine similarity averaged over tokens and batch (scalar, with gradient) and
        the mean cosine similarity (detached, for logging).
    """
    if repa_tokens.shape != target_tokens.shape:
        raise ValueError(
            f"REPA: projected tokens {tuple(repa_tokens.shape)} and targets {tuple(target_tokens.shape)} differ; the "
            "transformer's repa_target_dim must equal the encoder's feature width and the target grid the DiT's."
        )
    target = apply_target_filter(
        target_tokens.float(), grid_hw, target_filter, sigma1=dog_sigma1, sigma2=dog_sigma2, alpha=spatial_norm_alpha
    )
    loss = repa_loss(repa_tokens.float(), target)
    return loss, -loss.detach()
