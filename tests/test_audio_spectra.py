"""Audio band spectra, slopes and the log-spectral distance against numpy constructions with known answers."""

import numpy as np
import pytest
import torch

from diffusers_spectrum.spectral.audio import (
    band_center_frequencies,
    band_power_spectrum,
    frequency_band_edges,
    level_invariant_log_spectral_distance,
    log_spectral_distance,
    mean_level_offset_db,
    spectral_slope,
)


SAMPLE_RATE = 16000


def _power_law_noise(exponent: float, length: int, num_clips: int, seed: int = 0) -> np.ndarray:
    """(num_clips, 1, length) noise whose periodogram is exactly f^-exponent (bins 1..T/2), random phases."""
    rng = np.random.default_rng(seed)
    frequency = np.fft.rfftfreq(length, d=1 / SAMPLE_RATE)
    amplitude = np.zeros_like(frequency)
    amplitude[1:] = frequency[1:] ** (-exponent / 2)
    phases = rng.uniform(0, 2 * np.pi, size=(num_clips, len(frequency)))
    spectrum = amplitude * np.exp(1j * phases)
    spectrum[:, -1] = spectrum[:, -1].real  # the Nyquist bin of an even length is real
    return np.fft.irfft(spectrum, n=length)[:, None, :]


def test_band_edges_are_geometric_or_even_in_mel():
    edges = frequency_band_edges(SAMPLE_RATE, num_bands=10, min_frequency_hz=50.0).numpy()
    assert edges[0] == pytest.approx(50.0) and edges[-1] == pytest.approx(8000.0)
    np.testing.assert_allclose(edges[1:] / edges[:-1], (8000 / 50) ** (1 / 10))
    mel_edges = frequency_band_edges(SAMPLE_RATE, num_bands=10, min_frequency_hz=50.0, scale="mel").numpy()
    mel = 2595 * np.log10(1 + mel_edges / 700)  # HTK mel scale
    np.testing.assert_allclose(np.diff(mel), np.diff(mel)[0])
    np.testing.assert_allclose(band_center_frequencies(torch.tensor([100.0, 400.0])).numpy(), [200.0])


@pytest.mark.parametrize("frequency_hz", [440.0, 1000.0, 3150.0])
def test_a_sine_lands_in_the_band_that_holds_its_frequency(frequency_hz):
    time = np.arange(8000) / SAMPLE_RATE
    sine = torch.tensor(np.sin(2 * np.pi * frequency_hz * time), dtype=torch.float32)[None, None]
    power = band_power_spectrum(sine, SAMPLE_RATE, num_bands=16)
    edges = frequency_band_edges(SAMPLE_RATE, num_bands=16).numpy()
    expected_band = np.searchsorted(edges, frequency_hz, side="right") - 1
    assert power.argmax().item() == expected_band


def test_band_power_matches_a_numpy_periodogram_averaged_per_band():
    x = np.random.default_rng(1).standard_normal((2, 2, 1000))
    ours = band_power_spectrum(torch.tensor(x), SAMPLE_RATE, num_bands=8, min_frequency_hz=100.0, window="rectangular")
    periodogram = (np.abs(np.fft.rfft(x, axis=-1)) ** 2 / 1000).mean(axis=1)  # (B, F)
    frequency = np.arange(501) * SAMPLE_RATE / 1000
    edges = np.exp(np.linspace(np.log(100.0), np.log(8000.0), 9))
    for band in range(8):
        upper = frequency <= edges[band + 1] if band == 7 else frequency < edges[band + 1]
        selected = (frequency >= edges[band]) & upper
        np.testing.assert_allclose(ours[:, band].numpy(), periodogram[:, selected].mean(axis=1), rtol=1e-10)


def test_white_noise_has_its_variance_in_every_band_with_the_hann_window():
    x = torch.randn(64, 1, 4096, generator=torch.Generator().manual_seed(0)) * 0.5
    power = band_power_spectrum(x, SAMPLE_RATE, num_bands=8, min_frequency_hz=200.0).mean(dim=0)
    # expectation 0.25 per bin; 64 clips x >= 40 bins per band keep the sampling error below 10 %
    np.testing.assert_allclose(power.numpy(), 0.25, rtol=0.1)


