"""1-D Fourier / wavelet regularisers and the multi-resolution STFT loss, against numpy FFTs, PyWavelets, a numpy STFT
written from the definition (torch.stft's centring) and closed forms; phase-only changes; gradients; bad shapes."""

import numpy as np
import pytest
import pywt
import scipy.signal
import torch

from diffusers_spectrum.losses import fourier_loss, wavelet_loss
from diffusers_spectrum.losses.spectral_regularizers import rfft_frequency_weights
from diffusers_spectrum.losses.stft import multi_resolution_stft_loss, stft_loss_terms
from diffusers_spectrum.spectral.audio import dwt_1d


def _pair(shape, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype), torch.randn(shape, generator=generator, dtype=dtype)


def _hilbert_rotation(x: torch.Tensor) -> torch.Tensor:
    """Rotate the phase of every bin strictly between DC and Nyquist by 90 degrees: |rfft| unchanged exactly."""
    spectrum = torch.fft.rfft(x.double())
    factor = torch.full((spectrum.shape[-1],), -1j, dtype=spectrum.dtype)
    factor[0] = 1
    if x.shape[-1] % 2 == 0:
        factor[-1] = 1
    return torch.fft.irfft(spectrum * factor, n=x.shape[-1]).to(x.dtype)


# ------------------------------------------------------------------------------------------------
# 1-D DWT


@pytest.mark.parametrize("wavelet, length", [("haar", 64), ("haar", 37), ("db2", 50)])
def test_dwt_1d_matches_pywavelets(wavelet, length):
    x = torch.randn(2, 3, length, dtype=torch.float64)
    approximation, details = dwt_1d(x, levels=3, wavelet=wavelet)
    reference = pywt.wavedec(x.numpy(), wavelet, level=3, mode="reflect", axis=-1)  # [cA_3, cD_3, cD_2, cD_1]
    np.testing.assert_allclose(approximation.numpy(), reference[0], atol=1e-12)
    for ours, theirs in zip(details, reversed(reference[1:]), strict=True):  # ours finest first
        np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-12)


def test_dwt_1d_haar_preserves_energy():
    x = torch.randn(2, 1, 32, dtype=torch.float64)
    approximation, details = dwt_1d(x, levels=5)
    energy = approximation.square().sum() + sum(level.square().sum() for level in details)
    torch.testing.assert_close(energy, x.square().sum())


# ------------------------------------------------------------------------------------------------
# 1-D Fourier and wavelet losses


def test_fourier_loss_1d_l2_equals_the_squared_rfft_error():
    x, y = _pair((2, 2, 100))
    ours = fourier_loss(x, y, loss_type="l2", reduction="none")
    error = np.fft.rfft(x.double().numpy(), norm="ortho") - np.fft.rfft(y.double().numpy(), norm="ortho")
    np.testing.assert_allclose(ours.numpy(), (np.abs(error) ** 2).mean(axis=(1, 2)), rtol=1e-5)


def test_fourier_loss_1d_weighted_log_amplitude_matches_numpy():
    x, y = _pair((2, 1, 64))
    ours = fourier_loss(x, y, phase_weight=0.0, log_amplitude=True, frequency_power=1.0, reduction="none")
    fx, fy = np.fft.rfft(x.double().numpy(), norm="ortho"), np.fft.rfft(y.double().numpy(), norm="ortho")
    weights = np.fft.rfftfreq(64) / 0.5
    weights = weights / weights.mean()
    reference = (np.abs(np.log1p(np.abs(fx)) - np.log1p(np.abs(fy))) * weights).mean(axis=(1, 2))
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-5)
    assert rfft_frequency_weights(64, 1.0)[0] == 0 and rfft_frequency_weights(64, 1.0).mean().item() == pytest.approx(
        1
    )


def test_wavelet_loss_1d_matches_a_pywavelets_reference_with_level_weights():
    x, y = _pair((2, 2, 64))
    weights = (0.5, 1.0, 2.0)
    ours = wavelet_loss(x, y, level_weights=weights, approximation_weight=0.25, loss_type="l2", reduction="none")
    bands = pywt.wavedec((x - y).double().numpy(), "haar", level=3, axis=-1)
    reference = 0.25 * (bands[0] ** 2).mean(axis=(1, 2))
    for weight, level in zip(weights, reversed(bands[1:]), strict=True):
        reference = reference + weight * (level**2).mean(axis=(1, 2))
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-5)


