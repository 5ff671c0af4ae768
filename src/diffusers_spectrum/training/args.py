"""Argument groups shared by every trainer (diffusers' flag names), so the VAE, DiT, pixel-space and audio trainers
spell and check the common flags the same way. Each trainer adds its own groups and `parser.set_defaults(...)`."""

import argparse
import math
from pathlib import Path

from ..diffusion.loss import SpectralRegularizers


__all__ = [
    "ListArgumentError",
    "add_data_args",
    "add_optimization_args",
    "add_output_args",
    "add_regularizer_args",
    "check_finite",
    "check_nonnegative",
    "check_positive",
    "check_regularizers",
    "finish_common_args",
    "parse_float_list",
    "parse_int_list",
    "spectral_regularizers",
]


class ListArgumentError(argparse.ArgumentTypeError, ValueError):
    """A comma-separated list flag that does not parse (argparse shows the message)."""


def _parse_list(value, cast, kind: str) -> tuple:
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [item.strip() for item in str(value).split(",") if item.strip()]
    if not items:
        raise ListArgumentError(f"expected a comma-separated list of {kind}s such as '0,8,10,12', got {value!r}.")
    try:
        return tuple(cast(item) for item in items)
    except (TypeError, ValueError):
        raise ListArgumentError(f"expected a comma-separated list of {kind}s, got {value!r}.") from None


def parse_int_list(value) -> tuple[int, ...]:
    """`"0,8,10,12"` -> `(0, 8, 10, 12)`; use as an argparse `type`."""
    return _parse_list(value, int, "integer")


def parse_float_list(value) -> tuple[float, ...]:
    """`"0.5,1e-3"` -> `(0.5, 0.001)`; use as an argparse `type`."""
    return _parse_list(value, float, "number")


def add_data_args(parser: argparse.ArgumentParser, *, images: bool = True) -> argparse._ArgumentGroup:
    """`--dataset_name`, `--dataset_split`, `--train_data_dir`, streaming and (for images) resolution / crop / flip."""
    g = parser.add_argument_group("data")
    g.add_argument("--dataset_name", type=str, default=None, help="Hub dataset id (streamed). Default: embedded data.")
    g.add_argument("--dataset_split", type=str, default="train", help="Split of the dataset to train on.")
    g.add_argument("--train_data_dir", type=str, default=None, help="Local folder of files, or parquet / arrow files.")
    g.add_argument("--no_streaming", action="store_true", help="Load the dataset fully instead of streaming it.")
    g.add_argument("--shuffle_buffer_size", type=int, default=1000, help="Shuffle buffer of streamed datasets.")
    g.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=0,
        help="Decoding worker processes per process, each on its own share of the data (0: decode in the training "
        "process). A streamed dataset needs at least processes x workers shards. Resume with the same value for "
        "an exact resume.",
    )
    if images:
        g.add_argument("--image_column", type=str, default="image", help="Column holding the images.")
        g.add_argument(
            "--reduced_jpeg_decode",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="Decode JPEGs at least twice --resolution at 1/2, 1/4 or 1/8 scale before the exact resize "
            "(several times faster; differs from a full decode about as much as bilinear from bicubic resizing).",
        )
        g.add_argument(
            "--resolution", type=int, default=256, help="Image side: shorter-side resize + crop. (%(default)s)"
        )
        g.add_argument("--center_crop", action="store_true", help="Centre crop instead of a random crop.")
        g.add_argument(
            "--random_flip",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="Random horizontal flip (p = 0.5).",
        )
    return g


