"""Overhead of the spectral regularisers (`fourier_loss` + `wavelet_loss` on x0_hat) on a DiT training step.

One training step = sample timesteps and noise, forward process, DiT forward, diffusion MSE, backward (the AdamW
update is left out, which makes the ratio conservative). The regulariser cost is timed on its own: x0 recovery from
the model output, the Fourier loss (amplitude + phase), the 3-level Haar wavelet loss, the timestep weighting and
their backward to the model output, i.e. exactly what the trainer adds. Ratio = regulariser time / step time
(target <= 2%). A second row times the full step with the regularisers for comparison. Wall times are the best of
several runs (robust to other processes on a shared machine), float32 on whatever device is available.

Usage: python benchmarks/bench_regularizers.py [--quick]
"""

import argparse
import time

import torch
from diffusers import DiTTransformer2DModel

from diffusers_spectrum.losses import fourier_loss, wavelet_loss
from diffusers_spectrum.objectives import DiffusionObjective


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


def run(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = "DiT-S/2" if quick else "DiT-B/2"
    depth, heads = DIT_CONFIGS[name]
    batch, channels, size = (4, 4, 32) if quick else (8, 4, 32)
    repeats = 3 if quick else 5
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

    def forward():
        timesteps = objective.sample_timesteps(batch, device=device)
        noise = torch.randn_like(latents)
        x_t, model_timesteps = objective.noisy_inputs(latents, noise, timesteps)
        output = transformer(x_t, timestep=model_timesteps, class_labels=labels).sample
        mse = ((output - objective.target(latents, noise, timesteps)) ** 2).mean()
        return mse, output, x_t, timesteps

    def step():
        transformer.zero_grad(set_to_none=True)
        forward()[0].backward()

    def step_with_regularizers():
        transformer.zero_grad(set_to_none=True)
        mse, output, x_t, timesteps = forward()
        (mse + _regularizers(objective, output, x_t, latents, timesteps)).backward()

    timesteps = objective.sample_timesteps(batch, device=device)
    x_t, _ = objective.noisy_inputs(latents, torch.randn_like(latents), timesteps)
    output = torch.randn_like(latents, requires_grad=True)

    def regularizers_only():
        output.grad = None
        _regularizers(objective, output, x_t, latents, timesteps).backward()

    t_regularizers = _time(regularizers_only, max(repeats, 20), device)
    t_step, t_step_with = float("inf"), float("inf")
    for _ in range(repeats):  # interleaved, so that load changes on a shared machine hit both alike
        t_step = min(t_step, _time(step, 1, device))
        t_step_with = min(t_step_with, _time(step_with_regularizers, 1, device))
    shape = f"{name}, {batch}x{channels}x{size}x{size} latents, {device.type}"
    return [
        {
            "benchmark": f"fourier+wavelet loss fwd+bwd vs training step ({shape})",
            "metric": "overhead",
            "value": t_regularizers * 1e3,
            "unit": "ms",
            "ratio": t_regularizers / t_step,
            "target": "<= 0.02",
        },
        {
            "benchmark": f"training step with regularisers vs without ({shape})",
            "metric": "step time ratio",
            "value": t_step_with * 1e3,
            "unit": "ms",
            "ratio": t_step_with / t_step,
            "target": f"<= 1.02 (noisy; step without: {t_step * 1e3:.0f} ms)",
        },
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
