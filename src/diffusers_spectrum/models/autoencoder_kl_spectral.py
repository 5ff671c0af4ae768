"""`SpectrumAutoencoderKL`: diffusers' `AutoencoderKL` trained with Encoding and Decoding Spectrum Matching.

At inference it *is* an `AutoencoderKL` (same modules, same `encode` / `decode` / `forward`), so every diffusers
pipeline takes it. Training adds `training_losses` (ESM on the sampled posterior, the DSM shared low-pass) and
`estimate_latent_stats`; `to_autoencoder_kl` gives a stock model for publishing.

Latent conventions (how a pipeline turns raw VAE latents `z` into diffusion latents and back), read from the config:

- ``"scale"`` (SD 1.x/2.x, SDXL): encode ``z * scaling_factor``, decode ``latents / scaling_factor``.
- ``"shift_scale"`` (SD3, FLUX; ``shift_factor`` set): encode ``(z - shift_factor) * scaling_factor``, decode
  ``latents / scaling_factor + shift_factor``.
- ``"per_channel"`` (``latents_mean`` and ``latents_std`` set, read by the SDXL pipelines): encode
  ``(z - latents_mean) * scaling_factor / latents_std``, decode ``latents * latents_std / scaling_factor +
  latents_mean``.

`load_autoencoder` is the package's one VAE loader: the saved class, strict weights, clear errors.
"""

import inspect
import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

# diffusers' pipeline loader resolves a custom component by importing the module recorded in `model_index.json`
# (this module's path) and looking the base classes up on it, so they must be attributes of this module.
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm

from ..spectral import DSM_DEFAULT_LEVELS, check_dsm_level, dsm_lowpass, esm_band_powers, esm_divergence
from ..spectral._checks import require_4d, require_finite
from .checks import looks_local


