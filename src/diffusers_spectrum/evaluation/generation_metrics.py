"""Offline generation metrics that need no pretrained feature network.

- :func:`pyramid_swd`: sliced Wasserstein distance of Laplacian-pyramid patch descriptors (Karras et al. 2018,
  "Progressive Growing of GANs", Sec. 5 and Appendix D), per-set normalisation as published;
  ``normalization="pooled"`` is the colour-aware variant.
- :func:`spectrum_distance`: RMS difference of the natural-log radially averaged power spectra of two sets.
- :func:`kid`: the kernel inception distance (Binkowski et al. 2018, "Demystifying MMD GANs") on any features.
- :func:`box_blur`, :func:`blur_separation`: the blur check every metric a study relies on must pass.

All are seeded and deterministic. Conventions of each: docs/METHODS.md#generation-metrics
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..spectral._checks import compute_dtype, require_4d, require_tensor
from ..spectral.psd import radial_spectrum


# Published defaults of the Progressive-GAN SWD (Karras et al. 2018, Appendix D).
SWD_MIN_RESOLUTION = 16
SWD_PATCH_SIZE = 7
SWD_PATCHES_PER_IMAGE = 128
SWD_NUM_PROJECTIONS = 512
SWD_PROJECTIONS_PER_CHUNK = 128  # the authors' directions per repeat; bounds the memory of one sort

_BINOMIAL_5 = (1.0, 4.0, 6.0, 4.0, 1.0)  # / 16


# ------------------------------------------------------------------------------------------------
# Laplacian pyramid with the 5-tap binomial filter (Burt & Adelson 1983).


def _binomial_blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Separable ``[1, 4, 6, 4, 1] / 16`` blur per channel with mirror borders (no edge repeat): ``(B, C, H, W)``."""
    batch, channels, height, width = x.shape
    if min(height, width) < 3:
        raise ValueError(f"laplacian_pyramid: a pyramid level of {height}x{width} is too small for the 5-tap filter.")
    taps = torch.tensor(_BINOMIAL_5, dtype=x.dtype, device=x.device) / 16 * math.sqrt(gain)
    work = x.reshape(batch * channels, 1, height, width)
    work = F.conv2d(F.pad(work, (2, 2, 0, 0), mode="reflect"), taps.reshape(1, 1, 1, 5))  # rows
    work = F.conv2d(F.pad(work, (0, 0, 2, 2), mode="reflect"), taps.reshape(1, 1, 5, 1))  # columns
    return work.reshape(batch, channels, height, width)


def pyramid_down(x: torch.Tensor) -> torch.Tensor:
    """Blur with the binomial filter, keep every second pixel: ``(B, C, H, W) -> (B, C, H/2, W/2)``."""
    return _binomial_blur(x)[:, :, ::2, ::2]


def pyramid_up(x: torch.Tensor) -> torch.Tensor:
    """Insert zeros between pixels, blur with 4x the binomial filter: ``(B, C, H, W) -> (B, C, 2H, 2W)``."""
    batch, channels, height, width = x.shape
    upsampled = x.new_zeros(batch, channels, 2 * height, 2 * width)
    upsampled[:, :, ::2, ::2] = x
    return _binomial_blur(upsampled, gain=4.0)


def swd_resolutions(height: int, width: int, min_resolution: int = SWD_MIN_RESOLUTION) -> list[int]:
    """The pyramid levels' sizes (of the shorter side), halving from the full size while >= ``min_resolution``."""
    side = min(height, width)
    if side < min_resolution:
        raise ValueError(
            f"pyramid_swd: images of {height}x{width} are smaller than `min_resolution`={min_resolution}; "
            "lower min_resolution (>= 8 so a 7x7 neighbourhood fits) or use larger images."
        )
    resolutions = []
    while side >= min_resolution:
        resolutions.append(side)
        side //= 2
    factor = 2 ** (len(resolutions) - 1)
    if height % factor or width % factor:
        raise ValueError(
            f"pyramid_swd: height and width ({height}, {width}) must be divisible by {factor} for a "
            f"{len(resolutions)}-level pyramid down to {min_resolution} px; crop or resize the images."
        )
    return resolutions


