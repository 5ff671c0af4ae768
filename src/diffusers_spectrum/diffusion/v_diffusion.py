"""The v-diffusion objective that `DanceDiffusionPipeline` samples with (its `IPNDMScheduler`): the cosine-angle
process of Salimans & Ho 2022 (Sec. 4, App. D), as v-diffusion and Dance Diffusion train it.

    x_t = alpha x0 + sigma eps,    v = alpha eps - sigma x0,    alpha = cos(pi t / 2), sigma = sin(pi t / 2)

`IPNDMScheduler` builds `sigma_s = sin(pi s / 2)^2`, `alpha_s = sqrt(1 - sigma_s^2)` on a uniform grid, feeds the
model the angle `t = atan2(sigma_s, alpha_s) * 2 / pi` in [0, 1] and treats its output `m` through
`eps_hat = sigma x_t + alpha m`, `x0_hat = (x_t - sigma eps_hat) / alpha`; both hold exactly when `m` is the velocity
above (`alpha^2 + sigma^2 = 1`). So the UNet is trained with `t ~ U(0, 1)` on `||m - v||^2`, and
`x0_hat = alpha x_t - sigma m`.
"""

import math

import torch

from ._checks import append_dims


def v_diffusion_alphas_sigmas(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(alpha, sigma) = (cos(pi t / 2), sin(pi t / 2))` for model times `t` in [0, 1], in float32 (float64 kept)."""
    angle = t.double() * (math.pi / 2) if t.dtype == torch.float64 else t.float() * (math.pi / 2)
    return angle.cos(), angle.sin()


def v_diffusion_inputs(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """`x_t = alpha x0 + sigma eps`: `(B, C, T)` clean clips, `(B, C, T)` unit noise, `(B,)` times -> `(B, C, T)`."""
    alpha, sigma = (append_dims(v, x0.ndim) for v in v_diffusion_alphas_sigmas(t))
    return (alpha * x0.to(alpha.dtype) + sigma * noise.to(alpha.dtype)).to(x0.dtype)


def v_diffusion_target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The velocity `v = alpha eps - sigma x0` the UNet regresses, `(B, C, T)`."""
    alpha, sigma = (append_dims(v, x0.ndim) for v in v_diffusion_alphas_sigmas(t))
    return (alpha * noise.to(alpha.dtype) - sigma * x0.to(alpha.dtype)).to(x0.dtype)


def x0_from_v_diffusion(model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """`x0_hat = alpha x_t - sigma v_hat` (exact inverse of the two functions above for `v_hat = v`), `(B, C, T)`."""
    alpha, sigma = (append_dims(v, x_t.ndim) for v in v_diffusion_alphas_sigmas(t))
    return (alpha * x_t.to(alpha.dtype) - sigma * model_output.to(alpha.dtype)).to(model_output.dtype)


def v_diffusion_snr(t: torch.Tensor) -> torch.Tensor:
    """SNR = alpha^2 / sigma^2 = cot(pi t / 2)^2, `(B,)` (inf at t = 0)."""
    alpha, sigma = v_diffusion_alphas_sigmas(t)
    return alpha.square() / sigma.square()
