"""DCT-space diffusion (DCTdiff, Ning et al. 2024; the authors' code: forever208/DCTdiff): `DCTTransform`, a
parameter-free image <-> DCT "latent" transform that stands where a VAE stands in a pipeline.

Images ``(B, 3, H, W)`` in [-1, 1] -> JPEG YCbCr, chroma 2x2-averaged, ``b x b`` blockwise DCT in zigzag order with
the last ``num_dropped`` = m coefficients dropped -> tokens ``(B, 6K, H / 2b, W / 2b)``, ``K = b^2 - m`` (4 Y blocks,
then Cb, Cr; ``12K`` channels without chroma subsampling). Coefficients are in units of 127.5 pixel levels (the
authors' / 127.5); ``encode`` returns them raw and ``config.scaling_factor = 1 / eta`` scales them for diffusion.
A stock ``DiTPipeline`` loads it as its ``vae`` (diffusers logs a type warning and loads it anyway). The statistics
(eta, entropy weights) are in `models/dct_statistics.py`, the weighted loss in `losses/dct.py`, the SNR-scaled
schedule in `pipelines/schedulers.py`.

Provenance: docs/PROVENANCE.md#dct_transform"""

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput

from ..spectral._checks import compute_dtype, require_4d
from ..spectral.dct import blockwise_dct_2d, blockwise_idct_2d


# JPEG / JFIF RGB -> YCbCr (ITU-R BT.601, full range), offsets dropped: rows give Y, Cb, Cr.
JPEG_RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
# The authors centre [0, 255] pixels at 128; in [-1, 1] units (x = p / 127.5 - 1) that is x - 1 / 255.
PIXEL_CENTRE_OFFSET = 1.0 / 255.0
# Planes of the entropy weights (each normalised to mean 1 separately, as the authors).
PLANES = ("Y", "Cb", "Cr")


def zigzag_order(block_size: int) -> list[tuple[int, int]]:
    """JPEG zigzag scan of a ``b x b`` block as (row, col) pairs: anti-diagonals by increasing ``row + col``, row
    increasing on odd diagonals and decreasing on even ones ((0,0), (0,1), (1,0), (2,0), (1,1), (0,2), ...)."""
    order = []
    for diagonal in range(2 * block_size - 1):
        rows = range(max(0, diagonal - block_size + 1), min(diagonal, block_size - 1) + 1)
        rows = rows if diagonal % 2 else reversed(rows)
        order.extend((row, diagonal - row) for row in rows)
    return order


def upsample_chroma(chroma: torch.Tensor) -> torch.Tensor:
    """2x bilinear upsampling of subsampled chroma, the authors' inverse (OpenCV ``INTER_LINEAR`` resize): sample
    centres at half pixels (``align_corners=False``), edges replicated, no antialias (upsampling).

    Args:
        chroma: ``(B, C, h, w)``.

    Returns:
        ``(B, C, 2h, 2w)``.
    """
    return F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)


class DCTLatentDistribution:
    """Deterministic stand-in for ``DiagonalGaussianDistribution``: ``sample()``, ``mode()`` and ``mean`` all give
    the coefficients, ``kl()`` is zero, so code written for ``vae.encode(x).latent_dist`` runs unchanged."""

    def __init__(self, latents: torch.Tensor):
        self.mean = latents
        self.std = torch.zeros_like(latents)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other=None) -> torch.Tensor:
        return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)


