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

from tqdm.auto import tqdm

from ..diffusion.edm import EDM_P_MEAN, EDM_P_STD
from ..diffusion.loss import diffusion_loss_terms, total_loss
from ..models.presets import UNET_PRESETS, check_unet_config, read_model_config, unet_downsampling_factor
from ..utils.records import public_args
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
from .unconditional_setup import (
    DDPM_BETA_SCHEDULES,
    PREDICTION_TYPES,
    Formulation,
    build_model,
    ddpm_noise_scheduler,
    validate,
    write_outputs,
)


__all__ = [
    "DDPM_BETA_SCHEDULES",
    "FORMULATIONS",
    "PREDICTION_TYPES",
    "Formulation",
    "build_parser",
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
    formulation = Formulation.of(args)
    unet = build_model(args.unet_config, args.model_config_name_or_path, args.resolution, formulation.edm)
    unet.train()
    compile_model(unet, args.use_torch_compile)
    ema = create_ema(unet, args.ema_decay) if args.use_ema else None
    objective, regularizers = formulation.objective(), spectral_regularizers(args)
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
            validate(accelerator, formulation, raw_model, ema, args.eval_batch_size, global_step, output_dir)
    progress.close()

    # 6. Final model: EMA weights, pipeline folder, metrics, card, push
    accelerator.wait_for_everyone()
    if main:
        if ema is not None:
            ema.copy_to(raw_model.parameters())
        raw_model.eval()
        metrics = {k: v for k, v in logs.items() if k != "lr"}
        metrics.update(global_step=global_step, train_seconds=round(time.time() - start_time, 1))
        write_outputs(
            raw_model,
            metrics,
            outputs,
            public_args(args),
            formulation,
            regularizers,
            unet_description=f"{args.unet_config or 'custom config'}, {args.resolution} px",
            dataset_name=args.dataset_name,
            dataset_description=args.dataset_name
            or args.train_data_dir
            or "the embedded photos of diffusers-spectrum",
        )
        logger.info(f"final metrics: {metrics}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output_dir
