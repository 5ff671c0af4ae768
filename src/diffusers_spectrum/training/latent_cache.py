"""Writing a latent cache: encode an image dataset once with a VAE into sharded parquet latents (+ REPA targets),
resumable; and the checks of a cache against the VAE that decodes its samples. The layout and the reading side are
in `diffusers_spectrum.data.latents`.

Decoding runs in `num_workers` DataLoader workers, each on its own share of the source's shards
(`diffusers_spectrum.data`). Resuming: `cache_info.json` is rewritten (atomically) after each shard with the
loader's state after the shard's last row (every worker's position), so an interrupted run continues from the last
completed shard's end with the same number of workers: no duplicates, no gaps.
"""

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from ..data import Position, ResumableStream, make_dataloader, stream_states
from ..data.images import ImageReader, ImageTransform
from ..data.latents import CACHE_INFO_NAME, intact_shards, read_cache_info, readable_rows
from ..data.stream import SkipCounter
from ..models.latent_conventions import latent_convention, latents_from_vae
from ..utils.records import write_json


__all__ = [
    "check_cache_against_vae",
    "encode_latents",
    "latent_statistics",
    "warn_if_badly_scaled",
    "write_latent_cache",
]

_DATA_DIR = "data"
_MODES = ("mean_std", "mean", "sample")
logger = logging.getLogger(__name__)
_DTYPES = {"float16": np.float16, "bfloat16": None, "float32": np.float32}
_SHARD_FILE = re.compile(r"^train-\d{5}\.parquet(\.tmp)?$")  # what `_shard_name` / `_write_shard` write


def _shard_name(index: int) -> str:
    return f"{_DATA_DIR}/train-{index:05d}.parquet"


# ----------------------------------------------------------------------------------------------------------------
# Encoding


