"""EDM formulation: closed forms, agreement with diffusers' EDM schedulers, and the sampling pipeline."""

import math

import numpy as np
import pytest
import torch
from diffusers import (
    ConsistencyModelPipeline,
    EDMDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    UNet2DModel,
)

from diffusers_spectrum.diffusion.edm import (
    check_edm_unet,
    edm_denoise,
    edm_denoising_loss,
    edm_loss_weight,
    edm_model_inputs,
    edm_noisy_inputs,
    edm_sample_sigmas,
    edm_snr,
)
from diffusers_spectrum.diffusion.objectives import regularizer_weights, snr_from_alphas_cumprod
from diffusers_spectrum.models.presets import build_unet
from diffusers_spectrum.pipelines.edm_pipeline import EDMPipeline, edm_scheduler


SIGMAS = torch.tensor([0.002, 0.05, 0.5, 1.0, 3.0, 80.0])


@pytest.fixture(scope="module")
def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return build_unet("tiny", 16).eval()


# ------------------------------------------------------------------------------------------------
# Closed forms (Karras et al. 2022, Table 1) written from the definitions in float64 numpy.


def test_model_inputs_and_loss_weight_match_the_closed_forms():
    x = torch.randn(len(SIGMAS), 3, 4, 4)
    scaled, c_noise = edm_model_inputs(x, SIGMAS)
    s, sd = SIGMAS.double().numpy(), 0.5
    c_in = 1 / np.sqrt(s**2 + sd**2)
    np.testing.assert_allclose(scaled.numpy(), x.numpy() * c_in[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(c_noise.numpy(), np.log(s) / 4, rtol=1e-6)
    np.testing.assert_allclose(edm_loss_weight(SIGMAS.double()).numpy(), (s**2 + sd**2) / (s * sd) ** 2, rtol=1e-12)


def test_loss_weight_times_c_out_squared_is_one():
    # EDM's design choice: lambda(sigma) c_out(sigma)^2 = 1, the network's effective target has unit weight.
    s = SIGMAS.double()
    c_out = s * 0.5 / (s**2 + 0.25).sqrt()
    torch.testing.assert_close(edm_loss_weight(s) * c_out**2, torch.ones_like(s), rtol=1e-12, atol=0)


def test_noisy_inputs_are_x0_plus_sigma_noise():
    x0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    torch.testing.assert_close(edm_noisy_inputs(x0, noise, sigma), x0 + sigma[:, None, None, None] * noise)


def test_denoising_loss_equals_the_effective_network_regression():
    # lambda |D - x0|^2 = |F - F_target|^2 with F_target = (x0 - c_skip x) / c_out (Karras et al. 2022, Eq. 8).
    g = torch.Generator().manual_seed(1)
    x0, noise, raw = (torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    sigma = torch.tensor([0.02, 0.3, 2.0, 40.0], dtype=torch.float64)
    x = x0 + sigma[:, None, None, None] * noise
    sd, s = 0.5, sigma[:, None, None, None]
    c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
    denoised = c_skip * x + c_out * raw
    target = (x0 - c_skip * x) / c_out
    expected = (raw - target).square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(edm_denoising_loss(denoised, x0, sigma), expected, rtol=1e-10, atol=0)


def test_sigma_sampling_is_log_normal_with_the_papers_parameters_and_seeded():
    n = 200_000
    sigma = edm_sample_sigmas(n, generator=torch.Generator().manual_seed(0))
    assert sigma.shape == (n,) and sigma.dtype == torch.float32 and bool((sigma > 0).all())
    log_sigma = sigma.double().log()
    # 5 standard errors of the sample mean (1.2 / sqrt(n)) and of the sample std (1.2 / sqrt(2 n))
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=5 * 1.2 / math.sqrt(n))
    assert log_sigma.std().item() == pytest.approx(1.2, abs=5 * 1.2 / math.sqrt(2 * n))
    again = edm_sample_sigmas(n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sigma, again)


def test_edm_snr_equals_the_ddpm_snr_at_the_matching_noise_level():
    abar = torch.tensor([0.999, 0.5, 0.01], dtype=torch.float64)
    sigma = ((1 - abar) / abar).sqrt()  # VP x_t / sqrt(abar) = x0 + sigma eps
    torch.testing.assert_close(edm_snr(sigma), snr_from_alphas_cumprod(abar))
    torch.testing.assert_close(regularizer_weights(edm_snr(sigma)), regularizer_weights(snr_from_alphas_cumprod(abar)))


# ------------------------------------------------------------------------------------------------
# Agreement with diffusers' EDM schedulers.


@pytest.mark.parametrize("scheduler_class", [EDMEulerScheduler, EDMDPMSolverMultistepScheduler])
def test_preconditioning_matches_the_schedulers_own_functions(scheduler_class):
    scheduler = scheduler_class(sigma_data=0.5, prediction_type="epsilon")
    x, raw = torch.randn(len(SIGMAS), 3, 4, 4), torch.randn(len(SIGMAS), 3, 4, 4)
    scaled, c_noise = edm_model_inputs(x, SIGMAS)
    for i, sigma in enumerate(SIGMAS):
        torch.testing.assert_close(scaled[i], scheduler.precondition_inputs(x[i], sigma))
        torch.testing.assert_close(c_noise[i : i + 1], scheduler.precondition_noise(sigma[None]))

    class Stub(torch.nn.Module):  # F(c_in x; c_noise) = raw, to compare D alone
        config = {"time_embedding_type": "positional"}

        def forward(self, sample, timestep):
            return type("Out", (), {"sample": raw})()

    denoised = edm_denoise(Stub(), x, SIGMAS)
    for i, sigma in enumerate(SIGMAS):
        torch.testing.assert_close(denoised[i], scheduler.precondition_outputs(x[i], raw[i], sigma))


def test_denoiser_gets_exactly_what_the_euler_sampler_feeds_the_unet(tiny_unet):
    scheduler = edm_scheduler("euler")
    scheduler.set_timesteps(6)
    sample = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps[:4]):
            sigma = scheduler.sigmas[i].expand(2)
            torch.testing.assert_close(t, sigma[0].log() / 4)  # the timestep the UNet receives is c_noise
            expected = edm_denoise(tiny_unet, sample, sigma)
            model_output = tiny_unet(scheduler.scale_model_input(sample, t), t).sample
            step = scheduler.step(model_output, t, sample)
            torch.testing.assert_close(step.pred_original_sample, expected, rtol=1e-5, atol=1e-5)
            sample = step.prev_sample


def test_denoiser_matches_the_dpm_solvers_x0_prediction(tiny_unet):
    scheduler = edm_scheduler("dpmsolver")
    scheduler.set_timesteps(6)
    sample = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps[:3]):
            model_output = tiny_unet(scheduler.scale_model_input(sample, t), t).sample
            x0_pred = scheduler.convert_model_output(model_output, sample=sample)
            expected = edm_denoise(tiny_unet, sample, scheduler.sigmas[i].expand(2))
            torch.testing.assert_close(x0_pred, expected, rtol=1e-5, atol=1e-5)
            sample = scheduler.step(model_output, t, sample).prev_sample


