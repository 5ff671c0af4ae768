"""Frozen vision encoders that give REPA targets: patch tokens on the DiT's token grid.

`RepresentationEncoder.from_pretrained` wraps any transformers vision backbone loaded through `AutoModel` /
`AutoImageProcessor` by Hub id or local path: DINOv2 (the REPA default, `facebook/dinov2-base`), DINOv2 with
registers, SigLIP and CLIP (the vision tower of a full CLIP / SigLIP model is used). The encoder is not part of the
DiT's weights or config; trainers hold it beside the model.
"""

import inspect
import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..spectral._checks import require_4d


__all__ = ["RepresentationEncoder", "resample_position_embedding"]

logger = logging.getLogger(__name__)

INPUT_RANGES = ("[-1,1]", "[0,1]")
# ImageNet statistics, used only when the checkpoint ships no image processor config.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resample_position_embedding(
    table: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Resample a ViT absolute position-embedding table to a new square-grid layout once, as REPA does for DINOv2
    (timm's ``resample_abs_pos_embed`` convention): the prefix (CLS) rows are kept as they are, the patch rows
    reshaped to their square ``(D, H0, W0)`` grid, resized in float32 with bicubic interpolation *with* antialias
    (``align_corners=False``) to ``grid`` and flattened back row-major.

    Args:
        table: ``(1, prefix + H0 * W0, D)``.
        grid: ``(h, w)`` target token grid.

    Returns:
        ``(1, prefix + h * w, D)`` in ``table``'s dtype.
    """
    prefix, patches = table[:, :num_prefix_tokens], table[:, num_prefix_tokens:]
    side = int(round(patches.shape[1] ** 0.5))
    if side * side != patches.shape[1]:
        raise ValueError(f"resample_position_embedding: {patches.shape[1]} patch rows do not form a square grid.")
    dim = patches.shape[-1]
    image = patches.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, H0, W0)
    image = F.interpolate(image, size=tuple(grid), mode="bicubic", align_corners=False, antialias=True)
    patches = image.permute(0, 2, 3, 1).reshape(1, -1, dim).to(table.dtype)  # (1, h * w, D)
    return torch.cat([prefix, patches], dim=1)


class RepresentationEncoder(nn.Module):
    """A frozen transformers vision backbone returning final normalised patch tokens `(B, N, D)`.

    Images are normalised with the processor's mean / std and resized with bicubic interpolation *without* antialias
    (REPA's `preprocess_raw_image`: normalise, then `F.interpolate(..., mode="bicubic")`) to the resolution whose
    patch grid equals the requested grid (224 for 16 x 16 with patch 14), and encoded in eval mode under `no_grad`;
    CLS and register tokens are dropped. For DINOv2 whose position-embedding grid differs from a square token grid
    (37 x 37 vs 16 x 16 for the real checkpoints) the table is resampled once per grid with
    :func:`resample_position_embedding` (bicubic with antialias, as REPA via timm) instead of letting the backbone
    interpolate it (bicubic, no antialias) at every call. If the backbone cannot take that resolution (a fixed
    `resolution` was given, or it cannot interpolate its position embeddings), the feature grid is resized instead
    (bilinear) and this is logged once.

    Attributes:
        feature_dim (`int`): token width D (768 for DINOv2-B).
        patch_size (`int`): the backbone's patch side in pixels.
    """

    def __init__(
        self,
        backbone: nn.Module,
        patch_size: int,
        feature_dim: int,
        image_mean: tuple[float, ...] = IMAGENET_MEAN,
        image_std: tuple[float, ...] = IMAGENET_STD,
        input_range: str = "[-1,1]",
        resolution: int | None = None,
        native_resolution: int | None = None,
        post_layernorm: nn.Module | None = None,
        allow_feature_interpolation: bool = True,
    ):
        super().__init__()
        if input_range not in INPUT_RANGES:
            raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {input_range!r}.")
        self.backbone = backbone.eval().requires_grad_(False)
        self.post_layernorm = post_layernorm
        self.patch_size = int(patch_size)
        self.feature_dim = int(feature_dim)
        self.input_range = input_range
        self.resolution = resolution
        self.allow_feature_interpolation = allow_feature_interpolation
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1), False)
        # Backbones whose forward takes `interpolate_pos_encoding` (CLIP, SigLIP) need it set; DINOv2 always
        # interpolates; others can only run at their native resolution.
        params = inspect.signature(backbone.forward).parameters
        self._pos_kwargs = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in params else {}
        self._fixed_resolution = resolution
        if resolution is None and not self._pos_kwargs and not _always_interpolates(backbone):
            self._fixed_resolution = native_resolution
        self._logged_grids = set()
        self._position_grid = None  # the grid the DINOv2 position table currently holds (None: the checkpoint's)
        self._original_positions = None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = "facebook/dinov2-base",
        input_range: str = "[-1,1]",
        resolution: int | None = None,
        allow_feature_interpolation: bool = True,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> "RepresentationEncoder":
        """Load a backbone and its image processor by Hub id or local path.

        Args:
            name_or_path: transformers checkpoint (DINOv2 default, as REPA).
            input_range: the range of the images given to `__call__`: `"[-1,1]"` (diffusion data) or `"[0,1]"`.
            resolution: fixed encoder input side; `None` chooses it per call so the patch grid matches.
            allow_feature_interpolation: resize the feature grid when the grids cannot match (else raise).
            kwargs: passed to `AutoModel.from_pretrained` (e.g. `revision`, `cache_dir`).
        """
        from transformers import AutoImageProcessor, AutoModel

        model = AutoModel.from_pretrained(name_or_path, **kwargs)
        config = model.config
        backbone = model.vision_model if hasattr(model, "vision_model") else model
        vision_config = getattr(config, "vision_config", None) or config
        try:
            processor = AutoImageProcessor.from_pretrained(name_or_path)
            mean, std = tuple(processor.image_mean), tuple(processor.image_std)
        except (OSError, ValueError, AttributeError, TypeError):
            logger.warning("No image processor found for %s; using ImageNet mean/std.", name_or_path)
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        # CLIP leaves its last hidden state un-normalised (post_layernorm is applied to the pooled token only).
        post_layernorm = (
            backbone.post_layernorm if getattr(vision_config, "model_type", "").startswith("clip") else None
        )
        encoder = cls(
            backbone,
            patch_size=_as_int(vision_config.patch_size),
            feature_dim=vision_config.hidden_size,
            image_mean=mean,
            image_std=std,
            input_range=input_range,
            resolution=resolution,
            native_resolution=_as_int(getattr(vision_config, "image_size", 224)),
            post_layernorm=post_layernorm,
            allow_feature_interpolation=allow_feature_interpolation,
        )
        return encoder.to(device=device, dtype=torch_dtype)

    # ------------------------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "RepresentationEncoder":
        """The backbone stays in eval mode (frozen teacher)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def check_transformer(self, transformer) -> None:
        """Raise a clear error if a REPA transformer's `repa_target_dim` differs from this encoder's `feature_dim`."""
        target_dim = transformer.config.repa_target_dim
        if target_dim != self.feature_dim:
            raise ValueError(
                f"The transformer's repa_target_dim={target_dim} does not match the encoder's feature_dim="
                f"{self.feature_dim}; build the transformer with repa_target_dim={self.feature_dim}."
            )

    def input_resolution(self, grid_size: tuple[int, int]) -> tuple[int, int]:
        """Encoder input `(H, W)` for a requested token grid."""
        if self._fixed_resolution is not None:
            return (int(self._fixed_resolution),) * 2
        return grid_size[0] * self.patch_size, grid_size[1] * self.patch_size

    def preprocess(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """REPA's `preprocess_raw_image`: `[0, 1]` pixels normalised with the processor's mean / std, then resized to
        `size` with bicubic interpolation without antialias (`align_corners=False`).

        Args:
            images: `(B, 3, H, W)` in `input_range`.
            size: `(in_h, in_w)` encoder input size.

        Returns:
            `(B, 3, in_h, in_w)` in the backbone's dtype.
        """
        dtype = next(self.backbone.parameters()).dtype
        x = images.to(device=self.image_mean.device, dtype=torch.float32)
        if self.input_range == "[-1,1]":
            x = (x + 1) / 2
        x = (x - self.image_mean) / self.image_std
        if x.shape[-2:] != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False)
        return x.to(dtype)

    @torch.no_grad()
    def _use_position_grid(self, grid: tuple[int, int]) -> None:
        """Give the DINOv2 backbone a position table for `grid`, resampled once from the checkpoint's table (bicubic
        with antialias); the backbone then uses it as it is (it interpolates only when the sizes differ)."""
        if self._position_grid == grid:
            return
        table = self.backbone.embeddings.position_embeddings  # (1, 1 + H0 * W0, D)
        if self._original_positions is None:
            self._original_positions = table.detach().clone()
        original = self._original_positions
        side = int(round((original.shape[1] - 1) ** 0.5))
        resampled = original if (side, side) == grid else resample_position_embedding(original, grid)
        self.backbone.embeddings.position_embeddings = nn.Parameter(resampled.to(table.device), requires_grad=False)
        self._position_grid = grid

    @torch.no_grad()
    def forward(self, images: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """Target tokens for `images` on a `grid_size` token grid.

        Args:
            images: `(B, 3, H, W)` in `input_range`.
            grid_size: `(h, w)` of the DiT token grid (latent size / patch size).

        Returns:
            `(B, h * w, feature_dim)` float32 tokens, row-major over the grid, without CLS / register tokens.
        """
        require_4d(images, "RepresentationEncoder", "images", channels=3)
        if len(grid_size) != 2 or any(int(g) != g or g < 1 for g in grid_size):
            raise ValueError(f"RepresentationEncoder: grid_size must be two positive integers, got {grid_size}.")
        grid_h, grid_w = int(grid_size[0]), int(grid_size[1])
        in_h, in_w = self.input_resolution((grid_h, grid_w))
        native = (in_h // self.patch_size, in_w // self.patch_size)
        if native != (grid_h, grid_w):
            if not self.allow_feature_interpolation:
                raise ValueError(
                    f"RepresentationEncoder: the encoder's patch grid {native} (input {in_h}x{in_w}, patch "
                    f"{self.patch_size}) cannot match the requested grid {(grid_h, grid_w)}; pass resolution=None, "
                    "or allow_feature_interpolation=True to resize the feature grid."
                )
            if (native, (grid_h, grid_w)) not in self._logged_grids:
                self._logged_grids.add((native, (grid_h, grid_w)))
                logger.warning(
                    "RepresentationEncoder: encoder grid %s differs from the token grid %s; interpolating features.",
                    native,
                    (grid_h, grid_w),
                )

        # 1. Pixels: [0, 1], processor normalisation, encoder resolution (REPA's order; bicubic, no antialias)
        x = self.preprocess(images, (in_h, in_w))  # (B, 3, in_h, in_w)
        if _always_interpolates(self.backbone) and native[0] == native[1]:
            self._use_position_grid(native)

        # 2. Encode; keep the last h * w tokens (drops CLS and register tokens, which come first)
        hidden = self.backbone(pixel_values=x, **self._pos_kwargs).last_hidden_state  # (B, prefix + n, D)
        if self.post_layernorm is not None:
            hidden = self.post_layernorm(hidden)
        n_tokens = native[0] * native[1]
        if hidden.shape[1] < n_tokens:
            raise ValueError(
                f"RepresentationEncoder: the backbone returned {hidden.shape[1]} tokens for a {native} grid; "
                "is patch_size right for this checkpoint?"
            )
        tokens = hidden[:, hidden.shape[1] - n_tokens :].float()  # (B, n, D)

        # 3. Resize the feature grid if it could not match
        if native != (grid_h, grid_w):
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *native)  # (B, D, h', w')
            shrink = grid_h < native[0] or grid_w < native[1]
            grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bilinear", align_corners=False, antialias=shrink)
            tokens = grid.flatten(2).transpose(1, 2)  # (B, h * w, D)
        return tokens


def _always_interpolates(backbone: nn.Module) -> bool:
    """DINOv2 (with or without registers) interpolates its position embeddings for any input size."""
    return getattr(backbone.config, "model_type", "").startswith("dinov2")


def _as_int(value) -> int:
    """Patch / image sizes may be stored as an int or a pair."""
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)
