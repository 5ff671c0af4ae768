"""Fourier and wavelet regularisers, and the wavelet transform, against numpy FFTs, PyWavelets and closed forms."""

import numpy as np
import pytest
import pywt
import torch

from diffusers_spectrum.losses import fourier_loss, radial_frequency_weights, wavelet_loss
from diffusers_spectrum.spectral import dwt_2d, idwt_2d


SHAPES = [(2, 3, 32, 32), (3, 4, 16, 24), (1, 16, 8, 8)]  # pixels, latents, a small wide latent


def _pair(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


# ------------------------------------------------------------------------------------------------
# Wavelet transform


@pytest.mark.parametrize("levels", [1, 3])
def test_dwt_matches_pywavelets_and_reconstructs_perfectly(levels):
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    approximation, details = dwt_2d(x, levels=levels)
    reference = pywt.wavedec2(x.numpy(), "haar", level=levels, axes=(-2, -1))  # [cA_n, (H, V, D)_n, ..., (.)_1]
    np.testing.assert_allclose(approximation.numpy(), reference[0], atol=1e-12)
    for level, bands in zip(details, reversed(reference[1:]), strict=True):  # ours finest first
        np.testing.assert_allclose(level.numpy(), np.stack(bands, axis=-3), atol=1e-12)
    torch.testing.assert_close(idwt_2d(approximation, details), x, atol=1e-12, rtol=0)
    energy = approximation.square().sum() + sum(level.square().sum() for level in details)
    torch.testing.assert_close(energy, x.square().sum())  # orthonormal Haar: Parseval


def test_dwt_reconstructs_odd_sizes_and_longer_wavelets_after_cropping():
    x = torch.randn(2, 2, 13, 10, dtype=torch.float64)
    for wavelet in ("haar", "db2"):
        approximation, details = dwt_2d(x, levels=2, wavelet=wavelet)
        torch.testing.assert_close(idwt_2d(approximation, details, wavelet, output_size=(13, 10)), x)


def test_dwt_keeps_low_precision_dtypes():
    x = torch.randn(1, 2, 8, 8)
    for dtype in (torch.float16, torch.bfloat16):
        approximation, details = dwt_2d(x.to(dtype), levels=2)
        assert approximation.dtype == dtype and all(level.dtype == dtype for level in details)


# ------------------------------------------------------------------------------------------------
# Both losses: zero, positive, per-sample, dtypes


@pytest.mark.parametrize("loss", [fourier_loss, wavelet_loss])
@pytest.mark.parametrize("shape", SHAPES)
def test_losses_are_zero_for_identical_inputs_and_positive_otherwise(loss, shape):
    x, y = _pair(shape)
    levels = {"levels": 3} if loss is wavelet_loss else {}
    assert loss(x, x.clone(), **levels).item() == 0.0
    per_sample = loss(x, y, reduction="none", **levels)
    assert per_sample.shape == (shape[0],) and (per_sample > 0).all()
    torch.testing.assert_close(loss(x, y, **levels), per_sample.mean())


@pytest.mark.parametrize("loss", [fourier_loss, wavelet_loss])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_losses_are_differentiable_and_safe_in_half_precision(loss, dtype):
    x, y = _pair((2, 4, 16, 16))
    prediction = x.to(dtype).requires_grad_(True)
    value = loss(prediction, y.to(dtype))
    assert value.dtype == dtype and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(prediction.grad).all() and prediction.grad.float().abs().sum() > 0
    # float32 inside: the half-precision value matches the float32 loss of the rounded inputs
    reference = loss(x.to(dtype).float(), y.to(dtype).float())
    torch.testing.assert_close(value.float(), reference, rtol=1e-2, atol=0)


def test_fourier_loss_gradient_is_finite_where_the_prediction_is_zero():
    target, _ = _pair((1, 3, 8, 8))
    prediction = torch.zeros_like(target, requires_grad=True)
    fourier_loss(prediction, target).backward()
    assert torch.isfinite(prediction.grad).all()


# ------------------------------------------------------------------------------------------------
# Fourier loss


def test_fourier_loss_sees_a_pure_phase_change_that_keeps_the_amplitude():
    x, _ = _pair((2, 3, 16, 16))
    shifted = torch.roll(x, shifts=(3, 5), dims=(-2, -1))  # circular shift: same |FFT|, phases rotated
    amplitude_only = fourier_loss(shifted, x, phase_weight=0.0)
    phase_only = fourier_loss(shifted, x, amplitude_weight=0.0)
    assert amplitude_only.item() < 1e-5
    assert phase_only.item() > 0.5
    assert fourier_loss(shifted, x).item() > 0.5


def test_fourier_l2_amplitude_plus_phase_equals_the_squared_spectral_error():
    x, y = _pair((2, 3, 12, 16))
    ours = fourier_loss(x, y, loss_type="l2", reduction="none")
    error = np.fft.rfft2(x.double().numpy(), norm="ortho") - np.fft.rfft2(y.double().numpy(), norm="ortho")
    reference = (np.abs(error) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-5)


def test_fourier_log_amplitude_term_matches_numpy():
    x, y = _pair((2, 2, 8, 8))
    ours = fourier_loss(x, y, phase_weight=0.0, log_amplitude=True, loss_type="l1")
    fx, fy = np.fft.rfft2(x.double().numpy(), norm="ortho"), np.fft.rfft2(y.double().numpy(), norm="ortho")
    reference = np.abs(np.log1p(np.abs(fx)) - np.log1p(np.abs(fy))).mean()
    assert ours.item() == pytest.approx(reference, rel=1e-5)


def test_radial_weighting_emphasises_high_frequencies_and_ignores_dc():
    weights = radial_frequency_weights(8, 8, power=2.0)
    assert weights.shape == (8, 5) and weights[0, 0] == 0 and weights.mean().item() == pytest.approx(1.0)
    assert torch.equal(radial_frequency_weights(8, 8, power=0.0), torch.ones(8, 5))
    base, _ = _pair((1, 1, 8, 8))
    checkerboard = (-1.0) ** (torch.arange(8)[:, None] + torch.arange(8)[None, :])  # Nyquist corner only
    high = base + 0.1 * checkerboard
    offset = base + 0.1  # DC only
    assert fourier_loss(high, base, frequency_power=2.0) > fourier_loss(high, base)
    assert fourier_loss(offset, base, frequency_power=2.0).item() == pytest.approx(0, abs=1e-6)  # float rounding
    assert fourier_loss(offset, base).item() > 0.01


# ------------------------------------------------------------------------------------------------
# Wavelet loss


def test_wavelet_l2_loss_matches_a_pywavelets_reference_with_level_weights():
    x, y = _pair((2, 3, 16, 16))
    weights = (0.5, 1.0, 2.0)
    ours = wavelet_loss(
        x, y, levels=3, level_weights=weights, approximation_weight=0.25, loss_type="l2", reduction="none"
    )
    bands = pywt.wavedec2((x - y).double().numpy(), "haar", level=3, axes=(-2, -1))
    reference = 0.25 * (bands[0] ** 2).mean(axis=(1, 2, 3))
    for weight, level in zip(weights, reversed(bands[1:]), strict=True):
        reference = reference + weight * (np.stack(level, axis=-3) ** 2).mean(axis=(1, 2, 3, 4))
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-5)


