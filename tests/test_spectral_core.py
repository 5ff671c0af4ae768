"""The spectral primitives against scipy and closed forms: DCTs, radial spectra, DSM masks, slopes, bad input."""

import numpy as np
import pytest
import scipy.fft
import torch

from diffusers_spectrum.spectral import (
    blockwise_dct_2d,
    blockwise_idct_2d,
    dct_2d,
    dsm_lowpass,
    dsm_mask,
    idct_2d,
    power_law_slope,
    radial_bin_index,
    radial_spectrum,
)


def _power_law_field(n: int, alpha: float, batch: int = 32, seed: int = 0) -> torch.Tensor:
    """Isotropic random field whose DCT power falls as 1/r^alpha, ``(batch, 3, n, n)``."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.arange(n, dtype=torch.float64)[:, None]
    v = torch.arange(n, dtype=torch.float64)[None, :]
    radius = (u * u + v * v).sqrt()
    radius[0, 0] = 1.0
    coefficients = torch.randn(batch, 3, n, n, generator=generator, dtype=torch.float64) * radius ** (-alpha / 2)
    return idct_2d(coefficients)


@pytest.mark.parametrize("shape", [(8, 8), (5, 12), (2, 3, 16, 24)])
def test_dct_2d_matches_scipy_and_inverts(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    expected = scipy.fft.dctn(x.numpy(), axes=(-2, -1), norm="ortho")
    np.testing.assert_allclose(dct_2d(x).numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(idct_2d(dct_2d(x)).numpy(), x.numpy(), atol=1e-12)
    x32 = x.float()
    np.testing.assert_allclose(dct_2d(x32).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(idct_2d(torch.from_numpy(expected).float()).numpy(), x.numpy(), atol=1e-5)


def test_dct_2d_keeps_low_precision_dtype_and_is_differentiable():
    x = torch.randn(2, 4, 8, 8, dtype=torch.bfloat16, requires_grad=True)
    y = dct_2d(x)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    # Orthonormal: d/dx sum(DCT(x)^2) = 2x.
    torch.testing.assert_close(x.grad.float(), 2 * x.detach().float(), atol=0.1, rtol=0.05)


def test_dct_2d_preserves_energy_parseval():
    x = torch.randn(3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(dct_2d(x).square().sum(), x.square().sum())


def test_blockwise_dct_matches_scipy_per_block_and_inverts():
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    coefficients = blockwise_dct_2d(x, 8)
    for r in range(2):
        for c in range(3):
            block = x[..., r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8].numpy()
            expected = scipy.fft.dctn(block, axes=(-2, -1), norm="ortho")
            np.testing.assert_allclose(
                coefficients[..., r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8], expected, atol=1e-12
            )
    torch.testing.assert_close(blockwise_idct_2d(coefficients, 8), x)


@pytest.mark.parametrize("level, kept", [(0, 64), (8, 28), (10, 15), (12, 6)])
def test_dsm_mask_keeps_the_authors_coefficient_counts(level, kept):
    assert int(dsm_mask(level, 8).sum()) == kept


def test_dsm_lowpass_level_zero_is_identity_and_masks_are_shared_and_idempotent():
    x = torch.randn(2, 4, 16, 16)
    assert dsm_lowpass(x, 0) is x
    low = dsm_lowpass(x, 10)
    torch.testing.assert_close(dsm_lowpass(low, 10), low, atol=1e-5, rtol=0)
    coefficients = blockwise_dct_2d(low, 8).reshape(2, 4, 2, 8, 2, 8)
    dropped = (1 - dsm_mask(10, 8))[None, None, None, :, None, :]
    assert coefficients.mul(dropped).abs().max() < 1e-5
    # Linear: low-passing a sum is the sum of low-passes.
    y = torch.randn_like(x)
    torch.testing.assert_close(dsm_lowpass(x + y, 8), dsm_lowpass(x, 8) + dsm_lowpass(y, 8), atol=1e-5, rtol=0)


def _scipy_radial_spectrum(x: np.ndarray, n_bins: int, remove_dc: bool, subtract_mean: bool, floor: float):
    """The definition written out: [centre], mean_c DCT^2, clamp at floor, [DC := 0], radial means (numpy / scipy)."""
    if subtract_mean:
        x = x - x.mean(axis=(-2, -1), keepdims=True)
    power = np.maximum((scipy.fft.dctn(x, axes=(-2, -1), norm="ortho") ** 2).mean(axis=1), floor)
    if remove_dc:
        power[:, 0, 0] = 0
    h, w = x.shape[-2:]
    u, v = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    band = np.minimum(np.floor(np.sqrt(u**2 + v**2) / np.sqrt((h - 1) ** 2 + (w - 1) ** 2) * n_bins), n_bins - 1)
    return np.stack([power[:, band == k].mean(-1) for k in range(n_bins)], -1)


@pytest.mark.parametrize(
    "remove_dc, subtract_mean",
    [(True, False), (False, False), (False, True)],
    ids=["esm", "authors_analysis", "centred"],
)
@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_radial_spectrum_matches_scipy_in_each_convention(remove_dc, subtract_mean, scale):
    rng = np.random.default_rng(0)
    x = scale * (rng.standard_normal((3, 4, 16, 20)) + 0.3)  # a non-zero mean, so the DC convention matters
    expected = _scipy_radial_spectrum(x, 16, remove_dc, subtract_mean, 1e-8)
    got = radial_spectrum(torch.from_numpy(x), remove_dc=remove_dc, subtract_mean=subtract_mean)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(
        radial_spectrum(torch.from_numpy(x).float(), remove_dc=remove_dc, subtract_mean=subtract_mean).numpy(),
        expected,
        rtol=2e-4,
    )


def test_radial_spectrum_floor_is_the_authors_clamp_and_can_be_turned_off():
    rng = np.random.default_rng(1)
    x = 1e-5 * rng.standard_normal((2, 3, 16, 16))  # DCT powers ~1e-10: below the floor
    floored = radial_spectrum(torch.from_numpy(x), remove_dc=False)
    np.testing.assert_allclose(floored.numpy(), 1e-8, rtol=1e-12)
    raw = radial_spectrum(torch.from_numpy(x), remove_dc=False, floor=0.0)
    np.testing.assert_allclose(raw.numpy(), _scipy_radial_spectrum(x, 16, False, False, 0.0), rtol=1e-12)


def test_radial_spectrum_of_constant_image_is_dc_only():
    x = torch.full((1, 3, 16, 16), 0.7, dtype=torch.float64)
    band, counts = radial_bin_index(16, 16)
    n0 = int(counts[0])
    removed = radial_spectrum(x, floor=0.0)
    assert removed.abs().max() < 1e-25  # only rounding of the zero AC coefficients
    kept = radial_spectrum(x, remove_dc=False, floor=0.0)
    assert float(kept[0, 0]) == pytest.approx(0.7**2 * 256 / n0, rel=1e-12)  # DC^2 = (0.7 * 16)^2, one cell of n0
    assert kept[0, 1:].abs().max() < 1e-25
    # With the authors' floor, every empty cell holds 1e-8.
    floored = radial_spectrum(x, remove_dc=False)
    assert float(floored[0, 0]) == pytest.approx((0.7**2 * 256 + (n0 - 1) * 1e-8) / n0, rel=1e-12)
    np.testing.assert_allclose(floored[0, 1:].numpy(), 1e-8, rtol=1e-12)
    centred = radial_spectrum(x, remove_dc=False, subtract_mean=True)
    np.testing.assert_allclose(centred.numpy(), 1e-8, rtol=1e-12)


def test_radial_bins_put_exact_edges_in_the_upper_band():
    # 4 bins on a 5 x 5 grid: r_max = 4 * sqrt(2); the cell (1, 1) has r / r_max * 4 = 1 exactly.
    band, counts = radial_bin_index(5, 5, 4)
    assert int(band.reshape(5, 5)[1, 1]) == 1
    assert int(band.reshape(5, 5)[4, 4]) == 3
    assert int(counts.sum()) == 25


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_power_law_slope_recovers_the_exponent_of_a_power_law_field(alpha):
    spectrum = radial_spectrum(_power_law_field(64, alpha)).mean(0)
    assert float(power_law_slope(spectrum, frequencies="center")) == pytest.approx(-alpha, abs=0.1)


def test_power_law_slope_index_convention_shifts_by_exactly_delta_under_flattening():
    spectrum = radial_spectrum(_power_law_field(32, 2.0)).mean(0)
    flattened = spectrum * torch.arange(1, 17, dtype=spectrum.dtype)
    assert float(power_law_slope(flattened) - power_law_slope(spectrum)) == pytest.approx(1.0, abs=1e-9)


def test_power_law_slope_of_exact_power_law_is_exact():
    f = torch.arange(1, 17, dtype=torch.float64)
    assert float(power_law_slope(3.0 * f**-1.5)) == pytest.approx(-1.5, abs=1e-12)


# ------------------------------------------------------------------------------------------------ integer types
@pytest.mark.parametrize("level", [np.int64(8), np.int32(10), torch.tensor(12), torch.tensor([8])])
def test_dsm_levels_accept_numpy_and_torch_integers(level):
    x = torch.randn(1, 4, 16, 16)
    expected = dsm_lowpass(x, int(level))
    torch.testing.assert_close(dsm_lowpass(x, level), expected, atol=0, rtol=0)
    assert int(dsm_mask(level).sum()) == {8: 28, 10: 15, 12: 6}[int(level)]


def test_radial_spectrum_accepts_numpy_integer_bins():
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(radial_spectrum(x, np.int64(4)), radial_spectrum(x, 4), atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------ NaN/Inf rule
def test_non_finite_check_is_skipped_on_recorded_steps_and_can_be_forced_or_disabled():
    x = torch.randn(1, 4, 16, 16)
    x[0, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="`x` contains NaN"):
        dsm_lowpass(x, 8)  # default: checked (nothing records gradients)
    assert torch.isnan(dsm_lowpass(x, 8, check_finite=False)).any()  # a hot-path caller opts out
    recorded = x.clone().requires_grad_()
    assert torch.isnan(dsm_lowpass(recorded, 8)).any()  # a training step: flows on to the trainer's guard
    with pytest.raises(ValueError, match="`x` contains NaN"):
        dsm_lowpass(recorded, 8, check_finite=True)
    with torch.no_grad():
        with pytest.raises(ValueError, match="`x` contains NaN"):
            radial_spectrum(recorded)  # grad mode off: nothing is recorded, so it checks