class DCTTransform(ModelMixin, ConfigMixin):
    r"""Parameter-free blockwise-DCT "autoencoder" for DCT-space diffusion with the `AutoencoderKL` interface.

    Args:
        block_size (`int`, *optional*, defaults to 2):
            Side b of the DCT blocks (DCTdiff: 2 for 32/64 px images, 4 for 128/256 px).
        num_dropped (`int`, *optional*, defaults to 0):
            m, the number of highest zigzag coefficients dropped per block (0 keeps all; at most b^2 - 1).
        chroma_subsampling (`bool`, *optional*, defaults to `True`):
            Average-pool Cb and Cr 2x2 (4:2:0) before the DCT, as in DCTdiff and JPEG.
        in_channels (`int`, *optional*, defaults to 3): RGB images only.
        scaling_factor (`float`, *optional*):
            1 / eta, the factor diffusion multiplies the coefficients by (read as `vae.config.scaling_factor`).
            None gives 1 / b (about the largest |Y DC| of an image in [-1, 1]); set it from data with
            :func:`estimate_dct_statistics` (or :func:`estimate_dct_eta`).
        shift_factor (`float`, *optional*): always None (no shift); present so code that reads
            `vae.config.shift_factor` runs unchanged.
        latent_channels (`int`, *optional*): derived (6K or 12K) and recorded in the config, like
            `AutoencoderKL.config.latent_channels`; a given value must match.
        coefficient_clip (`float`, *optional*, defaults to 2.0):
            `decode` clamps the coefficients to +- coefficient_clip * eta (the authors clip the scaled coefficients to
            [-2, 2]); None disables the clamp.
        entropy_weights (`list[float]`, *optional*):
            Per-channel loss weights (:func:`estimate_entropy_weights`), stored so a saved pipeline reproduces them.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        block_size: int = 2,
        num_dropped: int = 0,
        chroma_subsampling: bool = True,
        in_channels: int = 3,
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        latent_channels: int | None = None,
        coefficient_clip: float | None = 2.0,
        entropy_weights: list[float] | None = None,
    ):
        super().__init__()
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"DCTTransform: `block_size` must be a positive integer, got {block_size!r}.")
        if not isinstance(num_dropped, int) or not 0 <= num_dropped < block_size**2:
            raise ValueError(
                f"DCTTransform: `num_dropped` must be an integer in [0, {block_size**2 - 1}] for block_size="
                f"{block_size}, got {num_dropped!r}."
            )
        if in_channels != 3:
            raise ValueError(f"DCTTransform: only RGB images are supported (in_channels=3), got {in_channels}.")
        if shift_factor not in (None, 0, 0.0):
            raise ValueError(
                f"DCTTransform: the transform has no shift; `shift_factor` must be None, got {shift_factor}."
            )
        channels = (6 if chroma_subsampling else 12) * (block_size**2 - num_dropped)
        if latent_channels is not None and latent_channels != channels:
            raise ValueError(
                f"DCTTransform: latent_channels={latent_channels} does not match block_size={block_size}, "
                f"num_dropped={num_dropped}, chroma_subsampling={chroma_subsampling} ({channels} channels)."
            )
        self.register_to_config(latent_channels=channels, shift_factor=None)
        if scaling_factor is None:
            self.register_to_config(scaling_factor=1.0 / block_size)
        elif not scaling_factor > 0:
            raise ValueError(f"DCTTransform: `scaling_factor` (1 / eta) must be positive, got {scaling_factor}.")
        if coefficient_clip is not None and not coefficient_clip > 0:
            raise ValueError(f"DCTTransform: `coefficient_clip` must be positive or None, got {coefficient_clip}.")
        if entropy_weights is not None and len(entropy_weights) != channels:
            raise ValueError(
                f"DCTTransform: `entropy_weights` must hold {channels} values (one per channel), got "
                f"{len(entropy_weights)}; re-estimate them with estimate_entropy_weights."
            )
        order = torch.tensor(zigzag_order(block_size)[: block_size**2 - num_dropped])  # (K, 2)
        # The JPEG matrix as a (persistent) buffer: not a parameter, but it gives the module a device and dtype and
        # a weights file, so the stock diffusers loaders work. The maths reads the float64 constants, not the buffer
        # (which a float16 pipeline would round).
        self.register_buffer("rgb_to_ycbcr", torch.tensor(JPEG_RGB_TO_YCBCR, dtype=torch.float32))
        self.register_buffer("zigzag_index", order[:, 0] * block_size + order[:, 1], persistent=False)

    # -- layout -------------------------------------------------------------------------------------

    @property
    def coefficients_per_block(self) -> int:
        """K = b^2 - m."""
        return self.config.block_size**2 - self.config.num_dropped

    @property
    def latent_channels(self) -> int:
        """Channels of the coefficient grid: 6K with chroma subsampling, 12K without (= `config.latent_channels`)."""
        return self.config.latent_channels

    @property
    def downsample_factor(self) -> int:
        """Pixels per token side: 2b."""
        return 2 * self.config.block_size

    def channel_planes(self) -> list[str]:
        """Plane ("Y", "Cb", "Cr") of each latent channel, for per-plane statistics."""
        per_chroma = 1 if self.config.chroma_subsampling else 4
        planes = ["Y"] * 4 + ["Cb"] * per_chroma + ["Cr"] * per_chroma
        return [plane for plane in planes for _ in range(self.coefficients_per_block)]

    def channel_frequencies(self) -> list[int]:
        """Zigzag index (0 = DC) of each latent channel."""
        blocks = 6 if self.config.chroma_subsampling else 12
        return list(range(self.coefficients_per_block)) * blocks

    @property
    def eta(self) -> float:
        """The global scale eta = 1 / `config.scaling_factor` (coefficient units: 127.5 pixel levels)."""
        return 1.0 / self.config.scaling_factor

    def _block_coefficients(self, plane: torch.Tensor) -> torch.Tensor:
        """(B, h, w) plane -> (B, K, h / b, w / b): each block's first K zigzag DCT coefficients."""
        b = self.config.block_size
        batch, height, width = plane.shape
        coefficients = blockwise_dct_2d(plane, b).reshape(batch, height // b, b, width // b, b)  # (B, R, u, C, v)
        coefficients = coefficients.permute(0, 2, 4, 1, 3).flatten(1, 2)  # (B, b*b, R, C)
        return coefficients[:, self.zigzag_index]  # (B, K, R, C)

    def _block_signal(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_block_coefficients` with the dropped coefficients set to 0: (B, K, R, C) -> (B, h, w)."""
        b = self.config.block_size
        batch, _, rows, cols = coefficients.shape
        full = coefficients.new_zeros(batch, b * b, rows, cols)
        full[:, self.zigzag_index] = coefficients
        blocks = full.reshape(batch, b, b, rows, cols).permute(0, 3, 1, 4, 2)  # (B, R, u, C, v)
        return blockwise_idct_2d(blocks.reshape(batch, rows * b, cols * b), b)  # (B, h, w)

    def _group_blocks(self, coefficients: torch.Tensor) -> torch.Tensor:
        """(B, K, R, C) -> (B, 4K, R / 2, C / 2): the 2 x 2 co-located blocks, channel order [dy, dx, K]."""
        batch, k, rows, cols = coefficients.shape
        grouped = coefficients.reshape(batch, k, rows // 2, 2, cols // 2, 2)  # (B, K, r, dy, c, dx)
        return grouped.permute(0, 3, 5, 1, 2, 4).reshape(batch, 4 * k, rows // 2, cols // 2)

    def _ungroup_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_group_blocks`: (B, 4K, r, c) -> (B, K, 2r, 2c)."""
        batch, channels, rows, cols = tokens.shape
        k = channels // 4
        grouped = tokens.reshape(batch, 2, 2, k, rows, cols).permute(0, 3, 4, 1, 5, 2)  # (B, K, r, dy, c, dx)
        return grouped.reshape(batch, k, 2 * rows, 2 * cols)

    # -- AutoencoderKL interface --------------------------------------------------------------------

    def _check_images(self, x: torch.Tensor) -> None:
        require_4d(x, "DCTTransform.encode", "x", channels=3)
        size = self.downsample_factor
        if x.shape[-2] % size or x.shape[-1] % size:
            raise ValueError(
                f"DCTTransform.encode: image size {x.shape[-2]}x{x.shape[-1]} must be divisible by 2 * block_size = "
                f"{size}; resize or crop the images, or choose a smaller block_size."
            )

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Images ``(B, 3, H, W)`` in [-1, 1] -> ``AutoencoderKLOutput(latent_dist)`` whose ``.sample()`` /
        ``.mode()`` give the unscaled coefficients ``(B, latent_channels, H / 2b, W / 2b)`` in ``x``'s dtype."""
        self._check_images(x)
        work = x.to(compute_dtype(x.dtype)) - PIXEL_CENTRE_OFFSET  # the authors' p - 128, in [-1, 1] units
        rgb_to_ycbcr = torch.tensor(JPEG_RGB_TO_YCBCR, dtype=torch.float64, device=work.device)
        ycbcr = torch.einsum("pc,bchw->bphw", rgb_to_ycbcr.to(work.dtype), work)  # (B, 3, H, W)
        luma, chroma = ycbcr[:, 0], ycbcr[:, 1:]
        tokens = [self._group_blocks(self._block_coefficients(luma))]  # (B, 4K, H / 2b, W / 2b)
        if self.config.chroma_subsampling:
            chroma = F.avg_pool2d(chroma, 2)  # (B, 2, H / 2, W / 2): one b x b block per token
            tokens += [self._block_coefficients(chroma[:, 0]), self._block_coefficients(chroma[:, 1])]
        else:
            tokens += [self._group_blocks(self._block_coefficients(chroma[:, i])) for i in range(2)]
        latents = torch.cat(tokens, dim=1).to(x.dtype)  # (B, latent_channels, H / 2b, W / 2b)
        distribution = DCTLatentDistribution(latents)
        if not return_dict:
            return (distribution,)
        return AutoencoderKLOutput(latent_dist=distribution)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        """Unscaled coefficients ``(B, latent_channels, h, w)`` -> ``DecoderOutput(sample)``: images
        ``(B, 3, 2b h, 2b w)`` in [-1, 1], in ``z``'s dtype. As the authors: coefficients clamped to
        +- ``coefficient_clip`` eta, chroma upsampled by bilinear resize, pixels clamped to [0, 255] ([-1, 1])."""
        require_4d(z, "DCTTransform.decode", "z")
        if z.shape[1] != self.latent_channels:
            raise ValueError(
                f"DCTTransform.decode: `z` must have {self.latent_channels} channels for this config, got "
                f"{z.shape[1]}; pass unscaled coefficients from `encode` (divide by scaling_factor first)."
            )
        work = z.to(compute_dtype(z.dtype))
        if self.config.coefficient_clip is not None:
            bound = self.config.coefficient_clip * self.eta
            work = work.clamp(-bound, bound)
        k = self.coefficients_per_block
        luma = self._block_signal(self._ungroup_blocks(work[:, : 4 * k]))  # (B, H, W)
        if self.config.chroma_subsampling:
            chroma = torch.stack([self._block_signal(work[:, (4 + i) * k : (5 + i) * k]) for i in range(2)], dim=1)
            chroma = upsample_chroma(chroma)  # (B, 2, H, W)
        else:
            chroma = torch.stack(
                [
                    self._block_signal(self._ungroup_blocks(work[:, (4 + 4 * i) * k : (8 + 4 * i) * k]))
                    for i in range(2)
                ],
                dim=1,
            )  # (B, 2, H, W)
        ycbcr = torch.cat([luma[:, None], chroma], dim=1)  # (B, 3, H, W)
        ycbcr_to_rgb = torch.linalg.inv(torch.tensor(JPEG_RGB_TO_YCBCR, dtype=torch.float64)).to(work)  # (3, 3)
        images = torch.einsum("cp,bphw->bchw", ycbcr_to_rgb, ycbcr) + PIXEL_CENTRE_OFFSET
        images = images.clamp(-1.0, 1.0).to(z.dtype)  # pixels clamped to [0, 255]
        if not return_dict:
            return (images,)
        return DecoderOutput(sample=images)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        """Encode then decode (the round trip)."""
        return self.decode(self.encode(sample).latent_dist.mode(), return_dict=return_dict)


# ------------------------------------------------------------------------------------------------
# Data statistics: eta and entropy-based frequency weights (DCTdiff, Sec. 4).
