#!/usr/bin/env python
"""Train a diffusion transformer (`REPADiTTransformer2DModel`) with optional REPA / DoG-REPA alignment.

Data, one of:
- `--latent_dataset DIR_OR_ID`: latents cached by `examples/cache_latents.py` (local folder or Hub dataset id,
  streamed); the VAE is only loaded for validation samples and the export. REPA targets come from the cache when it
  stores them (`repa_features`), else online from `--repa_encoder`.
- images (`--dataset_name`, `--train_data_dir`, default the embedded photos) encoded on the fly with
  `--pretrained_vae`, or with `--space dct` transformed into DCT space (DCTdiff) with no VAE at all.

Single process: `python examples/train_dit_repa.py --latent_dataset out/latents --output_dir out/dit`.
Multi-GPU / multi-node: `accelerate launch examples/train_dit_repa.py ...`. Defaults follow REPA (SiT-B/2-like
settings: flow matching, AdamW lr 1e-4, grad clip 1, EMA 0.9999, label dropout 0.1, REPA coefficient 0.5).

The output folder holds `pipeline/` (a stock `DiTPipeline` that `DiffusionPipeline.from_pretrained` loads, with a
model card), `transformer/` (our class with the REPA projector, to fine-tune), `metrics.json`,
`training_args.json`, `validation/` sample grids, accelerate checkpoints (`checkpoint-<step>`) and logs.
"""

import argparse
import contextlib
import json
import logging
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.optimization import get_scheduler
from diffusers.utils import check_min_version
from PIL import Image
from tqdm.auto import tqdm

from diffusers_spectrum import dct_space
from diffusers_spectrum.training.data import (
    ImageTransform,
    embedded_class_names,
    image_batches,
    load_image_dataset,
    make_image_dataloader,
)
from diffusers_spectrum.training.dit import (
    DIT_PRESETS,
    build_transformer,
    default_repa_depth,
    repa_term,
    sample_images,
    spectral_regularizer_terms,
    standardize_latents,
    step_generator,
)
from diffusers_spectrum.models.encoders import RepresentationEncoder
from diffusers_spectrum.pipelines.export import default_scheduler, export_pipeline, flow_matching_scheduler
from diffusers_spectrum.training.latent_cache import load_latent_dataset, load_vae, make_latent_dataloader, read_cache_info
from diffusers_spectrum.pipelines.model_cards import pipeline_model_card, push_folder_to_hub
from diffusers_spectrum.models import REPADiTTransformer2DModel, drop_labels
from diffusers_spectrum.training.objectives import DiffusionObjective
from diffusers_spectrum.training.utils import (
    NonFiniteGuard,
    create_ema,
    ema_weights,
    find_resume_checkpoint,
    image_grid,
    load_checkpoint,
    log_images,
    parse_float_list,
    public_args,
    save_args_json,
    save_checkpoint,
)


check_min_version("0.32.0")
logger = get_logger(__name__, log_level="INFO")


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def export_scheduler(args):
    """The sampler that matches the training objective (and DCT SNR scaling), as saved in the pipeline."""
    if args.objective == "flow":
        scheduler = flow_matching_scheduler()
        return (
            scheduler
            if args.snr_scale == 1.0
            else type(scheduler).from_config(scheduler.config, flow_shift=1.0 / math.sqrt(args.snr_scale))
        )
    scheduler = default_scheduler(args.objective)
    if args.snr_scale != 1.0:
        scheduler = dct_space.snr_scaled_scheduler(scheduler, args.snr_scale)
    return scheduler


def training_objective(args) -> DiffusionObjective:
    """Forward process and target; DCT-space SNR scaling c multiplies the schedule's SNR (DCTdiff)."""
    if args.objective == "flow":
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0 / math.sqrt(args.snr_scale))
        return DiffusionObjective("flow", scheduler if args.snr_scale != 1.0 else None)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=args.objective)
    if args.snr_scale != 1.0:
        scheduler = dct_space.snr_scaled_scheduler(scheduler, args.snr_scale)
    return DiffusionObjective(args.objective, scheduler)


