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


def test_radial_spectrum_matches_a_direct_scipy_computation():
    x = torch.randn(3, 4, 16, 20, dtype=torch.float64)
    power = (scipy.fft.dctn(x.numpy(), axes=(-2, -1), norm="ortho") ** 2).mean(axis=1)
    power[:, 0, 0] = 0
    u, v = np.meshgrid(np.arange(16), np.arange(20), indexing="ij")
    band = np.minimum(np.floor(np.sqrt(u**2 + v**2) / np.sqrt(15**2 + 19**2) * 16).astype(int), 15)
    expected = np.stack([power[:, band == k].mean(-1) for k in range(16)], -1)
    np.testing.assert_allclose(radial_spectrum(x).numpy(), expected, rtol=1e-12)


def test_radial_spectrum_of_constant_image_is_dc_only():
    x = torch.full((1, 3, 16, 16), 0.7)
    assert radial_spectrum(x).abs().max() < 1e-10  # the DC power is 0.49 * 256: float rounding only
    kept = radial_spectrum(x, remove_dc=False)
    band, counts = radial_bin_index(16, 16)
    assert kept[0, 0] == pytest.approx(0.7**2 * 256 / int(counts[0]), rel=1e-5)
    assert kept[0, 1:].abs().max() < 1e-9
    assert radial_spectrum(x, remove_dc=False, subtract_mean=True).abs().max() < 1e-9


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


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="4-D"):
        radial_spectrum(torch.randn(3, 16, 16))
    with pytest.raises(TypeError, match="floating-point"):
        dct_2d(torch.ones(4, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        dct_2d(np.ones((4, 4)))
    with pytest.raises(ValueError, match="not divisible by block_size=8"):
        dsm_lowpass(torch.randn(1, 4, 12, 16), 8)
    with pytest.raises(ValueError, match="Unknown DSM level"):
        dsm_lowpass(torch.randn(1, 4, 16, 16), 15)
    with pytest.raises(ValueError, match="Unknown DSM level"):
        dsm_mask(-1)
    with pytest.raises(ValueError, match="frequencies"):
        power_law_slope(torch.rand(16), frequencies="log")
