"""`train_unconditional(args)`: a stock `UNet2DModel` in pixel space with the DDPM formulation (epsilon, v or sample
prediction; Ho et al. 2020) or EDM's (Karras et al. 2022), and the spectral regularisers on the predicted clean image
as one-flag additions. Flag names follow diffusers' `examples/unconditional_image_generation/train_unconditional.py`.

The output folder is the pipeline itself (a stock `DDPMPipeline`, or an EDM folder that diffusers'
`ConsistencyModelPipeline` samples), plus `metrics.json`, `training_args.json`, `spectrum_info.json`, a model card,
`validation/` sample grids, checkpoints and logs. Importing this module (for its flags) loads neither diffusers nor
accelerate nor datasets.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from tqdm.auto import tqdm

from .._version import __version__
from ..diffusion.edm import EDM_P_MEAN, EDM_P_STD, EDM_SIGMA_DATA, check_edm_unet
from ..diffusion.loss import diffusion_loss_terms, total_loss
from ..diffusion.objectives import DiffusionObjective
from ..models.presets import UNET_PRESETS, build_unet, check_unet_config, read_model_config, unet_downsampling_factor
from ..utils.images import image_grid
from ..utils.records import public_args, write_json
from .args import (
    Loading,
    Optimization,
    Outputs,
    add_data_args,
    add_optimization_args,
    add_output_args,
    add_regularizer_args,
    check_positive,
    dry_run,
    finish_common_args,
    spectral_regularizers,
)
from .checkpointing import Checkpointer


if TYPE_CHECKING:
    from diffusers import UNet2DModel


__all__ = [
    "DDPM_BETA_SCHEDULES",
    "FORMULATIONS",
    "PREDICTION_TYPES",
    "build_parser",
    "build_pipeline",
    "ddpm_noise_scheduler",
    "parse_args",
    "train_unconditional",
]

logger = logging.getLogger(__name__)

# Flags a resume must keep (`loop.learning_settings`): they change what the UNet learns.
RESUME_SETTINGS = tuple(
    "formulation prediction_type ddpm_num_steps ddpm_beta_schedule edm_p_mean edm_p_std resolution "
    "unet_config model_config_name_or_path fourier_weight wavelet_weight wavelet_levels wavelet "
    "spectral_loss_type fourier_log_amplitude".split()
)

FORMULATIONS = ("ddpm", "edm")
EDM_SCHEDULER_KINDS = ("euler", "dpmsolver")  # `pipelines.edm_pipeline.EDM_SCHEDULERS` (a test keeps them equal)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
DDPM_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# --unet_config default per resolution (the DDPM-paper sizes of models.presets)
PRESET_BY_RESOLUTION = {32: "ddpm-32", 64: "ddpm-64", 256: "ddpm-256"}


# ----------------------------------------------------------------------------------------------------------------
# Flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train an unconditional pixel-space diffusion UNet (diffusers' UNet2DModel) with the DDPM or "
        "EDM formulation and optional Fourier / wavelet regularisers on the predicted clean image. Flags follow "
        "diffusers' train_unconditional.py. With no data flag it trains on the embedded photos."
    )
    add_data_args(parser, images=True)
    g = parser.add_argument_group("model and formulation")
    g.add_argument(
        "--unet_config",
        type=str,
        default=None,
        choices=sorted(UNET_PRESETS),
        help="UNet2DModel size: tiny (tests / CPU) or the DDPM paper's ddpm-32 / ddpm-64 / ddpm-256. Default: the "
        "DDPM preset of --resolution (32, 64 or 256).",
    )
    g.add_argument(
        "--model_config_name_or_path",
        type=str,
        default=None,
        help="A UNet2DModel config (folder or config.json) to build instead of a preset (diffusers' flag).",
    )
    g.add_argument("--formulation", type=str, default="ddpm", choices=FORMULATIONS, help="DDPM or EDM training.")
    g.add_argument(
        "--prediction_type",
        type=str,
        default="epsilon",
        choices=PREDICTION_TYPES,
        help="DDPM target: epsilon, v_prediction or sample (x0). EDM has its own parameterisation.",
    )
    g.add_argument("--ddpm_num_steps", type=int, default=1000, help="DDPM training timesteps. (%(default)s)")
    g.add_argument(
        "--ddpm_beta_schedule", type=str, default="linear", choices=DDPM_BETA_SCHEDULES, help="DDPM beta schedule."
    )
    g.add_argument(
        "--ddpm_num_inference_steps", type=int, default=1000, help="DDPM sampler steps for validation. (%(default)s)"
    )
    g.add_argument("--edm_p_mean", type=float, default=EDM_P_MEAN, help="EDM: mean of ln(sigma). (%(default)s)")
    g.add_argument("--edm_p_std", type=float, default=EDM_P_STD, help="EDM: std of ln(sigma). (%(default)s)")
    g.add_argument(
        "--edm_scheduler", type=str, default="euler", choices=EDM_SCHEDULER_KINDS, help="EDM sampler of the pipeline."
    )
    g.add_argument("--edm_num_inference_steps", type=int, default=40, help="EDM sampler steps for validation.")
    add_regularizer_args(parser)
    add_optimization_args(parser)
    g = add_output_args(parser)
    g.add_argument("--eval_batch_size", type=int, default=16, help="Images in the validation grid. (%(default)s)")
    # diffusers' train_unconditional.py defaults
    parser.set_defaults(
        output_dir="ddpm-model-64",
        resolution=64,
        train_batch_size=16,
        learning_rate=1e-4,
        lr_scheduler="cosine",
        lr_warmup_steps=500,
        adam_weight_decay=1e-6,
        checkpointing_steps=500,
        validation_steps=1000,
    )
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return resolve_args(build_parser().parse_args(argv))


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Validate once; fill the preset from the resolution."""
    finish_common_args(args, "train_unconditional")
    check_positive(args, ("ddpm_num_steps", "ddpm_num_inference_steps", "edm_num_inference_steps", "eval_batch_size"))
    if args.random_flip is None:
        args.random_flip = False
    if args.formulation == "edm" and args.prediction_type != "epsilon":
        raise ValueError(
            f"--prediction_type {args.prediction_type} applies to --formulation ddpm only; EDM trains its own "
            "preconditioned parameterisation (leave --prediction_type at epsilon)."
        )
    if args.ddpm_num_inference_steps > args.ddpm_num_steps:
        raise ValueError(
            f"--ddpm_num_inference_steps ({args.ddpm_num_inference_steps}) cannot exceed --ddpm_num_steps "
            f"({args.ddpm_num_steps})."
        )
    if not args.edm_p_std > 0:
        raise ValueError(f"--edm_p_std must be positive, got {args.edm_p_std}.")
    if args.model_config_name_or_path is not None and args.unet_config is not None:
        raise ValueError("Pass either --unet_config or --model_config_name_or_path, not both.")
    if args.model_config_name_or_path is not None:
        config = read_model_config(args.model_config_name_or_path)
        source = f"--model_config_name_or_path {args.model_config_name_or_path}"
        check_unet_config(config, args.resolution, source=source)
        return args
    if args.unet_config is None:
        if args.resolution not in PRESET_BY_RESOLUTION:
            raise ValueError(
                f"no default UNet for --resolution {args.resolution}: pass --unet_config (one of "
                f"{sorted(UNET_PRESETS)}) or --model_config_name_or_path."
            )
        args.unet_config = PRESET_BY_RESOLUTION[args.resolution]
    factor = unet_downsampling_factor(args.unet_config)
    if args.resolution % factor:
        raise ValueError(
            f"--resolution {args.resolution} must be a multiple of {factor} for --unet_config {args.unet_config}."
        )
    return args


