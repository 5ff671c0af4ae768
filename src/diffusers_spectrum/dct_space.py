"""DCT-space diffusion (DCTdiff, Ning et al. 2024; SPEC.md, "DCT-space diffusion"): a parameter-free image <-> DCT
"latent" transform that stands where a VAE stands, plus the data statistics and schedule change that go with it.

Encoding an image ``x`` in [-1, 1], ``(B, 3, H, W)``:

1. RGB -> YCbCr with the JPEG (JFIF, ITU-R BT.601 full range) matrix, without the 128 offsets: in [-1, 1] units
   every plane is centred and lies in [-1, 1].
2. Chroma (Cb, Cr) 2x2 average-pooled (``chroma_subsampling=True``, the default and DCTdiff's setting).
3. Each plane split into ``b x b`` blocks (``block_size`` b = 2 for 32/64 px, 4 for 128/256 px), orthonormal
   DCT-II per block, coefficients read in JPEG zigzag order and the last (highest-frequency) ``num_dropped`` = m
   dropped: ``K = b^2 - m`` coefficients per block.
4. Tokens: the 2 x 2 co-located Y blocks plus the Cb and Cr block covering the same ``2b x 2b`` pixels, laid out as
   channels: ``(B, 6K, H / 2b, W / 2b)`` in the order [Y(0,0), Y(0,1), Y(1,0), Y(1,1), Cb, Cr], each K coefficients
   in zigzag order. Without chroma subsampling the Cb and Cr planes also give 4 blocks each: ``12K`` channels.

``encode`` returns the raw coefficients (like a VAE's latents); ``config.scaling_factor = 1 / eta`` scales them for
diffusion, eta being one global scale (a high percentile of |Y DC|, :func:`estimate_dct_eta`). ``decode`` inverts
every step (dropped coefficients are zero, chroma is upsampled by 2x2 repetition). With m = 0 the transform is
exact up to float error except for the chroma downsampling (the only lossy step, and only for chroma that varies
inside a 2 x 2 pixel cell); ``chroma_subsampling=False`` makes it exact for every image.

Pipelines: a :class:`DCTTransform` is the ``vae`` of a stock ``DiTPipeline`` (which divides by ``scaling_factor`` and
calls ``decode``); the folder loads with ``DiffusionPipeline.from_pretrained`` (diffusers logs a type warning, since
``DiTPipeline`` annotates ``vae`` as ``AutoencoderKL``, and loads it anyway).
"""

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, FlowMatchEulerDiscreteScheduler, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput

from .spectral._checks import compute_dtype, require_4d
from .spectral.dct import dct_matrix
from .training.objectives import flow_shift_of, scale_alphas_cumprod


