"""The latent cache: `cache_latents(args)` encodes an image dataset once with a trained VAE into a Hugging Face
dataset of latents ("pretrained latents"), so the DiT trainer (`--latent_dataset DIR_OR_ID`) trains without the VAE
in memory. `examples/cache_latents.py` and `diffusers-spectrum cache-latents` only parse flags and call it.

The output is sharded parquet (`data/train-*.parquet`, each shard written atomically) plus `cache_info.json`;
re-running the same command after an interruption continues after the last complete shard, with no duplicates
or gaps. `--push_to_hub` uploads the folder as a dataset repo with a dataset card (`--hub_dry_run` lists what would
be uploaded without any network access).

Importing this module (for its flags: `build_parser`, `parse_args`) loads neither diffusers nor accelerate nor
datasets; the functions that need them import them.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from ..models.checks import check_resolution
from ..utils.flags import add_flags
from ..utils.hub import looks_local
from ..utils.records import public_args, save_args_json
from ..utils.run_folders import claim_output_dir


__all__ = ["build_parser", "cache_latents", "parse_args"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def id2label_for(label_column: str | None, class_names_file: str | None, dataset, embedded: bool):
    """Class names: `--class_names_file` (JSON list or {index: name}), a `ClassLabel` column's names, the embedded
    photos' names (`embedded`: the data is the embedded photos), or None."""
    from ..data.sources import class_names_of, embedded_class_names

    if label_column is None:
        return None
    if class_names_file is not None:
        path = Path(class_names_file)
        try:
            names = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"--class_names_file {path}: cannot read a JSON list or object ({error}).") from None
        return {int(k): v for k, v in names.items()} if isinstance(names, dict) else dict(enumerate(names))
    if embedded and label_column == "label":
        return dict(enumerate(embedded_class_names()))
    return class_names_of(dataset, label_column)