def test_check_edm_unet_rejects_fourier_and_learned_time_embeddings():
    fourier = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        time_embedding_type="fourier",
    )
    with pytest.raises(ValueError, match="time_embedding_type='positional'"):
        check_edm_unet(fourier)
    with pytest.raises(ValueError, match="sigma"):
        edm_model_inputs(torch.randn(2, 3, 4, 4), torch.tensor(0.5))


# ------------------------------------------------------------------------------------------------
# The pipeline.


def _euler_reference(unet, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """EDM's deterministic Euler sampler written from Karras et al. 2022 (Alg. 1 without the Heun correction)."""
    x = noise
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = edm_denoise(unet, x, sigma.expand(x.shape[0]))
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
    return x


def test_pipeline_samples_the_euler_ode_of_the_training_denoiser(tiny_unet):
    scheduler = edm_scheduler("euler")
    pipe = EDMPipeline(tiny_unet, scheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, generator=torch.manual_seed(0), num_inference_steps=5, output_type="pt").images
    noise = torch.randn(2, 3, 16, 16, generator=torch.manual_seed(0)) * scheduler.init_noise_sigma
    with torch.no_grad():
        expected = _euler_reference(tiny_unet, noise, scheduler.sigmas)
    torch.testing.assert_close(images, (expected / 2 + 0.5).clamp(0, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["euler", "dpmsolver"])
def test_saved_pipeline_loads_back_and_samples_finite_images(tiny_unet, tmp_path, kind):
    EDMPipeline(tiny_unet, edm_scheduler(kind)).save_pretrained(tmp_path)
    assert UNet2DModel.from_pretrained(tmp_path / "unet").config.sample_size == 16  # stock weights folder
    pipe = EDMPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    expected_class = EDMEulerScheduler if kind == "euler" else EDMDPMSolverMultistepScheduler
    assert type(pipe.scheduler) is expected_class
    images = pipe(batch_size=2, generator=torch.manual_seed(0), num_inference_steps=4, output_type="np").images
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
    # diffusers alone: the stock ConsistencyModelPipeline runs the same loop on the same folder, image for image
    stock = ConsistencyModelPipeline.from_pretrained(tmp_path)
    stock.set_progress_bar_config(disable=True)
    same = stock(batch_size=2, generator=torch.manual_seed(0), num_inference_steps=4, output_type="np").images
    np.testing.assert_array_equal(same, images)


def test_pipeline_rejects_schedulers_that_do_not_match_edm_training(tiny_unet):
    from diffusers import DDPMScheduler

    with pytest.raises(TypeError, match="EDMEulerScheduler"):
        EDMPipeline(tiny_unet, DDPMScheduler())
    with pytest.raises(ValueError, match="prediction_type"):
        EDMPipeline(tiny_unet, EDMEulerScheduler(prediction_type="v_prediction"))
    with pytest.raises(ValueError, match="unknown kind"):
        edm_scheduler("heun")
