"""The EDM training formulation (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models"), for a stock ``diffusers.UNet2DModel``, matched to diffusers' EDM samplers.

- Forward process (variance exploding): ``x = x0 + sigma n``, ``n ~ N(0, I)``.
- Training noise levels: ``ln sigma ~ N(P_mean, P_std^2)`` with ``P_mean = -1.2``, ``P_std = 1.2`` (Table 1).
- Preconditioned denoiser (Eq. 7): ``D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))``
  with ``sigma_data = 0.5``; the coefficients are :func:`edm_preconditioning`.
- Loss (Eq. 8): ``lambda(sigma) ||D(x; sigma) - x0||^2`` with ``lambda = (sigma^2 + sigma_data^2) /
  (sigma sigma_data)^2`` (so that ``lambda c_out^2 = 1``: the network's effective target has unit weight).

What the sampler feeds the network (``diffusers.EDMEulerScheduler`` / ``EDMDPMSolverMultistepScheduler``,
``prediction_type="epsilon"``, which in these schedulers means EDM's own ``c_out = sigma sigma_data /
sqrt(sigma^2 + sigma_data^2)``; ``"v_prediction"`` flips its sign): the pipeline passes ``scheduler.timesteps[i] =
precondition_noise(sigma) = log(sigma) / 4`` as the UNet's ``timestep``, ``scale_model_input`` multiplies the sample by
``c_in = 1 / sqrt(sigma^2 + sigma_data^2)``, and ``step`` forms ``c_skip x + c_out F`` with the unscaled sample. The
initial sample is ``n * scheduler.init_noise_sigma``. :func:`edm_denoise` computes exactly that, so training and
sampling see the same network inputs.
"""

import torch

from ..spectral._checks import compute_dtype, require_4d
from ._checks import check_pair, checkable, per_sample


# Paper defaults (Karras et al. 2022, Table 1, "Ours" column).
EDM_SIGMA_DATA = 0.5
EDM_P_MEAN = -1.2
EDM_P_STD = 1.2


# ------------------------------------------------------------------------------------------------
# Noise levels, forward process and loss weight.


