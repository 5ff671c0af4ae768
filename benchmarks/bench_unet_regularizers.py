"""Overhead of the spectral regularisers (Fourier, wavelet, both) on a pixel-space UNet2DModel training step.

One training step = what `training.unconditional` does per batch: draw timesteps (DDPM) or noise levels (EDM) and
noise, forward process, UNet forward, diffusion loss, backward (the AdamW update is left out, which makes the ratio
conservative). The regulariser cost is timed on its own: x0 recovery from the model output (DDPM epsilon) or the
denoiser output (EDM), the Fourier loss, the 3-level Haar wavelet loss, the timestep weighting and their backward to
the model output, i.e. exactly what the trainer adds. Ratio = regulariser time / step time (goal <= 2%), best of N
wall times, float32, CUDA when present. Timing the added work alone (as bench_regularizers.py does for the DiT)
keeps the number meaningful on a shared machine, where whole steps vary by far more than the regularisers cost.

Usage: python benchmarks/bench_unet_regularizers.py [--quick]
"""

import argparse
import time

import torch

from diffusers_spectrum.diffusion.edm import edm_snr, x0_from_edm
from diffusers_spectrum.diffusion.loss import diffusion_loss_terms
from diffusers_spectrum.diffusion.objectives import DiffusionObjective, regularizer_weights
from diffusers_spectrum.losses.spectral_regularizers import spectral_regularizer_terms
from diffusers_spectrum.models.presets import build_unet
from diffusers_spectrum.training.unconditional import ddpm_noise_scheduler


REGULARIZERS = {"fourier": ({}, None), "wavelet": (None, {"levels": 3}), "fourier+wavelet": ({}, {"levels": 3})}


def best_time(fn, repeats: int, device: torch.device) -> float:
    """Best wall time of `repeats` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def step_time(unet, formulation: str, x0: torch.Tensor, repeats: int) -> float:
    """Best time of one training step without regularisers (forward, loss, backward)."""
    objective = DiffusionObjective("edm")
    if formulation == "ddpm":
        objective = DiffusionObjective("epsilon", ddpm_noise_scheduler())
    generator = torch.Generator(device=x0.device).manual_seed(0)

    def step():
        unet.zero_grad(set_to_none=True)
        terms, _ = diffusion_loss_terms(unet, objective, x0, generator)
        terms["diffusion"].backward()

    return best_time(step, repeats, x0.device)


def regularizer_time(formulation: str, x0: torch.Tensor, which: str, repeats: int) -> float:
    """Best time of the added work alone: x0 recovery, the losses, the weighting, backward to the model output."""
    fourier, wavelet = REGULARIZERS[which]
    batch, device = x0.shape[0], x0.device
    generator = torch.Generator(device=device).manual_seed(0)
    output = torch.randn(x0.shape, generator=generator, device=device).requires_grad_(True)
    x_t = x0 + torch.randn(x0.shape, generator=generator, device=device)
    if formulation == "ddpm":
        objective = DiffusionObjective("epsilon", ddpm_noise_scheduler())
        timesteps = objective.sample_timesteps(batch, generator=generator, device=device)

        def x0_hat_and_weights():
            return objective.predict_x0(output, x_t, timesteps), objective.regularizer_weights(timesteps)
    else:
        sigma = torch.rand(batch, generator=generator, device=device) + 0.1

        def x0_hat_and_weights():
            return x0_from_edm(output, x_t, sigma), regularizer_weights(edm_snr(sigma))

    def added():
        output.grad = None
        x0_hat, weights = x0_hat_and_weights()
        terms = spectral_regularizer_terms(x0_hat, x0, weights, fourier, wavelet)
        sum(0.1 * value for value in terms.values()).backward()

    return best_time(added, max(repeats, 50), device)


def overhead_rows(preset: str, resolution: int, batch: int, repeats: int, device) -> list[dict]:
    """One row per formulation and regulariser: regulariser time, ratio to the UNet step."""
    torch.manual_seed(0)
    unet = build_unet(preset, resolution).to(device)
    x0 = torch.rand(batch, 3, resolution, resolution, device=device) * 2 - 1
    rows = []
    for formulation in ("ddpm", "edm"):
        t_step = step_time(unet, formulation, x0, repeats)
        for which in REGULARIZERS:
            t_added = regularizer_time(formulation, x0, which, repeats)
            rows.append(
                {
                    "benchmark": f"{which} fwd+bwd / UNet {preset} {formulation} step, "
                    f"{batch}x3x{resolution}x{resolution}, {device.type}",
                    "metric": "overhead",
                    "value": t_added * 1e3,
                    "unit": "ms",
                    "ratio": t_added / t_step,
                    "target": f"<= 0.02 (step: {t_step * 1e3:.0f} ms)",
                }
            )
    return rows


def run(quick: bool = False) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if quick:
        return overhead_rows("tiny", 32, 8, 3, device)
    return overhead_rows("tiny", 32, 16, 5, device) + overhead_rows("ddpm-32", 32, 8, 3, device)


def print_table(rows: list[dict]) -> None:
    print(f"{'benchmark':<72} {'value':>9} {'unit':<4} {'ratio':>8}  target")
    for row in rows:
        print(f"{row['benchmark']:<72} {row['value']:>9.2f} {row['unit']:<4} {row['ratio']:>8.4f}  {row['target']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny UNet only, fewer repeats")
    print_table(run(quick=parser.parse_args().quick))
