"""The waveform diffusion loop: `train_audio(args)` trains diffusers' `UNet1DModel` in the Dance Diffusion
architecture on fixed-length clips (unconditional), optionally with the spectral regularisers (Fourier, wavelet,
multi-resolution STFT) on the predicted clean waveform, and exports a stock `DanceDiffusionPipeline` folder that
`DiffusionPipeline.from_pretrained` loads with diffusers alone. `examples/train_audio_diffusion.py` and
`diffusers-spectrum train-audio` only parse flags (`parse_args`) and call it.

The objective is the one `DanceDiffusionPipeline` samples with. Its `IPNDMScheduler` (diffusers,
`schedulers/scheduling_ipndm.py`) builds `sigma_s = sin(pi s / 2)^2`, `alpha_s = sqrt(1 - sigma_s^2)` on a uniform
grid `s`, feeds the model the *angle* `t = atan2(sigma_s, alpha_s) * 2 / pi` in `[0, 1]` (so `alpha = cos(pi t / 2)`,
`sigma = sin(pi t / 2)` exactly), and treats the output `m` through `eps_hat = sigma x_t + alpha m` and
`x0_hat = (x_t - sigma eps_hat) / alpha` (a DDIM step). Both identities hold exactly when `m` is the velocity

    x_t = alpha x0 + sigma eps,    v = alpha eps - sigma x0,    alpha = cos(pi t / 2), sigma = sin(pi t / 2)

(Salimans & Ho 2022, Sec. 4 and App. D, the cosine-angle form that v-diffusion / Dance Diffusion train with),
because `alpha^2 + sigma^2 = 1`. So the UNet is trained with `t ~ U(0, 1)` (as a float, the Fourier time
embedding's input) on `||m - v||^2`, and `x0_hat = alpha x_t - sigma m` feeds the regularisers. The pipeline feeds
`randn` noise of unit variance and clamps the result to [-1, 1]: the data are waveforms in [-1, 1], unscaled.

The output folder holds `pipeline/` (the stock `DanceDiffusionPipeline`: `unet/` + `scheduler/` + model card),
`metrics.json` (losses, skipped / padded clip counts, seconds per step), `training_args.json`, `validation/`
(WAV files + spectrogram PNGs), checkpoints (`checkpoint-<step>`) and tensorboard logs (one scalar per loss term,
`add_audio` clips, spectrogram figures).

Importing this module (for its flags: `build_parser`, `parse_args`) loads neither diffusers nor accelerate nor
datasets; the functions that need them import them.
"""

from __future__ import annotations

import argparse
import logging
import math
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
from ..pipelines.audio import audio_pipeline, generate_audio, write_wavs
from ..utils.records import public_args, write_json
from .args import (
    add_data_args,
    add_optimization_args,
    add_output_args,
    add_regularizer_args,
    check_nonnegative,
    check_positive,
    finish_common_args,
    parse_int_list,
    spectral_regularizers,
)
from .checkpointing import Checkpointer
from .loop import create_ema, ema_weights, log_figure, step_generator


if TYPE_CHECKING:
    from diffusers import UNet1DModel
    from matplotlib.figure import Figure


__all__ = [
    "AUDIO_UNET_PRESETS",
    "build_audio_unet",
    "build_parser",
    "check_sample_size",
    "parse_args",
    "train_audio",
]

logger = logging.getLogger(__name__)

# Flags a resume must keep (`loop.learning_settings`): they change what the UNet learns.
RESUME_SETTINGS = (
    "sample_rate", "sample_size", "channels", "unet_config", "pretrained_unet", "stft_weight", "stft_fft_sizes",
    "fourier_weight", "wavelet_weight", "wavelet_levels", "wavelet",
    "spectral_loss_type", "fourier_log_amplitude",
)  # fmt: skip

FOURIER_TIME_CHANNELS = 16  # Dance Diffusion's Fourier time features, concatenated to the input (extra_in_channels)