def push_cache_to_hub(
    output_dir: str | Path,
    info: dict,
    training_args: dict,
    *,
    repo_id: str | None = None,
    dataset_name: str | None = None,
    vae: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Write the dataset card of the cache in `output_dir` and upload the folder as a dataset repo `repo_id`
    (default: the folder's name), or list the files with `dry_run`. `training_args`: the flags the card records
    (`records.public_args`); `dataset_name` / `vae`: the source dataset and the VAE that encoded it."""
    from ..pipelines.model_cards import latent_cache_card, push_folder_to_hub

    repo_id = repo_id or Path(output_dir).name
    card = latent_cache_card(repo_id, info, training_args=training_args, source_datasets=dataset_name, vae=vae)
    card.save(str(Path(output_dir) / "README.md"))
    return push_folder_to_hub(output_dir, repo_id, repo_type="dataset", token=token, dry_run=dry_run)


# ----------------------------------------------------------------------------------------------------------------
# Arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Encode an image dataset once with a VAE into a sharded parquet dataset of latents (and REPA "
        "target features); re-run the same command to resume after an interruption."
    )
    g = parser.add_argument_group("VAE")
    add_flags(g, "--pretrained_vae", "--vae_subfolder", "--revision", required=("--pretrained_vae",))
    g = parser.add_argument_group("data")
    add_flags(g, "--dataset_name", "--train_data_dir", "--dataset_split", "--image_column", "--label_column")
    add_flags(g, "--unconditional", "--resolution", "--dataloader_num_workers", "--no_streaming")
    add_flags(g, "--reduced_jpeg_decode")
    g.add_argument(
        "--class_names_file",
        type=str,
        default=None,
        help="JSON list (or {index: name}) of class names, recorded as id2label.",
    )
    g.add_argument(
        "--random_crop",
        action="store_true",
        help="Random instead of centre crop (seeded by --seed; fixed once cached).",
    )
    g.add_argument("--max_samples", type=int, default=None, help="Encode at most this many images.")
    g = parser.add_argument_group("what to store")
    g.add_argument(
        "--latent_mode",
        type=str,
        default="mean_std",
        choices=["mean_std", "mean", "sample"],
        help="Store the posterior mean and std (the trainer samples fresh latents every step), the "
        "mean only, or one posterior sample.",
    )
    g.add_argument(
        "--latent_dtype",
        type=str,
        default="float16",
        choices=["float16", "float32"],
        help="Storage dtype of latents and features.",
    )
    add_flags(g, "--repa_encoder")
    g.add_argument(
        "--repa_grid_size",
        type=int,
        default=None,
        help="Token grid side of the REPA targets: the DiT's latent side / patch size. Default: "
        "latent side // 2 (patch size 2).",
    )
    g = parser.add_argument_group("output")
    add_flags(g, "--output_dir", "--batch_size", "--seed", "--device", required=("--output_dir",))
    g.add_argument("--shard_size", type=int, default=1000, help="Rows per parquet shard (the resume unit).")
    add_flags(g, "--push_to_hub", "--hub_model_id", "--hub_token", "--hub_dry_run")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dataset_name is not None and args.train_data_dir is not None:
        parser.error("pass either --dataset_name or --train_data_dir, not both.")
    for flag in ("pretrained_vae", "train_data_dir", "class_names_file", "repa_encoder"):
        value = getattr(args, flag)
        if value is not None and looks_local(value) and not Path(value).expanduser().exists():
            parser.error(f"--{flag} {value}: no such folder or file; check the path.")
    if args.train_data_dir is not None and not Path(args.train_data_dir).expanduser().exists():
        parser.error(f"--train_data_dir {args.train_data_dir}: no such folder or file; check the path.")
    if args.unconditional and args.label_column is not None:
        parser.error("pass either --unconditional or --label_column, not both.")
    for name in ("resolution", "batch_size", "shard_size", "max_samples", "repa_grid_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be positive, got {value}.")
    if args.dataloader_num_workers < 0:
        parser.error(f"--dataloader_num_workers must be >= 0, got {args.dataloader_num_workers}.")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Main


def vae_weights_fingerprint(path: str, subfolder: str | None = None) -> str | None:
    """SHA-256 of a local VAE folder's weight files (a pipeline folder's `vae/`), or None for a Hub id: recorded in
    the cache's settings, so re-running the cache command after the VAE was retrained in place re-encodes instead of
    resuming (or returning) latents of the old weights."""
    import hashlib

    folder = Path(path) / subfolder if subfolder else Path(path)
    if not folder.is_dir():
        return None
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*")):
        if file.suffix in (".safetensors", ".bin") and file.is_file():
            with open(file, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def cache_latents(args: argparse.Namespace) -> dict:
    """Encode as `args` (from `parse_args`) says; returns the cache info (`cache_info.json`)."""
    from ..data.images import ImageTransform
    from ..data.latents import CACHE_INFO_NAME
    from ..data.sources import detect_label_column, load_image_dataset
    from ..data.stream import SkipCounter
    from ..models.encoders import RepresentationEncoder
    from ..models.loading import load_autoencoder
    from .latent_cache import write_latent_cache

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    claim_output_dir(args.output_dir, "cache-latents", CACHE_INFO_NAME)  # new, empty or this cache: else refused
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    # 1. Models
    vae = load_autoencoder(args.pretrained_vae, args.vae_subfolder, revision=args.revision)
    vae = vae.to(device).eval().requires_grad_(False)
    latent_side = check_resolution(vae, args.resolution)
    encoder, grid_size = None, None
    if args.repa_encoder is not None:
        encoder = RepresentationEncoder.from_pretrained(args.repa_encoder, device=device)
        side = args.repa_grid_size or latent_side // 2
        grid_size = (side, side)

    # 2. Data and encoding (resumes from cache_info.json if present)
    scan_skips = SkipCounter()
    dataset = load_image_dataset(
        args.dataset_name,
        args.train_data_dir,
        split=args.dataset_split,
        image_column=args.image_column,
        label_column=args.label_column,
        skip_counter=scan_skips,
        streaming=not args.no_streaming,
    )
    label_column = detect_label_column(dataset, args.label_column, args.unconditional)
    embedded = args.dataset_name is None and args.train_data_dir is None
    id2label = id2label_for(label_column, args.class_names_file, dataset, embedded)
    transform = ImageTransform(
        args.resolution, center_crop=not args.random_crop, seed=args.seed, reduced_decode=args.reduced_jpeg_decode
    )
    metadata = {
        # the VAE's weights, so a cache is never resumed (or reused) with latents of another training of the VAE
        "vae_weights_sha256": vae_weights_fingerprint(args.pretrained_vae, args.vae_subfolder),
        # a local VAE is recorded by absolute path, so the DiT trainer finds it from any working directory
        "pretrained_vae": str(Path(args.pretrained_vae).resolve())
        if Path(args.pretrained_vae).exists()
        else args.pretrained_vae,
        "vae_subfolder": args.vae_subfolder,
        "source": args.dataset_name or args.train_data_dir or "embedded photos",
        "repa_encoder": args.repa_encoder,
        "id2label": {str(k): v for k, v in (id2label or {}).items()} or None,
    }
    resolved = {**vars(args), "label_column": label_column}  # the column found in the data
    save_args_json(resolved, args.output_dir, "cache_args.json")
    info = write_latent_cache(
        args.output_dir,
        dataset,
        vae,
        transform,
        image_column=args.image_column,
        label_column=label_column,
        mode=args.latent_mode,
        dtype=args.latent_dtype,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        max_samples=args.max_samples,
        encoder=encoder,
        repa_grid_size=grid_size,
        seed=args.seed,
        metadata=metadata,
        skipped_files=scan_skips.count,
        num_workers=args.dataloader_num_workers,
    )
    logger.info(
        "cached %d %s latents of shape %s in %d shard(s) at %s (%d unreadable images and %d non-regular files "
        "skipped, %d images upsampled 8x or more)",
        info["num_examples"],
        f"class-conditional (label column {label_column!r})" if label_column else "unconditional",
        info["latent_shape"],
        len(info["shards"]),
        args.output_dir,
        info["skipped_images"],
        info["skipped_files"],
        info["upsampled_images"],
    )

    # 3. Publish
    if args.push_to_hub:
        uploaded = push_cache_to_hub(
            args.output_dir,
            info,
            public_args(resolved),
            repo_id=args.hub_model_id,
            dataset_name=args.dataset_name,
            vae=args.pretrained_vae,
            token=args.hub_token,
            dry_run=args.hub_dry_run,
        )
        logger.info("%s %d files", "would upload" if args.hub_dry_run else "uploaded", len(uploaded))
    return info
