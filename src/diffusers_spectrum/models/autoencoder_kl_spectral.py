"""`SpectrumAutoencoderKL`: diffusers' `AutoencoderKL` trained with Encoding and Decoding Spectrum Matching.

At inference it *is* an `AutoencoderKL` (same modules, same `encode` / `decode` / `forward`), so every diffusers
pipeline takes it. Training adds `training_losses` (ESM on the sampled posterior, the DSM shared low-pass) and
`estimate_latent_stats`; `to_autoencoder_kl` gives a stock model for publishing.
"""

import inspect
from collections.abc import Iterable
from dataclasses import dataclass

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


__all__ = [
    "ConfigMixin",
    "ModelMixin",
    "SpectrumAutoencoderKL",
    "SpectrumAutoencoderKLTrainingOutput",
    "load_autoencoder",
]

# Keys of the spectral settings this class adds to the parent's config.
SPECTRAL_CONFIG_KEYS = ("esm_delta", "esm_num_bins", "esm_blur", "dsm_block_size", "dsm_levels", "use_kl")


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
        use_kl (`bool`, *optional*, defaults to `False`): whether the recipe adds the KL term (the authors' ESM/DSM
            autoencoders do not; their SD-VAE baseline does, weight 1e-6). Read by trainers, not by `forward`.
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
        use_kl: bool = False,
    ):
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
        target = dsm_lowpass(images, level, block)  # (B, 3, H, W)
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
    ) -> dict:
        """Mean and std of the latents over data; writes `scaling_factor = 1 / std` (and `shift_factor = mean` if
        `use_shift`) into the config.

        Args:
            images_iterable: yields `(B, 3, H, W)` tensors in [-1, 1], or dicts with `"pixel_values"`.
            num_samples: number of images to use (fewer if the iterable ends first).
            use_shift: also record `shift_factor` (note: `DiTPipeline` ignores it; `to_autoencoder_kl` folds it).

        Returns:
            dict with `mean`, `std`, `scaling_factor`, `shift_factor`, `num_samples`, `channel_mean`, `channel_std`.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}.")
        count, total, total_sq, channel_sum, channel_sq, seen = 0, 0.0, 0.0, None, None, 0
        progress = tqdm(total=num_samples, desc="latent stats", disable=not show_progress)
        for batch in images_iterable:
            images = batch["pixel_values"] if isinstance(batch, dict) else batch
            images = images[: num_samples - seen].to(device=self.device, dtype=self.dtype)
            self._check_images(images, "estimate_latent_stats")
            posterior = self.encode(images).latent_dist
            latents = (posterior.sample(generator=generator) if sample_posterior else posterior.mode()).double()
            count += latents.numel()
            total += latents.sum().item()
            total_sq += latents.square().sum().item()
            per_channel = latents.transpose(0, 1).reshape(latents.shape[1], -1)  # (C, B*h*w)
            channel_sum = per_channel.sum(1) if channel_sum is None else channel_sum + per_channel.sum(1)
            channel_sq = (
                per_channel.square().sum(1) if channel_sq is None else channel_sq + per_channel.square().sum(1)
            )
            seen += images.shape[0]
            progress.update(images.shape[0])
            if seen >= num_samples:
                break
        progress.close()
        if seen == 0:
            raise ValueError("estimate_latent_stats: the iterable yielded no images.")
        mean = total / count
        std = max(total_sq / count - mean**2, 0.0) ** 0.5
        if std == 0:
            raise ValueError("estimate_latent_stats: the latents have zero variance; the encoder output is constant.")
        per_count = count / channel_sum.numel()
        channel_mean = channel_sum / per_count
        channel_std = (channel_sq / per_count - channel_mean.square()).clamp_min(0).sqrt()
        stats = {
            "mean": mean,
            "std": std,
            "scaling_factor": 1.0 / std,
            "shift_factor": mean if use_shift else None,
            "num_samples": seen,
            "channel_mean": channel_mean.tolist(),
            "channel_std": channel_std.tolist(),
        }
        if update_config:
            self.register_to_config(scaling_factor=stats["scaling_factor"], shift_factor=stats["shift_factor"])
        return stats

    # ------------------------------------------------------------------------------------------------------------
    def stock_config(self) -> dict:
        """The parent's config keys only: what a stock `AutoencoderKL` accepts without warnings."""
        allowed = set(inspect.signature(AutoencoderKL.__init__).parameters) - {"self"}
        return {k: v for k, v in self.config.items() if k in allowed and not k.startswith("_")}

    @torch.no_grad()
    def to_autoencoder_kl(self, fold_shift: bool = True) -> AutoencoderKL:
        """A stock [`AutoencoderKL`] with the same weights, for publishing.

        With `fold_shift` and a `shift_factor` set, the shift is folded into the quant / post-quant conv biases
        (encoder mean minus shift, decoder input plus shift) and removed from the config, so pipelines that only
        divide by `scaling_factor` (such as `DiTPipeline`) stay exact.
        """
        config = self.stock_config()
        stock = AutoencoderKL.from_config(config).to(self.device)
        if self.dtype != torch.float32:
            stock = stock.to(self.dtype)
        stock.load_state_dict(self.state_dict())
        shift = self.config.shift_factor
        if fold_shift and shift is not None:
            if not (self.config.use_quant_conv and self.config.use_post_quant_conv):
                raise ValueError(
                    "to_autoencoder_kl: folding shift_factor needs use_quant_conv and use_post_quant_conv."
                )
            channels = self.config.latent_channels
            shift_vec = torch.full((channels,), float(shift), device=self.device, dtype=torch.float32)
            stock.quant_conv.bias[:channels] -= shift_vec.to(stock.quant_conv.bias.dtype)
            weight = stock.post_quant_conv.weight.float().sum(dim=(2, 3))  # (C_out, C_in); 1x1 conv
            stock.post_quant_conv.bias += (weight @ shift_vec).to(stock.post_quant_conv.bias.dtype)
            stock.register_to_config(shift_factor=None)
        return stock


def load_autoencoder(pretrained_model_name_or_path, subfolder: str | None = None, **kwargs) -> AutoencoderKL:
    """Load a VAE folder or Hub id as the class it was saved as: a `SpectrumAutoencoderKL` when its config says so
    (no warnings about our extra keys), else a stock `AutoencoderKL` (SD-VAE, SDXL-VAE, any 16-channel VAE).

    Extra keyword arguments (`revision`, `torch_dtype`, ...) go to `from_pretrained`.
    """
    config = AutoencoderKL.load_config(
        pretrained_model_name_or_path, subfolder=subfolder, revision=kwargs.get("revision")
    )
    cls = SpectrumAutoencoderKL if config.get("_class_name") == SpectrumAutoencoderKL.__name__ else AutoencoderKL
    return cls.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
