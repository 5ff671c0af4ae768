"""Diffusion training objectives: forward process, regression target and x0 recovery per parameterisation.

Three objectives share one interface (:class:`DiffusionObjective`) so a trainer can switch with a flag:

- ``"epsilon"`` and ``"v_prediction"``: the discrete DDPM-family forward process of any diffusers
  DDPM/DDIM scheduler, ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (Ho et al. 2020, Eq. 4), with the
  noise ``eps`` or the velocity ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` (Salimans & Ho 2022, Sec. 4)
  as the target. Training timesteps are integer indices in ``[0, num_train_timesteps)``.
- ``"sample"``: the same forward process with the clean sample ``x0`` itself as the target (diffusers'
  ``prediction_type="sample"``); x0 recovery is the identity.
- ``"flow"``: the linear interpolant ``x_t = (1 - t) x0 + t eps`` with ``t`` in ``(0, 1)`` and velocity target
  ``eps - x0`` (rectified flow / flow matching, Liu et al. 2022; Lipman et al. 2022; SiT, Ma et al. 2024). The
  model sees ``t * 1000``, matching diffusers' ``FlowMatchEulerDiscreteScheduler`` timesteps.

The x0 recovery functions (one per parameterisation, plus EDM's preconditioned denoiser, Karras et al. 2022,
Eq. 7 and Table 1) give the predicted clean sample ``x0_hat`` that spectral regularisers compare with ``x0``
(SPEC.md, "Spectral regularisation of the diffusion objective"). They compute in float32 and return the model
output's dtype.
"""

import math

import torch

from ..spectral._checks import compute_dtype, require_tensor


OBJECTIVE_KINDS = ("epsilon", "v_prediction", "sample", "flow")
REGULARIZER_WEIGHTINGS = ("none", "signal", "min_snr")


