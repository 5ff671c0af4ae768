"""DCTTransform follows the DCTdiff authors' conventions: eta and entropy weights against numpy computations written
from the definitions (Ning et al. 2024; docs/PROVENANCE.md#dct_transform), and the inverse's bilinear chroma
upsampling and clamps on constructed coefficients."""

import numpy as np
import pytest
import torch

from diffusers_spectrum import DCTTransform
from diffusers_spectrum.models.dct_statistics import HISTOGRAM_BINS, estimate_dct_statistics


B = 2  # block size
JPEG = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
TAU = 98.25


def _cell_images(count=40, size=8, seed=0):
    """uint8 images whose colour is constant on each 2b x 2b token cell: every Y and chroma block is constant, so
    its DC is b * (block value) and every AC coefficient is 0 (hand-computable)."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(10, 3))  # few distinct values, so few can sit near a bin edge
    cells = palette[rng.integers(0, 10, size=(count, size // (2 * B), size // (2 * B)))]
    return cells.repeat(2 * B, axis=1).repeat(2 * B, axis=2)  # (N, size, size, 3)


def _reference_planes(images):
    """Per plane (Y, Cb, Cr), the (n, b*b) row-major DCT coefficients of every block, from the definition: pixels
    minus 128, JPEG matrix, chroma 2x2 means, block DC = b * mean (constant blocks: AC = 0); in 127.5 units."""
    ycbcr = np.einsum("pc,nhwc->pnhw", JPEG, images.astype(np.float64) - 128.0) / 127.5
    n, h, w = ycbcr.shape[1:]
    chroma = ycbcr[1:].reshape(2, n, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
    planes = []
    for plane in (ycbcr[0], chroma[0], chroma[1]):
        blocks = plane.reshape(n, plane.shape[1] // B, B, plane.shape[2] // B, B)
        assert np.allclose(blocks, blocks[:, :, :1, :, :1])  # constant blocks by construction
        coefficients = np.zeros((blocks.shape[0] * blocks.shape[1] * blocks.shape[3], B * B))
        coefficients[:, 0] = B * blocks[:, :, 0, :, 0].reshape(-1)
        planes.append(coefficients)
    return planes


def _reference_entropy(values, eta):
    """The authors' definition: trim to (p1.75, p98.25) strictly, / eta, 100 bins on (-1, 1), entropy in bits of
    counts / sum with + 1e-9 inside the log; an empty histogram (a constant coefficient) gives 0."""
    low, high = np.percentile(values, [100 - TAU, TAU])
    kept = values[(values > low) & (values < high)] / eta
    counts, _ = np.histogram(kept, bins=100, range=(-1, 1))
    if counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-np.sum(p * np.log2(p + 1e-9)))


def test_eta_and_entropy_weights_match_numpy_from_the_definitions():
    images = _cell_images()
    transform = DCTTransform(block_size=B).double()
    batches = [torch.from_numpy(images[i : i + 16]).permute(0, 3, 1, 2) / 127.5 - 1.0 for i in (0, 16, 32)]
    eta, weights = estimate_dct_statistics(transform, batches)

    planes = _reference_planes(images)
    low, high = np.percentile(planes[0][:, 0], [100 - TAU, TAU])
    eta_reference = max(abs(low), abs(high))
    half_bin = 2 * B / HISTOGRAM_BINS  # the documented bound: half of a 4b / 2^15 bin
    assert abs(eta - eta_reference) <= half_bin

    # The fine histograms assign whole bins: exact counts when no value lies within a bin of a coarse edge, and each
    # trim bound either is a data value (repeated values: the bound's own bin is excluded, as the strict inequality
    # does) or lies more than a bin from every value (checked here, so the comparison below is exact).
    bin_width = 2 * half_bin
    for values in (plane[:, 0] for plane in planes):
        edges = eta_reference * np.linspace(-1, 1, 101)
        low, high = np.percentile(values, [100 - TAU, TAU])
        kept = values[(values > low + 1e-12) & (values < high - 1e-12)]  # values at the bounds are trimmed anyway
        assert np.abs(kept[:, None] - edges[None]).min() > 2 * bin_width
        for bound in (low, high):
            distance = np.abs(values - bound)
            assert distance.min() < 1e-12 or distance.min() > 2 * bin_width

    entropies = np.array([[_reference_entropy(plane[:, k], eta_reference) for k in range(B * B)] for plane in planes])
    assert entropies[:, 0].min() > 1 and entropies[:, 1:].max() == 0  # DC informative, AC constant
    normalised = entropies / entropies.mean(axis=1, keepdims=True)  # each plane to mean 1 separately
    expected = np.concatenate([np.tile(normalised[0], 4), normalised[1], normalised[2]])
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert transform.config.scaling_factor == pytest.approx(1 / eta)


def test_percentile_error_of_the_streaming_histogram_is_within_half_a_bin():
    # Continuous random images: every value distinct; the streamed eta is numpy's to half a bin (4b / 2^15 wide).
    torch.manual_seed(0)
    images = torch.rand(64, 3, 16, 16, dtype=torch.float64) * 2 - 1
    transform = DCTTransform(block_size=B).double()
    eta, _ = estimate_dct_statistics(transform, list(images.split(8)), write_config=False)
    dc = transform.encode(images).latent_dist.mode()[:, 0 : 4 * B * B : B * B].numpy().ravel()
    low, high = np.percentile(dc, [100 - TAU, TAU])
    assert abs(eta - max(abs(low), abs(high))) <= 2 * B / HISTOGRAM_BINS


def _token_coefficients(transform, y_dc, cb_dc, cr_dc):
    """(1, 24, 1, T) coefficients of a row of T tokens (b = 2): the given DCs of all four Y blocks, of Cb and of Cr
    per token, every AC 0."""
    k = transform.coefficients_per_block
    z = torch.zeros(1, transform.latent_channels, 1, len(y_dc), dtype=torch.float64)
    for slot in range(4):
        z[0, slot * k, 0] = torch.tensor(y_dc, dtype=torch.float64)
    z[0, 4 * k, 0] = torch.tensor(cb_dc, dtype=torch.float64)
    z[0, 5 * k, 0] = torch.tensor(cr_dc, dtype=torch.float64)
    return z


def test_inverse_upsamples_chroma_bilinearly_as_opencv_inter_linear():
    transform = DCTTransform(block_size=B).double()
    a, b = 0.2, -0.3  # chroma block values; DC = b * value
    z = _token_coefficients(transform, [0.0, 0.0], [B * a, B * b], [B * b, B * a])
    images = transform.decode(z).sample  # (1, 3, 4, 8)
    ycbcr = torch.einsum("pc,bchw->bphw", torch.tensor(JPEG), images - 1 / 255)
    # low-res row [a, a, b, b] -> 8 samples at source positions (i + 0.5) / 2 - 0.5, clamped at the edges
    row = [a, a, a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b, b, b]
    expected_cb = torch.tensor(row, dtype=torch.float64).expand(4, 8)
    torch.testing.assert_close(ycbcr[0, 1], expected_cb, atol=1e-12, rtol=0)
    expected_cr = torch.tensor(row[::-1], dtype=torch.float64).expand(4, 8)
    torch.testing.assert_close(ycbcr[0, 2], expected_cr, atol=1e-12, rtol=0)
    torch.testing.assert_close(ycbcr[0, 0], torch.zeros(4, 8, dtype=torch.float64), atol=1e-12, rtol=0)


def test_inverse_clamps_coefficients_to_two_eta_then_pixels():
    transform = DCTTransform(block_size=B, scaling_factor=4.0).double()  # eta = 0.25: coefficients clamp at 0.5
    z = _token_coefficients(transform, [10.0, -10.0, 0.3], [0.0] * 3, [0.0] * 3)
    grey = transform.decode(z).sample[0]  # (3, 4, 12)
    # Y DC clamped to +-0.5, block value DC / b = +-0.25, plus the centring 1/255; 0.3 is inside and kept
    for token, value in enumerate((0.25, -0.25, 0.15)):
        cell = grey[:, :, 4 * token : 4 * token + 4]
        torch.testing.assert_close(cell, torch.full_like(cell, value + 1 / 255), atol=1e-12, rtol=0)
    unclamped = DCTTransform(block_size=B, scaling_factor=4.0, coefficient_clip=None).double()
    assert unclamped.decode(z).sample[0, 0, 0, 0] == 1.0  # 5 + 1/255 before the pixel clamp

    # pixel clamp: eta = b (default), a Y DC of 3.8 < 2 eta gives 1.9 + 1/255 -> 1; -3.8 -> -1
    transform = DCTTransform(block_size=B).double()
    pixels = transform.decode(_token_coefficients(transform, [3.8, -3.8], [0.0] * 2, [0.0] * 2)).sample[0]
    assert torch.equal(pixels[:, :, :4], torch.ones_like(pixels[:, :, :4]))
    assert torch.equal(pixels[:, :, 4:], -torch.ones_like(pixels[:, :, 4:]))