__all__ = [
    "LATENT_CONVENTIONS",
    "ConfigMixin",
    "LatentStats",
    "ModelMixin",
    "SpectrumAutoencoderKL",
    "SpectrumAutoencoderKLTrainingOutput",
    "check_vae_config",
    "fold_latent_shift",
    "latent_convention",
    "latents_from_vae",
    "latents_to_vae",
    "load_autoencoder",
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


@dataclass
class LatentStats:
    """What `SpectrumAutoencoderKL.estimate_latent_stats` measured and wrote.

    Args:
        convention (`str`): one of `LATENT_CONVENTIONS`: the family's convention the numbers follow.
        mean (`float`), std (`float`): mean and standard deviation (about the mean) of all latent elements.
        scaling_factor (`float`): the config's `scaling_factor` after the estimate (`1 / std` for `"scale"` and
            `"shift_scale"`; unchanged for `"per_channel"`, where it is the target std).
        shift_factor (`float` or `None`): the config's `shift_factor` after the estimate (`mean` for
            `"shift_scale"`, `None` for the other two).
        num_samples (`int`): images used.
        channel_mean (`list[float]`), channel_std (`list[float]`): per-channel statistics, length `C`.
        latents_mean (`list[float]` or `None`), latents_std (`list[float]` or `None`): the config's per-channel keys
            after the estimate (written for `"per_channel"` only).
        config_updated (`bool`): whether the numbers were written into the model's config.

    Items are also readable as `stats["scaling_factor"]`, as the earlier dict return was.
    """

    convention: str
    mean: float
    std: float
    scaling_factor: float
    shift_factor: float | None
    num_samples: int
    channel_mean: list[float] = field(default_factory=list)
    channel_std: list[float] = field(default_factory=list)
    latents_mean: list[float] | None = None
    latents_std: list[float] | None = None
    config_updated: bool = True

    def __getitem__(self, key: str):
        if key not in self.__dataclass_fields__:
            raise KeyError(f"LatentStats has no field {key!r}; fields: {sorted(self.__dataclass_fields__)}.")
        return getattr(self, key)

    def keys(self):
        return self.__dataclass_fields__.keys()

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return asdict(self)


@dataclass
class SpectrumAutoencoderKLTrainingOutput(BaseOutput):
    """Everything one training step of a Spectrum VAE needs; the trainer chooses the weights.

    Args:
        latents (`torch.Tensor` of shape `(B, C, h, w)`): sampled posterior latents (before DSM masking and before any
            scaling factor).
        reconstruction (`torch.Tensor` of shape `(B, 3, H, W)`): decoder output for the (possibly low-passed) latent.
        target (`torch.Tensor` of shape `(B, 3, H, W)`): what the reconstruction is trained against: the images, or
            their DSM low-pass when `dsm_level > 0`.
        dsm_level (`int`): the DSM mask level used in this step (0 = none).
        kl (`torch.Tensor` of shape `(B,)`): KL divergence of the posterior from N(0, I), summed over latent elements.
        esm (`torch.Tensor`, scalar): ESM loss between images and `latents` (with gradient).
        spectral_kl_delta0 (`torch.Tensor`, scalar): ESM divergence to the unflattened image law, for logging.
        posterior (`DiagonalGaussianDistribution`): the encoder's posterior.
    """

    latents: torch.Tensor
    reconstruction: torch.Tensor
    target: torch.Tensor
    dsm_level: int
    kl: torch.Tensor
    esm: torch.Tensor
    spectral_kl_delta0: torch.Tensor
    posterior: DiagonalGaussianDistribution


class SpectrumAutoencoderKL(AutoencoderKL):
    r"""An [`AutoencoderKL`] with Spectrum Matching training settings.

    All parent arguments are listed (and passed on by keyword) so that diffusers records and reloads every one.

    Args:
        esm_delta (`float`, *optional*, defaults to 1.0): ESM flattening exponent (1.0 = the authors' ESM target).
        esm_num_bins (`int`, *optional*, defaults to 16): radial bands of the ESM spectra.
        esm_blur (`bool`, *optional*): anti-alias the image before resizing it to the latent grid. `None` follows
            the authors: blur unless the latent grid is 32 wide.
        dsm_block_size (`int`, *optional*, defaults to 8): DCT block side of the DSM low-pass.
        dsm_levels (`tuple[int]`, *optional*, defaults to `(0, 8, 10, 12)`): mask levels drawn uniformly per step;
            `(0,)` disables DSM.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        esm_delta: float = 1.0,
        esm_num_bins: int = 16,
        esm_blur: bool | None = None,
        dsm_block_size: int = 8,
        dsm_levels: tuple[int, ...] = DSM_DEFAULT_LEVELS,
    ):
        check_vae_config(
            {
                "block_out_channels": block_out_channels,
                "down_block_types": down_block_types,
                "up_block_types": up_block_types,
                "latent_channels": latent_channels,
                "layers_per_block": layers_per_block,
                "norm_num_groups": norm_num_groups,
                "scaling_factor": scaling_factor,
                "shift_factor": shift_factor,
                "latents_mean": latents_mean,
                "latents_std": latents_std,
            },
            source=type(self).__name__,
        )
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            sample_size=sample_size,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            latents_mean=latents_mean,
            latents_std=latents_std,
            force_upcast=force_upcast,
            use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv,
            mid_block_add_attention=mid_block_add_attention,
        )
        if esm_num_bins < 1:
            raise ValueError(f"esm_num_bins must be a positive integer, got {esm_num_bins}.")
        if not dsm_levels:
            raise ValueError("dsm_levels must name at least one level; use (0,) to disable DSM.")
        for level in dsm_levels:
            check_dsm_level(level, dsm_block_size)

    # ------------------------------------------------------------------------------------------------------------
    @property
    def downsample_factor(self) -> int:
        """Spatial reduction of the encoder (8 for four blocks)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def _check_images(self, images: torch.Tensor, func: str) -> None:
        require_4d(images, func, "images", channels=self.config.in_channels)
        if images.dtype != self.dtype and not torch.is_autocast_enabled(images.device.type):
            raise TypeError(
                f"{func}: `images` are {images.dtype} but the model is {self.dtype}; cast them with "
                "`images.to(vae.dtype)`, cast the model with `vae.to(dtype)`, or run under `torch.autocast`."
            )
        factor = self.downsample_factor * self.config.dsm_block_size
        if any(self.config.dsm_levels) and (images.shape[-2] % factor or images.shape[-1] % factor):
            raise ValueError(
                f"{func}: image size {tuple(images.shape[-2:])} must be divisible by {factor} (downsample factor "
                f"{self.downsample_factor} x DSM block {self.config.dsm_block_size}) so the latent splits into DSM "
                "blocks; resize/crop the images or set dsm_levels=(0,)."
            )
        if images.shape[-2] % self.downsample_factor or images.shape[-1] % self.downsample_factor:
            raise ValueError(
                f"{func}: image size {tuple(images.shape[-2:])} is not divisible by the downsample factor "
                f"{self.downsample_factor}."
            )

    def sample_dsm_level(self, generator: torch.Generator | None = None) -> int:
        """Draw one mask level uniformly from `config.dsm_levels` (on the generator's device)."""
        levels = tuple(self.config.dsm_levels)
        device = generator.device if generator is not None else "cpu"
        return int(levels[int(torch.randint(len(levels), (1,), generator=generator, device=device))])

    def training_losses(
        self,
        images: torch.Tensor,
        dsm_level: int | None = None,
        generator: torch.Generator | None = None,
        sample_posterior: bool = True,
    ) -> SpectrumAutoencoderKLTrainingOutput:
        """One ESM + DSM training forward pass.

        Args:
            images: `(B, 3, H, W)` in [-1, 1].
            dsm_level: mask level for this step; `None` draws one from `config.dsm_levels` with `generator`.
            generator: drives the level draw and the posterior sample.
            sample_posterior: sample the posterior (the authors' setting) rather than take its mean.

        Returns:
            [`SpectrumAutoencoderKLTrainingOutput`] with unweighted terms.
        """
        # 1. Validate
        self._check_images(images, "training_losses")
        require_finite(images, "training_losses", "images")
        level = (
            self.sample_dsm_level(generator)
            if dsm_level is None
            else check_dsm_level(dsm_level, self.config.dsm_block_size)
        )

        # 2. Encode and sample
        posterior = self.encode(images).latent_dist
        latents = posterior.sample(generator=generator) if sample_posterior else posterior.mode()  # (B, C, h, w)

        # 3. DSM: the same blockwise low-pass on latent and image, decode the low-passed latent
        block = self.config.dsm_block_size
        target = dsm_lowpass(images, level, block, check_finite=False)  # (B, 3, H, W); no sync per step
        reconstruction = self.decode(dsm_lowpass(latents, level, block)).sample  # (B, 3, H, W)

        # 4. Spectral terms on the unmasked sampled posterior, before any scaling factor (band powers computed once)
        image_bands, latent_bands = esm_band_powers(
            images, latents, n_bins=self.config.esm_num_bins, blur=self.config.esm_blur
        )
        esm = esm_divergence(image_bands, latent_bands, delta=self.config.esm_delta).mean()
        kl_delta0 = esm_divergence(image_bands, latent_bands.detach(), delta=0.0).mean().detach()
        return SpectrumAutoencoderKLTrainingOutput(
            latents=latents,
            reconstruction=reconstruction,
            target=target,
            dsm_level=level,
            kl=posterior.kl(),
            esm=esm,
            spectral_kl_delta0=kl_delta0,
            posterior=posterior,
        )

    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def estimate_latent_stats(
        self,
        images_iterable: Iterable,
        num_samples: int,
        use_shift: bool = False,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
        update_config: bool = True,
        show_progress: bool = True,
    ) -> LatentStats:
        """Measure the latent statistics over data and write them into the config in the family's convention.

        - `"scale"` (SD 1.x/2.x, SDXL: `shift_factor` is None and `use_shift` is False): `scaling_factor = 1 / std`,
          `shift_factor` stays None.
        - `"shift_scale"` (SD3, FLUX: `shift_factor` set, or `use_shift=True`): `shift_factor = mean` and
          `scaling_factor = 1 / std` of the shifted latents, so `(z - shift_factor) * scaling_factor` has mean 0 and
          std 1 (the SD3/FLUX pipelines decode `latents / scaling_factor + shift_factor`).
        - `"per_channel"` (`latents_mean` and `latents_std` set): both lists are re-estimated per channel and
          `scaling_factor` (the target std of that convention) is kept.

        A number in the config is never replaced by None.

        Args:
            images_iterable: yields `(B, 3, H, W)` tensors in [-1, 1], or dicts with `"pixel_values"`.
            num_samples: number of images to use (fewer if the iterable ends first).
            use_shift: ask for a shift on a scale-only family (a family with a shift always keeps one).
            sample_posterior: measure posterior samples (what the diffusion model is trained on) rather than means.
            generator: drives the posterior samples.
            update_config: write the numbers into the config.

        Returns:
            [`LatentStats`] naming the convention, with the global and per-channel statistics.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}.")
        convention = latent_convention(self.config)
        if use_shift and convention == "per_channel":
            raise ValueError(
                "estimate_latent_stats: use_shift=True on a VAE with `latents_mean` / `latents_std` (per-channel "
                "convention, which already removes a per-channel mean); leave use_shift False."
            )
        if use_shift:
            convention = "shift_scale"
        channel_sum, channel_sq, per_count, seen = self._accumulate_latent_moments(
            images_iterable, num_samples, sample_posterior, generator, show_progress
        )
        channel_mean = channel_sum / per_count  # (C,) float64
        channel_std = (channel_sq / per_count - channel_mean.square()).clamp_min(0).sqrt()
        mean = float(channel_sum.sum() / (per_count * channel_sum.numel()))
        std = max(float(channel_sq.sum() / (per_count * channel_sum.numel())) - mean**2, 0.0) ** 0.5
        if std == 0 or (convention == "per_channel" and bool((channel_std == 0).any())):
            raise ValueError("estimate_latent_stats: the latents have zero variance; the encoder output is constant.")

        updates = {}
        if convention == "per_channel":
            updates = {"latents_mean": channel_mean.tolist(), "latents_std": channel_std.tolist()}
        elif convention == "shift_scale":
            updates = {"scaling_factor": 1.0 / std, "shift_factor": mean}
        else:
            updates = {"scaling_factor": 1.0 / std}
        if update_config:
            self.register_to_config(**updates)
        after = {**dict(self.config), **updates}
        return LatentStats(
            convention=convention,
            mean=mean,
            std=std,
            scaling_factor=after["scaling_factor"],
            shift_factor=after["shift_factor"] if convention == "shift_scale" else None,
            num_samples=seen,
            channel_mean=channel_mean.tolist(),
            channel_std=channel_std.tolist(),
            latents_mean=after.get("latents_mean") if convention == "per_channel" else None,
            latents_std=after.get("latents_std") if convention == "per_channel" else None,
            config_updated=update_config,
        )

    def _accumulate_latent_moments(self, images_iterable, num_samples, sample_posterior, generator, show_progress):
        """Per-channel sums of the latents and of their squares, `(C,)` float64 on the CPU, over up to
        `num_samples` images; returns `(sum, sum_sq, elements_per_channel, images_seen)`."""
        channel_sum = channel_sq = None
        per_count, seen = 0, 0
        progress = tqdm(total=num_samples, desc="latent stats", disable=not show_progress)
        for batch in images_iterable:
            images = batch["pixel_values"] if isinstance(batch, dict) else batch
            images = images[: num_samples - seen].to(device=self.device, dtype=self.dtype)
            self._check_images(images, "estimate_latent_stats")
            posterior = self.encode(images).latent_dist
            latents = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
            per_channel = latents.transpose(0, 1).reshape(latents.shape[1], -1).double()  # (C, B*h*w)
            sums, squares = per_channel.sum(1).cpu(), per_channel.square().sum(1).cpu()
            channel_sum = sums if channel_sum is None else channel_sum + sums
            channel_sq = squares if channel_sq is None else channel_sq + squares
            per_count += per_channel.shape[1]
            seen += images.shape[0]
            progress.update(images.shape[0])
            if seen >= num_samples:
                break
        progress.close()
        if seen == 0:
            raise ValueError("estimate_latent_stats: the iterable yielded no images.")
        return channel_sum, channel_sq, per_count, seen

    # ------------------------------------------------------------------------------------------------------------
    def stock_config(self) -> dict:
        """The parent's config keys only: what a stock `AutoencoderKL` accepts without warnings."""
        return _stock_config(self.config)

    @torch.no_grad()
    def to_autoencoder_kl(self, fold_shift: bool = False) -> AutoencoderKL:
        """A stock [`AutoencoderKL`] with the same weights and dtype, for publishing.

        By default every stock key is kept as it is (`scaling_factor`, `shift_factor`, `force_upcast`,
        `latents_mean`, `latents_std`), so the model drops back into its family's pipeline. With `fold_shift`, see
        [`fold_latent_shift`]: for pipelines that ignore `shift_factor` (such as `DiTPipeline`).
        """
        stock = AutoencoderKL.from_config(self.stock_config()).to(device=self.device, dtype=self.dtype)
        stock.load_state_dict(self.state_dict(), strict=True)
        stock.eval()
        return fold_latent_shift(stock) if fold_shift else stock


def _stock_config(config: Mapping) -> dict:
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
    config = _stock_config(vae.config)
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


# ----------------------------------------------------------------------------------------------------------------
# Loading

_WEIGHTS_NAME = "diffusion_pytorch_model"
_LOADABLE_CLASSES = {"AutoencoderKL": AutoencoderKL, "SpectrumAutoencoderKL": SpectrumAutoencoderKL}


def _closest_existing(path: Path) -> Path | None:
    for parent in path.parents:
        if str(parent) not in ("", ".") and parent.exists():
            return parent
    return None


def _weights_files(variant: str | None) -> list[str]:
    stem = f"{_WEIGHTS_NAME}.{variant}" if variant else _WEIGHTS_NAME
    return [f"{stem}.safetensors", f"{stem}.bin", f"{stem}.safetensors.index.json", f"{stem}.bin.index.json"]


def _read_local_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    if not config_path.is_file():
        hint = (
            " It is a pipeline folder: pass subfolder='vae'."
            if (folder / "model_index.json").is_file()
            else " A diffusers VAE folder holds config.json and diffusion_pytorch_model.safetensors (written by "
            "save_pretrained)."
        )
        raise FileNotFoundError(f"load_autoencoder: no config.json in the folder {str(folder)!r}.{hint}")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"load_autoencoder: {str(config_path)!r} is not valid JSON ({error}); restore the file."
        ) from None
    if not isinstance(config, dict):
        raise ValueError(
            f"load_autoencoder: {str(config_path)!r} must hold a JSON object, got {type(config).__name__}."
        )
    return config