def _append_dims(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` with ``ndim`` dimensions in total, for broadcasting against a batch."""
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def _per_sample(values, x: torch.Tensor, func: str, name: str) -> torch.Tensor:
    """A float, a ``(B,)`` tensor or a scalar tensor, as a float32/64 ``(B, 1, ..., 1)`` tensor on ``x``'s device."""
    values = torch.as_tensor(values, device=x.device, dtype=compute_dtype(x.dtype))
    if values.ndim == 0:
        values = values.expand(x.shape[0])
    if values.ndim != 1 or values.shape[0] != x.shape[0]:
        raise ValueError(
            f"{func}: `{name}` must be a scalar or have shape (batch,) = ({x.shape[0]},), got {tuple(values.shape)}."
        )
    return _append_dims(values, x.ndim)


def _checkable(values: torch.Tensor) -> bool:
    """Whether value checks on `values` are free: CPU tensors only (on an accelerator a check is a host sync on the
    training hot path; values are validated where data enters instead)."""
    return values.device.type == "cpu"


def _check_pair(model_output: torch.Tensor, x_t: torch.Tensor, func: str) -> None:
    require_tensor(model_output, func, "model_output")
    require_tensor(x_t, func, "x_t")
    if model_output.shape != x_t.shape:
        raise ValueError(
            f"{func}: `model_output` {tuple(model_output.shape)} and `x_t` {tuple(x_t.shape)} must have the same "
            "shape; for a DiT that learns sigma, split off the variance channels first (`model_output[:, :C]`)."
        )


# ------------------------------------------------------------------------------------------------
# x0 recovery, one function per parameterisation.


def x0_from_epsilon(model_output: torch.Tensor, x_t: torch.Tensor, alphas_cumprod_t) -> torch.Tensor:
    """x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) (Ho et al. 2020, Eq. 15).

    Args:
        model_output: ``(B, ...)`` predicted noise ``eps_hat``.
        x_t: ``(B, ...)`` noisy input.
        alphas_cumprod_t: ``abar_t`` per sample, ``(B,)`` or a scalar, in ``(0, 1]``.

    Returns:
        ``(B, ...)`` predicted clean sample in ``model_output``'s dtype.
    """
    _check_pair(model_output, x_t, "x0_from_epsilon")
    abar = _per_sample(alphas_cumprod_t, x_t, "x0_from_epsilon", "alphas_cumprod_t")
    work_dtype = abar.dtype
    x0 = (x_t.to(work_dtype) - (1 - abar).sqrt() * model_output.to(work_dtype)) / abar.sqrt()
    return x0.to(model_output.dtype)


def x0_from_v(model_output: torch.Tensor, x_t: torch.Tensor, alphas_cumprod_t) -> torch.Tensor:
    """x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) v_hat (Salimans & Ho 2022, Sec. 4, v-parameterisation).

    Args:
        model_output: ``(B, ...)`` predicted velocity ``v_hat``.
        x_t: ``(B, ...)`` noisy input.
        alphas_cumprod_t: ``abar_t`` per sample, ``(B,)`` or a scalar.

    Returns:
        ``(B, ...)`` predicted clean sample in ``model_output``'s dtype.
    """
    _check_pair(model_output, x_t, "x0_from_v")
    abar = _per_sample(alphas_cumprod_t, x_t, "x0_from_v", "alphas_cumprod_t")
    work_dtype = abar.dtype
    x0 = abar.sqrt() * x_t.to(work_dtype) - (1 - abar).sqrt() * model_output.to(work_dtype)
    return x0.to(model_output.dtype)


def x0_from_flow(model_output: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
    """x0_hat = x_t - t v_hat for the linear interpolant ``x_t = (1 - t) x0 + t eps`` with ``v = eps - x0``.

    Args:
        model_output: ``(B, ...)`` predicted velocity.
        x_t: ``(B, ...)`` noisy input.
        t: interpolation time per sample in ``[0, 1]`` (``(B,)`` or a scalar), NOT the model's ``t * 1000``.

    Returns:
        ``(B, ...)`` predicted clean sample in ``model_output``'s dtype.
    """
    _check_pair(model_output, x_t, "x0_from_flow")
    time = _per_sample(t, x_t, "x0_from_flow", "t")
    if _checkable(time) and ((time > 1).any() or (time < 0).any()):
        raise ValueError("x0_from_flow: `t` must lie in [0, 1]; divide model timesteps (t * 1000) by 1000 first.")
    work_dtype = time.dtype
    x0 = x_t.to(work_dtype) - time * model_output.to(work_dtype)
    return x0.to(model_output.dtype)


def edm_preconditioning(
    sigma, sigma_data: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM's (c_skip, c_out, c_in, c_noise) for noise level ``sigma`` (Karras et al. 2022, Table 1).

    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2),
    c_noise = log(sigma) / 4. Shapes follow ``sigma``.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    if _checkable(sigma) and (sigma <= 0).any():
        raise ValueError("edm_preconditioning: `sigma` must be positive.")
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt(), sigma.log() / 4


def x0_from_edm(model_output: torch.Tensor, x_t: torch.Tensor, sigma, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM denoiser D(x; sigma) = c_skip x + c_out F (Karras et al. 2022, Eq. 7); D is the x0 estimate.

    Args:
        model_output: ``(B, ...)`` raw network output ``F_theta(c_in x, c_noise)``.
        x_t: ``(B, ...)`` noisy input ``x0 + sigma n`` (unscaled, before ``c_in``).
        sigma: noise level per sample, ``(B,)`` or a scalar, positive.
        sigma_data: data standard deviation (0.5 in EDM).

    Returns:
        ``(B, ...)`` denoised sample in ``model_output``'s dtype.
    """
    _check_pair(model_output, x_t, "x0_from_edm")
    sigma = _per_sample(sigma, x_t, "x0_from_edm", "sigma")
    c_skip, c_out, _, _ = edm_preconditioning(sigma.float(), sigma_data)
    c_skip, c_out = c_skip.to(sigma.dtype), c_out.to(sigma.dtype)
    x0 = c_skip * x_t.to(sigma.dtype) + c_out * model_output.to(sigma.dtype)
    return x0.to(model_output.dtype)


# ------------------------------------------------------------------------------------------------
# Signal-to-noise ratios and timestep weighting for the regularisers.


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
# The objective.


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


class DiffusionObjective:
    r"""Forward process, regression target and x0 recovery of one diffusion parameterisation.

    Args:
        kind (`str`, *optional*, defaults to `"epsilon"`):
            `"epsilon"`, `"v_prediction"`, `"sample"` (DDPM-family schedule) or `"flow"` (linear interpolant,
            velocity target).
        noise_scheduler (*optional*):
            For `"epsilon"`/`"v_prediction"`: a diffusers scheduler with `alphas_cumprod` (DDPMScheduler,
            DDIMScheduler, DPMSolverMultistepScheduler, ...) whose `config.prediction_type` equals `kind`; None
            builds the default `DDPMScheduler(num_train_timesteps=1000)` (linear betas 1e-4 to 0.02). For `"flow"`:
            None, a `FlowMatchEulerDiscreteScheduler` or a scheduler with `use_flow_sigmas=True` (e.g. DPM-Solver with
            `prediction_type="flow_prediction"`), whose time shift (see :func:`flow_shift_of`) is applied to the
            uniformly drawn training times, so training matches the sampler; dynamic shifting is not supported.

    Example:
        ```py
        objective = DiffusionObjective("flow")
        t = objective.sample_timesteps(x0.shape[0], generator=g, device=x0.device)
        noise = torch.randn_like(x0)
        x_t, model_t = objective.noisy_inputs(x0, noise, t)
        out = transformer(x_t, timestep=model_t, class_labels=y).sample
        loss = ((out - objective.target(x0, noise, t)) ** 2).mean()
        x0_hat = objective.predict_x0(out, x_t, t)
        ```
    """

    def __init__(self, kind: str = "epsilon", noise_scheduler=None):
        if kind not in OBJECTIVE_KINDS:
            raise ValueError(f"DiffusionObjective: unknown kind {kind!r}; choose one of {OBJECTIVE_KINDS}.")
        self.kind = kind
        self.noise_scheduler = noise_scheduler
        self.alphas_cumprod = None
        self._alphas_cumprod_by_device = {}
        self.flow_shift = 1.0
        if kind == "flow":
            if noise_scheduler is not None:
                self.flow_shift = flow_shift_of(noise_scheduler)
            self.num_train_timesteps = 1000
            return
        if noise_scheduler is None:
            from diffusers import DDPMScheduler

            noise_scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=kind)
            self.noise_scheduler = noise_scheduler
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
        self.alphas_cumprod = torch.as_tensor(noise_scheduler.alphas_cumprod, dtype=torch.float64)
        self.num_train_timesteps = int(self.alphas_cumprod.shape[0])

    def __repr__(self) -> str:
        return f"DiffusionObjective(kind={self.kind!r}, num_train_timesteps={self.num_train_timesteps})"

    # -- timesteps ---------------------------------------------------------------------------------

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Training timesteps: ``(B,)`` int64 indices (DDPM family) or ``(B,)`` float32 times in (0, 1) (flow).

        Flow times are drawn uniformly, then shifted by the scheduler's ``shift``: t' = s t / (1 + (s - 1) t).
        """
        gen_device = generator.device if generator is not None else "cpu"
        if self.kind == "flow":
            t = torch.rand(batch_size, generator=generator, device=gen_device).clamp(1e-5, 1 - 1e-5)
            t = self.flow_shift * t / (1 + (self.flow_shift - 1) * t)
            return t.to(device or gen_device)
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

    def _check_flow_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        if not timesteps.is_floating_point():
            raise ValueError(
                "DiffusionObjective(kind='flow'): timesteps must be float times in [0, 1] from `sample_timesteps`, "
                f"got dtype {timesteps.dtype}."
            )
        return timesteps

    def _check_range(self, timesteps: torch.Tensor) -> None:
        """Value checks of timesteps on the CPU (free there; skipped on an accelerator, where reading the values would
        force a host sync on every training step: timesteps from :meth:`sample_timesteps` are in range by
        construction)."""
        if not _checkable(timesteps):
            return
        if self.kind == "flow":
            if (timesteps < 0).any() or (timesteps > 1).any():
                raise ValueError(
                    "DiffusionObjective(kind='flow'): timesteps must be float times in [0, 1] from "
                    "`sample_timesteps`, not the model timesteps (t * 1000)."
                )
        elif (timesteps < 0).any() or (timesteps >= self.num_train_timesteps).any():
            raise ValueError(f"DiffusionObjective: timesteps must lie in [0, {self.num_train_timesteps}).")

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        """``(B,)`` float32 signal-to-noise ratio of the forward process at ``timesteps``."""
        if self.kind == "flow":
            return snr_from_flow_time(self._check_flow_time(timesteps)).float()
        return snr_from_alphas_cumprod(self._alphas_cumprod_at(timesteps, torch.float64)).float()

    def regularizer_weights(self, timesteps: torch.Tensor, weighting: str = "signal", gamma: float = 5.0):
        """``(B,)`` weights for x0-space regularisers; see :func:`regularizer_weights`."""
        return regularizer_weights(self.snr(timesteps), weighting, gamma)

    # -- forward process and target ---------------------------------------------------------------

    def _coefficients(self, timesteps: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, s_t) with x_t = a_t x0 + s_t eps, each ``(B, 1, ..., 1)`` in float32/64."""
        work_dtype = compute_dtype(x.dtype)
        if timesteps.ndim != 1 or timesteps.shape[0] != x.shape[0]:
            raise ValueError(
                f"DiffusionObjective: timesteps must have shape ({x.shape[0]},), got {tuple(timesteps.shape)}."
            )
        if self.kind == "flow":
            t = self._check_flow_time(timesteps).to(work_dtype)
            return _append_dims(1 - t, x.ndim), _append_dims(t, x.ndim)
        abar = self._alphas_cumprod_at(timesteps, work_dtype)
        return _append_dims(abar.sqrt(), x.ndim), _append_dims((1 - abar).sqrt(), x.ndim)

    def noisy_inputs(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
        """Forward process: returns ``(x_t, model_timesteps)``.

        ``x_t`` has ``x0``'s shape and dtype; ``model_timesteps`` is what the network gets: the integer indices
        (DDPM family) or ``t * 1000`` (flow, float32).
        """
        require_tensor(x0, "DiffusionObjective.noisy_inputs", "x0")
        if noise.shape != x0.shape:
            raise ValueError(f"noisy_inputs: `noise` {tuple(noise.shape)} must match `x0` {tuple(x0.shape)}.")
        a_t, s_t = self._coefficients(timesteps, x0)
        self._check_range(timesteps)
        x_t = (a_t * x0.to(a_t.dtype) + s_t * noise.to(a_t.dtype)).to(x0.dtype)
        model_timesteps = timesteps.float() * 1000 if self.kind == "flow" else timesteps
        return x_t, model_timesteps

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Regression target in ``x0``'s dtype: ``noise`` (epsilon), ``a_t noise - s_t x0`` (v), ``x0`` (sample),
        ``noise - x0`` (flow)."""
        if self.kind == "epsilon":
            return noise
        if self.kind == "sample":
            return x0
        if self.kind == "flow":
            return (noise.float() - x0.float()).to(x0.dtype)
        a_t, s_t = self._coefficients(timesteps, x0)
        return (a_t * noise.to(a_t.dtype) - s_t * x0.to(a_t.dtype)).to(x0.dtype)

    def predict_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x0_hat from the model output (same parameterisation as :meth:`target`), differentiable."""
        if self.kind == "flow":
            _check_pair(model_output, x_t, "DiffusionObjective.predict_x0")
            time = _append_dims(self._check_flow_time(timesteps).to(compute_dtype(x_t.dtype)), x_t.ndim)
            return (x_t.to(time.dtype) - time * model_output.to(time.dtype)).to(model_output.dtype)
        if self.kind == "sample":
            _check_pair(model_output, x_t, "DiffusionObjective.predict_x0")
            return model_output
        abar = self._alphas_cumprod_at(timesteps, compute_dtype(x_t.dtype))
        if self.kind == "epsilon":
            return x0_from_epsilon(model_output, x_t, abar)
        return x0_from_v(model_output, x_t, abar)


def scale_alphas_cumprod(alphas_cumprod: torch.Tensor, snr_scale: float) -> torch.Tensor:
    """abar' with SNR'(t) = c SNR(t): abar' = c abar / (1 + (c - 1) abar) (DCTdiff's SNR scaling, Ning et al. 2024)."""
    if not snr_scale > 0 or not math.isfinite(snr_scale):
        raise ValueError(f"scale_alphas_cumprod: `snr_scale` must be a positive finite number, got {snr_scale}.")
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return snr_scale * abar / (1 + (snr_scale - 1) * abar)
