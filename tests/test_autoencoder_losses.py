"""Autoencoder losses against closed forms: reconstruction, hinge, the VQGAN adaptive weight, the PatchGAN receptive
field, and the perceptual losses' gradient flow."""

import numpy as np
import pytest
import torch
import transformers

from diffusers_spectrum.losses import (
    FeaturePerceptualLoss,
    LPIPSLoss,
    NLayerDiscriminator,
    adaptive_discriminator_weight,
    hinge_d_loss,
    hinge_g_loss,
    lpips_available,
    reconstruction_loss,
)


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    config = transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8
    )
    transformers.Dinov2Model(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory):
    path = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    transformers.ResNetModel(config).save_pretrained(path)
    return str(path)


def test_reconstruction_losses_match_numpy_per_sample():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 3, 4, 5)), rng.normal(size=(3, 3, 4, 5))
    ta, tb = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    np.testing.assert_allclose(reconstruction_loss(ta, tb, "l1").numpy(), np.abs(a - b).mean((1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(reconstruction_loss(ta, tb, "l2").numpy(), ((a - b) ** 2).mean((1, 2, 3)), rtol=1e-5)
    assert reconstruction_loss(ta.half(), tb.half()).dtype == torch.float16
    with pytest.raises(ValueError, match="loss_type"):
        reconstruction_loss(ta, tb, "l3")
    with pytest.raises(ValueError, match="same shape"):
        reconstruction_loss(ta, tb[:, :2])


def test_hinge_losses_closed_form():
    real = torch.tensor([[[[2.0, 0.5]]], [[[-1.0, 1.0]]]])  # (2, 1, 1, 2)
    fake = torch.tensor([[[[-2.0, 0.0]]], [[[0.5, -0.5]]]])
    # 0.5 * (mean relu(1 - real) + mean relu(1 + fake)), per sample
    expected = 0.5 * (torch.tensor([0.25, 1.0]) + torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(hinge_d_loss(real, fake), expected)
    torch.testing.assert_close(hinge_g_loss(fake), torch.tensor([1.0, 0.0]))
    # a perfect discriminator (margin >= 1) has zero loss
    assert hinge_d_loss(torch.full((1, 1, 2, 2), 3.0), torch.full((1, 1, 2, 2), -3.0)).item() == 0


def test_adaptive_weight_is_the_gradient_norm_ratio_at_the_last_layer():
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(2, 2, 5, 5)
    out = layer(x)
    nll = out.abs().mean()
    gan = -(out * torch.randn_like(out)).mean() * 7.0
    weight = adaptive_discriminator_weight(nll, gan, layer.weight)
    g_nll = torch.autograd.grad(out.abs().mean(), layer.weight, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan, layer.weight, retain_graph=True)[0]
    torch.testing.assert_close(weight, g_nll.norm() / (g_gan.norm() + 1e-4))
    assert not weight.requires_grad
    # clamped, and zero under no_grad (evaluation)
    assert adaptive_discriminator_weight(nll, gan * 1e-9, layer.weight, max_weight=10.0).item() == 10.0
    with torch.no_grad():
        assert adaptive_discriminator_weight(nll, gan, layer.weight).item() == 0.0


def test_patchgan_three_layers_has_a_70_pixel_receptive_field():
    torch.manual_seed(0)
    discriminator = NLayerDiscriminator(base_channels=8, num_layers=3, norm="none").double()
    images = torch.randn(1, 3, 128, 128, dtype=torch.float64, requires_grad=True)
    logits = discriminator(images)
    assert logits.shape == (1, 1, 14, 14)
    logits[0, 0, 7, 7].backward()
    rows = images.grad.abs().sum((0, 1, 3)).nonzero().flatten()
    cols = images.grad.abs().sum((0, 1, 2)).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


def test_patchgan_save_load_round_trip(tmp_path):
    discriminator = NLayerDiscriminator(base_channels=8, num_layers=2, norm="group").eval()
    discriminator.save_pretrained(tmp_path)
    loaded = NLayerDiscriminator.from_pretrained(tmp_path).eval()
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(images), discriminator(images))
    assert loaded.config.norm == "group" and loaded.config.num_layers == 2
    with pytest.raises(ValueError, match="norm"):
        NLayerDiscriminator(norm="layer")
    with pytest.raises(ValueError, match="channels"):
        discriminator(torch.randn(1, 4, 32, 32))


@pytest.mark.parametrize("backbone", ["tiny_dinov2", "tiny_resnet"])
def test_feature_perceptual_loss_trains_the_reconstruction_not_the_backbone(backbone, request):
    loss_fn = FeaturePerceptualLoss(request.getfixturevalue(backbone))
    loss_fn.train()
    assert not loss_fn.model.training  # stays in eval mode
    torch.manual_seed(1)
    target = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.all(loss_fn(target, target) == 0)
    reconstruction = (target + 0.3 * torch.randn_like(target)).requires_grad_()
    distance = loss_fn(reconstruction, target)
    assert distance.shape == (2,) and torch.all(distance > 0)
    distance.sum().backward()
    assert reconstruction.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss_fn.model.parameters())
    # a larger perturbation is farther away
    farther = loss_fn(target + 0.9 * (reconstruction.detach() - target), target)
    nearer = loss_fn(target + 0.1 * (reconstruction.detach() - target), target)
    assert torch.all(farther > nearer)


def test_lpips_loss_needs_the_lpips_package():
    if lpips_available():
        loss_fn = LPIPSLoss("alex")
        images = torch.rand(1, 3, 64, 64) * 2 - 1
        assert loss_fn(images, images).item() == pytest.approx(0.0, abs=1e-6)
    else:
        with pytest.raises(ImportError, match="--perceptual_loss none"):  # the offline switch, named at once
            LPIPSLoss()


# ----------------------------------------------------------------------------------------------------------------
# The Fourier-amplitude texture term (the offline stand-in for LPIPS)


def test_fourier_amplitude_loss_matches_numpy_and_is_blind_to_phase_but_not_to_blur():
    from diffusers_spectrum.losses import FourierAmplitudeLoss

    torch.manual_seed(0)
    target = torch.rand(3, 3, 16, 20, dtype=torch.float64) * 2 - 1
    reconstruction = target + 0.3 * torch.randn_like(target)
    loss = FourierAmplitudeLoss()(reconstruction, target)  # (B,)
    # numpy: mean over channels and rfft2 bins of |log(1 + |F(r)|) - log(1 + |F(x)|)|, orthonormal FFT
    amplitude = lambda x: np.log1p(np.abs(np.fft.rfft2(x.numpy(), norm="ortho")))  # noqa: E731
    expected = np.abs(amplitude(reconstruction) - amplitude(target)).reshape(3, -1).mean(1)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-10)
    linear = FourierAmplitudeLoss(log_amplitude=False)(reconstruction, target)
    expected = (
        np.abs(
            np.abs(np.fft.rfft2(reconstruction.numpy(), norm="ortho"))
            - np.abs(np.fft.rfft2(target.numpy(), norm="ortho"))
        )
        .reshape(3, -1)
        .mean(1)
    )
    np.testing.assert_allclose(linear.numpy(), expected, rtol=1e-10)

    # a circular shift moves every detail and keeps every band's energy: no cost, while pixel L1 is large
    shifted = target.roll(shifts=(5, 7), dims=(-2, -1))
    assert FourierAmplitudeLoss()(shifted, target).abs().max() < 1e-12
    assert reconstruction_loss(shifted, target).min() > 0.3
    # a blur removes high-frequency energy: it costs, more for a stronger blur
    kernel = lambda k: torch.ones(3, 1, k, k, dtype=torch.float64) / k**2  # noqa: E731
    blur = lambda x, k: torch.nn.functional.conv2d(x, kernel(k), padding=k // 2, groups=3)  # noqa: E731
    mild, strong = FourierAmplitudeLoss()(blur(target, 3), target), FourierAmplitudeLoss()(blur(target, 5), target)
    assert (mild > 0.05).all() and (strong > mild).all()


def test_fourier_texture_term_is_a_perceptual_option_of_the_vae_trainer_and_trains_the_autoencoder():
    import dataclasses

    from diffusers_spectrum.losses import FourierAmplitudeLoss
    from diffusers_spectrum.losses.autoencoder_objective import autoencoder_loss, perceptual_fits
    from diffusers_spectrum.training import vae as script
    from diffusers_spectrum.training import vae_setup as setup

    args = script.parse_args(
        [
            "--recipe",
            "sd-vae",
            "--perceptual_loss",
            "fourier",
            "--vae_config",
            "tiny",
            "--resolution",
            "32",
            "--disc_weight",
            "0",
        ]
    )
    assert args.perceptual_weight == 0.5  # the recipe's LPIPS weight applies to the stand-in
    perceptual = setup.PerceptualLoss.of(args).build()
    assert isinstance(perceptual, FourierAmplitudeLoss)
    torch.manual_seed(0)
    model = setup.AutoencoderModel.of(args).build()
    out = setup.VAETrainingModule(model)(torch.rand(2, 3, 32, 32) * 2 - 1, generator=torch.Generator().manual_seed(0))
    weights = dataclasses.replace(setup.loss_weights(args), reconstruction_weight=0.0, kl_weight=0.0)
    loss, terms = autoencoder_loss(out, weights, perceptual)
    assert set(terms) >= {"perceptual"} and torch.isclose(loss, 0.5 * terms["perceptual"])
    loss.backward()
    assert model.decoder.conv_out.weight.grad.abs().sum() > 0 and model.encoder.conv_in.weight.grad.abs().sum() > 0
    # EQ-VAE's downscaled reconstructions (8 px at 32 px and scale 0.25) stay scored: no minimum size
    assert perceptual_fits({"reconstruction": torch.zeros(1, 3, 8, 8)}, args.perceptual_loss)


def test_kl_and_reconstruction_are_reduced_as_the_authors_reduce_them():
    """The authors' stage1_vae_trainer.py (forever208/SpectrumMatching, branch SDVAE_and_ESM): F.l1_loss over the
    whole batch, plus kl_weight x the batch mean of -0.5 sum_{c,h,w}(1 + logvar - mean^2 - exp(logvar))."""
    from diffusers_spectrum.losses.autoencoder_objective import autoencoder_loss
    from diffusers_spectrum.training import vae as script
    from diffusers_spectrum.training import vae_setup as setup

    args = script.parse_args(
        [
            "--recipe",
            "sd-vae",
            "--perceptual_loss",
            "none",
            "--vae_config",
            "tiny",
            "--resolution",
            "32",
            "--disc_weight",
            "0",
            "--kl_weight",
            "0.25",
        ]
    )
    torch.manual_seed(0)
    model = setup.AutoencoderModel.of(args).build()
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    out = setup.VAETrainingModule(model)(images, generator=torch.Generator().manual_seed(0))
    loss, terms = autoencoder_loss(out, setup.loss_weights(args))
    posterior = out["posterior"] if "posterior" in out else model.encode(images).latent_dist
    mean, logvar = posterior.mean, posterior.logvar
    authors_kl = (-0.5 * torch.sum(1 + logvar - mean**2 - logvar.exp(), dim=[1, 2, 3])).mean()
    authors = torch.nn.functional.l1_loss(out["target"], out["reconstruction"]) + 0.25 * authors_kl
    torch.testing.assert_close(loss, authors, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["kl"], authors_kl, rtol=1e-5, atol=1e-6)
