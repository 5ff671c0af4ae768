"""VAE config checks and latent conventions: how a pipeline turns raw VAE latents `z` into diffusion latents and
back, read from an `AutoencoderKL` config (pure functions of the config), and the exact fold of a shift into the
VAE for pipelines without a shift step.

- ``"scale"`` (SD 1.x/2.x, SDXL): encode ``z * scaling_factor``, decode ``latents / scaling_factor``.
- ``"shift_scale"`` (SD3, FLUX; ``shift_factor`` set): encode ``(z - shift_factor) * scaling_factor``, decode
  ``latents / scaling_factor + shift_factor``.
- ``"per_channel"`` (``latents_mean`` and ``latents_std`` set, read by the SDXL pipelines): encode
  ``(z - latents_mean) * scaling_factor / latents_std``, decode ``latents * latents_std / scaling_factor +
  latents_mean``.
"""

import inspect
import math
import numbers
from collections.abc import Mapping, Sequence

import torch
from diffusers import AutoencoderKL


__all__ = [
    "LATENT_CONVENTIONS",
    "check_vae_config",
    "fold_latent_shift",
    "latent_convention",
    "latents_from_vae",
    "latents_to_vae",
    "stock_autoencoder_config",
]

# How diffusion latents are made from raw VAE latents; see the module docstring.
LATENT_CONVENTIONS = ("scale", "shift_scale", "per_channel")


# ----------------------------------------------------------------------------------------------------------------
# Config checks and latent conventions (pure functions of the config)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_positive_int(config: Mapping, key: str, source: str) -> None:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{source}: `{key}` must be a positive integer, got {value!r}.")


def _check_number_list(value, key: str, length: int, source: str, positive: bool = False) -> None:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != length:
        raise ValueError(
            f"{source}: `{key}` must be a list of {length} numbers (one per latent channel) or null, got {value!r}."
        )
    for item in value:
        if not _is_real(item) or not math.isfinite(item) or (positive and item <= 0):
            raise ValueError(
                f"{source}: `{key}` must hold finite{' positive' if positive else ''} numbers, got {value!r}."
            )


def check_vae_config(config: Mapping, source: str = "AutoencoderKL config") -> None:
    """Raise a `ValueError` naming the key when a VAE config cannot describe a working `AutoencoderKL`.

    Checks the architecture keys that diffusers would otherwise turn into an `IndexError` or a silent default
    (`block_out_channels`, `down_block_types`, `up_block_types`, `latent_channels`) and the latent convention keys
    (`scaling_factor` a positive finite number, `shift_factor` a finite number or null, `latents_mean` /
    `latents_std` one number per latent channel or null).

    Args:
        config: a config dict (as in `config.json`) or a model's `config`.
        source: what to name in the message (a file path, a class).
    """
    blocks = config.get("block_out_channels")
    if blocks is None:
        raise ValueError(
            f"{source}: the VAE config has no `block_out_channels`; add it (e.g. [128, 256, 512, 512] for the SD/SDXL/"
            "SD3/FLUX VAEs) or use the config.json saved with the weights."
        )
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or len(blocks) == 0:
        raise ValueError(f"{source}: `block_out_channels` must be a non-empty list of channel counts, got {blocks!r}.")
    if any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 1 for c in blocks):
        raise ValueError(f"{source}: `block_out_channels` must hold positive integers, got {blocks!r}.")
    for key in ("down_block_types", "up_block_types"):
        types = config.get(key)
        # diffusers indexes block_out_channels with each block type's position: more types than channels fail.
        if types is not None and (isinstance(types, (str, bytes)) or not 1 <= len(types) <= len(blocks)):
            raise ValueError(
                f"{source}: `{key}` must name between 1 and len(block_out_channels) = {len(blocks)} blocks, "
                f"got {types!r}."
            )
    for key in ("latent_channels", "layers_per_block", "norm_num_groups"):
        if key in config:
            _check_positive_int(config, key, source)
    scaling = config.get("scaling_factor", 0.18215)
    if not _is_real(scaling) or not math.isfinite(scaling) or scaling <= 0:
        raise ValueError(
            f"{source}: `scaling_factor` must be a positive finite number (1 / latent std, e.g. 0.18215), "
            f"got {scaling!r}."
        )
    shift = config.get("shift_factor")
    if shift is not None and (not _is_real(shift) or not math.isfinite(shift)):
        raise ValueError(f"{source}: `shift_factor` must be a finite number or null, got {shift!r}.")
    channels = config.get("latent_channels", 4)
    for key, positive in (("latents_mean", False), ("latents_std", True)):
        if config.get(key) is not None:
            _check_number_list(config[key], key, channels, source, positive=positive)
    if (config.get("latents_mean") is None) != (config.get("latents_std") is None):
        raise ValueError(f"{source}: set both `latents_mean` and `latents_std` (per-channel convention) or neither.")