def add_optimization_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Batch, steps, AdamW, lr schedule, clipping, precision, seed, EMA and the non-finite guard."""
    g = parser.add_argument_group("optimisation")
    g.add_argument("--train_batch_size", type=int, default=8, help="Batch size per device. (%(default)s)")
    g.add_argument("--max_train_steps", type=int, default=1000, help="Optimizer steps. (%(default)s)")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    g.add_argument("--learning_rate", type=float, default=1e-4, help="Peak learning rate. (%(default)s)")
    g.add_argument("--scale_lr", action="store_true", help="Multiply the lr by batch x accumulation x processes.")
    g.add_argument(
        "--lr_scheduler",
        type=str,
        default="constant",
        help='diffusers scheduler: "linear", "cosine", "constant", "constant_with_warmup", ... (%(default)s)',
    )
    g.add_argument("--lr_warmup_steps", type=int, default=0, help="Warm-up steps. (%(default)s)")
    g.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    g.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW beta2.")
    g.add_argument("--adam_weight_decay", type=float, default=0.0, help="AdamW weight decay. (%(default)s)")
    g.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon.")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm, 0 = off. (%(default)s)")
    g.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=("no", "fp16", "bf16"),
        help="Mixed precision (default: accelerate's config).",
    )
    g.add_argument(
        "--allow_tf32",
        action="store_true",
        help="Allow TF32 matmuls and convolutions on Ampere and newer GPUs (faster float32; no effect on CPU).",
    )
    g.add_argument(
        "--use_torch_compile",
        action="store_true",
        help="torch.compile the trained network (the first steps compile; checked at start-up).",
    )
    g.add_argument("--seed", type=int, default=0, help="Seed of initialisation, data order, noise and sampling.")
    g.add_argument("--use_ema", action="store_true", help="Keep an EMA of the weights; the EMA weights are exported.")
    g.add_argument("--ema_decay", type=float, default=0.9999, help="EMA decay. (%(default)s)")
    g.add_argument(
        "--max_nonfinite_steps",
        type=int,
        default=10,
        help="Stop after this many non-finite optimizer steps in a row (each is skipped and reported).",
    )
    return g


def add_output_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Output folder, checkpoints / resume, trackers, validation cadence and the Hub."""
    g = parser.add_argument_group("checkpoints, logging, outputs and the Hub")
    g.add_argument("--output_dir", type=str, default="output", help="Where everything is written. (%(default)s)")
    g.add_argument("--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint every N steps.")
    g.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints.")
    g.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help='"latest" or a checkpoint-<step> folder: continue from its step, data position and RNG.',
    )
    g.add_argument("--report_to", type=str, default="tensorboard", help='"tensorboard", "wandb", "all" or "none".')
    g.add_argument("--logging_dir", type=str, default="logs", help="Log folder, relative to --output_dir.")
    g.add_argument("--tracker_project_name", type=str, default=None, help="Tracker run name (default: the trainer's).")
    g.add_argument("--validation_steps", type=int, default=500, help="Validate every N steps. (%(default)s)")
    g.add_argument("--push_to_hub", action="store_true", help="Upload the output to the Hub at the end.")
    g.add_argument("--hub_model_id", type=str, default=None, help="Hub repo id (default: the output folder name).")
    g.add_argument("--hub_token", type=str, default=None, help="Hub token (default: the logged-in one; never saved).")
    g.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repo as private.")
    g.add_argument(
        "--hub_dry_run",
        action="store_true",
        help="With --push_to_hub: only list what would be uploaded (written to hub_upload.json).",
    )
    return g


def add_regularizer_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The spectral regularisers on the predicted clean sample (Fourier and wavelet losses): the same flags, with
    the same meaning, in every diffusion trainer."""
    g = parser.add_argument_group("spectral regularisers (on the predicted clean sample x0_hat)")
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
    g.add_argument("--wavelet", type=str, default="haar", help="Wavelet name (PyWavelets).")
    g.add_argument(
        "--spectral_loss_type", type=str, default="l1", choices=("l1", "l2"), help="Distance of the spectral losses."
    )
    g.add_argument(
        "--spectral_timestep_weighting",
        type=str,
        default="signal",
        choices=("none", "signal", "min_snr"),
        help="Per-sample weight of the spectral losses so very noisy steps do not dominate.",
    )
    g.add_argument("--spectral_snr_gamma", type=float, default=5.0, help="gamma of min_snr weighting.")
    return g


def spectral_regularizers(args: argparse.Namespace) -> SpectralRegularizers:
    """The spectral regularisers the flags ask for (`add_regularizer_args`, and the audio trainer's `--stft_*`): the
    keyword arguments of each enabled loss, the loss weights and the timestep weighting, for
    `diffusion.loss.diffusion_loss_terms`."""
    fourier = None if args.fourier_weight == 0 else dict(
        amplitude_weight=args.fourier_amplitude_weight, phase_weight=args.fourier_phase_weight,
        log_amplitude=args.fourier_log_amplitude, frequency_power=args.fourier_frequency_power,
        loss_type=args.spectral_loss_type,
    )  # fmt: skip
    wavelet = None if args.wavelet_weight == 0 else dict(
        levels=args.wavelet_levels, level_weights=args.wavelet_level_weights, wavelet=args.wavelet,
        loss_type=args.spectral_loss_type,
    )  # fmt: skip
    weights = {"fourier": args.fourier_weight, "wavelet": args.wavelet_weight}
    stft = None
    if hasattr(args, "stft_weight"):
        weights["stft"] = args.stft_weight
        stft = None if args.stft_weight == 0 else dict(
            fft_sizes=tuple(args.stft_fft_sizes), hop_lengths=tuple(args.stft_hop_lengths),
            win_lengths=tuple(args.stft_win_lengths), window=args.stft_window,
        )  # fmt: skip
    return SpectralRegularizers(
        fourier, wavelet, stft, weights, args.spectral_timestep_weighting, args.spectral_snr_gamma
    )


def check_positive(args: argparse.Namespace, names) -> None:
    """Every named flag (that exists) is a positive integer."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value}.")