def _check_local_folder(path: Path, subfolder: str | None, variant: str | None) -> dict:
    """Existence, config and weights file of a local VAE folder; returns the parsed config."""
    if not path.exists():
        near = _closest_existing(path.absolute())
        where = f" (the closest existing folder is {str(near)!r})" if near is not None else ""
        raise FileNotFoundError(
            f"load_autoencoder: no such folder {str(path)!r}{where}; check the path (a Hub id has the form "
            "'owner/name')."
        )
    if not path.is_dir():
        raise FileNotFoundError(
            f"load_autoencoder: {str(path)!r} is a file; pass the folder that holds config.json and the weights."
        )
    folder = path / subfolder if subfolder else path
    if not folder.is_dir():
        raise FileNotFoundError(f"load_autoencoder: no such folder {str(folder)!r} (subfolder {subfolder!r}).")
    config = _read_local_config(folder)
    names = _weights_files(variant)
    if not any((folder / name).is_file() for name in names):
        present = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(
            f"load_autoencoder: the weights file {names[0]!r} is missing from {str(folder)!r} (found {present}); copy "
            f"the weights next to config.json, or load the model and save it again with save_pretrained."
        )
    return config


def _resolve_class(config: dict, source: str):
    name = config.get("_class_name", "AutoencoderKL")
    if name not in _LOADABLE_CLASSES:
        raise ValueError(
            f"load_autoencoder: {source} is a {name!r}, not an AutoencoderKL; pass a VAE folder (for a pipeline "
            "folder, its 'vae' subfolder)."
        )
    return _LOADABLE_CLASSES[name]


