"""The numbers a VAE trainer logs when it validates: reconstruction and latent spectrum of a fixed batch, in the
conventions of `diffusers-spectrum analyze` (one source: `diagnostics.spectrum_summary`, what analyze accumulates)."""

import torch

from .diagnostics import lowpass_reconstruction_errors, posterior_latents, spectrum_summary
from .metrics import psnr


__all__ = ["vae_validation_metrics"]


@torch.no_grad()
def vae_validation_metrics(
    vae, images: torch.Tensor, delta: float, seed: int = 0
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Validation metrics of `vae` on `images` `(B, 3, H, W)` in [-1, 1].

    - Reconstruction numbers (`psnr`, `dsm_lowpass_mse_<k>`) decode the posterior *mean*
      (`reconstruction_latents: "mean"`).
    - Spectral numbers (slopes, spectral KLs, verdict) are those of posterior *samples* `mu + sigma * noise` with
      noise from a generator seeded with `seed`, DC kept and no centring (`spectral_latents: "sample"`,
      `spectrum_convention: "authors"`), as analyze reports by default; `spectral_kl_target` is the per-sample KL to
      the VAE's own ESM target (exponent `delta`); `posterior_std` is the mean over elements of sigma.

    Returns `(metrics, reconstructions, latents)`: `latents` are the posterior samples the spectra describe.
    """
    posterior = vae.encode(images).latent_dist
    means = posterior.mode()  # (B, C, h, w)
    reconstructions = vae.decode(means).sample.clamp(-1, 1)  # (B, 3, H, W)
    generator = torch.Generator(device=means.device).manual_seed(seed)
    samples, std = posterior_latents(posterior, "sample", generator)  # (B, C, h, w) each, float32
    summary = spectrum_summary(images.float(), samples, posterior_std=std, target_delta=delta)
    metrics = {
        "psnr": float(psnr(reconstructions, images).mean()),
        "reconstruction_latents": "mean",
        "spectral_latents": "sample",
        **{key: summary[key] for key in SUMMARY_KEYS},
        "posterior_std": summary["posterior_std"]["mean"],
    }
    levels = [level for level in vae.config.dsm_levels if level > 0]
    if levels:
        errors = lowpass_reconstruction_errors(
            lambda z: vae.decode(z).sample, images, means, levels, vae.config.dsm_block_size
        )
        metrics.update({f"dsm_lowpass_mse_{level}": float(error.mean()) for level, error in errors.items()})
    return metrics, reconstructions, samples


SUMMARY_KEYS = (
    "spectrum_convention",
    "spectral_kl_delta0",
    "spectral_kl_delta1",
    "mean_spectrum_kl_delta1",
    "spectral_kl_target",
    "image_slope",
    "target_slope",
    "latent_slope",
    "verdict",
)
