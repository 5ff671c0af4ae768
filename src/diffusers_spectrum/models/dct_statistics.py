"""DCTdiff's data statistics of a `DCTTransform`, streamed with flat memory: eta (the global coefficient scale) and
the per-coefficient entropy weights of the loss, as the authors define them (Ning et al. 2024,
"DCTdiff"; their code, forever208/DCTdiff)."""

import math
from collections.abc import Iterable

import torch

from .dct_transform import PLANES, DCTTransform


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