@torch.no_grad()
def encode_latents(
    vae, pixel_values: torch.Tensor, mode: str = "mean_std", seeds: list[int] | None = None
) -> dict[str, torch.Tensor]:
    """Encode images with any `AutoencoderKL`-like model (posterior with `.mean` / `.std`).

    Args:
        vae: the autoencoder (its device and dtype are used).
        pixel_values: `(B, 3, H, W)` in [-1, 1].
        mode: `"mean_std"` (posterior mean and std), `"mean"` (mean only) or `"sample"` (one posterior sample).
        seeds: one seed per image for `"sample"` mode, so a sample does not depend on batching or on resuming.

    Returns:
        `{"latents": (B, C, h, w)}` plus `"latents_std"` in `"mean_std"` mode, float32 on the CPU, unscaled.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")
    param = next(vae.parameters())
    posterior = vae.encode(pixel_values.to(device=param.device, dtype=param.dtype)).latent_dist
    mean, std = posterior.mean.float().cpu(), posterior.std.float().cpu()  # (B, C, h, w)
    if mode == "mean":
        return {"latents": mean}
    if mode == "mean_std":
        return {"latents": mean, "latents_std": std}
    if seeds is None or len(seeds) != mean.shape[0]:
        raise ValueError("encode_latents: mode='sample' needs one seed per image.")
    noise = torch.stack([torch.randn(mean.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])
    return {"latents": mean + std * noise}


def _features(latent_shape, with_std: bool, repa_shape, dtype: str) -> datasets.Features:
    columns = {"latents": datasets.Array3D(tuple(latent_shape), dtype)}
    if with_std:
        columns["latents_std"] = datasets.Array3D(tuple(latent_shape), dtype)
    columns["label"] = datasets.Value("int64")
    columns["source_index"] = datasets.Value("int64")
    if repa_shape is not None:
        columns["repa_features"] = datasets.Array2D(tuple(repa_shape), dtype)
    return datasets.Features(columns)


def _write_shard(path: Path, rows: dict[str, list], features: datasets.Features) -> None:
    """Write one parquet shard atomically: a crash leaves either the old file (or none) or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    table = datasets.Dataset.from_dict(rows, features=features).data.table  # schema metadata keeps the features
    with open(tmp, "wb") as f:
        pq.write_table(table, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_latent_cache(
    output_dir: str | Path,
    dataset,
    vae,
    transform: ImageTransform,
    *,
    image_column: str = "image",
    label_column: str | None = None,
    mode: str = "mean_std",
    dtype: str = "float16",
    batch_size: int = 16,
    shard_size: int = 1000,
    max_samples: int | None = None,
    encoder: Callable | None = None,
    repa_grid_size: int | tuple[int, int] | None = None,
    seed: int = 0,
    metadata: dict | None = None,
    show_progress: bool = True,
    skipped_files: int = 0,
    num_workers: int = 0,
) -> dict:
    """Encode `dataset` (in its order, one pass) into a resumable sharded parquet latent dataset in `output_dir`.

    Args:
        output_dir: the cache folder; if it holds a `cache_info.json` from an interrupted run with the same
            settings, encoding resumes after its last completed shard (different settings are an error).
        dataset: an image dataset from `diffusers_spectrum.data.sources.load_image_dataset` (streamed or not).
        vae: `AutoencoderKL` (or `SpectrumAutoencoderKL`) in eval mode; its `config.scaling_factor` and
            `config.shift_factor` are recorded.
        transform: image preprocessing (fixed resolution; use a centre crop for a cache).
        mode: `"mean_std"`, `"mean"` or `"sample"`; see `encode_latents`.
        dtype: storage dtype, `"float16"` (default) or `"float32"`.
        batch_size, shard_size: encoding batch and rows per parquet shard.
        max_samples: stop after this many images.
        encoder: optional REPA target encoder called as `encoder(images, repa_grid_size) -> (B, N, D)`.
        repa_grid_size: `(h, w)` token grid for `encoder` (the DiT's: latent size / patch size); an int means square.
        seed: seeds the posterior samples in `"sample"` mode (per image: `seed * 2**32 + source_index`).
        metadata: extra JSON-serialisable facts for `cache_info.json` (e.g. the VAE path, id2label).
        skipped_files: entries of the source folder skipped before reading (not regular files: FIFOs, sockets,
            broken symlinks, symlink loops; `load_image_dataset(skip_counter=)`), recorded as `skipped_files`.
        num_workers: DataLoader workers decoding images, each on its own share of the source's shards (a streamed
            source needs at least that many shards). With one stream (0 or 1 worker) the rows keep the source
            order and `source_index` is the image's index in the source; with more, the workers' rows interleave
            and `source_index` is `worker + num_workers * index within the worker's share` (unique). Resume with
            the same value.

    `cache_info.json` also counts `skipped_images` (unreadable images) and `upsampled_images` (images upsampled 8x
    or more by `transform`).

    Returns:
        the final `cache_info` dict (also in `output_dir/cache_info.json`).
    """
    # 1. Validate and open / resume the manifest
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}.")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be positive, got {batch_size} and {shard_size}.")
    if encoder is not None and repa_grid_size is None:
        raise ValueError("write_latent_cache: pass repa_grid_size with an encoder (DiT latent side / patch size).")
    if isinstance(repa_grid_size, int):
        repa_grid_size = (repa_grid_size, repa_grid_size)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "mode": mode,
        "dtype": dtype,
        "resolution": transform.resolution,
        "center_crop": transform.center_crop,
        "random_flip": transform.random_flip,
        "image_column": image_column,
        "label_column": label_column,
        "shard_size": shard_size,
        "repa_grid_size": list(repa_grid_size) if encoder is not None else None,
        "seed": seed,
        "scaling_factor": float(vae.config.scaling_factor),
        "shift_factor": vae.config.shift_factor,
        "latent_convention": latent_convention(vae.config) if hasattr(vae.config, "block_out_channels") else "scale",
        "latents_mean": getattr(vae.config, "latents_mean", None),
        "latents_std": getattr(vae.config, "latents_std", None),
        "vae_class": type(vae).__name__,
        **(metadata or {}),
    }
    info_path = output_dir / CACHE_INFO_NAME
    info = {"settings": settings, "shards": [], "num_examples": 0, "complete": False, "skipped_images": 0}
    if info_path.exists():
        previous = read_cache_info(output_dir)
        keys = set(settings) | set(previous["settings"])
        changed = sorted(k for k in keys if settings.get(k) != previous["settings"].get(k))
        if changed:
            raise ValueError(
                f"{output_dir} already holds a latent cache made with different settings ({', '.join(changed)}"
                f"{'; the VAE weights changed since' if 'vae_weights_sha256' in changed else ''}); pass a new "
                "output_dir (or delete the folder) to start over."
            )
        info = previous
        intact = intact_shards(output_dir, info["shards"], info.get("latent_shape"))
        if intact < len(info["shards"]):  # a deleted or corrupt shard: re-encode from it on
            info["shards"] = info["shards"][:intact]
            info["num_examples"] = sum(shard["num_examples"] for shard in info["shards"])
            info["complete"] = False
            logger.warning("re-encoding %s from shard %d on", output_dir, intact)
        if info["complete"]:
            return info
    _remove_unlisted_shards(output_dir, info["shards"])
    resume_state = _resume_state(output_dir, info["shards"], num_workers)

    # 2. Stream the images from the resume point, in order (one shard of the source per worker)
    skip_counter = SkipCounter()
    stream = ResumableStream(
        dataset,
        _WithSourceIndex(ImageReader(transform, image_column, label_column)),
        shuffle=False,
        infinite=False,
        skip_counter=skip_counter,
    )
    loader = make_dataloader(stream, None, num_workers=num_workers, state=resume_state, seed=seed)
    remaining = None if max_samples is None else max(max_samples - info["num_examples"], 0)
    progress = tqdm(
        total=max_samples, initial=info["num_examples"], desc="caching latents", unit="img", disable=not show_progress
    )
    features, rows, pending = None, None, []
    np_dtype = _DTYPES[dtype]

    def encode(items: list[dict]) -> None:
        # 3. Encode a batch (and its REPA targets)
        nonlocal features, rows
        pixel_values = torch.stack([item["pixel_values"] for item in items])
        indices = [item["source_index"] for item in items]
        encoded = encode_latents(vae, pixel_values, mode, seeds=[seed * 2**32 + i for i in indices])
        if encoder is not None:
            encoded["repa_features"] = encoder(pixel_values, repa_grid_size).float().cpu()  # (B, N, D)
        if features is None:
            repa_shape = encoded["repa_features"].shape[1:] if encoder is not None else None
            features = _features(encoded["latents"].shape[1:], "latents_std" in encoded, repa_shape, dtype)
            rows = {name: [] for name in features}
            info["latent_shape"] = list(encoded["latents"].shape[1:])
            info["repa_feature_shape"] = list(repa_shape) if repa_shape is not None else None
        for key, value in encoded.items():
            rows[key].extend(list(value.numpy().astype(np_dtype)))
        rows["label"].extend(int(item["labels"]) for item in items)
        rows["source_index"].extend(indices)
        progress.update(len(items))

    def flush() -> None:
        # 4. Write a shard, then record where every worker stands after its last row
        nonlocal rows
        count = len(rows["label"])
        name = _shard_name(len(info["shards"]))
        _write_shard(output_dir / name, rows, features)
        state = loader.state_dict()
        start = info["shards"][-1]["end_position"] if info["shards"] else 0
        info["shards"].append(
            {
                "file": name,
                "num_examples": count,
                "start_position": start,
                "end_position": sum(s["position"] for s in stream_states(state)),  # source rows read (one epoch)
                "end_state": state,
            }
        )
        info["num_examples"] += count
        rows = {k: [] for k in rows}
        write_json(info_path, info)

    taken = 0
    for item in loader:  # one image at a time, so a shard can end after any of them
        if remaining is not None and taken >= remaining:
            break
        pending.append(item)
        taken += 1
        in_shard = (len(rows["label"]) if rows else 0) + len(pending)
        if len(pending) == batch_size or in_shard == shard_size:
            encode(pending)
            pending = []
            if len(rows["label"]) == shard_size:
                flush()
    if pending:
        encode(pending)
    if rows and rows["label"]:
        flush()
    progress.close()
    if info["num_examples"] == 0:
        raise ValueError("write_latent_cache: no image could be read from the dataset; nothing was cached.")
    counts = loader.counts()
    info["skipped_images"] += counts.get("skipped", 0)
    info["skipped_files"] = skipped_files
    info["upsampled_images"] = info.get("upsampled_images", 0) + counts.get("upsampled", 0)
    info["complete"] = True
    write_json(info_path, info)
    return info


