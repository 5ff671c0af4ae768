"""Decoding Spectrum Matching: the shared blockwise-DCT low-pass (Ning et al. 2026, "Spectrum Matching", DSM;
the authors' code: forever208/SpectrumMatching, branch DSM)."""

import functools

import torch

from ._checks import as_int, compute_dtype, require_finite_sum, should_check_finite
from .dct import _check_blocks, blockwise_dct_2d, blockwise_idct_2d


DSM_DEFAULT_LEVELS = (0, 8, 10, 12)  # the authors' mask levels for 8 x 8 blocks; 0 = no masking


def check_dsm_level(level: int, block_size: int = 8) -> int:
    """Validate a mask level: an integer in ``[0, 2 * (block_size - 1)]`` (the top keeps only each block's DC).

    Accepts Python ints, NumPy integer scalars and one-element integer tensors (e.g. ``numpy.int64(8)``,
    ``torch.tensor(8)``); returns the level as a Python int. Anything else raises ValueError ("Unknown DSM level").
    """
    block_size = as_int(block_size, "check_dsm_level", "block_size", minimum=1)
    top = 2 * (block_size - 1)
    try:
        value = as_int(level, "check_dsm_level", "level")
    except (TypeError, ValueError):
        value = None
    if value is None or not 0 <= value <= top:
        raise ValueError(
            f"Unknown DSM level {level!r} for block_size={block_size}: levels are integers from 0 (no masking) "
            f"to {top} (keep only each block's DC); the authors use {DSM_DEFAULT_LEVELS} with 8 x 8 blocks."
        )
    return value


@functools.lru_cache(maxsize=64)
def _mask_cached(level: int, block_size: int) -> torch.Tensor:
    u = torch.arange(block_size)[:, None]
    v = torch.arange(block_size)[None, :]
    return (u + v < 2 * (block_size - 1) - (level - 1)).to(torch.float32)  # (b, b)


def dsm_mask(level: int, block_size: int = 8) -> torch.Tensor:
    """The per-block keep mask ``(b, b)``: 1 where ``u + v < 2(b - 1) - (level - 1)``, i.e. the ``level`` highest
    anti-diagonals are dropped. For ``b = 8`` levels 8 / 10 / 12 keep 28 / 15 / 6 coefficients. Level 0 keeps all."""
    level = check_dsm_level(level, block_size)
    block_size = int(block_size)
    if level == 0:
        return torch.ones(block_size, block_size)
    return _mask_cached(level, block_size).clone()


def dsm_lowpass(x: torch.Tensor, level: int, block_size: int = 8, *, check_finite: bool | None = None) -> torch.Tensor:
    """Blockwise DCT low-pass shared by image and latent in DSM.

    Args:
        x: ``(..., H, W)`` with ``H`` and ``W`` divisible by ``block_size``.
        level: number of highest anti-diagonals dropped in every block; 0 returns ``x`` itself. Python, NumPy or
            one-element tensor integers.
        block_size: DCT block side (8 in the paper).
        check_finite: raise on NaN/Inf (one sum of the output); ``None`` checks unless autograd records through
            ``x``. A training step whose input needs no grad (the image branch) should pass ``False``.

    Returns:
        ``(..., H, W)`` low-passed signal in ``x``'s dtype.
    """
    level = check_dsm_level(level, block_size)
    block_size = _check_blocks(x, block_size, "dsm_lowpass")
    if level == 0:
        out = x
    else:
        coefficients = blockwise_dct_2d(x.to(compute_dtype(x.dtype)), block_size)  # (..., H, W)
        rows, cols = x.shape[-2] // block_size, x.shape[-1] // block_size
        mask = _mask_cached(level, block_size).to(device=x.device, dtype=coefficients.dtype).repeat(rows, cols)
        out = blockwise_idct_2d(coefficients * mask, block_size).to(x.dtype)  # (..., H, W)
    if should_check_finite(check_finite, x):
        require_finite_sum(out, "dsm_lowpass", "x")
    return out
