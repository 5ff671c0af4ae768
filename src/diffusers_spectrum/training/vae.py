"""`train_vae(args)`: trains or fine-tunes a `SpectrumAutoencoderKL` with ESM / DSM, perceptual and adversarial
losses, and the two baselines Spectrum Matching unifies: `--recipe eq-vae` (EQ-VAE's equivariance branch) and
`--recipe va-vae` (VA-VAE's VF alignment against a frozen vision encoder). `--recipe` sets the authors' settings; a
flag given explicitly wins.

The output folder holds the trained `SpectrumAutoencoderKL` (EMA weights with `--use_ema`), `stock/` (the same
weights as a stock `AutoencoderKL`), `metrics.json`, `training_args.json`, a model card, checkpoints and logs.
Importing this module (for its flags) loads neither diffusers nor accelerate nor datasets.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from tqdm.auto import tqdm

from ..losses.autoencoder_objective import (
    autoencoder_loss,
    discriminator_loss,
    gan_fits,
)
from ..models.presets import VAE_PRESETS
from ..utils.flags import add_flags, parse_int_list
from ..utils.records import public_args
from .args import (
    Loading,
    Optimization,
    Outputs,
    add_data_args,
    add_optimization_args,
    add_output_args,
    add_unset_flags,
    check_nonnegative,
    check_positive,
    dry_run,
    finish_common_args,
)
from .checkpointing import Checkpointer
from .vae_setup import (
    DEFAULTS,
    RECIPES,
    AutoencoderModel,
    Equivariance,
    PerceptualLoss,
    VAETrainingModule,
    VFAlignment,
    latent_statistics,
    loss_weights,
    transform_generator,
    validate,
    vf_features,
    write_outputs,
)


__all__ = ["build_parser", "parse_args", "train_vae"]

logger = logging.getLogger(__name__)

# Flags a resume must keep (`loop.learning_settings`): they change what the autoencoder learns.
RESUME_SETTINGS = tuple(
    "recipe vae_config resolution reconstruction_loss perceptual_loss perceptual_weight disc_weight "
    "kl_weight esm_weight esm_delta dsm_levels dsm_block_size equivariance vf_weight use_shift".split()
)


# ----------------------------------------------------------------------------------------------------------------
# Flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(parser, images=True)
    g = parser.add_argument_group("model")
    add_flags(g, "--pretrained_vae", "--vae_subfolder")
    g.add_argument(
        "--vae_config",
        type=str,
        default="f8d4",
        choices=sorted(VAE_PRESETS),
        help="Architecture preset when training from scratch (f8d4, f16d16 from the paper; tiny for CPU).",
    )
    add_flags(g, "--gradient_checkpointing")

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
    add_unset_flags(
        g,
        ("reconstruction_loss", ("l1", "l2"), "Pixel loss."),
        (
            "perceptual_loss",
            ("none", "lpips", "features", "fourier"),
            "lpips (the `lpips` package; downloads VGG weights), features (a transformers backbone, "
            "--perceptual_backbone), fourier (offline, no weights: L1 between log amplitude spectra, a texture "
            "stand-in for LPIPS, `losses.FourierAmplitudeLoss`) or none.",
        ),
        ("perceptual_weight", float, "Weight of the perceptual loss."),
        ("lpips_net", ("vgg", "alex", "squeeze"), "LPIPS backbone."),
        ("disc_weight", float, "PatchGAN generator loss weight (0 = no GAN)."),
        ("disc_start", int, "Step at which the GAN losses start."),
        ("disc_layers", int, "Stride-2 layers of the PatchGAN discriminator."),
        ("disc_channels", int, "Channels of the discriminator's first layer."),
        ("disc_norm", ("batch", "group", "none"), "Norm of the discriminator."),
        (
            "adaptive_disc_weight",
            bool,
            "Scale the GAN loss by VQGAN's gradient-norm ratio at the decoder's last layer.",
        ),
        ("kl_weight", float, "Weight of the posterior KL (SD-VAE: 1e-6)."),
        ("esm_weight", float, "Weight of Encoding Spectrum Matching (0.01)."),
        ("esm_delta", float, "ESM target flattening exponent (1.0: ~1/f)."),
        (
            "dsm_levels",
            parse_int_list,
            "DSM mask levels drawn per step, comma-separated (0,8,10,12; 0 alone: no DSM).",
        ),
    )
    g.add_argument("--reconstruction_weight", type=float, default=1.0, help="Weight of the pixel loss.")
    g.add_argument("--perceptual_backbone", type=str, default=None, help="transformers model of the feature loss.")
    g.add_argument(
        "--perceptual_layers", type=parse_int_list, default=None, help="Its hidden_states, e.g. 3,6,9,12 (all)."
    )
    g.add_argument("--disc_learning_rate", type=float, default=None, help="Discriminator lr (--learning_rate).")
    g.add_argument("--dsm_block_size", type=int, default=8, help="DCT block side of the DSM low-pass.")
    g = parser.add_argument_group("EQ-VAE equivariance (Kouzelis et al. 2025; --recipe eq-vae)")
    add_unset_flags(
        g,
        ("equivariance", bool, "Decode transformed latents against the same transform of the image (EQ-VAE)."),
        ("eq_probability", float, "Probability of the equivariance branch."),
        ("eq_low_resolution_probability", float, "Within the other steps, that of a low-resolution reconstruction."),
        ("eq_min_scale", float, "Smallest downscale factor."),
        ("eq_rotations", bool, "Rotate by 90/180/270 degrees in the equivariance branch (the paper does)."),
    )
    g = parser.add_argument_group("VA-VAE vision-foundation alignment (Yao et al. 2025; --recipe va-vae)")
    g.add_argument(
        "--vf_encoder",
        type=str,
        default=None,
        help="Frozen vision encoder (transformers model folder or Hub id, e.g. facebook/dinov2-large as the paper) "
        "whose patch features on the latent grid the VF loss aligns to.",
    )
    add_unset_flags(
        g,
        ("vf_weight", float, "VF loss weight w_hyper (VA-VAE: 0.1; 0 = off)."),
        ("vf_margin_cos", float, "Marginal cosine margin m1."),
        ("vf_margin_dist", float, "Marginal distance-matrix margin m2."),
        ("adaptive_vf", bool, "Scale the VF loss by the gradient-norm ratio at the encoder's last layer (VA-VAE)."),
    )

    add_optimization_args(parser)
    g = add_output_args(parser)
    add_flags(g, "--num_validation_images", num_validation_images=4)
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
        output_dir="spectrum-vae",
        learning_rate=None,
        lr_scheduler=None,
        lr_warmup_steps=None,
        adam_weight_decay=None,
        max_grad_norm=None,
        adam_beta1=None,
        adam_beta2=None,
    )
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return resolve_args(build_parser().parse_args(argv))


def _lpips_available() -> bool:
    from ..losses.autoencoder import lpips_available  # here: that module imports diffusers

    return lpips_available()


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset flags from the recipe (or the defaults) and validate them, once."""
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
            "--perceptual_loss none (the offline switch), --perceptual_loss fourier (an offline texture term, not "
            "LPIPS), or --perceptual_loss features --perceptual_backbone <local transformers vision model>. (Do not "
            "`pip install torchvision` beside a pinned CPU torch: it replaces torch with another build.)"
        )
    if args.perceptual_loss == "features" and args.perceptual_weight > 0 and args.perceptual_backbone is None:
        raise ValueError("--perceptual_loss features needs --perceptual_backbone (a path or Hub id).")
    finish_common_args(args, "train_spectrum_vae")
    check_positive(args, ("latent_stats_samples", "num_validation_images"))
    check_nonnegative(
        args,
        ("reconstruction_weight", "perceptual_weight", "disc_weight", "kl_weight", "esm_weight", "vf_weight")
        + ("vf_margin_cos", "vf_margin_dist"),
    )
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


