"""Reusable pieces of `examples/train_dit_repa.py`: DiT size presets, latent standardisation, the REPA term with its
target filter, the x0-space spectral regularisers with timestep weighting, and in-memory sampling for validation.

Each loss helper returns *unweighted* terms; the script applies the flag weights (`--repa_coeff`,
`--fourier_weight`, `--wavelet_weight`) and logs every term separately.
"""

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DiTPipeline

from ..losses import fourier_loss, repa_loss, wavelet_loss
from ..models.dit_repa import REPADiTTransformer2DModel
from ..spectral.filters import apply_target_filter


__all__ = [
    "DIT_PRESETS",
    "build_transformer",
    "default_repa_depth",
    "pipeline_samples",
    "repa_term",
    "sample_images",
    "spectral_regularizer_terms",
    "standardize_latents",
    "step_generator",
]

# DiT model sizes (Peebles & Xie 2023, Table 1; heads x head_dim = hidden width), plus CPU sizes: `tiny` (tests)
# and `mini` (the demo).
DIT_PRESETS = {
    "tiny": {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 16, "patch_size": 2},
    "mini": {"num_layers": 4, "num_attention_heads": 4, "attention_head_dim": 16, "patch_size": 2},
    "S/2": {"num_layers": 12, "num_attention_heads": 6, "attention_head_dim": 64, "patch_size": 2},
    "B/2": {"num_layers": 12, "num_attention_heads": 12, "attention_head_dim": 64, "patch_size": 2},
    "L/2": {"num_layers": 24, "num_attention_heads": 16, "attention_head_dim": 64, "patch_size": 2},
    "XL/2": {"num_layers": 28, "num_attention_heads": 16, "attention_head_dim": 72, "patch_size": 2},
}


def default_repa_depth(num_layers: int) -> int:
    """REPA aligns after block 8 of 28 (SiT-XL/2); keep that fraction for other depths (at least block 1)."""
    return max(1, round(num_layers * 8 / 28))


def build_transformer(
    preset: str,
    in_channels: int,
    sample_size: int,
    repa_depth: int | None = None,
    repa_target_dim: int = 768,
    repa_projector: str = "mlp",
    repa_projector_dim: int = 2048,
    patch_size: int | None = None,
    dit_init: bool = True,
) -> REPADiTTransformer2DModel:
    """A fresh `REPADiTTransformer2DModel` of a preset size with a 1000-class + null label table (what `DiTPipeline`
    assumes) and `out_channels = in_channels` (no learned sigma).

    Args:
        preset: a key of `DIT_PRESETS`.
        in_channels, sample_size: latent channels and side.
        repa_depth: block whose tokens are aligned, `None` = no projector (REPA off).
        patch_size: override the preset's patch size.
        dit_init: the DiT paper's initialisation (adaLN-zero, zero output layer); else PyTorch defaults.
    """
    if preset not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {preset!r}; choose one of {sorted(DIT_PRESETS)}.")
    config = dict(DIT_PRESETS[preset])
    if patch_size is not None:
        config["patch_size"] = patch_size
    if sample_size % config["patch_size"]:
        raise ValueError(f"latent side {sample_size} is not divisible by the patch size {config['patch_size']}.")
    model = REPADiTTransformer2DModel(
        in_channels=in_channels,
        out_channels=in_channels,
        sample_size=sample_size,
        num_embeds_ada_norm=1000,
        repa_depth=repa_depth,
        repa_target_dim=repa_target_dim,
        repa_projector=repa_projector,
        repa_projector_dim=repa_projector_dim,
        **config,
    )
    return model.initialize_weights() if dit_init else model