@pytest.mark.parametrize("window", ["rectangular", "hann"])
@pytest.mark.parametrize("exponent", [1.0, 2.0])  # pink, brown
def test_power_law_noise_has_the_known_log_log_slope(exponent, window):
    noise = torch.tensor(_power_law_noise(exponent, 16384, num_clips=2))
    # the rectangular periodogram is exactly f^-a per bin (Hann: smoothed over 3 bins); band means of a power law on
    # geometric bands follow the same power law of the band centre up to the bins' discreteness in the lowest band
    power = band_power_spectrum(noise, SAMPLE_RATE, num_bands=12, min_frequency_hz=100.0, window=window)
    slope = spectral_slope(power, SAMPLE_RATE, min_frequency_hz=100.0)
    np.testing.assert_allclose(slope.numpy(), -exponent, atol=0.05)


def test_log_spectral_distance_is_zero_for_the_same_set_and_the_gain_in_db_otherwise():
    real = torch.randn(4, 1, 2048, generator=torch.Generator().manual_seed(0))
    power = band_power_spectrum(real, SAMPLE_RATE)
    assert log_spectral_distance(power, power).item() == 0.0
    louder = band_power_spectrum(real * 2.0, SAMPLE_RATE)
    assert log_spectral_distance(louder, power).item() == pytest.approx(20 * np.log10(2.0), rel=1e-5)
    other = band_power_spectrum(torch.tensor(_power_law_noise(2.0, 2048, 4)).float(), SAMPLE_RATE)
    assert log_spectral_distance(other, power).item() > 10.0  # brown vs white: tens of dB apart


def test_level_invariant_distance_is_unchanged_by_a_gain_and_splits_the_distance_into_shape_and_level():
    rng = np.random.default_rng(3)
    real = band_power_spectrum(torch.from_numpy(rng.normal(size=(6, 1, 4096))), SAMPLE_RATE)
    other = band_power_spectrum(torch.tensor(_power_law_noise(1.0, 4096, 5)), SAMPLE_RATE)
    shape = level_invariant_log_spectral_distance(other, real).item()
    assert shape > 3.0  # pink vs white: a different shape
    for gain in (0.1, 0.5, 3.0):  # a gain g on every clip (power g^2): the shape distance does not move
        louder = band_power_spectrum(torch.tensor(_power_law_noise(1.0, 4096, 5)) * gain, SAMPLE_RATE)
        assert level_invariant_log_spectral_distance(louder, real).item() == pytest.approx(shape, rel=1e-9, abs=1e-9)
        assert level_invariant_log_spectral_distance(real, real * gain**2).item() == pytest.approx(0.0, abs=1e-9)
        assert mean_level_offset_db(real * gain**2, real).item() == pytest.approx(20 * np.log10(gain), rel=1e-9)
    # the raw distance = sqrt(shape^2 + offset^2), computed independently in numpy
    difference = 10 * np.log10(other.mean(0).numpy() / real.mean(0).numpy())
    assert shape == pytest.approx(
        float(np.std(difference)), rel=1e-9
    )  # population SD over bands: the RMS about the mean
    assert log_spectral_distance(other, real).item() == pytest.approx(float(np.sqrt(np.mean(difference**2))), rel=1e-9)


def test_audio_spectra_reject_bad_input_with_clear_errors():
    with pytest.raises(ValueError, match=r"3-D \(B, C, T\)"):
        band_power_spectrum(torch.zeros(100), SAMPLE_RATE)
    with pytest.raises(ValueError, match="Nyquist"):
        band_power_spectrum(torch.zeros(1, 1, 100), SAMPLE_RATE, max_frequency_hz=9000.0)
    with pytest.raises(ValueError, match="sample_rate"):
        frequency_band_edges(0)
    with pytest.raises(ValueError, match="scale"):
        frequency_band_edges(SAMPLE_RATE, scale="bark")
    with pytest.raises(ValueError, match="same band options"):
        log_spectral_distance(torch.ones(2, 8), torch.ones(2, 9))
