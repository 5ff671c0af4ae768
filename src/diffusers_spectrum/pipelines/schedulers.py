"""Samplers that match how a model was trained: DiT's DDPM schedule, flow matching, and DCTdiff's SNR scaling."""

import math

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from ..diffusion.objectives import DiffusionObjective, flow_shift_of, scale_alphas_cumprod


__all__ = [
    "default_scheduler",
    "flow_matching_scheduler",
    "matching_objective",
    "matching_scheduler",
    "snr_scaled_scheduler",
]


# ------------------------------------------------------------------------------------------------
# Schedulers


def flow_matching_scheduler(num_train_timesteps: int = 1000) -> DPMSolverMultistepScheduler:
    """DPM-Solver++ for flow-matching models (x_t = (1 - t) x + t noise, velocity target noise - x, timestep
    t * num_train_timesteps): `use_flow_sigmas=True`, `prediction_type="flow_prediction"`."""
    return DPMSolverMultistepScheduler(
        num_train_timesteps=num_train_timesteps,
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        flow_shift=1.0,
        final_sigmas_type="zero",
    )


def default_scheduler(
    prediction_type: str = "epsilon", num_train_timesteps: int = 1000, solver: str = "ddim"
) -> DDIMScheduler | DPMSolverMultistepScheduler:
    """Sampler for a DiT trained with DiT's DDPM schedule (linear betas 1e-4 to 0.02, Peebles & Xie 2023).

    Args:
        prediction_type: `"epsilon"`, `"v_prediction"`, or `"flow_prediction"` (gives `flow_matching_scheduler`).
        solver: `"ddim"` or `"dpmsolver++"`.
    """
    if prediction_type in ("flow", "flow_prediction"):
        return flow_matching_scheduler(num_train_timesteps)
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(
            f"default_scheduler: prediction_type must be 'epsilon', 'v_prediction' or 'flow_prediction', "
            f"got {prediction_type!r}."
        )
    schedule = dict(
        num_train_timesteps=num_train_timesteps,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type=prediction_type,
    )
    if solver == "ddim":
        return DDIMScheduler(clip_sample=False, **schedule)
    if solver == "dpmsolver++":
        return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", **schedule)
    raise ValueError(f"default_scheduler: solver must be 'ddim' or 'dpmsolver++', got {solver!r}.")


# ------------------------------------------------------------------------------------------------
# SNR scaling of the noise schedule: SNR'(t) = c SNR(t) (DCTdiff, Sec. 4).


def snr_scaled_scheduler(scheduler, snr_scale: float):
    """A copy of ``scheduler`` whose training/sampling schedule has ``SNR'(t) = snr_scale * SNR(t)``.

    - DDPM / DDIM / DPM-Solver: ``abar' = c abar / (1 + (c - 1) abar)``
      (:func:`~diffusers_spectrum.diffusion.objectives.scale_alphas_cumprod`), stored as ``trained_betas`` so the saved
      scheduler config reproduces it.
    - Flow matching (``FlowMatchEulerDiscreteScheduler``'s ``shift`` or ``flow_shift`` with ``use_flow_sigmas``):
      SNR = ((1 - t) / t)^2, and the time shift t' = s t / (1 + (s - 1) t) divides it by s^2, so
      ``shift' = shift / sqrt(c)``.

    Use the returned scheduler both for training (``DiffusionObjective(kind, scheduler)``) and in the pipeline.
    """
    if not snr_scale > 0 or not math.isfinite(snr_scale):
        raise ValueError(f"snr_scaled_scheduler: `snr_scale` must be a positive finite number, got {snr_scale}.")
    config = scheduler.config
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler) or config.get("use_flow_sigmas", False):
        key = "flow_shift" if config.get("use_flow_sigmas", False) else "shift"
        return type(scheduler).from_config(config, **{key: flow_shift_of(scheduler) / math.sqrt(snr_scale)})
    if not hasattr(scheduler, "alphas_cumprod") or "trained_betas" not in config:
        raise ValueError(
            "snr_scaled_scheduler: needs a DDPM-family scheduler with `trained_betas` (DDPM, DDIM, DPM-Solver, ...) "
            f"or a flow-matching scheduler, got {type(scheduler).__name__}."
        )
    alphas_cumprod = scale_alphas_cumprod(scheduler.alphas_cumprod, snr_scale)  # (T,) float64
    previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    betas = 1 - alphas_cumprod / previous
    return type(scheduler).from_config(scheduler.config, trained_betas=betas.tolist())


def matching_scheduler(objective: str, snr_scale: float = 1.0):
    """The sampler of a DiT trained with `objective` (`"epsilon"`, `"v_prediction"` or `"flow"`) on a schedule whose
    SNR was scaled by `snr_scale` (DCTdiff; flow matching: a time shift of 1 / sqrt(snr_scale))."""
    if objective == "flow":
        scheduler = flow_matching_scheduler()
        if snr_scale == 1.0:
            return scheduler
        return type(scheduler).from_config(scheduler.config, flow_shift=1.0 / math.sqrt(snr_scale))
    scheduler = default_scheduler(objective)
    return scheduler if snr_scale == 1.0 else snr_scaled_scheduler(scheduler, snr_scale)


def matching_objective(objective: str, snr_scale: float = 1.0) -> DiffusionObjective:
    """The training objective whose samples `matching_scheduler(objective, snr_scale)` draws: DiT's DDPM schedule
    (or flow matching), its SNR scaled by `snr_scale` (DCTdiff)."""
    from diffusers import DDPMScheduler

    if objective == "flow":
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0 / math.sqrt(snr_scale))
        return DiffusionObjective("flow", scheduler if snr_scale != 1.0 else None)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=objective)
    if snr_scale != 1.0:
        scheduler = snr_scaled_scheduler(scheduler, snr_scale)
    return DiffusionObjective(objective, scheduler)