# UNet1DModel sizes. `dance`: the block widths of harmonai's published Dance Diffusion checkpoints
# (maestro-150k unet/config.json: 128, 128, 256, 256 then 512 x 9, 16 Fourier time channels, 65536 samples),
# attention in the four deepest blocks (harmonai's DiffusionUncond uses n_attn_layers=4). `small`: the CPU demo and
# ablation size; `tiny`: tests. Attention needs >= 32 channels (one head per 32).
AUDIO_UNET_PRESETS = {
    "tiny": {"block_out_channels": (16, 32, 32), "num_attention_blocks": 1, "sample_size": 1024},
    "small": {"block_out_channels": (16, 16, 32, 32, 64), "num_attention_blocks": 1, "sample_size": 4096},
    "dance": {
        "block_out_channels": (128, 128, 256, 256) + (512,) * 9,
        "num_attention_blocks": 4,
        "sample_size": 65536,
    },
}


def build_audio_unet(preset: str, sample_size: int, sample_rate: int, channels: int) -> UNet1DModel:
    """A fresh `UNet1DModel` in the Dance Diffusion layout: Fourier time features (16 channels, concatenated to the
    input), a `DownBlock1DNoSkip` first block, `DownBlock1D` blocks, `AttnDownBlock1D` in the deepest
    `num_attention_blocks`, the mirrored up path and `UNetMidBlock1D`.

    Args:
        preset: a key of `AUDIO_UNET_PRESETS`.
        sample_size: clip length in samples (stored in the config; the pipeline's default length).
        sample_rate: samples per second (stored in the config; the pipeline's time unit).
        channels: 1 (mono) or 2 (stereo).
    """
    from diffusers import UNet1DModel

    if preset not in AUDIO_UNET_PRESETS:
        raise ValueError(f"unknown audio UNet preset {preset!r}; choose one of {sorted(AUDIO_UNET_PRESETS)}.")
    widths = AUDIO_UNET_PRESETS[preset]["block_out_channels"]
    attention = AUDIO_UNET_PRESETS[preset]["num_attention_blocks"]
    plain = len(widths) - 1 - attention
    down = ("DownBlock1DNoSkip",) + ("DownBlock1D",) * plain + ("AttnDownBlock1D",) * attention
    up = ("AttnUpBlock1D",) * attention + ("UpBlock1D",) * plain + ("UpBlock1DNoSkip",)
    model = UNet1DModel(
        sample_size=sample_size, sample_rate=sample_rate, in_channels=channels, out_channels=channels,
        extra_in_channels=FOURIER_TIME_CHANNELS, time_embedding_type="fourier",
        time_embedding_dim=FOURIER_TIME_CHANNELS, flip_sin_to_cos=True, use_timestep_embedding=False,
        block_out_channels=widths, down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock1D",
    )  # fmt: skip
    check_sample_size(model, sample_size)
    return model


def check_sample_size(model: UNet1DModel, sample_size: int) -> None:
    """`sample_size` must be a multiple of the UNet's down-scaling `2 ** (len(up_blocks) + 1)` (the blocks and the
    mid block each halve the length), so training crops pass through unpadded and `DanceDiffusionPipeline` generates
    exactly `sample_size` samples."""
    factor = 2 ** (len(model.up_blocks) + 1)
    if sample_size % factor or sample_size < 3 * factor:
        raise ValueError(
            f"--sample_size {sample_size} does not fit this UNet: it must be a multiple of {factor} "
            f"(2 ** (blocks + 1)) and at least {3 * factor}; "
            f"try {max(3 * factor, round(sample_size / factor) * factor)}."
        )


# ----------------------------------------------------------------------------------------------------------------
# Sampling, WAVs, spectrograms


