#!/usr/bin/env python
"""Train or fine-tune a Spectrum VAE (`SpectrumAutoencoderKL`) with ESM / DSM, perceptual and adversarial losses.

Single process: `python examples/train_spectrum_vae.py --output_dir out --vae_config tiny --max_train_steps 100`.
Multi-GPU / multi-node: `accelerate launch examples/train_spectrum_vae.py ...`. With no data flag it trains on the
embedded photo crops. `--recipe esm-ae` (or `sd-vae`, `dsm-ae`) reproduces the authors' recipes; flags given
explicitly win over the recipe. See `--help` for every flag.

The output folder holds the trained `SpectrumAutoencoderKL` (EMA weights with `--use_ema`), `stock/` (the same
weights as a stock `AutoencoderKL`), `metrics.json`, `training_args.json`, a model card (`README.md`), the
accelerate checkpoints (`checkpoint-<step>`) and the tensorboard logs (`logs/`).
"""

import argparse
import contextlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from diffusers.utils import check_min_version
from tqdm.auto import tqdm

from diffusers_spectrum import SpectrumAutoencoderKL
from diffusers_spectrum.training.data import ImageTransform, image_batches, load_image_dataset, make_image_dataloader
from diffusers_spectrum.evaluation.diagnostics import lowpass_reconstruction_errors, spectrum_summary
from diffusers_spectrum.losses import (
    FeaturePerceptualLoss,
    LPIPSLoss,
    NLayerDiscriminator,
    adaptive_discriminator_weight,
    hinge_d_loss,
    hinge_g_loss,
    lpips_available,
    reconstruction_loss,
)
from diffusers_spectrum.pipelines.model_cards import push_folder_to_hub, vae_model_card
from diffusers_spectrum.spectral import spectral_kl
from diffusers_spectrum.spectral.esm import esm_spectra
from diffusers_spectrum.training.utils import (
    NonFiniteGuard,
    create_ema,
    ema_weights,
    find_resume_checkpoint,
    load_checkpoint,
    log_figure,
    log_images,
    parse_int_list,
    public_args,
    save_args_json,
    save_checkpoint,
)


