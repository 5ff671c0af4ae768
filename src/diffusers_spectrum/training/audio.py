"""`train_audio(args)`: diffusers' `UNet1DModel` in the Dance Diffusion layout on fixed-length clips
(unconditional), on the v-cosine objective that `DanceDiffusionPipeline` samples (`diffusion.v_diffusion`),
optionally with the spectral regularisers (Fourier, wavelet, multi-resolution STFT) on the predicted clean waveform.

The output folder holds `pipeline/` (the stock `DanceDiffusionPipeline`: `unet/` + `scheduler/` + model card),
`metrics.json` (losses, skipped / padded clip counts, seconds per step), `training_args.json`, `validation/` (WAV
files + spectrogram PNGs), checkpoints and tensorboard logs. Importing this module (for its flags) loads neither
diffusers nor accelerate nor datasets.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from ..diffusion.loss import diffusion_loss_terms, total_loss
from ..diffusion.objectives import DiffusionObjective
from ..losses.stft import (
    DEFAULT_FFT_SIZES,
    DEFAULT_HOP_LENGTHS,
    DEFAULT_WIN_LENGTHS,
    STFT_WINDOWS,
    fit_stft_resolutions,
)
from ..models.presets import AUDIO_UNET_PRESETS, build_audio_unet, check_sample_size
from ..utils.flags import add_flags, parse_int_list
from ..utils.records import public_args, write_json
from .args import (
    Loading,
    Optimization,
    Outputs,
    add_data_args,
    add_optimization_args,
    add_output_args,
    add_regularizer_args,
    check_nonnegative,
    check_positive,
    dry_run,
    finish_common_args,
    spectral_regularizers,
)
from .checkpointing import Checkpointer


if TYPE_CHECKING:
    from diffusers import UNet1DModel

    from ..diffusion.loss import SpectralRegularizers


__all__ = ["build_parser", "parse_args", "train_audio"]

logger = logging.getLogger(__name__)

EMBEDDED_SOUNDS = "the embedded sounds (diffusers_spectrum/assets/audio)"

# Flags a resume must keep (`loop.learning_settings`): they change what the UNet learns.
RESUME_SETTINGS = tuple(
    "sample_rate sample_size channels unet_config pretrained_unet stft_weight stft_fft_sizes "
    "fourier_weight wavelet_weight wavelet_levels wavelet spectral_loss_type fourier_log_amplitude".split()
)


# ----------------------------------------------------------------------------------------------------------------
# Flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a waveform diffusion UNet1DModel (Dance Diffusion) with spectral regularisers and export "
        "a stock DanceDiffusionPipeline."
    )
    add_data_args(parser, images=False)
    g = parser.add_argument_group("audio")
    add_flags(g, "--audio_column", "--sample_rate", "--sample_size")
    g.add_argument("--channels", type=int, default=1, choices=(1, 2), help="1 = mono (downmix), 2 = stereo.")
    g.add_argument(
        "--too_short",
        type=str,
        default="pad",
        choices=("pad", "skip"),
        help="Clips shorter than --sample_size: zero-pad at the end (counted) or skip (counted).",
    )
    g = parser.add_argument_group("model")
    g.add_argument(
        "--unet_config",
        type=str,
        default="dance",
        choices=sorted(AUDIO_UNET_PRESETS),
        help="UNet1DModel size: dance (Dance Diffusion), small (CPU demo), tiny (tests).",
    )
    g.add_argument("--pretrained_unet", type=str, default=None, help="A UNet1DModel folder to fine-tune.")
    add_optimization_args(parser)
    add_output_args(parser)
    g = parser.add_argument_group("validation")
    g.add_argument("--num_validation_samples", type=int, default=4, help="Clips generated at each validation.")
    add_flags(g, "--validation_inference_steps")
    add_regularizer_args(parser)
    g = parser.add_argument_group("multi-resolution STFT loss (Parallel WaveGAN) on x0_hat")
    g.add_argument("--stft_weight", type=float, default=0.0, help="Weight of the multi-resolution STFT loss.")
    g.add_argument(
        "--stft_fft_sizes",
        type=parse_int_list,
        default=None,
        help="FFT sizes (default: Parallel WaveGAN's 1024,2048,512, halved until they fit --sample_size).",
    )
    g.add_argument("--stft_hop_lengths", type=parse_int_list, default=None, help="Hops, one per FFT size.")
    g.add_argument("--stft_win_lengths", type=parse_int_list, default=None, help="Window lengths, one per FFT size.")
    g.add_argument("--stft_window", type=str, default="hann", choices=STFT_WINDOWS, help="STFT window.")
    parser.set_defaults(learning_rate=1e-4, train_batch_size=8, max_grad_norm=1.0)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return resolve_args(build_parser().parse_args(argv))


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Validate once; fill the clip length from the preset and the STFT resolutions that fit it."""
    finish_common_args(args, "train_audio")
    check_positive(args, ("sample_rate", "sample_size", "num_validation_samples", "validation_inference_steps"))
    check_nonnegative(args, ("stft_weight",))
    if args.sample_size is None:
        args.sample_size = AUDIO_UNET_PRESETS[args.unet_config]["sample_size"]
    stft = (args.stft_fft_sizes, args.stft_hop_lengths, args.stft_win_lengths)
    if all(v is None for v in stft):
        stft = fit_stft_resolutions(args.sample_size, DEFAULT_FFT_SIZES, DEFAULT_HOP_LENGTHS, DEFAULT_WIN_LENGTHS)
    elif any(v is None for v in stft):
        raise ValueError("pass all three of --stft_fft_sizes, --stft_hop_lengths and --stft_win_lengths, or none.")
    elif max(args.stft_fft_sizes) // 2 >= args.sample_size:
        raise ValueError(
            f"--stft_fft_sizes {list(args.stft_fft_sizes)}: the largest FFT needs more than "
            f"{max(args.stft_fft_sizes) // 2} samples but --sample_size is {args.sample_size}; pass smaller "
            "FFT sizes."
        )
    args.stft_fft_sizes, args.stft_hop_lengths, args.stft_win_lengths = (list(v) for v in stft)
    if args.wavelet_weight > 0 and args.sample_size < 2**args.wavelet_levels:
        raise ValueError(f"--wavelet_levels {args.wavelet_levels} needs --sample_size >= {2**args.wavelet_levels}.")
    return args


