"""ESM + DSM overhead on a full training step (forward + backward + AdamW) of a small AutoencoderKL on CPU.

Baseline: encode, sample the posterior, decode, plain L1. Spectrum step: `SpectrumAutoencoderKL.training_losses` (DSM
low-pass of image and latent with a level cycling through 0/8/10/12, ESM on the sampled posterior) with L1 to the DSM
target + 0.01 * ESM. Steps alternate between the two variants so machine load affects both alike.

Usage: python benchmarks/bench_vae_step.py [--quick]
"""

import argparse
import time

import torch

from diffusers_spectrum import SpectrumAutoencoderKL
from diffusers_spectrum.spectral import dsm_lowpass, esm_loss, spectral_kl


SMALL_VAE = dict(
    block_out_channels=(32, 64, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=16,
    latent_channels=4,
    sample_size=128,
)


def run(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    vae = SpectrumAutoencoderKL(**SMALL_VAE).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-5)
    images = torch.rand(4, 3, 128, 128) * 2 - 1
    levels = (0, 8, 10, 12)

    def plain_step(step: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        latents = vae.encode(images).latent_dist.sample()
        loss = (vae.decode(latents).sample - images).abs().mean()
        loss.backward()
        optimizer.step()

    def spectrum_step(step: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        out = vae.training_losses(images, dsm_level=levels[step % len(levels)])
        loss = (out.reconstruction - out.target).abs().mean() + 0.01 * out.esm
        loss.backward()
        optimizer.step()

    steps = 4 if quick else 12
    plain_step(0), spectrum_step(0)  # warm-up
    timings = {"plain": [], "spectrum": []}
    for step in range(steps):
        for name, fn in (("plain", plain_step), ("spectrum", spectrum_step)):
            start = time.perf_counter()
            fn(step)
            timings[name].append(time.perf_counter() - start)
    # Medians per variant; levels cycle over all four values an equal number of times.
    plain = sorted(timings["plain"])[steps // 2]
    spectrum = sorted(timings["spectrum"])[steps // 2]

    # The added work alone, best of 20 (robust on a loaded machine): DSM on image and latent, ESM fwd+bwd, logging KL.
    latents = torch.randn(4, 4, 16, 16, requires_grad=True)

    def spectral_ops() -> None:
        dsm_lowpass(images, 10)
        (dsm_lowpass(latents, 10).sum() + esm_loss(images, latents)).backward()
        spectral_kl(images, latents, delta=0.0)

    spectral_ops()
    added = float("inf")
    for _ in range(20):
        start = time.perf_counter()
        spectral_ops()
        added = min(added, time.perf_counter() - start)
    return [
        {
            "benchmark": "VAE step (4x3x128x128, f8d4 small), L1 only",
            "metric": "step time",
            "value": plain * 1e3,
            "unit": "ms",
            "ratio": None,
            "target": "baseline",
        },
        {
            "benchmark": "VAE step, L1 + ESM + DSM (levels 0/8/10/12)",
            "metric": "step time / baseline",
            "value": spectrum * 1e3,
            "unit": "ms",
            "ratio": spectrum / plain,
            "target": "<= 1.03x (noisy on a shared machine)",
        },
        {
            "benchmark": "  of which ESM + DSM + spectral KL ops alone (fwd+bwd)",
            "metric": "(step + ops) / step",
            "value": added * 1e3,
            "unit": "ms",
            "ratio": (plain + added) / plain,
            "target": "<= 1.03x",
        },
    ]


if __name__ == "__main__":
    from bench_esm import print_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    print_table(run(parser.parse_args().quick))
