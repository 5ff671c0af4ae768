"""DCT-space diffusion (DCTdiff, Ning et al. 2024; SPEC.md, "DCT-space diffusion"): a parameter-free image <-> DCT
"latent" transform that stands where a VAE stands, plus the data statistics and schedule change that go with it.

Conventions are the DCTdiff authors' (their code, forever208/DCTdiff), in units of 127.5 pixel levels: an image
``x`` in [-1, 1] is the 8-bit picture ``p = 127.5 (x + 1)`` in [0, 255], and every coefficient here is the authors'
coefficient divided by 127.5 (so eta here = the authors' eta / 127.5; the scaled latents ``coefficients / eta``, the
clamps and the entropy weights are unit-free and identical). Encoding ``(B, 3, H, W)``:

1. Centring as the authors: ``p - 128`` (here ``x - 1/255``), then RGB -> YCbCr with the JPEG (JFIF, ITU-R BT.601
   full range) matrix without offsets (the chroma rows sum to 0, so only luma sees the centring).
2. Chroma (Cb, Cr) 2x2 average-pooled (``chroma_subsampling=True``, DCTdiff's setting; their bilinear resize at
   exactly 1/2 is the same 2x2 average).
3. Each plane split into ``b x b`` blocks (``block_size`` b = 2 for 32/64 px, 4 for 128/256 px), orthonormal
   DCT-II per block (:func:`~diffusers_spectrum.spectral.dct.blockwise_dct_2d`), coefficients read in JPEG zigzag
   order and the last (highest-frequency) ``num_dropped`` = m dropped: ``K = b^2 - m`` coefficients per block.
4. Tokens: the 2 x 2 co-located Y blocks plus the Cb and Cr block covering the same ``2b x 2b`` pixels, laid out as
   channels: ``(B, 6K, H / 2b, W / 2b)`` in the order [Y(0,0), Y(0,1), Y(1,0), Y(1,1), Cb, Cr], each K coefficients
   in zigzag order. Without chroma subsampling the Cb and Cr planes also give 4 blocks each: ``12K`` channels.

``encode`` returns the raw coefficients (like a VAE's latents); ``config.scaling_factor = 1 / eta`` scales them for
diffusion, eta = max(|p1.75|, |p98.25|) of the signed Y DC over the data (:func:`estimate_dct_statistics`).
``decode`` inverts every step as the authors: coefficients clamped to +-``coefficient_clip`` eta (2 eta), dropped
coefficients zero, chroma upsampled 2x by bilinear resize (half-pixel centres, edge replication: OpenCV's
``INTER_LINEAR``, ``align_corners=False``), YCbCr -> RGB, ``+ 128``, pixels clamped to [0, 255] (here [-1, 1]).

Inverse colour constants: the exact inverse of the forward matrix, not the authors' rounded JPEG constants (1.402,
0.344136, 0.714136, 1.772). The two differ by < 4e-7 per unit (< 1e-4 of an 8-bit level), far below quantisation,
and the exact inverse keeps the claimed round trips exact to float error: with m = 0 and no chroma subsampling every
image in [-1, 1] comes back exactly; with subsampling luma is exact and chroma becomes the bilinear upsampling of its
2x2 means (exact for images of constant chroma, e.g. grey ones).

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
from .spectral.dct import blockwise_dct_2d, blockwise_idct_2d
from .training.objectives import flow_shift_of, scale_alphas_cumprod


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


def _image_batches(images) -> Iterable[torch.Tensor]:
    """A ``(B, 3, H, W)`` tensor, or an iterable of such tensors / of dicts with ``"pixel_values"``."""
    if isinstance(images, torch.Tensor):
        yield images
        return
    for batch in images:
        yield batch["pixel_values"] if isinstance(batch, dict) else batch


# Streaming statistics: one fine histogram per (plane, zigzag position), pooled over the plane's blocks (the four Y
# slots of a token share their positions, as the authors pool all Y blocks). Memory is flat in the dataset size:
# 3 x K x HISTOGRAM_BINS int64 counts. Values beyond the histogram range (+-2b, twice the largest coefficient of an
# image in [-1, 1]) fall into the edge bins.
HISTOGRAM_BINS = 2**15


class CoefficientHistograms:
    """Fine histograms of every (plane, zigzag position) coefficient, accumulated batch by batch.

    Percentiles read from them approximate numpy's ``np.percentile`` (linear interpolation between order
    statistics): each order statistic is replaced by the centre of its bin, so the error is at most half a bin width
    (``bin_width / 2`` = 2b / 2^15 = b / 2^14 coefficient units, 1e-4 of a typical eta) for values inside the range.

    Attributes:
        counts: ``(3, K, HISTOGRAM_BINS)`` int64 counts, planes in `PLANES` order.
        limit: the histogram covers [-limit, limit].
    """

    def __init__(self, transform: "DCTTransform", num_bins: int = HISTOGRAM_BINS):
        self.transform = transform
        self.num_bins = int(num_bins)
        self.limit = 2.0 * transform.config.block_size
        self.counts = torch.zeros(3, transform.coefficients_per_block, self.num_bins, dtype=torch.int64)
        self.samples = 0

    @property
    def bin_width(self) -> float:
        return 2 * self.limit / self.num_bins

    def bin_centres(self) -> torch.Tensor:
        """``(num_bins,)`` float64 centres."""
        return -self.limit + (torch.arange(self.num_bins, dtype=torch.float64) + 0.5) * self.bin_width

    @torch.no_grad()
    def update(self, images: torch.Tensor) -> None:
        """Add a ``(B, 3, H, W)`` batch of images in [-1, 1]."""
        transform = self.transform
        latents = transform.encode(images.to(transform.device)).latent_dist.mode().double()  # (B, C, h, w)
        k = transform.coefficients_per_block
        per_chroma = 1 if transform.config.chroma_subsampling else 4
        slots = {"Y": 4, "Cb": per_chroma, "Cr": per_chroma}
        start = 0
        for plane_index, plane in enumerate(PLANES):
            values = latents[:, start : start + slots[plane] * k]  # (B, slots * K, h, w), slot-major
            start += slots[plane] * k
            values = values.reshape(values.shape[0], slots[plane], k, -1).permute(2, 0, 1, 3).reshape(k, -1)  # (K, n)
            index = ((values + self.limit) / self.bin_width).floor().clamp(0, self.num_bins - 1).long()
            index = index + torch.arange(k, device=index.device)[:, None] * self.num_bins
            counts = torch.bincount(index.flatten(), minlength=k * self.num_bins).reshape(k, self.num_bins)
            self.counts[plane_index] += counts.cpu()
        self.samples += latents.shape[0]

    def percentile(self, plane: int, position: int, q: float) -> float:
        """``np.percentile(values, q)`` (linear) of one (plane, position), to half a bin width."""
        counts = self.counts[plane, position]
        total = int(counts.sum())
        rank = (total - 1) * q / 100.0
        low = math.floor(rank)
        cumulative = counts.cumsum(0)
        orders = torch.tensor([low, min(low + 1, total - 1)])
        bins = torch.searchsorted(cumulative, orders, right=True)  # bin holding order statistic i: cumsum > i
        centres = self.bin_centres()[bins]
        return float(centres[0] + (rank - low) * (centres[1] - centres[0]))


def _collect_histograms(transform: "DCTTransform", images, name: str) -> CoefficientHistograms:
    histograms = CoefficientHistograms(transform)
    for batch in _image_batches(images):
        histograms.update(batch)
    if histograms.samples == 0:
        raise ValueError(f"{name}: `images` yielded no batches.")
    return histograms


def _check_tau(tau: float, name: str) -> None:
    if not 50 < tau < 100:
        raise ValueError(f"{name}: `tau` must lie in (50, 100) (the authors use 98.25), got {tau}.")


def eta_from_histograms(histograms: CoefficientHistograms, tau: float = 98.25) -> float:
    """eta = max(|p(100 - tau)|, |p(tau)|) of the signed Y DC (the authors' bound, tau = 98.25)."""
    low, high = histograms.percentile(0, 0, 100 - tau), histograms.percentile(0, 0, tau)
    eta = max(abs(low), abs(high))
    if not eta > 0:
        raise ValueError("estimate_dct_eta: the Y DC percentiles are 0 (blank images?); cannot set eta.")
    return eta


def entropy_weights_from_histograms(histograms: CoefficientHistograms, eta: float, tau: float = 98.25) -> torch.Tensor:
    """The authors' entropy weights from fine histograms.

    Per (plane, position): keep values strictly inside (p(100 - tau), p(tau)), divide by eta, histogram them in 100
    equal bins on [-1, 1] (values outside dropped, as ``np.histogram``), ``p = counts / sum``, entropy
    ``-sum p log2(p + 1e-9)``; each plane's K entropies normalised to mean 1, then laid out per latent channel.
    Fine bins are assigned whole by their centre, so a coarse count can be off by the values of the one fine bin
    that straddles each coarse edge or trim bound (none when the data keep a fine bin away from them).

    Returns:
        ``(latent_channels,)`` float32 weights.
    """
    transform = histograms.transform
    centres = histograms.bin_centres()
    k = transform.coefficients_per_block
    entropies = torch.zeros(3, k, dtype=torch.float64)
    for plane in range(3):
        for position in range(k):
            low = histograms.percentile(plane, position, 100 - tau)
            high = histograms.percentile(plane, position, tau)
            counts = histograms.counts[plane, position].double()
            kept = (centres > low) & (centres < high)
            scaled = centres / eta
            inside = kept & (scaled >= -1) & (scaled <= 1)
            coarse = ((scaled[inside] + 1) / 2 * 100).floor().clamp(0, 99).long()  # np.histogram: last bin closed
            coarse_counts = torch.zeros(100, dtype=torch.float64).index_add_(0, coarse, counts[inside])
            if not coarse_counts.sum() > 0:
                continue
            p = coarse_counts / coarse_counts.sum()
            entropies[plane, position] = -(p * torch.log2(p + 1e-9)).sum()
    means = entropies.mean(dim=1, keepdim=True)
    if not bool((means > 0).all()):
        raise ValueError("estimate_entropy_weights: a plane has zero entropy everywhere (blank images?).")
    normalised = entropies / means  # (3, K), each plane mean 1
    per_chroma = 1 if transform.config.chroma_subsampling else 4
    layout = [normalised[0]] * 4 + [normalised[1]] * per_chroma + [normalised[2]] * per_chroma
    return torch.cat(layout).float()  # (latent_channels,)


@torch.no_grad()
def estimate_dct_statistics(
    transform: DCTTransform, images, tau: float = 98.25, write_config: bool = True
) -> tuple[float, torch.Tensor]:
    """eta and the entropy weights in one streaming pass (the authors' definitions, see :func:`estimate_dct_eta`
    and :func:`estimate_entropy_weights`).

    Args:
        transform: the :class:`DCTTransform`.
        images: a ``(B, 3, H, W)`` tensor in [-1, 1] or an iterable of them (or of dicts with ``"pixel_values"``).
        tau: upper percentile (the authors: 98.25; the lower one is 100 - tau).
        write_config: store ``scaling_factor = 1 / eta`` and ``entropy_weights`` in ``transform.config``.

    Returns:
        ``(eta, weights)``: eta as a float, weights ``(latent_channels,)`` float32.
    """
    _check_tau(tau, "estimate_dct_statistics")
    histograms = _collect_histograms(transform, images, "estimate_dct_statistics")
    eta = eta_from_histograms(histograms, tau)
    weights = entropy_weights_from_histograms(histograms, eta, tau)
    if write_config:
        transform.register_to_config(scaling_factor=1.0 / eta, entropy_weights=weights.tolist())
    return eta, weights


@torch.no_grad()
def estimate_dct_eta(transform: DCTTransform, images, tau: float = 98.25, write_config: bool = True) -> float:
    """eta = max(|p(100 - tau)|, |p(tau)|) of the *signed* Y DC coefficients over ``images`` (the authors' bound,
    tau = 98.25), streamed through fixed fine histograms (flat memory, error at most half a bin: b / 2^14).

    Args:
        transform: the :class:`DCTTransform` (its block size defines the DC coefficients).
        images: a ``(B, 3, H, W)`` tensor in [-1, 1] or an iterable of them (or of dicts with ``"pixel_values"``).
        tau: upper percentile in (50, 100).
        write_config: store ``scaling_factor = 1 / eta`` in ``transform.config`` (saved with the pipeline).

    Returns:
        eta as a float (coefficient units of 127.5 levels: the authors' eta / 127.5).
    """
    _check_tau(tau, "estimate_dct_eta")
    eta = eta_from_histograms(_collect_histograms(transform, images, "estimate_dct_eta"), tau)
    if write_config:
        transform.register_to_config(scaling_factor=1.0 / eta)
    return eta


@torch.no_grad()
def estimate_entropy_weights(
    transform: DCTTransform, images, eta: float | None = None, tau: float = 98.25, write_config: bool = True
) -> torch.Tensor:
    """Per-channel loss weights from the entropy of each DCT coefficient (DCTdiff's entropy-based frequency
    reweighting, the authors' definition: :func:`entropy_weights_from_histograms`).

    Args:
        transform: the :class:`DCTTransform`.
        images: as in :func:`estimate_dct_eta`.
        eta: the scale the trimmed values are divided by; None uses the transform's (1 / scaling_factor), so
            estimate eta first.
        tau: upper percentile of the trimming (the authors: 98.25).
        write_config: store the weights as ``transform.config.entropy_weights``.

    Returns:
        ``(latent_channels,)`` float32 weights, each plane (Y, Cb, Cr) of mean 1 (apply with
        :func:`dct_weighted_mse`).
    """
    _check_tau(tau, "estimate_entropy_weights")
    eta = transform.eta if eta is None else float(eta)
    if not eta > 0:
        raise ValueError(f"estimate_entropy_weights: `eta` must be positive, got {eta}.")
    histograms = _collect_histograms(transform, images, "estimate_entropy_weights")
    weights = entropy_weights_from_histograms(histograms, eta, tau)
    if write_config:
        transform.register_to_config(entropy_weights=weights.tolist())
    return weights


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
      (:func:`~diffusers_spectrum.training.objectives.scale_alphas_cumprod`), stored as ``trained_betas`` so the saved
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