class DataSource:
    """Turns loader batches into diffusion inputs `x0` (standardised latents), labels and REPA targets, for the three
    data modes (cached latents, images through a VAE, images in DCT space)."""

    def __init__(self, args, accelerator):
        self.args, self.device = args, accelerator.device
        self.cache_info, self.vae, self.encoder = None, None, None
        self.id2label = None
        if args.latent_dataset is not None:
            self.cache_info = read_cache_info(args.latent_dataset)
            settings = self.cache_info["settings"]
            self.scaling_factor, self.shift_factor = settings["scaling_factor"], settings["shift_factor"]
            self.latent_shape = tuple(self.cache_info["latent_shape"])
            if settings.get("id2label"):
                self.id2label = {int(k): v for k, v in settings["id2label"].items()}
            self.has_cached_targets = self.cache_info.get("repa_feature_shape") is not None
            self.conditional = settings["label_column"] is not None
        else:
            self.vae = self.load_decoder().to(self.device).eval().requires_grad_(False)
            config = self.vae.config
            self.scaling_factor, self.shift_factor = config.scaling_factor, getattr(config, "shift_factor", None)
            with torch.no_grad():
                probe = torch.zeros(1, 3, args.resolution, args.resolution, device=self.device)
                self.latent_shape = tuple(self.vae.encode(probe).latent_dist.mode().shape[1:])
            self.has_cached_targets = False
            self.conditional = args.label_column is not None
            if args.dataset_name is None and args.train_data_dir is None and args.label_column == "label":
                self.id2label = dict(enumerate(embedded_class_names()))
        if args.unconditional:
            self.conditional, self.id2label = False, None

    def load_decoder(self):
        """The VAE (or DCT transform) that decodes samples: `--pretrained_vae`, else the one the cache records."""
        args = self.args
        if args.space == "dct":
            return dct_space.DCTTransform(block_size=args.dct_block_size, num_dropped=args.dct_num_dropped)
        path = args.pretrained_vae or (self.cache_info or {}).get("settings", {}).get("pretrained_vae")
        if path is None:
            raise ValueError("pass --pretrained_vae (the cache does not record its VAE).")
        subfolder = args.vae_subfolder or (self.cache_info or {}).get("settings", {}).get("vae_subfolder")
        return load_vae(path, subfolder)

    def decoder(self):
        if self.vae is None:
            self.vae = self.load_decoder().to(self.device).eval().requires_grad_(False)
        return self.vae

    def dataloader(self, accelerator, start_position: int):
        args = self.args
        common = dict(
            start_position=start_position, num_processes=accelerator.num_processes,
            process_index=accelerator.process_index, seed=args.seed, shuffle_buffer_size=args.shuffle_buffer_size,
        )  # fmt: skip
        if self.cache_info is not None:
            local = Path(args.latent_dataset).exists()
            dataset = load_latent_dataset(args.latent_dataset, streaming=not local or args.streaming)
            return make_latent_dataloader(dataset, args.train_batch_size, **common)
        dataset = load_image_dataset(
            args.dataset_name, args.train_data_dir, args.dataset_split, args.image_column,
            streaming=args.streaming or args.dataset_name is not None, label_column=args.label_column,
        )  # fmt: skip
        transform = ImageTransform(args.resolution, args.center_crop, args.random_flip, seed=args.seed)
        return make_image_dataloader(
            dataset, args.train_batch_size, transform, image_column=args.image_column,
            label_column=args.label_column, **common,
        )  # fmt: skip

    @torch.no_grad()
    def prepare(self, batch: dict, generator: torch.Generator, grid_hw, need_targets: bool) -> dict:
        """`{"x0": (B, C, h, w), "labels": (B,), "targets": (B, N, D) or None}` on the device."""
        if self.cache_info is not None:
            std = batch.get("latents_std")
            x0 = standardize_latents(
                batch["latents"].to(self.device), self.scaling_factor, self.shift_factor,
                None if std is None else std.to(self.device), generator,
            )  # fmt: skip
            targets = batch["repa_features"].to(self.device) if need_targets and self.has_cached_targets else None
            images = None
        else:
            images = batch["pixel_values"].to(self.device)
            posterior = self.vae.encode(images).latent_dist
            x0 = standardize_latents(posterior.sample(generator=generator), self.scaling_factor, self.shift_factor)
            targets = None
        if need_targets and targets is None:
            if images is None:
                raise ValueError("REPA targets are neither cached nor computable (images are not loaded).")
            targets = self.encoder(images, grid_hw)
        labels = batch["labels"].to(self.device) if self.conditional else torch.zeros_like(batch["labels"])
        return {"x0": x0.float(), "labels": labels.to(self.device), "targets": targets}


