"""The baselines Spectrum Matching unifies: EQ-VAE's equivariance transforms (Kouzelis et al. 2025) and VA-VAE's
vision-foundation alignment loss (Yao et al. 2025), against hand-computed values and definitions."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from diffusers_spectrum.losses.alignment import VFAlignmentLoss, adaptive_weight, vf_alignment_terms
from diffusers_spectrum.losses.autoencoder import adaptive_discriminator_weight
from diffusers_spectrum.losses.equivariance import (
    EquivarianceTransform,
    apply_spatial_transform,
    equivariance_targets,
    sample_equivariance_transform,
)


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=16,
    )


def numpy_bilinear_downscale(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres (align_corners=False), written from the definition: output pixel i
    samples the input at (i + 0.5) * in / out - 0.5, clamped at 0, interpolating linearly between neighbours."""

    def weights(n_in: int, n_out: int) -> np.ndarray:
        matrix = np.zeros((n_out, n_in))
        for i in range(n_out):
            src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
            low = min(int(math.floor(src)), n_in - 1)
            high = min(low + 1, n_in - 1)
            frac = src - low
            matrix[i, low] += 1 - frac
            matrix[i, high] += frac
        return matrix

    rows, cols = weights(x.shape[-2], out_h), weights(x.shape[-1], out_w)
    return np.einsum("ih,...hw,jw->...ij", rows, x, cols)


# ----------------------------------------------------------------------------------------------------------------
# EQ-VAE: sampling


def test_sampler_reproduces_the_authors_scale_grid_rotations_and_branch_rates():
    generator = torch.Generator().manual_seed(0)
    draws = [sample_equivariance_transform(generator, (32, 32)) for _ in range(4000)]
    equivariant = [t for t in draws if t.branch == "equivariance"]
    low_res = [t for t in draws if t.branch == "low_resolution_prior"]
    # authors: random.choice([s / 32 for s in range(8, 32)]), angle in {1, 2, 3}, isotropic
    assert {t.scale_h for t in equivariant} == {k / 32 for k in range(8, 32)}
    assert all(t.scale_h == t.scale_w for t in draws)
    assert {t.quarter_turns for t in equivariant} == {1, 2, 3}
    assert {t.quarter_turns for t in low_res} == {0} and {t.scale_h for t in low_res} <= {k / 32 for k in range(8, 32)}
    assert all(t.is_identity for t in draws if t.branch == "identity")
    # branch rates 0.5 / 0.5 * 0.25 / 0.5 * 0.75, within 4 binomial standard deviations
    for count, p in ((len(equivariant), 0.5), (len(low_res), 0.125)):
        assert abs(count / len(draws) - p) < 4 * math.sqrt(p * (1 - p) / len(draws))


def test_sampler_is_reproducible_and_respects_its_options():
    first = [sample_equivariance_transform(torch.Generator().manual_seed(3), (8, 8)) for _ in range(5)]
    second = [sample_equivariance_transform(torch.Generator().manual_seed(3), (8, 8)) for _ in range(5)]
    assert first == second
    generator = torch.Generator().manual_seed(1)
    always = [sample_equivariance_transform(generator, (8, 12), 1.0, quarter_turns=(0,)) for _ in range(200)]
    assert {t.branch for t in always} == {"equivariance"} and {t.quarter_turns for t in always} == {0}
    assert {t.scale_h for t in always} == {0.25, 0.5, 0.75}  # k / gcd(8, 12) = k / 4
    never = [sample_equivariance_transform(generator, (8, 8), 0.0, 0.0) for _ in range(50)]
    assert {t.branch for t in never} == {"identity"}
    aniso = [sample_equivariance_transform(generator, (8, 12), 1.0, anisotropic=True) for _ in range(400)]
    assert {t.scale_h for t in aniso} == {k / 8 for k in range(2, 8)}
    assert {t.scale_w for t in aniso} == {k / 12 for k in range(3, 12)}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"latent_size": (2, 2), "min_scale": 0.75}, "no downscale"),
        ({"latent_size": (8, 8), "min_scale": 1.0}, "min_scale"),
        ({"latent_size": (8, 8), "equivariance_probability": 1.5}, "equivariance_probability"),
        ({"latent_size": (8, 8), "quarter_turns": (4,)}, "quarter_turns"),
        ({"latent_size": (8,)}, "latent_size"),
    ],
)
def test_sampler_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_equivariance_transform(torch.Generator().manual_seed(0), **kwargs)


