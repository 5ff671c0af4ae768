"""The baseline recipes of the VAE trainer: `--recipe eq-vae` (EQ-VAE equivariance branch) and `--recipe va-vae`
(VA-VAE VF alignment loss). Their losses against hand-computed values on constructed inputs, the small-size guard,
and a few real training steps (with exact resume of the VF projector)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file

from diffusers_spectrum.losses import NLayerDiscriminator
from diffusers_spectrum.losses.alignment import VFAlignmentLoss
from diffusers_spectrum.losses.autoencoder_objective import (
    autoencoder_loss,
    discriminator_min_size,
    gan_fits,
    perceptual_fits,
)
from diffusers_spectrum.losses.equivariance import EquivarianceTransform
from diffusers_spectrum.models.encoders import RepresentationEncoder
from diffusers_spectrum.training import vae as script


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    config = transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=4
    )
    transformers.Dinov2Model(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    from diffusers_spectrum.data.sources import embedded_dataset_dir

    folder = tmp_path_factory.mktemp("photos")
    for i, source in enumerate(sorted(embedded_dataset_dir().glob("*.png"))[::9][:6]):
        Image.open(source).convert("RGB").save(folder / f"{i:02d}.png")
    return str(folder)


def _tiny_vae(seed=0):
    torch.manual_seed(seed)
    args = script.parse_args(["--vae_config", "tiny", "--resolution", "32", "--dsm_levels", "0", "--esm_weight", "0"])
    return script.AutoencoderModel.of(args).build().eval(), args


def _avgpool2_rot90(x: torch.Tensor, k: int) -> np.ndarray:
    """Bilinear downscale by exactly 1/2 (align_corners=False) is the 2x2 mean; then np.rot90 on the last two axes."""
    a = x.detach().double().numpy()
    b, c, h, w = a.shape
    pooled = a.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
    return np.rot90(pooled, k, axes=(-2, -1))


# ----------------------------------------------------------------------------------------------------------------
# EQ-VAE


def test_eq_vae_branch_decodes_the_transformed_latent_against_the_transformed_image():
    vae, args = _tiny_vae()
    images = torch.rand(2, 3, 32, 32, dtype=torch.float32) * 2 - 1
    transform = EquivarianceTransform("equivariance", 0.5, 0.5, 1)
    out = script.VAETrainingModule(vae)(images, generator=torch.Generator().manual_seed(3), transform=transform)

    # the target is tau(x): the 2x2 mean, rotated a quarter turn
    np.testing.assert_allclose(out["target"].double().numpy(), _avgpool2_rot90(images, 1), atol=1e-6)
    # the reconstruction is D(tau(z)) of the sampled posterior z (the same sample: same generator)
    posterior = vae.encode(images).latent_dist
    z = posterior.sample(generator=torch.Generator().manual_seed(3))
    assert torch.equal(out["latents"], z)
    tau_z = torch.from_numpy(_avgpool2_rot90(z, 1).copy()).float()
    expected = vae.decode(tau_z).sample
    torch.testing.assert_close(out["reconstruction"], expected, atol=1e-5, rtol=1e-5)
    assert out["reconstruction"].shape == (2, 3, 16, 16) and out["dsm_level"] == 0
    # KL is the untransformed posterior's (the authors'); the L1 loss is the mean |D(tau z) - tau x|
    torch.testing.assert_close(out["kl"], posterior.kl())
    loss, terms = autoencoder_loss(out, script.loss_weights(args))
    l1 = np.abs(expected.detach().double().numpy() - _avgpool2_rot90(images, 1)).mean()
    assert abs(terms["reconstruction"].item() - l1) < 1e-5 and abs(loss.item() - l1) < 1e-5


def test_eq_vae_low_resolution_prior_encodes_and_decodes_the_downscaled_image():
    vae, _ = _tiny_vae()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    transform = EquivarianceTransform("low_resolution_prior", 0.5, 0.5, 0)
    out = vae.equivariance_losses(images, transform, torch.Generator().manual_seed(1))
    small = torch.from_numpy(_avgpool2_rot90(images, 0).copy()).float()
    np.testing.assert_allclose(out["target"].numpy(), small.numpy(), atol=1e-6)
    z = vae.encode(small).latent_dist.sample(generator=torch.Generator().manual_seed(1))  # (2, 4, 4, 4)
    torch.testing.assert_close(out["latents"], z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["reconstruction"], vae.decode(z).sample, atol=1e-5, rtol=1e-5)
    # an identity transform is the plain Spectrum VAE step (full size)
    plain = script.VAETrainingModule(vae)(images, transform=EquivarianceTransform())
    assert plain["reconstruction"].shape == images.shape


def test_patchgan_minimum_size_and_the_guard_that_skips_gan_and_lpips_below_it():
    for layers in (1, 2, 3):
        size = discriminator_min_size(layers)
        disc = NLayerDiscriminator(3, 8, layers).eval()
        assert disc(torch.zeros(1, 3, size, size)).shape[-1] == 1  # one patch at the minimum
        with pytest.raises(RuntimeError):  # and no output (torch refuses) one pixel below
            disc(torch.zeros(1, 3, size - 1, size - 1))
    assert discriminator_min_size(3) == 24
    vae, args = _tiny_vae()
    args.disc_weight, args.adaptive_disc_weight, args.disc_layers = 1.0, False, 3
    disc = NLayerDiscriminator(3, 8, 3).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    for scale, gan_expected in ((0.25, False), (0.5, False), (0.75, True)):
        out = vae.equivariance_losses(images, EquivarianceTransform("equivariance", scale, scale, 2))
        assert gan_fits(out, args.disc_layers) is gan_expected
        _, terms = autoencoder_loss(out, script.loss_weights(args), discriminator=disc)
        assert ("generator" in terms) is gan_expected, scale
    args.perceptual_loss = "lpips"
    small = {"reconstruction": torch.zeros(1, 3, 8, 8)}
    assert not perceptual_fits(small, args.perceptual_loss)
    assert perceptual_fits({"reconstruction": torch.zeros(1, 3, 16, 16)}, args.perceptual_loss)


def test_eq_vae_transforms_depend_on_the_step_only():
    args = script.parse_args(["--recipe", "eq-vae", "--perceptual_loss", "none", "--resolution", "32"])
    images = torch.zeros(1, 3, 32, 32)
    sample = script.Equivariance.of(args).sampler()
    latent_size = (images.shape[-2] // 4, images.shape[-1] // 4)
    draws = [sample(script.transform_generator(0, step, 0), latent_size) for step in range(40)]
    again = [sample(script.transform_generator(0, step, 0), latent_size) for step in range(40)]
    assert draws == again
    branches = {d.branch for d in draws}
    assert branches == {"equivariance", "low_resolution_prior", "identity"}
    for d in draws:  # scales on the 8 x 8 latent grid: k / 8 for k = 2..7
        assert d.is_identity or (d.scale_h * 8) in range(2, 8)


def test_recipes_carry_their_papers_settings():
    eq = script.parse_args(["--recipe", "eq-vae", "--perceptual_loss", "none"])
    assert eq.equivariance is True and (eq.eq_probability, eq.eq_low_resolution_probability) == (0.5, 0.25)
    assert (eq.kl_weight, eq.disc_weight, eq.disc_start, eq.adam_beta1, eq.adam_beta2) == (1e-6, 0.5, 0, 0.5, 0.9)
    assert eq.learning_rate == pytest.approx(4.5e-6 * 160)
    with pytest.raises(ValueError, match="--vf_encoder"):
        script.parse_args(["--recipe", "va-vae", "--perceptual_loss", "none"])
    va = script.parse_args(["--recipe", "va-vae", "--perceptual_loss", "none", "--vf_encoder", "x"])
    assert (va.vf_weight, va.vf_margin_cos, va.vf_margin_dist, va.adaptive_vf) == (0.1, 0.5, 0.25, True)
    assert (va.kl_weight, va.disc_start, va.learning_rate, va.adam_beta1) == (1e-6, 5001, 1e-4, 0.5)
    assert va.equivariance is False and eq.vf_weight == 0.0
    plain = script.parse_args([])
    assert (plain.adam_beta1, plain.adam_beta2, plain.equivariance, plain.vf_weight) == (0.9, 0.999, False, 0.0)


# ----------------------------------------------------------------------------------------------------------------
# VA-VAE


def _marginal_losses(z: np.ndarray, f: np.ndarray, m1: float, m2: float) -> tuple[float, float]:
    """From the definition, one loop per image: mean ReLU(1 - m1 - cos) over positions and mean
    ReLU(|cos(z_i, z_j) - cos(f_i, f_j)| - m2) over all ordered token pairs."""
    mcos, mdms = [], []
    for zb, fb in zip(z, f):
        zt, ft = zb.reshape(zb.shape[0], -1).T, fb.reshape(fb.shape[0], -1).T  # (N, D)
        zt = zt / np.linalg.norm(zt, axis=1, keepdims=True)
        ft = ft / np.linalg.norm(ft, axis=1, keepdims=True)
        mcos.append(np.maximum(1 - m1 - (zt * ft).sum(1), 0).mean())
        mdms.append(np.maximum(np.abs(zt @ zt.T - ft @ ft.T) - m2, 0).mean())
    return float(np.mean(mcos)), float(np.mean(mdms))


def test_va_vae_term_equals_the_closed_form_marginal_losses_and_its_adaptive_weight(tiny_dinov2):
    vae, args = _tiny_vae()
    args.vf_weight, args.adaptive_vf = 0.1, False
    encoder = RepresentationEncoder.from_pretrained(tiny_dinov2)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    # the frozen features on the latent grid are the encoder's tokens, row-major
    tokens = encoder(images, (8, 8))  # (2, 64, 16)
    features = script.vf_features(encoder, images, (8, 8))
    assert features.shape == (2, 16, 8, 8)
    assert torch.equal(features[1, :, 2, 5], tokens[1, 2 * 8 + 5])
    # a constructed projector: latent channel c -> feature channel c (identity on 4 of 16 features)
    vf = VFAlignmentLoss(4, 16)
    with torch.no_grad():
        vf.projector.weight.zero_()
        vf.projector.weight[torch.arange(4), torch.arange(4), 0, 0] = 1.0
    out = script.VAETrainingModule(vae)(images, generator=torch.Generator().manual_seed(0))
    out["vf"] = vf(out["latents"], features).loss
    z = np.zeros((2, 16, 8, 8))
    z[:, :4] = out["latents"].detach().double().numpy()
    mcos, mdms = _marginal_losses(z, features.double().numpy(), 0.5, 0.25)
    assert abs(out["vf"].item() - (mcos + mdms)) < 1e-5
    loss, terms = autoencoder_loss(out, script.loss_weights(args))
    assert abs(loss.item() - (terms["reconstruction"].item() + 0.1 * (mcos + mdms))) < 1e-5
    # adaptive: w = 0.1 ||dL_rec/dW|| / (||dL_vf/dW|| + 1e-4) at the encoder's last conv
    args.adaptive_vf = True
    weight = vae.encoder.conv_out.weight
    _, terms = autoencoder_loss(out, script.loss_weights(args), encoder_last_layer=weight)
    g_rec = torch.autograd.grad(terms["reconstruction"], weight, retain_graph=True)[0].norm()
    g_vf = torch.autograd.grad(out["vf"], weight, retain_graph=True)[0].norm()
    assert abs(terms["vf_weight"].item() - 0.1 * g_rec.item() / (g_vf.item() + 1e-4)) < 1e-6 * max(
        1, terms["vf_weight"].item()
    )


# ----------------------------------------------------------------------------------------------------------------
# Training runs


def _run_args(recipe, data, out, *extra):
    return script.parse_args(
        [
            "--recipe",
            recipe,
            "--perceptual_loss",
            "none",
            "--train_data_dir",
            data,
            "--output_dir",
            str(out),
            "--vae_config",
            "tiny",
            "--resolution",
            "32",
            "--train_batch_size",
            "2",
            "--max_train_steps",
            "4",
            "--checkpointing_steps",
            "2",
            "--validation_steps",
            "100",
            "--latent_stats_samples",
            "4",
            "--report_to",
            "none",
            "--disc_channels",
            "8",
            "--disc_start",
            "1",
            *extra,
        ]
    )


@pytest.mark.slow
def test_eq_vae_recipe_trains(photo_folder, tmp_path):
    out = script.train_vae(_run_args("eq-vae", photo_folder, tmp_path / "eq"))
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and np.isfinite(metrics["psnr"])


@pytest.mark.slow
def test_va_vae_recipe_trains_saves_its_projector_and_resumes_exactly(
    photo_folder, tiny_dinov2, tmp_path, monkeypatch
):
    extra = ("--vf_encoder", tiny_dinov2)
    script.train_vae(_run_args("va-vae", photo_folder, tmp_path / "full", *extra))
    projector = tmp_path / "full" / "checkpoint-4" / "vf_projector"
    assert list(projector.glob("*.safetensors"))

    real_save = script.Checkpointer.save

    def save_then_die(self, global_step, *args, **kwargs):
        path = real_save(self, global_step, *args, **kwargs)
        if global_step == 2:
            raise KeyboardInterrupt("killed after the checkpoint")
        return path

    monkeypatch.setattr(script.Checkpointer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        script.train_vae(_run_args("va-vae", photo_folder, tmp_path / "resumed", *extra))
    monkeypatch.undo()
    script.train_vae(
        _run_args("va-vae", photo_folder, tmp_path / "resumed", *extra, "--resume_from_checkpoint", "latest")
    )
    for name in (
        "diffusion_pytorch_model.safetensors",
        *(str(p.relative_to(tmp_path / "full")) for p in projector.glob("*.safetensors")),
    ):
        full, resumed = load_file(tmp_path / "full" / name), load_file(tmp_path / "resumed" / name)
        assert full.keys() == resumed.keys()
        for key in full:
            assert torch.equal(full[key], resumed[key]), (name, key)
    # the projector moved (it is in the autoencoder optimiser)
    initial = load_file(next((tmp_path / "resumed" / "checkpoint-2" / "vf_projector").glob("*.safetensors")))
    final = load_file(next(projector.glob("*.safetensors")))
    assert any(not torch.equal(initial[k], final[k]) for k in final)
