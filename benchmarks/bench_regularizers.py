"""Overhead of the spectral regularisers (`fourier_loss` + `wavelet_loss` on x0_hat) on a DiT training step.

One training step = sample timesteps and noise, forward process, DiT forward, diffusion MSE, backward (the AdamW
update is left out, which makes the ratio conservative). The regulariser cost is timed on its own: x0 recovery from
the model output, the Fourier loss (amplitude + phase), the 3-level Haar wavelet loss, the timestep weighting and
their backward to the model output, i.e. exactly what the trainer adds. Ratio = regulariser time / step time
(target <= 2%). Timing the regularisers on their own, rather than subtracting two full-step times, keeps the
measurement meaningful on a shared machine, where full steps vary by far more than the regularisers cost. Wall times
are the best of several runs, float32 on whatever device is available (CUDA when present).

Usage: python benchmarks/bench_regularizers.py [--quick]
"""

import argparse
import time

import torch
from diffusers import DiTTransformer2DModel

from diffusers_spectrum.diffusion.objectives import DiffusionObjective
from diffusers_spectrum.losses import fourier_loss, wavelet_loss


# DiT sizes (Peebles & Xie 2023, Table 1): hidden size = heads x 64.
DIT_CONFIGS = {"DiT-S/2": (12, 6), "DiT-B/2": (12, 12)}  # name -> (depth, heads)


def _time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
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


def _regularizers(objective, output, x_t, latents, timesteps):
    x0_hat = objective.predict_x0(output, x_t, timesteps)
    weights = objective.regularizer_weights(timesteps)
    fourier = (weights * fourier_loss(x0_hat, latents, reduction="none")).mean()
    wavelet = (weights * wavelet_loss(x0_hat, latents, levels=3, reduction="none")).mean()
    return 0.1 * fourier + 0.1 * wavelet


def _overhead(name: str, batch: int, channels: int, size: int, space: str, repeats: int, device) -> dict:
    depth, heads = DIT_CONFIGS[name]
    transformer = DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=64,
        in_channels=channels,
        out_channels=channels,
        num_layers=depth,
        sample_size=size,
        patch_size=2,
        num_embeds_ada_norm=1000,
    ).to(device)
    objective = DiffusionObjective("flow")
    latents = torch.randn(batch, channels, size, size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step():
        transformer.zero_grad(set_to_none=True)
        timesteps = objective.sample_timesteps(batch, device=device)
        noise = torch.randn_like(latents)
        x_t, model_timesteps = objective.noisy_inputs(latents, noise, timesteps)
        output = transformer(x_t, timestep=model_timesteps, class_labels=labels).sample
        ((output - objective.target(latents, noise, timesteps)) ** 2).mean().backward()

    timesteps = objective.sample_timesteps(batch, device=device)
    x_t, _ = objective.noisy_inputs(latents, torch.randn_like(latents), timesteps)
    output = torch.randn_like(latents, requires_grad=True)

    def regularizers_only():
        output.grad = None
        _regularizers(objective, output, x_t, latents, timesteps).backward()

    t_regularizers = _time(regularizers_only, max(repeats, 20), device)
    t_step = _time(step, repeats, device)
    return {
        "benchmark": f"fourier+wavelet fwd+bwd / {name} step, {batch}x{channels}x{size}x{size} {space}, {device.type}",
        "metric": "overhead",
        "value": t_regularizers * 1e3,
        "unit": "ms",
        "ratio": t_regularizers / t_step,
        "target": f"<= 0.02 (step: {t_step * 1e3:.0f} ms)",
    }


def run(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name, batch, repeats = ("DiT-S/2", 4, 3) if quick else ("DiT-B/2", 8, 5)
    return [
        # SD-VAE-like f8d4 latents of 256 px images
        _overhead(name, batch, 4, 32, "latents", repeats, device),
        # DCT space of 256 px images: block 4, 4:2:0, 6 x 16 coefficients on a 32 x 32 token grid
        _overhead(name, batch, 96, 32, "DCT coefficients", repeats, device),
    ]


def print_table(rows: list[dict]) -> None:
    print(f"{'benchmark':<80} {'metric':<16} {'value':>10} {'unit':<4} {'ratio':>8}  target")
    for row in rows:
        print(
            f"{row['benchmark']:<80} {row['metric']:<16} {row['value']:>10.2f} {row['unit']:<4} "
            f"{row['ratio']:>8.4f}  {row['target']}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller DiT and fewer repeats")
    print_table(run(quick=parser.parse_args().quick))