def test_transform_rejects_bad_fields():
    with pytest.raises(ValueError, match="scale_h"):
        EquivarianceTransform("equivariance", 1.5, 1.0, 1)
    with pytest.raises(ValueError, match="quarter_turns"):
        EquivarianceTransform("equivariance", 0.5, 0.5, 5)
    with pytest.raises(ValueError, match="branch"):
        EquivarianceTransform("rotate", 0.5, 0.5, 1)


# ----------------------------------------------------------------------------------------------------------------
# EQ-VAE: applying tau


@pytest.mark.parametrize("scale", [0.25, 0.5, 0.75, 24 / 32, 17 / 32])
def test_downscale_is_bilinear_half_pixel_and_matches_the_authors_interpolate(scale):
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    out = apply_spatial_transform(x, EquivarianceTransform("low_resolution_prior", scale, scale, 0))
    size = round(scale * 32)
    np.testing.assert_allclose(out.numpy(), numpy_bilinear_downscale(x.numpy(), size, size), atol=1e-12)
    authors = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)  # zelaki/eqvae
    torch.testing.assert_close(out, authors)


def test_half_downscale_is_two_by_two_average_pooling():
    x = torch.randn(1, 4, 8, 8)
    out = apply_spatial_transform(x, EquivarianceTransform("equivariance", 0.5, 0.5, 0))
    torch.testing.assert_close(out, F.avg_pool2d(x, 2))


def test_rotation_matches_numpy_and_swaps_non_square_sides():
    x = torch.randn(2, 3, 4, 6)
    for k in (1, 2, 3):
        out = apply_spatial_transform(x, EquivarianceTransform("equivariance", 1.0, 1.0, k))
        np.testing.assert_array_equal(out.numpy(), np.rot90(x.numpy(), k, axes=(-2, -1)))
    scaled = EquivarianceTransform("equivariance", 0.5, 0.5, 1)
    assert apply_spatial_transform(x, scaled).shape == (2, 3, 3, 2)
    assert scaled.output_size(4, 6) == (3, 2)
    before = x.clone()
    apply_spatial_transform(x, scaled)
    torch.testing.assert_close(x, before)  # input untouched


def test_rotation_commutes_with_a_linear_upsampling_decoder():
    # decoder: per-pixel linear map C -> 3, then nearest 4x upsampling; the image is its decoding of z
    torch.manual_seed(0)
    weight = torch.randn(3, 4, 1, 1)

    def decode(z):
        return F.conv2d(z, weight).repeat_interleave(4, -2).repeat_interleave(4, -1)

    latents = torch.randn(2, 4, 3, 5)
    images = decode(latents)  # (2, 3, 12, 20)
    for k in (1, 2, 3):
        tau = EquivarianceTransform("equivariance", 1.0, 1.0, k)
        tau_z, tau_x = equivariance_targets(images, latents, tau)
        torch.testing.assert_close(decode(tau_z), tau_x)


def test_scale_and_rotation_commute_with_a_per_pixel_linear_decoder():
    # at factor 1, bilinear resizing (weights summing to 1) commutes with any per-pixel affine map
    torch.manual_seed(0)
    weight, bias = torch.randn(3, 4, 1, 1, dtype=torch.float64), torch.randn(3, dtype=torch.float64)

    def decode(z):
        return F.conv2d(z, weight, bias)

    latents = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    tau = EquivarianceTransform("equivariance", 5 / 8, 5 / 8, 3)
    tau_z, tau_x = equivariance_targets(decode(latents), latents, tau)
    assert tau_z.shape == (2, 4, 5, 5) and tau_x.shape == (2, 3, 5, 5)
    torch.testing.assert_close(decode(tau_z), tau_x)


