"""ESM against an independent float64 construction of the authors' definition (numpy / scipy only: scipy.ndimage blur,
Keys bicubic written from its formula, scipy.fft.dctn, numpy binning), including their power floor, their L2 variant,
their blur rule and their analysis convention (DC kept)."""

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F
from scipy import ndimage

from diffusers_spectrum.spectral import esm_band_powers, esm_loss, esm_spectra, idct_2d, spectral_kl


# ------------------------------------------------------------------------------------------------ reference
def _keys_cubic(x: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.75, PyTorch's bicubic)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``(out, in)`` bicubic resize, align_corners=False, no antialias, edge samples repeated at the border."""
    matrix = np.zeros((size_out, size_in))
    for i in range(size_out):
        source = (i + 0.5) * size_in / size_out - 0.5
        base = int(np.floor(source))
        for k in range(-1, 3):
            matrix[i, min(max(base + k, 0), size_in - 1)] += _keys_cubic(source - (base + k))
    return matrix


def _authors_bands(x: np.ndarray, n_bins: int, floor: float, remove_dc: bool) -> np.ndarray:
    """``(B, C, h, w)`` -> ``(B, n_bins)``: mean_c DCT^2 clamped at ``floor``, DC zeroed if asked, radial means."""
    power = np.maximum((scipy.fft.dctn(x, axes=(-2, -1), norm="ortho") ** 2).mean(axis=1), floor)
    if remove_dc:
        power[:, 0, 0] = 0
    h, w = power.shape[-2:]
    u, v = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    band = np.minimum(np.floor(np.sqrt(u**2 + v**2) / np.sqrt((h - 1) ** 2 + (w - 1) ** 2) * n_bins), n_bins - 1)
    return np.stack([power[:, band == k].mean(-1) for k in range(n_bins)], -1)


def reference_esm(
    images, latents, delta, n_bins=16, blur=None, eps=1e-8, loss_type="kl", remove_dc=True, floor=None, spectra=False
):
    """ESM as the authors' ``latent_spectral_reg_dct`` (``utils_DCT.py``) per sample in float64; ``floor=None``
    uses ``eps``."""
    x = images.detach().double().numpy()
    z = latents.detach().double().numpy()
    h, w = z.shape[-2:]
    if (h != 32) if blur is None else blur:  # the authors test the latent height: `if hz == 32` skips the blur
        taps = np.exp(-((np.arange(7) - 3) ** 2) / (2 * 1.2**2))
        taps = taps / taps.sum()
        x = ndimage.correlate1d(x, taps, axis=-2, mode="constant")
        x = ndimage.correlate1d(x, taps, axis=-1, mode="constant")
    x = _bicubic_matrix(x.shape[-2], h) @ x @ _bicubic_matrix(x.shape[-1], w).T  # (B, 3, h, w)
    floor = eps if floor is None else floor
    s_x = _authors_bands(x, n_bins, floor, remove_dc) * np.arange(1, n_bins + 1) ** delta
    s_z = _authors_bands(z, n_bins, floor, remove_dc)

    def normalise(s):
        logs = np.clip(np.log(s + 1 + eps), 0, None)
        return logs / (logs.sum(-1, keepdims=True) + eps)

    p, q = normalise(s_x), normalise(s_z)
    if spectra:
        return p, q
    if loss_type == "l2":
        return ((q - p) ** 2).mean(-1)  # F.mse_loss(s_z, s_x) is the batch mean of this
    return (p * (np.log(p + eps) - np.log(q + eps))).sum(-1)


def _latents_like(images, size, channels, kind, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    if kind == "random":
        return scale * torch.randn(images.shape[0], channels, size, size, generator=generator)
    resized = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)
    noise = 0.1 * torch.randn(images.shape[0], channels, size, size, generator=generator)
    return scale * (resized.mean(1, keepdim=True).repeat(1, channels, 1, 1) + noise)


# ------------------------------------------------------------------------------------------------ the loss
@pytest.mark.parametrize("size, channels", [(16, 16), (32, 4), (64, 4)])
@pytest.mark.parametrize("kind", ["random", "natural"])
def test_esm_loss_matches_independent_reference(natural_images, size, channels, kind):
    latents = _latents_like(natural_images, size, channels, kind)
    for delta in (0.0, 1.0):
        expected = reference_esm(natural_images, latents, delta)
        assert float(esm_loss(natural_images, latents, delta=delta)) == pytest.approx(expected.mean(), abs=1e-5)
        np.testing.assert_allclose(spectral_kl(natural_images, latents, delta=delta).numpy(), expected, atol=1e-5)


def test_l2_variant_is_the_authors_mse_mean_over_bins_and_batch():
    images = torch.rand(3, 3, 128, 96) * 2 - 1
    latents = torch.randn(3, 4, 32, 24)
    expected = reference_esm(images, latents, 1.0, blur=True, loss_type="l2")
    got = esm_loss(images, latents, delta=1.0, blur=True, loss_type="l2")
    assert float(got) == pytest.approx(expected.mean(), rel=1e-4)
    p, q = reference_esm(images, latents, 1.0, blur=True, spectra=True)
    kl = float(esm_loss(images, latents, delta=1.0, blur=True))
    assert float(got) == pytest.approx(((q - p) ** 2).sum(-1).mean() / 16, rel=1e-4)  # not the sum over bins
    assert kl != pytest.approx(float(got), rel=0.1)


@pytest.mark.parametrize("latent_hw, blurred", [((32, 24), False), ((24, 32), True), ((20, 24), True)])
def test_blur_follows_the_authors_latent_height_rule(latent_hw, blurred):
    images = torch.rand(2, 3, 128, 96) * 2 - 1
    latents = torch.randn(2, 4, *latent_hw)
    expected = reference_esm(images, latents, 1.0, blur=blurred)
    other = reference_esm(images, latents, 1.0, blur=not blurred)
    got = float(esm_loss(images, latents))
    assert got == pytest.approx(expected.mean(), abs=1e-5)
    assert abs(other.mean() - expected.mean()) > 1e-4  # the two branches are distinguishable here
    forced = float(esm_loss(images, latents, blur=not blurred))
    assert forced == pytest.approx(other.mean(), abs=1e-5)


def _power_law_latents(alpha: float, std: float, shape=(4, 4, 32, 32), seed: int = 0) -> torch.Tensor:
    """A field whose DCT power falls as 1/r^alpha, made with numpy / scipy, scaled to the given std."""
    u, v = np.meshgrid(np.arange(shape[-2]), np.arange(shape[-1]), indexing="ij")
    radius = np.maximum(np.sqrt(u**2 + v**2), 1.0)
    coefficients = np.random.default_rng(seed).standard_normal(shape) * radius ** (-alpha / 2)
    field = scipy.fft.idctn(coefficients, axes=(-2, -1), norm="ortho")
    return torch.from_numpy(field / field.std() * std).float()


@pytest.mark.parametrize("kind", ["power_law", "natural"])
def test_power_floor_matches_the_authors_for_latents_of_tiny_scale(natural_images, kind):
    # std 1e-3: DCT powers ~1e-6 on average; a steep (1/f^4) field puts its high bands far below the 1e-8 floor.
    if kind == "power_law":
        latents = _power_law_latents(4.0, 1e-3)
    else:
        latents = _latents_like(natural_images, 32, 4, "natural")
        latents = latents / latents.std() * 1e-3
    expected = reference_esm(natural_images, latents, 1.0)
    got = spectral_kl(natural_images, latents, delta=1.0).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert float(esm_loss(natural_images, latents)) == pytest.approx(expected.mean(), rel=1e-4)
    if kind == "power_law":  # without the floor the loss is measurably different: the test can tell them apart
        unclamped = reference_esm(natural_images, latents, 1.0, floor=0.0)
        assert np.abs(unclamped / expected - 1).max() > 1e-2


def test_band_powers_are_floored_per_cell_before_binning():
    coefficients = torch.zeros(2, 4, 8, 8)
    coefficients[:, :, 0, 0] = 1.0  # a constant map: DCT power 1 in the DC cell, 0 elsewhere
    latents = idct_2d(coefficients)
    images = torch.zeros(2, 3, 16, 16)
    n0 = _cells_in_band0(8, 8, 4)
    _, removed = esm_band_powers(images, latents, n_bins=4)
    _, kept = esm_band_powers(images, latents, n_bins=4, remove_dc=False)
    # Every empty cell is raised to the floor; the DC is zeroed after the floor (remove_dc) or kept.
    np.testing.assert_allclose(removed[:, 1:].numpy(), 1e-8, rtol=1e-4)
    np.testing.assert_allclose(removed[:, 0].numpy(), (n0 - 1) * 1e-8 / n0, rtol=1e-4)
    np.testing.assert_allclose(kept[:, 0].numpy(), (1 + (n0 - 1) * 1e-8) / n0, rtol=1e-6)


def _cells_in_band0(h, w, n_bins):
    u, v = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return int((np.floor(np.sqrt(u**2 + v**2) / np.sqrt((h - 1) ** 2 + (w - 1) ** 2) * n_bins) == 0).sum())


# ------------------------------------------------------------------------------------------------ analysis convention
def test_analysis_convention_keeps_dc_like_the_authors_spectrum_distribution(natural_images):
    latents = _latents_like(natural_images, 32, 4, "natural") + 0.5  # a non-zero mean, so the DC matters
    for delta in (0.0, 1.0):
        expected = reference_esm(natural_images, latents, delta, remove_dc=False)
        got = spectral_kl(natural_images, latents, delta=delta, remove_dc=False).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)
        p, q = reference_esm(natural_images, latents, delta, remove_dc=False, spectra=True)
        target, latent = esm_spectra(natural_images, latents, delta=delta, remove_dc=False)
        np.testing.assert_allclose(target.numpy(), p, atol=1e-6)
        np.testing.assert_allclose(latent.numpy(), q, atol=1e-6)
    dc_free = reference_esm(natural_images, latents, 1.0)
    assert np.abs(dc_free - reference_esm(natural_images, latents, 1.0, remove_dc=False)).max() > 1e-3