def build_model(
    unet_config: str, pretrained_unet: str | None, sample_size: int, sample_rate: int, channels: int
) -> UNet1DModel:
    """The preset UNet1DModel, or `pretrained_unet` checked against the clips and configured for them."""
    from diffusers import UNet1DModel

    if pretrained_unet is None:
        return build_audio_unet(unet_config, sample_size, sample_rate, channels)
    model = UNet1DModel.from_pretrained(pretrained_unet)
    if model.config.in_channels != channels:
        raise ValueError(f"--pretrained_unet has {model.config.in_channels} channels but --channels is {channels}.")
    check_sample_size(model, sample_size)
    model.register_to_config(sample_size=sample_size, sample_rate=sample_rate)
    return model


# ----------------------------------------------------------------------------------------------------------------
# Training


def train_audio(args: argparse.Namespace) -> Path | None:
    """Train as `args` (from `parse_args`) says; returns the exported `DanceDiffusionPipeline` folder."""
    if args.dry_run:
        return dry_run(args)
    from ..data.audio import AudioReader, AudioTransform, source_sample_rates
    from ..data.sources import load_audio_dataset
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
    accelerator = make_accelerator("train-audio", outputs, optimization, vars(args))

    # 2. Model, EMA, optimizer, objective
    model = build_model(args.unet_config, args.pretrained_unet, args.sample_size, args.sample_rate, args.channels)
    model.train()
    compile_model(model, args.use_torch_compile)
    ema = create_ema(model, args.ema_decay) if args.use_ema else None
    optimizer, lr_scheduler = make_optimizer(model.parameters(), optimization, accelerator)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
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
    objective, regularizers = DiffusionObjective("v_cosine"), spectral_regularizers(args)
    logger.info(
        f"UNet1DModel {args.unet_config}: {sum(p.numel() for p in raw_model.parameters()) / 1e6:.2f}M params, clips "
        f"({args.channels}, {args.sample_size}) at {args.sample_rate} Hz, regularisers "
        f"{ {k: v for k, v in regularizers.weights.items() if v} or 'none' }"
    )

    # 3. Resume, data
    global_step, data_state, guard = resume_training(
        checkpointer, args.resume_from_checkpoint, args.max_nonfinite_steps
    )
    streaming = not args.no_streaming
    dataset = load_audio_dataset(
        args.dataset_name, args.train_data_dir, args.dataset_split, args.audio_column, streaming=streaming
    )
    transform = AudioTransform(
        args.sample_rate, args.sample_size, args.channels, random_crop=True, too_short=args.too_short, seed=args.seed
    )
    reader = AudioReader(transform, args.audio_column)
    dataloader = train_dataloader(dataset, reader, accelerator, Loading.of(args), data_state)
    data_iterator = iter(dataloader)

    # 4. Loop: one optimizer step = `gradient_accumulation_steps` micro-batches
    main = accelerator.is_main_process
    progress = tqdm(total=args.max_train_steps, initial=global_step, desc="train audio", disable=not main)
    accumulation = args.gradient_accumulation_steps
    window = AccumulationWindow(accelerator, [model], accumulation)
    logs, step_seconds = {}, []
    while global_step < args.max_train_steps:
        step_start = time.perf_counter()
        logs = {}
        for micro_step in range(accumulation):
            batch = next(data_iterator)
            generator = step_generator(args.seed, global_step, micro_step, accelerator.process_index, "cpu")
            x0 = batch["waveforms"].to(accelerator.device)  # (B, C, T) in [-1, 1]
            with window.micro_step(micro_step):
                terms, _ = diffusion_loss_terms(
                    model, objective, x0, generator, regularizers=regularizers, autocast=accelerator.autocast
                )
                terms["loss"] = total_loss(terms, regularizers.weights)
                window.backward(terms["loss"])
            for name, value in terms.items():
                logs[name] = logs.get(name, 0.0) + value.detach() / accumulation

        # 4a. Optimizer step (skipped together on every process when a loss of the window was not finite)
        logs.update(optimizer_step(window, guard, model, optimizer, lr_scheduler, ema, args.max_grad_norm))
        global_step += 1
        progress.update(1)
        logs = {k: float(v) for k, v in logs.items()}  # one transfer per optimizer step, for the trackers
        step_seconds.append(time.perf_counter() - step_start)
        counts = dataloader.counts()  # over the workers, carried through checkpoints
        logs.update(
            lr=lr_scheduler.get_last_lr()[0],
            nonfinite_steps=guard.total,
            skipped_clips=counts.get("skipped", 0),
            padded_clips=counts.get("padded", 0),
        )
        progress.set_postfix(loss=f"{logs['loss']:.4f}")
        accelerator.log(logs, step=global_step)

        # 4b. Checkpoint and validation clips
        save_checkpoint_if_due(
            checkpointer, global_step, dataloader, guard, args.checkpointing_steps, args.max_train_steps
        )
        if main and global_step % args.validation_steps == 0:
            clips = (args.num_validation_samples, args.validation_inference_steps, args.sample_rate)
            validate(accelerator, raw_model, ema, *clips, global_step, output_dir)
    progress.close()

    # 5. Final model: EMA weights, stock pipeline export, card, push
    accelerator.wait_for_everyone()
    result = None
    if main:
        if ema is not None:
            ema.copy_to(raw_model.parameters())
        raw_model.eval()
        metrics = {k: v for k, v in logs.items() if k != "lr"}
        timed = step_seconds[1:] or step_seconds  # the first step includes one-off warm-up
        metrics.update(
            global_step=global_step,
            train_seconds=round(time.time() - start_time, 1),
            seconds_per_step=round(float(np.median(timed)), 4) if timed else None,
            skipped_clips=logs.get("skipped_clips", 0),
            padded_clips=logs.get("padded_clips", 0),
            skipped_reasons=dataloader.skip_reasons()[:10],
            source_sample_rates=source_sample_rates(dataloader.counts()),
        )
        rates = metrics["source_sample_rates"]
        logger.info(f"audio read: clips per source sample rate {rates} (resampled to {args.sample_rate} Hz)")
        result = write_outputs(
            raw_model,
            metrics,
            outputs,
            public_args(args),
            regularizers,
            unet_config=args.unet_config,
            sample_rate=args.sample_rate,
            dataset_name=args.dataset_name,
            dataset_description=args.dataset_name or args.train_data_dir or EMBEDDED_SOUNDS,
        )
        logger.info(f"final metrics: {metrics}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


@torch.no_grad()
def validate(
    accelerator, raw_model, ema, num_clips: int, inference_steps: int, sample_rate: int, step: int, output_dir: Path
) -> list[Path]:
    """Generate `num_clips` validation clips with the (EMA) weights: WAVs and a spectrogram PNG in `validation/`, and
    both in tensorboard (`add_audio`, a figure)."""
    from ..evaluation.plotting import spectrogram_figure
    from ..pipelines.audio import audio_pipeline, generate_audio, write_wavs
    from .loop import ema_weights, log_audio, log_figure

    raw_model.eval()
    with ema_weights(ema, raw_model):
        pipe = audio_pipeline(raw_model)
        clips = generate_audio(pipe, num_clips, inference_steps, seed=0)
    raw_model.train()
    folder = output_dir / "validation"
    paths = write_wavs(clips, sample_rate, folder, prefix=f"step-{step:07d}")
    figure = spectrogram_figure(clips, sample_rate, title=f"step {step}")
    figure.savefig(folder / f"step-{step:07d}-spectrogram.png", dpi=90)
    log_figure(accelerator, "validation/spectrograms", figure, step)
    log_audio(accelerator, "validation/audio", clips, sample_rate, step)
    return paths


def write_outputs(
    model: UNet1DModel,
    metrics: dict,
    outputs: Outputs,
    training_args: dict,
    regularizers: SpectralRegularizers,
    *,
    unet_config: str,
    sample_rate: int,
    dataset_name: str | None,
    dataset_description: str,
) -> Path:
    """Save the stock `DanceDiffusionPipeline` (UNet + IPNDMScheduler + card) in `<outputs.output_dir>/pipeline`,
    metrics.json, and push. `training_args`: the flags as the card shows them (`records.public_args`)."""
    from ..pipelines.audio import audio_pipeline
    from ..pipelines.model_cards import audio_pipeline_model_card, regularizer_description
    from .loop import push_output

    output_dir = Path(outputs.output_dir)
    pipeline_dir = output_dir / "pipeline"
    audio_pipeline(model.to("cpu")).save_pretrained(pipeline_dir, safe_serialization=True)
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    components = {
        "unet": f"UNet1DModel {unet_config} ({parameters:.2f}M params, {model.config.in_channels} channel(s), "
        f"{model.config.sample_size} samples at {sample_rate} Hz)",
        "scheduler": "IPNDMScheduler (v-objective, alpha = cos(pi t / 2), sigma = sin(pi t / 2))",
        "regularisers": regularizer_description(regularizers, "the predicted clean waveform"),
    }
    card = audio_pipeline_model_card(
        outputs.hub_model_id or output_dir.resolve().name,
        training_args=training_args,
        metrics=metrics,
        components=components,
        datasets=[dataset_name] if dataset_name else None,
        dataset_description=dataset_description,
        sample_rate=sample_rate,
    )
    card.save(pipeline_dir / "README.md")
    write_json(output_dir / "metrics.json", metrics)
    push_output(outputs, pipeline_dir)
    return pipeline_dir
