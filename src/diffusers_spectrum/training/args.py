"""The flag groups every trainer shares (diffusers' flag names), the small frozen settings built from them once
(`Optimization`, `Outputs`, `Loading`: what the loop helpers take), and the checks every trainer runs. Each trainer
adds its own groups and `parser.set_defaults(...)`; flags that other commands take too are defined once in
`utils.flags`."""

import argparse
import dataclasses
import json
import math
from pathlib import Path

from ..diffusion.loss import SpectralRegularizers
from ..utils.flags import add_flags, parse_float_list
from ..utils.records import public_args


__all__ = [
    "Loading",
    "Optimization",
    "Outputs",
    "add_data_args",
    "add_optimization_args",
    "add_output_args",
    "add_regularizer_args",
    "add_unset_flags",
    "check_finite",
    "check_nonnegative",
    "check_positive",
    "check_regularizers",
    "dry_run",
    "finish_common_args",
    "spectral_regularizers",
]


class _FromFlags:
    """`Settings.of(args)`: the dataclass's fields read from the resolved flags (same names)."""

    @classmethod
    def of(cls, args: argparse.Namespace):
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class Optimization(_FromFlags):
    """Batch, steps, AdamW, lr schedule, clipping, precision, GPU switches, seed, EMA and the non-finite guard (the
    flags of `add_optimization_args`, whose defaults these are)."""

    train_batch_size: int = 8
    max_train_steps: int = 1000
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    scale_lr: bool = False
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str | None = None
    allow_tf32: bool = False
    use_torch_compile: bool = False
    seed: int = 0
    use_ema: bool = False
    ema_decay: float = 0.9999
    max_nonfinite_steps: int = 10


@dataclasses.dataclass(frozen=True)
class Outputs(_FromFlags):
    """Output folder, checkpoints, trackers, validation cadence and the Hub (the flags of `add_output_args`)."""

    output_dir: str = "output"
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    report_to: str = "tensorboard"
    logging_dir: str = "logs"
    tracker_project_name: str | None = None
    validation_steps: int = 500
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = dataclasses.field(default=None, repr=False)
    hub_private_repo: bool = False
    hub_dry_run: bool = False


@dataclasses.dataclass(frozen=True)
class Loading(_FromFlags):
    """How the training loader batches and decodes (`loop.train_dataloader`)."""

    train_batch_size: int = 8
    seed: int = 0
    dataloader_num_workers: int = 0
    shuffle_buffer_size: int = 1000


def _default(settings, name: str):
    return next(field.default for field in dataclasses.fields(settings) if field.name == name)


def add_data_args(parser: argparse.ArgumentParser, *, images: bool = True) -> argparse._ArgumentGroup:
    """Where the data comes from, streaming and decoding workers, and (for images) resolution / crop / flip."""
    g = parser.add_argument_group("data")
    add_flags(g, "--dataset_name", "--dataset_split", "--train_data_dir", "--no_streaming")
    g.add_argument(
        "--shuffle_buffer_size",
        type=int,
        default=_default(Loading, "shuffle_buffer_size"),
        help="Shuffle buffer of streamed datasets.",
    )
    add_flags(g, "--dataloader_num_workers")
    if images:
        add_flags(g, "--image_column", "--reduced_jpeg_decode", "--resolution")
        g.add_argument("--center_crop", action="store_true", help="Centre crop instead of a random crop.")
        g.add_argument(
            "--random_flip", action=argparse.BooleanOptionalAction, default=None, help="Random horizontal flip."
        )
    return g