def validation_labels(num_images: int, num_classes: int) -> list[int]:
    return [i % max(num_classes, 1) for i in range(num_images)]


# ----------------------------------------------------------------------------------------------------------------
# Arguments


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument(
        "--latent_dataset",
        type=str,
        default=None,
        help="Cached latents (folder or Hub dataset id from cache_latents.py). Default: encode images.",
    )
    g.add_argument("--dataset_name", type=str, default=None, help="Hub image dataset id (streamed).")
    g.add_argument("--dataset_split", type=str, default="train", help="Split of the image dataset.")
    g.add_argument("--train_data_dir", type=str, default=None, help="Local image folder or parquet / arrow files.")
    g.add_argument("--image_column", type=str, default="image", help="Column holding the images.")
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
    g.add_argument("--resolution", type=int, default=256, help="Image side for on-the-fly encoding.")
    g.add_argument("--center_crop", action="store_true", help="Centre instead of random crops (image data).")
    g.add_argument("--random_flip", action="store_true", help="Random horizontal flips (image data).")
    g.add_argument("--shuffle_buffer_size", type=int, default=1000, help="Shuffle buffer of streamed datasets.")
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
        help="Global DCT scale eta (scaling_factor = 1 / eta). Default: 99th percentile of |Y DC| on data.",
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
    g.add_argument("--repa_coeff", type=float, default=0.5, help="Weight of the REPA loss (REPA: 0.5).")
    g.add_argument(
        "--repa_depth",
        type=int,
        default=None,
        help="1-based block whose tokens are aligned. Default: 8/28 of the depth (8 for XL/2).",
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
    g = parser.add_argument_group("spectral regularisers (on the predicted x0)")
    g.add_argument("--fourier_weight", type=float, default=0.0, help="Weight of the Fourier amplitude/phase loss.")
    g.add_argument("--fourier_amplitude_weight", type=float, default=1.0, help="Amplitude term inside the loss.")
    g.add_argument("--fourier_phase_weight", type=float, default=1.0, help="Phase term inside the loss.")
    g.add_argument("--fourier_log_amplitude", action="store_true", help="Compare log(1 + |F|) amplitudes.")
    g.add_argument(
        "--fourier_frequency_power",
        type=float,
        default=0.0,
        help="Radial weighting (r / r_max)^p of the Fourier loss (0 = uniform).",
    )
    g.add_argument("--wavelet_weight", type=float, default=0.0, help="Weight of the wavelet subband loss.")
    g.add_argument("--wavelet_levels", type=int, default=3, help="DWT levels.")
    g.add_argument(
        "--wavelet_level_weights",
        type=parse_float_list,
        default=None,
        help="Per-level weights, finest first (comma-separated). Default: all 1.",
    )
    g.add_argument("--wavelet", type=str, default="haar", help="Wavelet name.")
    g.add_argument(
        "--spectral_loss_type", type=str, default="l1", choices=("l1", "l2"), help="Distance of both spectral losses."
    )
    g.add_argument(
        "--spectral_timestep_weighting",
        type=str,
        default="signal",
        choices=("none", "signal", "min_snr"),
        help="Per-sample weight of the spectral losses so very noisy steps do not dominate.",
    )
    g.add_argument("--spectral_snr_gamma", type=float, default=5.0, help="gamma of min_snr weighting.")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--train_batch_size", type=int, default=32, help="Batch size per device.")
    g.add_argument("--max_train_steps", type=int, default=400000, help="Optimizer steps (DoG-REPA report: 400k).")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    g.add_argument("--learning_rate", type=float, default=1e-4, help="AdamW learning rate (REPA: 1e-4).")
    g.add_argument("--lr_scheduler", type=str, default="constant", help="diffusers lr schedule name.")
    g.add_argument("--lr_warmup_steps", type=int, default=0, help="Warm-up steps.")
    g.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    g.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW beta2.")
    g.add_argument("--adam_weight_decay", type=float, default=0.0, help="AdamW weight decay.")
    g.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon.")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (0 = off).")
    g.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=("no", "fp16", "bf16"),
        help="Mixed precision (default: accelerate config).",
    )
    g.add_argument("--seed", type=int, default=0, help="Seed of init, data order, noise and sampling.")
    g.add_argument("--use_ema", action="store_true", help="Keep an EMA of the weights; exported at the end.")
    g.add_argument("--ema_decay", type=float, default=0.9999, help="EMA decay (REPA: 0.9999).")
    g.add_argument(
        "--max_nonfinite_steps", type=int, default=10, help="Stop after this many non-finite steps in a row."
    )
    g = parser.add_argument_group("output, logging, validation, Hub")
    g.add_argument("--output_dir", type=str, default="spectrum-dit", help="Where everything is written.")
    g.add_argument("--checkpointing_steps", type=int, default=5000, help="Save a resumable checkpoint every N steps.")
    g.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints.")
    g.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help="'latest' or a checkpoint-<step> folder to continue from (same step, data position, RNG).",
    )
    g.add_argument("--report_to", type=str, default="tensorboard", help='"tensorboard", "wandb", "all" or "none".')
    g.add_argument("--logging_dir", type=str, default="logs", help="Log folder, relative to --output_dir.")
    g.add_argument("--tracker_project_name", type=str, default="train_dit_repa", help="Tracker run name.")
    g.add_argument("--validation_steps", type=int, default=5000, help="Sample a validation grid every N steps.")
    g.add_argument("--num_validation_images", type=int, default=8, help="Images in the validation grid.")
    g.add_argument("--validation_inference_steps", type=int, default=50, help="Sampler steps for validation.")
    g.add_argument("--validation_guidance_scale", type=float, default=1.8, help="CFG scale (REPA: 1.8).")
    g.add_argument(
        "--num_classes",
        type=int,
        default=None,
        help="Number of classes (labels 0..K-1, K <= 1000). Default: from id2label or 1.",
    )
    g.add_argument("--push_to_hub", action="store_true", help="Upload the pipeline folder to the Hub at the end.")
    g.add_argument("--hub_model_id", type=str, default=None, help="Hub repo id (default: the output folder name).")
    g.add_argument("--hub_token", type=str, default=None, help="Hub token (default: the logged-in one).")
    g.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repo as private.")
    g.add_argument("--hub_dry_run", action="store_true", help="With --push_to_hub: list the files, upload nothing.")
    args = parser.parse_args(input_args)
    return resolve_args(args)


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
    for name in ("train_batch_size", "max_train_steps", "gradient_accumulation_steps", "checkpointing_steps",
                 "validation_steps", "num_validation_images", "validation_inference_steps",
                 "max_nonfinite_steps"):  # fmt: skip
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}.")
    for name in ("repa_coeff", "fourier_weight", "wavelet_weight", "label_dropout"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}.")
    if args.label_dropout > 1:
        raise ValueError(f"--label_dropout must be in [0, 1], got {args.label_dropout}.")
    if not args.snr_scale > 0:
        raise ValueError(f"--snr_scale must be positive, got {args.snr_scale}.")
    if args.num_classes is not None and not 1 <= args.num_classes <= 1000:
        raise ValueError(f"--num_classes must be in [1, 1000] (DiTPipeline's table), got {args.num_classes}.")
    if args.push_to_hub and args.hub_model_id is None:
        args.hub_model_id = Path(args.output_dir).resolve().name
    if args.wavelet_level_weights is not None:
        args.wavelet_level_weights = list(args.wavelet_level_weights)
    return args


