"""Diagnostics: slope recovery on synthetic 1/f^alpha fields, the verdict on reference latents, RMSC, DSM errors."""

import pytest
import torch
import torch.nn.functional as F

from diffusers_spectrum.evaluation.diagnostics import (
    channel_spectra,
    flatten_spectrum,
    lowpass_reconstruction_errors,
    power_law_field,
    rms_spatial_contrast,
    spectrum_slope,
    spectrum_summary,
    spectrum_verdict,
)
from diffusers_spectrum.spectral import gaussian_kernel_1d, radial_spectrum


SLOPE_TOLERANCE = 0.15  # stated tolerance for the recovered exponent on a 64 x 64 grid


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_slope_of_synthetic_power_law_field_recovers_alpha(alpha):
    generator = torch.Generator().manual_seed(1)
    field = power_law_field(8, 3, 64, 64, alpha, generator=generator)
    slope = spectrum_slope(radial_spectrum(field).mean(0), frequencies="center")
    assert abs(float(slope) + alpha) < SLOPE_TOLERANCE


def test_flatten_spectrum_multiplies_band_power_by_index_power_delta():
    x = torch.randn(2, 3, 32, 32)
    flattened = flatten_spectrum(x, delta=1.0)
    expected = radial_spectrum(x) * torch.arange(1, 17, dtype=torch.float32)
    torch.testing.assert_close(radial_spectrum(flattened), expected, rtol=1e-4, atol=1e-6)


def _blurred_noise(latent_size: int, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(4, 4, latent_size, latent_size, generator=generator)
    taps = gaussian_kernel_1d(13, 3.0).float()
    padded = F.pad(noise.reshape(16, 1, latent_size, latent_size), (6, 6, 6, 6), mode="reflect")
    return F.conv2d(padded, (taps[:, None] * taps[None, :])[None, None]).reshape(4, 4, latent_size, latent_size)


def test_verdict_is_over_noisy_for_white_noise_latents(natural_images):
    latents = torch.randn(4, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    summary = spectrum_summary(natural_images, latents)
    assert summary["verdict"] == "over-noisy"
    assert abs(summary["latent_slope"]) < 0.1  # white noise: flat normalised log spectrum


def test_verdict_is_over_smoothed_for_heavily_blurred_latents(natural_images):
    summary = spectrum_summary(natural_images, _blurred_noise(32, torch.Generator().manual_seed(3)))
    assert summary["verdict"] == "over-smoothed"
    assert summary["latent_slope"] < summary["target_slope"] - 1.0


def test_verdict_is_matched_for_latents_following_the_delta1_target(natural_images):
    # a 32-wide latent grid: ESM resizes bicubically without blur, so the flattened resize is the target exactly
    resized = F.interpolate(natural_images, size=(32, 32), mode="bicubic", align_corners=False)
    summary = spectrum_summary(natural_images, flatten_spectrum(resized, delta=1.0))
    assert summary["verdict"] == "matched"
    assert float(summary["spectral_kl_delta1"].max()) < 1e-5
    assert summary["spectral_kl_delta0"].min() > 0.01  # the same latents are far from the unflattened image law
    # natural photos: the image's own law is steeper than the flattened target by about delta = 1
    assert -2.2 < summary["image_slope"] < -1.5 and summary["image_slope"] < summary["target_slope"]


def test_spectrum_verdict_thresholds_and_reference_ordering():
    # the authors' reference slopes (SPEC.md): target -0.89; SD-VAE -0.55; SE -0.91; ESM -0.82; DSM -0.85
    assert spectrum_verdict(-0.55, -0.89) == "over-noisy"
    assert [spectrum_verdict(s, -0.89) for s in (-0.91, -0.82, -0.85)] == ["matched"] * 3
    assert spectrum_verdict(-1.2, -0.89) == "over-smoothed"
    with pytest.raises(ValueError, match="slope_tolerance"):
        spectrum_verdict(0.0, -1.0, slope_tolerance=-1)
    # A matching slope with a bent curve (high spectral KL) is not matched: the slope gap's sign names the direction.
    assert spectrum_verdict(-1.60, -1.47, spectral_kl=0.16) == "over-smoothed"
    assert spectrum_verdict(-1.40, -1.47, spectral_kl=0.16) == "over-noisy"
    assert spectrum_verdict(-1.53, -1.47, spectral_kl=0.02) == "matched"


def test_channel_spectra_of_one_channel_input_equals_radial_spectrum():
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(channel_spectra(x, normalized=False)[:, 0], radial_spectrum(x))
    stacked = torch.cat([x, 3 * x], dim=1)
    raw = channel_spectra(stacked, normalized=False)
    torch.testing.assert_close(raw[:, 1], 9 * raw[:, 0])
    torch.testing.assert_close(channel_spectra(stacked).sum(-1), torch.ones(2, 2))


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

    def decode(z):
        return z

    errors = lowpass_reconstruction_errors(decode, images, latents, levels=(0, 8, 12))
    assert sorted(errors) == [0, 8, 12]
    for value in errors.values():
        assert float(value.max()) < 1e-10

    def noisy_decode(z):
        return z + 0.1

    errors = lowpass_reconstruction_errors(noisy_decode, images, latents, levels=(8,))
    torch.testing.assert_close(errors[8], torch.full((2,), 0.01), atol=1e-6, rtol=0)
