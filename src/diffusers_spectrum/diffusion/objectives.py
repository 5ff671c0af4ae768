"""One diffusion objective, several kinds (in the spirit of k-diffusion's denoisers): every kind answers the same
questions (noise levels, forward process, what the network sees, target, x0 recovery, SNR, loss weight), so a
trainer switches with a flag and `loss.diffusion_loss_terms` serves them all.

- `"epsilon"`, `"v_prediction"`, `"sample"`: integer steps of a diffusers DDPM-family schedule,
  `x_t = sqrt(abar) x0 + sqrt(1 - abar) eps` (Ho et al. 2020, Eq. 4); the network sees `(x_t, t)` and regresses `eps`,
  `v = sqrt(abar) eps - sqrt(1 - abar) x0` (Salimans & Ho 2022, Sec. 4) or `x0`.
- `"flow"`: `t` in (0, 1), shifted as the sampler, `x_t = (1 - t) x0 + t eps` (rectified flow, Liu et al. 2022;
  SiT, Ma et al. 2024); the network sees `(x_t, 1000 t)` and regresses `eps - x0`.
- `"edm"`: `ln sigma ~ N(P_mean, P_std^2)`, `x = x0 + sigma n`; the network sees `(c_in x, log(sigma) / 4)` and the
  preconditioned `D = c_skip x + c_out F` regresses `x0` with weight `lambda(sigma)` (Karras et al. 2022; `edm`).
- `"v_cosine"`: `t ~ U(0, 1)`, `x_t = cos(pi t / 2) x0 + sin(pi t / 2) eps`; the network sees `(x_t, t)` and
  regresses the velocity (what `DanceDiffusionPipeline` samples; `v_diffusion`).

The x0 recovery functions compute in float32 and return the model output's dtype.
"""

import math

import torch

from ..spectral._checks import compute_dtype, require_tensor
from ._checks import append_dims, check_pair, checkable, per_sample
from .edm import (
    EDM_P_MEAN,
    EDM_P_STD,
    EDM_SIGMA_DATA,
    edm_loss_weight,
    edm_model_inputs,
    edm_noisy_inputs,
    edm_preconditioning,
    edm_sample_sigmas,
    edm_snr,
    x0_from_edm,
)
from .v_diffusion import v_diffusion_inputs, v_diffusion_snr, v_diffusion_target, x0_from_v_diffusion


OBJECTIVE_KINDS = ("epsilon", "v_prediction", "sample", "flow", "edm", "v_cosine")
REGULARIZER_WEIGHTINGS = ("none", "signal", "min_snr")


# ------------------------------------------------------------------------------------------------
# x0 recovery of the DDPM family and of flow matching


def x0_from_epsilon(model_output: torch.Tensor, x_t: torch.Tensor, alphas_cumprod_t) -> torch.Tensor:
    """x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) (Ho et al. 2020, Eq. 15).

    Args:
        model_output: ``(B, ...)`` predicted noise ``eps_hat``.
        x_t: ``(B, ...)`` noisy input.
        alphas_cumprod_t: ``abar_t`` per sample, ``(B,)`` or a scalar, in ``(0, 1]``.
    """
    check_pair(model_output, x_t, "x0_from_epsilon")
    abar = per_sample(alphas_cumprod_t, x_t, "x0_from_epsilon", "alphas_cumprod_t")
    work_dtype = abar.dtype
    x0 = (x_t.to(work_dtype) - (1 - abar).sqrt() * model_output.to(work_dtype)) / abar.sqrt()
    return x0.to(model_output.dtype)


def x0_from_v(model_output: torch.Tensor, x_t: torch.Tensor, alphas_cumprod_t) -> torch.Tensor:
    """x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) v_hat (Salimans & Ho 2022, Sec. 4, v-parameterisation).

    Args:
        model_output: ``(B, ...)`` predicted velocity ``v_hat``.
        x_t: ``(B, ...)`` noisy input.
        alphas_cumprod_t: ``abar_t`` per sample, ``(B,)`` or a scalar.
    """
    check_pair(model_output, x_t, "x0_from_v")
    abar = per_sample(alphas_cumprod_t, x_t, "x0_from_v", "alphas_cumprod_t")
    work_dtype = abar.dtype
    x0 = abar.sqrt() * x_t.to(work_dtype) - (1 - abar).sqrt() * model_output.to(work_dtype)
    return x0.to(model_output.dtype)


