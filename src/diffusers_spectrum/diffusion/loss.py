"""One training step's loss terms for every diffusion trainer (DiT, unconditional, audio): draw noise levels and
noise, run the network as the objective says, compare with the target, and plug in the spectral regularisers on the
predicted clean sample, once."""

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from ..losses.spectral_regularizers import spectral_regularizer_terms
from .objectives import DiffusionObjective


__all__ = ["SpectralRegularizers", "diffusion_loss_terms", "total_loss"]


@dataclass(frozen=True)
class SpectralRegularizers:
    """The spectral regularisers that compare x0_hat with x0, built once from the flags: the keyword arguments of
    `fourier_loss`, `wavelet_loss` and `multi_resolution_stft_loss` (None = off), their loss weights, and the
    per-sample timestep weighting (`diffusion.objectives.regularizer_weights`)."""

    fourier: dict | None = None
    wavelet: dict | None = None
    stft: dict | None = None
    weights: Mapping[str, float] = field(default_factory=dict)
    weighting: str = "signal"
    snr_gamma: float = 5.0

    @property
    def enabled(self) -> bool:
        return any(term is not None for term in (self.fourier, self.wavelet, self.stft))


def diffusion_loss_terms(
    model: Callable,
    objective: DiffusionObjective,
    x0: torch.Tensor,
    generator: torch.Generator,
    *,
    regularizers: SpectralRegularizers | None = None,
    model_kwargs: dict | None = None,
    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    autocast=contextlib.nullcontext,
) -> tuple[dict[str, torch.Tensor], object]:
    """Unweighted loss terms of one batch, and the network's output (for terms of the caller's own, e.g. REPA).

    Args:
        model: the (wrapped) network, called as `model(model_input, model_timestep, **model_kwargs)`; its output has
            `.sample`.
        objective: the diffusion objective (`DiffusionObjective(kind, ...)`).
        x0: `(B, ...)` clean samples (images, latents, waveforms).
        generator: draws the noise levels, then the noise (on its device), in that order.
        regularizers: the spectral regularisers on x0_hat (None or none enabled: off).
        model_kwargs: more arguments of the network (class labels, ...).
        distance: a per-sample distance `(prediction, target) -> (B,)` (e.g. DCTdiff's entropy-weighted MSE) whose
            batch mean is the loss; default: the objective's (weighted) mean squared error.
        autocast: the mixed-precision context of the network call (`accelerator.autocast`).

    Returns:
        `({"diffusion", and "fourier" / "wavelet" / "stft" when enabled}, model output)`; each regulariser is its
        per-sample loss on x0_hat times the objective's timestep weights, averaged.
    """
    timesteps = objective.sample_timesteps(x0.shape[0], generator=generator, device=x0.device)  # (B,)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
    x_t, model_timesteps = objective.noisy_inputs(x0, noise, timesteps)
    with autocast():
        output = model(objective.model_input(x_t, timesteps), model_timesteps, **(model_kwargs or {}))
        prediction = objective.prediction(output.sample, x_t, timesteps).float()
    target = objective.target(x0, noise, timesteps).float()
    terms = {"diffusion": objective.loss(prediction, target, timesteps, distance)}
    if regularizers is not None and regularizers.enabled:
        x0_hat = objective.predict_x0(prediction, x_t.float(), timesteps)
        weights = objective.regularizer_weights(timesteps, regularizers.weighting, regularizers.snr_gamma)  # (B,)
        terms.update(
            spectral_regularizer_terms(
                x0_hat, x0.float(), weights, regularizers.fourier, regularizers.wavelet, regularizers.stft
            )
        )
    return terms, output


def total_loss(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """`terms["diffusion"]` plus `weights[name] * terms[name]` for every weighted term present, in `weights`' order."""
    loss = terms["diffusion"]
    for name, weight in weights.items():
        if name in terms:
            loss = loss + weight * terms[name]
    return loss