def spectrogram_figure(clips: np.ndarray, sample_rate: int, title: str = "") -> Figure:
    """Log-magnitude spectrograms (dB) of up to four `(C, T)` clips (first channel), one panel each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = min(4, len(clips))
    fig = Figure(figsize=(3.2 * count, 2.6))
    FigureCanvasAgg(fig)
    for i in range(count):
        ax = fig.add_subplot(1, count, i + 1)
        signal = clips[i][0]
        fft_size = min(512, 2 ** int(math.log2(len(signal))) // 2)
        ax.specgram(signal, NFFT=fft_size, Fs=sample_rate, noverlap=fft_size * 3 // 4, scale="dB", cmap="magma")
        ax.set_xlabel("s")
        ax.set_ylabel("Hz" if i == 0 else "")
        ax.set_title(f"{title} {i}".strip(), fontsize=8)
    fig.tight_layout()
    return fig


def log_audio(accelerator, tag: str, clips: np.ndarray, sample_rate: int, step: int) -> None:
    """Log `(N, C, T)` clips (first channel) to tensorboard with `add_audio`."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for i, clip in enumerate(clips):
                tracker.writer.add_audio(f"{tag}/{i}", torch.from_numpy(clip[:1]), step, sample_rate=sample_rate)


# ----------------------------------------------------------------------------------------------------------------
# Arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a waveform diffusion UNet1DModel (Dance Diffusion) with spectral regularisers and export "
        "a stock DanceDiffusionPipeline."
    )
    add_data_args(parser, images=False)
    g = parser.add_argument_group("audio")
    g.add_argument("--audio_column", type=str, default="audio", help="Column holding the audio. (%(default)s)")
    g.add_argument("--sample_rate", type=int, default=16000, help="Resample every clip to this rate. (%(default)s)")
    g.add_argument(
        "--sample_size", type=int, default=None, help="Crop length in samples (default: the preset's; multiple of "
        "2 ** (blocks + 1))."
    )  # fmt: skip
    g.add_argument("--channels", type=int, default=1, choices=(1, 2), help="1 = mono (downmix), 2 = stereo.")
    g.add_argument(
        "--too_short", type=str, default="pad", choices=("pad", "skip"),
        help="Clips shorter than --sample_size: zero-pad at the end (counted) or skip (counted).",
    )  # fmt: skip
    g = parser.add_argument_group("model")
    g.add_argument("--unet_config", type=str, default="dance", choices=sorted(AUDIO_UNET_PRESETS),
                   help="UNet1DModel size: dance (Dance Diffusion), small (CPU demo), tiny (tests).")  # fmt: skip
    g.add_argument("--pretrained_unet", type=str, default=None, help="A UNet1DModel folder to fine-tune.")
    add_optimization_args(parser)
    add_output_args(parser)
    g = parser.add_argument_group("validation")
    g.add_argument("--num_validation_samples", type=int, default=4, help="Clips generated at each validation.")
    g.add_argument("--validation_inference_steps", type=int, default=50, help="IPNDM steps for validation clips.")
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
    args = build_parser().parse_args(argv)
    args = finish_common_args(args, "train_audio")
    check_positive(args, ("sample_rate", "sample_size", "num_validation_samples", "validation_inference_steps"))
    check_nonnegative(args, ("stft_weight",))
    if args.sample_size is None:
        args.sample_size = AUDIO_UNET_PRESETS[args.unet_config]["sample_size"]
    stft = (args.stft_fft_sizes, args.stft_hop_lengths, args.stft_win_lengths)
    if all(v is None for v in stft):
        fitted = fit_stft_resolutions(args.sample_size, DEFAULT_FFT_SIZES, DEFAULT_HOP_LENGTHS, DEFAULT_WIN_LENGTHS)
        args.stft_fft_sizes, args.stft_hop_lengths, args.stft_win_lengths = (list(v) for v in fitted)
    elif any(v is None for v in stft):
        raise ValueError("pass all three of --stft_fft_sizes, --stft_hop_lengths and --stft_win_lengths, or none.")
    else:
        args.stft_fft_sizes, args.stft_hop_lengths, args.stft_win_lengths = (list(v) for v in stft)
        if max(args.stft_fft_sizes) // 2 >= args.sample_size:
            raise ValueError(
                f"--stft_fft_sizes {args.stft_fft_sizes}: the largest FFT needs more than "
                f"{max(args.stft_fft_sizes) // 2} samples but --sample_size is {args.sample_size}; pass smaller "
                "FFT sizes."
            )
    if args.wavelet_weight > 0 and args.sample_size < 2**args.wavelet_levels:
        raise ValueError(f"--wavelet_levels {args.wavelet_levels} needs --sample_size >= {2**args.wavelet_levels}.")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Training


