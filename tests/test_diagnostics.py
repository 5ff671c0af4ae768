"""Diagnostics against independent constructions: numpy power-law fields, spectra from scipy.fft, the verdict
thresholds re-derived in numpy, and the authors' own reference curves (SPEC.md) checked under those thresholds."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.fft import dctn, idctn

from diffusers_spectrum.evaluation.diagnostics import (
    VERDICT_KL_THRESHOLD,
    VERDICT_SLOPE_TOLERANCE,
    SpectrumStatistics,
    channel_spectra,
    flatten_spectrum,
    lowpass_reconstruction_errors,
    posterior_latents,
    rms_spatial_contrast,
    spectrum_slope,
    spectrum_summary,
    spectrum_verdict,
)
from diffusers_spectrum.spectral import gaussian_kernel_1d, radial_spectrum


N_BINS = 16
EPS = 1e-8


# ------------------------------------------------------------------------------------------------
# Independent numpy references (written from SPEC.md's definitions)


def np_bands(height: int, width: int, n_bins: int = N_BINS) -> np.ndarray:
    """Band of each DCT cell: floor(r / r_max * n_bins), clipped; (H, W) ints."""
    u, v = np.arange(height)[:, None], np.arange(width)[None, :]
    radius = np.sqrt(u * u + v * v)
    r_max = math.hypot(height - 1, width - 1)
    return np.clip(np.floor(radius / r_max * n_bins + 1e-9).astype(int), 0, n_bins - 1)


def np_band_power(x: np.ndarray, remove_dc: bool, floor: float = EPS) -> np.ndarray:
    """(B, C, H, W) -> (B, n_bins): scipy orthonormal DCT-II, channel-mean power clamped at floor, band means."""
    power = np.maximum((dctn(x, axes=(-2, -1), norm="ortho") ** 2).mean(1), floor)  # (B, H, W)
    if remove_dc:
        power[:, 0, 0] = 0.0
    bands = np_bands(*x.shape[-2:]).ravel()
    flat = power.reshape(len(x), -1)
    return np.stack([flat[:, bands == k].mean(1) for k in range(N_BINS)], axis=1)


def np_normalized_log(bands: np.ndarray) -> np.ndarray:
    logs = np.maximum(np.log1p(bands + EPS), 0)
    return logs / (logs.sum(-1, keepdims=True) + EPS)


def np_slope(row: np.ndarray) -> float:
    return float(np.polyfit(np.log(np.arange(1, len(row) + 1)), np.log(row), 1)[0])


def np_kl(target: np.ndarray, latent: np.ndarray) -> float:
    return float((target * (np.log(target + EPS) - np.log(latent + EPS))).sum(-1))


def np_field(rng, batch: int, channels: int, size: int, alpha: float, band_exponent: float = 0.0) -> np.ndarray:
    """Gaussian field with cell power r^-alpha (DC kept, r clamped at 1) times (k + 1)^band_exponent."""
    u, v = np.arange(size)[:, None], np.arange(size)[None, :]
    radius = np.maximum(np.sqrt(u * u + v * v), 1.0)
    amplitude = radius ** (-alpha / 2) * (np_bands(size, size) + 1.0) ** (band_exponent / 2)
    return idctn(rng.standard_normal((batch, channels, size, size)) * amplitude, axes=(-2, -1), norm="ortho")


def construction(exponent_errors, seed: int, size: int = 32, count: int = 64, pixel_std: float = 0.5):
    """The diagnostics docstring's construction: r^-2 images at pixel std 0.5, and for each exponent error e an
    independent latent field whose expected band power is the delta = 1 target's times (k + 1)^e."""
    rng = np.random.default_rng(seed)
    raw = np_field(rng, count, 3, size, 2.0)
    scale = pixel_std / raw.std()
    images = raw * scale
    latents = {e: np_field(rng, count, 4, size, 2.0, 1.0 + e) * scale for e in exponent_errors}
    return images, latents


# ------------------------------------------------------------------------------------------------
# Spectra and slopes against scipy