def laplacian_pyramid(images: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """Laplacian pyramid: band-pass levels ``x_l - up(down(x_l))`` and the low-pass residual as the last level.

    Args:
        images: ``(B, C, H, W)``, H and W divisible by ``2 ** (num_levels - 1)``.
        num_levels: number of levels (1 returns the images themselves).

    Returns:
        ``num_levels`` tensors ``(B, C, H / 2^l, W / 2^l)`` in float32 (float64 for float64 input);
        ``images == sum_l up^l(level_l)`` exactly up to rounding.
    """
    require_4d(images, "laplacian_pyramid", "images")
    factor = 2 ** (num_levels - 1)
    if num_levels < 1 or images.shape[-2] % factor or images.shape[-1] % factor:
        raise ValueError(
            f"laplacian_pyramid: `num_levels`={num_levels} needs height and width divisible by {factor}, got "
            f"{tuple(images.shape[-2:])}."
        )
    work = images.to(compute_dtype(images.dtype))
    levels = []
    for _ in range(num_levels - 1):
        coarse = pyramid_down(work)
        levels.append(work - pyramid_up(coarse))
        work = coarse
    levels.append(work)
    return levels


# ------------------------------------------------------------------------------------------------
# Patch descriptors and the sliced Wasserstein distance.


def sample_patch_descriptors(
    level: torch.Tensor,
    patches_per_image: int = SWD_PATCHES_PER_IMAGE,
    patch_size: int = SWD_PATCH_SIZE,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random ``patch_size`` x ``patch_size`` neighbourhoods, wholly inside the level, drawn with replacement.

    Args:
        level: ``(B, C, H, W)`` one pyramid level.

    Returns:
        ``(B * patches_per_image, C, patch_size, patch_size)`` descriptors, image-major.
    """
    batch, channels, height, width = level.shape
    if min(height, width) < patch_size:
        raise ValueError(f"sample_patch_descriptors: a {height}x{width} level cannot hold {patch_size}x{patch_size}.")
    count = batch * patches_per_image
    top = torch.randint(0, height - patch_size + 1, (count,), generator=generator)  # (N,) top-left rows
    left = torch.randint(0, width - patch_size + 1, (count,), generator=generator)  # (N,) top-left columns
    offsets = torch.arange(patch_size)
    rows = (top[:, None] + offsets).to(level.device)  # (N, P)
    cols = (left[:, None] + offsets).to(level.device)  # (N, P)
    image = torch.arange(batch, device=level.device).repeat_interleave(patches_per_image)  # (N,)
    # advanced indexing: (N, 1, 1) x (N, P, 1) x (N, 1, P) -> (N, P, P, C)
    patches = level.permute(0, 2, 3, 1)[image[:, None, None], rows[:, :, None], cols[:, None, :]]
    return patches.permute(0, 3, 1, 2)  # (N, C, P, P)


def normalize_descriptors(descriptors: torch.Tensor, statistics: torch.Tensor | None = None) -> torch.Tensor:
    """Per-channel standardisation, then flatten: ``(N, C, P, P) -> (N, C * P * P)``.

    Mean and (population) standard deviation are taken over descriptors and neighbourhood pixels of each channel of
    ``statistics`` (default: ``descriptors`` themselves, the Progressive-GAN convention; the colour-aware SWD passes
    the two sets' pooled descriptors so that both are measured in one scale).
    """
    source = descriptors if statistics is None else statistics
    mean = source.mean(dim=(0, 2, 3), keepdim=True)  # (1, C, 1, 1)
    std = source.std(dim=(0, 2, 3), keepdim=True, unbiased=False)  # (1, C, 1, 1)
    if not bool((std > 0).all()):  # evaluation code, not a hot path: one sync per level
        raise ValueError("normalize_descriptors: a channel is constant over all descriptors; SWD is undefined.")
    return ((descriptors - mean) / std).flatten(1)


def random_directions(
    dim: int, num_directions: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(dim, num_directions)`` directions uniform on the unit sphere (normalised Gaussian draws)."""
    directions = torch.randn(dim, num_directions, generator=generator, dtype=torch.float64)
    return (directions / directions.norm(dim=0, keepdim=True)).to(dtype)


def sliced_wasserstein(
    a: torch.Tensor,
    b: torch.Tensor,
    num_projections: int = SWD_NUM_PROJECTIONS,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sliced Wasserstein-1 distance between two equally sized point sets (Rabin et al. 2011).

    ``SWD = mean_theta W1(<a, theta>, <b, theta>)`` with ``W1`` of two n-point empirical distributions on the line
    ``= mean_i |sort(a theta)_i - sort(b theta)_i|`` and ``theta`` uniform on the unit sphere. For 1-D points the two
    directions are +-1, so this is the exact empirical W1.

    Args:
        a, b: ``(N, D)`` point sets with the same ``N``.
        num_projections: number of random directions.
        generator: seeds the directions.

    Returns:
        0-d tensor in ``a``'s float dtype.
    """
    require_tensor(a, "sliced_wasserstein", "a")
    require_tensor(b, "sliced_wasserstein", "b")
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"sliced_wasserstein: `a` and `b` must be (N, D) with the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}; compare sets with the same number of images."
        )
    if num_projections < 1:
        raise ValueError(f"sliced_wasserstein: `num_projections` must be positive, got {num_projections}.")
    work_dtype = compute_dtype(a.dtype)
    a, b = a.to(work_dtype), b.to(work_dtype)
    directions = random_directions(a.shape[1], num_projections, generator, work_dtype).to(a.device)  # (D, K)
    total = a.new_zeros(())
    for chunk in directions.split(SWD_PROJECTIONS_PER_CHUNK, dim=1):  # (D, k) each
        projected_a = _sort_rows((chunk.T @ a.T).contiguous())  # (k, N)
        projected_b = _sort_rows((chunk.T @ b.T).contiguous())  # (k, N)
        total = total + (projected_a - projected_b).abs().mean(dim=1).sum()
    return total / num_projections


def _sort_rows(x: torch.Tensor) -> torch.Tensor:
    """Ascending sort of each row of ``(k, N)``; numpy's sort on CPU (about 3x faster than torch's there)."""
    if x.device.type == "cpu" and not x.requires_grad:
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return x.sort(dim=1).values


def pyramid_swd(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    min_resolution: int = SWD_MIN_RESOLUTION,
    patches_per_image: int = SWD_PATCHES_PER_IMAGE,
    patch_size: int = SWD_PATCH_SIZE,
    num_projections: int = SWD_NUM_PROJECTIONS,
    seed: int = 0,
    normalization: str = "per_set",
) -> torch.Tensor:
    """Sliced Wasserstein distance on Laplacian-pyramid patches, one value per level (Karras et al. 2018).

    Args:
        images_a, images_b: ``(B, C, H, W)`` image sets with the same shape, any fixed value range (each set is
            normalised per level and channel). H and W divisible by the pyramid's total downsampling.
        min_resolution: coarsest level (16 in the paper); levels halve from the full size while ``>= 16``.
        patches_per_image: neighbourhoods per image and level (128 in the paper).
        patch_size: neighbourhood side (7 in the paper).
        num_projections: random directions per level (512 in the paper).
        seed: seeds patch positions and directions. The positions of a level are the same for both sets
            (common random numbers: identical sets give exactly 0).
        normalization: ``"per_set"`` (the paper's: each set's descriptors standardised by their own per-channel
            mean and std, blind to a colour gain or offset and to the loss of a level's energy, e.g. a blur) or
            ``"pooled"`` (the colour-aware variant: both sets standardised by the pooled statistics of the two,
            so a gain, an offset or an energy loss moves the distance).

    Returns:
        ``(num_levels,)`` float32 SWD per level, finest first (resolutions: :func:`swd_resolutions`). Multiply by
        1e3 for the paper's ``SWDx1e3_<res>`` and take the mean for ``SWDx1e3_avg``.
    """
    require_4d(images_a, "pyramid_swd", "images_a")
    require_4d(images_b, "pyramid_swd", "images_b")
    if images_a.shape != images_b.shape:
        raise ValueError(
            f"pyramid_swd: `images_a` {tuple(images_a.shape)} and `images_b` {tuple(images_b.shape)} must have the "
            "same shape; compare the same number of images at the same size (the paper's protocol)."
        )
    if patch_size < 1 or patches_per_image < 1:
        raise ValueError("pyramid_swd: `patch_size` and `patches_per_image` must be positive.")
    if normalization not in ("per_set", "pooled"):
        raise ValueError(f"pyramid_swd: normalization must be 'per_set' or 'pooled', got {normalization!r}.")
    resolutions = swd_resolutions(images_a.shape[-2], images_a.shape[-1], min_resolution)
    levels_a = laplacian_pyramid(images_a, len(resolutions))
    levels_b = laplacian_pyramid(images_b, len(resolutions))
    distances = []
    for index, (level_a, level_b) in enumerate(zip(levels_a, levels_b)):
        patch_seed, direction_seed = seed * 1000 + 2 * index, seed * 1000 + 2 * index + 1
        raw = [
            sample_patch_descriptors(level, patches_per_image, patch_size, torch.Generator().manual_seed(patch_seed))
            for level in (level_a, level_b)
        ]
        pooled = torch.cat(raw) if normalization == "pooled" else None
        descriptors = [normalize_descriptors(r, pooled) for r in raw]
        directions_generator = torch.Generator().manual_seed(direction_seed)
        distances.append(sliced_wasserstein(*descriptors, num_projections, directions_generator))
    return torch.stack(distances).float()


# ------------------------------------------------------------------------------------------------
# Radially averaged log power spectrum distance.


def mean_log_spectrum(images: torch.Tensor, n_bins: int = 16, remove_dc: bool = True) -> torch.Tensor:
    """``ln`` of the set's mean radial DCT band power: ``(B, C, H, W) -> (n_bins,)``.

    The power is averaged over images first (the set's spectrum), then logged.
    """
    require_4d(images, "spectrum_distance", "images")
    # floor=0: the exact band power, so a gain g moves every band by exactly 2 ln g
    mean_power = radial_spectrum(images, n_bins, remove_dc=remove_dc, floor=0.0).mean(dim=0)  # (n_bins,)
    if not bool((mean_power > 0).all()):  # evaluation code: one sync per call
        raise ValueError(
            "spectrum_distance: a radial band has zero power (constant images, or fewer pixels than `n_bins` "
            "bands); use fewer bands or non-constant images."
        )
    return mean_power.log()


def spectrum_distance(
    images_a: torch.Tensor, images_b: torch.Tensor, n_bins: int = 16, remove_dc: bool = True
) -> torch.Tensor:
    """RMS over radial bands of the difference of the two sets' log mean power spectra.

    ``d = sqrt(mean_k (ln Pbar_a(k) - ln Pbar_b(k))^2)`` with ``Pbar(k)`` the mean over the set of the
    channel-averaged DCT power in radial band ``k`` (:func:`~diffusers_spectrum.spectral.psd.radial_spectrum`).
    A set scaled by ``g`` is at distance ``|2 ln g|``; 0.1 is about a 10% power mismatch per band.

    Args:
        images_a, images_b: ``(B_a, C, H, W)`` and ``(B_b, C, H, W)``; the counts may differ, the sizes may not.
        n_bins: radial bands (16 as in the rest of the package).
        remove_dc: leave out the DC power (the images' means).

    Returns:
        0-d float32 (float64 for float64 input) tensor, ``>= 0``.
    """
    require_4d(images_a, "spectrum_distance", "images_a")
    require_4d(images_b, "spectrum_distance", "images_b")
    if images_a.shape[1:] != images_b.shape[1:]:
        raise ValueError(
            f"spectrum_distance: images must share (C, H, W), got {tuple(images_a.shape[1:])} and "
            f"{tuple(images_b.shape[1:])}; resize one set first."
        )
    difference = mean_log_spectrum(images_a, n_bins, remove_dc) - mean_log_spectrum(images_b, n_bins, remove_dc)
    return difference.square().mean().sqrt()


# ------------------------------------------------------------------------------------------------
# Kernel inception distance (on any features).


def kid(
    features_a,
    features_b,
    num_subsets: int | None = None,
    subset_size: int | None = None,
    seed: int = 0,
) -> float:
    """Unbiased squared MMD with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3`` (KID, Binkowski et al.
    2018) between feature sets ``(m, d)`` and ``(n, d)``.

    ``MMD^2_u = sum_{i != j} k(a_i, a_j) / (m (m - 1)) + sum_{i != j} k(b_i, b_j) / (n (n - 1))
    - 2 sum_{i, j} k(a_i, b_j) / (m n)``. With ``num_subsets`` the mean over that many random subsets of
    ``subset_size`` per set (the paper's protocol for large sets; seeded), else the full sets. Can be negative for
    two samples of one distribution (its expectation is then 0).
    """
    a = torch.as_tensor(np.asarray(features_a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(features_b), dtype=torch.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"kid: features must be (N, D) with one D, got {tuple(a.shape)} and {tuple(b.shape)}.")
    if min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"kid: each set needs at least 2 samples, got {a.shape[0]} and {b.shape[0]}.")
    if num_subsets is None:
        return _mmd2_unbiased(a, b)
    size = min(subset_size or min(len(a), len(b)), len(a), len(b))
    generator = torch.Generator().manual_seed(seed)
    values = [
        _mmd2_unbiased(
            a[torch.randperm(len(a), generator=generator)[:size]],
            b[torch.randperm(len(b), generator=generator)[:size]],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values))


def _mmd2_unbiased(a: torch.Tensor, b: torch.Tensor) -> float:
    dim = a.shape[1]

    def kernel(x, y):
        return (x @ y.T / dim + 1.0).pow(3)

    m, n = a.shape[0], b.shape[0]
    k_aa, k_bb = kernel(a, a), kernel(b, b)
    within_a = (k_aa.sum() - k_aa.diagonal().sum()) / (m * (m - 1))
    within_b = (k_bb.sum() - k_bb.diagonal().sum()) / (n * (n - 1))
    return float(within_a + within_b - 2 * kernel(a, b).mean())


# ------------------------------------------------------------------------------------------------
# The blur check: can a metric see a 5 x 5 box blur at 32 images per set?

BLUR_SEPARATION_FACTOR = 2.0  # blurred distance / unblurred distance a relied-upon metric must reach
BLUR_KERNEL = 5
BLUR_SET_SIZE = 32


def box_blur(images: torch.Tensor, size: int = BLUR_KERNEL) -> torch.Tensor:
    """``size x size`` box (mean) filter per channel with mirrored borders (no edge repeat, scipy's ``"mirror"``):
    ``(B, C, H, W) -> (B, C, H, W)``."""
    require_4d(images, "box_blur", "images")
    channels = images.shape[1]
    weight = torch.full((channels, 1, size, size), 1.0 / (size * size), dtype=images.dtype, device=images.device)
    half = size // 2
    return F.conv2d(
        F.pad(images, (half, size - 1 - half, half, size - 1 - half), mode="reflect"), weight, groups=channels
    )


def blur_separation(
    metric,
    crops: torch.Tensor,
    set_size: int = BLUR_SET_SIZE,
    num_splits: int = 8,
    seed: int = 0,
    blur_size: int = BLUR_KERNEL,
    groups=None,
) -> dict:
    """How far a metric moves when one set is blurred, against two unblurred halves of the same crops.

    For each of ``num_splits`` random splits of ``crops`` into two disjoint sets ``A``, ``B`` of ``set_size``:
    ``metric(A, B)`` (the unblurred distance) and ``metric(A, box_blur(B))``. Returns the means over splits,
    ``ratio = mean blurred / mean |unblurred|`` and ``passes = ratio >= BLUR_SEPARATION_FACTOR``. The absolute value
    matters for unbiased estimators (KID), whose unblurred value scatters around 0: its typical magnitude is then
    the noise a difference must beat. Averaging the splits estimates the expected distances; one split's ratio is
    noisy. ``set_size`` is the sample count the verdict holds for: an unbiased estimator's noise shrinks as ``1 /
    n`` and a biased one's bias too, so a metric that fails at 32 images per set can pass at a study's 500.

    With ``groups`` (one source id per crop, e.g. the photo it was cut from), every split first divides the sources
    in two halves and draws ``A`` from one and ``B`` from the other, so that no source is in both sets: several
    overlapping crops of one photo on both sides would make the two unblurred halves look alike and flatter the ratio.

    Args:
        metric: ``metric(images_a, images_b) -> float`` on ``(N, 3, H, W)`` images in [-1, 1].
        crops: ``(M, 3, H, W)`` natural crops, ``M >= 2 * set_size``.
        groups: None, or ``M`` source ids; each half of the sources must hold ``set_size`` crops.
    """
    if crops.shape[0] < 2 * set_size:
        raise ValueError(f"blur_separation: need {2 * set_size} crops for two sets of {set_size}, got {len(crops)}.")
    generator = torch.Generator().manual_seed(seed)
    if groups is not None:
        groups = torch.as_tensor(np.asarray(groups))
        if groups.shape != (crops.shape[0],):
            raise ValueError(
                f"blur_separation: groups needs one id per crop ({len(crops)}), got {tuple(groups.shape)}."
            )
        sources = torch.unique(groups)
    plain, blurred = [], []
    for _ in range(num_splits):
        if groups is None:
            order = torch.randperm(crops.shape[0], generator=generator)
            first, second = order[:set_size], order[set_size : 2 * set_size]
        else:
            shuffled = sources[torch.randperm(len(sources), generator=generator)]
            half = torch.isin(groups, shuffled[: len(sources) // 2])
            sides = [torch.nonzero(side).flatten() for side in (half, ~half)]
            if min(len(side) for side in sides) < set_size:
                raise ValueError(
                    f"blur_separation: a half of the {len(sources)} sources holds {min(map(len, sides))} crops, fewer "
                    f"than set_size={set_size}; cut more crops per source or lower set_size."
                )
            first, second = (side[torch.randperm(len(side), generator=generator)[:set_size]] for side in sides)
        a, b = crops[first], crops[second]
        plain.append(float(metric(a, b)))
        blurred.append(float(metric(a, box_blur(b, blur_size))))
    unblurred, blur = float(np.mean(np.abs(plain))), float(np.mean(blurred))
    ratio = blur / unblurred if unblurred > 0 else float("inf") if blur > 0 else float("nan")
    passes = bool(ratio >= BLUR_SEPARATION_FACTOR)
    return {
        "unblurred_abs": unblurred,
        "blurred": blur,
        "ratio": ratio,
        "passes": passes,
        "unblurred_per_split": plain,
        "blurred_per_split": blurred,
        "set_size": set_size,
        "num_splits": num_splits,
        "blur": f"{blur_size}x{blur_size} box",
        "split_by": "crop" if groups is None else "source",
    }