def _remove_unlisted_shards(output_dir: Path, shards: list[dict]) -> None:
    """Before resuming, delete the shards (and temporary files) an interrupted run of ours wrote after its last
    manifest update: files named as this writer names them (`train-00007.parquet`, `train-00007.parquet.tmp`)
    that the manifest does not list; they are re-encoded. Any other file in `data/` was not written by the cache
    and is kept (a warning names it: a Hub upload of the folder would include it)."""
    folder = output_dir / _DATA_DIR
    if not folder.is_dir():
        return
    listed = {Path(shard["file"]).name for shard in shards}
    foreign = []
    for path in sorted(folder.iterdir()):
        if path.name in listed:
            continue
        if _SHARD_FILE.match(path.name) and path.is_file() and not path.is_symlink():
            path.unlink()
        else:
            foreign.append(path.name)
    if foreign:
        logger.warning(
            "%s holds %d file(s) the latent cache did not write (%s); they are kept and not read as latents, but "
            "a Hub upload of the folder would include them.",
            folder,
            len(foreign),
            ", ".join(foreign[:3]),
        )


class _WithSourceIndex:
    """A reader whose samples also carry `source_index`: the example's key (its index in the source with one
    stream)."""

    def __init__(self, read):
        self.read = read

    def __call__(self, example: dict, where: Position, counts: dict) -> dict:
        return {**self.read(example, where, counts), "source_index": where.key}