def train_vae(args: argparse.Namespace) -> Path | None:
    """Train as `args` (from `parse_args`) says; returns the output folder."""
    if args.dry_run:
        return dry_run(args)
    from ..data.images import ImageReader, ImageTransform, image_batches
    from ..data.sources import load_image_dataset
    from ..data.stream import SkipCounter
    from ..evaluation.validation import vae_validation_metrics
    from ..losses.autoencoder import NLayerDiscriminator
    from . import loop

    # 1. Accelerator, logging, seeds
    output_dir, outputs, optimization = Path(args.output_dir), Outputs.of(args), Optimization.of(args)
    accelerator = loop.make_accelerator("train-vae", outputs, optimization, vars(args))

    # 2. Data
    skip_counter = SkipCounter()  # files that are not images (scan) and images that do not decode (stream)
    dataset = load_image_dataset(
        args.dataset_name,
        args.train_data_dir,
        args.dataset_split,
        args.image_column,
        not args.no_streaming,
        skip_counter=skip_counter,
    )
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
    vae = AutoencoderModel.of(args).build()
    if args.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    vae.train()
    module = loop.compile_model(VAETrainingModule(vae), args.use_torch_compile)
    perceptual = PerceptualLoss.of(args).build()
    if perceptual is not None:
        perceptual.to(accelerator.device)
    use_gan = args.disc_weight > 0
    discriminator = NLayerDiscriminator(3, args.disc_channels, args.disc_layers, args.disc_norm) if use_gan else None
    ema = loop.create_ema(vae, args.ema_decay) if args.use_ema else None
    vf_encoder, vf_loss = VFAlignment.of(args).build(vae.config.latent_channels, accelerator.device)
    weights, sample_transform = loss_weights(args), Equivariance.of(args).sampler()

    trained = [*vae.parameters(), *(vf_loss.parameters() if vf_loss is not None else ())]  # VF projector: AE optimiser
    optimizer, lr_scheduler = loop.make_optimizer(trained, optimization, accelerator)
    module, optimizer, lr_scheduler = accelerator.prepare(module, optimizer, lr_scheduler)
    models = {"vae": module}
    if vf_loss is not None:
        vf_loss = accelerator.prepare(vf_loss)
        models["vf_projector"] = vf_loss  # saved in checkpoints (model.safetensors), so resume is exact
    if use_gan:
        fused = accelerator.device.type == "cuda"
        disc_optimizer = loop.adamw(discriminator.parameters(), optimization, args.disc_learning_rate, fused=fused)
        discriminator, disc_optimizer = accelerator.prepare(discriminator, disc_optimizer)  # constant lr
        models["discriminator"] = discriminator
    if ema is not None:
        ema.to(accelerator.device)
    raw_vae = accelerator.unwrap_model(module).vae
    raw_discriminator = accelerator.unwrap_model(discriminator) if use_gan else None
    last_layer, encoder_last_layer = raw_vae.decoder.conv_out.weight, raw_vae.encoder.conv_out.weight
    checkpointer = Checkpointer(
        accelerator,
        output_dir,
        models,
        {"vae": ema} if ema is not None else None,
        args.checkpoints_total_limit,
        settings=loop.learning_settings(vars(args), RESUME_SETTINGS),
    )

    # 4. Resume
    global_step, data_state, guard = loop.resume_training(
        checkpointer, args.resume_from_checkpoint, args.max_nonfinite_steps
    )
    reader = ImageReader(train_transform, args.image_column)
    dataloader = loop.train_dataloader(dataset, reader, accelerator, Loading.of(args), data_state)
    data_iterator = iter(dataloader)

    # 5. Loop: one optimizer step = `gradient_accumulation_steps` micro-batches
    main = accelerator.is_main_process
    progress = tqdm(total=args.max_train_steps, initial=global_step, desc="train vae", disable=not main)
    accumulation = args.gradient_accumulation_steps
    window = loop.AccumulationWindow(accelerator, [module, discriminator, vf_loss], accumulation)
    while global_step < args.max_train_steps:
        gan_active = use_gan and global_step >= args.disc_start
        logs = {}
        for micro_step in range(accumulation):
            batch = next(data_iterator)
            images = batch["pixel_values"].to(accelerator.device)
            process = accelerator.process_index
            generator = loop.step_generator(args.seed, global_step, micro_step, process, images.device)
            transform = None
            if sample_transform is not None:
                factor = raw_vae.downsample_factor
                latent_size = (images.shape[-2] // factor, images.shape[-1] // factor)
                transform = sample_transform(transform_generator(args.seed, global_step, micro_step), latent_size)
            with window.micro_step(micro_step):
                # 5a. Autoencoder: encode / decode through the wrapped module (DDP, autocast); EQ-VAE transforms
                out = module(images, generator=generator, transform=transform)
                if vf_loss is not None:  # VA-VAE: align the projected posterior sample to the frozen features
                    features = vf_features(vf_encoder, images, tuple(out["latents"].shape[-2:]))
                    out["vf"] = vf_loss(out["latents"], features).loss
                disc = raw_discriminator if gan_active else None
                loss, terms = autoencoder_loss(
                    out, weights, perceptual, disc, last_layer, accelerator.autocast, encoder_last_layer
                )
                # 5b. Discriminator on detached real and reconstructed images (one forward for DDP), at sizes it takes
                if gan_active and gan_fits(out, args.disc_layers):
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
            lr=lr_scheduler.get_last_lr()[0],
            skipped_images=skip_counter.count + counts.get("skipped", 0),
            nonfinite_steps=guard.total,
            upsampled_images=counts.get("upsampled", 0),
        )
        progress.set_postfix(loss=logs.get("reconstruction", float("nan")), esm=logs.get("esm", float("nan")))
        accelerator.log(logs, step=global_step)

        # 5d. Checkpoint and validation
        loop.save_checkpoint_if_due(
            checkpointer, global_step, dataloader, guard, args.checkpointing_steps, args.max_train_steps
        )
        if main and (global_step % args.validation_steps == 0 or global_step == 1):
            validate(accelerator, raw_vae, ema, validation_images, global_step)
    progress.close()

    # 6. Final model: EMA weights, latent statistics, save, stock export, card, push
    accelerator.wait_for_everyone()
    if main:
        if ema is not None:
            ema.copy_to(raw_vae.parameters())
        raw_vae.eval()
        count = args.latent_stats_samples
        batches = image_batches(dataset, args.train_batch_size, eval_transform, args.image_column, max_samples=count)
        stats = latent_statistics(raw_vae, batches, count, args.use_shift, args.seed, accelerator.device)
        metrics, _, _ = vae_validation_metrics(raw_vae, validation_images, raw_vae.config.esm_delta)
        metrics.update(
            latent_convention=stats["convention"],
            scaling_factor=stats["scaling_factor"],
            shift_factor=stats["shift_factor"],
            latent_std=stats["std"],
            latent_mean=stats["mean"],
            latent_stats_samples=stats["num_samples"],
            global_step=global_step,
            skipped_images=logs["skipped_images"],
            nonfinite_steps=guard.total,
            upsampled_images=logs["upsampled_images"],
        )
        pretrained = args.pretrained_vae
        write_outputs(
            raw_vae,
            metrics,
            outputs,
            public_args(args),
            recipe=args.recipe,
            base_model=pretrained if pretrained and not os.path.isdir(pretrained) else None,
            dataset_name=args.dataset_name,
            dataset_description=None if args.dataset_name or args.train_data_dir else "the embedded photo crops",
            eval_description=(
                f"the first {args.num_validation_images} images of the training data (centre crops, "
                f"{args.resolution} px): reconstructions decoded from the posterior mean, spectral numbers on seeded "
                f"posterior samples with the DC term kept (the authors' analysis convention); latent statistics over "
                f"{metrics['latent_stats_samples']} images"
            ),
        )
        logger.info(f"final metrics: {metrics}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output_dir
