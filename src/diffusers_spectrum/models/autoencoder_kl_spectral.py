"""`SpectrumAutoencoderKL`: diffusers' `AutoencoderKL` trained with Encoding and Decoding Spectrum Matching.

At inference it *is* an `AutoencoderKL` (same modules, same `encode` / `decode` / `forward`), so every diffusers
pipeline takes it. Training adds `training_losses` (ESM on the sampled posterior, the DSM shared low-pass) and
`estimate_latent_stats`; `to_autoencoder_kl` gives a stock model for publishing.

`estimate_latent_stats` keeps the family's latent convention (`latent_conventions.py`); the package's one VAE
loader is `loading.load_autoencoder`.
"""

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

# diffusers' pipeline loader resolves a custom component by importing the module recorded in `model_index.json`
# (this module's path) and looking the base classes up on it, so they must be attributes of this module.
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm

from ..losses.equivariance import EquivarianceTransform, apply_spatial_transform, equivariance_targets
from ..spectral import DSM_DEFAULT_LEVELS, check_dsm_level, dsm_lowpass, esm_band_powers, esm_divergence
from ..spectral._checks import require_4d, require_finite
from .latent_conventions import (
    LATENT_CONVENTIONS,
    check_vae_config,
    fold_latent_shift,
    latent_convention,
    latents_from_vae,
    latents_to_vae,
    stock_autoencoder_config,
)


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
]


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
        transform: EquivarianceTransform | None = None,
    ) -> SpectrumAutoencoderKLTrainingOutput:
        """One ESM + DSM training forward pass (or, with a non-identity EQ-VAE `transform`, `equivariance_losses`).

        Args:
            images: `(B, 3, H, W)` in [-1, 1].
            dsm_level: mask level for this step; `None` draws one from `config.dsm_levels` with `generator`.
            generator: drives the level draw and the posterior sample.
            sample_posterior: sample the posterior (the authors' setting) rather than take its mean.
            transform: EQ-VAE's transform of this step (`losses.sample_equivariance_transform`); None or the identity
                is the plain step.

        Returns:
            [`SpectrumAutoencoderKLTrainingOutput`] with unweighted terms.
        """
        if transform is not None and not transform.is_identity:
            return self.equivariance_losses(images, transform, generator)
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

        # 4. Spectral terms on the unmasked sampled posterior, before any scaling factor
        esm, kl_delta0 = self.spectral_terms(images, latents)
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

    def spectral_terms(self, images: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ESM between `images` and their posterior sample `latents` (exponent `config.esm_delta`, with gradient) and
        the detached divergence to the unflattened image law (delta 0, for logging), from band powers computed
        once."""
        config = self.config
        image_bands, latent_bands = esm_band_powers(images, latents, n_bins=config.esm_num_bins, blur=config.esm_blur)
        esm = esm_divergence(image_bands, latent_bands, delta=config.esm_delta).mean()
        kl_delta0 = esm_divergence(image_bands, latent_bands.detach(), delta=0.0).mean().detach()
        return esm, kl_delta0

    def equivariance_losses(
        self, images: torch.Tensor, transform: EquivarianceTransform, generator: torch.Generator | None = None
    ) -> SpectrumAutoencoderKLTrainingOutput:
        """One EQ-VAE step (Kouzelis et al. 2025): the terms of `training_losses` with the reconstruction pair
        replaced.

        - `"equivariance"` branch: encode x, sample z, decode tau(z) and train it against tau(x) (both from
          `losses.equivariance_targets`: the same bilinear downscale and rotation).
        - `"low_resolution_prior"` branch: encode and decode tau(x) (a downscale only) and train against tau(x).

        KL and the spectral terms are those of the posterior of the image that was encoded (untransformed x for the
        equivariance branch, as the authors' KL; tau(x) for the low-resolution prior). DSM is off on these steps
        (`dsm_level` 0). The image side must be a multiple of the downsample factor at every drawn scale
        (`sample_equivariance_transform(latent_size=...)` guarantees it); `reconstruction` and `target` are
        `(B, 3, H', W')`.
        """
        if transform.branch == "low_resolution_prior":
            images = apply_spatial_transform(images, transform)  # (B, 3, s H, s W)
        posterior = self.encode(images).latent_dist
        latents = posterior.sample(generator=generator)  # (B, C, h, w)
        if transform.branch == "equivariance":
            decoded_latents, target = equivariance_targets(images, latents, transform)  # tau(z), tau(x)
        else:
            decoded_latents, target = latents, images
        reconstruction = self.decode(decoded_latents).sample  # (B, 3, H', W')
        kl = posterior.kl()
        esm, kl_delta0 = self.spectral_terms(images, latents)
        return SpectrumAutoencoderKLTrainingOutput(
            latents=latents,
            reconstruction=reconstruction,
            target=target,
            dsm_level=0,
            kl=kl,
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
        return stock_autoencoder_config(self.config)

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