def edm_sample_sigmas(
    batch_size: int,
    p_mean: float = EDM_P_MEAN,
    p_std: float = EDM_P_STD,
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """Training noise levels ``sigma = exp(P_mean + P_std n)``, ``n ~ N(0, 1)`` (Karras et al. 2022, Table 1).

    Returns:
        ``(B,)`` float32 positive noise levels on ``device`` (drawn on the generator's device).
    """
    if batch_size < 1:
        raise ValueError(f"edm_sample_sigmas: `batch_size` must be positive, got {batch_size}.")
    if not p_std > 0:
        raise ValueError(f"edm_sample_sigmas: `p_std` must be positive, got {p_std}.")
    gen_device = generator.device if generator is not None else "cpu"
    normal = torch.randn(batch_size, generator=generator, device=gen_device, dtype=torch.float32)
    return (p_mean + p_std * normal).exp().to(device or gen_device)


def edm_noisy_inputs(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Variance-exploding forward process ``x = x0 + sigma n``: ``(B, C, H, W)`` in ``x0``'s dtype.

    Args:
        x0: ``(B, C, H, W)`` clean images (about unit scale, e.g. in [-1, 1]; sigma_data = 0.5 assumes that).
        noise: ``(B, C, H, W)`` standard normal noise.
        sigma: ``(B,)`` noise levels.
    """
    require_4d(x0, "edm_noisy_inputs", "x0")
    if noise.shape != x0.shape:
        raise ValueError(f"edm_noisy_inputs: `noise` {tuple(noise.shape)} must match `x0` {tuple(x0.shape)}.")
    _check_sigma_shape(sigma, x0, "edm_noisy_inputs")
    work_dtype = compute_dtype(x0.dtype)
    sigma = sigma.to(work_dtype).reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return (x0.to(work_dtype) + sigma * noise.to(work_dtype)).to(x0.dtype)


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = EDM_SIGMA_DATA) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Karras et al. 2022, Table 1), sigma's shape."""
    sigma = torch.as_tensor(sigma)
    sigma = sigma.to(compute_dtype(sigma.dtype))
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_snr(sigma: torch.Tensor) -> torch.Tensor:
    """SNR = 1 / sigma^2 of ``x0 + sigma n``: the same value as the DDPM SNR ``abar / (1 - abar)`` at
    ``sigma = sqrt((1 - abar) / abar)``, so :func:`diffusion.objectives.regularizer_weights` applies as is."""
    sigma = torch.as_tensor(sigma)
    return 1.0 / sigma.to(compute_dtype(sigma.dtype)) ** 2


# ------------------------------------------------------------------------------------------------
# The preconditioned denoiser around a stock UNet2DModel.


def edm_preconditioning(
    sigma, sigma_data: float = EDM_SIGMA_DATA
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM's (c_skip, c_out, c_in, c_noise) for noise level ``sigma`` (Karras et al. 2022, Table 1).

    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2),
    c_noise = log(sigma) / 4. Shapes follow ``sigma``.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    if checkable(sigma) and (sigma <= 0).any():
        raise ValueError("edm_preconditioning: `sigma` must be positive.")
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt(), sigma.log() / 4


def x0_from_edm(
    model_output: torch.Tensor, x_t: torch.Tensor, sigma, sigma_data: float = EDM_SIGMA_DATA
) -> torch.Tensor:
    """EDM denoiser D(x; sigma) = c_skip x + c_out F (Karras et al. 2022, Eq. 7); D is the x0 estimate.

    Args:
        model_output: ``(B, ...)`` raw network output ``F_theta(c_in x, c_noise)``.
        x_t: ``(B, ...)`` noisy input ``x0 + sigma n`` (unscaled, before ``c_in``).
        sigma: noise level per sample, ``(B,)`` or a scalar, positive.
        sigma_data: data standard deviation (0.5 in EDM).

    Returns:
        ``(B, ...)`` denoised sample in ``model_output``'s dtype.
    """
    check_pair(model_output, x_t, "x0_from_edm")
    sigma = per_sample(sigma, x_t, "x0_from_edm", "sigma")
    c_skip, c_out, _, _ = edm_preconditioning(sigma.float(), sigma_data)
    c_skip, c_out = c_skip.to(sigma.dtype), c_out.to(sigma.dtype)
    x0 = c_skip * x_t.to(sigma.dtype) + c_out * model_output.to(sigma.dtype)
    return x0.to(model_output.dtype)


def check_edm_unet(unet) -> None:
    """A UNet2DModel can serve as EDM's F only with a sinusoidal ("positional") time embedding.

    ``"fourier"`` takes ``log`` of the timestep (``c_noise`` is negative below sigma = 1) and divides the output by it;
    ``"learned"`` looks the timestep up as an integer index.
    """
    config = getattr(unet, "config", None)
    embedding = config.get("time_embedding_type", "positional") if config is not None else "positional"
    if embedding != "positional":
        raise ValueError(
            f"EDM needs a UNet2DModel with time_embedding_type='positional' (it receives c_noise = log(sigma) / 4 as "
            f"its timestep), got {embedding!r}; build it with `build_unet` or set time_embedding_type='positional'."
        )


def _check_sigma_shape(sigma, x: torch.Tensor, func: str) -> None:
    if not isinstance(sigma, torch.Tensor) or sigma.ndim != 1 or sigma.shape[0] != x.shape[0]:
        shape = tuple(sigma.shape) if isinstance(sigma, torch.Tensor) else type(sigma).__name__
        raise ValueError(f"{func}: `sigma` must be a (batch,) = ({x.shape[0]},) tensor, got {shape}.")


def edm_model_inputs(
    x_noisy: torch.Tensor, sigma: torch.Tensor, sigma_data: float = EDM_SIGMA_DATA
) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's inputs ``(c_in x, c_noise)``, as ``scale_model_input`` and ``scheduler.timesteps`` give them.

    Args:
        x_noisy: ``(B, C, H, W)`` noisy images ``x0 + sigma n``.
        sigma: ``(B,)`` positive noise levels.

    Returns:
        ``(B, C, H, W)`` scaled input in ``x_noisy``'s dtype and the ``(B,)`` float32 timestep ``log(sigma) / 4``.
    """
    require_4d(x_noisy, "edm_model_inputs", "x_noisy")
    _check_sigma_shape(sigma, x_noisy, "edm_model_inputs")
    _, _, c_in, c_noise = edm_preconditioning(sigma, sigma_data)  # each (B,) float32
    scaled = c_in.to(compute_dtype(x_noisy.dtype)).reshape(-1, 1, 1, 1) * x_noisy  # (B, C, H, W)
    return scaled.to(x_noisy.dtype), c_noise


def edm_denoise(unet, x_noisy: torch.Tensor, sigma: torch.Tensor, sigma_data: float = EDM_SIGMA_DATA) -> torch.Tensor:
    """EDM's denoiser ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` with ``F`` a stock UNet2DModel.

    The UNet receives exactly what diffusers' ``EDMEulerScheduler`` (``prediction_type="epsilon"``) feeds it at
    sampling time: ``c_in x`` as the sample and ``log(sigma) / 4`` as the timestep. ``D`` is the x0 estimate that the
    loss and the spectral regularisers compare with ``x0``. Differentiable.

    Args:
        unet: a ``UNet2DModel`` with ``time_embedding_type="positional"`` (see :func:`check_edm_unet`).
        x_noisy: ``(B, C, H, W)`` noisy images ``x0 + sigma n``.
        sigma: ``(B,)`` positive noise levels.
        sigma_data: data standard deviation; must equal the scheduler's ``config.sigma_data``.

    Returns:
        ``(B, C, H, W)`` denoised images in the UNet output's dtype.
    """
    check_edm_unet(unet)
    model_input, c_noise = edm_model_inputs(x_noisy, sigma, sigma_data)
    model_output = unet(model_input, c_noise).sample  # F(c_in x; c_noise): (B, C, H, W)
    return x0_from_edm(model_output, x_noisy, sigma, sigma_data)


def edm_denoising_loss(
    denoised: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_data: float = EDM_SIGMA_DATA
) -> torch.Tensor:
    """Per-sample EDM loss ``lambda(sigma) mean_pixels (D - x0)^2`` (Karras et al. 2022, Eq. 8, mean not sum).

    Args:
        denoised: ``(B, C, H, W)`` ``D(x; sigma)`` from :func:`edm_denoise`.
        x0: ``(B, C, H, W)`` clean images.
        sigma: ``(B,)`` the noise levels the batch was noised with.

    Returns:
        ``(B,)`` float32 losses (float64 for float64 input); reduce with ``.mean()``.
    """
    require_4d(denoised, "edm_denoising_loss", "denoised")
    if denoised.shape != x0.shape:
        raise ValueError(
            f"edm_denoising_loss: `denoised` {tuple(denoised.shape)} and `x0` {tuple(x0.shape)} must match."
        )
    _check_sigma_shape(sigma, x0, "edm_denoising_loss")
    work_dtype = compute_dtype(denoised.dtype)
    squared_error = (denoised.to(work_dtype) - x0.to(work_dtype)).square().mean(dim=(1, 2, 3))  # (B,)
    return edm_loss_weight(sigma, sigma_data).to(work_dtype) * squared_error