# ----------------------------------------------------------------------------------------------------------------
# Training


def main(args):
    # 1. Accelerator, logging, seeds
    start_time = time.time()
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

    # 2. Data source (cached latents, VAE on the fly, or DCT space)
    data = DataSource(args, accelerator)
    if args.space == "dct":
        dct = data.vae
        probe = load_image_dataset(args.dataset_name, args.train_data_dir, args.dataset_split, args.image_column)
        eta_batches = list(
            image_batches(probe, 32, ImageTransform(args.resolution), args.image_column, max_samples=256)
        )
        if args.dct_eta is None:
            args.dct_eta = dct_space.estimate_dct_eta(dct, eta_batches)
        dct.register_to_config(scaling_factor=1.0 / args.dct_eta)
        data.scaling_factor, data.shift_factor = dct.config.scaling_factor, None
        entropy_weights = dct_space.estimate_entropy_weights(dct, eta_batches) if args.dct_entropy_weights else None
        logger.info(f"DCT space: eta {args.dct_eta:.4f}, latent shape {data.latent_shape}")
    else:
        entropy_weights = None
    channels, side = data.latent_shape[0], data.latent_shape[1]
    num_classes = args.num_classes or (len(data.id2label) if data.id2label else 1)

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
    ema = create_ema(model, args.ema_decay) if args.use_ema else None
    objective = training_objective(args)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
    )  # fmt: skip
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )  # fmt: skip
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    raw_model = accelerator.unwrap_model(model)
    fourier = None if args.fourier_weight == 0 else dict(
        amplitude_weight=args.fourier_amplitude_weight, phase_weight=args.fourier_phase_weight,
        log_amplitude=args.fourier_log_amplitude, frequency_power=args.fourier_frequency_power,
        loss_type=args.spectral_loss_type,
    )  # fmt: skip
    wavelet = None if args.wavelet_weight == 0 else dict(
        levels=args.wavelet_levels, level_weights=args.wavelet_level_weights, wavelet=args.wavelet,
        loss_type=args.spectral_loss_type,
    )  # fmt: skip
    logger.info(
        f"DiT {args.dit_config}: {sum(p.numel() for p in raw_model.parameters()) / 1e6:.2f}M params, latents "
        f"{data.latent_shape}, grid {grid_hw}, objective {args.objective}, REPA {args.repa_targets_resolved} "
        f"(filter {args.repa_target_filter}), {num_classes} class(es)"
    )

    # 5. Resume
    global_step, data_position = 0, 0
    guard = NonFiniteGuard(args.max_nonfinite_steps)
    checkpoint = find_resume_checkpoint(output_dir, args.resume_from_checkpoint)
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint)
        global_step, data_position = state["global_step"], state["data_position"]
        guard.load_state_dict(state["nonfinite"])
        logger.info(f"resumed from {checkpoint} at step {global_step}, data position {data_position}")
    dataloader = data.dataloader(accelerator, data_position)
    data_iterator = iter(dataloader)
    val_labels = validation_labels(args.num_validation_images, num_classes if data.conditional else 1)

    # 6. Loop: one optimizer step = `gradient_accumulation_steps` micro-batches
    progress = tqdm(total=args.max_train_steps, initial=global_step, desc="train dit",
                    disable=not accelerator.is_main_process)  # fmt: skip
    accumulation = args.gradient_accumulation_steps
    logs = {}
    while global_step < args.max_train_steps:
        logs, backward_done = {}, False
        for micro_step in range(accumulation):
            batch = next(data_iterator)
            data_position = int(batch["data_position"][-1])
            generator = step_generator(
                args.seed, global_step, micro_step, accelerator.process_index, accelerator.device
            )
            inputs = data.prepare(batch, generator, grid_hw, need_targets=use_repa)
            x0 = inputs["x0"]
            labels = drop_labels(inputs["labels"], args.label_dropout if data.conditional else 0.0, generator)
            timesteps = objective.sample_timesteps(x0.shape[0], generator=generator, device=x0.device)
            noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
            x_t, model_timesteps = objective.noisy_inputs(x0, noise, timesteps)
            sync = micro_step == accumulation - 1
            with accelerator.no_sync(model) if not sync else contextlib.nullcontext():
                with accelerator.autocast():
                    out = model(x_t, timestep=model_timesteps, class_labels=labels, return_repa_tokens=use_repa)
                prediction = out.sample.float()
                target = objective.target(x0, noise, timesteps).float()
                # 6a. Denoising loss (entropy-weighted in DCT space), REPA, spectral regularisers
                if entropy_weights is not None:
                    per_sample = dct_space.dct_weighted_mse(prediction, target, entropy_weights)
                else:
                    per_sample = (prediction - target).square().mean(dim=(1, 2, 3))
                terms = {"diffusion": per_sample.mean()}
                loss = terms["diffusion"]
                if use_repa:
                    terms["repa"], terms["repa_cosine"] = repa_term(
                        out.repa_tokens, inputs["targets"], grid_hw, args.repa_target_filter, args.dog_sigma1,
                        args.dog_sigma2, args.spatial_norm_alpha,
                    )  # fmt: skip
                    loss = loss + args.repa_coeff * terms["repa"]
                if fourier is not None or wavelet is not None:
                    x0_hat = objective.predict_x0(prediction, x_t.float(), timesteps)
                    weights = objective.regularizer_weights(
                        timesteps, args.spectral_timestep_weighting, args.spectral_snr_gamma
                    )
                    regularizers = spectral_regularizer_terms(x0_hat, x0, weights, fourier, wavelet)
                    terms.update(regularizers)
                    loss = loss + args.fourier_weight * regularizers.get("fourier", 0.0)
                    loss = loss + args.wavelet_weight * regularizers.get("wavelet", 0.0)
                terms["loss"] = loss
                if guard.check(accelerator.reduce(loss.detach(), "mean")):
                    continue
                accelerator.backward(loss / accumulation)
                backward_done = True
            for name, value in terms.items():
                logs[name] = logs.get(name, 0.0) + float(value.detach()) / accumulation

        # 6b. Optimizer step
        if backward_done:
            if args.max_grad_norm > 0:
                logs["grad_norm"] = float(accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm))
            optimizer.step()
            if ema is not None:
                ema.step(raw_model.parameters())
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        global_step += 1
        progress.update(1)
        logs.update(lr=lr_scheduler.get_last_lr()[0], nonfinite_steps=guard.total)
        progress.set_postfix({k: f"{logs[k]:.4f}" for k in ("loss", "repa_cosine") if k in logs})
        accelerator.log(logs, step=global_step)

        # 6c. Checkpoint and validation samples
        if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
            extra = {"data_position": data_position, "nonfinite": guard.state_dict()}
            save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit, extra)
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
        logger.info(f"final metrics: {json.dumps(metrics)}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


@torch.no_grad()
def validate(args, accelerator, raw_model, ema, data, labels, step, output_dir) -> Path:
    """Sample a validation grid with the (EMA) weights; saved as `validation/step-<step>.png` and logged."""
    raw_model.eval()
    with ema_weights(ema, raw_model):
        images = sample_images(
            raw_model, data.decoder(), export_scheduler(args), labels, args.validation_inference_steps,
            args.validation_guidance_scale if data.conditional else 1.0, seeds=range(len(labels)),
        )  # fmt: skip
    raw_model.train()
    path = output_dir / "validation" / f"step-{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images)).save(path)
    log_images(accelerator, "validation/samples", images, step)
    return path


def write_outputs(args, model, data, metrics: dict, num_classes: int, output_dir: Path) -> Path:
    """Export the pipeline folder (stock classes; DCT space: `DCTDiTPipeline`), metrics.json, card, push."""
    pipeline_dir = output_dir / "pipeline"
    scheduler = export_scheduler(args)
    id2label = data.id2label if data.conditional else None
    if id2label is None and data.conditional:
        id2label = {i: f"class_{i}" for i in range(num_classes)}
    repo_id = args.hub_model_id or output_dir.resolve().name
    source = args.latent_dataset or args.dataset_name or args.train_data_dir or "the embedded photo crops"
    components = {
        "vae": f"{type(data.decoder()).__name__} (latents {tuple(data.latent_shape)}, "
        f"scaling {data.scaling_factor:.4g})",
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
    with open(output_dir / "metrics.json", "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    if args.push_to_hub:
        files = push_folder_to_hub(
            pipeline_dir, repo_id, "model", dry_run=args.hub_dry_run, private=args.hub_private_repo,
            token=args.hub_token,
        )  # fmt: skip
        with open(output_dir / "hub_upload.json", "w", encoding="utf-8") as f:
            json.dump({"repo_id": repo_id, "dry_run": args.hub_dry_run, "files": files}, f, indent=2)
    return pipeline_dir


if __name__ == "__main__":
    main(parse_args())