def test_equivariance_targets_keep_image_and_latent_sizes_consistent():
    generator = torch.Generator().manual_seed(0)
    images, latents = torch.randn(2, 3, 32, 48), torch.randn(2, 4, 8, 12)
    for _ in range(20):
        tau = sample_equivariance_transform(generator, (8, 12), 1.0)
        tau_z, tau_x = equivariance_targets(images, latents, tau)
        assert tau_x.shape[-2:] == (4 * tau_z.shape[-2], 4 * tau_z.shape[-1])


def test_equivariance_targets_reject_inconsistent_inputs():
    images, latents = torch.randn(2, 3, 32, 32), torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match="would not match"):
        equivariance_targets(images, latents, EquivarianceTransform("equivariance", 0.3, 0.3, 0))  # 2.4 vs 9.6
    with pytest.raises(ValueError, match="batch size"):
        equivariance_targets(images, latents[:1], EquivarianceTransform())
    with pytest.raises(ValueError, match="integer factor"):
        equivariance_targets(torch.randn(2, 3, 30, 32), latents, EquivarianceTransform())
    with pytest.raises(ValueError, match="3 channels"):
        equivariance_targets(torch.randn(2, 4, 32, 32), latents, EquivarianceTransform())
    with pytest.raises(ValueError, match="4-D"):
        apply_spatial_transform(torch.randn(3, 8, 8), EquivarianceTransform())
    with pytest.raises(TypeError, match="EquivarianceTransform"):
        apply_spatial_transform(images, (0.5, 1))
    with pytest.raises(ValueError, match="larger"):
        apply_spatial_transform(torch.randn(1, 3, 2, 2), EquivarianceTransform("equivariance", 0.2, 0.2, 0))


def test_equivariance_branch_trains_encoder_and_decoder_of_a_real_vae():
    vae = tiny_vae()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    tau = EquivarianceTransform("equivariance", 0.75, 0.75, 1)
    latents = vae.encode(images).latent_dist.sample(generator=torch.Generator().manual_seed(0))  # (2, 4, 8, 8)
    tau_z, tau_x = equivariance_targets(images, latents, tau)
    reconstruction = vae.decode(tau_z).sample
    assert reconstruction.shape == tau_x.shape == (2, 3, 12, 12)
    (reconstruction - tau_x).abs().mean().backward()
    for module in (vae.encoder.conv_in, vae.decoder.conv_out):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------------
# VA-VAE: the two marginal terms


def unit_vectors(angles_deg, grid):
    """2-D unit tokens at the given angles as a `(1, 2, *grid)` map (row-major token order)."""
    radians = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()]).reshape(1, 2, *grid)


def test_marginal_cosine_on_a_two_by_two_grid_with_known_angles():
    projected = 3.0 * unit_vectors([0, 60, 90, 180], (2, 2))  # cosines to (1, 0): 1, 0.5, 0, -1
    features = unit_vectors([0, 0, 0, 0], (2, 2))
    cos_loss, _ = vf_alignment_terms(projected, features, margin_cos=0.5, margin_dist=0.0)
    # relu(0.5 - cos) = 0, 0 (clipped exactly at the margin), 0.5, 1.5
    assert cos_loss.item() == pytest.approx((0 + 0 + 0.5 + 1.5) / 4, abs=1e-12)
    cos_loss, _ = vf_alignment_terms(projected, features, margin_cos=0.0, margin_dist=0.0)
    assert cos_loss.item() == pytest.approx((0 + 0.5 + 1 + 2) / 4, abs=1e-12)


def test_marginal_distance_matrix_on_two_tokens_clips_at_the_margin():
    projected = unit_vectors([0, 90], (1, 2))  # cos(z1, z2) = 0
    features = unit_vectors([30, 30], (1, 2))  # cos(f1, f2) = 1
    # pairs (1,1), (1,2), (2,1), (2,2): |0 - 1| on the off-diagonal, 0 on the diagonal
    _, dist = vf_alignment_terms(projected, features, margin_cos=0.0, margin_dist=0.25)
    assert dist.item() == pytest.approx((0 + 0.75 + 0.75 + 0) / 4, abs=1e-12)
    _, dist = vf_alignment_terms(projected, features, margin_cos=0.0, margin_dist=1.0)
    assert dist.item() == 0.0


