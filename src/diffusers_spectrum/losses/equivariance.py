"""EQ-VAE equivariance regularisation (Kouzelis et al. 2025, "EQ-VAE: Equivariance Regularized Latent Space for
Improved Generative Image Modeling", ICML 2025, arXiv:2502.09509).

On a random fraction of the steps the autoencoder decodes a spatially transformed latent tau(E(x)) (a downscale and a
quarter turn) and is trained against tau(x); `sample_equivariance_transform` draws the step's branch and transform
from a CPU generator, `apply_spatial_transform` and `equivariance_targets` apply it.

Provenance: docs/PROVENANCE.md#equivariance"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..spectral._checks import require_4d


__all__ = [
    "EQ_VAE_BRANCHES",
    "EquivarianceTransform",
    "apply_spatial_transform",
    "equivariance_targets",
    "sample_equivariance_transform",
]

# "equivariance": decode tau(z) against tau(x); "low_resolution_prior": encode/decode the downscaled image;
# "identity": the plain reconstruction.
EQ_VAE_BRANCHES = ("equivariance", "low_resolution_prior", "identity")


@dataclass(frozen=True)
class EquivarianceTransform:
    """A spatial transform tau: downscale by (`scale_h`, `scale_w`), then rotate by `quarter_turns` x 90 degrees.

    Args:
        branch: which EQ-VAE step this is, one of `EQ_VAE_BRANCHES` (the recipe reads it; the tensor functions
            apply `scale_h`, `scale_w` and `quarter_turns` whatever the branch).
        scale_h, scale_w: downscale factors in (0, 1]; 1 = unchanged.
        quarter_turns: rotation by `quarter_turns` x 90 degrees, in {0, 1, 2, 3}.
    """

    branch: str = "identity"
    scale_h: float = 1.0
    scale_w: float = 1.0
    quarter_turns: int = 0

    def __post_init__(self):
        if self.branch not in EQ_VAE_BRANCHES:
            raise ValueError(f"EquivarianceTransform: branch must be one of {EQ_VAE_BRANCHES}, got {self.branch!r}.")
        for name in ("scale_h", "scale_w"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise ValueError(
                    f"EquivarianceTransform: {name} must be in (0, 1] (EQ-VAE only downscales), got {value!r}."
                )
        if isinstance(self.quarter_turns, bool) or self.quarter_turns not in (0, 1, 2, 3):
            raise ValueError(f"EquivarianceTransform: quarter_turns must be 0, 1, 2 or 3, got {self.quarter_turns!r}.")

    @property
    def is_identity(self) -> bool:
        return self.scale_h == 1.0 and self.scale_w == 1.0 and self.quarter_turns == 0

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size after the transform: `(round(s_h H), round(s_w W))`, swapped for odd quarter turns."""
        size = (round(self.scale_h * height), round(self.scale_w * width))
        return size[::-1] if self.quarter_turns % 2 else size


# ----------------------------------------------------------------------------------------------------------------
# Sampling (Python numbers from a CPU generator: no host sync)


def _uniform(generator: torch.Generator | None) -> float:
    return torch.rand((), generator=generator).item()  # CPU tensor: no device sync


def _choice(options: tuple[int, ...], generator: torch.Generator | None) -> int:
    return options[int(torch.randint(len(options), (), generator=generator))]


def _scale_grid(side: int, min_scale: float, name: str) -> tuple[int, ...]:
    """Numerators k of the scale grid k / side with min_scale <= k / side < 1 (authors: side 32 -> k = 8..31)."""
    low = max(math.ceil(min_scale * side - 1e-9), 1)
    numerators = tuple(range(low, side))
    if not numerators:
        raise ValueError(
            f"sample_equivariance_transform: no downscale k/{side} with {min_scale} <= k/{side} < 1 exists for "
            f"{name} {side}; use a larger latent grid or a smaller min_scale."
        )
    return numerators