check_min_version("0.32.0")
logger = get_logger(__name__, log_level="INFO")

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
}
# Defaults without a recipe: ESM + DSM with pixel losses only (runs anywhere, no LPIPS weights needed).
DEFAULTS = dict(
    reconstruction_loss="l1", perceptual_loss="none", perceptual_weight=0.0, disc_weight=0.0, disc_start=0,
    learning_rate=1e-4, lr_scheduler="constant_with_warmup", lr_warmup_steps=0, adam_weight_decay=0.005,
    max_grad_norm=1.0, random_flip=False, kl_weight=0.0, esm_weight=0.01, esm_delta=1.0, dsm_levels=(0, 8, 10, 12),
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Helpers


class VAETrainingModule(torch.nn.Module):
    """What `accelerator.prepare` wraps: its `forward` runs `vae.training_losses`, so encode and decode go through
    the DDP / autocast wrapper (gradients are synchronised, mixed precision applies)."""

    def __init__(self, vae: SpectrumAutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        out = self.vae.training_losses(images, generator=generator)
        return {
            "reconstruction": out.reconstruction,
            "target": out.target,
            "kl": out.kl,
            "esm": out.esm,
            "spectral_kl_delta0": out.spectral_kl_delta0,
            "dsm_level": out.dsm_level,
        }


def step_generator(seed: int, global_step: int, micro_step: int, process_index: int, device) -> torch.Generator:
    """Generator of one micro-step (posterior sample, DSM level): a function of the step, so resumes are exact."""
    state = np.random.SeedSequence([seed, global_step, micro_step, process_index]).generate_state(1)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def build_vae(args) -> SpectrumAutoencoderKL:
    spectral = dict(
        esm_delta=args.esm_delta,
        dsm_levels=tuple(args.dsm_levels),
        dsm_block_size=args.dsm_block_size,
        use_kl=args.kl_weight > 0,
    )
    if args.pretrained_vae is not None:
        vae = SpectrumAutoencoderKL.from_pretrained(args.pretrained_vae)
        vae.register_to_config(**spectral)
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


def build_perceptual(args):
    if args.perceptual_loss == "none" or args.perceptual_weight == 0:
        return None
    if args.perceptual_loss == "lpips":
        return LPIPSLoss(net=args.lpips_net)
    return FeaturePerceptualLoss(args.perceptual_backbone, layers=args.perceptual_layers)


def spectrum_figure(images: torch.Tensor, latents: torch.Tensor, delta: float):
    """Image, delta-target and latent normalised log spectra (`diffusers_spectrum.evaluation.plotting.plot_spectra`)."""
    from diffusers_spectrum.evaluation.plotting import plot_spectra

    image_spectra, latent_spectra = esm_spectra(images.float(), latents.float(), delta=0.0)  # (B, n_bins) each
    target_spectra, _ = esm_spectra(images.float(), latents.float(), delta=delta)
    return plot_spectra(image_spectra, latent_spectra, delta=delta, target_spectra=target_spectra)


@torch.no_grad()
def evaluate_vae(
    vae: SpectrumAutoencoderKL, images: torch.Tensor, delta: float
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """PSNR, the spectral summary (slopes, spectral KL, verdict; as `diffusers-spectrum analyze` reports them) and
    the DSM low-pass errors of `vae` on `images`, with the posterior mean.

    Returns `(metrics, reconstructions, latents)`.
    """
    latents = vae.encode(images).latent_dist.mode()  # (B, C, h, w)
    reconstructions = vae.decode(latents).sample.clamp(-1, 1)  # (B, 3, H, W)
    mse = ((reconstructions.float() - images.float()) / 2).square().flatten(1).mean(1)  # on the [0, 1] scale
    summary = spectrum_summary(images.float(), latents.float(), blur=vae.config.esm_blur)
    metrics = {
        "psnr": float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()),
        "spectral_kl_delta0": float(summary["spectral_kl_delta0"].mean()),
        "spectral_kl_delta1": float(summary["spectral_kl_delta1"].mean()),
        "spectral_kl_target": float(spectral_kl(images, latents, delta=delta, blur=vae.config.esm_blur).mean()),
        "image_slope": summary["image_slope"],
        "target_slope": summary["target_slope"],
        "latent_slope": summary["latent_slope"],
        "verdict": summary["verdict"],
    }
    levels = [level for level in vae.config.dsm_levels if level > 0]
    if levels:
        errors = lowpass_reconstruction_errors(
            lambda z: vae.decode(z).sample, images, latents, levels, vae.config.dsm_block_size
        )
        metrics.update({f"dsm_lowpass_mse_{level}": float(error.mean()) for level, error in errors.items()})
    return metrics, reconstructions, latents


def autoencoder_loss(
    out: dict,
    args,
    perceptual: torch.nn.Module | None = None,
    discriminator: torch.nn.Module | None = None,
    last_layer: torch.Tensor | None = None,
    autocast=contextlib.nullcontext,
) -> tuple[torch.Tensor, dict]:
    """The weighted autoencoder (generator-side) loss of one batch and its unweighted named terms.

    Every term keeps its graph (the perceptual loss is *not* under no_grad). `discriminator` (unwrapped; `None` = GAN
    off for this step) is frozen while scoring the reconstructions, so this loss never trains it.
    """
    terms = {
        "reconstruction": reconstruction_loss(out["reconstruction"], out["target"], args.reconstruction_loss).mean()
    }
    nll = args.reconstruction_weight * terms["reconstruction"]
    if perceptual is not None:
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
    pair = torch.cat([out["target"].detach(), out["reconstruction"].detach()])  # (2B, 3, H, W)
    return hinge_d_loss(*discriminator(pair).chunk(2)).mean()


# ----------------------------------------------------------------------------------------------------------------
# Arguments


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Train a Spectrum VAE (ESM / DSM) with diffusers and accelerate.")
    g = parser.add_argument_group("data")
    g.add_argument(
        "--dataset_name", type=str, default=None, help="Hub dataset id, streamed. Default: embedded photos."
    )
    g.add_argument("--dataset_split", type=str, default="train", help="Split of the dataset to train on.")
    g.add_argument("--train_data_dir", type=str, default=None, help="Local image folder or parquet / arrow files.")
    g.add_argument("--image_column", type=str, default="image", help="Column holding the images.")
    g.add_argument("--no_streaming", action="store_true", help="Load the dataset fully instead of streaming it.")
    g.add_argument("--resolution", type=int, default=256, help="Training image side (shorter side resize + crop).")
    g.add_argument("--center_crop", action="store_true", help="Centre crop instead of a random crop.")
    g.add_argument(
        "--random_flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Random horizontal flip (p = 0.5). Default: the recipe's (on for the authors' recipes).",
    )
    g.add_argument("--shuffle_buffer_size", type=int, default=1000, help="Shuffle buffer of streamed datasets.")
    g.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=0,
        choices=(0, 1),
        help="0: decode in the training process; 1: one background worker (its skipped-image count is only "
        "logged, and the shuffled order differs from 0: keep the same value when resuming).",
    )

    g = parser.add_argument_group("model")
    g.add_argument("--pretrained_vae", type=str, default=None, help="AutoencoderKL folder or Hub id to fine-tune.")
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
        "all with L1 + 0.5 LPIPS + PatchGAN 0.5 from step 50001.",
    )
    g.add_argument("--reconstruction_loss", type=str, default=None, choices=("l1", "l2"), help="Pixel loss.")
    g.add_argument("--reconstruction_weight", type=float, default=1.0, help="Weight of the pixel loss.")
    g.add_argument(
        "--perceptual_loss",
        type=str,
        default=None,
        choices=("none", "lpips", "features"),
        help="lpips (needs `lpips` + torchvision) or features (a transformers backbone, see below).",
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
        "--disc_norm",
        type=str,
        default="batch",
        choices=("batch", "group", "none"),
        help="Discriminator normalisation.",
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

    g = parser.add_argument_group("optimisation")
    g.add_argument("--train_batch_size", type=int, default=8, help="Batch size per device.")
    g.add_argument("--max_train_steps", type=int, default=1000, help="Optimizer steps to train for.")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    g.add_argument("--learning_rate", type=float, default=None, help="Peak learning rate (recipes: 5e-5).")
    g.add_argument("--scale_lr", action="store_true", help="Multiply the lr by batch x accumulation x processes.")
    g.add_argument(
        "--lr_scheduler",
        type=str,
        default=None,
        help='diffusers scheduler: "linear", "cosine", "constant", "constant_with_warmup", ...',
    )
    g.add_argument("--lr_warmup_steps", type=int, default=None, help="Warm-up steps (recipes: 2000).")
    g.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    g.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW beta2.")
    g.add_argument("--adam_weight_decay", type=float, default=None, help="AdamW weight decay (recipes: 0.005).")
    g.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon.")
    g.add_argument("--max_grad_norm", type=float, default=None, help="Gradient clipping norm (recipes: 1.0).")
    g.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=("no", "fp16", "bf16"),
        help="Mixed precision (default: accelerate's config).",
    )
    g.add_argument("--seed", type=int, default=0, help="Seed of initialisation, data order, crops and sampling.")
    g.add_argument("--use_ema", action="store_true", help="Keep an EMA of the VAE weights; saved at the end.")
    g.add_argument("--ema_decay", type=float, default=0.9999, help="EMA decay.")
    g.add_argument(
        "--max_nonfinite_steps",
        type=int,
        default=10,
        help="Stop after this many non-finite losses in a row (each is skipped and reported).",
    )

    g = parser.add_argument_group("checkpoints, logging and outputs")
    g.add_argument("--output_dir", type=str, default="spectrum-vae", help="Where everything is written.")
    g.add_argument("--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint every N steps.")
    g.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints.")
    g.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help='"latest" or a checkpoint folder: continue from its step and data position.',
    )
    g.add_argument("--report_to", type=str, default="tensorboard", help='"tensorboard", "wandb", "all" or "none".')
    g.add_argument("--logging_dir", type=str, default="logs", help="Log folder, relative to --output_dir.")
    g.add_argument("--tracker_project_name", type=str, default="train_spectrum_vae", help="Tracker run name.")
    g.add_argument(
        "--validation_steps",
        type=int,
        default=500,
        help="Log reconstructions, metrics and the spectrum plot every N steps.",
    )
    g.add_argument("--num_validation_images", type=int, default=4, help="Images in the validation grid.")
    g.add_argument(
        "--latent_stats_samples",
        type=int,
        default=256,
        help="Images used to estimate the latent scaling factor at the end.",
    )
    g.add_argument("--use_shift", action="store_true", help="Also record the latent mean as shift_factor.")
    g.add_argument("--push_to_hub", action="store_true", help="Upload the output folder to the Hub at the end.")
    g.add_argument("--hub_model_id", type=str, default=None, help="Hub repo id (default: the output folder name).")
    g.add_argument("--hub_token", type=str, default=None, help="Hub token (default: the logged-in one).")
    g.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repo as private.")
    g.add_argument(
        "--hub_dry_run",
        action="store_true",
        help="With --push_to_hub: only list what would be uploaded (written to hub_upload.json).",
    )

    args = parser.parse_args(input_args)
    return resolve_args(args)


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset flags from the recipe (or defaults) and validate them, once."""
    preset = RECIPES[args.recipe] if args.recipe else DEFAULTS
    for key, value in {**DEFAULTS, **preset}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.dsm_levels = tuple(args.dsm_levels)
    if args.perceptual_layers is not None:
        args.perceptual_layers = tuple(args.perceptual_layers)
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise ValueError("Pass either --dataset_name or --train_data_dir, not both.")
    if args.perceptual_loss == "lpips" and args.perceptual_weight > 0 and not lpips_available():
        if args.perceptual_backbone is None:
            raise ValueError(
                "--perceptual_loss lpips (the recipes' choice) needs `pip install lpips torchvision`; or pass "
                "--perceptual_loss features --perceptual_backbone <transformers vision model>, or "
                "--perceptual_weight 0."
            )
        args.perceptual_loss = "features"
    if args.perceptual_loss == "features" and args.perceptual_weight > 0 and args.perceptual_backbone is None:
        raise ValueError("--perceptual_loss features needs --perceptual_backbone (a path or Hub id).")
    for name in ("train_batch_size", "max_train_steps", "gradient_accumulation_steps", "checkpointing_steps",
                 "validation_steps", "resolution", "latent_stats_samples", "max_nonfinite_steps"):  # fmt: skip
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}.")
    for name in ("reconstruction_weight", "perceptual_weight", "disc_weight", "kl_weight", "esm_weight"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}.")
    if args.disc_learning_rate is None:
        args.disc_learning_rate = args.learning_rate
    if args.push_to_hub and args.hub_model_id is None:
        args.hub_model_id = Path(args.output_dir).resolve().name
    return args


# ----------------------------------------------------------------------------------------------------------------
# Training


def main(args):
    # 1. Accelerator, logging, seeds
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    torch.manual_seed(args.seed)
    if accelerator.is_main_process:
        save_args_json(public_args(args), output_dir)
    if args.report_to != "none":
        accelerator.init_trackers(args.tracker_project_name)

    # 2. Data
    dataset = load_image_dataset(
        args.dataset_name, args.train_data_dir, args.dataset_split, args.image_column, not args.no_streaming
    )
    train_transform = ImageTransform(args.resolution, args.center_crop, args.random_flip, seed=args.seed)
    eval_transform = ImageTransform(args.resolution, center_crop=True)
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
    module = VAETrainingModule(vae)
    perceptual = build_perceptual(args)
    if perceptual is not None:
        perceptual.to(accelerator.device)
    use_gan = args.disc_weight > 0
    discriminator = NLayerDiscriminator(3, args.disc_channels, args.disc_layers, args.disc_norm) if use_gan else None
    ema = create_ema(vae, args.ema_decay) if args.use_ema else None

    learning_rate = args.learning_rate
    if args.scale_lr:
        learning_rate *= args.train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
    adam = dict(betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, **adam)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    module, optimizer, lr_scheduler = accelerator.prepare(module, optimizer, lr_scheduler)
    if use_gan:
        disc_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=args.disc_learning_rate, **adam)
        discriminator, disc_optimizer = accelerator.prepare(discriminator, disc_optimizer)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    raw_vae = accelerator.unwrap_model(module).vae
    raw_discriminator = accelerator.unwrap_model(discriminator) if use_gan else None
    last_layer = raw_vae.decoder.conv_out.weight

    # 4. Resume
    global_step, data_position = 0, 0
    guard = NonFiniteGuard(args.max_nonfinite_steps)
    checkpoint = find_resume_checkpoint(output_dir, args.resume_from_checkpoint)
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint)
        global_step, positions = state["global_step"], state["data_positions"]
        if len(positions) == accelerator.num_processes:
            data_position = positions[accelerator.process_index]  # each process resumes its own shard
        else:
            data_position = sum(positions) // accelerator.num_processes
            logger.warning(
                f"the checkpoint was written by {len(positions)} processes, this run has "
                f"{accelerator.num_processes}: the data stream restarts at an approximate position."
            )
        guard.load_state_dict(state["nonfinite"])
        logger.info(f"resumed from {checkpoint} at step {global_step}, data position {data_position}")
    dataloader = make_image_dataloader(
        dataset,
        args.train_batch_size,
        train_transform,
        image_column=args.image_column,
        start_position=data_position,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
        seed=args.seed,
        shuffle_buffer_size=args.shuffle_buffer_size,
        num_workers=args.dataloader_num_workers,
    )
    skip_counter = dataloader.dataset.skip_counter
    data_iterator = iter(dataloader)

    # 5. Loop: one optimizer step = `gradient_accumulation_steps` micro-batches
    progress = tqdm(
        total=args.max_train_steps, initial=global_step, desc="train vae", disable=not accelerator.is_main_process
    )
    accumulation = args.gradient_accumulation_steps
    while global_step < args.max_train_steps:
        gan_active = use_gan and global_step >= args.disc_start
        logs, backward_done = {}, False
        for micro_step in range(accumulation):
            batch = next(data_iterator)
            data_position = int(batch["data_position"][-1])
            images = batch["pixel_values"].to(accelerator.device)
            generator = step_generator(args.seed, global_step, micro_step, accelerator.process_index, images.device)
            with contextlib.ExitStack() as no_sync:
                if micro_step < accumulation - 1:  # gradients are synchronised on the last micro-batch only
                    no_sync.enter_context(accelerator.no_sync(module))
                    if use_gan:
                        no_sync.enter_context(accelerator.no_sync(discriminator))
                # 5a. Autoencoder: encode / decode through the wrapped module (DDP, autocast)
                out = module(images, generator=generator)
                loss, terms = autoencoder_loss(
                    out, args, perceptual, raw_discriminator if gan_active else None, last_layer, accelerator.autocast
                )
                if guard.check(accelerator.reduce(loss.detach(), "mean")):
                    continue
                accelerator.backward(loss / accumulation)

                # 5b. Discriminator on detached real and reconstructed images (one forward for DDP)
                if gan_active:
                    terms["discriminator"] = discriminator_loss(discriminator, out)
                    accelerator.backward(terms["discriminator"] / accumulation)
                backward_done = True
            for name, value in terms.items():
                logs[name] = logs.get(name, 0.0) + float(value.detach()) / accumulation
            logs["spectral_kl_delta0"] = float(out["spectral_kl_delta0"])
            logs["dsm_level"] = int(out["dsm_level"])

        # 5c. Optimizer steps
        if backward_done:
            if args.max_grad_norm > 0:
                logs["grad_norm"] = float(accelerator.clip_grad_norm_(module.parameters(), args.max_grad_norm))
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
        logs.update(lr=lr_scheduler.get_last_lr()[0], skipped_images=skip_counter.count, nonfinite_steps=guard.total)
        progress.set_postfix(loss=logs.get("reconstruction", float("nan")), esm=logs.get("esm", float("nan")))
        accelerator.log(logs, step=global_step)

        # 5d. Checkpoint and validation
        if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
            positions = accelerator.gather(torch.tensor([data_position], device=accelerator.device)).tolist()
            extra = {"data_positions": positions, "nonfinite": guard.state_dict()}
            save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit, extra)
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
            scaling_factor=stats["scaling_factor"], shift_factor=stats["shift_factor"], latent_std=stats["std"],
            latent_mean=stats["mean"], latent_stats_samples=stats["num_samples"], global_step=global_step,
            skipped_images=skip_counter.count, nonfinite_steps=guard.total,
        )  # fmt: skip
        write_outputs(args, raw_vae, metrics, output_dir)
        logger.info(f"final metrics: {json.dumps(metrics)}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output_dir


def write_outputs(args, vae: SpectrumAutoencoderKL, metrics: dict, output_dir: Path) -> None:
    """save_pretrained, the stock export, metrics.json, the model card, and the (dry-run) push."""
    vae.save_pretrained(output_dir)
    stock_dir = output_dir / "stock"
    try:
        from diffusers_spectrum.pipelines.export import export_vae

        export_vae(stock_dir, vae, training_info={"metrics": metrics, "recipe": args.recipe})
    except ImportError:
        vae.to_autoencoder_kl(fold_shift=True).save_pretrained(stock_dir)
    with open(output_dir / "metrics.json", "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    repo_id = args.hub_model_id or output_dir.resolve().name
    card = vae_model_card(
        repo_id,
        config=dict(vae.config),
        training_args=public_args(args),
        metrics=metrics,
        base_model=args.pretrained_vae if args.pretrained_vae and not os.path.isdir(args.pretrained_vae) else None,
        datasets=[args.dataset_name] if args.dataset_name else None,
        dataset_description=None if args.dataset_name or args.train_data_dir else "the embedded photo crops",
        recipe=args.recipe,
        eval_description=(
            f"the first {args.num_validation_images} images of the training data (centre crops, {args.resolution} px; "
            f"posterior mean); latent statistics over {metrics['latent_stats_samples']} images"
        ),
    )
    card.save(output_dir / "README.md")
    if args.push_to_hub:
        files = push_folder_to_hub(
            output_dir, repo_id, "model", dry_run=args.hub_dry_run, private=args.hub_private_repo, token=args.hub_token
        )
        with open(output_dir / "hub_upload.json", "w", encoding="utf-8") as f:
            json.dump({"repo_id": repo_id, "dry_run": args.hub_dry_run, "files": files}, f, indent=2)


if __name__ == "__main__":
    main(parse_args())