def test_marginal_distance_matrix_matches_the_definition_on_a_grid():
    z_angles, f_angles = [0, 60, 90, 180], [10, 10, 200, 45]
    projected, features = unit_vectors(z_angles, (2, 2)), unit_vectors(f_angles, (2, 2))
    expected = np.mean(
        [
            max(abs(math.cos(math.radians(zi - zj)) - math.cos(math.radians(fi - fj))) - 0.25, 0.0)
            for zi, fi in zip(z_angles, f_angles)
            for zj, fj in zip(z_angles, f_angles)
        ]
    )
    _, dist = vf_alignment_terms(projected, features)
    assert dist.item() == pytest.approx(expected, abs=1e-12)


def test_terms_are_scale_invariant_and_per_sample():
    torch.manual_seed(0)
    projected, features = torch.randn(3, 8, 2, 3), torch.randn(3, 8, 2, 3)
    cos_all, dist_all = vf_alignment_terms(projected, features, reduction="none")
    assert cos_all.shape == dist_all.shape == (3,)
    for b in range(3):
        cos_b, dist_b = vf_alignment_terms(5.0 * projected[b : b + 1], 0.1 * features[b : b + 1])
        torch.testing.assert_close(cos_b, cos_all[b])
        torch.testing.assert_close(dist_b, dist_all[b])
    cos_mean, dist_mean = vf_alignment_terms(projected, features)
    torch.testing.assert_close(cos_mean, cos_all.mean())
    torch.testing.assert_close(dist_mean, dist_all.mean())


def test_terms_reject_bad_inputs():
    x = torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match="same"):
        vf_alignment_terms(x, torch.randn(1, 4, 2, 3))
    with pytest.raises(ValueError, match="margins"):
        vf_alignment_terms(x, x, margin_cos=-0.1)
    with pytest.raises(ValueError, match="reduction"):
        vf_alignment_terms(x, x, reduction="sum")


# ----------------------------------------------------------------------------------------------------------------
# VA-VAE: module, projector, adaptive weight


def test_module_with_identity_projector_equals_the_pure_terms():
    loss = VFAlignmentLoss(latent_channels=2, feature_dim=2, margin_cos=0.5, margin_dist=0.25)
    assert loss.projector.bias is None and loss.projector.kernel_size == (1, 1)
    with torch.no_grad():
        loss.projector.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
    latents, features = unit_vectors([0, 60, 90, 180], (2, 2)).float(), unit_vectors([0, 0, 0, 0], (2, 2)).float()
    out = loss(latents, features)
    cos_ref, dist_ref = vf_alignment_terms(latents, features, 0.5, 0.25)
    torch.testing.assert_close(out.marginal_cosine, cos_ref)
    torch.testing.assert_close(out.marginal_distance, dist_ref)
    torch.testing.assert_close(out.loss, cos_ref + dist_ref)