def add_optimization_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Batch, steps, AdamW, lr schedule, clipping, precision, seed, EMA and the non-finite guard."""
    g = parser.add_argument_group("optimisation")
    for name, kind, text in (
        ("train_batch_size", int, "Batch size per device."),
        ("max_train_steps", int, "Optimizer steps."),
        ("gradient_accumulation_steps", int, "Micro-batches per optimizer step."),
        ("learning_rate", float, "Peak learning rate."),
        ("lr_warmup_steps", int, "Warm-up steps."),
        ("adam_beta1", float, "AdamW beta1."),
        ("adam_beta2", float, "AdamW beta2."),
        ("adam_weight_decay", float, "AdamW weight decay."),
        ("adam_epsilon", float, "AdamW epsilon."),
        ("max_grad_norm", float, "Gradient clipping norm, 0 = off."),
        ("ema_decay", float, "EMA decay."),
        ("max_nonfinite_steps", int, "Stop after this many non-finite optimizer steps in a row (each is skipped)."),
    ):
        g.add_argument(f"--{name}", type=kind, default=_default(Optimization, name), help=text + " (%(default)s)")
    g.add_argument(
        "--lr_scheduler",
        type=str,
        default=_default(Optimization, "lr_scheduler"),
        help='diffusers scheduler: "linear", "cosine", "constant", "constant_with_warmup", ... (%(default)s)',
    )
    g.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=("no", "fp16", "bf16"),
        help="Mixed precision (default: accelerate's config).",
    )
    for name, text in (
        ("scale_lr", "Multiply the lr by batch x accumulation x processes."),
        ("allow_tf32", "Allow TF32 matmuls and convolutions on Ampere and newer GPUs (faster float32; not on CPU)."),
        ("use_torch_compile", "torch.compile the trained network (the first steps compile; checked at start-up)."),
        ("use_ema", "Keep an EMA of the weights; the EMA weights are exported."),
    ):
        g.add_argument(f"--{name}", action="store_true", help=text)
    add_flags(g, "--seed")
    return g


def add_output_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Output folder, checkpoints / resume, trackers, validation cadence, the Hub and `--dry_run`."""
    g = parser.add_argument_group("checkpoints, logging, outputs and the Hub")
    add_flags(g, "--output_dir", output_dir=_default(Outputs, "output_dir"))
    for name, kind, text in (
        ("checkpointing_steps", int, "Save a resumable checkpoint every N steps."),
        ("checkpoints_total_limit", int, "Keep at most this many checkpoints."),
        ("resume_from_checkpoint", str, '"latest" or a checkpoint-<step> folder: continue from its step and data.'),
        ("report_to", str, '"tensorboard", "wandb", "all" or "none".'),
        ("logging_dir", str, "Log folder, relative to --output_dir."),
        ("tracker_project_name", str, "Tracker run name (default: the trainer's)."),
        ("validation_steps", int, "Validate every N steps."),
    ):
        g.add_argument(f"--{name}", type=kind, default=_default(Outputs, name), help=text + " (%(default)s)")
    add_flags(g, "--push_to_hub", "--hub_model_id", "--hub_token")
    g.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repo as private.")
    add_flags(g, "--hub_dry_run")
    g.add_argument(
        "--dry_run", action="store_true", help="Print the resolved configuration (recipe and presets filled) and exit."
    )
    return g


def add_unset_flags(group, *flags) -> None:
    """Flags that default to None, so that a recipe or preset fills the ones not given: `(name, type, help)` each,
    the type a callable, a tuple of choices, or `bool` for a `--flag / --no-flag` switch."""
    for name, kind, text in flags:
        if kind is bool:
            group.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=text)
        elif isinstance(kind, tuple):
            group.add_argument(f"--{name}", type=str, default=None, choices=kind, help=text)
        else:
            group.add_argument(f"--{name}", type=kind, default=None, help=text)


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
    fourier = wavelet = stft = None
    if args.fourier_weight:
        fourier = {
            "amplitude_weight": args.fourier_amplitude_weight,
            "phase_weight": args.fourier_phase_weight,
            "log_amplitude": args.fourier_log_amplitude,
            "frequency_power": args.fourier_frequency_power,
            "loss_type": args.spectral_loss_type,
        }
    if args.wavelet_weight:
        wavelet = {
            "levels": args.wavelet_levels,
            "level_weights": args.wavelet_level_weights,
            "wavelet": args.wavelet,
            "loss_type": args.spectral_loss_type,
        }
    weights = {"fourier": args.fourier_weight, "wavelet": args.wavelet_weight}
    if hasattr(args, "stft_weight"):
        weights["stft"] = args.stft_weight
        if args.stft_weight:
            stft = {
                "fft_sizes": tuple(args.stft_fft_sizes),
                "hop_lengths": tuple(args.stft_hop_lengths),
                "win_lengths": tuple(args.stft_win_lengths),
                "window": args.stft_window,
            }
    return SpectralRegularizers(
        fourier, wavelet, stft, weights, args.spectral_timestep_weighting, args.spectral_snr_gamma
    )


def dry_run(args: argparse.Namespace) -> None:
    """`--dry_run`: print the resolved configuration (every flag after the recipe and presets are filled, secrets
    dropped) as JSON; the trainer then returns without writing anything."""
    print(json.dumps(public_args(args), indent=2, sort_keys=True, default=str))


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
        (
            "train_batch_size",
            "max_train_steps",
            "gradient_accumulation_steps",
            "checkpointing_steps",
            "validation_steps",
            "resolution",
            "max_nonfinite_steps",
            "checkpoints_total_limit",
        ),
    )
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