# ------------------------------------------------------------------------------------------------ behaviour
def test_esm_loss_is_zero_when_latent_is_the_resized_image_with_delta_zero(natural_images):
    resized = F.interpolate(natural_images, size=(32, 32), mode="bicubic", align_corners=False)  # no blur at 32
    assert float(esm_loss(natural_images, resized, delta=0.0)) < 1e-6
    assert float(esm_loss(natural_images, resized, delta=1.0)) > 1e-3


def test_esm_loss_decreases_under_gradient_descent_on_a_latent(natural_images):
    latents = torch.randn(4, 4, 16, 16, requires_grad=True)
    optimizer = torch.optim.Adam([latents], lr=0.05)
    first = float(esm_loss(natural_images, latents.detach()))
    for _ in range(30):
        optimizer.zero_grad()
        loss = esm_loss(natural_images, latents)
        loss.backward()
        optimizer.step()
    assert float(esm_loss(natural_images, latents.detach())) < 0.5 * first


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_esm_loss_has_finite_gradients_for_low_precision_inputs(natural_images, dtype):
    latents = torch.randn(4, 4, 16, 16).to(dtype).requires_grad_()
    loss = esm_loss(natural_images.to(dtype), latents)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert latents.grad.dtype == dtype and torch.isfinite(latents.grad).all() and latents.grad.abs().sum() > 0


