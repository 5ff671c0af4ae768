"""VA-VAE vision-foundation (VF) alignment loss (Yao et al. 2025, "Reconstruction vs. Generation: Taming
Optimization Dilemma in Latent Diffusion Models", CVPR 2025, arXiv:2501.01423).

A 1x1 projection (no bias) maps the latents `(B, C, h, w)` to the width D of a frozen encoder's patch features
`(B, D, h, w)`; the marginal cosine loss per position and the marginal distance-matrix loss over token pairs align
them, weighted by w_hyper times the VQGAN-style adaptive weight (`adaptive_weight`).

Provenance: docs/PROVENANCE.md#alignment"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..spectral._checks import compute_dtype, require_4d
from .autoencoder import adaptive_discriminator_weight


__all__ = ["VFAlignmentLoss", "VFAlignmentLossOutput", "adaptive_weight", "vf_alignment_terms"]

REDUCTIONS = ("mean", "none")


# ----------------------------------------------------------------------------------------------------------------
# The two marginal terms (pure tensor maths)


def vf_alignment_terms(
    projected: torch.Tensor,
    features: torch.Tensor,
    margin_cos: float = 0.5,
    margin_dist: float = 0.25,
    reduction: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Marginal cosine similarity and marginal distance-matrix similarity losses of the VA-VAE VF loss.

    Args:
        projected: projected latents z' `(B, D, h, w)`.
        features: frozen encoder features f `(B, D, h, w)` on the same grid; treated as constants (no gradient).
        margin_cos: m1; a position costs nothing once cos(z'_ij, f_ij) >= 1 - m1.
        margin_dist: m2; a token pair costs nothing once its two cosines differ by at most m2.
        reduction: `"mean"` (scalars) or `"none"` (per-sample `(B,)`).

    Returns:
        `(L_mcos, L_mdms)` in float32 (float64 for float64 inputs).
    """
    require_4d(projected, "vf_alignment_terms", "projected")
    require_4d(features, "vf_alignment_terms", "features")
    if projected.shape != features.shape:
        raise ValueError(
            f"vf_alignment_terms: `projected` {tuple(projected.shape)} and `features` {tuple(features.shape)} must "
            "have the same (B, D, h, w) shape; project the latents to the feature width and resize them to the "
            "feature grid first (VFAlignmentLoss does both)."
        )
    if margin_cos < 0 or margin_dist < 0:
        raise ValueError(
            f"vf_alignment_terms: margins must be >= 0, got margin_cos={margin_cos}, margin_dist={margin_dist}."
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"vf_alignment_terms: reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    dtype = compute_dtype(projected.dtype)
    z = projected.to(dtype)
    f = features.detach().to(dtype)

    # 1. Marginal cosine similarity, per position
    cosine = F.cosine_similarity(z, f, dim=1)  # (B, h, w)
    marginal_cosine = F.relu(1.0 - margin_cos - cosine).flatten(1).mean(1)  # (B,)

    # 2. Marginal distance-matrix similarity, over all ordered token pairs
    z_tokens = F.normalize(z.flatten(2), dim=1)  # (B, D, N)
    f_tokens = F.normalize(f.flatten(2), dim=1)  # (B, D, N)
    z_gram = torch.einsum("bdi,bdj->bij", z_tokens, z_tokens)  # (B, N, N)
    f_gram = torch.einsum("bdi,bdj->bij", f_tokens, f_tokens)  # (B, N, N)
    marginal_distance = F.relu((z_gram - f_gram).abs() - margin_dist).flatten(1).mean(1)  # (B,)

    if reduction == "mean":
        return marginal_cosine.mean(), marginal_distance.mean()
    return marginal_cosine, marginal_distance


# ----------------------------------------------------------------------------------------------------------------
# Adaptive weight


def adaptive_weight(
    rec_loss: torch.Tensor,
    vf_loss: torch.Tensor,
    last_layer_weight: torch.Tensor,
    w_hyper: float = 0.1,
    max_weight: float = 1e8,
) -> torch.Tensor:
    """VA-VAE adaptive VF weight: `w_hyper * ||grad_W rec_loss|| / (||grad_W vf_loss|| + 1e-4)`, the ratio clamped
    to [0, `max_weight`] and detached; W is the encoder's last layer (`vae.encoder.conv_out.weight`).

    Both losses must be scalars attached to the graph and must be the ones that enter the total loss (the ratio
    makes the VF gradient at W equal to w_hyper times the reconstruction gradient). The graph is retained. In
    no-grad mode returns 0. No host sync.
    """
    if not isinstance(last_layer_weight, torch.Tensor) or not last_layer_weight.requires_grad:
        raise ValueError(
            "adaptive_weight: `last_layer_weight` must be a parameter that requires grad, e.g. "
            "vae.encoder.conv_out.weight."
        )
    if w_hyper < 0:
        raise ValueError(f"adaptive_weight: w_hyper must be >= 0, got {w_hyper}.")
    for name, loss in (("rec_loss", rec_loss), ("vf_loss", vf_loss)):
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise ValueError(f"adaptive_weight: `{name}` must be a scalar tensor; reduce it with .mean() first.")
    try:
        ratio = adaptive_discriminator_weight(rec_loss, vf_loss, last_layer_weight, max_weight=max_weight, eps=1e-4)
    except RuntimeError as error:
        raise ValueError(
            "adaptive_weight: `rec_loss` and `vf_loss` must both depend on `last_layer_weight`; pass the encoder's "
            "last convolution weight (vae.encoder.conv_out.weight), not a decoder or projector weight."
        ) from error
    return w_hyper * ratio


# ----------------------------------------------------------------------------------------------------------------
# Module with the learned projector


@dataclass
class VFAlignmentLossOutput:
    """Unweighted VF loss terms (scalars, or `(B,)` with `reduction="none"`).

    loss: `cos_weight * marginal_cosine + dist_weight * marginal_distance` (the authors' L_mcos + L_mdms).
    marginal_cosine: L_mcos. marginal_distance: L_mdms.
    """

    loss: torch.Tensor
    marginal_cosine: torch.Tensor
    marginal_distance: torch.Tensor


class VFAlignmentLoss(torch.nn.Module):
    """VA-VAE VF loss with its learned projector (a 1x1 convolution without bias, latent width -> feature width).

    The projector is trained with the autoencoder (add `loss.parameters()` to the autoencoder's optimiser); the
    adaptive weight and w_hyper are applied by the caller with [`adaptive_weight`].

    Args:
        latent_channels: C of the latents.
        feature_dim: D of the frozen encoder's patch features (DINOv2 ViT-L: 1024).
        margin_cos: m1 (paper: 0.5).
        margin_dist: m2 (paper: 0.25).
        cos_weight, dist_weight: weights of the two terms inside the VF loss (authors: 1.0, 1.0).
    """

    def __init__(
        self,
        latent_channels: int,
        feature_dim: int,
        margin_cos: float = 0.5,
        margin_dist: float = 0.25,
        cos_weight: float = 1.0,
        dist_weight: float = 1.0,
    ):
        super().__init__()
        for name, value in (("latent_channels", latent_channels), ("feature_dim", feature_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VFAlignmentLoss: {name} must be a positive int, got {value!r}.")
        if margin_cos < 0 or margin_dist < 0:
            raise ValueError(
                f"VFAlignmentLoss: margins must be >= 0, got margin_cos={margin_cos}, margin_dist={margin_dist}."
            )
        self.margin_cos = float(margin_cos)
        self.margin_dist = float(margin_dist)
        self.cos_weight = float(cos_weight)
        self.dist_weight = float(dist_weight)
        self.projector = torch.nn.Conv2d(latent_channels, feature_dim, kernel_size=1, bias=False)

    def project(self, latents: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """z' = projector(latents) on the feature grid: `(B, C, h, w)` -> `(B, D, *grid_size)`."""
        if tuple(latents.shape[-2:]) != tuple(grid_size):
            latents = F.interpolate(latents, size=tuple(grid_size), mode="bilinear", align_corners=False)
        return self.projector(latents.to(self.projector.weight.dtype))  # (B, D, gh, gw)

    def forward(self, latents: torch.Tensor, features: torch.Tensor, reduction: str = "mean") -> VFAlignmentLossOutput:
        """`latents` `(B, C, h, w)` (the posterior sample), `features` `(B, D, gh, gw)` from the frozen encoder
        (ViT patch tokens `(B, N, D)` without the class token: `tokens.transpose(1, 2).reshape(B, D, gh, gw)`)."""
        require_4d(latents, "VFAlignmentLoss", "latents")
        require_4d(features, "VFAlignmentLoss", "features")
        if latents.shape[1] != self.projector.in_channels:
            raise ValueError(
                f"VFAlignmentLoss: latents have {latents.shape[1]} channels, the projector expects "
                f"{self.projector.in_channels} (latent_channels)."
            )
        if features.shape[1] != self.projector.out_channels:
            raise ValueError(
                f"VFAlignmentLoss: features have width {features.shape[1]}, the projector outputs "
                f"{self.projector.out_channels} (feature_dim); pass features as (B, D, gh, gw)."
            )
        if latents.shape[0] != features.shape[0]:
            raise ValueError(
                f"VFAlignmentLoss: latents {tuple(latents.shape)} and features {tuple(features.shape)} must have the "
                "same batch size."
            )
        projected = self.project(latents, features.shape[-2:])
        marginal_cosine, marginal_distance = vf_alignment_terms(
            projected, features, self.margin_cos, self.margin_dist, reduction=reduction
        )
        loss = self.cos_weight * marginal_cosine + self.dist_weight * marginal_distance
        return VFAlignmentLossOutput(loss=loss, marginal_cosine=marginal_cosine, marginal_distance=marginal_distance)
