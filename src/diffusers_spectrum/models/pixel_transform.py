"""Pixel-space diffusion with a DiT: `PixelTransform`, the identity "autoencoder" that stands where a VAE (or the
`DCTTransform` of DCT-space diffusion) stands in a `DiTPipeline`, so the same transformer trains and samples on the
pixels themselves.

Images in [-1, 1] are the latents (``encode`` returns them unchanged, ``scaling_factor`` 1); ``decode`` clamps to
[-1, 1], as the DCT path clamps its pixels. A DiT with patch size p then sees ``(H / p) x (W / p)`` tokens of
``3 p^2`` values, e.g. 64 tokens of 48 values for 32 px images and p = 4, the token count of DCT-space diffusion with
2 x 2 DCT blocks at 32 px (each DCT token covers 4 x 4 pixels: Ning et al. 2024, DCTdiff, compare their pixel
baselines at the same token count). A pipeline folder names `diffusers_spectrum` for its ``vae`` and loads with
``DiffusionPipeline.from_pretrained`` where the package is installed (diffusers logs a type warning, since
``DiTPipeline`` annotates ``vae`` as ``AutoencoderKL``, and loads it anyway).
"""

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput

from ..spectral._checks import require_4d
from .dct_transform import DCTLatentDistribution


__all__ = ["PixelTransform"]


class PixelTransform(ModelMixin, ConfigMixin):
    r"""The identity "autoencoder" of pixel-space diffusion, with the `AutoencoderKL` interface.

    Args:
        in_channels (`int`, *optional*, defaults to 3): image channels (= `latent_channels`).
        scaling_factor (`float`, *optional*, defaults to 1.0): always 1 (pixels in [-1, 1] are diffused as they
            are); present so code that reads `vae.config.scaling_factor` runs unchanged.
        shift_factor (`float`, *optional*): always None.
        latent_channels (`int`, *optional*): derived (= `in_channels`) and recorded in the config; a given value must
            match.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        scaling_factor: float = 1.0,
        shift_factor: float | None = None,
        latent_channels: int | None = None,
    ):
        super().__init__()
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"PixelTransform: `in_channels` must be a positive integer, got {in_channels!r}.")
        if scaling_factor != 1.0:
            raise ValueError(
                f"PixelTransform: pixels are diffused in [-1, 1] as they are; `scaling_factor` must be 1.0, got "
                f"{scaling_factor}."
            )
        if shift_factor not in (None, 0, 0.0):
            raise ValueError(f"PixelTransform: there is no shift; `shift_factor` must be None, got {shift_factor}.")
        if latent_channels is not None and latent_channels != in_channels:
            raise ValueError(
                f"PixelTransform: latent_channels={latent_channels} must equal in_channels={in_channels} (the pixels "
                "are the latents)."
            )
        self.register_to_config(latent_channels=in_channels, shift_factor=None)
        # The decoded pixel range as a (persistent) buffer: it gives the module a device, a dtype and a weights file,
        # so the stock diffusers loaders work.
        self.register_buffer("pixel_range", torch.tensor([-1.0, 1.0]))

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent side: 1."""
        return 1

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Images ``(B, C, H, W)`` in [-1, 1] -> ``AutoencoderKLOutput(latent_dist)`` whose ``.sample()`` /
        ``.mode()`` give the images themselves."""
        require_4d(x, "PixelTransform.encode", "x", channels=self.config.in_channels)
        distribution = DCTLatentDistribution(x)
        return AutoencoderKLOutput(latent_dist=distribution) if return_dict else (distribution,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        """Latents ``(B, C, H, W)`` -> ``DecoderOutput(sample)``: the same images clamped to [-1, 1], in ``z``'s
        dtype."""
        require_4d(z, "PixelTransform.decode", "z", channels=self.config.in_channels)
        images = z.clamp(-1.0, 1.0)
        return DecoderOutput(sample=images) if return_dict else (images,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        """Encode then decode (the round trip: a clamp)."""
        return self.decode(self.encode(sample).latent_dist.mode(), return_dict=return_dict)