def sample_equivariance_transform(
    generator: torch.Generator | None,
    latent_size: tuple[int, int],
    equivariance_probability: float = 0.5,
    low_resolution_probability: float = 0.25,
    min_scale: float = 0.25,
    quarter_turns: tuple[int, ...] = (1, 2, 3),
    anisotropic: bool = False,
) -> EquivarianceTransform:
    """Draw one EQ-VAE step: the branch and its transform (the authors' `training_step`; defaults are theirs).

    Args:
        generator: a CPU `torch.Generator` (or `None` for torch's global CPU generator).
        latent_size: `(h, w)` of the latent grid; the scale grid is k / gcd(h, w) (k / h and k / w if `anisotropic`).
        equivariance_probability: probability of the equivariance branch (`p_prior`, 0.5).
        low_resolution_probability: within the other steps, probability of the low-resolution prior branch
            (`p_prior_s`, 0.25); the rest are plain reconstructions.
        min_scale: smallest downscale factor (0.25); scales lie in [min_scale, 1).
        quarter_turns: the rotations the equivariance branch draws from ((1, 2, 3): 90, 180, 270 degrees; `(0,)`
            turns rotation off).
        anisotropic: draw the height and width scales independently (`anisotropic: False` in the paper's config).

    Returns:
        An [`EquivarianceTransform`]; the identity for the plain branch, a downscale only for the low-resolution
        prior branch, a downscale and a rotation for the equivariance branch.
    """
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            "sample_equivariance_transform: `generator` must be a CPU torch.Generator (the draws are Python numbers; "
            f"a {generator.device.type} generator would sync the device), got one on {generator.device}."
        )
    if len(latent_size) != 2 or any(not isinstance(s, int) or s < 1 for s in latent_size):
        raise ValueError(f"sample_equivariance_transform: latent_size must be (h, w) ints >= 1, got {latent_size}.")
    for name, p in (
        ("equivariance_probability", equivariance_probability),
        ("low_resolution_probability", low_resolution_probability),
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"sample_equivariance_transform: {name} must lie in [0, 1], got {p}.")
    if not 0.0 < min_scale < 1.0:
        raise ValueError(f"sample_equivariance_transform: min_scale must lie in (0, 1), got {min_scale}.")
    quarter_turns = tuple(quarter_turns)
    if not quarter_turns or any(isinstance(k, bool) or k not in (0, 1, 2, 3) for k in quarter_turns):
        raise ValueError(
            f"sample_equivariance_transform: quarter_turns must be a non-empty tuple of 0..3, got {quarter_turns}."
        )

    def draw_scale() -> tuple[float, float]:
        h, w = latent_size
        if anisotropic:
            k_h = _choice(_scale_grid(h, min_scale, "h"), generator)
            k_w = _choice(_scale_grid(w, min_scale, "w"), generator)
            return k_h / h, k_w / w
        side = math.gcd(h, w)
        scale = _choice(_scale_grid(side, min_scale, "gcd(h, w)"), generator) / side
        return scale, scale

    if _uniform(generator) < equivariance_probability:
        scale_h, scale_w = draw_scale()
        return EquivarianceTransform("equivariance", scale_h, scale_w, _choice(quarter_turns, generator))
    if _uniform(generator) < low_resolution_probability:
        scale_h, scale_w = draw_scale()
        return EquivarianceTransform("low_resolution_prior", scale_h, scale_w, 0)
    return EquivarianceTransform("identity")


# ----------------------------------------------------------------------------------------------------------------
# Applying tau


def apply_spatial_transform(x: torch.Tensor, transform: EquivarianceTransform) -> torch.Tensor:
    """tau(x): bilinear downscale (align_corners=False, no antialias) to `(round(s_h H), round(s_w W))`, then
    `torch.rot90` by `quarter_turns`. Works the same on images `(B, 3, H, W)` and latents `(B, C, h, w)`.

    `(B, C, H, W)` -> `(B, C, H', W')` (H' and W' swapped for odd quarter turns); the input is not modified.
    """
    require_4d(x, "apply_spatial_transform", "x")
    if not isinstance(transform, EquivarianceTransform):
        raise TypeError(
            f"apply_spatial_transform: `transform` must be an EquivarianceTransform, got {type(transform).__name__}."
        )
    height, width = x.shape[-2:]
    size = (round(transform.scale_h * height), round(transform.scale_w * width))
    if min(size) < 1:
        raise ValueError(
            f"apply_spatial_transform: scale ({transform.scale_h}, {transform.scale_w}) maps {height}x{width} to "
            f"{size[0]}x{size[1]}; use a larger input or a larger scale."
        )
    if size != (height, width):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)  # (B, C, H', W')
    if transform.quarter_turns:
        x = torch.rot90(x, transform.quarter_turns, dims=(-2, -1))
    return x


def equivariance_targets(
    images: torch.Tensor, latents: torch.Tensor, transform: EquivarianceTransform
) -> tuple[torch.Tensor, torch.Tensor]:
    """The EQ-VAE pair: `(tau(z), tau(x))`; the recipe decodes `tau(z)` and trains it against `tau(x)`.

    Args:
        images: `(B, 3, H, W)`.
        latents: `(B, C, h, w)` with `H = f h`, `W = f w` for one integer factor f (the VAE's downsampling).
        transform: from [`sample_equivariance_transform`] (its branch is not checked: an identity transform returns
            the inputs).

    Returns:
        `(transformed latents (B, C, h', w'), transformed images (B, 3, f h', f w'))`.
    """
    require_4d(images, "equivariance_targets", "images", channels=3)
    require_4d(latents, "equivariance_targets", "latents")
    if images.shape[0] != latents.shape[0]:
        raise ValueError(
            f"equivariance_targets: images {tuple(images.shape)} and latents {tuple(latents.shape)} must have the "
            "same batch size."
        )
    (height, width), (h, w) = images.shape[-2:], latents.shape[-2:]
    if height % h or width % w or height // h != width // w:
        raise ValueError(
            f"equivariance_targets: images {height}x{width} must be the latent grid {h}x{w} times one integer factor; "
            "pass the latents of these images."
        )
    factor = height // h
    image_size = transform.output_size(height, width)
    latent_size = transform.output_size(h, w)
    if image_size != (factor * latent_size[0], factor * latent_size[1]):
        raise ValueError(
            f"equivariance_targets: scale ({transform.scale_h}, {transform.scale_w}) maps the latent {h}x{w} to "
            f"{latent_size} but the image {height}x{width} to {image_size}, not {factor}x that; the decoded latent "
            "would not match its target. Draw transforms with sample_equivariance_transform(latent_size=(h, w))."
        )
    return apply_spatial_transform(latents, transform), apply_spatial_transform(images, transform)
