"""Named model sizes (the trainers' `--unet_config`, `--vae_config`, `--dit_config` choices), readable without
importing diffusers: pixel-space ``UNet2DModel`` (below), ``SpectrumAutoencoderKL`` (`VAE_PRESETS`), the DiT
(`DIT_PRESETS`) and the Dance Diffusion ``UNet1DModel`` (`AUDIO_UNET_PRESETS`), each with its builder.

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

All use the sinusoidal ("positional") time embedding that the DDPM and EDM formulations both need;
`diffusion.edm.check_edm_unet` refuses the other embeddings for EDM.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from diffusers import UNet1DModel, UNet2DModel

    from .autoencoder_kl_spectral import SpectrumAutoencoderKL
    from .dit_repa import REPADiTTransformer2DModel


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
    from diffusers import UNet2DModel  # here: the flag parsers read the presets without importing diffusers

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


def read_model_config(path: str | os.PathLike, model_class=None, flag: str = "--model_config_name_or_path"):
    """The config dict of a model folder or `config.json` file, checked against `model_class`'s arguments: a key
    the class does not take (a typo such as `sample_sise`, which diffusers only warns about before building another
    model) is a `ValueError` naming the key and the nearest valid one. Keys starting with `_` (diffusers' own
    bookkeeping) are allowed. `model_class` defaults to `UNet2DModel`."""
    if model_class is None:
        from diffusers import UNet2DModel as model_class
    path = Path(os.path.expanduser(str(path)))
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{flag} {str(path)!r}: no such config.json; pass a model folder or its config.json.")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{flag} {file}: not valid JSON ({error}).") from None
    if not isinstance(config, dict):
        raise ValueError(f"{flag} {file}: expected a JSON object of {model_class.__name__} arguments.")
    valid = set(inspect.signature(model_class.__init__).parameters) - {"self"}
    for key in config:
        if key.startswith("_") or key in valid:
            continue
        nearest = difflib.get_close_matches(key, sorted(valid), n=1)
        hint = f"did you mean {nearest[0]!r}?" if nearest else f"valid keys: {', '.join(sorted(valid))}."
        raise ValueError(f"{flag} {file}: {key!r} is not a {model_class.__name__} argument; {hint}")
    return config


def check_unet_config(config: dict, resolution: int, channels: int = 3, source: str = "the UNet config") -> None:
    """A `UNet2DModel` config trains on square `channels`-channel images of side `resolution` only when its
    `sample_size` is that side and the side survives every downsampling (a multiple of 2^(levels - 1)); anything
    else is a `ValueError` naming the fix, not a tensor-size error inside the UNet."""
    size = config.get("sample_size")
    side = size if isinstance(size, int) else size[0] if isinstance(size, (list, tuple)) and size else None
    if side != resolution or (isinstance(size, (list, tuple)) and len(set(size)) != 1):
        raise ValueError(
            f"{source} has sample_size {size}; the data are {resolution} px squares (--resolution): set sample_size "
            f"to {resolution} or pass --resolution {side}."
        )
    levels = len(config.get("down_block_types") or config.get("block_out_channels") or ("",))
    factor = 2 ** (levels - 1)
    if resolution % factor:
        lower, upper = resolution // factor * factor, (resolution // factor + 1) * factor
        raise ValueError(
            f"{source} downsamples {levels - 1} times (by {factor}), so its sample_size and --resolution must be a "
            f"multiple of {factor}: {resolution} is not (its skip connections would not line up); use "
            f"{lower or upper} or {upper}."
        )
    if config.get("in_channels", 3) != channels or config.get("out_channels", 3) != channels:
        raise ValueError(
            f"{source} has in_channels {config.get('in_channels', 3)} and out_channels {config.get('out_channels', 3)}"
            f"; the data are {channels}-channel images."
        )


# ----------------------------------------------------------------------------------------------------------------
# Spectrum VAE sizes


# The Spectrum Matching authors' architectures (f8d4, f16d16: configs/ldm_f8d4.yaml and configs/ldm_f16d16.yaml in
# forever208/SpectrumMatching) and a tiny one for CPU runs and tests.
VAE_PRESETS = {
    "tiny": dict(block_out_channels=(16, 32, 32), latent_channels=4, layers_per_block=1, norm_num_groups=8),
    "f8d4": dict(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2, norm_num_groups=32),
    "f16d16": dict(
        block_out_channels=(128, 128, 256, 256, 512), latent_channels=16, layers_per_block=2, norm_num_groups=32
    ),
}


def build_vae(preset: str, resolution: int, **spectral) -> SpectrumAutoencoderKL:
    """A fresh `SpectrumAutoencoderKL` of a preset size for `resolution` px images; `spectral`: its ESM / DSM config
    keys (`esm_delta`, `dsm_levels`, `dsm_block_size`, ...)."""
    from .autoencoder_kl_spectral import SpectrumAutoencoderKL

    if preset not in VAE_PRESETS:
        raise ValueError(f"unknown VAE preset {preset!r}; choose one of {sorted(VAE_PRESETS)}.")
    depth = len(VAE_PRESETS[preset]["block_out_channels"])
    return SpectrumAutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * depth,
        up_block_types=("UpDecoderBlock2D",) * depth,
        sample_size=resolution,
        **VAE_PRESETS[preset],
        **spectral,
    )


# ----------------------------------------------------------------------------------------------------------------
# DiT sizes


# DiT model sizes (Peebles & Xie 2023, Table 1; heads x head_dim = hidden width), plus CPU sizes: `tiny` (tests)
# and `mini` (the demo).
DIT_PRESETS = {
    "tiny": {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 16, "patch_size": 2},
    "mini": {"num_layers": 4, "num_attention_heads": 4, "attention_head_dim": 16, "patch_size": 2},
    "S/2": {"num_layers": 12, "num_attention_heads": 6, "attention_head_dim": 64, "patch_size": 2},
    "B/2": {"num_layers": 12, "num_attention_heads": 12, "attention_head_dim": 64, "patch_size": 2},
    "L/2": {"num_layers": 24, "num_attention_heads": 16, "attention_head_dim": 64, "patch_size": 2},
    "XL/2": {"num_layers": 28, "num_attention_heads": 16, "attention_head_dim": 72, "patch_size": 2},
}


def build_transformer(
    preset: str,
    in_channels: int,
    sample_size: int,
    repa_depth: int | None = None,
    repa_target_dim: int = 768,
    repa_projector: str = "mlp",
    repa_projector_dim: int = 2048,
    patch_size: int | None = None,
    dit_init: bool = True,
) -> REPADiTTransformer2DModel:
    """A fresh `REPADiTTransformer2DModel` of a preset size with a 1000-class + null label table (what `DiTPipeline`
    assumes) and `out_channels = in_channels` (no learned sigma).

    Args:
        preset: a key of `DIT_PRESETS`.
        in_channels, sample_size: latent channels and side.
        repa_depth: block whose tokens are aligned, `None` = no projector (REPA off).
        patch_size: override the preset's patch size.
        dit_init: the DiT paper's initialisation (adaLN-zero, zero output layer); else PyTorch defaults.
    """
    from .dit_repa import REPADiTTransformer2DModel

    if preset not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {preset!r}; choose one of {sorted(DIT_PRESETS)}.")
    config = dict(DIT_PRESETS[preset])
    if patch_size is not None:
        config["patch_size"] = patch_size
    if sample_size % config["patch_size"]:
        raise ValueError(f"latent side {sample_size} is not divisible by the patch size {config['patch_size']}.")
    model = REPADiTTransformer2DModel(
        in_channels=in_channels,
        out_channels=in_channels,
        sample_size=sample_size,
        num_embeds_ada_norm=1000,
        repa_depth=repa_depth,
        repa_target_dim=repa_target_dim,
        repa_projector=repa_projector,
        repa_projector_dim=repa_projector_dim,
        **config,
    )
    return model.initialize_weights() if dit_init else model


# ----------------------------------------------------------------------------------------------------------------
# Waveform UNet1DModel sizes (Dance Diffusion)


FOURIER_TIME_CHANNELS = 16  # Dance Diffusion's Fourier time features, concatenated to the input (extra_in_channels)


# UNet1DModel sizes. `dance`: the block widths of harmonai's published Dance Diffusion checkpoints
# (maestro-150k unet/config.json: 128, 128, 256, 256 then 512 x 9, 16 Fourier time channels, 65536 samples),
# attention in the four deepest blocks (harmonai's DiffusionUncond uses n_attn_layers=4). `small`: the CPU demo and
# ablation size; `tiny`: tests. Attention needs >= 32 channels (one head per 32).
AUDIO_UNET_PRESETS = {
    "tiny": {"block_out_channels": (16, 32, 32), "num_attention_blocks": 1, "sample_size": 1024},
    "small": {"block_out_channels": (16, 16, 32, 32, 64), "num_attention_blocks": 1, "sample_size": 4096},
    "dance": {
        "block_out_channels": (128, 128, 256, 256) + (512,) * 9,
        "num_attention_blocks": 4,
        "sample_size": 65536,
    },
}


def build_audio_unet(preset: str, sample_size: int, sample_rate: int, channels: int) -> UNet1DModel:
    """A fresh `UNet1DModel` in the Dance Diffusion layout: Fourier time features (16 channels, concatenated to the
    input), a `DownBlock1DNoSkip` first block, `DownBlock1D` blocks, `AttnDownBlock1D` in the deepest
    `num_attention_blocks`, the mirrored up path and `UNetMidBlock1D`.

    Args:
        preset: a key of `AUDIO_UNET_PRESETS`.
        sample_size: clip length in samples (stored in the config; the pipeline's default length).
        sample_rate: samples per second (stored in the config; the pipeline's time unit).
        channels: 1 (mono) or 2 (stereo).
    """
    from diffusers import UNet1DModel

    if preset not in AUDIO_UNET_PRESETS:
        raise ValueError(f"unknown audio UNet preset {preset!r}; choose one of {sorted(AUDIO_UNET_PRESETS)}.")
    widths = AUDIO_UNET_PRESETS[preset]["block_out_channels"]
    attention = AUDIO_UNET_PRESETS[preset]["num_attention_blocks"]
    plain = len(widths) - 1 - attention
    down = ("DownBlock1DNoSkip",) + ("DownBlock1D",) * plain + ("AttnDownBlock1D",) * attention
    up = ("AttnUpBlock1D",) * attention + ("UpBlock1D",) * plain + ("UpBlock1DNoSkip",)
    model = UNet1DModel(
        sample_size=sample_size,
        sample_rate=sample_rate,
        in_channels=channels,
        out_channels=channels,
        extra_in_channels=FOURIER_TIME_CHANNELS,
        time_embedding_type="fourier",
        time_embedding_dim=FOURIER_TIME_CHANNELS,
        flip_sin_to_cos=True,
        use_timestep_embedding=False,
        block_out_channels=widths,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock1D",
    )
    check_sample_size(model, sample_size)
    return model


def check_sample_size(model: UNet1DModel, sample_size: int) -> None:
    """`sample_size` must be a multiple of the UNet's down-scaling `2 ** (len(up_blocks) + 1)` (the blocks and the
    mid block each halve the length), so training crops pass through unpadded and `DanceDiffusionPipeline` generates
    exactly `sample_size` samples."""
    factor = 2 ** (len(model.up_blocks) + 1)
    if sample_size % factor or sample_size < 3 * factor:
        raise ValueError(
            f"--sample_size {sample_size} does not fit this UNet: it must be a multiple of {factor} "
            f"(2 ** (blocks + 1)) and at least {3 * factor}; "
            f"try {max(3 * factor, round(sample_size / factor) * factor)}."
        )