def test_wavelet_level_weights_select_where_the_error_lives():
    base, _ = _pair((1, 2, 16, 16))
    checkerboard = (-1.0) ** (torch.arange(16)[:, None] + torch.arange(16)[None, :])  # finest diagonal band only
    assert wavelet_loss(base + checkerboard, base, level_weights=(0.0, 1.0, 1.0)).item() == pytest.approx(0, abs=1e-6)
    assert wavelet_loss(base + checkerboard, base, level_weights=(1.0, 0.0, 0.0)).item() > 0.1
    offset = base + 0.3  # constant error: approximation band only
    assert wavelet_loss(offset, base, approximation_weight=0.0).item() == pytest.approx(0, abs=1e-6)
    assert wavelet_loss(offset, base).item() > 0.1


def test_losses_reject_bad_arguments():
    x, y = _pair((1, 3, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        fourier_loss(x, y[:, :2])
    with pytest.raises(ValueError, match="level_weights"):
        wavelet_loss(x, y, levels=2, level_weights=(1.0,))
    with pytest.raises(ValueError, match="too small"):
        wavelet_loss(x, y, levels=4)
    with pytest.raises(ValueError, match="loss_type"):
        fourier_loss(x, y, loss_type="huber")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) images/latents or \(B, C, T\) waveforms"):
        wavelet_loss(x[0, 0], y[0, 0])  # (H, W): no batch or channel axis
    with pytest.raises(ValueError, match="waveforms"):
        fourier_loss(x[None], y[None])  # 5-D


def test_losses_pass_a_float64_gradcheck():
    x, y = _pair((1, 2, 4, 8))
    prediction = x.double().requires_grad_(True)
    target = y.double()
    assert torch.autograd.gradcheck(
        lambda p: fourier_loss(p, target, log_amplitude=True, frequency_power=1.0), prediction
    )
    assert torch.autograd.gradcheck(lambda p: wavelet_loss(p, target, levels=2, loss_type="l2"), prediction)
    assert torch.autograd.gradcheck(lambda p: wavelet_loss(p, target, levels=1, wavelet="db2"), prediction)


def test_wavelet_loss_accepts_other_wavelets_and_odd_sizes():
    x, y = _pair((2, 3, 15, 9))
    for wavelet in ("haar", "db2"):
        assert wavelet_loss(x, x.clone(), levels=2, wavelet=wavelet).item() == 0.0
        assert wavelet_loss(x, y, levels=2, wavelet=wavelet).item() > 0.1
