"""`train_dit(args)`: a `REPADiTTransformer2DModel` (DiT with an optional REPA projector) on cached latents, on
images through a VAE, in DCT space or on the pixels (`dit_data.DiTData`), with REPA / DoG-REPA and the spectral
regularisers, and a stock `DiTPipeline` export. Defaults follow REPA (flow matching, AdamW lr 1e-4, grad clip 1,
EMA 0.9999, label dropout 0.1, REPA coefficient 0.5).

The output folder holds `pipeline/` (the stock `DiTPipeline`, with a model card), `transformer/` (our class with the
REPA projector, to fine-tune), `metrics.json`, `training_args.json`, `validation/` sample grids, checkpoints and
logs. Importing this module (for its flags) loads neither diffusers nor accelerate nor datasets.
"""

from __future__ import annotations

import argparse
import functools
import logging
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..diffusion.loss import diffusion_loss_terms, total_loss
from ..diffusion.objectives import mean_squared_error
from ..losses.dct import dct_weighted_mse
from ..losses.repa import repa_term
from ..models.presets import DIT_PRESETS, build_transformer
from ..utils.flags import add_flags
from ..utils.records import public_args
from .args import (
    Loading,
    Optimization,
    Outputs,
    add_data_args,
    add_optimization_args,
    add_output_args,
    add_regularizer_args,
    add_unset_flags,
    check_nonnegative,
    check_positive,
    dry_run,
    finish_common_args,
    spectral_regularizers,
)
from .checkpointing import Checkpointer
from .dit_outputs import validate, write_outputs


__all__ = ["REPA_LOSS_WEIGHTS", "REPA_TARGET_FILTERS", "build_parser", "parse_args", "train_dit"]

logger = logging.getLogger(__name__)

# Flags a resume must keep (`loop.learning_settings`): they change what the transformer learns.
RESUME_SETTINGS = tuple(
    "objective space resolution dit_config patch_size snr_scale dct_block_size dct_num_dropped "
    "unconditional num_classes repa_targets_resolved repa_target_filter repa_projector repa_depth "
    "fourier_weight wavelet_weight wavelet_levels wavelet spectral_loss_type fourier_log_amplitude".split()
)

# The authors' REPA loss weight per projector (`models.dit_repa.REPA_DEFAULTS`, which needs diffusers to import; a
# test keeps the two equal): 0.5 for REPA's MLP, 1.0 for iREPA's conv.
REPA_LOSS_WEIGHTS = {"mlp": 0.5, "conv": 1.0}
# The knobs of each REPA target filter (in tokens), filled in when their flags are not given: iREPA's spatial
# normalisation removes alpha of the spatial mean; DoG-REPA's difference of Gaussians keeps the band between sigmas.
REPA_TARGET_FILTERS = {
    "none": {},
    "spatial_norm": {"spatial_norm_alpha": 0.6},
    "dog": {"dog_sigma1": 0.6, "dog_sigma2": 2.0},
}


