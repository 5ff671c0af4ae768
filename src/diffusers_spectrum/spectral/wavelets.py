"""Multi-level 2-D discrete wavelet transform (Mallat 1989) on ``(..., H, W)`` tensors, via ptwt.

A thin wrapper around the maintained PyTorch wavelet library ``ptwt`` (Wolter et al., "ptwt - The PyTorch Wavelet
Toolbox", JMLR 2024), which is differentiable, runs on any device and accepts any PyWavelets wavelet name. This
module fixes the conventions used across the package:

- float32 inside (ptwt refuses float16/bfloat16), the input's dtype out;
- details are returned **finest level first**: ``details[0]`` is level 1 (half resolution), ``details[-1]`` the
  coarsest level, each stacked as ``(..., 3, h, w)`` in the order (horizontal, vertical, diagonal);
- the orthonormal Haar wavelet (the default) with even sizes is exact and energy-preserving (Parseval):
  ``sum(x^2) == sum(approximation^2) + sum(d^2 for d in details)``.

Haar on sizes divisible by ``2**levels`` (the common case: latents and images) takes a fast path written here as
sums and differences of the four pixels of each 2 x 2 cell (Mallat 1989; same coefficients as PyWavelets/ptwt): it
avoids ptwt's convolutions, whose backward pass dominates the cost of :func:`~diffusers_spectrum.losses.wavelet_loss`
on CPU. Other wavelets and sizes go through ptwt.
"""

import ptwt
import pywt
import torch
from ptwt.constants import WaveletDetailTuple2d

from ._checks import compute_dtype, require_min_dims


WAVELET_BOUNDARY_MODES = ("reflect", "zero", "constant", "periodic", "symmetric")


def _check_wavelet(wavelet: str, levels: int, mode: str, func: str) -> None:
    if wavelet not in pywt.wavelist(kind="discrete"):
        raise ValueError(
            f"{func}: unknown discrete wavelet {wavelet!r}; use e.g. 'haar', 'db2' (see pywt.wavelist())."
        )
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
        raise ValueError(f"{func}: `levels` must be a positive integer, got {levels!r}.")
    if mode not in WAVELET_BOUNDARY_MODES:
        raise ValueError(f"{func}: unknown boundary mode {mode!r}; choose one of {WAVELET_BOUNDARY_MODES}.")


# ------------------------------------------------------------------------------------------------
# Haar fast path: per 2 x 2 cell [[a, b], [c, d]], approximation (a + b + c + d) / 2 and details
# horizontal (a + b - c - d) / 2, vertical (a - b + c - d) / 2, diagonal (a - b - c + d) / 2 (PyWavelets' signs).


def _haar_analysis(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    top, bottom = x[..., 0::2, :], x[..., 1::2, :]  # (..., H/2, W)
    row_sum, row_difference = top + bottom, top - bottom
    approximation = (row_sum[..., 0::2] + row_sum[..., 1::2]) / 2  # (..., H/2, W/2)
    horizontal = (row_difference[..., 0::2] + row_difference[..., 1::2]) / 2
    vertical = (row_sum[..., 0::2] - row_sum[..., 1::2]) / 2
    diagonal = (row_difference[..., 0::2] - row_difference[..., 1::2]) / 2
    return approximation, torch.stack((horizontal, vertical, diagonal), dim=-3)  # (..., 3, H/2, W/2)


def _haar_synthesis(approximation: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
    horizontal, vertical, diagonal = detail.unbind(dim=-3)
    a = (approximation + horizontal + vertical + diagonal) / 2
    b = (approximation + horizontal - vertical - diagonal) / 2
    c = (approximation - horizontal + vertical - diagonal) / 2
    d = (approximation - horizontal - vertical + diagonal) / 2
    top = torch.stack((a, b), dim=-1).flatten(-2)  # (..., h, 2w): a b a b ...
    bottom = torch.stack((c, d), dim=-1).flatten(-2)
    return torch.stack((top, bottom), dim=-2).flatten(-3, -2)  # (..., 2h, 2w)


def dwt_2d(
    x: torch.Tensor, levels: int = 1, wavelet: str = "haar", mode: str = "reflect"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Multi-level 2-D DWT over the last two axes.

    Args:
        x: ``(..., H, W)`` float tensor (any float dtype, any device).
        levels: number of decomposition levels; each halves the resolution (rounding up).
        wavelet: a PyWavelets discrete wavelet name; ``"haar"`` is exact for sizes divisible by ``2**levels``.
        mode: boundary extension for sizes that are not even at some level (and for longer wavelets).

    Returns:
        ``(approximation, details)``: approximation ``(..., H / 2**levels, W / 2**levels)``; details a list of
        ``levels`` tensors, finest first, ``details[l]`` of shape ``(..., 3, H / 2**(l+1), W / 2**(l+1))``.
        All in ``x``'s dtype.
    """
    require_min_dims(x, 2, "dwt_2d", "x")
    _check_wavelet(wavelet, levels, mode, "dwt_2d")
    work = x.to(compute_dtype(x.dtype))
    if wavelet == "haar" and x.shape[-2] % 2**levels == 0 and x.shape[-1] % 2**levels == 0:
        details = []
        for _ in range(levels):
            work, detail = _haar_analysis(work)
            details.append(detail.to(x.dtype))
        return work.to(x.dtype), details
    coefficients = ptwt.wavedec2(work, wavelet, mode=mode, level=levels)  # [cA_n, D_n, ..., D_1]
    approximation = coefficients[0].to(x.dtype)
    details = [torch.stack(tuple(level), dim=-3).to(x.dtype) for level in reversed(coefficients[1:])]
    return approximation, details


def idwt_2d(
    approximation: torch.Tensor,
    details: list[torch.Tensor],
    wavelet: str = "haar",
    output_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Inverse of :func:`dwt_2d` (details finest first, each ``(..., 3, h, w)``).

    Args:
        output_size: ``(H, W)`` to crop to when the forward pass padded an odd size; None keeps the full output.

    Returns:
        ``(..., H, W)`` signal in ``approximation``'s dtype.
    """
    require_min_dims(approximation, 2, "idwt_2d", "approximation")
    if not details:
        raise ValueError("idwt_2d: `details` must hold at least one level.")
    _check_wavelet(wavelet, len(details), "reflect", "idwt_2d")
    work_dtype = compute_dtype(approximation.dtype)
    if wavelet == "haar":
        signal = approximation.to(work_dtype)
        for level in reversed(details):  # coarsest first; crop the padding an odd size left at the finer level
            signal = _haar_synthesis(signal[..., : level.shape[-2], : level.shape[-1]], level.to(work_dtype))
        if output_size is not None:
            signal = signal[..., : output_size[0], : output_size[1]]
        return signal.to(approximation.dtype)
    coefficients = [approximation.to(work_dtype)]
    for level in reversed(details):  # coarsest first, as ptwt expects
        if level.ndim < 3 or level.shape[-3] != 3:
            raise ValueError(f"idwt_2d: each detail level must be (..., 3, h, w), got shape {tuple(level.shape)}.")
        coefficients.append(WaveletDetailTuple2d(*level.to(work_dtype).unbind(dim=-3)))
    signal = ptwt.waverec2(tuple(coefficients), wavelet)
    if output_size is not None:
        signal = signal[..., : output_size[0], : output_size[1]]
    return signal.to(approximation.dtype)
