"""Orthonormal 2-D DCT as a pair of small matrix products (the transform of ESM, DSM and DCTdiff).

The DCT-II matrix ``D`` (n x n) is orthonormal, so ``X = D_H x D_W^T`` and ``x = D_H^T X D_W``. Matrix products are
fast on any device, exactly invertible and differentiable. Matrices are built once per (size, device, dtype).
"""

import functools
import math

import torch

from ._checks import as_int, compute_dtype, require_min_dims


# ------------------------------------------------------------------------------------------------
# DCT-II basis (orthonormal): D[k, n] = sqrt(2 / N) * c_k * cos(pi * (2n + 1) * k / (2N)), c_0 = 1 / sqrt(2).


@functools.lru_cache(maxsize=128)
def _dct_matrix_cached(n: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] = basis[0] / math.sqrt(2.0)
    return basis.to(device=device, dtype=dtype)


def dct_matrix(n: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II matrix of size ``(n, n)``: ``dct(x) = D @ x`` for a column ``x`` of length ``n``.

    Cached per (n, device, dtype); the returned tensor is shared, so never modify it in place.
    """
    n = as_int(n, "dct_matrix", "n", minimum=1)
    return _dct_matrix_cached(n, str(torch.device(device or "cpu")), dtype)


def dct_2d(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two axes (``scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")``).

    Args:
        x: ``(..., H, W)`` real tensor of any float dtype, on any device.

    Returns:
        ``(..., H, W)`` coefficients in ``x``'s dtype; computed in float32 (float64 for float64 input).
    """
    require_min_dims(x, 2, "dct_2d", "x")
    work = x.to(compute_dtype(x.dtype))
    d_h = dct_matrix(x.shape[-2], work.device, work.dtype)
    d_w = dct_matrix(x.shape[-1], work.device, work.dtype)
    return (d_h @ work @ d_w.T).to(x.dtype)  # (..., H, W)


def idct_2d(coefficients: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct_2d`: orthonormal 2-D DCT-III over the last two axes.

    Args:
        coefficients: ``(..., H, W)`` DCT coefficients.

    Returns:
        ``(..., H, W)`` signal in the input's dtype.
    """
    require_min_dims(coefficients, 2, "idct_2d", "coefficients")
    work = coefficients.to(compute_dtype(coefficients.dtype))
    d_h = dct_matrix(work.shape[-2], work.device, work.dtype)
    d_w = dct_matrix(work.shape[-1], work.device, work.dtype)
    return (d_h.T @ work @ d_w).to(coefficients.dtype)  # (..., H, W)


def _check_blocks(x: torch.Tensor, block_size: int, name: str) -> int:
    require_min_dims(x, 2, name, "x")
    block_size = as_int(block_size, name, "block_size", minimum=1)
    height, width = x.shape[-2:]
    if height % block_size or width % block_size:
        raise ValueError(
            f"{name}: spatial size {height}x{width} is not divisible by block_size={block_size}; "
            f"crop or pad the input to a multiple of {block_size}, or choose a block size that divides it."
        )
    return block_size


def _blockwise(x: torch.Tensor, block_size: int, inverse: bool) -> torch.Tensor:
    height, width = x.shape[-2:]
    rows, cols = height // block_size, width // block_size
    work = x.to(compute_dtype(x.dtype))
    d = dct_matrix(block_size, work.device, work.dtype)
    if inverse:
        d = d.T
    blocks = work.reshape(*x.shape[:-2], rows, block_size, cols, block_size)  # (..., R, b, C, b)
    # Apply D along each block's row axis (i) and column axis (j): out[r,u,c,v] = sum_ij D[u,i] x[r,i,c,j] D[v,j].
    out = torch.einsum("ui,...risj,vj->...rusv", d, blocks, d)  # (..., R, b, C, b)
    return out.reshape(x.shape).to(x.dtype)  # (..., H, W)


def blockwise_dct_2d(x: torch.Tensor, block_size: int = 8) -> torch.Tensor:
    """Orthonormal DCT-II of each non-overlapping ``block_size x block_size`` block (JPEG-style layout).

    Args:
        x: ``(..., H, W)`` with ``H`` and ``W`` divisible by ``block_size``.
        block_size: side of the square blocks.

    Returns:
        ``(..., H, W)``: block ``(r, c)`` occupies the same pixels as in ``x``, holding its coefficients with
        ``(u, v) = (0, 0)`` (the block's DC) at its top-left corner.
    """
    block_size = _check_blocks(x, block_size, "blockwise_dct_2d")
    return _blockwise(x, block_size, inverse=False)


def blockwise_idct_2d(coefficients: torch.Tensor, block_size: int = 8) -> torch.Tensor:
    """Inverse of :func:`blockwise_dct_2d`: ``(..., H, W) -> (..., H, W)``."""
    block_size = _check_blocks(coefficients, block_size, "blockwise_idct_2d")
    return _blockwise(coefficients, block_size, inverse=True)