@pytest.mark.parametrize("remove_dc", [False, True])
def test_radial_spectrum_and_statistics_match_a_scipy_reference_in_both_conventions(remove_dc):
    rng = np.random.default_rng(0)
    images = np.clip(np_field(rng, 3, 3, 32, 2.0) * 2 + 0.3, -1, 1)  # a non-zero mean: the DC matters
    latents = np_field(rng, 3, 4, 32, 1.0) + 0.5
    torch.testing.assert_close(
        radial_spectrum(torch.from_numpy(latents), remove_dc=remove_dc).numpy(),
        np_band_power(latents, remove_dc),
        rtol=1e-10,
        atol=1e-12,
    )
    convention = "dc_free" if remove_dc else "authors"
    summary = spectrum_summary(
        torch.from_numpy(images).float(), torch.from_numpy(latents).float(), convention=convention
    )
    # 32-high latents: ESM resizes bicubically without blur, and a 32 -> 32 resize is the identity
    image_rows = np_normalized_log(np_band_power(images, remove_dc))
    latent_rows = np_normalized_log(np_band_power(latents, remove_dc))
    target_rows = np_normalized_log(np_band_power(images, remove_dc) * np.arange(1, 17))
    np.testing.assert_allclose(summary["spectra"]["latent"]["mean"], latent_rows.mean(0), rtol=1e-4)
    np.testing.assert_allclose(summary["spectra"]["target"]["mean"], target_rows.mean(0), rtol=1e-4)
    np.testing.assert_allclose(summary["spectra"]["latent"]["std"], latent_rows.std(0), rtol=1e-3, atol=1e-7)
    assert summary["latent_slope"] == pytest.approx(np_slope(latent_rows.mean(0)), abs=1e-4)
    assert summary["image_slope"] == pytest.approx(np_slope(image_rows.mean(0)), abs=1e-4)
    per_sample_kl = [np_kl(t, z) for t, z in zip(target_rows, latent_rows, strict=True)]
    assert summary["spectral_kl_delta1"] == pytest.approx(np.mean(per_sample_kl), rel=1e-4)
    assert summary["mean_spectrum_kl_delta1"] == pytest.approx(
        np_kl(target_rows.mean(0), latent_rows.mean(0)), rel=1e-4
    )
    assert summary["spectrum_convention"] == convention


def test_the_two_conventions_differ_by_the_dc_term_only():
    latents = torch.randn(2, 4, 16, 16) + 3.0  # a large mean: all of it sits in the DC cell
    kept = radial_spectrum(latents, remove_dc=False).double()
    removed = radial_spectrum(latents, remove_dc=True).double()
    torch.testing.assert_close(kept[:, 1:], removed[:, 1:])
    count0 = int((torch.from_numpy(np_bands(16, 16)) == 0).sum())
    dc_power = dctn(latents.double().numpy(), axes=(-2, -1), norm="ortho")[:, :, 0, 0] ** 2  # (B, C)
    torch.testing.assert_close(
        (kept[:, 0] - removed[:, 0]) * count0, torch.from_numpy(dc_power.mean(1)), rtol=1e-5, atol=0
    )


def test_spectrum_slope_equals_numpy_polyfit_on_a_numpy_power_law_field():
    rng = np.random.default_rng(1)
    field = np_field(rng, 8, 3, 64, 2.0)
    rows = np_band_power(field, remove_dc=True).mean(0)  # raw power (band 0 holds more cells than the DC)
    frequencies = np.arange(16) + 0.5  # band centres k + 1/2
    expected = np.polyfit(np.log(frequencies), np.log(rows), 1)[0]
    slope = spectrum_slope(torch.from_numpy(np_band_power(field, remove_dc=True).mean(0)), frequencies="center")
    assert float(slope) == pytest.approx(expected, abs=1e-6)
    assert -2.6 < expected < -1.6  # an r^-2 field: the exponent, bent by the band averaging at low radii