def x0_from_flow(model_output: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
    """x0_hat = x_t - t v_hat for the linear interpolant ``x_t = (1 - t) x0 + t eps`` with ``v = eps - x0``.

    Args:
        model_output: ``(B, ...)`` predicted velocity.
        x_t: ``(B, ...)`` noisy input.
        t: interpolation time per sample in ``[0, 1]`` (``(B,)`` or a scalar), NOT the model's ``t * 1000``.
    """
    check_pair(model_output, x_t, "x0_from_flow")
    time = per_sample(t, x_t, "x0_from_flow", "t")
    if checkable(time) and ((time > 1).any() or (time < 0).any()):
        raise ValueError("x0_from_flow: `t` must lie in [0, 1]; divide model timesteps (t * 1000) by 1000 first.")
    work_dtype = time.dtype
    x0 = x_t.to(work_dtype) - time * model_output.to(work_dtype)
    return x0.to(model_output.dtype)


# ------------------------------------------------------------------------------------------------
# Signal-to-noise ratios and timestep weighting for the regularisers


def snr_from_alphas_cumprod(alphas_cumprod_t: torch.Tensor) -> torch.Tensor:
    """SNR = abar / (1 - abar) for the variance-preserving process (Kingma et al. 2021, Eq. 2)."""
    abar = alphas_cumprod_t.double() if alphas_cumprod_t.dtype == torch.float64 else alphas_cumprod_t.float()
    return abar / (1 - abar)


def snr_from_flow_time(t: torch.Tensor) -> torch.Tensor:
    """SNR = ((1 - t) / t)^2 for the linear interpolant ``x_t = (1 - t) x0 + t eps``."""
    t = t.double() if t.dtype == torch.float64 else t.float()
    return ((1 - t) / t) ** 2


def regularizer_weights(snr: torch.Tensor, weighting: str = "signal", gamma: float = 5.0) -> torch.Tensor:
    """Per-sample weights for x0-space regularisers so that very noisy steps do not dominate.

    - ``"none"``: 1 everywhere.
    - ``"signal"``: SNR / (1 + SNR), the signal fraction (``abar_t`` for DDPM, in ``[0, 1]``; -> 0 at pure noise).
    - ``"min_snr"``: min(SNR, gamma) / gamma (Min-SNR weighting, Hang et al. 2023, applied to x0-space losses).

    Args:
        snr: ``(B,)`` signal-to-noise ratios (``DiffusionObjective.snr(timesteps)``).

    Returns:
        ``(B,)`` float32 weights in ``[0, 1]``.
    """
    if weighting not in REGULARIZER_WEIGHTINGS:
        raise ValueError(
            f"regularizer_weights: unknown weighting {weighting!r}; choose one of {REGULARIZER_WEIGHTINGS}."
        )
    snr = snr.float()
    if weighting == "none":
        return torch.ones_like(snr)
    if weighting == "signal":
        return torch.where(torch.isinf(snr), torch.ones_like(snr), snr / (1 + snr))
    if gamma <= 0:
        raise ValueError(f"regularizer_weights: `gamma` must be positive, got {gamma}.")
    return snr.clamp(max=gamma) / gamma


# ------------------------------------------------------------------------------------------------
# Schedules


def flow_shift_of(scheduler) -> float:
    """The time shift s of a flow-matching scheduler (sigma' = s sigma / (1 + (s - 1) sigma), SNR / s^2).

    ``FlowMatchEulerDiscreteScheduler`` stores it as ``config.shift``; schedulers with ``use_flow_sigmas=True``
    (DPM-Solver, UniPC) as ``config.flow_shift``.
    """
    config = getattr(scheduler, "config", {})
    if config.get("use_dynamic_shifting", False):
        raise ValueError("flow_shift_of: flow schedulers with use_dynamic_shifting=True are not supported.")
    if config.get("use_flow_sigmas", False):
        if config.get("prediction_type") != "flow_prediction":
            raise ValueError(
                f"flow_shift_of: {type(scheduler).__name__} uses flow sigmas but prediction_type="
                f"{config.get('prediction_type')!r}; set prediction_type='flow_prediction'."
            )
        return float(config.get("flow_shift", 1.0))
    if "shift" in config and not hasattr(scheduler, "alphas_cumprod"):
        return float(config["shift"])
    raise ValueError(
        f"flow_shift_of: {type(scheduler).__name__} is not a flow-matching scheduler; use "
        "FlowMatchEulerDiscreteScheduler or a scheduler with use_flow_sigmas=True (prediction_type='flow_prediction')."
    )


def scale_alphas_cumprod(alphas_cumprod: torch.Tensor, snr_scale: float) -> torch.Tensor:
    """abar' with SNR'(t) = c SNR(t): abar' = c abar / (1 + (c - 1) abar) (DCTdiff's SNR scaling, Ning et al. 2024)."""
    if not snr_scale > 0 or not math.isfinite(snr_scale):
        raise ValueError(f"scale_alphas_cumprod: `snr_scale` must be a positive finite number, got {snr_scale}.")
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return snr_scale * abar / (1 + (snr_scale - 1) * abar)


# ------------------------------------------------------------------------------------------------
# The objective


class DiffusionObjective:
    r"""Noise levels, forward process, network inputs, target, x0 recovery, SNR and loss weight of one diffusion
    parameterisation. `DiffusionObjective(kind, ...)` builds the kind's class (the table in the module docstring).

    Args:
        kind (`str`, *optional*, defaults to `"epsilon"`): one of `OBJECTIVE_KINDS`.
        noise_scheduler (*optional*):
            For `"epsilon"` / `"v_prediction"` / `"sample"`: a diffusers scheduler with `alphas_cumprod` (DDPM, DDIM,
            DPM-Solver, ...) whose `config.prediction_type` equals `kind`; None builds DDPM's
            `DDPMScheduler(num_train_timesteps=1000)` (linear betas 1e-4 to 0.02). For `"flow"`: None, a
            `FlowMatchEulerDiscreteScheduler` or a scheduler with `use_flow_sigmas=True`, whose time shift
            (:func:`flow_shift_of`) is applied to the uniformly drawn training times so training matches the sampler.
        p_mean, p_std, sigma_data (`"edm"` only): EDM's noise-level distribution and data std (Karras et al. 2022,
            Table 1: -1.2, 1.2, 0.5).

    Example:
        ```py
        objective = DiffusionObjective("flow")
        t = objective.sample_timesteps(x0.shape[0], generator=g, device=x0.device)
        noise = torch.randn_like(x0)
        x_t, model_t = objective.noisy_inputs(x0, noise, t)
        out = transformer(objective.model_input(x_t, t), timestep=model_t, class_labels=y).sample
        prediction = objective.prediction(out, x_t, t)
        loss = objective.loss(prediction, objective.target(x0, noise, t), t)
        x0_hat = objective.predict_x0(prediction, x_t, t)
        ```
    """

    kind: str
    num_train_timesteps: int = 1000

    def __new__(cls, kind: str = "epsilon", *args, **kwargs):
        if cls is DiffusionObjective:
            if kind not in OBJECTIVE_KINDS:
                raise ValueError(f"DiffusionObjective: unknown kind {kind!r}; choose one of {OBJECTIVE_KINDS}.")
            cls = _KIND_CLASSES[kind]
        return super().__new__(cls)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r})"

    # -- what every kind defines -----------------------------------------------------------------

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """`(B,)` training noise levels, drawn on the generator's device and moved to `device`."""
        raise NotImplementedError

    def noisy_inputs(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
        """Forward process: `(x_t, model_timesteps)`, `x_t` in `x0`'s shape and dtype, `model_timesteps` what the
        network receives as its timestep."""
        raise NotImplementedError

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What `prediction` regresses, in `x0`'s dtype."""
        raise NotImplementedError

    def predict_x0(self, prediction: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x0_hat from `prediction` (differentiable)."""
        raise NotImplementedError

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        """`(B,)` float32 signal-to-noise ratio of the forward process at `timesteps`."""
        raise NotImplementedError

    # -- what most kinds share -------------------------------------------------------------------

    def model_input(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The sample the network receives (`x_t`; EDM scales it)."""
        return x_t

    def prediction(self, model_output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the loss compares with `target`: the network output (EDM: the preconditioned denoiser)."""
        return model_output

    def loss_weight(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        """`(B,)` per-sample weight of the loss, or None for uniform weights."""
        return None

    def regularizer_weights(self, timesteps: torch.Tensor, weighting: str = "signal", gamma: float = 5.0):
        """`(B,)` weights for x0-space regularisers; see :func:`regularizer_weights`."""
        return regularizer_weights(self.snr(timesteps), weighting, gamma)

    def loss(self, prediction: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, distance=None):
        """The scalar diffusion loss: the mean squared error over all elements, or, with a per-sample `distance(
        prediction, target) -> (B,)` or a loss weight, the batch mean of the (weighted) per-sample losses."""
        weight = self.loss_weight(timesteps)
        if distance is None and weight is None:
            return (prediction - target).square().mean()
        per_sample = mean_squared_error(prediction, target) if distance is None else distance(prediction, target)
        return (per_sample if weight is None else weight.to(per_sample.dtype) * per_sample).mean()


def mean_squared_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`(B, ...) x 2 -> (B,)`: the squared error averaged over each sample."""
    return (prediction - target).square().mean(dim=tuple(range(1, prediction.ndim)))


class DDPMObjective(DiffusionObjective):
    """`"epsilon"`, `"v_prediction"` or `"sample"` on a diffusers DDPM-family schedule; timesteps are integer
    indices in `[0, num_train_timesteps)`."""

    def __init__(self, kind: str = "epsilon", noise_scheduler=None):
        if noise_scheduler is None:
            from diffusers import DDPMScheduler

            noise_scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=kind)
        if not hasattr(noise_scheduler, "alphas_cumprod"):
            raise ValueError(
                f"DiffusionObjective: kind={kind!r} needs a DDPM-family scheduler with `alphas_cumprod` "
                f"(DDPMScheduler, DDIMScheduler), got {type(noise_scheduler).__name__}."
            )
        prediction_type = noise_scheduler.config.get("prediction_type", kind)
        if prediction_type != kind:
            raise ValueError(
                f"DiffusionObjective: kind={kind!r} but the scheduler's prediction_type is {prediction_type!r}; the "
                f"pipeline would sample with the wrong parameterisation. Build it with "
                f"`{type(noise_scheduler).__name__}.from_config(scheduler.config, prediction_type={kind!r})`."
            )
        self.kind = kind
        self.noise_scheduler = noise_scheduler
        self.alphas_cumprod = torch.as_tensor(noise_scheduler.alphas_cumprod, dtype=torch.float64)
        self.num_train_timesteps = int(self.alphas_cumprod.shape[0])
        self._alphas_cumprod_by_device = {}

    def __repr__(self) -> str:
        return f"DiffusionObjective(kind={self.kind!r}, num_train_timesteps={self.num_train_timesteps})"

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        gen_device = generator.device if generator is not None else "cpu"
        steps = torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator, device=gen_device)
        return steps.to(device or gen_device)

    def _alphas_cumprod_at(self, timesteps: torch.Tensor, work_dtype: torch.dtype) -> torch.Tensor:
        if timesteps.is_floating_point():
            raise TypeError(
                f"DiffusionObjective(kind={self.kind!r}): timesteps must be integer indices, got {timesteps.dtype}."
            )
        if timesteps.device not in self._alphas_cumprod_by_device:  # one copy per device, not one per step
            self._alphas_cumprod_by_device[timesteps.device] = self.alphas_cumprod.to(timesteps.device)
        return self._alphas_cumprod_by_device[timesteps.device][timesteps].to(work_dtype)

    def _coefficients(self, timesteps: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, s_t) with x_t = a_t x0 + s_t eps, each `(B, 1, ..., 1)` in float32/64."""
        _check_timestep_shape(timesteps, x)
        abar = self._alphas_cumprod_at(timesteps, compute_dtype(x.dtype))
        return append_dims(abar.sqrt(), x.ndim), append_dims((1 - abar).sqrt(), x.ndim)

    def noisy_inputs(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
        _check_noise(x0, noise)
        a_t, s_t = self._coefficients(timesteps, x0)
        if checkable(timesteps) and ((timesteps < 0).any() or (timesteps >= self.num_train_timesteps).any()):
            raise ValueError(f"DiffusionObjective: timesteps must lie in [0, {self.num_train_timesteps}).")
        x_t = (a_t * x0.to(a_t.dtype) + s_t * noise.to(a_t.dtype)).to(x0.dtype)
        return x_t, timesteps

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.kind == "epsilon":
            return noise
        if self.kind == "sample":
            return x0
        a_t, s_t = self._coefficients(timesteps, x0)
        return (a_t * noise.to(a_t.dtype) - s_t * x0.to(a_t.dtype)).to(x0.dtype)

    def predict_x0(self, prediction: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.kind == "sample":
            check_pair(prediction, x_t, "DiffusionObjective.predict_x0")
            return prediction
        abar = self._alphas_cumprod_at(timesteps, compute_dtype(x_t.dtype))
        recover = x0_from_epsilon if self.kind == "epsilon" else x0_from_v
        return recover(prediction, x_t, abar)

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        return snr_from_alphas_cumprod(self._alphas_cumprod_at(timesteps, torch.float64)).float()


class FlowObjective(DiffusionObjective):
    """`"flow"`: the linear interpolant with velocity target; times are floats in (0, 1), shifted as the sampler's
    (`flow_shift_of`), and the network sees `1000 t` (diffusers' `FlowMatchEulerDiscreteScheduler` timesteps)."""

    def __init__(self, kind: str = "flow", noise_scheduler=None):
        self.kind = kind
        self.noise_scheduler = noise_scheduler
        self.flow_shift = 1.0 if noise_scheduler is None else flow_shift_of(noise_scheduler)

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Uniform times in (0, 1), then shifted: t' = s t / (1 + (s - 1) t)."""
        gen_device = generator.device if generator is not None else "cpu"
        t = torch.rand(batch_size, generator=generator, device=gen_device).clamp(1e-5, 1 - 1e-5)
        t = self.flow_shift * t / (1 + (self.flow_shift - 1) * t)
        return t.to(device or gen_device)

    def _time(self, timesteps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The times as `(B, 1, ..., 1)` float32/64, checked (values on the CPU only: no host sync on a GPU)."""
        _check_timestep_shape(timesteps, x)
        if not timesteps.is_floating_point():
            raise ValueError(
                "DiffusionObjective(kind='flow'): timesteps must be float times in [0, 1] from `sample_timesteps`, "
                f"got dtype {timesteps.dtype}."
            )
        return append_dims(timesteps.to(compute_dtype(x.dtype)), x.ndim)

    def noisy_inputs(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
        _check_noise(x0, noise)
        t = self._time(timesteps, x0)
        if checkable(timesteps) and ((timesteps < 0).any() or (timesteps > 1).any()):
            raise ValueError(
                "DiffusionObjective(kind='flow'): timesteps must be float times in [0, 1] from `sample_timesteps`, "
                "not the model timesteps (t * 1000)."
            )
        x_t = ((1 - t) * x0.to(t.dtype) + t * noise.to(t.dtype)).to(x0.dtype)
        return x_t, timesteps.float() * 1000

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return (noise.float() - x0.float()).to(x0.dtype)

    def predict_x0(self, prediction: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        check_pair(prediction, x_t, "DiffusionObjective.predict_x0")
        time = self._time(timesteps, x_t)
        return (x_t.to(time.dtype) - time * prediction.to(time.dtype)).to(prediction.dtype)

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        if not timesteps.is_floating_point():
            raise ValueError("DiffusionObjective(kind='flow'): timesteps must be float times in [0, 1].")
        return snr_from_flow_time(timesteps).float()


class EDMObjective(DiffusionObjective):
    """`"edm"` (Karras et al. 2022): noise levels `sigma` with `ln sigma ~ N(p_mean, p_std^2)`, `x = x0 + sigma n`,
    the network sees `(c_in x, log(sigma) / 4)` as diffusers' EDM schedulers feed it, the preconditioned denoiser
    `D = c_skip x + c_out F` regresses `x0` with the weight `lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`."""

    def __init__(
        self,
        kind: str = "edm",
        p_mean: float = EDM_P_MEAN,
        p_std: float = EDM_P_STD,
        sigma_data: float = EDM_SIGMA_DATA,
    ):
        self.kind, self.p_mean, self.p_std, self.sigma_data = kind, p_mean, p_std, sigma_data

    def __repr__(self) -> str:
        settings = f"p_mean={self.p_mean}, p_std={self.p_std}, sigma_data={self.sigma_data}"
        return f"DiffusionObjective(kind='edm', {settings})"

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return edm_sample_sigmas(batch_size, self.p_mean, self.p_std, generator=generator, device=device)

    def noisy_inputs(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
        return edm_noisy_inputs(x0, noise, timesteps), edm_preconditioning(timesteps, self.sigma_data)[3]

    def model_input(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return edm_model_inputs(x_t, timesteps, self.sigma_data)[0]

    def prediction(self, model_output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return x0_from_edm(model_output, x_t, timesteps, self.sigma_data)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return x0

    def predict_x0(self, prediction: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return prediction

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        return edm_snr(timesteps).float()

    def loss_weight(self, timesteps: torch.Tensor) -> torch.Tensor:
        return edm_loss_weight(timesteps, self.sigma_data)


class VCosineObjective(DiffusionObjective):
    """`"v_cosine"`: the v-diffusion process `DanceDiffusionPipeline` samples (`diffusion.v_diffusion`): `t ~ U(0, 1)`
    is also the network's timestep, the target is the velocity."""

    def __init__(self, kind: str = "v_cosine"):
        self.kind = kind

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        gen_device = generator.device if generator is not None else "cpu"
        return torch.rand(batch_size, generator=generator, device=gen_device).to(device or gen_device)

    def noisy_inputs(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
        _check_noise(x0, noise)
        return v_diffusion_inputs(x0, noise, timesteps), timesteps

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return v_diffusion_target(x0, noise, timesteps)

    def predict_x0(self, prediction: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return x0_from_v_diffusion(prediction, x_t, timesteps)

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        return v_diffusion_snr(timesteps).float()


_KIND_CLASSES = {
    "epsilon": DDPMObjective,
    "v_prediction": DDPMObjective,
    "sample": DDPMObjective,
    "flow": FlowObjective,
    "edm": EDMObjective,
    "v_cosine": VCosineObjective,
}


def _check_noise(x0: torch.Tensor, noise: torch.Tensor) -> None:
    require_tensor(x0, "DiffusionObjective.noisy_inputs", "x0")
    if noise.shape != x0.shape:
        raise ValueError(f"noisy_inputs: `noise` {tuple(noise.shape)} must match `x0` {tuple(x0.shape)}.")


def _check_timestep_shape(timesteps: torch.Tensor, x: torch.Tensor) -> None:
    if timesteps.ndim != 1 or timesteps.shape[0] != x.shape[0]:
        raise ValueError(
            f"DiffusionObjective: timesteps must have shape ({x.shape[0]},), got {tuple(timesteps.shape)}."
        )