# ----------------------------------------------------------------------------------------------------------------
# Formulation and model


def ddpm_noise_scheduler(num_steps: int = 1000, beta_schedule: str = "linear", prediction_type: str = "epsilon"):
    """The training (and DDPM sampling) schedule: diffusers' `DDPMScheduler` with DDPM's betas 1e-4 to 0.02."""
    from diffusers import DDPMScheduler

    if beta_schedule not in DDPM_BETA_SCHEDULES:
        raise ValueError(f"--ddpm_beta_schedule must be one of {DDPM_BETA_SCHEDULES}, got {beta_schedule!r}.")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"--prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
    return DDPMScheduler(num_train_timesteps=num_steps, beta_schedule=beta_schedule, prediction_type=prediction_type)


def training_objective(args) -> DiffusionObjective:
    """DDPM's objective on `ddpm_noise_scheduler`'s schedule, or EDM's with the `--edm_p_*` noise levels."""
    if args.formulation == "edm":
        return DiffusionObjective("edm", p_mean=args.edm_p_mean, p_std=args.edm_p_std, sigma_data=EDM_SIGMA_DATA)
    scheduler = ddpm_noise_scheduler(args.ddpm_num_steps, args.ddpm_beta_schedule, args.prediction_type)
    return DiffusionObjective(args.prediction_type, scheduler)


def build_pipeline(args, unet: UNet2DModel):
    """The pipeline that samples `unet` as trained: `DDPMPipeline` (DDPM schedule) or `EDMPipeline`."""
    from diffusers import DDPMPipeline

    from ..pipelines.edm_pipeline import EDMPipeline, edm_scheduler

    if args.formulation == "edm":
        return EDMPipeline(unet=unet, scheduler=edm_scheduler(args.edm_scheduler, sigma_data=EDM_SIGMA_DATA))
    scheduler = ddpm_noise_scheduler(args.ddpm_num_steps, args.ddpm_beta_schedule, args.prediction_type)
    return DDPMPipeline(unet=unet, scheduler=scheduler)