@pytest.mark.parametrize("rotate", ["circular_shift", "hilbert"])
def test_fourier_phase_term_and_wavelet_loss_see_a_phase_change_that_keeps_the_rfft_magnitudes(rotate):
    x, _ = _pair((2, 1, 256))
    changed = torch.roll(x, shifts=37, dims=-1) if rotate == "circular_shift" else _hilbert_rotation(x)
    np.testing.assert_allclose(torch.fft.rfft(changed).abs().numpy(), torch.fft.rfft(x).abs().numpy(), atol=1e-4)
    assert fourier_loss(changed, x, phase_weight=0.0).item() < 1e-5  # amplitudes agree
    # l2 phase term = |F - G|^2 mean here (amplitudes equal) = the waveform MSE / (T // 2 + 1) * T by Parseval
    assert fourier_loss(changed, x, amplitude_weight=0.0).item() > 0.5
    assert wavelet_loss(changed, x).item() > 0.5


def test_sign_flip_keeps_every_magnitude_only_the_stft_loss_is_blind_to_it():
    x, _ = _pair((1, 1, 2100))
    flipped = -x
    # every phase moves by pi: phase term 2|F||G|(1 - cos pi) = 4|F|^2, amplitude term 0
    expected_phase = 4 * (np.abs(np.fft.rfft(x.double().numpy(), norm="ortho")) ** 2).mean()
    assert fourier_loss(flipped, x, amplitude_weight=0.0).item() == pytest.approx(expected_phase, rel=1e-5)
    assert fourier_loss(flipped, x, phase_weight=0.0).item() == 0.0
    assert wavelet_loss(flipped, x).item() > 1.0
    assert multi_resolution_stft_loss(flipped, x).item() == 0.0  # |STFT(-x)| == |STFT(x)| exactly


# ------------------------------------------------------------------------------------------------
# Multi-resolution STFT loss against a numpy STFT written from the definition


