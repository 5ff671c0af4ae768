"""Named ``UNet2DModel`` sizes for pixel-space diffusion: a tiny one for tests and CPU, and the DDPM paper's.

``UNET_PRESETS`` maps a name to ``UNet2DModel`` keyword arguments (everything but ``sample_size``, ``in_channels`` and
``out_channels``, which :func:`build_unet` fills in); its keys are the ``--unet_config`` choices.

- ``tiny``: 2 levels (32, 64 channels), 1 residual block per level, attention only in the middle block.
- ``ddpm-32``: Ho et al. 2020, Appendix B, CIFAR-10: 128 channels, multipliers (1, 2, 2, 2), 2 residual blocks per
  level, self-attention at 16 x 16 (and in the middle block), dropout 0.1; 35.7M parameters. The same block layout as
  diffusers' ``google/ddpm-cifar10-32``.
- ``ddpm-256``: Ho et al. 2020, LSUN / CelebA-HQ 256: multipliers (1, 1, 2, 2, 4, 4), attention at 16 x 16, dropout 0
  (the paper uses dropout on CIFAR-10 only); 114M parameters. The layout of ``google/ddpm-church-256``.
- ``ddpm-64``: the DDPM paper has no 64 px model; this keeps its recipe (128 channels, 2 residual blocks, attention at
  16 x 16, dropout 0.1) with the 64 px multipliers (1, 2, 3, 4) of Nichol & Dhariwal 2021 (Improved DDPM).

All use the sinusoidal ("positional") time embedding that the DDPM and EDM formulations both need.
"""

from diffusers import UNet2DModel


# Settings shared by the DDPM-paper presets (diffusers' google/ddpm-* configs): a single attention head over all
# channels, GroupNorm(32) with eps 1e-6, DDPM's timestep embedding convention (sin first, frequency shift 1).
_DDPM_COMMON = {
    "layers_per_block": 2,
    "attention_head_dim": None,
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "act_fn": "silu",
    "time_embedding_type": "positional",
}

UNET_PRESETS: dict[str, dict] = {
    "tiny": {
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D"),
        "norm_num_groups": 8,
        "attention_head_dim": None,
        "time_embedding_type": "positional",
    },
    "ddpm-32": {
        **_DDPM_COMMON,
        "block_out_channels": (128, 256, 256, 256),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "dropout": 0.1,
    },
    "ddpm-64": {
        **_DDPM_COMMON,
        "block_out_channels": (128, 256, 384, 512),
        "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "dropout": 0.1,
    },
    "ddpm-256": {
        **_DDPM_COMMON,
        "block_out_channels": (128, 128, 256, 256, 512, 512),
        "down_block_types": ("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
        "dropout": 0.0,
    },
}


def unet_downsampling_factor(preset: str) -> int:
    """Total downsampling of a preset: ``2 ** (levels - 1)``; resolutions must be multiples of it."""
    return 2 ** (len(_preset_kwargs(preset)["block_out_channels"]) - 1)


def _preset_kwargs(preset: str) -> dict:
    if preset not in UNET_PRESETS:
        raise ValueError(f"Unknown UNet preset {preset!r}; choose one of {sorted(UNET_PRESETS)}.")
    return dict(UNET_PRESETS[preset])


def build_unet(preset: str, resolution: int, channels: int = 3) -> UNet2DModel:
    """A randomly initialised ``UNet2DModel`` of a named size.

    Args:
        preset: a key of :data:`UNET_PRESETS` (``"tiny"``, ``"ddpm-32"``, ``"ddpm-64"``, ``"ddpm-256"``).
        resolution: square image side in pixels (``sample_size``); a multiple of the preset's downsampling
            (:func:`unet_downsampling_factor`). The DDPM presets place attention at a fixed level, which is 16 x 16 at
            their native resolution (32, 64, 256).
        channels: image channels (input and output).

    Returns:
        The model, in float32 on CPU.
    """
    kwargs = _preset_kwargs(preset)
    factor = unet_downsampling_factor(preset)
    if not isinstance(resolution, int) or resolution < factor or resolution % factor:
        raise ValueError(
            f"build_unet: `resolution` must be a positive multiple of {factor} for preset {preset!r} "
            f"({len(kwargs['block_out_channels'])} levels), got {resolution!r}."
        )
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"build_unet: `channels` must be a positive integer, got {channels!r}.")
    return UNet2DModel(sample_size=resolution, in_channels=channels, out_channels=channels, **kwargs)
