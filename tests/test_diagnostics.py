"""Diagnostics against independent constructions: numpy power-law fields, spectra from scipy.fft, the verdict
tolerance re-derived in numpy, the verdict's statistics against scipy's Wasserstein distance, and the authors' own
reference curves (their figure data, Ning et al. 2026)."""

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from scipy.fft import dctn, idctn

from diffusers_spectrum.evaluation.diagnostics import (
    VERDICT_TOLERANCE,
    CurveBootstrap,
    SpectrumStatistics,
    channel_spectra,
    curve_statistics,
    decide_verdict,
    flatten_spectrum,
    lowpass_reconstruction_errors,
    normalized_log_spectrum,
    posterior_latents,
    rms_spatial_contrast,
    spectrum_slope,
    spectrum_summary,
    spectrum_verdict,
    verdict_from_moments,
)
from diffusers_spectrum.spectral import gaussian_kernel_1d, radial_spectrum


N_BINS = 16
EPS = 1e-8


# ------------------------------------------------------------------------------------------------
# Independent numpy references (written from the definitions of Ning et al. 2026 and the authors' utils_DCT.py)


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
    """The construction of docs/METHODS.md#spectral-verdict: r^-2 images at pixel std 0.5, and for each exponent
    error e an independent latent field whose expected band power is the delta = 1 target's times (k + 1)^e."""
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
    np.testing.assert_allclose(summary["spectra"]["latent"]["std"], latent_rows.std(0, ddof=1), rtol=1e-3, atol=1e-7)
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
# The verdict: its statistics, its tolerance (derived in numpy), and its behaviour on other constructions


