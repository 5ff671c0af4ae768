"""The DiT training loop: `train_dit(args)` trains a `REPADiTTransformer2DModel` (DiT with an optional REPA projector)
on cached latents, on images through a VAE, or in DCT space, with REPA / DoG-REPA and the spectral regularisers, and
exports a stock `DiTPipeline`. `examples/train_dit_repa.py` and `diffusers-spectrum train-dit` only parse flags
(`parse_args`) and call it.

The output folder holds `pipeline/` (a stock `DiTPipeline` that `DiffusionPipeline.from_pretrained` loads, with a
model card), `transformer/` (our class with the REPA projector, to fine-tune), `metrics.json`,
`training_args.json`, `validation/` sample grids, checkpoints (`checkpoint-<step>`) and logs.

Each loss helper returns *unweighted* terms; the loop applies the flag weights (`--repa_coeff`, `--fourier_weight`,
`--wavelet_weight`) and logs every term separately.

Importing this module (for its flags: `build_parser`, `parse_args`) loads neither diffusers nor accelerate nor
datasets; the functions that need them import them.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..diffusion.loss import diffusion_loss_terms, total_loss
from ..diffusion.objectives import DiffusionObjective, mean_squared_error
from ..losses import repa_loss
from ..losses.dct import dct_weighted_mse
from ..spectral.filters import apply_target_filter
from ..utils.images import image_grid
from ..utils.records import public_args, write_json
from .args import (
    add_data_args,
    add_optimization_args,
    add_output_args,
    add_regularizer_args,
    check_nonnegative,
    check_positive,
    finish_common_args,
    spectral_regularizers,
)
from .checkpointing import Checkpointer
from .loop import create_ema, ema_weights, log_images, step_generator


if TYPE_CHECKING:
    from ..models.dit_repa import REPADiTTransformer2DModel


__all__ = [
    "DIT_PRESETS",
    "build_parser",
    "build_transformer",
    "default_repa_depth",  # noqa: F822 - re-exported by the module __getattr__ below
    "parse_args",
    "repa_term",
    "standardize_latents",
    "train_dit",
]

logger = logging.getLogger(__name__)

# Flags a resume must keep (`loop.learning_settings`): they change what the transformer learns.
RESUME_SETTINGS = (
    "objective", "space", "resolution", "dit_config", "patch_size", "snr_scale", "dct_block_size", "dct_num_dropped",
    "unconditional", "num_classes", "repa_targets_resolved", "repa_target_filter", "repa_projector", "repa_depth",
    "fourier_weight", "wavelet_weight", "wavelet_levels", "wavelet",
    "spectral_loss_type", "fourier_log_amplitude",
)  # fmt: skip

# What standardises raw VAE latents for diffusion (the family convention; see `models.latent_convention`).
LATENT_CONFIG_KEYS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std")

# The authors' REPA loss weight per projector (`models.dit_repa.REPA_DEFAULTS`, which needs diffusers to import; a
# test keeps the two equal): 0.5 for REPA's MLP, 1.0 for iREPA's conv.
REPA_LOSS_WEIGHTS = {"mlp": 0.5, "conv": 1.0}

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
    from ..models.dit_repa import REPADiTTransformer2DModel

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


def standardize_latents(
    latents: torch.Tensor,
    latent_config: dict,
    latents_std: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Diffusion input from raw VAE latents: optionally sample `mean + std * eps` (cached posterior), then the VAE
    family's standardisation (`models.latents_from_vae`: `z * scale`, `(z - shift) * scale` or per channel).

    Args:
        latents: `(B, C, h, w)` posterior mean (or sample), unscaled.
        latent_config: `scaling_factor`, `shift_factor` and (per-channel families) `latents_mean` / `latents_std`,
            from the VAE config or the cache's `cache_info.json`.
        latents_std: `(B, C, h, w)` posterior std: when given a fresh posterior sample is drawn with `generator`.
    """
    from ..models.latent_conventions import latents_from_vae

    if latents_std is not None:
        noise = torch.randn(latents.shape, generator=generator, device=generator.device if generator else "cpu")
        latents = latents + latents_std * noise.to(latents.device, latents.dtype)
    return latents_from_vae(latents, latent_config)


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


