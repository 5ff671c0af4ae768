"""The command-line flags that several commands take, each defined once: its name, type, meaning and help. A command
adds the ones it takes with `add_flags(parser_or_group, "--seed", "--output_dir", ...)` and may give its own default
(`add_flags(group, "--resolution", resolution=32)`) or make a flag required. Standard library only: the command line
builds its parsers before anything heavy loads."""

import argparse


__all__ = ["FLAGS", "ListArgumentError", "add_flags", "parse_float_list", "parse_int_list"]


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


def _flag(help: str, *spellings: str, **keywords) -> tuple[tuple[str, ...], dict]:
    """One entry of `FLAGS`: other spellings, and `add_argument` keywords (a string flag defaulting to None unless
    the keywords say otherwise)."""
    if "action" not in keywords:
        keywords.setdefault("type", str)
    keywords.setdefault("default", None)
    return spellings, {**keywords, "help": help}


SWITCH = {"action": "store_true", "default": False}
BOOLEAN = {"action": argparse.BooleanOptionalAction, "default": True}

# name -> (other spellings, add_argument keywords). Defaults here are the common ones; a command may give its own.
FLAGS = {
    # where the data comes from
    "--dataset_name": _flag("Hub dataset id (streamed). Default: the embedded data."),
    "--train_data_dir": _flag("Local folder of files, or parquet / arrow files."),
    "--dataset_split": _flag("Split of the dataset to read.", "--split", default="train"),
    "--image_column": _flag("Dataset column holding the images.", default="image"),
    "--audio_column": _flag("Dataset column holding the audio.", default="audio"),
    "--label_column": _flag(
        "Column of integer class labels. Default: a 'label' / 'labels' / 'class' / ClassLabel column when the data "
        "has one (logged)."
    ),
    "--unconditional": _flag("No class labels: every sample has class 0.", **SWITCH),
    "--resolution": _flag("Image side after the shorter-side resize and the crop.", type=int, default=256),
    "--no_streaming": _flag("Load the dataset fully instead of streaming it.", **SWITCH),
    "--dataloader_num_workers": _flag(
        "Decoding worker processes per process, each on its own share of the data (0: decode in the running "
        "process). A streamed dataset needs at least processes x workers shards. Resume with the same value for an "
        "exact resume.",
        type=int,
        default=0,
    ),
    "--reduced_jpeg_decode": _flag(
        "Decode JPEGs at least twice --resolution at 1/2, 1/4 or 1/8 scale before the exact resize (several times "
        "faster; differs from a full decode about as much as bilinear from bicubic resizing).",
        **BOOLEAN,
    ),
    "--sample_rate": _flag("Samples per second: every clip is resampled to it.", type=int, default=16000),
    "--sample_size": _flag("Clip length in samples (default: the model's).", type=int),
    # models
    "--pretrained_vae": _flag(
        "VAE folder or Hub id (SpectrumAutoencoderKL or any AutoencoderKL: SD, SDXL, SD3, FLUX; a pipeline folder's "
        "vae/ is found)."
    ),
    "--vae_subfolder": _flag(
        "Subfolder of --pretrained_vae holding the VAE (e.g. vae).", "--pretrained_vae_subfolder"
    ),
    "--revision": _flag("Hub revision of the model read."),
    "--repa_encoder": _flag(
        "transformers vision backbone whose patch tokens are the REPA targets (folder or Hub id, e.g. "
        "facebook/dinov2-base)."
    ),
    "--gradient_checkpointing": _flag("Trade compute for memory.", **SWITCH),
    # sampling and evaluation
    "--vae": _flag("VAE folder or Hub id (any AutoencoderKL; a pipeline folder uses its vae/)."),
    "--pipeline": _flag("Pipeline folder or Hub id (a diffusers DiffusionPipeline)."),
    "--sample_posterior": _flag("Use posterior samples mu + sigma * noise instead of the posterior mean.", **SWITCH),
    "--num_samples": _flag("Images (or clips) to read, generate or evaluate.", type=int, default=64),
    "--batch_size": _flag("Images (or clips) per forward pass.", type=int, default=16),
    "--num_inference_steps": _flag("Sampler steps.", type=int, default=50),
    "--guidance_scale": _flag(
        "Classifier-free guidance scale (1 = none). Default: 1.8 for a class-conditional pipeline, 1 for an "
        "unconditional one.",
        type=float,
    ),
    "--class_labels": _flag(
        "Comma-separated class ids or names (pipe.labels) to cycle through. Default: every class the pipeline was "
        "trained on."
    ),
    "--num_validation_images": _flag("Images in the validation grid.", type=int, default=8),
    "--validation_inference_steps": _flag("Sampler steps of the validation samples.", type=int, default=50),
    "--feature_extractor": _flag(
        "Features of the Frechet distance: a transformers backbone id / folder (FD, e.g. facebook/dinov2-base; "
        "':mean' for mean-pooled tokens), 'inception:PATH' (FID from a local TorchScript file) or 'none' (the "
        "offline metrics only).",
        default="none",
    ),
    # runs
    "--output_dir": _flag(
        "Where the command writes: a new or empty folder, or an earlier run of the same command (nothing else in it "
        "is touched)."
    ),
    "--seed": _flag("Seed of every random draw (sample i of a set uses seed + i).", type=int, default=0),
    "--device": _flag("Torch device (default: cuda when available)."),
    "--no_progress": _flag("Hide the progress bars.", **SWITCH),
    "--push_to_hub": _flag("Upload the output to the Hub at the end.", **SWITCH),
    "--hub_model_id": _flag("Hub repo id (default: the output folder's name)."),
    "--hub_token": _flag("Hub token (default: the logged-in one; never saved)."),
    "--hub_dry_run": _flag(
        "With --push_to_hub: list what would be uploaded (hub_upload.json), upload nothing.", **SWITCH
    ),
}


def add_flags(parser, *names: str, required: tuple[str, ...] = (), **defaults) -> None:
    """Add the shared flags `names` to `parser` (a parser, an argument group or a mutually exclusive group).
    `defaults` give this command's own defaults by destination (`resolution=32`); `required` names flags this
    command cannot run without."""
    for name in names:
        spellings, keywords = FLAGS[name]
        keywords = dict(keywords)
        dest = name[2:]
        if dest in defaults:
            keywords["default"] = defaults.pop(dest)
        if name in required:
            keywords.pop("default", None)
            keywords["required"] = True
        parser.add_argument(name, *spellings, dest=dest, **keywords)
    if defaults:
        raise TypeError(f"add_flags: defaults for flags not added: {sorted(defaults)}.")