def np_curve_statistics(latent: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Centroid gap as the signed area between the cumulative curves, and W1 from scipy, in u = ln(k + 1)."""
    u = np.log(np.arange(1, len(latent) + 1))
    signed_area = float(((np.cumsum(target) - np.cumsum(latent))[:-1] * np.diff(u)).sum())
    return signed_area, float(scipy.stats.wasserstein_distance(u, u, latent, target))


def test_curve_statistics_equal_the_cdf_area_and_scipys_wasserstein_distance():
    rng = np.random.default_rng(11)
    for _ in range(5):
        latent, target = rng.dirichlet(np.ones(16)), rng.dirichlet(np.ones(16))
        stats = curve_statistics(torch.from_numpy(latent), torch.from_numpy(target))
        area, w1 = np_curve_statistics(latent, target)
        u = np.log(np.arange(1, 17))
        assert float(stats["centroid_gap"]) == pytest.approx(float((u * (latent - target)).sum()), abs=1e-12)
        assert float(stats["centroid_gap"]) == pytest.approx(area, abs=1e-12)  # the two readings are one number
        assert float(stats["w1"]) == pytest.approx(w1, abs=1e-12)
        assert float(stats["excess_high"] - stats["excess_low"]) == pytest.approx(area, abs=1e-12)


def test_verdict_tolerance_follows_from_the_numpy_construction():
    gaps = []
    for size in (8, 16, 32):
        images, latents = construction((-0.25, 0.25), seed=0, size=size, count=262144 // size**2)
        target = np_normalized_log(np_band_power(images, False) * np.arange(1, 17)).mean(0)
        for latent in latents.values():
            area, w1 = np_curve_statistics(np_normalized_log(np_band_power(latent, False)).mean(0), target)
            assert w1 == pytest.approx(abs(area), rel=1e-3)  # a pure power-law tilt: the curves do not cross
            gaps.append(abs(area))
    assert VERDICT_TOLERANCE == pytest.approx(math.floor(min(gaps) / 0.05) * 0.05)  # smallest, rounded down
    assert 0.1 <= min(gaps) < 0.15 and max(gaps) < 0.25


@pytest.mark.parametrize(
    ("exponent_error", "verdict"),
    [(-0.6, "over-smoothed"), (-0.4, "over-smoothed"), (0.0, "matched"), (0.4, "over-noisy"), (0.6, "over-noisy")],
)
def test_verdict_on_numpy_fields_with_a_known_exponent_error_in_both_views(exponent_error, verdict):
    images, latents = construction((exponent_error,), seed=7)
    summary = spectrum_summary(
        torch.from_numpy(images).float().clamp(-1, 1), torch.from_numpy(latents[exponent_error]).float()
    )
    assert summary["verdict"] == verdict
    assert {name: view["verdict"] for name, view in summary["verdicts"].items()} == {
        "authors": verdict,
        "dc_free": verdict,
    }


def hump_fields(band: int, seed: int = 3, size: int = 32, count: int = 64, height: float = 3.0):
    """r^-2 images and latents whose band power is the delta = 1 target's times a bump (x e^height at `band`)."""
    rng = np.random.default_rng(seed)
    raw = np_field(rng, count, 3, size, 2.0)
    scale = 0.5 / raw.std()
    u = np.log(np.arange(1, 17))
    bump = np.exp(height * np.exp(-((u - u[band]) ** 2) / (2 * 0.3**2)))  # (16,) band power factor
    bands = np_bands(size, size)
    radius = np.maximum(np.hypot(*np.meshgrid(np.arange(size), np.arange(size), indexing="ij")), 1.0)
    amplitude = radius**-1.0 * np.sqrt((bands + 1.0) * bump[bands])
    latents = idctn(rng.standard_normal((count, 4, size, size)) * amplitude, axes=(-2, -1), norm="ortho") * scale
    return raw * scale, latents


@pytest.mark.parametrize("band", [4, 5])
def test_a_hump_with_the_targets_slope_is_not_matched(band):
    images, latents = hump_fields(band)
    target = np_normalized_log(np_band_power(images, False) * np.arange(1, 17)).mean(0)
    latent = np_normalized_log(np_band_power(latents, False)).mean(0)
    assert abs(np_slope(latent) - np_slope(target)) < 0.15  # the slope cannot see it
    summary = spectrum_summary(torch.from_numpy(images).float().clamp(-1, 1), torch.from_numpy(latents).float())
    assert summary["verdict"] != "matched"
    if band == 4:  # mass displaced both ways (to the hump from the DC side and from the top): mis-shaped
        assert summary["verdict"] == "mis-shaped"
        view = summary["verdicts"]["authors"]
        assert view["excess_high"]["lo"] > VERDICT_TOLERANCE / 2 and view["excess_low"]["lo"] > VERDICT_TOLERANCE / 2


def per_image_curves(exponent_error: float, count: int, seed: int):
    images, latents = construction((exponent_error,), seed=seed, count=count)
    target = np_normalized_log(np_band_power(images, False) * np.arange(1, 17))
    return torch.from_numpy(np_normalized_log(np_band_power(latents[exponent_error], False))), torch.from_numpy(target)


def test_verdict_intervals_shrink_with_the_number_of_images():
    widths = {}
    for count in (16, 256):
        latent, target = per_image_curves(0.15, count, seed=5)
        report = spectrum_verdict(latent, target)
        widths[count] = report["centroid_gap"]["hi"] - report["centroid_gap"]["lo"]
        assert report["centroid_gap"]["lo"] <= report["centroid_gap"]["estimate"] <= report["centroid_gap"]["hi"]
    assert widths[256] < widths[16] / 2.5  # ~ 1 / sqrt(n): a factor 4 expected
    # a small tilt (e = 0.05, well inside the exponent tolerance) is matched once the interval is narrow
    assert spectrum_verdict(*per_image_curves(0.05, 256, seed=5))["verdict"] == "matched"


def test_streaming_poisson_bootstrap_agrees_with_the_plain_bootstrap():
    latent, target = per_image_curves(0.3, 128, seed=6)
    stream = CurveBootstrap(16, replicates=2000, seed=1)
    for part in range(0, 128, 32):
        stream.update(latent[part : part + 32], target[part : part + 32])
    streamed, plain = stream.report(), spectrum_verdict(latent, target, n_resamples=2000)
    assert streamed["verdict"] == plain["verdict"] == "over-noisy"
    for key in ("centroid_gap", "w1"):
        assert streamed[key]["estimate"] == pytest.approx(plain[key]["estimate"], abs=1e-12)
        width = plain[key]["hi"] - plain[key]["lo"]
        assert streamed[key]["lo"] == pytest.approx(plain[key]["lo"], abs=0.15 * width)
        assert streamed[key]["hi"] == pytest.approx(plain[key]["hi"], abs=0.15 * width)


def test_streaming_bootstrap_does_not_depend_on_the_batching():
    latent, target = per_image_curves(0.2, 24, seed=4)
    reports = []
    for size in (5, 24):
        stream = CurveBootstrap(16, replicates=200, seed=3)
        for part in range(0, 24, size):
            stream.update(latent[part : part + size], target[part : part + size])
        reports.append(stream.report())
    for key in ("centroid_gap", "w1"):  # the same draws per image: equal up to the summation order
        assert reports[0][key] == pytest.approx(reports[1][key], rel=1e-12, abs=1e-14)


def test_verdict_from_moments_is_conservative():
    latent, target = per_image_curves(0.3, 128, seed=8)
    plain = spectrum_verdict(latent, target)
    moments = verdict_from_moments(latent.mean(0), latent.std(0), target.mean(0), target.std(0), 128)
    assert moments["centroid_gap"]["estimate"] == pytest.approx(plain["centroid_gap"]["estimate"], abs=1e-12)
    for key in ("centroid_gap", "excess_high", "excess_low", "w1"):  # bounds at least as wide as the bootstrap's
        assert moments[key]["lo"] <= plain[key]["lo"] + 1e-12 and moments[key]["hi"] >= plain[key]["hi"] - 1e-12
    assert moments["verdict"] in ("over-noisy", "undetermined")


def test_decide_verdict_rule():
    def intervals(gap, high, low, w1):
        return {"centroid_gap": gap, "excess_high": high, "excess_low": low, "w1": w1}

    assert decide_verdict(intervals((-0.02, 0.03), (0.0, 0.03), (0.0, 0.02), (0.01, 0.05)), 0.1) == "matched"
    assert decide_verdict(intervals((0.1, 0.3), (0.1, 0.3), (0.0, 0.01), (0.1, 0.3)), 0.1) == "over-noisy"
    assert decide_verdict(intervals((-0.3, -0.1), (0.0, 0.01), (0.1, 0.3), (0.1, 0.3)), 0.1) == "over-smoothed"
    assert decide_verdict(intervals((-0.02, 0.02), (0.06, 0.1), (0.06, 0.1), (0.12, 0.2)), 0.1) == "mis-shaped"
    assert decide_verdict(intervals((-0.05, 0.2), (0.0, 0.2), (0.0, 0.05), (0.02, 0.2)), 0.1) == "undetermined"
    with pytest.raises(ValueError, match="tolerance"):
        decide_verdict(intervals((0, 0), (0, 0), (0, 0), (0, 0)), 0.0)


def test_the_authors_reference_curves_under_the_verdict():
    # The authors' figure data (normalised 16-bin curves, DC kept, posterior samples; Ning et al. 2026),
    # taken as exact mean curves (their per-image curves are not published: point intervals)
    target = np.array(
        [
            0.1961,
            0.156,
            0.1099,
            0.0977,
            0.0677,
            0.0617,
            0.0472,
            0.0404,
            0.0358,
            0.034,
            0.0313,
            0.0278,
            0.0266,
            0.0238,
            0.0229,
            0.0212,
        ]
    )
    curves = {
        "sd_vae": [
            0.1671,
            0.1312,
            0.0833,
            0.071,
            0.0587,
            0.0538,
            0.0513,
            0.0476,
            0.046,
            0.0455,
            0.0438,
            0.0419,
            0.0408,
            0.0398,
            0.0393,
            0.0389,
        ],
        "dsm": [
            0.1638,
            0.1471,
            0.1202,
            0.1037,
            0.0774,
            0.0677,
            0.0529,
            0.0415,
            0.0377,
            0.0337,
            0.029,
            0.0306,
            0.0258,
            0.0242,
            0.023,
            0.0216,
        ],
        "esm": [
            0.1658,
            0.1483,
            0.113,
            0.0985,
            0.0754,
            0.0652,
            0.0531,
            0.0446,
            0.0387,
            0.0363,
            0.0329,
            0.0295,
            0.026,
            0.0249,
            0.0246,
            0.0233,
        ],
    }
    target = torch.tensor(target / target.sum(), dtype=torch.float64)
    verdicts = {}
    for name, curve in curves.items():
        curve = torch.tensor(curve, dtype=torch.float64)
        stats = curve_statistics(curve / curve.sum(), target)
        verdicts[name] = decide_verdict({key: (float(v), float(v)) for key, v in stats.items()})
    assert verdicts == {"sd_vae": "over-noisy", "dsm": "matched", "esm": "matched"}  # as the paper reads them


def test_dc_free_band_zero_of_an_8x8_grid_is_left_out_not_fitted_at_log_1e9():
    rng = np.random.default_rng(9)
    latents = torch.from_numpy(np_field(rng, 6, 4, 8, 1.0) + 0.3)
    curve = normalized_log_spectrum(latents, convention="dc_free")  # band 0 of 8 x 8 is the DC cell alone
    assert bool((curve[:, 0] == 0).all())
    torch.testing.assert_close(curve.sum(-1), torch.ones(6, dtype=torch.float64))
    mean = curve.mean(0).numpy()
    expected = np.polyfit(np.log(np.arange(2, 17)), np.log(mean[1:]), 1)[0]  # bands 1..15 only
    assert float(spectrum_slope(curve.mean(0))) == pytest.approx(expected, abs=1e-9)
    images = torch.from_numpy(np.clip(np_field(rng, 6, 3, 32, 2.0), -1, 1)).float()
    summary = spectrum_summary(images, latents.float(), convention="dc_free")
    assert summary["spectra"]["latent"]["mean"][0] == 0 and summary["spectra"]["target"]["mean"][0] == 0
    assert summary["verdicts"]["dc_free"]["latent_curve"][0] == 0 and math.isfinite(summary["latent_slope"])
    assert summary["verdicts"]["authors"]["latent_curve"][0] > 0.01  # the DC-kept view keeps the DC band


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
    np.testing.assert_allclose(result["spectra"]["latent"]["std"], rows.std(0, ddof=1), rtol=1e-3, atol=1e-7)
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