def _numpy_stft_magnitude(x: np.ndarray, fft_size: int, hop: int, win: int, eps: float) -> np.ndarray:
    """(T,) -> (F, frames): reflect-pad fft_size // 2 each side, periodic Hann of `win` centred in the frame."""
    padded = np.pad(x, fft_size // 2, mode="reflect")
    window = np.zeros(fft_size)
    left = (fft_size - win) // 2
    window[left : left + win] = scipy.signal.get_window("hann", win, fftbins=True)  # periodic Hann
    num_frames = 1 + (len(padded) - fft_size) // hop
    frames = np.stack([padded[i * hop : i * hop + fft_size] * window for i in range(num_frames)], axis=-1)
    power = np.abs(np.fft.rfft(frames, axis=0)) ** 2
    return np.sqrt(np.maximum(power, eps))


def _numpy_mrstft(prediction: np.ndarray, target: np.ndarray, resolutions, eps=1e-7):
    """Per-sample (spectral convergence, log magnitude) of (B, C, T) arrays, averaged over resolutions."""
    convergence, log_magnitude = np.zeros(len(target)), np.zeros(len(target))
    for fft_size, hop, win in resolutions:
        for b in range(len(target)):
            s_hat = np.stack([_numpy_stft_magnitude(c, fft_size, hop, win, eps) for c in prediction[b]])
            s = np.stack([_numpy_stft_magnitude(c, fft_size, hop, win, eps) for c in target[b]])
            convergence[b] += np.linalg.norm(s - s_hat) / np.linalg.norm(s)
            log_magnitude[b] += np.abs(np.log(s) - np.log(s_hat)).mean()
    return convergence / len(resolutions), log_magnitude / len(resolutions)


def test_multi_resolution_stft_loss_matches_a_numpy_stft_with_the_default_resolutions():
    x, y = _pair((2, 2, 2100), dtype=torch.float64)
    convergence, log_magnitude = stft_loss_terms(x, y)
    ref_convergence, ref_log_magnitude = _numpy_mrstft(
        x.numpy(), y.numpy(), [(1024, 120, 600), (2048, 240, 1200), (512, 50, 240)]
    )
    np.testing.assert_allclose(convergence.numpy(), ref_convergence, rtol=1e-10)
    np.testing.assert_allclose(log_magnitude.numpy(), ref_log_magnitude, rtol=1e-10)
    total = multi_resolution_stft_loss(x, y, convergence_weight=0.5, magnitude_weight=2.0, reduction="none")
    np.testing.assert_allclose(total.numpy(), 0.5 * ref_convergence + 2.0 * ref_log_magnitude, rtol=1e-10)
    assert multi_resolution_stft_loss(x, y).item() == pytest.approx((ref_convergence + ref_log_magnitude).mean())


def test_multi_resolution_stft_loss_on_silence_is_finite_and_zero_for_identical_inputs():
    x, _ = _pair((1, 1, 2048))
    silence = torch.zeros_like(x)
    assert multi_resolution_stft_loss(x, x.clone()).item() == 0.0
    assert torch.isfinite(multi_resolution_stft_loss(x, silence))
    prediction = silence.clone().requires_grad_(True)
    multi_resolution_stft_loss(prediction, x).backward()
    assert torch.isfinite(prediction.grad).all()


# ------------------------------------------------------------------------------------------------
# Gradients, half precision, errors


@pytest.mark.parametrize("loss", [fourier_loss, wavelet_loss, multi_resolution_stft_loss])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_1d_losses_are_differentiable_and_safe_in_half_precision(loss, dtype):
    x, y = _pair((2, 2, 2048))
    prediction = x.to(dtype).requires_grad_(True)
    value = loss(prediction, y.to(dtype))
    assert value.dtype == dtype and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(prediction.grad).all() and prediction.grad.float().abs().sum() > 0
    reference = loss(x.to(dtype).float(), y.to(dtype).float())  # float32 inside: same value up to output rounding
    torch.testing.assert_close(value.float(), reference, rtol=1e-2, atol=0)


def test_1d_losses_pass_a_float64_gradcheck():
    x, y = _pair((1, 1, 32), dtype=torch.float64)
    prediction = x.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda p: fourier_loss(p, y, log_amplitude=True, frequency_power=1.0), prediction, fast_mode=True
    )
    assert torch.autograd.gradcheck(
        lambda p: wavelet_loss(p, y, levels=2, wavelet="db2", loss_type="l2"), prediction, fast_mode=True
    )
    resolutions = {"fft_sizes": (16, 8), "hop_lengths": (4, 2), "win_lengths": (12, 8)}
    assert torch.autograd.gradcheck(
        lambda p: multi_resolution_stft_loss(p, y, **resolutions), prediction, fast_mode=True
    )


def test_audio_losses_reject_bad_shapes_and_options_with_clear_errors():
    x, y = _pair((2, 1, 1024))
    with pytest.raises(ValueError, match="same shape"):
        fourier_loss(x, y[..., :512])
    with pytest.raises(ValueError, match=r"\(B, C, T\) waveforms"):
        wavelet_loss(x[0, 0], y[0, 0])
    with pytest.raises(ValueError, match="too small for 11 levels"):
        wavelet_loss(x, y, levels=11)
    with pytest.raises(ValueError, match=r"3-D \(B, C, T\)"):
        multi_resolution_stft_loss(x[:, 0], y[:, 0])
    with pytest.raises(ValueError, match="too short for fft_size=2048"):
        multi_resolution_stft_loss(x, y)  # 1024 samples <= 2048 // 2
    with pytest.raises(ValueError, match="same non-zero number"):
        multi_resolution_stft_loss(x, y, fft_sizes=(512,), hop_lengths=(50, 60), win_lengths=(240,))
    with pytest.raises(ValueError, match="win_length <= fft_size"):
        multi_resolution_stft_loss(x, y, fft_sizes=(256,), hop_lengths=(50,), win_lengths=(300,))
    with pytest.raises(ValueError, match="window"):
        multi_resolution_stft_loss(x, y, fft_sizes=(256,), hop_lengths=(50,), win_lengths=(200,), window="kaiser")
    with pytest.raises(TypeError, match="floating-point"):
        fourier_loss(x.long(), y.long())
