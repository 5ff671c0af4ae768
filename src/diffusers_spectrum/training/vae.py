"""The Spectrum VAE training loop: `train_vae(args)` trains or fine-tunes a `SpectrumAutoencoderKL` with ESM / DSM,
perceptual and adversarial losses, and the two baselines Spectrum Matching unifies: `--recipe eq-vae` (EQ-VAE's
equivariance branch, `losses.equivariance`) and `--recipe va-vae` (VA-VAE's VF alignment loss against a frozen vision
encoder, `losses.alignment`). `examples/train_spectrum_vae.py` and `diffusers-spectrum train-vae` only parse
flags (`parse_args`) and call it.

The output folder holds the trained `SpectrumAutoencoderKL` (EMA weights with `--use_ema`), `stock/` (the same
weights as a stock `AutoencoderKL`), `metrics.json`, `training_args.json`, a model card (`README.md`), the
checkpoints (`checkpoint-<step>`) and the tensorboard logs (`logs/`).

Importing this module (for its flags: `build_parser`, `parse_args`) loads neither diffusers nor accelerate nor
datasets; the functions that need them import them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from ..evaluation.diagnostics import lowpass_reconstruction_errors, spectrum_summary
from ..losses.equivariance import (
    EquivarianceTransform,
    apply_spatial_transform,
    equivariance_targets,
    sample_equivariance_transform,
)
from ..spectral.esm import esm_band_powers, esm_divergence
from ..utils.records import public_args, write_json
from .args import add_data_args, add_optimization_args, add_output_args, finish_common_args, parse_int_list
from .checkpointing import Checkpointer
from .loop import create_ema, ema_weights, log_figure, log_images, step_generator


if TYPE_CHECKING:
    from ..losses.alignment import VFAlignmentLoss
    from ..models.autoencoder_kl_spectral import SpectrumAutoencoderKL
    from ..models.encoders import RepresentationEncoder


__all__ = ["RECIPES", "VAE_PRESETS", "build_parser", "parse_args", "train_vae"]

logger = logging.getLogger(__name__)

# Flags a resume must keep (`loop.learning_settings`): they change what the autoencoder learns.
RESUME_SETTINGS = (
    "recipe", "vae_config", "resolution", "reconstruction_loss", "perceptual_loss", "perceptual_weight", "disc_weight",
    "kl_weight", "esm_weight", "esm_delta", "dsm_levels", "dsm_block_size", "equivariance", "vf_weight", "use_shift",
)  # fmt: skip

# Architectures from SPEC.md (f8d4, f16d16) and a tiny one for CPU runs and tests.
VAE_PRESETS = {
    "tiny": dict(block_out_channels=(16, 32, 32), latent_channels=4, layers_per_block=1, norm_num_groups=8),
    "f8d4": dict(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2, norm_num_groups=32),
    "f16d16": dict(
        block_out_channels=(128, 128, 256, 256, 512), latent_channels=16, layers_per_block=2, norm_num_groups=32
    ),
}

# The authors' recipes (SPEC.md): L1 + 0.5 LPIPS + PatchGAN (hinge, adaptive weight, weight 0.5, from step 50k),
# AdamW (0.9, 0.999, wd 0.005), lr 5e-5 after 2k warm-up steps, grad clip 1.0, flip 0.5. SD-VAE adds KL 1e-6;
# ESM-AE uses ESM 0.01 (delta 1) without KL; DSM-AE uses the DSM levels 0, 8, 10, 12 without KL.
_AUTHORS_BASE = dict(
    reconstruction_loss="l1", perceptual_loss="lpips", perceptual_weight=0.5, disc_weight=0.5, disc_start=50001,
    learning_rate=5e-5, lr_scheduler="constant_with_warmup", lr_warmup_steps=2000, adam_weight_decay=0.005,
    max_grad_norm=1.0, random_flip=True,
)  # fmt: skip
RECIPES = {
    "sd-vae": dict(_AUTHORS_BASE, kl_weight=1e-6, esm_weight=0.0, dsm_levels=(0,)),
    "esm-ae": dict(_AUTHORS_BASE, kl_weight=0.0, esm_weight=0.01, esm_delta=1.0, dsm_levels=(0,)),
    "dsm-ae": dict(_AUTHORS_BASE, kl_weight=0.0, esm_weight=0.0, dsm_levels=(0, 8, 10, 12)),
    # EQ-VAE (Kouzelis et al. 2025; settings from the authors' code, see losses/equivariance.py): the SD-VAE loss
    # (L1 + LPIPS + KL 1e-6 + PatchGAN 0.5 with the adaptive weight, disc_start 0 since they fine-tune) applied on
    # every step to (tau(x), D(tau(z))): with probability 0.5 tau = a downscale s in [0.25, 1) on the latent grid and a
    # k x 90 degree rotation (k in 1..3) of latent and image; else with probability 0.25 a low-resolution
    # reconstruction; else the plain one. Adam betas (0.5, 0.9) and their fine-tuning lr (base 4.5e-6 x 160 = 7.2e-4
    # on 8 GPUs x batch 10 x accumulation 2; `--learning_rate` to rescale for your batch).
    "eq-vae": dict(
        _AUTHORS_BASE,
        kl_weight=1e-6,
        esm_weight=0.0,
        dsm_levels=(0,),
        disc_start=0,
        learning_rate=7.2e-4,
        lr_warmup_steps=0,
        adam_beta1=0.5,
        adam_beta2=0.9,
        adam_weight_decay=0.0,
        equivariance=True,
    ),
    # VA-VAE (Yao et al. 2025; settings from the authors' f16d32_vfdinov2.yaml, see losses/alignment.py): the
    # SD-VAE loss (L1 + LPIPS + KL 1e-6 + PatchGAN 0.5 from step 5001) plus the VF loss against a frozen vision
    # encoder's patch features (--vf_encoder; DINOv2 ViT-L/14 in the paper): w_hyper 0.1 x the adaptive weight x
    # (marginal cosine, margin 0.5 + marginal distance matrix, margin 0.25), through a 1x1 projector trained with the
    # autoencoder. Adam betas (0.5, 0.9), lr 1e-4 (not batch-scaled).
    "va-vae": dict(
        _AUTHORS_BASE,
        kl_weight=1e-6,
        esm_weight=0.0,
        dsm_levels=(0,),
        disc_start=5001,
        learning_rate=1e-4,
        lr_warmup_steps=0,
        adam_beta1=0.5,
        adam_beta2=0.9,
        adam_weight_decay=0.0,
        vf_weight=0.1,
    ),
}
# Defaults without a recipe: ESM + DSM with pixel losses only (runs anywhere, no LPIPS weights needed).
DEFAULTS = dict(
    reconstruction_loss="l1", perceptual_loss="none", perceptual_weight=0.0, disc_weight=0.0, disc_start=0,
    learning_rate=1e-4, lr_scheduler="constant_with_warmup", lr_warmup_steps=0, adam_weight_decay=0.005,
    max_grad_norm=1.0, random_flip=False, kl_weight=0.0, esm_weight=0.01, esm_delta=1.0, dsm_levels=(0, 8, 10, 12),
    adam_beta1=0.9, adam_beta2=0.999, equivariance=False, vf_weight=0.0,
)  # fmt: skip


def discriminator_min_size(num_layers: int) -> int:
    """Smallest image side the PatchGAN (`NLayerDiscriminator`) scores: each of its `num_layers` stride-2 4x4 convs
    (padding 1) maps a side s to floor(s / 2), and its two stride-1 4x4 convs take 1 each, so the output has a pixel
    only when s / 2**num_layers >= 3: 24 px for the 3-layer default. EQ-VAE's downscaled targets fall below that at
    small resolutions (a 32 px image at scale 0.25 is 8 px), so the recipe skips the GAN terms on such steps."""
    return 3 * 2**num_layers


# LPIPS-VGG pools four times before its last tap (relu5_3): below 16 px that tap is empty. The feature loss resizes
# its input to the backbone's resolution, so it has no minimum.
PERCEPTUAL_MIN_SIZE = {"lpips": 16, "features": 1, "none": 1}


# ----------------------------------------------------------------------------------------------------------------
# Helpers


class VAETrainingModule(torch.nn.Module):
    """What `accelerator.prepare` wraps: its `forward` runs `vae.training_losses` (or, for an EQ-VAE step with a
    non-identity transform, [`equivariance_losses`]), so encode and decode go through the DDP / autocast wrapper
    (gradients are synchronised, mixed precision applies)."""

    def __init__(self, vae: SpectrumAutoencoderKL):
        super().__init__()
        self.vae = vae

    @property
    def wrapped_model(self) -> SpectrumAutoencoderKL:
        """What the `Checkpointer` saves as a `save_pretrained` folder."""
        return self.vae

    def forward(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        transform: EquivarianceTransform | None = None,
    ) -> dict:
        """`images` `(B, 3, H, W)`; `transform` (EQ-VAE) None or an identity = the plain Spectrum VAE step.

        Returns the unweighted terms: `reconstruction` and `target` `(B, 3, H', W')` (H' < H on EQ-VAE steps),
        `latents` `(B, C, h, w)` (the untransformed posterior sample), `kl` `(B,)`, `esm` and
        `spectral_kl_delta0` (scalars), `dsm_level` (int)."""
        if transform is not None and not transform.is_identity:
            return equivariance_losses(self.vae, images, transform, generator)
        out = self.vae.training_losses(images, generator=generator)
        return {
            "reconstruction": out.reconstruction,
            "target": out.target,
            "latents": out.latents,
            "kl": out.kl,
            "esm": out.esm,
            "spectral_kl_delta0": out.spectral_kl_delta0,
            "dsm_level": out.dsm_level,
        }


def equivariance_losses(
    vae: SpectrumAutoencoderKL,
    images: torch.Tensor,
    transform: EquivarianceTransform,
    generator: torch.Generator | None = None,
) -> dict:
    """One EQ-VAE step beside `vae.training_losses`: the same terms, with the reconstruction pair replaced.

    - `"equivariance"` branch: encode x, sample z, decode tau(z) and train it against tau(x) (both from
      `equivariance_targets`: the same bilinear downscale and rotation).
    - `"low_resolution_prior"` branch: encode and decode tau(x) (a downscale only) and train against tau(x).

    KL and the spectral terms are those of the posterior of the image that was encoded (untransformed x for the
    equivariance branch, as the authors' KL; tau(x) for the low-resolution prior). DSM is off on these steps
    (`dsm_level` 0). Needs images whose side is a multiple of the VAE's downsample factor at every drawn scale
    (`sample_equivariance_transform(latent_size=...)` guarantees it).

    Returns the dict of [`VAETrainingModule.forward`]; `reconstruction` / `target` are `(B, 3, H', W')`.
    """
    if transform.branch == "low_resolution_prior":
        images = apply_spatial_transform(images, transform)  # (B, 3, s H, s W)
    posterior = vae.encode(images).latent_dist
    latents = posterior.sample(generator=generator)  # (B, C, h, w)
    if transform.branch == "equivariance":
        decoded_latents, target = equivariance_targets(images, latents, transform)  # tau(z), tau(x)
    else:
        decoded_latents, target = latents, images
    reconstruction = vae.decode(decoded_latents).sample  # (B, 3, H', W')
    config = vae.config
    image_bands, latent_bands = esm_band_powers(images, latents, n_bins=config.esm_num_bins, blur=config.esm_blur)
    return {
        "reconstruction": reconstruction,
        "target": target,
        "latents": latents,
        "kl": posterior.kl(),
        "esm": esm_divergence(image_bands, latent_bands, delta=vae.config.esm_delta).mean(),
        "spectral_kl_delta0": esm_divergence(image_bands, latent_bands.detach(), delta=0.0).mean().detach(),
        "dsm_level": 0,
    }


def build_vae(args) -> SpectrumAutoencoderKL:
    from ..models.autoencoder_kl_spectral import SpectrumAutoencoderKL
    from ..models.loading import load_autoencoder

    spectral = dict(
        esm_delta=args.esm_delta,
        dsm_levels=tuple(args.dsm_levels),
        dsm_block_size=args.dsm_block_size,
    )
    if args.pretrained_vae is not None:
        # The one VAE loader (fails at once on a missing folder, reads a pipeline's vae/ subfolder, loads strictly);
        # any family (SD, SDXL, SD3, FLUX) keeps its config keys, latent convention included.
        loaded = load_autoencoder(args.pretrained_vae, subfolder=args.pretrained_vae_subfolder)
        vae = SpectrumAutoencoderKL.from_config({**loaded.config, **spectral})
        vae.load_state_dict(loaded.state_dict(), strict=True)
        return vae
    preset = VAE_PRESETS[args.vae_config]
    depth = len(preset["block_out_channels"])
    return SpectrumAutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * depth,
        up_block_types=("UpDecoderBlock2D",) * depth,
        sample_size=args.resolution,
        **preset,
        **spectral,
    )


def build_vf_loss(
    args, vae: SpectrumAutoencoderKL, device
) -> tuple[RepresentationEncoder | None, VFAlignmentLoss | None]:
    """VA-VAE: the frozen vision encoder (`--vf_encoder`, loaded like REPA's targets: `RepresentationEncoder`) and
    the VF loss with its 1x1 projector (latent channels -> the encoder's feature width); `(None, None)` when off."""
    from ..losses.alignment import VFAlignmentLoss
    from ..models.encoders import RepresentationEncoder

    if args.vf_weight == 0:
        return None, None
    encoder = RepresentationEncoder.from_pretrained(args.vf_encoder, input_range="[-1,1]", device=device)
    encoder.requires_grad_(False)
    loss = VFAlignmentLoss(
        vae.config.latent_channels, encoder.feature_dim, margin_cos=args.vf_margin_cos, margin_dist=args.vf_margin_dist
    )
    return encoder, loss


@torch.no_grad()
def vf_features(encoder: RepresentationEncoder, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The frozen encoder's patch features on the latent grid: `(B, 3, H, W)` -> `(B, D, h, w)` (float32)."""
    tokens = encoder(images, grid)  # (B, h * w, D)
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], *grid)


def transform_generator(seed: int, global_step: int, micro_step: int) -> torch.Generator:
    """CPU generator of one micro-step's EQ-VAE transform: a function of the step only, the same on every process
    (so all processes decode the same sizes and run the same networks) and on a resumed run."""
    state = np.random.SeedSequence([seed, global_step, micro_step, 0x5EED, 0]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def draw_transform(
    args, images: torch.Tensor, factor: int, generator: torch.Generator
) -> EquivarianceTransform | None:
    """The EQ-VAE transform of one micro-step (`None` when `--equivariance` is off)."""
    if not args.equivariance:
        return None
    return sample_equivariance_transform(
        generator, (images.shape[-2] // factor, images.shape[-1] // factor), args.eq_probability,
        args.eq_low_resolution_probability, args.eq_min_scale, (1, 2, 3) if args.eq_rotations else (0,),
    )  # fmt: skip


def build_perceptual(args):
    from ..losses.autoencoder import FeaturePerceptualLoss, LPIPSLoss

    if args.perceptual_loss == "none" or args.perceptual_weight == 0:
        return None
    if args.perceptual_loss == "lpips":
        return LPIPSLoss(net=args.lpips_net)
    return FeaturePerceptualLoss(args.perceptual_backbone, layers=args.perceptual_layers)


def spectrum_figure(images: torch.Tensor, latents: torch.Tensor, delta: float):
    """Image, delta-target and latent normalised log spectra in analyze's default convention (DC kept, no centring):
    `evaluation.plotting.plot_image_latent_spectra`. ``latents``: the posterior samples `evaluate_vae` returns."""
    from ..evaluation.plotting import plot_image_latent_spectra

    return plot_image_latent_spectra(images, latents, delta=delta, convention="authors")


@torch.no_grad()
def evaluate_vae(
    vae: SpectrumAutoencoderKL, images: torch.Tensor, delta: float, seed: int = 0
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Validation metrics of `vae` on `images` ``(B, 3, H, W)`` in [-1, 1], in `diffusers-spectrum analyze`'s
    conventions (one source: `evaluation.diagnostics.spectrum_summary`, the function analyze accumulates).

    - Reconstruction numbers (``psnr``, ``dsm_lowpass_mse_<k>``) decode the posterior *mean*
      (``reconstruction_latents: "mean"``).
    - Spectral numbers (slopes, spectral KLs, verdict) are those of posterior *samples* ``mu + sigma * noise`` with
      noise from a generator seeded with `seed`, DC kept and no centring (``spectral_latents: "sample"``,
      ``spectrum_convention: "authors"``), as analyze reports by default; ``spectral_kl_target`` is the per-sample
      KL to the VAE's own ESM target (exponent `delta`); ``posterior_std`` is the mean over elements of sigma.

    Returns `(metrics, reconstructions, latents)`: ``latents`` are the posterior samples the spectra describe.
    """
    from ..evaluation.diagnostics import posterior_latents

    posterior = vae.encode(images).latent_dist
    means = posterior.mode()  # (B, C, h, w)
    reconstructions = vae.decode(means).sample.clamp(-1, 1)  # (B, 3, H, W)
    mse = ((reconstructions.float() - images.float()) / 2).square().flatten(1).mean(1)  # on the [0, 1] scale
    generator = torch.Generator(device=means.device).manual_seed(seed)
    samples, std = posterior_latents(posterior, "sample", generator)  # (B, C, h, w) each, float32
    summary = spectrum_summary(images.float(), samples, posterior_std=std, target_delta=delta)
    metrics = {
        "psnr": float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()),
        "reconstruction_latents": "mean",
        "spectral_latents": "sample",
        "spectrum_convention": summary["spectrum_convention"],
        "spectral_kl_delta0": summary["spectral_kl_delta0"],
        "spectral_kl_delta1": summary["spectral_kl_delta1"],
        "mean_spectrum_kl_delta1": summary["mean_spectrum_kl_delta1"],
        "spectral_kl_target": summary["spectral_kl_target"],
        "image_slope": summary["image_slope"],
        "target_slope": summary["target_slope"],
        "latent_slope": summary["latent_slope"],
        "verdict": summary["verdict"],
        "posterior_std": summary["posterior_std"]["mean"],
    }
    levels = [level for level in vae.config.dsm_levels if level > 0]
    if levels:
        errors = lowpass_reconstruction_errors(
            lambda z: vae.decode(z).sample, images, means, levels, vae.config.dsm_block_size
        )
        metrics.update({f"dsm_lowpass_mse_{level}": float(error.mean()) for level, error in errors.items()})
    return metrics, reconstructions, samples


def perceptual_fits(out: dict, args) -> bool:
    """Whether the perceptual network can score this step's reconstructions (EQ-VAE's downscaled targets can be
    smaller than LPIPS' 16 px minimum; `PERCEPTUAL_MIN_SIZE`). Python ints only: no host sync."""
    return min(out["reconstruction"].shape[-2:]) >= PERCEPTUAL_MIN_SIZE[args.perceptual_loss]


def gan_fits(out: dict, args) -> bool:
    """Whether the PatchGAN can score this step's reconstructions (`discriminator_min_size`: 24 px for 3 layers)."""
    return min(out["reconstruction"].shape[-2:]) >= discriminator_min_size(args.disc_layers)


def autoencoder_loss(
    out: dict,
    args,
    perceptual: torch.nn.Module | None = None,
    discriminator: torch.nn.Module | None = None,
    last_layer: torch.Tensor | None = None,
    autocast=contextlib.nullcontext,
    encoder_last_layer: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """The weighted autoencoder (generator-side) loss of one batch and its unweighted named terms.

    Every term keeps its graph (the perceptual loss is *not* under no_grad). `discriminator` (unwrapped; `None` = GAN
    off for this step) is frozen while scoring the reconstructions, so this loss never trains it. The perceptual and
    GAN terms are skipped on steps whose reconstructions are below their networks' minimum size (EQ-VAE's
    downscaled branch at small resolutions; `perceptual_fits`, `gan_fits`).

    VA-VAE: when `out` holds `"vf"` (the unweighted `VFAlignmentLoss` value, L_mcos + L_mdms), adds
    `w_hyper * w_adaptive * vf` with w_hyper = `args.vf_weight` and w_adaptive the gradient-norm ratio of the
    reconstruction NLL to the VF loss at `encoder_last_layer` (`vae.encoder.conv_out.weight`; `args.adaptive_vf`).
    """
    from ..losses.alignment import adaptive_weight
    from ..losses.autoencoder import adaptive_discriminator_weight, hinge_g_loss, reconstruction_loss

    terms = {
        "reconstruction": reconstruction_loss(out["reconstruction"], out["target"], args.reconstruction_loss).mean()
    }
    nll = args.reconstruction_weight * terms["reconstruction"]
    if discriminator is not None and not gan_fits(out, args):
        discriminator = None
    if perceptual is not None and perceptual_fits(out, args):
        with autocast():
            terms["perceptual"] = perceptual(out["reconstruction"], out["target"]).mean()
        nll = nll + args.perceptual_weight * terms["perceptual"]
    loss = nll
    if args.kl_weight > 0:
        terms["kl"] = out["kl"].mean()
        loss = loss + args.kl_weight * terms["kl"]
    if args.esm_weight > 0:
        loss = loss + args.esm_weight * out["esm"]
    terms["esm"] = out["esm"].detach()
    if "vf" in out:
        terms["vf"] = out["vf"]
        vf_weight = torch.full((), args.vf_weight, device=loss.device)
        if args.adaptive_vf and nll.requires_grad:
            vf_weight = adaptive_weight(nll, terms["vf"], encoder_last_layer, w_hyper=args.vf_weight)
        terms["vf_weight"] = vf_weight
        loss = loss + vf_weight * terms["vf"]
    if discriminator is not None:
        discriminator.requires_grad_(False)
        with autocast():
            terms["generator"] = hinge_g_loss(discriminator(out["reconstruction"])).mean()
        discriminator.requires_grad_(True)
        weight = torch.ones((), device=loss.device)
        if args.adaptive_disc_weight and nll.requires_grad:
            weight = adaptive_discriminator_weight(nll, terms["generator"], last_layer)
        terms["adaptive_weight"] = weight
        loss = loss + args.disc_weight * weight * terms["generator"]
    return loss, terms


def discriminator_loss(discriminator: torch.nn.Module, out: dict) -> torch.Tensor:
    """Hinge loss of the discriminator on the *detached* targets and reconstructions (one forward, so DDP sees one
    call per step)."""
    from ..losses.autoencoder import hinge_d_loss

    pair = torch.cat([out["target"].detach(), out["reconstruction"].detach()])  # (2B, 3, H, W)
    return hinge_d_loss(*discriminator(pair).chunk(2)).mean()


# ----------------------------------------------------------------------------------------------------------------
# Arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train or fine-tune a Spectrum VAE (ESM / DSM) with diffusers and accelerate. With no data flag "
        "it trains on the embedded photo crops. `--recipe` sets the authors' recipes; flags given explicitly win."
    )
    add_data_args(parser, images=True)
    g = parser.add_argument_group("model")
    g.add_argument(
        "--pretrained_vae",
        type=str,
        default=None,
        help="AutoencoderKL folder or Hub id to fine-tune (SD, SDXL, SD3, FLUX; a pipeline repo's vae/ is found).",
    )
    g.add_argument("--pretrained_vae_subfolder", type=str, default=None, help="Subfolder holding the VAE (e.g. vae).")
    g.add_argument(
        "--vae_config",
        type=str,
        default="f8d4",
        choices=sorted(VAE_PRESETS),
        help="Architecture preset when training from scratch (f8d4, f16d16 from the paper; tiny for CPU).",
    )
    g.add_argument("--gradient_checkpointing", action="store_true", help="Trade compute for memory in the VAE.")

    g = parser.add_argument_group("losses (unset flags take the recipe's value, or the defaults without a recipe)")
    g.add_argument(
        "--recipe",
        type=str,
        default=None,
        choices=sorted(RECIPES),
        help="The authors' recipes: sd-vae (KL 1e-6), esm-ae (ESM 0.01, delta 1), dsm-ae (DSM 0,8,10,12); "
        "all with L1 + 0.5 LPIPS + PatchGAN 0.5 from step 50001. The baselines with their papers' settings: eq-vae "
        "(EQ-VAE: KL 1e-6 + equivariance branch) and va-vae (VA-VAE: KL 1e-6 + VF loss 0.1, needs --vf_encoder). "
        "LPIPS needs the `lpips` package and VGG weights from the internet: offline, add --perceptual_loss none.",
    )
    g.add_argument("--reconstruction_loss", type=str, default=None, choices=("l1", "l2"), help="Pixel loss.")
    g.add_argument("--reconstruction_weight", type=float, default=1.0, help="Weight of the pixel loss.")
    g.add_argument(
        "--perceptual_loss",
        type=str,
        default=None,
        choices=("none", "lpips", "features"),
        help="lpips (needs the `lpips` package and downloads VGG weights), features (a local or Hub transformers "
        "backbone, --perceptual_backbone) or none (offline).",
    )
    g.add_argument("--perceptual_weight", type=float, default=None, help="Weight of the perceptual loss.")
    g.add_argument("--lpips_net", type=str, default="vgg", choices=("vgg", "alex", "squeeze"), help="LPIPS backbone.")
    g.add_argument(
        "--perceptual_backbone",
        type=str,
        default=None,
        help="Path or Hub id of a transformers vision model for --perceptual_loss features.",
    )
    g.add_argument(
        "--perceptual_layers",
        type=parse_int_list,
        default=None,
        help="hidden_states indices for the feature loss, e.g. 3,6,9,12 (default: all).",
    )
    g.add_argument("--disc_weight", type=float, default=None, help="PatchGAN generator loss weight (0 = no GAN).")
    g.add_argument("--disc_start", type=int, default=None, help="Step at which the GAN losses start.")
    g.add_argument("--disc_layers", type=int, default=3, help="Stride-2 layers of the PatchGAN discriminator.")
    g.add_argument("--disc_channels", type=int, default=64, help="Channels of the discriminator's first layer.")
    g.add_argument(
        "--disc_norm", type=str, default="batch", choices=("batch", "group", "none"), help="Discriminator norm."
    )
    g.add_argument(
        "--disc_learning_rate", type=float, default=None, help="Discriminator lr (default: --learning_rate)."
    )
    g.add_argument(
        "--adaptive_disc_weight",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Scale the GAN loss by the VQGAN gradient-norm ratio at the decoder's last layer.",
    )
    g.add_argument("--kl_weight", type=float, default=None, help="Weight of the posterior KL (SD-VAE: 1e-6).")
    g.add_argument("--esm_weight", type=float, default=None, help="Weight of Encoding Spectrum Matching (0.01).")
    g.add_argument("--esm_delta", type=float, default=None, help="ESM target flattening exponent (1.0: ~1/f).")
    g.add_argument(
        "--dsm_levels",
        type=parse_int_list,
        default=None,
        help="DSM mask levels drawn per step, comma-separated (0,8,10,12; 0 alone disables DSM).",
    )
    g.add_argument("--dsm_block_size", type=int, default=8, help="DCT block side of the DSM low-pass.")

    g = parser.add_argument_group("EQ-VAE equivariance (Kouzelis et al. 2025; --recipe eq-vae)")
    g.add_argument(
        "--equivariance",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Decode spatially transformed latents against the same transform of the image (EQ-VAE).",
    )
    g.add_argument("--eq_probability", type=float, default=0.5, help="Probability of the equivariance branch (0.5).")
    g.add_argument(
        "--eq_low_resolution_probability",
        type=float,
        default=0.25,
        help="Within the other steps, probability of a low-resolution reconstruction (0.25).",
    )
    g.add_argument("--eq_min_scale", type=float, default=0.25, help="Smallest downscale factor (0.25).")
    g.add_argument(
        "--eq_rotations",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Rotate by 90/180/270 degrees in the equivariance branch (the paper does).",
    )
    g = parser.add_argument_group("VA-VAE vision-foundation alignment (Yao et al. 2025; --recipe va-vae)")
    g.add_argument(
        "--vf_encoder",
        type=str,
        default=None,
        help="Frozen vision encoder (transformers model folder or Hub id, e.g. facebook/dinov2-large as the paper) "
        "whose patch features on the latent grid the VF loss aligns to.",
    )
    g.add_argument("--vf_weight", type=float, default=None, help="VF loss weight w_hyper (VA-VAE: 0.1; 0 = off).")
    g.add_argument("--vf_margin_cos", type=float, default=0.5, help="Marginal cosine margin m1 (0.5).")
    g.add_argument("--vf_margin_dist", type=float, default=0.25, help="Marginal distance-matrix margin m2 (0.25).")
    g.add_argument(
        "--adaptive_vf",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Scale the VF loss by the gradient-norm ratio at the encoder's last layer (VA-VAE does).",
    )

    add_optimization_args(parser)
    g = add_output_args(parser)
    g.add_argument("--num_validation_images", type=int, default=4, help="Images in the validation grid.")
    g.add_argument(
        "--latent_stats_samples",
        type=int,
        default=256,
        help="Images used to estimate the latent scaling (and shift) factor at the end.",
    )
    g.add_argument(
        "--use_shift",
        action="store_true",
        help="Also estimate shift_factor (the latent mean; SD3 / FLUX convention). A VAE whose config already has "
        "a shift_factor keeps that convention without this flag.",
    )
    # Recipe-dependent flags default to None and are filled by `resolve_args`.
    parser.set_defaults(
        output_dir="spectrum-vae", learning_rate=None, lr_scheduler=None, lr_warmup_steps=None,
        adam_weight_decay=None, max_grad_norm=None, adam_beta1=None, adam_beta2=None,
    )  # fmt: skip
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return resolve_args(build_parser().parse_args(argv))


def _lpips_available() -> bool:
    from ..losses.autoencoder import lpips_available  # here: the module imports diffusers

    return lpips_available()


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset flags from the recipe (or defaults) and validate them, once."""
    preset = RECIPES[args.recipe] if args.recipe else DEFAULTS
    for key, value in {**DEFAULTS, **preset}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.dsm_levels = tuple(args.dsm_levels)
    if args.perceptual_layers is not None:
        args.perceptual_layers = tuple(args.perceptual_layers)
    if args.perceptual_loss == "lpips" and args.perceptual_weight > 0 and not _lpips_available():
        raise ValueError(
            f"{'--recipe ' + args.recipe + ' uses' if args.recipe else '--perceptual_loss lpips needs'} LPIPS, which "
            "needs the `lpips` package and downloads VGG weights from the internet. On a machine without them add "
            "--perceptual_loss none (the offline switch), or --perceptual_loss features --perceptual_backbone "
            "<local transformers vision model>. (Do not `pip install torchvision` beside a pinned CPU torch: it "
            "replaces torch with another build.)"
        )
    if args.perceptual_loss == "features" and args.perceptual_weight > 0 and args.perceptual_backbone is None:
        raise ValueError("--perceptual_loss features needs --perceptual_backbone (a path or Hub id).")
    finish_common_args(args, "train_spectrum_vae")
    from .args import check_nonnegative, check_positive

    check_positive(args, ("latent_stats_samples", "num_validation_images"))
    check_nonnegative(
        args, ("reconstruction_weight", "perceptual_weight", "disc_weight", "kl_weight", "esm_weight", "vf_weight",
               "vf_margin_cos", "vf_margin_dist"),
    )  # fmt: skip
    if args.vf_weight > 0 and args.vf_encoder is None:
        raise ValueError(
            f"{'--recipe va-vae' if args.recipe == 'va-vae' else '--vf_weight > 0'} needs --vf_encoder: a "
            "transformers vision model folder or Hub id (the paper: DINOv2 ViT-L/14, facebook/dinov2-large)."
        )
    for name in ("eq_probability", "eq_low_resolution_probability"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ValueError(f"--{name} must lie in [0, 1], got {getattr(args, name)}.")
    if not 0.0 < args.eq_min_scale < 1.0:
        raise ValueError(f"--eq_min_scale must lie in (0, 1), got {args.eq_min_scale}.")
    if args.disc_learning_rate is None:
        args.disc_learning_rate = args.learning_rate
    return args


# ----------------------------------------------------------------------------------------------------------------
# Training


def train_vae(args: argparse.Namespace) -> Path:
    """Train as `args` (from `parse_args`) says; returns the output folder."""
    from ..data.images import ImageReader, ImageTransform, image_batches
    from ..data.sources import load_image_dataset
    from ..data.stream import SkipCounter
    from ..losses.autoencoder import NLayerDiscriminator
    from .loop import (
        AccumulationWindow,
        adamw,
        compile_model,
        learning_settings,
        make_accelerator,
        make_optimizer,
        resume_training,
        save_checkpoint_if_due,
        train_dataloader,
    )

    # 1. Accelerator, logging, seeds
    output_dir = Path(args.output_dir)
    accelerator = make_accelerator(args, "train-vae")

    # 2. Data
    skip_counter = SkipCounter()  # files that are not images (scan) and images that do not decode (stream)
    dataset = load_image_dataset(
        args.dataset_name, args.train_data_dir, args.dataset_split, args.image_column, not args.no_streaming,
        skip_counter=skip_counter,
    )  # fmt: skip
    train_transform = ImageTransform(
        args.resolution, args.center_crop, args.random_flip, seed=args.seed, reduced_decode=args.reduced_jpeg_decode
    )
    eval_transform = ImageTransform(args.resolution, center_crop=True, reduced_decode=args.reduced_jpeg_decode)
    validation_batch = next(
        image_batches(dataset, args.num_validation_images, eval_transform, args.image_column), None
    )
    if validation_batch is None:
        raise ValueError("no image of the dataset could be read (see the skipped-image log lines above).")
    validation_images = validation_batch["pixel_values"].to(accelerator.device)

    # 3. Models, losses, optimizers
    vae = build_vae(args)
    if args.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    vae.train()
    module = compile_model(VAETrainingModule(vae), args.use_torch_compile)
    perceptual = build_perceptual(args)
    if perceptual is not None:
        perceptual.to(accelerator.device)
    use_gan = args.disc_weight > 0
    discriminator = NLayerDiscriminator(3, args.disc_channels, args.disc_layers, args.disc_norm) if use_gan else None
    ema = create_ema(vae, args.ema_decay) if args.use_ema else None
    vf_encoder, vf_loss = build_vf_loss(args, vae, accelerator.device)

    trained = [*vae.parameters(), *(vf_loss.parameters() if vf_loss is not None else ())]  # VF projector: AE optimiser
    optimizer, lr_scheduler = make_optimizer(trained, args, accelerator)
    module, optimizer, lr_scheduler = accelerator.prepare(module, optimizer, lr_scheduler)
    models = {"vae": module}
    if vf_loss is not None:
        vf_loss = accelerator.prepare(vf_loss)
        models["vf_projector"] = vf_loss  # saved in checkpoints (model.safetensors), so resume is exact
    if use_gan:
        disc_optimizer = adamw(  # constant lr
            discriminator.parameters(), args, args.disc_learning_rate, fused=accelerator.device.type == "cuda"
        )
        discriminator, disc_optimizer = accelerator.prepare(discriminator, disc_optimizer)
        models["discriminator"] = discriminator
    if ema is not None:
        ema.to(accelerator.device)
    raw_vae = accelerator.unwrap_model(module).vae
    raw_discriminator = accelerator.unwrap_model(discriminator) if use_gan else None
    last_layer = raw_vae.decoder.conv_out.weight
    encoder_last_layer = raw_vae.encoder.conv_out.weight
    checkpointer = Checkpointer(
        accelerator, output_dir, models, {"vae": ema} if ema is not None else None, args.checkpoints_total_limit,
        settings=learning_settings(args, RESUME_SETTINGS),
    )  # fmt: skip

    # 4. Resume
    global_step, data_state, guard = resume_training(
        checkpointer, args.resume_from_checkpoint, args.max_nonfinite_steps
    )
    dataloader = train_dataloader(
        dataset, ImageReader(train_transform, args.image_column), args, accelerator, data_state
    )
    data_iterator = iter(dataloader)

    # 5. Loop: one optimizer step = `gradient_accumulation_steps` micro-batches
    progress = tqdm(
        total=args.max_train_steps, initial=global_step, desc="train vae", disable=not accelerator.is_main_process
    )
    accumulation = args.gradient_accumulation_steps
    window = AccumulationWindow(accelerator, [module, discriminator, vf_loss], accumulation)
    while global_step < args.max_train_steps:
        gan_active = use_gan and global_step >= args.disc_start
        logs = {}
        for micro_step in range(accumulation):
            batch = next(data_iterator)
            images = batch["pixel_values"].to(accelerator.device)
            generator = step_generator(args.seed, global_step, micro_step, accelerator.process_index, images.device)
            transform = draw_transform(
                args, images, raw_vae.downsample_factor, transform_generator(args.seed, global_step, micro_step)
            )
            with window.micro_step(micro_step):
                # 5a. Autoencoder: encode / decode through the wrapped module (DDP, autocast); EQ-VAE transforms
                out = module(images, generator=generator, transform=transform)
                if vf_loss is not None:  # VA-VAE: align the projected posterior sample to the frozen features
                    features = vf_features(vf_encoder, images, tuple(out["latents"].shape[-2:]))
                    out["vf"] = vf_loss(out["latents"], features).loss
                loss, terms = autoencoder_loss(
                    out, args, perceptual, raw_discriminator if gan_active else None, last_layer, accelerator.autocast,
                    encoder_last_layer,
                )  # fmt: skip
                # 5b. Discriminator on detached real and reconstructed images (one forward for DDP), at sizes it takes
                if gan_active and gan_fits(out, args):
                    terms["discriminator"] = discriminator_loss(discriminator, out)
                    loss = loss + terms["discriminator"]  # separate parameters: one backward serves both
                window.backward(loss)
            for name, value in terms.items():
                logs[name] = logs.get(name, 0.0) + value.detach() / accumulation
            logs["spectral_kl_delta0"] = out["spectral_kl_delta0"].detach()
            logs["dsm_level"] = out["dsm_level"]

        # 5c. Optimizer steps (skipped together on every process when a loss of the window was not finite)
        if window.step_ok(guard):
            if args.max_grad_norm > 0:
                clipped = [*module.parameters(), *(vf_loss.parameters() if vf_loss is not None else ())]
                logs["grad_norm"] = accelerator.clip_grad_norm_(clipped, args.max_grad_norm)
            optimizer.step()
            if gan_active:
                if args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(discriminator.parameters(), args.max_grad_norm)
                disc_optimizer.step()
            if ema is not None:
                ema.step(raw_vae.parameters())
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if use_gan:
            disc_optimizer.zero_grad(set_to_none=True)
        global_step += 1
        progress.update(1)
        logs = {k: float(v) for k, v in logs.items()}  # one transfer per optimizer step, for the trackers
        counts = dataloader.counts()  # over the workers, carried through checkpoints
        logs.update(
            lr=lr_scheduler.get_last_lr()[0], skipped_images=skip_counter.count + counts.get("skipped", 0),
            nonfinite_steps=guard.total, upsampled_images=counts.get("upsampled", 0),
        )  # fmt: skip
        progress.set_postfix(loss=logs.get("reconstruction", float("nan")), esm=logs.get("esm", float("nan")))
        accelerator.log(logs, step=global_step)

        # 5d. Checkpoint and validation
        save_checkpoint_if_due(checkpointer, args, global_step, dataloader, guard)
        if accelerator.is_main_process and (global_step % args.validation_steps == 0 or global_step == 1):
            raw_vae.eval()
            with ema_weights(ema, raw_vae):
                metrics, reconstructions, latents = evaluate_vae(raw_vae, validation_images, raw_vae.config.esm_delta)
            raw_vae.train()
            numbers = {f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
            accelerator.log(numbers, step=global_step)
            pairs = torch.cat([validation_images, reconstructions])  # originals on top, reconstructions below
            log_images(accelerator, "val/reconstructions", pairs, global_step, nrow=len(validation_images))
            log_figure(
                accelerator, "val/spectrum", spectrum_figure(validation_images, latents, args.esm_delta), global_step
            )
    progress.close()

    # 6. Final model: EMA weights, latent statistics, save, stock export, card, push
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(raw_vae.parameters())
        raw_vae.eval()
        stats_batches = image_batches(
            dataset, args.train_batch_size, eval_transform, args.image_column, max_samples=args.latent_stats_samples
        )
        stats = raw_vae.estimate_latent_stats(
            stats_batches, args.latent_stats_samples, use_shift=args.use_shift, sample_posterior=True,
            generator=torch.Generator(device=accelerator.device).manual_seed(args.seed),
        )  # fmt: skip
        metrics, _, _ = evaluate_vae(raw_vae, validation_images, raw_vae.config.esm_delta)
        metrics.update(
            latent_convention=stats["convention"], scaling_factor=stats["scaling_factor"],
            shift_factor=stats["shift_factor"], latent_std=stats["std"],
            latent_mean=stats["mean"], latent_stats_samples=stats["num_samples"], global_step=global_step,
            skipped_images=logs["skipped_images"], nonfinite_steps=guard.total,
            upsampled_images=logs["upsampled_images"],
        )  # fmt: skip
        write_outputs(args, raw_vae, metrics, output_dir)
        logger.info(f"final metrics: {metrics}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output_dir


def write_outputs(args, vae: SpectrumAutoencoderKL, metrics: dict, output_dir: Path) -> None:
    """save_pretrained, the stock export, metrics.json, the model card, and the (dry-run) push."""
    from ..pipelines.export import export_vae
    from ..pipelines.model_cards import vae_model_card
    from .loop import push_output

    vae.save_pretrained(output_dir)
    export_vae(output_dir / "stock", vae, training_info={"metrics": metrics, "recipe": args.recipe})
    write_json(output_dir / "metrics.json", metrics)
    card = vae_model_card(
        args.hub_model_id or output_dir.resolve().name,
        config=dict(vae.config),
        training_args=public_args(args),
        metrics=metrics,
        base_model=args.pretrained_vae if args.pretrained_vae and not os.path.isdir(args.pretrained_vae) else None,
        datasets=[args.dataset_name] if args.dataset_name else None,
        dataset_description=None if args.dataset_name or args.train_data_dir else "the embedded photo crops",
        recipe=args.recipe,
        eval_description=(
            f"the first {args.num_validation_images} images of the training data (centre crops, "
            f"{args.resolution} px): reconstructions decoded from the posterior mean, spectral numbers on seeded "
            "posterior samples with the DC term kept (the authors' analysis convention); latent statistics over "
            f"{metrics['latent_stats_samples']} images"
        ),
    )
    card.save(output_dir / "README.md")
    push_output(args, output_dir)