# ----------------------------------------------------------------------------------------------------------------
# Flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = add_data_args(parser, images=True)
    g.add_argument(
        "--latent_dataset",
        type=str,
        default=None,
        help="Cached latents (folder or Hub dataset id from cache_latents.py). Default: encode images.",
    )
    add_flags(g, "--label_column", "--unconditional")
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
        choices=("latent", "dct", "pixel"),
        help="Diffuse VAE latents, the blockwise DCT of the pixels (DCTdiff), or the pixels in [-1, 1] themselves "
        "(patch size p: (resolution / p)^2 tokens); dct and pixel need image data.",
    )
    add_flags(g, "--pretrained_vae", "--vae_subfolder")
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
    add_flags(g, "--gradient_checkpointing")
    g = parser.add_argument_group("objective")
    g.add_argument(
        "--objective",
        type=str,
        default="flow",
        choices=("epsilon", "v_prediction", "flow"),
        help="Diffusion parameterisation: epsilon / v (DDPM linear schedule) or flow matching (REPA).",
    )
    g.add_argument("--label_dropout", type=float, default=0.1, help="Label dropout for classifier-free guidance.")
    g = parser.add_argument_group("REPA (knobs left unset take the projector's and the target filter's values)")
    g.add_argument(
        "--repa_targets",
        type=str,
        default="auto",
        choices=("auto", "none", "cached", "online"),
        help="auto: cached targets when the cache has them, online when --repa_encoder is set, else none.",
    )
    add_flags(g, "--repa_encoder")
    add_unset_flags(g, ("repa_coeff", float, f"Weight of the REPA loss (per projector: {REPA_LOSS_WEIGHTS})."))
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
        choices=sorted(REPA_TARGET_FILTERS),
        help="Filter of the target token map: none (REPA), spatial_norm (iREPA) or dog (DoG-REPA).",
    )
    add_unset_flags(
        g,
        ("dog_sigma1", float, "DoG inner Gaussian sigma, in tokens."),
        ("dog_sigma2", float, "DoG outer Gaussian sigma, in tokens."),
        ("spatial_norm_alpha", float, "Mean-removal fraction of spatial_norm."),
    )
    add_regularizer_args(parser)
    add_optimization_args(parser)
    g = add_output_args(parser)
    add_flags(g, "--num_validation_images", "--validation_inference_steps")
    g.add_argument("--validation_guidance_scale", type=float, default=1.8, help="CFG scale (REPA: 1.8).")
    g.add_argument(
        "--num_classes",
        type=int,
        default=None,
        help="Number of classes (labels 0..K-1, K <= 1000). Default: from id2label or 1.",
    )
    parser.set_defaults(
        output_dir="spectrum-dit",
        train_batch_size=32,
        max_train_steps=400000,
        learning_rate=1e-4,
        checkpointing_steps=5000,
        validation_steps=5000,
    )
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return resolve_args(build_parser().parse_args(argv))


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Validate once; fill data-dependent defaults and the REPA knobs of the projector and the target filter."""
    if sum(x is not None for x in (args.latent_dataset, args.dataset_name, args.train_data_dir)) > 1:
        raise ValueError("Pass at most one of --latent_dataset, --dataset_name and --train_data_dir.")
    if args.space in ("dct", "pixel") and args.latent_dataset is not None:
        raise ValueError(f"--space {args.space} trains on images; it cannot use --latent_dataset.")
    if args.space != "dct":
        off = {"dct_entropy_weights": False, "dct_num_dropped": 0, "dct_eta": None}
        dct_flags = [name for name, value in off.items() if getattr(args, name) != value]
        if dct_flags:
            raise ValueError(
                f"--{dct_flags[0]} applies to DCT space only; pass --space dct, or drop it for --space {args.space}."
            )
    if args.space == "pixel" and args.pretrained_vae is not None:
        raise ValueError("--space pixel diffuses the pixels themselves; drop --pretrained_vae (or use --space latent)")
    if args.space == "latent" and args.latent_dataset is None and args.pretrained_vae is None:
        raise ValueError("Training on images in latent space needs --pretrained_vae (or pass --latent_dataset).")
    if args.latent_dataset is None and args.dataset_name is None and args.train_data_dir is None:
        args.label_column = args.label_column or "label"  # the embedded photos are labelled by source photograph
    if args.objective == "flow" and args.space == "dct" and args.snr_scale != 1.0:
        logger.info("flow matching in DCT space: SNR scale applied as a time shift of 1/sqrt(c)")
    if args.repa_coeff is None:
        args.repa_coeff = REPA_LOSS_WEIGHTS[args.repa_projector]
    for knob, value in REPA_TARGET_FILTERS[args.repa_target_filter].items():
        if getattr(args, knob) is None:
            setattr(args, knob, value)
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


def train_dit(args: argparse.Namespace) -> Path | None:
    """Train as `args` (from `parse_args`) says; returns the exported pipeline folder."""
    if args.dry_run:
        return dry_run(args)
    from ..models.dit_repa import REPADiTTransformer2DModel, default_repa_depth, drop_labels
    from ..pipelines.schedulers import matching_objective, matching_scheduler
    from . import loop
    from .dit_data import DiTData, DiTDataSettings

    # 1. Accelerator, logging, seeds
    start_time = time.time()
    output_dir, outputs, optimization = Path(args.output_dir), Outputs.of(args), Optimization.of(args)
    accelerator = loop.make_accelerator("train-dit", outputs, optimization, vars(args))

    # 2. Data: cached latents, a VAE on the fly or DCT space; labels; REPA targets
    data = DiTData(DiTDataSettings.of(args), Loading.of(args), accelerator.device)
    channels, side = data.latent_shape[0], data.latent_shape[1]
    use_repa = data.repa != "none"
    resolved = {**vars(args), "repa_targets_resolved": data.repa, "dct_eta": data.dct_eta}

    # 3. Model, EMA, optimizer, objective
    if args.pretrained_transformer is not None:
        model = REPADiTTransformer2DModel.from_pretrained(args.pretrained_transformer)
    else:
        depth = (
            (args.repa_depth or default_repa_depth(DIT_PRESETS[args.dit_config]["num_layers"])) if use_repa else None
        )
        model = build_transformer(
            args.dit_config,
            channels,
            side,
            repa_depth=depth,
            repa_target_dim=data.repa_target_dim,
            repa_projector=args.repa_projector,
            repa_projector_dim=args.repa_projector_dim,
            patch_size=args.patch_size,
            dit_init=not args.no_dit_init,
        )
    if model.config.sample_size != side or model.config.in_channels != channels:
        raise ValueError(
            f"the transformer expects latents ({model.config.in_channels}, {model.config.sample_size}) but the data "
            f"gives {data.latent_shape}."
        )
    grid_hw = (side // model.config.patch_size, side // model.config.patch_size)
    if data.repa == "cached" and tuple(data.cache_info["settings"]["repa_grid_size"]) != grid_hw:
        raise ValueError(
            f"the cached REPA targets are on a {tuple(data.cache_info['settings']['repa_grid_size'])} grid but the "
            f"DiT's token grid is {grid_hw}; re-cache with --repa_grid_size matching latent side / patch size."
        )
    if use_repa and data.encoder is not None:
        data.encoder.check_transformer(model)
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    loop.compile_model(model, args.use_torch_compile)
    ema = loop.create_ema(model, args.ema_decay) if args.use_ema else None
    objective, regularizers = matching_objective(args.objective, args.snr_scale), spectral_regularizers(args)
    scheduler = matching_scheduler(args.objective, args.snr_scale)  # the exported pipeline's sampler
    distance = mean_squared_error  # per sample, as DCTdiff's entropy-weighted MSE in DCT space
    if data.entropy_weights is not None:
        distance = functools.partial(dct_weighted_mse, channel_weights=data.entropy_weights)
    filter_knobs = {knob: getattr(args, knob) for knob in REPA_TARGET_FILTERS[args.repa_target_filter]}
    optimizer, lr_scheduler = loop.make_optimizer(model.parameters(), optimization, accelerator)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    raw_model = accelerator.unwrap_model(model)
    checkpointer = Checkpointer(
        accelerator,
        output_dir,
        {"transformer": model},
        {"transformer": ema} if ema is not None else None,
        args.checkpoints_total_limit,
        settings=loop.learning_settings(resolved, RESUME_SETTINGS),
    )
    logger.info(
        f"DiT {args.dit_config}: {sum(p.numel() for p in raw_model.parameters()) / 1e6:.2f}M params, latents "
        f"{data.latent_shape}, grid {grid_hw}, objective {args.objective}, REPA {data.repa} "
        f"(filter {args.repa_target_filter}), {data.num_classes} class(es)"
    )

    # 4. Resume
    global_step, data_state, guard = loop.resume_training(
        checkpointer, args.resume_from_checkpoint, args.max_nonfinite_steps
    )
    dataloader = data.dataloader(accelerator, data_state)
    data_iterator = iter(dataloader)
    classes = data.num_classes if data.conditional else 1
    val_labels = [i % classes for i in range(args.num_validation_images)]

    # 5. Loop: one optimizer step = `gradient_accumulation_steps` micro-batches
    main = accelerator.is_main_process
    progress = tqdm(total=args.max_train_steps, initial=global_step, desc="train dit", disable=not main)
    accumulation = args.gradient_accumulation_steps
    window = loop.AccumulationWindow(accelerator, [model], accumulation)
    logs = {}
    while global_step < args.max_train_steps:
        logs = {}
        for micro_step in range(accumulation):
            batch = next(data_iterator)
            device = accelerator.device
            generator = loop.step_generator(args.seed, global_step, micro_step, accelerator.process_index, device)
            inputs = data.prepare(batch, generator, grid_hw)
            labels = drop_labels(inputs["labels"], args.label_dropout if data.conditional else 0.0, generator)
            with window.micro_step(micro_step):
                # 5a. Diffusion loss (entropy-weighted in DCT space) and the spectral regularisers, then REPA
                terms, out = diffusion_loss_terms(
                    model,
                    objective,
                    inputs["x0"],
                    generator,
                    regularizers=regularizers,
                    model_kwargs={"class_labels": labels, "return_repa_tokens": use_repa},
                    distance=distance,
                    autocast=accelerator.autocast,
                )
                if use_repa:
                    repa = repa_term(
                        out.repa_tokens, inputs["targets"], grid_hw, args.repa_target_filter, **filter_knobs
                    )
                    terms["repa"], terms["repa_cosine"] = repa
                terms["loss"] = total_loss(terms, {"repa": args.repa_coeff, **regularizers.weights})
                window.backward(terms["loss"])
            for name, value in terms.items():
                logs[name] = logs.get(name, 0.0) + value.detach() / accumulation

        # 5b. Optimizer step (skipped together on every process when a loss of the window was not finite)
        logs.update(loop.optimizer_step(window, guard, model, optimizer, lr_scheduler, ema, args.max_grad_norm))
        global_step += 1
        progress.update(1)
        logs = {k: float(v) for k, v in logs.items()}  # one transfer per optimizer step, for the trackers
        logs.update(lr=lr_scheduler.get_last_lr()[0], nonfinite_steps=guard.total)
        if data.cache_info is None:  # image data: unreadable images skipped (over the workers)
            logs["skipped_images"] = dataloader.counts().get("skipped", 0)
        progress.set_postfix({k: f"{logs[k]:.4f}" for k in ("loss", "repa_cosine") if k in logs})
        accelerator.log(logs, step=global_step)

        # 5c. Checkpoint and validation samples
        loop.save_checkpoint_if_due(
            checkpointer, global_step, dataloader, guard, args.checkpointing_steps, args.max_train_steps
        )
        if main and global_step % args.validation_steps == 0:
            guidance = args.validation_guidance_scale if data.conditional else 1.0
            sampling = (scheduler, val_labels, args.validation_inference_steps, guidance)
            validate(accelerator, raw_model, ema, data.decoder(), *sampling, global_step, output_dir)
    progress.close()

    # 6. Final model: EMA weights, transformer checkpoint, stock pipeline export, card, push
    accelerator.wait_for_everyone()
    result = None
    if main:
        if ema is not None:
            ema.copy_to(raw_model.parameters())
        raw_model.eval()
        raw_model.save_pretrained(output_dir / "transformer")
        metrics = {k: v for k, v in logs.items() if k not in ("lr",)}
        metrics.update(global_step=global_step, train_seconds=round(time.time() - start_time, 1))
        source = args.latent_dataset or args.dataset_name or args.train_data_dir or "the embedded photo crops"
        result = write_outputs(
            raw_model,
            data,
            scheduler,
            metrics,
            outputs,
            public_args(resolved),
            objective=args.objective,
            space=args.space,
            description=f"DiTTransformer2DModel {args.dit_config}, REPA {data.repa} ({args.repa_target_filter} "
            "target filter)",
            repa_target_filter=args.repa_target_filter,
            dataset_name=args.dataset_name,
            source=str(source),
        )
        logger.info(f"final metrics: {metrics}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result