def _data_source(args) -> str:
    return args.dataset_name or args.train_data_dir or "the embedded sounds (diffusers_spectrum/assets/audio)"


def train_audio(args: argparse.Namespace) -> Path:
    """Train as `args` (from `parse_args`) says; returns the exported `DanceDiffusionPipeline` folder."""
    from diffusers import UNet1DModel

    from ..data.audio import AudioReader, AudioTransform, source_sample_rates
    from ..data.sources import load_audio_dataset
    from .loop import (
        AccumulationWindow,
        compile_model,
        learning_settings,
        make_accelerator,
        make_optimizer,
        optimizer_step,
        resume_training,
        save_checkpoint_if_due,
        train_dataloader,
    )

    # 1. Accelerator, logging, seeds
    start_time = time.time()
    output_dir = Path(args.output_dir)
    accelerator = make_accelerator(args, "train-audio")

    # 2. Model, EMA, optimizer
    if args.pretrained_unet is not None:
        model = UNet1DModel.from_pretrained(args.pretrained_unet)
        if model.config.in_channels != args.channels:
            raise ValueError(
                f"--pretrained_unet has {model.config.in_channels} channels but --channels is {args.channels}."
            )
        check_sample_size(model, args.sample_size)
        model.register_to_config(sample_size=args.sample_size, sample_rate=args.sample_rate)
    else:
        model = build_audio_unet(args.unet_config, args.sample_size, args.sample_rate, args.channels)
    model.train()
    compile_model(model, args.use_torch_compile)
    ema = create_ema(model, args.ema_decay) if args.use_ema else None
    optimizer, lr_scheduler = make_optimizer(model.parameters(), args, accelerator)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    raw_model = accelerator.unwrap_model(model)
    checkpointer = Checkpointer(
        accelerator, output_dir, {"unet": model}, {"unet": ema} if ema is not None else None,
        args.checkpoints_total_limit, settings=learning_settings(args, RESUME_SETTINGS),
    )  # fmt: skip
    objective = DiffusionObjective("v_cosine")
    regularizers = spectral_regularizers(args)
    logger.info(
        f"UNet1DModel {args.unet_config}: {sum(p.numel() for p in raw_model.parameters()) / 1e6:.2f}M params, clips "
        f"({args.channels}, {args.sample_size}) at {args.sample_rate} Hz, regularisers "
        f"{ {k: v for k, v in regularizers.weights.items() if v} or 'none' }"
    )

    # 3. Resume, data
    global_step, data_state, guard = resume_training(
        checkpointer, args.resume_from_checkpoint, args.max_nonfinite_steps
    )
    dataset = load_audio_dataset(
        args.dataset_name, args.train_data_dir, args.dataset_split, args.audio_column,
        streaming=not args.no_streaming,
    )  # fmt: skip
    transform = AudioTransform(
        args.sample_rate, args.sample_size, args.channels, random_crop=True, too_short=args.too_short, seed=args.seed
    )
    dataloader = train_dataloader(dataset, AudioReader(transform, args.audio_column), args, accelerator, data_state)
    data_iterator = iter(dataloader)

    # 4. Loop: one optimizer step = `gradient_accumulation_steps` micro-batches
    progress = tqdm(total=args.max_train_steps, initial=global_step, desc="train audio",
                    disable=not accelerator.is_main_process)  # fmt: skip
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
        logs.update(lr=lr_scheduler.get_last_lr()[0], nonfinite_steps=guard.total,
                    skipped_clips=counts.get("skipped", 0), padded_clips=counts.get("padded", 0))  # fmt: skip
        progress.set_postfix(loss=f"{logs['loss']:.4f}")
        accelerator.log(logs, step=global_step)

        # 4b. Checkpoint and validation clips
        save_checkpoint_if_due(checkpointer, args, global_step, dataloader, guard)
        if accelerator.is_main_process and global_step % args.validation_steps == 0:
            validate(args, accelerator, raw_model, ema, global_step, output_dir)
    progress.close()

    # 5. Final model: EMA weights, stock pipeline export, card, push
    accelerator.wait_for_everyone()
    result = None
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(raw_model.parameters())
        raw_model.eval()
        metrics = {k: v for k, v in logs.items() if k != "lr"}
        timed = step_seconds[1:] or step_seconds  # the first step includes one-off warm-up
        metrics.update(
            global_step=global_step, train_seconds=round(time.time() - start_time, 1),
            seconds_per_step=round(float(np.median(timed)), 4) if timed else None,
            skipped_clips=logs.get("skipped_clips", 0), padded_clips=logs.get("padded_clips", 0),
            skipped_reasons=dataloader.skip_reasons()[:10],
            source_sample_rates=source_sample_rates(dataloader.counts()),
        )  # fmt: skip
        logger.info(
            "audio read: clips per source sample rate %s (resampled to %d Hz where different)",
            metrics["source_sample_rates"], args.sample_rate,
        )  # fmt: skip
        result = write_outputs(args, raw_model, metrics, output_dir)
        logger.info(f"final metrics: {metrics}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


@torch.no_grad()
def validate(args, accelerator, raw_model, ema, step: int, output_dir: Path) -> list[Path]:
    """Generate validation clips with the (EMA) weights: WAVs and a spectrogram PNG in `validation/`, and both in
    tensorboard (`add_audio`, a figure)."""
    raw_model.eval()
    with ema_weights(ema, raw_model):
        clips = generate_audio(audio_pipeline(raw_model), args.num_validation_samples,
                               args.validation_inference_steps, seed=0)  # fmt: skip
    raw_model.train()
    folder = output_dir / "validation"
    paths = write_wavs(clips, args.sample_rate, folder, prefix=f"step-{step:07d}")
    figure = spectrogram_figure(clips, args.sample_rate, title=f"step {step}")
    figure.savefig(folder / f"step-{step:07d}-spectrogram.png", dpi=90)
    log_figure(accelerator, "validation/spectrograms", figure, step)
    log_audio(accelerator, "validation/audio", clips, args.sample_rate, step)
    return paths


def write_outputs(args, model: UNet1DModel, metrics: dict, output_dir: Path) -> Path:
    """Save the stock `DanceDiffusionPipeline` (UNet + IPNDMScheduler + card), metrics.json, and push."""
    from diffusers import DanceDiffusionPipeline, IPNDMScheduler

    from ..pipelines.model_cards import audio_pipeline_model_card
    from .loop import push_output

    pipeline_dir = output_dir / "pipeline"
    pipe = DanceDiffusionPipeline(unet=model.to("cpu"), scheduler=IPNDMScheduler())
    pipe.save_pretrained(pipeline_dir, safe_serialization=True)
    repo_id = args.hub_model_id or output_dir.resolve().name
    regularizers = spectral_regularizers(args)
    components = {
        "unet": f"UNet1DModel {args.unet_config} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
        f"{args.channels} channel(s), {args.sample_size} samples at {args.sample_rate} Hz)",
        "scheduler": "IPNDMScheduler (v-objective, alpha = cos(pi t / 2), sigma = sin(pi t / 2))",
        "regularisers": ", ".join(k for k, v in regularizers.weights.items() if v) or "none",
    }
    card = audio_pipeline_model_card(
        repo_id, training_args=public_args(args), metrics=metrics, components=components,
        datasets=[args.dataset_name] if args.dataset_name else None, dataset_description=_data_source(args),
        sample_rate=args.sample_rate,
    )  # fmt: skip
    card.save(pipeline_dir / "README.md")
    write_json(output_dir / "metrics.json", metrics)
    push_output(args, pipeline_dir)
    return pipeline_dir