def build_model(args) -> UNet2DModel:
    """A fresh UNet2DModel: the preset, or the config of `--model_config_name_or_path`; checked for the data."""
    from diffusers import UNet2DModel

    if args.model_config_name_or_path is None:
        unet = build_unet(args.unet_config, args.resolution)
    else:  # checked by `resolve_args` (unknown keys, sample size, downsampling)
        unet = UNet2DModel.from_config(read_model_config(args.model_config_name_or_path))
    if args.formulation == "edm":
        check_edm_unet(unet)
    return unet


# ----------------------------------------------------------------------------------------------------------------
# Training


def train_unconditional(args: argparse.Namespace) -> Path | None:
    """Train as `args` (from `parse_args`) says; returns the output (pipeline) folder."""
    if args.dry_run:
        return dry_run(args)
    from ..data.images import ImageReader, ImageTransform
    from ..data.sources import load_image_dataset
    from .loop import (
        AccumulationWindow,
        compile_model,
        create_ema,
        learning_settings,
        make_accelerator,
        make_optimizer,
        optimizer_step,
        resume_training,
        save_checkpoint_if_due,
        step_generator,
        train_dataloader,
    )

    # 1. Accelerator, logging, seeds
    start_time = time.time()
    output_dir, outputs, optimization = Path(args.output_dir), Outputs.of(args), Optimization.of(args)
    accelerator = make_accelerator("train-unconditional", outputs, optimization, vars(args))

    # 2. Data
    dataset = load_image_dataset(
        args.dataset_name, args.train_data_dir, args.dataset_split, args.image_column, not args.no_streaming
    )
    transform = ImageTransform(
        args.resolution, args.center_crop, args.random_flip, seed=args.seed, reduced_decode=args.reduced_jpeg_decode
    )

    # 3. Model, EMA, optimizer, objective
    unet = build_model(args)
    unet.train()
    compile_model(unet, args.use_torch_compile)
    ema = create_ema(unet, args.ema_decay) if args.use_ema else None
    objective, regularizers = training_objective(args), spectral_regularizers(args)
    optimizer, lr_scheduler = make_optimizer(unet.parameters(), optimization, accelerator)
    model, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    raw_model = accelerator.unwrap_model(model)
    checkpointer = Checkpointer(
        accelerator,
        output_dir,
        {"unet": model},
        {"unet": ema} if ema is not None else None,
        args.checkpoints_total_limit,
        settings=learning_settings(vars(args), RESUME_SETTINGS),
    )
    parameters = sum(p.numel() for p in raw_model.parameters()) / 1e6
    logger.info(f"UNet {args.unet_config or args.model_config_name_or_path}: {parameters:.2f}M params, {objective}")

    # 4. Resume
    global_step, data_state, guard = resume_training(
        checkpointer, args.resume_from_checkpoint, args.max_nonfinite_steps
    )
    reader = ImageReader(transform, args.image_column)
    dataloader = train_dataloader(dataset, reader, accelerator, Loading.of(args), data_state)
    data_iterator = iter(dataloader)

    # 5. Loop: one optimizer step = `gradient_accumulation_steps` micro-batches
    main = accelerator.is_main_process
    progress = tqdm(
        total=args.max_train_steps, initial=global_step, desc=f"train {args.formulation}", disable=not main
    )
    accumulation = args.gradient_accumulation_steps
    window = AccumulationWindow(accelerator, [model], accumulation)
    logs = {}
    while global_step < args.max_train_steps:
        logs = {}
        for micro_step in range(accumulation):
            batch = next(data_iterator)
            x0 = batch["pixel_values"].to(accelerator.device)
            generator = step_generator(args.seed, global_step, micro_step, accelerator.process_index, x0.device)
            with window.micro_step(micro_step):
                # 5a. Diffusion loss and the spectral regularisers on the predicted clean image
                terms, _ = diffusion_loss_terms(
                    model, objective, x0, generator, regularizers=regularizers, autocast=accelerator.autocast
                )
                terms["loss"] = total_loss(terms, regularizers.weights)
                window.backward(terms["loss"])
            for name, value in terms.items():
                logs[name] = logs.get(name, 0.0) + value.detach() / accumulation

        # 5b. Optimizer step (skipped together on every process when a loss of the window was not finite)
        logs.update(optimizer_step(window, guard, model, optimizer, lr_scheduler, ema, args.max_grad_norm))
        global_step += 1
        progress.update(1)
        logs = {k: float(v) for k, v in logs.items()}  # one transfer per optimizer step, for the trackers
        skipped = dataloader.counts().get("skipped", 0)
        logs.update(lr=lr_scheduler.get_last_lr()[0], skipped_images=skipped, nonfinite_steps=guard.total)
        progress.set_postfix(loss=f"{logs['loss']:.4f}")
        accelerator.log(logs, step=global_step)

        # 5c. Checkpoint and validation samples
        save_checkpoint_if_due(
            checkpointer, global_step, dataloader, guard, args.checkpointing_steps, args.max_train_steps
        )
        if main and global_step % args.validation_steps == 0:
            validate(args, accelerator, raw_model, ema, global_step, output_dir)
    progress.close()

    # 6. Final model: EMA weights, pipeline folder, metrics, card, push
    accelerator.wait_for_everyone()
    if main:
        if ema is not None:
            ema.copy_to(raw_model.parameters())
        raw_model.eval()
        metrics = {k: v for k, v in logs.items() if k != "lr"}
        metrics.update(global_step=global_step, train_seconds=round(time.time() - start_time, 1))
        write_outputs(args, raw_model, metrics, output_dir)
        logger.info(f"final metrics: {metrics}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output_dir


@torch.no_grad()
def validation_samples(args, unet: UNet2DModel, num_images: int, seed: int = 0) -> torch.Tensor:
    """`(num_images, 3, H, W)` samples in [-1, 1] from the pipeline of `unet` (image i seeded `seed + i`)."""
    from ..pipelines.sampling import pipeline_samples

    pipeline = build_pipeline(args, unet)
    pipeline.set_progress_bar_config(disable=True)
    steps = args.edm_num_inference_steps if args.formulation == "edm" else args.ddpm_num_inference_steps
    batches = pipeline_samples(
        pipeline, num_images, batch_size=num_images, num_inference_steps=steps, seed=seed, progress=False
    )
    return torch.cat(list(batches))


def validate(args, accelerator, raw_model, ema, step: int, output_dir: Path) -> Path:
    """Sample a grid with the (EMA) weights; saved as `validation/step-<step>.png` and logged."""
    from .loop import ema_weights, log_images

    raw_model.eval()
    with ema_weights(ema, raw_model):
        images = validation_samples(args, raw_model, args.eval_batch_size)
    raw_model.train()
    path = output_dir / "validation" / f"step-{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images)).save(path)
    log_images(accelerator, "validation/samples", images, step)
    return path


def write_outputs(args, unet: UNet2DModel, metrics: dict, output_dir: Path) -> Path:
    """The pipeline folder (stock components), `spectrum_info.json`, `metrics.json`, the card and the push."""
    from ..pipelines.edm_pipeline import edm_scheduler
    from ..pipelines.model_cards import unconditional_model_card
    from .loop import push_output

    pipeline = build_pipeline(args, unet.to("cpu"))
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    regularizers = spectral_regularizers(args)
    info = {
        "diffusers_spectrum_version": __version__,
        "formulation": args.formulation,
        "prediction_type": args.prediction_type if args.formulation == "ddpm" else "edm",
        "pipeline": type(pipeline).__name__,
        "scheduler": type(pipeline.scheduler).__name__,
        "regularizers": {
            "fourier_weight": args.fourier_weight,
            "wavelet_weight": args.wavelet_weight,
            "weighting": args.spectral_timestep_weighting,
        },
        "metrics": metrics,
    }
    write_json(output_dir / "spectrum_info.json", info)
    write_json(output_dir / "metrics.json", metrics)
    keys = ("sample_size", "block_out_channels", "layers_per_block", "down_block_types", "time_embedding_type")
    architecture = {key: unet.config[key] for key in keys}
    architecture["parameters"] = sum(p.numel() for p in unet.parameters())
    if args.formulation == "ddpm":
        formulation = (
            f"DDPM (Ho et al. 2020), {args.prediction_type} prediction, {args.ddpm_num_steps} steps, "
            f"{args.ddpm_beta_schedule} betas"
        )
    else:
        sampler = type(edm_scheduler(args.edm_scheduler)).__name__
        formulation = (
            f"EDM (Karras et al. 2022): sigma_data {EDM_SIGMA_DATA}, ln sigma ~ N({args.edm_p_mean}, "
            f"{args.edm_p_std}^2), sampled with {sampler}"
        )
    card = unconditional_model_card(
        args.hub_model_id or output_dir.resolve().name,
        unet=f"{args.unet_config or 'custom config'}, {args.resolution} px",
        formulation=args.formulation,
        formulation_description=formulation,
        regularizers=regularizers,
        sample_steps=args.edm_num_inference_steps if args.formulation == "edm" else args.ddpm_num_steps,
        config=architecture,
        metrics=metrics,
        training_args=public_args(args),
        datasets=[args.dataset_name] if args.dataset_name else None,
        dataset_description=args.dataset_name or args.train_data_dir or "the embedded photos of diffusers-spectrum",
    )
    card.save(output_dir / "README.md")
    push_output(Outputs.of(args), output_dir)
    return output_dir