# JPEG / JFIF RGB -> YCbCr (ITU-R BT.601, full range), offsets dropped: rows give Y, Cb, Cr.
JPEG_RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def zigzag_order(block_size: int) -> list[tuple[int, int]]:
    """JPEG zigzag scan of a ``b x b`` block as (row, col) pairs: anti-diagonals by increasing ``row + col``, row
    increasing on odd diagonals and decreasing on even ones ((0,0), (0,1), (1,0), (2,0), (1,1), (0,2), ...)."""
    order = []
    for diagonal in range(2 * block_size - 1):
        rows = range(max(0, diagonal - block_size + 1), min(diagonal, block_size - 1) + 1)
        rows = rows if diagonal % 2 else reversed(rows)
        order.extend((row, diagonal - row) for row in rows)
    return order


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
            None gives 1 / b (the largest possible |Y DC| of an image in [-1, 1] is b); set it from data with
            :func:`estimate_dct_eta`.
        shift_factor (`float`, *optional*): always None (no shift); present so code that reads
            `vae.config.shift_factor` runs unchanged.
        latent_channels (`int`, *optional*): derived (6K or 12K) and recorded in the config, like
            `AutoencoderKL.config.latent_channels`; a given value must match.
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

    def _block_coefficients(self, plane: torch.Tensor) -> torch.Tensor:
        """(B, h, w) plane -> (B, K, h / b, w / b): each block's first K zigzag DCT coefficients."""
        b = self.config.block_size
        batch, height, width = plane.shape
        d = dct_matrix(b, plane.device, plane.dtype)
        blocks = plane.reshape(batch, height // b, b, width // b, b)  # (B, R, b, C, b)
        coefficients = torch.einsum("ui,bricj,vj->buvrc", d, blocks, d).flatten(1, 2)  # (B, b*b, R, C)
        return coefficients[:, self.zigzag_index]  # (B, K, R, C)

    def _block_signal(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_block_coefficients` with the dropped coefficients set to 0: (B, K, R, C) -> (B, h, w)."""
        b = self.config.block_size
        batch, _, rows, cols = coefficients.shape
        full = coefficients.new_zeros(batch, b * b, rows, cols)
        full[:, self.zigzag_index] = coefficients
        d = dct_matrix(b, coefficients.device, coefficients.dtype)
        blocks = torch.einsum("ui,buvrc,vj->bricj", d, full.reshape(batch, b, b, rows, cols), d)  # (B, R, b, C, b)
        return blocks.reshape(batch, rows * b, cols * b)

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
        work = x.to(compute_dtype(x.dtype))
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
        ``(B, 3, 2b h, 2b w)`` in ``z``'s dtype (not clamped)."""
        require_4d(z, "DCTTransform.decode", "z")
        if z.shape[1] != self.latent_channels:
            raise ValueError(
                f"DCTTransform.decode: `z` must have {self.latent_channels} channels for this config, got "
                f"{z.shape[1]}; pass unscaled coefficients from `encode` (divide by scaling_factor first)."
            )
        work = z.to(compute_dtype(z.dtype))
        k = self.coefficients_per_block
        luma = self._block_signal(self._ungroup_blocks(work[:, : 4 * k]))  # (B, H, W)
        if self.config.chroma_subsampling:
            chroma = torch.stack([self._block_signal(work[:, (4 + i) * k : (5 + i) * k]) for i in range(2)], dim=1)
            chroma = chroma.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)  # (B, 2, H, W), 2x2 repeat
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
        images = torch.einsum("cp,bphw->bchw", ycbcr_to_rgb, ycbcr).to(z.dtype)
        if not return_dict:
            return (images,)
        return DecoderOutput(sample=images)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        """Encode then decode (the round trip)."""
        return self.decode(self.encode(sample).latent_dist.mode(), return_dict=return_dict)


# ------------------------------------------------------------------------------------------------
# Data statistics: eta and entropy-based frequency weights (DCTdiff, Sec. 4).


def _image_batches(images) -> Iterable[torch.Tensor]:
    """A ``(B, 3, H, W)`` tensor, or an iterable of such tensors / of dicts with ``"pixel_values"``."""
    if isinstance(images, torch.Tensor):
        yield images
        return
    for batch in images:
        yield batch["pixel_values"] if isinstance(batch, dict) else batch


@torch.no_grad()
def estimate_dct_eta(transform: DCTTransform, images, percentile: float = 99.0, write_config: bool = True) -> float:
    """eta = the ``percentile``-th percentile of |Y DC| over all luma blocks of ``images`` (in [-1, 1]).

    Args:
        transform: the :class:`DCTTransform` (its block size defines the DC coefficients).
        images: a ``(B, 3, H, W)`` tensor or an iterable of them (or of dicts with ``"pixel_values"``).
        percentile: in (0, 100]; DCTdiff uses a high percentile so that almost all scaled DCs lie in [-1, 1].
        write_config: store ``scaling_factor = 1 / eta`` in ``transform.config`` (saved with the pipeline).

    Returns:
        eta as a float.
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"estimate_dct_eta: `percentile` must lie in (0, 100], got {percentile}.")
    k = transform.coefficients_per_block
    dc_values = []
    for batch in _image_batches(images):
        latents = transform.encode(batch.to(transform.device)).latent_dist.mode().float()
        dc_values.append(latents[:, 0 : 4 * k : k].abs().flatten())  # the 4 Y blocks' DC channels
    if not dc_values:
        raise ValueError("estimate_dct_eta: `images` yielded no batches.")
    eta = float(torch.quantile(torch.cat(dc_values).double().cpu(), percentile / 100))
    if not eta > 0:
        raise ValueError("estimate_dct_eta: every Y DC coefficient is 0 (blank images?); cannot set eta.")
    if write_config:
        transform.register_to_config(scaling_factor=1.0 / eta)
    return eta


@torch.no_grad()
def estimate_entropy_weights(transform: DCTTransform, images, quantization_step: float = 1.0) -> torch.Tensor:
    """Per-channel loss weights proportional to the Shannon entropy of each DCT coefficient (DCTdiff's entropy-based
    frequency reweighting): low frequencies carry more information than the near-zero high frequencies.

    Coefficients are measured in 8-bit pixel units (x 127.5) and quantised with ``quantization_step`` (1 = JPEG
    quality 100); the entropy (bits) of each (plane, zigzag frequency) is pooled over its channels (the four Y slots
    share one value) and the weights are normalised to mean 1.

    Returns:
        ``(latent_channels,)`` float32 weights (apply with :func:`dct_weighted_mse`).
    """
    if not quantization_step > 0:
        raise ValueError(f"estimate_entropy_weights: `quantization_step` must be positive, got {quantization_step}.")
    groups = [
        f"{plane}{freq}"
        for plane, freq in zip(transform.channel_planes(), transform.channel_frequencies(), strict=True)
    ]
    names = sorted(set(groups))
    counts = [dict() for _ in names]
    found = False
    for batch in _image_batches(images):
        found = True
        latents = transform.encode(batch.to(transform.device)).latent_dist.mode().float()
        quantized = torch.round(latents * 127.5 / quantization_step).long().cpu()  # (B, C, h, w)
        for channel, group in enumerate(groups):
            values, numbers = torch.unique(quantized[:, channel], return_counts=True)
            table = counts[names.index(group)]
            for value, number in zip(values.tolist(), numbers.tolist(), strict=True):
                table[value] = table.get(value, 0) + number
    if not found:
        raise ValueError("estimate_entropy_weights: `images` yielded no batches.")
    entropies = []
    for table in counts:
        probabilities = torch.tensor(list(table.values()), dtype=torch.float64)
        probabilities = probabilities / probabilities.sum()
        entropies.append(float(-(probabilities * probabilities.log2()).sum()))
    per_channel = torch.tensor([entropies[names.index(group)] for group in groups], dtype=torch.float64)
    if not per_channel.sum() > 0:
        raise ValueError("estimate_entropy_weights: every coefficient is constant (blank images?).")
    return (per_channel / per_channel.mean()).float()


def dct_weighted_mse(prediction: torch.Tensor, target: torch.Tensor, channel_weights: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of ``channel_weights[c] * (prediction - target)^2``: the diffusion loss with DCTdiff's
    frequency weights (from :func:`estimate_entropy_weights`; all-ones gives the plain MSE).

    Args:
        prediction, target: ``(B, C, h, w)``.
        channel_weights: ``(C,)``.

    Returns:
        ``(B,)`` float32 losses (average them, or weight them per timestep first).
    """
    require_4d(prediction, "dct_weighted_mse", "prediction")
    if prediction.shape != target.shape:
        raise ValueError(f"dct_weighted_mse: shapes {tuple(prediction.shape)} and {tuple(target.shape)} differ.")
    if channel_weights.shape != (prediction.shape[1],):
        raise ValueError(
            f"dct_weighted_mse: `channel_weights` must have shape ({prediction.shape[1]},), "
            f"got {tuple(channel_weights.shape)}."
        )
    weights = channel_weights.to(device=prediction.device, dtype=torch.float32)[None, :, None, None]
    return (weights * (prediction.float() - target.float()) ** 2).mean(dim=(1, 2, 3))


# ------------------------------------------------------------------------------------------------
# SNR scaling of the noise schedule: SNR'(t) = c SNR(t) (DCTdiff, Sec. 4).


def snr_scaled_scheduler(scheduler, snr_scale: float):
    """A copy of ``scheduler`` whose training/sampling schedule has ``SNR'(t) = snr_scale * SNR(t)``.

    - DDPM / DDIM / DPM-Solver: ``abar' = c abar / (1 + (c - 1) abar)``
      (:func:`~diffusers_spectrum.objectives.scale_alphas_cumprod`), stored as ``trained_betas`` so the saved
      scheduler config reproduces it.
    - Flow matching (``FlowMatchEulerDiscreteScheduler``'s ``shift`` or ``flow_shift`` with ``use_flow_sigmas``):
      SNR = ((1 - t) / t)^2, and the time shift t' = s t / (1 + (s - 1) t) divides it by s^2, so
      ``shift' = shift / sqrt(c)``.

    Use the returned scheduler both for training (``DiffusionObjective(kind, scheduler)``) and in the pipeline.
    """
    if not snr_scale > 0 or not math.isfinite(snr_scale):
        raise ValueError(f"snr_scaled_scheduler: `snr_scale` must be a positive finite number, got {snr_scale}.")
    config = scheduler.config
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler) or config.get("use_flow_sigmas", False):
        key = "flow_shift" if config.get("use_flow_sigmas", False) else "shift"
        return type(scheduler).from_config(config, **{key: flow_shift_of(scheduler) / math.sqrt(snr_scale)})
    if not hasattr(scheduler, "alphas_cumprod") or "trained_betas" not in config:
        raise ValueError(
            "snr_scaled_scheduler: needs a DDPM-family scheduler with `trained_betas` (DDPM, DDIM, DPM-Solver, ...) "
            f"or a flow-matching scheduler, got {type(scheduler).__name__}."
        )
    alphas_cumprod = scale_alphas_cumprod(scheduler.alphas_cumprod, snr_scale)  # (T,) float64
    previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    betas = 1 - alphas_cumprod / previous
    return type(scheduler).from_config(scheduler.config, trained_betas=betas.tolist())