def test_flatten_spectrum_equals_scaling_scipy_dct_coefficients():
    x = np.random.default_rng(2).standard_normal((2, 3, 24, 24))
    gain = (np_bands(24, 24) + 1.0) ** 0.5  # delta = 1: power times (k + 1)
    expected = idctn(dctn(x, axes=(-2, -1), norm="ortho") * gain, axes=(-2, -1), norm="ortho")
    np.testing.assert_allclose(flatten_spectrum(torch.from_numpy(x), delta=1.0).numpy(), expected, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# The verdict thresholds: derived in numpy (the module docstring's construction), then checked on other data


def test_verdict_thresholds_follow_from_the_numpy_construction():
    gaps, kls = [], []
    for seed in (0, 1):
        images, latents = construction((-0.25, 0.25), seed)
        target = np_normalized_log(np_band_power(images, False) * np.arange(1, 17)).mean(0)
        for latent in latents.values():
            row = np_normalized_log(np_band_power(latent, False)).mean(0)
            gaps.append(abs(np_slope(row) - np_slope(target)))
            kls.append(np_kl(target, row))
    # the smallest boundary values, rounded down (to 0.05 for the slope, 0.005 for the KL)
    assert VERDICT_SLOPE_TOLERANCE == pytest.approx(math.floor(min(gaps) / 0.05) * 0.05)
    assert VERDICT_KL_THRESHOLD == pytest.approx(math.floor(min(kls) / 0.005) * 0.005)
    assert 0.15 < min(gaps) <= 0.26 and max(gaps) < 0.26  # log(1 + s) compresses the gap a little below |e|


@pytest.mark.parametrize(
    ("exponent_error", "verdict"),
    [(-0.6, "over-smoothed"), (-0.1, "matched"), (0.0, "matched"), (0.1, "matched"), (0.6, "over-noisy")],
)
def test_verdict_on_numpy_fields_with_a_known_exponent_error(exponent_error, verdict):
    images, latents = construction((exponent_error,), seed=7)
    summary = spectrum_summary(
        torch.from_numpy(images).float().clamp(-1, 1), torch.from_numpy(latents[exponent_error]).float()
    )
    assert summary["verdict"] == verdict


def test_the_authors_reference_curves_reproduce_the_spec_ordering_under_the_derived_thresholds():
    # The authors' figure data (normalised 16-bin curves, DC kept, posterior samples; SPEC.md "Reference spectra")
    target = np.array([0.1961, 0.156, 0.1099, 0.0977, 0.0677, 0.0617, 0.0472, 0.0404, 0.0358, 0.034, 0.0313,
                       0.0278, 0.0266, 0.0238, 0.0229, 0.0212])  # fmt: skip
    curves = {
        "sd_vae": [0.1671, 0.1312, 0.0833, 0.071, 0.0587, 0.0538, 0.0513, 0.0476, 0.046, 0.0455, 0.0438, 0.0419,
                   0.0408, 0.0398, 0.0393, 0.0389],
        "scale_equivariant": [0.1666, 0.1385, 0.1134, 0.0955, 0.0789, 0.0685, 0.062, 0.0493, 0.0438, 0.0393,
                              0.0283, 0.0494, 0.0175, 0.0163, 0.0159, 0.017],
        "dsm": [0.1638, 0.1471, 0.1202, 0.1037, 0.0774, 0.0677, 0.0529, 0.0415, 0.0377, 0.0337, 0.029, 0.0306,
                0.0258, 0.0242, 0.023, 0.0216],
        "esm": [0.1658, 0.1483, 0.113, 0.0985, 0.0754, 0.0652, 0.0531, 0.0446, 0.0387, 0.0363, 0.0329, 0.0295,
                0.026, 0.0249, 0.0246, 0.0233],
    }  # fmt: skip
    target_slope = np_slope(target)
    assert target_slope == pytest.approx(-0.89, abs=0.01)
    verdicts, kls = {}, {}
    for name, curve in curves.items():
        curve = np.asarray(curve)
        kls[name] = np_kl(target, curve)
        verdicts[name] = spectrum_verdict(np_slope(curve), target_slope, spectral_kl=kls[name])
    assert verdicts["sd_vae"] == "over-noisy"
    assert verdicts["esm"] == verdicts["dsm"] == "matched"
    assert verdicts["scale_equivariant"] == "over-smoothed"  # right slope, bent curve (KL 0.020)
    assert sorted(kls, key=kls.get) == ["esm", "dsm", "scale_equivariant", "sd_vae"]  # SPEC's KL ordering


def test_spectrum_verdict_rule():
    assert spectrum_verdict(-0.5, -0.89, slope_tolerance=0.2) == "over-noisy"
    assert spectrum_verdict(-1.2, -0.89, slope_tolerance=0.2) == "over-smoothed"
    assert spectrum_verdict(-0.8, -0.89, slope_tolerance=0.2, spectral_kl=0.01, kl_threshold=0.015) == "matched"
    assert spectrum_verdict(-0.8, -0.89, slope_tolerance=0.2, spectral_kl=0.02, kl_threshold=0.015) == "over-noisy"
    assert spectrum_verdict(-0.95, -0.89, slope_tolerance=0.2, spectral_kl=0.02, kl_threshold=0.015) == (
        "over-smoothed"
    )
    with pytest.raises(ValueError, match="slope_tolerance"):
        spectrum_verdict(0.0, -1.0, slope_tolerance=-1)
    with pytest.raises(ValueError, match="kl_threshold"):
        spectrum_verdict(0.0, -1.0, kl_threshold=-1)


def test_white_noise_latents_are_over_noisy_and_blurred_latents_over_smoothed(natural_images):
    generator = torch.Generator().manual_seed(2)
    noise = torch.randn(4, 4, 32, 32, generator=generator)
    assert spectrum_summary(natural_images, noise)["verdict"] == "over-noisy"
    taps = gaussian_kernel_1d(13, 3.0).float()
    padded = F.pad(torch.randn(16, 1, 32, 32, generator=generator), (6, 6, 6, 6), mode="reflect")
    blurred = F.conv2d(padded, (taps[:, None] * taps[None, :])[None, None]).reshape(4, 4, 32, 32)
    summary = spectrum_summary(natural_images, blurred)
    assert summary["verdict"] == "over-smoothed" and summary["latent_slope"] < summary["target_slope"] - 1.0


# ------------------------------------------------------------------------------------------------
# Posterior samples, running statistics


class _Posterior:
    def __init__(self, mean, std):
        self.mean, self.std = mean, std


def test_posterior_latents_sample_is_mean_plus_std_times_seeded_noise():
    mean, std = torch.randn(2, 4, 8, 8), torch.rand(2, 4, 8, 8) + 0.1
    sample, returned_std = posterior_latents(_Posterior(mean, std), "sample", torch.Generator().manual_seed(5))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(sample, mean + std * noise)
    torch.testing.assert_close(returned_std, std)
    torch.testing.assert_close(posterior_latents(_Posterior(mean, std), "mean")[0], mean)
    with pytest.raises(ValueError, match="latents"):
        posterior_latents(_Posterior(mean, std), "mode")


def test_running_statistics_over_batches_equal_numpy_over_all_images_with_constant_state():
    rng = np.random.default_rng(3)
    images = np.clip(np_field(rng, 12, 3, 32, 2.0), -1, 1).astype(np.float32)
    latents = np_field(rng, 12, 4, 32, 1.0).astype(np.float32)
    std = rng.uniform(0.1, 1.0, (12, 4, 32, 32)).astype(np.float32)
    stats = SpectrumStatistics()
    sizes = []
    for start in range(0, 12, 4):
        part = slice(start, start + 4)
        stats.update(torch.from_numpy(images[part]), torch.from_numpy(latents[part]), torch.from_numpy(std[part]))
        sizes.append(stats.state_nbytes())
    assert sizes[0] == sizes[-1] > 0  # nothing grows with the number of images
    result = stats.result()
    rows = np_normalized_log(np_band_power(latents.astype(np.float64), False))
    np.testing.assert_allclose(result["spectra"]["latent"]["mean"], rows.mean(0), rtol=1e-4)
    np.testing.assert_allclose(result["spectra"]["latent"]["std"], rows.std(0), rtol=1e-3, atol=1e-7)
    assert result["posterior_std"]["mean"] == pytest.approx(float(std.astype(np.float64).mean()), rel=1e-6)
    np.testing.assert_allclose(result["posterior_std"]["per_channel"], std.mean(axis=(0, 2, 3)), rtol=1e-5)
    assert result["num_samples"] == 12
    with pytest.raises(ValueError, match="no batch"):
        SpectrumStatistics().result()


# ------------------------------------------------------------------------------------------------
# Channels, RMSC, DSM view


def test_channel_spectra_equal_per_channel_scipy_spectra():
    x = np.random.default_rng(4).standard_normal((2, 3, 16, 16)) + 1.0
    raw = channel_spectra(torch.from_numpy(x), normalized=False)  # authors' convention: DC kept
    for channel in range(3):
        np.testing.assert_allclose(
            raw[:, channel].numpy(), np_band_power(x[:, channel : channel + 1], False), rtol=1e-9
        )
    torch.testing.assert_close(channel_spectra(torch.from_numpy(x)).sum(-1), torch.ones(2, 3, dtype=torch.float64))


def test_rms_spatial_contrast_closed_forms():
    constant = torch.ones(1, 8, 4, 4)
    assert float(rms_spatial_contrast(constant)) == pytest.approx(0.0, abs=1e-6)
    # half the tokens e1, half -e1: grid mean 0, every token at distance 1 -> RMSC 1
    alternating = torch.zeros(1, 3, 4, 4)
    alternating[0, 0] = torch.tensor([1.0, -1.0]).repeat(8).reshape(4, 4)
    assert float(rms_spatial_contrast(alternating)) == pytest.approx(1.0, abs=1e-6)
    # two orthogonal unit tokens, half each: mean (1/2, 1/2), distance^2 = 1/2
    orthogonal = torch.zeros(1, 2, 2, 2)
    orthogonal[0, 0, 0], orthogonal[0, 1, 1] = 1.0, 1.0
    assert float(rms_spatial_contrast(orthogonal)) == pytest.approx(0.5**0.5, abs=1e-6)
    # invariant to per-token scale
    x = torch.randn(2, 5, 6, 6)
    torch.testing.assert_close(rms_spatial_contrast(x * (torch.rand(2, 1, 6, 6) * 5 + 0.1)), rms_spatial_contrast(x))


def test_lowpass_errors_are_zero_for_a_decoder_that_commutes_with_the_lowpass():
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = images.clone()  # identity "encoder": latents equal images (both 32 x 32)
    errors = lowpass_reconstruction_errors(lambda z: z, images, latents, levels=(0, 8, 12))
    assert sorted(errors) == [0, 8, 12]
    for value in errors.values():
        assert float(value.max()) < 1e-10
    errors = lowpass_reconstruction_errors(lambda z: z + 0.1, images, latents, levels=(8,))
    torch.testing.assert_close(errors[8], torch.full((2,), 0.01), atol=1e-6, rtol=0)