def _resume_state(output_dir: Path, shards: list[dict], num_workers: int) -> dict | None:
    """The loader state after the last complete shard (`None`: start), checked to come from the same number of
    workers (their shares and positions depend on it)."""
    if not shards:
        return None
    last = shards[-1]
    if "end_state" not in last:  # a cache begun before per-worker states: one stream's position
        written_with, state = 0, {"epoch": 0, "position": int(last["end_position"])}
        same = num_workers <= 1
    else:
        written_with, state = int(last["end_state"].get("num_workers", 0)), last["end_state"]
        same = written_with == num_workers
    if not same:
        raise ValueError(
            f"{output_dir} was begun with {written_with} dataloader worker(s) and this run has {num_workers}: "
            f"resume with --dataloader_num_workers {written_with} (each worker's share of the images depends on "
            "it), or pass a new output_dir to start over."
        )
    return state


# ----------------------------------------------------------------------------------------------------------------
# Reading back


# ----------------------------------------------------------------------------------------------------------------
# The cache's latent convention against its VAE and its own latents

LATENT_CONVENTION_KEYS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std")
# Standardised latents of a well-scaled cache have a std near 1 (the VAE trainer sets scaling_factor = 1 / std);
# outside this range the factor is almost surely wrong (a 10x error gives 10 or 0.1).
LATENT_STD_RANGE = (0.5, 2.0)


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = np.atleast_1d(np.asarray(a, dtype=np.float64)), np.atleast_1d(np.asarray(b, dtype=np.float64))
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-5, atol=0.0))


def check_cache_against_vae(settings: dict, vae_config, cache: str | Path, vae_name: str) -> None:
    """A `ValueError` when the latent convention a cache records (`cache_info.json`: scaling factor, shift,
    per-channel statistics) differs from the one of the VAE that will decode its samples: the diffusion model
    would train on latents standardised one way and the exported pipeline decode them the other way."""
    for key in LATENT_CONVENTION_KEYS:
        recorded, actual = settings.get(key), getattr(vae_config, key, None)
        if not _same(recorded, actual):
            raise ValueError(
                f"the latent cache {cache} records {key} {recorded} (cache_info.json) but the VAE that decodes its "
                f"samples ({vae_name}) has {key} {actual}: training would standardise the latents with one and the "
                f"exported pipeline decode with the other. Re-cache with `diffusers-spectrum cache-latents "
                f"--pretrained_vae {vae_name}`, or set {key} in {Path(str(cache)) / CACHE_INFO_NAME} back to {actual}."
            )


def latent_statistics(
    dataset, latent_config: dict, max_rows: int = 256, seed: int = 0, source: str | Path | None = None
) -> dict:
    """Mean and std of the standardised latents (`models.latents_from_vae` with `latent_config`) of the first
    `max_rows` rows of a latent dataset; with a stored posterior std, of posterior samples (seeded), as training
    draws them. A well-scaled cache gives a std near 1."""
    generator = torch.Generator().manual_seed(seed)
    values = []
    for index, row in enumerate(readable_rows(dataset, source)):
        if index >= max_rows:
            break
        latents = torch.as_tensor(np.asarray(row["latents"], dtype=np.float32))
        if row.get("latents_std") is not None:
            std = torch.as_tensor(np.asarray(row["latents_std"], dtype=np.float32))
            latents = latents + std * torch.randn(latents.shape, generator=generator)
        values.append(latents_from_vae(latents[None], latent_config))
    if not values:
        raise ValueError("latent_statistics: the latent dataset has no rows.")
    stacked = torch.cat(values).double()
    return {"mean": float(stacked.mean()), "std": float(stacked.std()), "rows": len(values)}


def warn_if_badly_scaled(statistics: dict, settings: dict, cache: str | Path) -> bool:
    """Log a warning (and return True) when the standardised latents' std is outside `LATENT_STD_RANGE`, with the
    scaling factor that would give std 1."""
    std, low_high = statistics["std"], LATENT_STD_RANGE
    if low_high[0] <= std <= low_high[1]:
        return False
    factor = settings.get("scaling_factor")
    logger.warning(
        "THE LATENT SCALE LOOKS WRONG: the latents of %s standardised with scaling_factor %s have std %.3g over %d "
        "rows (diffusion expects about 1; the noise schedule then drowns or barely touches them). If the factor is "
        "wrong, %s ~ %.4g gives std 1: re-cache with a VAE whose scaling_factor is right (train-vae computes it with "
        "--latent_stats_samples), or fix it in %s.",
        cache,
        factor,
        std,
        statistics["rows"],
        "scaling_factor",
        (factor or 1.0) / std,
        CACHE_INFO_NAME,
    )
    return True