def test_latents_are_resized_bilinearly_to_the_feature_grid():
    torch.manual_seed(0)
    loss = VFAlignmentLoss(latent_channels=4, feature_dim=6)
    latents, features = torch.randn(2, 4, 2, 2), torch.randn(2, 6, 4, 4)
    projected = loss.project(latents, (4, 4))
    up_then_project = loss.projector(F.interpolate(latents, size=(4, 4), mode="bilinear", align_corners=False))
    project_then_up = F.interpolate(loss.projector(latents), size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(projected, up_then_project)
    torch.testing.assert_close(projected, project_then_up)
    cos_ref, dist_ref = vf_alignment_terms(projected, features)
    torch.testing.assert_close(loss(latents, features).loss, cos_ref + dist_ref)


def test_vf_loss_trains_encoder_and_projector_but_not_decoder_or_features():
    vae = tiny_vae()
    loss = VFAlignmentLoss(latent_channels=4, feature_dim=16, margin_cos=0.0, margin_dist=0.0)
    features = torch.randn(2, 16, 8, 8, requires_grad=True)  # stand-in for frozen encoder patch features
    latents = vae.encode(torch.rand(2, 3, 16, 16) * 2 - 1).latent_dist.sample(torch.Generator().manual_seed(0))
    loss(latents, features).loss.backward()
    assert loss.projector.weight.grad.abs().sum() > 0
    assert vae.encoder.conv_out.weight.grad.abs().sum() > 0
    assert vae.decoder.conv_out.weight.grad is None
    assert features.grad is None


def test_module_rejects_mismatched_widths_and_arguments():
    loss = VFAlignmentLoss(latent_channels=4, feature_dim=8)
    with pytest.raises(ValueError, match="latent_channels"):
        loss(torch.randn(1, 3, 2, 2), torch.randn(1, 8, 2, 2))
    with pytest.raises(ValueError, match="feature_dim"):
        loss(torch.randn(1, 4, 2, 2), torch.randn(1, 2, 8, 2))
    with pytest.raises(ValueError, match="batch size"):
        loss(torch.randn(2, 4, 2, 2), torch.randn(1, 8, 2, 2))
    with pytest.raises(ValueError, match="4-D"):
        loss(torch.randn(1, 4, 2, 2), torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="feature_dim"):
        VFAlignmentLoss(latent_channels=4, feature_dim=0)
    with pytest.raises(ValueError, match="margins"):
        VFAlignmentLoss(latent_channels=4, feature_dim=8, margin_dist=-1.0)


def test_adaptive_weight_is_w_hyper_times_the_gradient_norm_ratio():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    a, b = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([1.0, 2.0, 2.0])
    rec_loss, vf_loss = (w * a).sum(), 3.0 * (w * b).sum()  # gradients a (norm 5) and 3 b (norm 9)
    weight = adaptive_weight(rec_loss, vf_loss, w, w_hyper=0.1)
    assert weight.item() == pytest.approx(0.1 * 5.0 / (9.0 + 1e-4), rel=1e-6)
    assert not weight.requires_grad
    # the reused VQGAN weight with the larger clamp, times w_hyper
    torch.testing.assert_close(weight, 0.1 * adaptive_discriminator_weight(rec_loss, vf_loss, w, max_weight=1e8))
    # the defining property: the weighted VF gradient at W is w_hyper times the reconstruction gradient
    (vf_grad,) = torch.autograd.grad(weight * vf_loss, w, retain_graph=True)
    assert vf_grad.norm().item() == pytest.approx(0.1 * 5.0, rel=1e-4)
    with torch.no_grad():
        assert adaptive_weight(rec_loss.detach(), vf_loss.detach(), w).item() == 0.0


def test_adaptive_weight_on_a_real_encoder_last_layer():
    vae = tiny_vae()
    loss = VFAlignmentLoss(latent_channels=4, feature_dim=16)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    latents = vae.encode(images).latent_dist.sample(torch.Generator().manual_seed(0))
    rec_loss = (vae.decode(latents).sample - images).abs().mean()
    vf_loss = loss(latents, torch.randn(2, 16, 8, 8)).loss
    last = vae.encoder.conv_out.weight
    weight = adaptive_weight(rec_loss, vf_loss, last, w_hyper=0.1)
    rec_grad = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
    vf_grad = torch.autograd.grad(vf_loss, last, retain_graph=True)[0]
    torch.testing.assert_close(weight, 0.1 * rec_grad.norm() / (vf_grad.norm() + 1e-4))
    with pytest.raises(ValueError, match="conv_out"):
        adaptive_weight(rec_loss, vf_loss, vae.decoder.conv_out.weight.detach())
    with pytest.raises(ValueError, match="depend on"):
        adaptive_weight(rec_loss, vf_loss, loss.projector.weight)  # rec_loss does not use the projector
    with pytest.raises(ValueError, match="scalar"):
        adaptive_weight(rec_loss, vf_loss.expand(2), last)