def export_scheduler(args):
    """The sampler that matches the training objective (and DCT SNR scaling), as saved in the pipeline."""
    from ..pipelines.schedulers import default_scheduler, flow_matching_scheduler, snr_scaled_scheduler

    if args.objective == "flow":
        scheduler = flow_matching_scheduler()
        return (
            scheduler
            if args.snr_scale == 1.0
            else type(scheduler).from_config(scheduler.config, flow_shift=1.0 / math.sqrt(args.snr_scale))
        )
    scheduler = default_scheduler(args.objective)
    if args.snr_scale != 1.0:
        scheduler = snr_scaled_scheduler(scheduler, args.snr_scale)
    return scheduler


def training_objective(args) -> DiffusionObjective:
    """Forward process and target; DCT-space SNR scaling c multiplies the schedule's SNR (DCTdiff)."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    from ..pipelines.schedulers import snr_scaled_scheduler

    if args.objective == "flow":
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0 / math.sqrt(args.snr_scale))
        return DiffusionObjective("flow", scheduler if args.snr_scale != 1.0 else None)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=args.objective)
    if args.snr_scale != 1.0:
        scheduler = snr_scaled_scheduler(scheduler, args.snr_scale)
    return DiffusionObjective(args.objective, scheduler)


class DataSource:
    """Turns loader batches into diffusion inputs `x0` (standardised latents), labels and REPA targets, for the three
    data modes (cached latents, images through a VAE, images in DCT space)."""

    def __init__(self, args, accelerator):
        from ..data.latents import read_cache_info
        from ..data.sources import embedded_class_names

        self.args, self.device = args, accelerator.device
        self.cache_info, self.vae, self.encoder = None, None, None
        self.id2label = None
        if args.latent_dataset is not None:
            self.cache_info = read_cache_info(args.latent_dataset)
            settings = self.cache_info["settings"]
            self.latent_config = {k: settings.get(k) for k in LATENT_CONFIG_KEYS}
            self.latent_shape = tuple(self.cache_info["latent_shape"])
            if settings.get("id2label"):
                self.id2label = {int(k): v for k, v in settings["id2label"].items()}
            self.has_cached_targets = self.cache_info.get("repa_feature_shape") is not None
            self.conditional = settings["label_column"] is not None
        else:
            self.vae = self.load_decoder().to(self.device).eval().requires_grad_(False)
            config = self.vae.config
            self.latent_config = {k: getattr(config, k, None) for k in LATENT_CONFIG_KEYS}
            with torch.no_grad():
                probe = torch.zeros(1, 3, args.resolution, args.resolution, device=self.device)
                self.latent_shape = tuple(self.vae.encode(probe).latent_dist.mode().shape[1:])
            self.has_cached_targets = False
            self.conditional = args.label_column is not None
            if args.dataset_name is None and args.train_data_dir is None and args.label_column == "label":
                self.id2label = dict(enumerate(embedded_class_names()))
        if args.unconditional:
            self.conditional, self.id2label = False, None
        if self.cache_info is not None:
            self.check_cache()

    def check_cache(self) -> None:
        """Before training on cached latents: their recorded latent convention must be the decoding VAE's
        (`check_cache_against_vae`, an error), and a sample of them, standardised, should have a std near 1 (a loud
        warning with the fix otherwise)."""
        from ..data.latents import load_latent_dataset
        from .latent_cache import check_cache_against_vae, latent_statistics, warn_if_badly_scaled

        args, settings = self.args, self.cache_info["settings"]
        vae_name = args.pretrained_vae or settings.get("pretrained_vae")
        check_cache_against_vae(settings, self.decoder().config, args.latent_dataset, vae_name)
        sample = load_latent_dataset(args.latent_dataset, streaming=True)
        self.latent_statistics = latent_statistics(
            sample, self.latent_config, seed=args.seed, source=args.latent_dataset
        )
        warn_if_badly_scaled(self.latent_statistics, settings, args.latent_dataset)

    def load_decoder(self):
        """The VAE (or DCT transform) that decodes samples: `--pretrained_vae`, else the one the cache records."""
        from ..models.dct_transform import DCTTransform
        from ..models.loading import load_autoencoder

        args = self.args
        if args.space == "dct":
            return DCTTransform(block_size=args.dct_block_size, num_dropped=args.dct_num_dropped)
        path = args.pretrained_vae or (self.cache_info or {}).get("settings", {}).get("pretrained_vae")
        if path is None:
            raise ValueError("pass --pretrained_vae (the cache does not record its VAE).")
        subfolder = args.vae_subfolder or (self.cache_info or {}).get("settings", {}).get("vae_subfolder")
        return load_autoencoder(path, subfolder)

    def decoder(self):
        if self.vae is None:
            self.vae = self.load_decoder().to(self.device).eval().requires_grad_(False)
        return self.vae

    def dataloader(self, accelerator, state: dict | None):
        """The training loader (cached latents or images), resumed from `state`."""
        from ..data.images import ImageReader, ImageTransform
        from ..data.latents import latent_batch, load_latent_dataset, unreadable_latents_error
        from ..data.sources import load_image_dataset
        from .loop import train_dataloader

        args = self.args
        if self.cache_info is not None:
            local = Path(args.latent_dataset).exists()
            dataset = load_latent_dataset(args.latent_dataset, streaming=not local or args.streaming)
            describe = functools.partial(unreadable_latents_error, args.latent_dataset if local else None)
            return train_dataloader(
                dataset, None, args, accelerator, state, collate_fn=latent_batch, describe_read_error=describe
            )
        dataset = load_image_dataset(
            args.dataset_name, args.train_data_dir, args.dataset_split, args.image_column,
            streaming=(args.streaming or args.dataset_name is not None) and not args.no_streaming,
            label_column=args.label_column,
        )  # fmt: skip
        transform = ImageTransform(
            args.resolution, args.center_crop, args.random_flip, seed=args.seed,
            reduced_decode=args.reduced_jpeg_decode,
        )  # fmt: skip
        reader = ImageReader(transform, args.image_column, args.label_column)
        return train_dataloader(dataset, reader, args, accelerator, state)

    @torch.no_grad()
    def prepare(self, batch: dict, generator: torch.Generator, grid_hw, need_targets: bool) -> dict:
        """`{"x0": (B, C, h, w), "labels": (B,), "targets": (B, N, D) or None}` on the device."""
        if self.cache_info is not None:
            std = batch.get("latents_std")
            x0 = standardize_latents(
                batch["latents"].to(self.device), self.latent_config, None if std is None else std.to(self.device),
                generator,
            )  # fmt: skip
            targets = batch["repa_features"].to(self.device) if need_targets and self.has_cached_targets else None
            images = None
        else:
            images = batch["pixel_values"].to(self.device)
            posterior = self.vae.encode(images).latent_dist
            x0 = standardize_latents(posterior.sample(generator=generator), self.latent_config)
            targets = None
        if need_targets and targets is None:
            if images is None:
                raise ValueError("REPA targets are neither cached nor computable (images are not loaded).")
            targets = self.encoder(images, grid_hw)
        labels = batch["labels"] if self.conditional else torch.zeros_like(batch["labels"])
        if self.conditional and labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(  # CPU tensor from the loader: checked where data enters, no device sync
                f"a batch holds class label(s) outside [0, {self.num_classes - 1}] ({labels.tolist()[:8]}); pass "
                f"--num_classes to cover them, or remap the dataset's labels to 0..K-1."
            )
        return {"x0": x0.float(), "labels": labels.to(self.device), "targets": targets}


def validation_labels(num_images: int, num_classes: int) -> list[int]:
    return [i % max(num_classes, 1) for i in range(num_images)]


# ----------------------------------------------------------------------------------------------------------------
# Arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a diffusion transformer (REPADiTTransformer2DModel) on cached latents, on images through "
        "a VAE, or in DCT space, with optional REPA / DoG-REPA and spectral regularisers; exports a stock "
        "DiTPipeline. Defaults follow REPA (flow matching, AdamW lr 1e-4, grad clip 1, EMA 0.9999, label dropout "
        "0.1, REPA coefficient 0.5)."
    )
    g = add_data_args(parser, images=True)
    g.add_argument(
        "--latent_dataset",
        type=str,
        default=None,
        help="Cached latents (folder or Hub dataset id from cache_latents.py). Default: encode images.",
    )
    g.add_argument(
        "--label_column",
        type=str,
        default=None,
        help="Column of integer class labels (image data). Default: 'label' for the embedded photos.",
    )
    g.add_argument("--unconditional", action="store_true", help="Ignore labels: every sample has class 0.")
    g.add_argument(
        "--streaming",
        action="store_true",
        help="Stream local data too (Hub data is always streamed; local folders are memory-mapped).",
    )
    g = parser.add_argument_group("space and model")
    g.add_argument(
        "--space",
        type=str,
        default="latent",
        choices=("latent", "dct"),
        help="Diffuse VAE latents, or the blockwise DCT of the pixels (DCTdiff; needs image data).",
    )
    g.add_argument(
        "--pretrained_vae",
        type=str,
        default=None,
        help="VAE folder or Hub id (image data; for cached latents default: the one the cache records).",
    )
    g.add_argument("--vae_subfolder", type=str, default=None, help="Subfolder of --pretrained_vae.")
    g.add_argument("--dct_block_size", type=int, default=2, help="DCT block side (DCTdiff: 2 for 32/64 px, 4 above).")
    g.add_argument("--dct_num_dropped", type=int, default=0, help="Highest zigzag DCT coefficients dropped per block.")
    g.add_argument(
        "--dct_eta",
        type=float,
        default=None,
        help="Global DCT scale eta (scaling_factor = 1 / eta). Default: max(|p1.75|, |p98.25|) of the signed Y DC "
        "on the data (DCTdiff). In units of 127.5 levels: the paper's eta / 127.5 (e.g. 242.4 -> 1.901).",
    )
    g.add_argument(
        "--dct_entropy_weights",
        action="store_true",
        help="Weight the DCT-space loss per coefficient by its entropy (DCTdiff).",
    )
    g.add_argument("--snr_scale", type=float, default=1.0, help="Multiply the schedule's SNR by c (DCTdiff: 1-4).")
    g.add_argument("--dit_config", type=str, default="B/2", choices=sorted(DIT_PRESETS), help="DiT size preset.")
    g.add_argument("--patch_size", type=int, default=None, help="Override the preset's patch size.")
    g.add_argument(
        "--pretrained_transformer",
        type=str,
        default=None,
        help="Fine-tune this transformer folder / Hub id (ours or a stock DiTTransformer2DModel).",
    )
    g.add_argument("--no_dit_init", action="store_true", help="PyTorch default init instead of the DiT paper's.")
    g.add_argument("--gradient_checkpointing", action="store_true", help="Trade compute for memory.")
    g = parser.add_argument_group("objective")
    g.add_argument(
        "--objective",
        type=str,
        default="flow",
        choices=("epsilon", "v_prediction", "flow"),
        help="Diffusion parameterisation: epsilon / v (DDPM linear schedule) or flow matching (REPA).",
    )
    g.add_argument("--label_dropout", type=float, default=0.1, help="Label dropout for classifier-free guidance.")
    g = parser.add_argument_group("REPA")
    g.add_argument(
        "--repa_targets",
        type=str,
        default="auto",
        choices=("auto", "none", "cached", "online"),
        help="auto: cached targets when the cache has them, online when --repa_encoder is set, else none.",
    )
    g.add_argument(
        "--repa_encoder",
        type=str,
        default=None,
        help="transformers vision backbone for online targets (e.g. facebook/dinov2-base).",
    )
    g.add_argument(
        "--repa_coeff",
        type=float,
        default=None,
        help="Weight of the REPA loss. Default: the authors' per projector, 0.5 for mlp (REPA), 1.0 for conv (iREPA).",
    )
    g.add_argument(
        "--repa_depth",
        type=int,
        default=None,
        help="1-based block whose tokens are aligned. Default: REPA's per size, 4 for B/2 (12 blocks), 8 for L/2 and "
        "XL/2; one third of the depth otherwise (models.dit_repa.default_repa_depth).",
    )
    g.add_argument("--repa_projector", type=str, default="mlp", choices=("mlp", "conv"), help="Projector type.")
    g.add_argument("--repa_projector_dim", type=int, default=2048, help="Hidden width of the MLP projector.")
    g.add_argument(
        "--repa_target_filter",
        type=str,
        default="none",
        choices=("none", "spatial_norm", "dog"),
        help="Filter of the target token map: none (REPA), spatial_norm (iREPA) or dog (DoG-REPA).",
    )
    g.add_argument("--dog_sigma1", type=float, default=0.6, help="DoG inner Gaussian sigma, in tokens.")
    g.add_argument("--dog_sigma2", type=float, default=2.0, help="DoG outer Gaussian sigma, in tokens.")
    g.add_argument("--spatial_norm_alpha", type=float, default=0.6, help="Mean-removal fraction of spatial_norm.")
    add_regularizer_args(parser)
    add_optimization_args(parser)
    g = add_output_args(parser)
    g.add_argument("--num_validation_images", type=int, default=8, help="Images in the validation grid.")
    g.add_argument("--validation_inference_steps", type=int, default=50, help="Sampler steps for validation.")
    g.add_argument("--validation_guidance_scale", type=float, default=1.8, help="CFG scale (REPA: 1.8).")
    g.add_argument(
        "--num_classes",
        type=int,
        default=None,
        help="Number of classes (labels 0..K-1, K <= 1000). Default: from id2label or 1.",
    )
    parser.set_defaults(
        output_dir="spectrum-dit", train_batch_size=32, max_train_steps=400000, learning_rate=1e-4,
        checkpointing_steps=5000, validation_steps=5000,
    )  # fmt: skip
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return resolve_args(build_parser().parse_args(argv))


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Validate once; fill data-dependent defaults."""
    if sum(x is not None for x in (args.latent_dataset, args.dataset_name, args.train_data_dir)) > 1:
        raise ValueError("Pass at most one of --latent_dataset, --dataset_name and --train_data_dir.")
    if args.space == "dct" and args.latent_dataset is not None:
        raise ValueError("--space dct trains on images; it cannot use --latent_dataset.")
    if args.space == "latent" and args.latent_dataset is None and args.pretrained_vae is None:
        raise ValueError("Training on images in latent space needs --pretrained_vae (or pass --latent_dataset).")
    if args.latent_dataset is None and args.dataset_name is None and args.train_data_dir is None:
        args.label_column = args.label_column or "label"  # the embedded photos are labelled by source photograph
    if args.objective == "flow" and args.space == "dct" and args.snr_scale != 1.0:
        logger.info("flow matching in DCT space: SNR scale applied as a time shift of 1/sqrt(c)")
    if args.repa_coeff is None:
        args.repa_coeff = REPA_LOSS_WEIGHTS[args.repa_projector]
    finish_common_args(args, "train_dit_repa")
    check_positive(args, ("num_validation_images", "validation_inference_steps"))
    check_nonnegative(args, ("repa_coeff", "label_dropout"))
    if args.label_dropout > 1:
        raise ValueError(f"--label_dropout must be in [0, 1], got {args.label_dropout}.")
    if not args.snr_scale > 0:
        raise ValueError(f"--snr_scale must be positive, got {args.snr_scale}.")
    if args.num_classes is not None and not 1 <= args.num_classes <= 1000:
        raise ValueError(f"--num_classes must be in [1, 1000] (DiTPipeline's table), got {args.num_classes}.")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Training