def _from_pretrained_strict(cls, name_or_path: str, source: str, **kwargs) -> AutoencoderKL:
    try:
        model, info = cls.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    except ValueError as error:
        if "expected shape" not in str(error):
            raise
        raise ValueError(
            f"load_autoencoder: the config of {source} does not match its weights ({error}); fix config.json or "
            "save the model again."
        ) from None
    problems = {k: info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        listed = "; ".join(f"{k}: {list(v)[:4]}{' ...' if len(v) > 4 else ''}" for k, v in problems.items())
        raise ValueError(
            f"load_autoencoder: the config of {source} does not match its weights ({listed}); a layer would be left "
            "randomly initialised. Fix config.json (e.g. layers_per_block, block_out_channels) or save the model "
            "again."
        )
    return model


def load_autoencoder(
    pretrained_model_name_or_path,
    subfolder: str | None = None,
    revision: str | None = None,
    torch_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    **kwargs,
) -> AutoencoderKL:
    """The package's one VAE loader: a folder or Hub id loaded as the class it was saved as, strictly, in eval mode.

    A `SpectrumAutoencoderKL` folder loads as one (no warnings about its extra keys), any other `AutoencoderKL`
    folder (SD, SDXL, SD3, FLUX VAEs) as a stock `AutoencoderKL`. A local pipeline folder (`model_index.json`
    beside a `vae/` folder) is read from `vae/`; a Hub id without a root `config.json` is tried once more in its
    `vae` subfolder. A model instance is returned as is (moved to `device` / `torch_dtype` when given).

    Errors come at once and name the culprit: a path that looks local and does not exist (`FileNotFoundError`,
    "no such folder", no Hub retries), a missing config.json or weights file, a config that cannot describe the
    weights (missing `block_out_channels`, `scaling_factor="abc"`, other layer counts: `ValueError`).

    Args:
        pretrained_model_name_or_path: folder, Hub id (`owner/name`) or model instance.
        subfolder: folder inside it (`"vae"` for pipeline repositories).
        revision: Hub revision.
        torch_dtype: dtype of the loaded weights (e.g. `torch.float16`).
        device: where to put the model.
        **kwargs: passed to `from_pretrained` (`variant`, `cache_dir`, `token`, `local_files_only`, ...).
    """
    if torch_dtype is not None and not isinstance(torch_dtype, torch.dtype):
        raise TypeError(f"load_autoencoder: `torch_dtype` must be a torch.dtype, got {torch_dtype!r}.")
    if isinstance(pretrained_model_name_or_path, torch.nn.Module):
        model = pretrained_model_name_or_path
        return model.to(device=device, dtype=torch_dtype).eval() if (device or torch_dtype) else model.eval()
    if not isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
        raise TypeError(
            "load_autoencoder: pass a folder, a Hub id or a model, got "
            f"{type(pretrained_model_name_or_path).__name__}."
        )
    text = os.fspath(pretrained_model_name_or_path)
    load_kwargs = dict(kwargs, revision=revision)
    if torch_dtype is not None:
        load_kwargs["torch_dtype"] = torch_dtype
    if looks_local(text) or os.path.exists(text):
        path = Path(os.path.expanduser(text))
        if subfolder is None and (path / "model_index.json").is_file() and (path / "vae").is_dir():
            subfolder = "vae"
        config = _check_local_folder(path, subfolder, kwargs.get("variant"))
        folder = path / subfolder if subfolder else path
        source = repr(str(folder / "config.json"))
        name = str(path)
    else:
        name = text
        config, subfolder = _load_hub_config(text, subfolder, revision, kwargs)
        source = f"{text!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
    check_vae_config(config, source=source)
    cls = _resolve_class(config, source)
    model = _from_pretrained_strict(cls, name, source, subfolder=subfolder, **load_kwargs)
    return model.to(device).eval() if device is not None else model.eval()


def _load_hub_config(name: str, subfolder: str | None, revision: str | None, kwargs: dict) -> tuple[dict, str | None]:
    """The config of a Hub id: its root (or `subfolder`), else its `vae` subfolder."""
    extra = {k: kwargs[k] for k in ("cache_dir", "token", "local_files_only") if k in kwargs}
    tries = [subfolder] if subfolder is not None else [None, "vae"]
    errors = []
    for folder in tries:
        try:
            return dict(AutoencoderKL.load_config(name, subfolder=folder, revision=revision, **extra)), folder
        except OSError as error:
            errors.append(f"{'subfolder ' + repr(folder) if folder else 'root'}: {error}")
    raise OSError(f"load_autoencoder: could not read a VAE config from the Hub id {name!r}: " + " | ".join(errors))