def test_spectral_kl_of_white_noise_exceeds_that_of_power_law_latents(natural_images):
    white = torch.randn(4, 4, 32, 32)
    u = torch.arange(32.0)[:, None]
    v = torch.arange(32.0)[None, :]
    radius = (u * u + v * v).sqrt().clamp_min(1)
    flattened = idct_2d(torch.randn(4, 4, 32, 32) / radius.sqrt())  # power ~ 1/f: the delta = 1 target's law
    flattened = flattened / flattened.std(dim=(1, 2, 3), keepdim=True)  # standardised, as latents are
    kl_white = spectral_kl(natural_images, white, delta=1.0)
    kl_flattened = spectral_kl(natural_images, flattened, delta=1.0)
    assert kl_white.shape == (4,) and (kl_white > 2 * kl_flattened).all()


def test_nan_in_a_training_step_flows_to_the_loss_without_a_check(natural_images):
    # Autograd recording (latents require grad): no host check, the trainer's guard sees a non-finite loss.
    latents = torch.randn(4, 4, 16, 16)
    latents[1, 0, 3, 3] = float("nan")
    loss = esm_loss(natural_images, latents.requires_grad_())
    assert not torch.isfinite(loss)
    with pytest.raises(ValueError, match="`latents` contains NaN"):
        esm_loss(natural_images, latents.detach())