def train_dit(args: argparse.Namespace) -> Path:
    """Train as `args` (from `parse_args`) says; returns the exported pipeline folder."""
    from ..data.images import ImageTransform, image_batches
    from ..data.sources import load_image_dataset
    from ..models.dct_statistics import estimate_dct_statistics, estimate_entropy_weights
    from ..models.dit_repa import REPADiTTransformer2DModel, default_repa_depth, drop_labels
    from ..models.encoders import RepresentationEncoder
    from .loop import (
        AccumulationWindow,
        compile_model,
        learning_settings,
        make_accelerator,
        make_optimizer,
        optimizer_step,
        resume_training,
        save_checkpoint_if_due,
    )

    # 1. Accelerator, logging, seeds
    start_time = time.time()
    output_dir = Path(args.output_dir)
    accelerator = make_accelerator(args, "train-dit")

    # 2. Data source (cached latents, VAE on the fly, or DCT space)
    data = DataSource(args, accelerator)
    if args.space == "dct":
        dct = data.vae
        probe = load_image_dataset(args.dataset_name, args.train_data_dir, args.dataset_split, args.image_column)
        eta_batches = list(
            image_batches(probe, 32, ImageTransform(args.resolution), args.image_column, max_samples=256)
        )
        if args.dct_eta is None:  # the authors' eta and entropy weights, one streaming pass
            args.dct_eta, weights = estimate_dct_statistics(dct, eta_batches)
        else:
            dct.register_to_config(scaling_factor=1.0 / args.dct_eta)
            weights = estimate_entropy_weights(dct, eta_batches) if args.dct_entropy_weights else None
        data.latent_config = {"scaling_factor": dct.config.scaling_factor, "shift_factor": None}
        entropy_weights = weights if args.dct_entropy_weights else None
        logger.info(f"DCT space: eta {args.dct_eta:.4f}, latent shape {data.latent_shape}")
    else:
        entropy_weights = None
    channels, side = data.latent_shape[0], data.latent_shape[1]
    num_classes = args.num_classes or (len(data.id2label) if data.id2label else 1)
    data.num_classes = args.num_classes or (len(data.id2label) if data.id2label else 1000)  # labels allowed

    # 3. REPA targets
    mode = args.repa_targets
    if mode == "auto":
        mode = "cached" if data.has_cached_targets else "online" if args.repa_encoder else "none"
    if mode == "cached" and not data.has_cached_targets:
        raise ValueError("--repa_targets cached: the latent dataset stores no repa_features; pass --repa_encoder.")
    if mode == "online":
        if args.repa_encoder is None:
            raise ValueError("--repa_targets online needs --repa_encoder.")
        if data.cache_info is not None:
            raise ValueError("online REPA targets need images; cache them with cache_latents.py --repa_encoder.")
        data.encoder = RepresentationEncoder.from_pretrained(args.repa_encoder, device=accelerator.device)
    use_repa = mode != "none" and args.repa_coeff > 0
    args.repa_targets_resolved = mode if use_repa else "none"
    target_dim = (
        data.cache_info["repa_feature_shape"][1]
        if mode == "cached"
        else (data.encoder.feature_dim if data.encoder is not None else 768)
    )

    # 4. Model, EMA, optimizer
    if args.pretrained_transformer is not None:
        model = REPADiTTransformer2DModel.from_pretrained(args.pretrained_transformer)
    else:
        preset_layers = DIT_PRESETS[args.dit_config]["num_layers"]
        model = build_transformer(
            args.dit_config, channels, side,
            repa_depth=(args.repa_depth or default_repa_depth(preset_layers)) if use_repa else None,
            repa_target_dim=target_dim, repa_projector=args.repa_projector,
            repa_projector_dim=args.repa_projector_dim, patch_size=args.patch_size, dit_init=not args.no_dit_init,
        )  # fmt: skip
    if model.config.sample_size != side or model.config.in_channels != channels:
        raise ValueError(
            f"the transformer expects latents ({model.config.in_channels}, {model.config.sample_size}) but the data "
            f"gives {data.latent_shape}."
        )
    grid_hw = (side // model.config.patch_size, side // model.config.patch_size)
    if mode == "cached":
        cached_grid = data.cache_info["settings"]["repa_grid_size"]
        if tuple(cached_grid) != grid_hw:
            raise ValueError(
                f"the cached REPA targets are on a {tuple(cached_grid)} grid but the DiT's token grid is {grid_hw}; "
                "re-cache with --repa_grid_size matching latent side / patch size."
            )
    if use_repa and data.encoder is not None:
        data.encoder.check_transformer(model)
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    compile_model(model, args.use_torch_compile)
    ema = create_ema(model, args.ema_decay) if args.use_ema else None
    objective = training_objective(args)
    optimizer, lr_scheduler = make_optimizer(model.parameters(), args, accelerator)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    raw_model = accelerator.unwrap_model(model)
    checkpointer = Checkpointer(
        accelerator, output_dir, {"transformer": model}, {"transformer": ema} if ema is not None else None,
        args.checkpoints_total_limit, settings=learning_settings(args, RESUME_SETTINGS),
    )  # fmt: skip
    regularizers = spectral_regularizers(args)
    distance = mean_squared_error  # per sample, as DCTdiff's entropy-weighted MSE in DCT space
    if entropy_weights is not None:
        distance = functools.partial(dct_weighted_mse, channel_weights=entropy_weights)
    logger.info(
        f"DiT {args.dit_config}: {sum(p.numel() for p in raw_model.parameters()) / 1e6:.2f}M params, latents "
        f"{data.latent_shape}, grid {grid_hw}, objective {args.objective}, REPA {args.repa_targets_resolved} "
        f"(filter {args.repa_target_filter}), {num_classes} class(es)"
    )

    # 5. Resume
    global_step, data_state, guard = resume_training(
        checkpointer, args.resume_from_checkpoint, args.max_nonfinite_steps
    )
    dataloader = data.dataloader(accelerator, data_state)
    data_iterator = iter(dataloader)
    val_labels = validation_labels(args.num_validation_images, num_classes if data.conditional else 1)

    # 6. Loop: one optimizer step = `gradient_accumulation_steps` micro-batches
    progress = tqdm(total=args.max_train_steps, initial=global_step, desc="train dit",
                    disable=not accelerator.is_main_process)  # fmt: skip
    accumulation = args.gradient_accumulation_steps
    window = AccumulationWindow(accelerator, [model], accumulation)
    logs = {}
    while global_step < args.max_train_steps:
        logs = {}
        for micro_step in range(accumulation):
            batch = next(data_iterator)
            generator = step_generator(
                args.seed, global_step, micro_step, accelerator.process_index, accelerator.device
            )
            inputs = data.prepare(batch, generator, grid_hw, need_targets=use_repa)
            x0 = inputs["x0"]
            labels = drop_labels(inputs["labels"], args.label_dropout if data.conditional else 0.0, generator)
            with window.micro_step(micro_step):
                # 6a. Diffusion loss (entropy-weighted in DCT space) and the spectral regularisers, then REPA
                terms, out = diffusion_loss_terms(
                    model, objective, x0, generator, regularizers=regularizers, distance=distance,
                    model_kwargs={"class_labels": labels, "return_repa_tokens": use_repa},
                    autocast=accelerator.autocast,
                )  # fmt: skip
                if use_repa:
                    terms["repa"], terms["repa_cosine"] = repa_term(
                        out.repa_tokens, inputs["targets"], grid_hw, args.repa_target_filter, args.dog_sigma1,
                        args.dog_sigma2, args.spatial_norm_alpha,
                    )  # fmt: skip
                terms["loss"] = total_loss(terms, {"repa": args.repa_coeff, **regularizers.weights})
                window.backward(terms["loss"])
            for name, value in terms.items():
                logs[name] = logs.get(name, 0.0) + value.detach() / accumulation

        # 6b. Optimizer step (skipped together on every process when a loss of the window was not finite)
        logs.update(optimizer_step(window, guard, model, optimizer, lr_scheduler, ema, args.max_grad_norm))
        global_step += 1
        progress.update(1)
        logs = {k: float(v) for k, v in logs.items()}  # one transfer per optimizer step, for the trackers
        logs.update(lr=lr_scheduler.get_last_lr()[0], nonfinite_steps=guard.total)
        if data.cache_info is None:  # image data: unreadable images skipped (over the workers)
            logs["skipped_images"] = dataloader.counts().get("skipped", 0)
        progress.set_postfix({k: f"{logs[k]:.4f}" for k in ("loss", "repa_cosine") if k in logs})
        accelerator.log(logs, step=global_step)

        # 6c. Checkpoint and validation samples
        save_checkpoint_if_due(checkpointer, args, global_step, dataloader, guard)
        if accelerator.is_main_process and global_step % args.validation_steps == 0:
            validate(args, accelerator, raw_model, ema, data, val_labels, global_step, output_dir)
    progress.close()

    # 7. Final model: EMA weights, transformer checkpoint, stock pipeline export, card, push
    accelerator.wait_for_everyone()
    result = None
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(raw_model.parameters())
        raw_model.eval()
        raw_model.save_pretrained(output_dir / "transformer")
        metrics = {k: v for k, v in logs.items() if k not in ("lr",)}
        metrics.update(global_step=global_step, train_seconds=round(time.time() - start_time, 1))
        result = write_outputs(args, raw_model, data, metrics, num_classes, output_dir)
        logger.info(f"final metrics: {metrics}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


@torch.no_grad()
def validate(args, accelerator, raw_model, ema, data, labels, step, output_dir) -> Path:
    """Sample a validation grid with the (EMA) weights; saved as `validation/step-<step>.png` and logged."""
    from PIL import Image

    from ..pipelines.sampling import sample_images

    raw_model.eval()
    with ema_weights(ema, raw_model):
        images = sample_images(
            raw_model, data.decoder(), export_scheduler(args), labels, args.validation_inference_steps,
            args.validation_guidance_scale if data.conditional else 1.0, seed=0,
        )  # fmt: skip
    raw_model.train()
    path = output_dir / "validation" / f"step-{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images)).save(path)
    log_images(accelerator, "validation/samples", images, step)
    return path


def write_outputs(args, model, data, metrics: dict, num_classes: int, output_dir: Path) -> Path:
    """Export the pipeline folder (stock classes; DCT space: `DCTDiTPipeline`), metrics.json, card, push."""
    from ..pipelines.export import export_pipeline
    from ..pipelines.model_cards import pipeline_model_card
    from .loop import push_output

    pipeline_dir = output_dir / "pipeline"
    scheduler = export_scheduler(args)
    id2label = data.id2label if data.conditional else None
    if id2label is None and data.conditional:
        id2label = {i: f"class_{i}" for i in range(num_classes)}
    repo_id = args.hub_model_id or output_dir.resolve().name
    source = args.latent_dataset or args.dataset_name or args.train_data_dir or "the embedded photo crops"
    components = {
        "vae": f"{type(data.decoder()).__name__} (latents {tuple(data.latent_shape)}, "
        f"scaling {data.latent_config['scaling_factor']:.4g})",
        "transformer": f"DiTTransformer2DModel {args.dit_config}, REPA {args.repa_targets_resolved} "
        f"({args.repa_target_filter} target filter)",
        "scheduler": f"{type(scheduler).__name__} ({args.objective})",
    }
    card = pipeline_model_card(
        repo_id, training_args=public_args(args), metrics=metrics, components=components,
        datasets=[args.dataset_name] if args.dataset_name else None, dataset_description=str(source),
        id2label=id2label, repa=args.repa_targets_resolved != "none",
    )  # fmt: skip
    training_info = {
        "objective": args.objective,
        "space": args.space,
        "repa": args.repa_targets_resolved,
        "repa_target_filter": args.repa_target_filter,
        "data": str(source),
        "metrics": metrics,
    }
    # A DCT-space run exports its DCTTransform in the `vae` slot (export_pipeline passes it through).
    export_pipeline(
        pipeline_dir, vae=data.decoder().to("cpu"), transformer=model.to("cpu"), scheduler=scheduler,
        id2label=id2label, training_info=training_info, model_card=str(card),
    )  # fmt: skip
    write_json(output_dir / "metrics.json", metrics)
    push_output(args, pipeline_dir)
    return pipeline_dir


def __getattr__(name: str):
    """`default_repa_depth` is re-exported from `models.dit_repa` on first use (PEP 562): importing this module for
    its flags loads no diffusers."""
    if name == "default_repa_depth":
        from ..models.dit_repa import default_repa_depth

        return default_repa_depth
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
