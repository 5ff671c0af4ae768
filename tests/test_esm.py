"""ESM against an independent implementation of the authors' definition (conv blur, bicubic resize, scipy DCT)."""

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from diffusers_spectrum.spectral import esm_loss, idct_2d, spectral_kl


def reference_esm(images, latents, delta, n_bins=16, blur=None, eps=1e-8, loss_type="kl"):
    """SPEC.md's ESM written out directly in float64 (numpy / scipy), per sample."""
    x = images.double()
    h, w = latents.shape[-2:]
    if (w != 32) if blur is None else blur:
        offsets = torch.arange(7, dtype=torch.float64) - 3
        yy, xx = torch.meshgrid(offsets, offsets, indexing="ij")
        kernel = torch.exp(-(xx**2 + yy**2) / (2 * 1.2**2))
        kernel = kernel / kernel.sum()
        x = F.conv2d(x, kernel.expand(3, 1, 7, 7), padding=3, groups=3)
    x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)

    def bands(t):
        power = (scipy.fft.dctn(t.detach().double().numpy(), axes=(-2, -1), norm="ortho") ** 2).mean(axis=1)
        power[:, 0, 0] = 0
        u, v = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        r = np.sqrt(u**2 + v**2) / np.sqrt((h - 1) ** 2 + (w - 1) ** 2)
        band = np.minimum(np.floor(r * n_bins).astype(int), n_bins - 1)
        return np.stack([power[:, band == k].mean(-1) for k in range(n_bins)], -1)

    def normalise(s):
        logs = np.clip(np.log(s + 1 + eps), 0, None)
        return logs / (logs.sum(-1, keepdims=True) + eps)

    p = normalise(bands(x) * np.arange(1, n_bins + 1) ** delta)
    q = normalise(bands(latents))
    if loss_type == "l2":
        return ((p - q) ** 2).sum(-1)
    return (p * (np.log(p + eps) - np.log(q + eps))).sum(-1)


def _latents_like(images, size, channels, kind, seed=0):
    generator = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(images.shape[0], channels, size, size, generator=generator)
    resized = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)
    return resized.mean(1, keepdim=True).repeat(1, channels, 1, 1) + 0.1 * torch.randn(
        images.shape[0], channels, size, size, generator=generator
    )


@pytest.mark.parametrize("size, channels", [(16, 16), (32, 4), (64, 4)])
@pytest.mark.parametrize("delta", [0.0, 1.0])
@pytest.mark.parametrize("kind", ["random", "natural"])
def test_esm_loss_matches_independent_reference(natural_images, size, channels, delta, kind):
    latents = _latents_like(natural_images, size, channels, kind)
    expected = reference_esm(natural_images, latents, delta)
    assert float(esm_loss(natural_images, latents, delta=delta)) == pytest.approx(expected.mean(), abs=1e-5)
    np.testing.assert_allclose(spectral_kl(natural_images, latents, delta=delta).numpy(), expected, atol=1e-5)


def test_esm_loss_on_random_images_and_l2_variant_and_forced_blur_match_reference():
    images = torch.rand(2, 3, 128, 96) * 2 - 1
    latents = torch.randn(2, 4, 32, 24)
    expected = reference_esm(images, latents, 1.0, blur=True, loss_type="l2")
    got = esm_loss(images, latents, delta=1.0, blur=True, loss_type="l2")
    assert float(got) == pytest.approx(expected.mean(), abs=1e-5)
    expected_skip = reference_esm(images, latents, 0.5)  # width 24: the authors' rule blurs
    assert float(esm_loss(images, latents, delta=0.5)) == pytest.approx(expected_skip.mean(), abs=1e-5)
    # No blur at an integer factor takes the strided-tap path; a non-integer factor the dense one.
    for latent_shape in [(2, 4, 32, 24), (2, 4, 20, 24)]:
        latents = torch.randn(*latent_shape)
        expected = reference_esm(images, latents, 1.0, blur=False)
        assert float(esm_loss(images, latents, blur=False)) == pytest.approx(expected.mean(), abs=1e-5)


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


def test_esm_bad_inputs_raise_clear_errors(natural_images):
    latents = torch.randn(4, 4, 16, 16)
    with pytest.raises(ValueError, match="4-D"):
        esm_loss(natural_images[0], latents)
    with pytest.raises(ValueError, match="3 channels"):
        esm_loss(natural_images[:, :1], latents)
    with pytest.raises(ValueError, match="larger than the image"):
        esm_loss(torch.randn(4, 3, 16, 16), torch.randn(4, 4, 32, 32))
    with pytest.raises(ValueError, match="larger than the image"):
        esm_loss(natural_images[..., :8, :8], latents)
    with pytest.raises(ValueError, match="NaN or Inf"):
        esm_loss(natural_images, latents * float("nan"))
    with pytest.raises(ValueError, match="Unknown ESM loss_type"):
        esm_loss(natural_images, latents, loss_type="js")
    with pytest.raises(ValueError, match="batch sizes differ"):
        esm_loss(natural_images, latents[:2])
