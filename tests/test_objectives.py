"""DiffusionObjective and x0 recovery: checked against diffusers' own forward process and closed forms."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from diffusers_spectrum.diffusion.edm import edm_preconditioning, x0_from_edm
from diffusers_spectrum.diffusion.objectives import (
    DiffusionObjective,
    flow_shift_of,
    regularizer_weights,
    scale_alphas_cumprod,
    snr_from_flow_time,
    x0_from_epsilon,
    x0_from_flow,
    x0_from_v,
)


def _batch(shape=(4, 3, 8, 8), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


OBJECTIVES = {
    "epsilon-ddpm": lambda: DiffusionObjective("epsilon"),
    "epsilon-ddim-cosine": lambda: DiffusionObjective("epsilon", DDIMScheduler(beta_schedule="squaredcos_cap_v2")),
    "v-ddim": lambda: DiffusionObjective("v_prediction", DDIMScheduler(prediction_type="v_prediction")),
    "flow": lambda: DiffusionObjective("flow"),
    "flow-shift3": lambda: DiffusionObjective("flow", FlowMatchEulerDiscreteScheduler(shift=3.0)),
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_predict_x0_recovers_x0_exactly_from_the_true_target(name):
    objective = OBJECTIVES[name]()
    x0, noise = _batch()
    timesteps = objective.sample_timesteps(4, generator=torch.Generator().manual_seed(1))
    x_t, _ = objective.noisy_inputs(x0, noise, timesteps)
    x0_hat = objective.predict_x0(objective.target(x0, noise, timesteps), x_t, timesteps)
    torch.testing.assert_close(x0_hat, x0, atol=2e-4, rtol=1e-4)


def test_ddpm_forward_process_and_velocity_match_diffusers():
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    objective = DiffusionObjective("v_prediction", scheduler)
    x0, noise = _batch()
    timesteps = torch.tensor([0, 10, 500, 999])
    x_t, model_timesteps = objective.noisy_inputs(x0, noise, timesteps)
    torch.testing.assert_close(x_t, scheduler.add_noise(x0, noise, timesteps), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(objective.target(x0, noise, timesteps), scheduler.get_velocity(x0, noise, timesteps))
    assert torch.equal(model_timesteps, timesteps)


def test_flow_forward_process_is_the_linear_interpolant_with_timesteps_times_1000():
    objective = DiffusionObjective("flow")
    x0, noise = _batch()
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    x_t, model_timesteps = objective.noisy_inputs(x0, noise, t)
    expected = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * noise
    torch.testing.assert_close(x_t, expected)
    torch.testing.assert_close(objective.target(x0, noise, t), noise - x0)
    torch.testing.assert_close(model_timesteps, t * 1000)


def test_x0_functions_invert_their_forward_process_with_scalar_coefficients():
    x0, noise = _batch()
    abar = 0.3
    x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * noise
    torch.testing.assert_close(x0_from_epsilon(noise, x_t, abar), x0, atol=1e-5, rtol=1e-5)
    velocity = math.sqrt(abar) * noise - math.sqrt(1 - abar) * x0
    torch.testing.assert_close(x0_from_v(velocity, x_t, torch.tensor(abar)), x0, atol=1e-5, rtol=1e-5)
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    x_flow = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * noise
    torch.testing.assert_close(x0_from_flow(noise - x0, x_flow, t), x0, atol=1e-5, rtol=1e-5)


def test_edm_denoiser_returns_x0_for_the_ideal_network_output():
    x0, noise = _batch()
    sigma = torch.tensor([0.002, 0.5, 3.0, 80.0])
    x_noisy = x0 + sigma[:, None, None, None] * noise
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma)
    # Karras et al. (2022) Table 1 closed forms, checked at sigma = sigma_data: c_skip = 1/2, c_out = c_in * sd^2.
    half = edm_preconditioning(torch.tensor(0.5))
    assert half[0].item() == pytest.approx(0.5) and half[1].item() == pytest.approx(0.5 / math.sqrt(2))
    torch.testing.assert_close(c_noise, sigma.log() / 4)
    ideal = (x0 - c_skip[:, None, None, None] * x_noisy) / c_out[:, None, None, None]  # F with D(x) = x0
    torch.testing.assert_close(x0_from_edm(ideal, x_noisy, sigma), x0, atol=1e-4, rtol=1e-4)
    assert torch.allclose(c_in, 1 / (sigma**2 + 0.25).sqrt())


def test_x0_recovery_is_differentiable_and_keeps_half_precision():
    objective = DiffusionObjective("epsilon")
    x0, noise = _batch()
    timesteps = torch.tensor([5, 100, 400, 900])
    x_t, _ = objective.noisy_inputs(x0.half(), noise.half(), timesteps)
    output = noise.half().requires_grad_(True)
    x0_hat = objective.predict_x0(output, x_t, timesteps)
    assert x0_hat.dtype == torch.float16
    x0_hat.float().square().sum().backward()
    assert output.grad is not None and torch.isfinite(output.grad).all() and output.grad.abs().sum() > 0


def test_snr_matches_closed_forms():
    scheduler = DDPMScheduler()
    objective = DiffusionObjective("epsilon", scheduler)
    timesteps = torch.tensor([0, 250, 999])
    abar = scheduler.alphas_cumprod[timesteps].double()
    torch.testing.assert_close(objective.snr(timesteps), (abar / (1 - abar)).float())
    t = torch.tensor([0.2, 0.5, 0.8])
    torch.testing.assert_close(DiffusionObjective("flow").snr(t), ((1 - t) / t) ** 2)


def test_regularizer_weights_damp_noisy_steps():
    snr = torch.tensor([0.0, 0.01, 1.0, 100.0, float("inf")])
    signal = regularizer_weights(snr, "signal")
    torch.testing.assert_close(signal, torch.tensor([0.0, 0.01 / 1.01, 0.5, 100 / 101, 1.0]))
    torch.testing.assert_close(regularizer_weights(snr, "min_snr", gamma=5.0), torch.tensor([0, 0.002, 0.2, 1, 1.0]))
    assert torch.equal(regularizer_weights(snr, "none"), torch.ones(5))
    objective = DiffusionObjective("flow")
    weights = objective.regularizer_weights(torch.tensor([0.9, 0.5, 0.1]))
    assert weights[0] < weights[1] < weights[2]
    with pytest.raises(ValueError, match="unknown weighting"):
        regularizer_weights(snr, "loud")


def test_sample_timesteps_are_seeded_in_range_and_shifted_for_flow():
    ddpm = DiffusionObjective("epsilon")
    steps = ddpm.sample_timesteps(512, generator=torch.Generator().manual_seed(3))
    assert steps.dtype == torch.int64 and steps.min() >= 0 and steps.max() < 1000
    assert torch.equal(steps, ddpm.sample_timesteps(512, generator=torch.Generator().manual_seed(3)))
    plain = DiffusionObjective("flow").sample_timesteps(64, generator=torch.Generator().manual_seed(4))
    shift = 3.0
    shifted = DiffusionObjective("flow", FlowMatchEulerDiscreteScheduler(shift=shift)).sample_timesteps(
        64, generator=torch.Generator().manual_seed(4)
    )
    assert plain.min() > 0 and plain.max() < 1
    torch.testing.assert_close(shifted, shift * plain / (1 + (shift - 1) * plain))
    # the shift divides the SNR by shift^2
    torch.testing.assert_close(snr_from_flow_time(shifted), snr_from_flow_time(plain) / shift**2, rtol=1e-4, atol=0)


def test_flow_shift_is_read_from_flow_schedulers_of_both_kinds():
    assert flow_shift_of(FlowMatchEulerDiscreteScheduler(shift=2.5)) == 2.5
    dpm = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.5)
    assert flow_shift_of(dpm) == 1.5
    assert DiffusionObjective("flow", dpm).flow_shift == 1.5
    with pytest.raises(ValueError, match="not a flow-matching scheduler"):
        flow_shift_of(DDIMScheduler())


def test_scale_alphas_cumprod_multiplies_the_snr_exactly():
    abar = DDPMScheduler().alphas_cumprod.double()
    scaled = scale_alphas_cumprod(abar, 3.0)
    torch.testing.assert_close(scaled / (1 - scaled), 3.0 * abar / (1 - abar), rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="snr_scale"):
        scale_alphas_cumprod(abar, 0.0)


def test_objective_rejects_mismatched_schedulers_and_timesteps():
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionObjective("v_prediction", DDIMScheduler(prediction_type="epsilon"))
    with pytest.raises(ValueError, match="not a flow-matching scheduler"):
        DiffusionObjective("flow", DDPMScheduler())
    with pytest.raises(ValueError, match="unknown kind"):
        DiffusionObjective("score")
    x0, noise = _batch()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DiffusionObjective("flow").noisy_inputs(x0, noise, torch.full((4,), 500.0))
    with pytest.raises(TypeError, match="integer"):
        DiffusionObjective("epsilon").noisy_inputs(x0, noise, torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="same shape"):
        x0_from_epsilon(torch.zeros(4, 6, 8, 8), x0, 0.5)