def step_generator(seed: int, global_step: int, micro_step: int, process_index: int, device) -> torch.Generator:
    """Generator of one micro-step (timesteps, noise, label dropout, latent sample): a function of the step only, so
    a resumed run draws exactly what an uninterrupted one draws."""
    state = np.random.SeedSequence([seed, global_step, micro_step, process_index]).generate_state(1)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def standardize_latents(
    latents: torch.Tensor,
    scaling_factor: float,
    shift_factor: float | None = None,
    latents_std: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Diffusion input from raw VAE latents: optionally sample `mean + std * eps` (cached posterior), then
    `(z - shift) * scale` (diffusers' convention; `DiTPipeline` undoes the scale, the export folds the shift).

    Args:
        latents: `(B, C, h, w)` posterior mean (or sample), unscaled.
        latents_std: `(B, C, h, w)` posterior std: when given a fresh posterior sample is drawn with `generator`.
    """
    if latents_std is not None:
        noise = torch.randn(latents.shape, generator=generator, device=generator.device if generator else "cpu")
        latents = latents + latents_std * noise.to(latents.device, latents.dtype)
    if shift_factor is not None:
        latents = latents - shift_factor
    return latents * scaling_factor


# ----------------------------------------------------------------------------------------------------------------
# Loss terms


def repa_term(
    repa_tokens: torch.Tensor,
    target_tokens: torch.Tensor,
    grid_hw: tuple[int, int],
    target_filter: str = "none",
    dog_sigma1: float = 0.6,
    dog_sigma2: float = 2.0,
    spatial_norm_alpha: float = 0.6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REPA alignment (Yu et al. 2024) against the filtered target (`none`, iREPA `spatial_norm`, or `dog`).

    Args:
        repa_tokens: `(B, N, D)` projected DiT tokens (`return_repa_tokens=True`).
        target_tokens: `(B, N, D)` frozen encoder tokens of the clean images, unfiltered.
        grid_hw: the `(h, w)` token grid, `N = h * w`.

    Returns:
        `(loss, cosine)`: the negative cosine similarity averaged over tokens and batch (scalar, with gradient) and
        the mean cosine similarity (detached, for logging).
    """
    if repa_tokens.shape != target_tokens.shape:
        raise ValueError(
            f"REPA: projected tokens {tuple(repa_tokens.shape)} and targets {tuple(target_tokens.shape)} differ; the "
            "transformer's repa_target_dim must equal the encoder's feature width and the target grid the DiT's."
        )
    target = apply_target_filter(
        target_tokens.float(), grid_hw, target_filter, sigma1=dog_sigma1, sigma2=dog_sigma2, alpha=spatial_norm_alpha
    )
    loss = repa_loss(repa_tokens.float(), target)
    return loss, -loss.detach()


def spectral_regularizer_terms(
    x0_hat: torch.Tensor,
    x0: torch.Tensor,
    weights: torch.Tensor,
    fourier: dict | None = None,
    wavelet: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Fourier / wavelet losses between the predicted and true clean samples, each a per-sample loss weighted by
    `weights` (timestep weighting) and averaged over the batch.

    Args:
        x0_hat, x0: `(B, C, H, W)` (latent or pixel space).
        weights: `(B,)` per-sample weights (`DiffusionObjective.regularizer_weights`).
        fourier: keyword arguments of `fourier_loss` (None = term off).
        wavelet: keyword arguments of `wavelet_loss` (None = term off).

    Returns:
        `{"fourier": scalar, "wavelet": scalar}` for the enabled terms, unweighted by the flag weights.
    """
    terms = {}
    weights = weights.to(x0.device, torch.float32)
    if fourier is not None:
        terms["fourier"] = (fourier_loss(x0_hat, x0, reduction="none", **fourier).float() * weights).mean()
    if wavelet is not None:
        terms["wavelet"] = (wavelet_loss(x0_hat, x0, reduction="none", **wavelet).float() * weights).mean()
    return terms


# ----------------------------------------------------------------------------------------------------------------
# Sampling


@torch.no_grad()
def pipeline_samples(
    pipe,
    class_labels: Sequence[int],
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    seeds: Sequence[int] | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Sample with a `DiTPipeline` (or subclass), one generator per image seeded with `seeds[i]` (default `i`), so an
    image does not depend on the batch size or on its position in the batch. Returns `(N, 3, H, W)` in [-1, 1] on
    the CPU."""
    labels = [int(label) for label in class_labels]
    seeds = list(range(len(labels))) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(labels):
        raise ValueError(f"got {len(seeds)} seeds for {len(labels)} class labels.")
    batch_size = batch_size or max(len(labels), 1)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    device = pipe._execution_device
    images = []
    for start in range(0, len(labels), batch_size):
        chunk = slice(start, start + batch_size)
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds[chunk]]
        out = pipe(
            class_labels=labels[chunk],
            guidance_scale=guidance_scale,
            generator=generators,
            num_inference_steps=num_inference_steps,
            output_type="pt",
        ).images  # (b, 3, H, W) in [0, 1]
        images.append(out.float().cpu() * 2 - 1)
    return torch.cat(images)


@torch.no_grad()
def sample_images(
    transformer,
    vae,
    scheduler,
    class_labels: Sequence[int],
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    seeds: Sequence[int] | None = None,
    batch_size: int | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """Sample with diffusers' `DiTPipeline` built from in-memory components (validation during training); see
    `pipeline_samples`. Returns `(N, 3, H, W)` in [-1, 1] on the CPU."""
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=type(scheduler).from_config(scheduler.config))
    pipe.set_progress_bar_config(disable=not show_progress)
    return pipeline_samples(pipe, class_labels, num_inference_steps, guidance_scale, seeds, batch_size)