def check_nonnegative(args: argparse.Namespace, names) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 0:
            raise ValueError(f"--{name} must be >= 0, got {value}.")


def check_finite(args: argparse.Namespace) -> None:
    """Every number flag (and every entry of a number-list flag) is finite: `nan` or `inf` is an error naming the
    flag, not a run whose every step is skipped as non-finite."""
    for name, value in vars(args).items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ValueError(f"--{name} must be a finite number, got {value}.")


# Weights of loss terms: >= 0 (a negative weight would reward the mismatch the term measures).
REGULARIZER_WEIGHTS = ("fourier_weight", "fourier_amplitude_weight", "fourier_phase_weight", "wavelet_weight")


def check_regularizers(args: argparse.Namespace) -> None:
    """The spectral regulariser flags of `add_regularizer_args`: non-negative weights (level weights included, one
    per `--wavelet_levels`), a positive min-SNR gamma and at least one DWT level."""
    check_nonnegative(args, REGULARIZER_WEIGHTS)
    levels = getattr(args, "wavelet_levels", None)
    if levels is not None and levels < 1:
        raise ValueError(f"--wavelet_levels must be a positive integer, got {levels}.")
    level_weights = getattr(args, "wavelet_level_weights", None)
    if level_weights is not None:
        if any(weight < 0 for weight in level_weights):
            raise ValueError(
                f"--wavelet_level_weights must be >= 0 (one weight per level), got {list(level_weights)}."
            )
        if levels is not None and len(level_weights) != levels:
            raise ValueError(
                f"--wavelet_level_weights has {len(level_weights)} entries but --wavelet_levels is {levels}; pass one "
                "weight per level, finest first."
            )
    gamma = getattr(args, "spectral_snr_gamma", None)
    if gamma is not None and not gamma > 0:
        raise ValueError(f"--spectral_snr_gamma must be positive (min-SNR weighting), got {gamma}.")


def finish_common_args(args: argparse.Namespace, tracker_project_name: str) -> argparse.Namespace:
    """The checks and defaults every trainer shares (after its own defaults are filled)."""
    if getattr(args, "dataset_name", None) is not None and getattr(args, "train_data_dir", None) is not None:
        raise ValueError("Pass either --dataset_name or --train_data_dir, not both.")
    check_finite(args)
    check_regularizers(args)
    check_positive(
        args,
        ("train_batch_size", "max_train_steps", "gradient_accumulation_steps", "checkpointing_steps",
         "validation_steps", "resolution", "max_nonfinite_steps", "checkpoints_total_limit"),
    )  # fmt: skip
    check_nonnegative(
        args, ("fourier_weight", "wavelet_weight", "max_grad_norm", "lr_warmup_steps", "dataloader_num_workers")
    )
    if getattr(args, "ema_decay", 0.0) is not None and not 0.0 <= args.ema_decay < 1.0:
        raise ValueError(f"--ema_decay must be in [0, 1), got {args.ema_decay}.")
    if args.tracker_project_name is None:
        args.tracker_project_name = tracker_project_name
    if args.push_to_hub and args.hub_model_id is None:
        args.hub_model_id = Path(args.output_dir).resolve().name
    if getattr(args, "wavelet_level_weights", None) is not None:
        args.wavelet_level_weights = list(args.wavelet_level_weights)
    return args
