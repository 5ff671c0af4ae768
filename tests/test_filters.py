"""REPA target filters: Gaussian blur operator, DoG, spatial normalisation, RMSC, token-layout wrapper."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from diffusers_spectrum.spectral import apply_target_filter, dog_filter, gaussian_blur_matrix, rmsc, spatial_normalize


def _pattern(h: int, w: int, period: float) -> torch.Tensor:
    """A plane wave along the width with the given period in tokens, `(h, w)`."""
    cols = torch.arange(w, dtype=torch.float64)
    return torch.cos(2 * math.pi * cols / period)[None, :].expand(h, w).clone()


# (8, 300.0): a kernel of 2401 taps folded onto an 8-sample grid (beyond the old closed-form threshold of radius 1024).
@pytest.mark.parametrize("n, sigma", [(16, 0.6), (16, 2.0), (8, 2.0), (5, 3.0), (1, 2.0), (8, 300.0), (16, 0.1)])
def test_gaussian_blur_matrix_matches_scipy_reflect_mode_even_when_kernel_exceeds_grid(n, sigma):
    signal = np.random.default_rng(0).standard_normal(n)
    ours = gaussian_blur_matrix(n, sigma, dtype=torch.float64).numpy() @ signal
    reference = ndimage.gaussian_filter1d(signal, sigma, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(ours, reference, atol=1e-12)


@pytest.mark.parametrize("h, w", [(16, 12), (40, 36)])
def test_dog_filter_without_normalisation_matches_scipy_difference_of_gaussians(h, w):
    features = torch.randn(2, 3, h, w, dtype=torch.float64)
    ours = dog_filter(features, 0.6, 2.0, normalize=False).numpy()
    x = features.numpy()
    blur = lambda s: ndimage.gaussian_filter(x, (0, 0, s, s), mode="reflect", truncate=4.0)  # noqa: E731
    np.testing.assert_allclose(ours, blur(0.6) - blur(2.0), atol=1e-12)


def test_dog_filter_normalises_each_channel_to_unit_spatial_std():
    out = dog_filter(torch.randn(2, 5, 16, 16))
    std = out.var(dim=(-2, -1), correction=0).sqrt()
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-4, rtol=0)
    assert out.mean(dim=(-2, -1)).abs().max() < 1e-5


@pytest.mark.parametrize("value", [0.0, 0.1, -3.7, 1234.5])
def test_dog_filter_gives_zero_for_a_constant_map_without_blowing_up(value):
    out = dog_filter(torch.full((2, 4, 16, 16), value))
    assert torch.isfinite(out).all()
    assert out.abs().max() < 1e-5


def test_dog_filter_attenuates_a_fine_checkerboard_far_more_than_a_mid_frequency_pattern():
    h = w = 16
    checker = ((-1.0) ** (torch.arange(h)[:, None] + torch.arange(w)[None, :])).double()
    mid = _pattern(h, w, period=8.0)  # 2 cycles over the grid
    gain = {}
    for name, pattern in (("checker", checker), ("mid", mid)):
        out = dog_filter(pattern[None, None], 0.6, 2.0, normalize=False)[0, 0]
        gain[name] = (out.norm() / pattern.norm()).item()
    assert gain["mid"] > 0.5
    assert gain["checker"] ** 2 < 0.1 * gain["mid"] ** 2  # at least 10x less energy passes
    assert gain["checker"] < 0.2
    # The same ordering survives the std normalisation when both patterns share one map. DCT-II basis patterns are
    # eigenfunctions of the reflect-boundary blur, so the two components do not leak into each other.
    n = torch.arange(h, dtype=torch.float64)
    basis = lambda k: torch.cos(math.pi * k * (n + 0.5) / h)  # noqa: E731
    finest = basis(h - 1)[:, None] * basis(w - 1)[None, :]  # a checkerboard under a slow envelope
    middle = torch.ones(h, 1, dtype=torch.float64) * basis(4)[None, :]  # period 8 tokens
    mixed = dog_filter((finest + middle)[None, None], 0.6, 2.0)[0, 0]
    share = lambda p: (mixed * p).sum().abs() / p.norm()  # noqa: E731
    assert share(finest) ** 2 < 0.1 * share(middle) ** 2


def test_dog_filter_with_tiny_sigma1_and_huge_sigma2_is_mean_removal_then_std_normalisation():
    features = torch.randn(2, 3, 16, 16)
    centered = features - features.mean(dim=(-2, -1), keepdim=True)
    expected = centered / centered.var(dim=(-2, -1), correction=0, keepdim=True).sqrt()
    for sigma2 in (50.0, 1e5):  # kernels of 401 and 800001 taps folded onto the 16-token grid
        out = dog_filter(features, sigma1=1e-3, sigma2=sigma2)
        torch.testing.assert_close(out, expected, atol=2e-4, rtol=0)


def test_dog_filter_keeps_dtype():
    out = dog_filter(torch.randn(1, 2, 8, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_dog_filter_with_small_truncate_matches_scipy():
    # truncate 0.5: sigma1 = 0.6 has radius 0 (the identity), sigma2 = 2.0 has radius 1 (3 taps).
    features = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    x = features.numpy()
    blur = lambda s: ndimage.gaussian_filter(x, (0, 0, s, s), mode="reflect", truncate=0.5)  # noqa: E731
    ours = dog_filter(features, 0.6, 2.0, normalize=False, truncate=0.5).numpy()
    np.testing.assert_allclose(ours, blur(0.6) - blur(2.0), atol=1e-12)
    assert np.abs(ours).max() > 0.1


def test_spatial_normalize_matches_irepa_formula_with_unbiased_std():
    y = np.random.default_rng(0).standard_normal((2, 3, 8, 8)) + 5.0
    mean = y.mean(axis=(-2, -1), keepdims=True)
    std = y.std(axis=(-2, -1), ddof=1, keepdims=True)  # iREPA: feat.std(dim=tokens), unbiased
    got = spatial_normalize(torch.from_numpy(y), alpha=0.6).numpy()
    np.testing.assert_allclose(got, (y - 0.6 * mean) / (std + 1e-6), rtol=1e-12)
    full = spatial_normalize(torch.from_numpy(y), alpha=1.0).numpy()
    assert np.abs(full.mean(axis=(-2, -1))).max() < 1e-12
    np.testing.assert_allclose(full.std(axis=(-2, -1), ddof=1), 1.0, rtol=1e-5)


def test_rmsc_is_zero_for_aligned_tokens_and_matches_closed_form_for_two_orthogonal_directions():
    aligned = torch.randn(1, 1, 8).expand(2, 16, 8) * torch.rand(2, 16, 1)  # same direction, varying length
    torch.testing.assert_close(rmsc(aligned), torch.zeros(2), atol=1e-6, rtol=0)
    tokens = torch.zeros(1, 16, 4)
    tokens[0, :8, 0] = 3.0
    tokens[0, 8:, 1] = 0.5
    # Each unit token is +-(e1 - e2) / 2 from the mean: squared distance 1/2.
    torch.testing.assert_close(rmsc(tokens), torch.tensor([math.sqrt(0.5)]))
    grid = tokens.transpose(1, 2).reshape(1, 4, 4, 4)  # the same map as (B, D, h, w)
    torch.testing.assert_close(rmsc(grid), rmsc(tokens))


def test_apply_target_filter_runs_the_filter_on_the_row_major_token_grid():
    b, d, h, w = 2, 6, 4, 8
    grid = torch.randn(b, d, h, w)
    tokens = grid.flatten(2).transpose(1, 2)  # (B, N, D)
    assert apply_target_filter(tokens, (h, w), "none") is tokens
    for name, reference in (("dog", dog_filter(grid, 0.6, 2.0)), ("spatial_norm", spatial_normalize(grid, 0.6))):
        out = apply_target_filter(tokens, (h, w), name)
        torch.testing.assert_close(out, reference.flatten(2).transpose(1, 2))