def latent_convention(config: Mapping) -> str:
    """The family's latent convention read from a VAE config: `"per_channel"` when `latents_mean` and
    `latents_std` are set, else `"shift_scale"` when `shift_factor` is set, else `"scale"`."""
    if config.get("latents_mean") is not None and config.get("latents_std") is not None:
        return "per_channel"
    return "shift_scale" if config.get("shift_factor") is not None else "scale"


def _channel_view(values, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def latents_to_vae(latents: torch.Tensor, config: Mapping) -> torch.Tensor:
    """Diffusion latents `(B, C, h, w)` back to raw VAE latents, as the family's pipelines do before `decode`
    (`latents / scaling_factor [+ shift_factor]`, or the per-channel form)."""
    scale = config["scaling_factor"]
    convention = latent_convention(config)
    if convention == "per_channel":
        std, mean = _channel_view(config["latents_std"], latents), _channel_view(config["latents_mean"], latents)
        return latents * std / scale + mean
    if convention == "shift_scale":
        return latents / scale + config["shift_factor"]
    return latents / scale


def latents_from_vae(latents: torch.Tensor, config: Mapping) -> torch.Tensor:
    """Raw VAE latents `(B, C, h, w)` to diffusion latents, as the family's training scripts and img2img
    pipelines do after `encode` (`(z [- shift_factor]) * scaling_factor`, or the per-channel form)."""
    scale = config["scaling_factor"]
    convention = latent_convention(config)
    if convention == "per_channel":
        std, mean = _channel_view(config["latents_std"], latents), _channel_view(config["latents_mean"], latents)
        return (latents - mean) * scale / std
    if convention == "shift_scale":
        return (latents - config["shift_factor"]) * scale
    return latents * scale


def stock_autoencoder_config(config: Mapping) -> dict:
    allowed = set(inspect.signature(AutoencoderKL.__init__).parameters) - {"self"}
    return {k: v for k, v in config.items() if k in allowed and not k.startswith("_")}


@torch.no_grad()
def fold_latent_shift(vae: AutoencoderKL) -> AutoencoderKL:
    """A stock `AutoencoderKL` whose latents are `z - shift_factor`, with `shift_factor=None` in its config.

    The encoder's mean loses the shift through the quant conv bias and the decoder gets it back through the
    post-quant conv bias (both 1x1 convolutions, so the fold is exact up to float rounding everywhere, borders
    included). A VAE without quant convs (SD3, FLUX: `use_quant_conv=False`, `use_post_quant_conv=False`) gets
    identity 1x1 convs carrying the shift. Pipelines that only divide by `scaling_factor` (`DiTPipeline`) then
    decode `latents / scaling_factor + shift_factor` exactly. The input is not modified; a VAE without a shift
    comes back as a plain stock copy.

    Args:
        vae: any `AutoencoderKL` (a `SpectrumAutoencoderKL` too).
    """
    if not isinstance(vae, AutoencoderKL):
        raise TypeError(f"fold_latent_shift: `vae` must be an AutoencoderKL, got {type(vae).__name__}.")
    if vae.config.get("latents_mean") is not None:
        raise ValueError(
            "fold_latent_shift: the VAE uses per-channel latents_mean / latents_std, which a pipeline that only "
            "divides by scaling_factor ignores; this fold handles shift_factor only."
        )
    shift = vae.config.shift_factor
    config = stock_autoencoder_config(vae.config)
    if shift is not None:
        config.update(use_quant_conv=True, use_post_quant_conv=True, shift_factor=None)
    stock = AutoencoderKL.from_config(config)
    missing, unexpected = stock.load_state_dict({k: v.float() for k, v in vae.state_dict().items()}, strict=False)
    added = {"quant_conv.weight", "quant_conv.bias", "post_quant_conv.weight", "post_quant_conv.bias"}
    if unexpected or not set(missing) <= added:
        raise RuntimeError(f"fold_latent_shift: state dict mismatch (missing {missing}, unexpected {unexpected}).")
    if shift is not None:
        channels = vae.config.latent_channels
        if not vae.config.use_quant_conv:  # identity on the 2C moments (mean, logvar)
            _set_identity(stock.quant_conv, 2 * channels)
        if not vae.config.use_post_quant_conv:
            _set_identity(stock.post_quant_conv, channels)
        shift_vec = torch.full((channels,), float(shift), dtype=torch.float32)
        stock.quant_conv.bias[:channels] -= shift_vec
        weight = stock.post_quant_conv.weight.sum(dim=(2, 3))  # (C_out, C_in); 1x1 conv
        stock.post_quant_conv.bias += weight @ shift_vec
    dtype = next(vae.parameters()).dtype
    return stock.to(device=vae.device, dtype=dtype).eval()


def _set_identity(conv: torch.nn.Conv2d, channels: int) -> None:
    conv.weight.zero_()
    conv.weight[:, :, 0, 0] = torch.eye(channels, dtype=conv.weight.dtype)
    conv.bias.zero_()
