"""Pre-computed ("cached") VAE latents as a Hugging Face dataset: write once, stream back for DiT training.

Layout of a cache folder (also the layout of the dataset repo it is pushed to)::

    cache_info.json                 # what was encoded and how (VAE, scaling factor, shapes, shards, positions)
    data/train-00000.parquet        # shards of `shard_size` rows, each written atomically (tmp file + rename)
    data/train-00001.parquet
    README.md                       # dataset card (written by `examples/cache_latents.py`)

Columns: `latents` `(C, h, w)` (the posterior mean, or one posterior sample), `latents_std` `(C, h, w)` (only in
`"mean_std"` mode), `label` (int), `source_index` (position of the image in the source dataset) and, optionally,
`repa_features` `(N, D)`: the frozen encoder's patch tokens of the same image, unfiltered, so the REPA target filter
is chosen at training time. Latents are stored *unscaled*; the VAE's latent convention is recorded
(`latent_convention`, `scaling_factor`, `shift_factor`, `latents_mean`, `latents_std`) and
`models.latents_from_vae` standardises them for diffusion.

Decoding runs in `num_workers` DataLoader workers, each on its own share of the source's shards
(`diffusers_spectrum.data`). Resuming: `cache_info.json` is rewritten (atomically) after each shard with the
loader's state after the shard's last row (every worker's position), so an interrupted run continues from the last
completed shard's end with the same number of workers: no duplicates, no gaps.
"""

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from ..data import Position, ResumableStream, make_dataloader, stream_states
from ..models.checks import looks_local
from ..models.latent_conventions import latent_convention, latents_from_vae
from .data import ImageReader, ImageTransform, SkipCounter
from .utils import write_json


__all__ = [
    "CACHE_INFO_NAME",
    "check_cache_against_vae",
    "check_cache_info",
    "check_shard",
    "encode_latents",
    "latent_batch",
    "latent_statistics",
    "load_latent_dataset",
    "read_cache_info",
    "write_latent_cache",
]

CACHE_INFO_NAME = "cache_info.json"
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
        dataset: an image dataset from `diffusers_spectrum.training.data.load_image_dataset` (streamed or not).
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
        previous = _read_info_file(info_path, output_dir)
        keys = set(settings) | set(previous["settings"])
        changed = sorted(k for k in keys if settings.get(k) != previous["settings"].get(k))
        if changed:
            raise ValueError(
                f"{output_dir} already holds a latent cache made with different settings ({', '.join(changed)}"
                f"{'; the VAE weights changed since' if 'vae_weights_sha256' in changed else ''}); pass a new "
                "output_dir (or delete the folder) to start over."
            )
        info = previous
        intact = _intact_shards(output_dir, info["shards"], info.get("latent_shape"))
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
        dataset, _WithSourceIndex(ImageReader(transform, image_column, label_column)), shuffle=False,
        infinite=False, skip_counter=skip_counter,
    )  # fmt: skip
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


_REQUIRED_INFO_KEYS = ("settings", "shards", "num_examples")
_REQUIRED_SETTINGS_KEYS = ("mode", "label_column", "scaling_factor")
_REQUIRED_SHARD_KEYS = ("file", "num_examples", "end_position")


def _is_local(path_or_id: str | Path) -> bool:
    """True for an existing path; a `FileNotFoundError` ("no such folder") for a name that looks like a local path
    (`models.checks.looks_local`) but does not exist, instead of a Hub id validation error or Hub retries."""
    if Path(path_or_id).exists():
        return True
    if looks_local(path_or_id):
        raise FileNotFoundError(
            f"no such folder: the latent cache {str(path_or_id)!r} does not exist; check the path."
        )
    return False


def _fix_hint(path) -> str:
    """How to repair a damaged cache file: the cache command re-encodes from the first missing shard on, or
    everything when `cache_info.json` is gone."""
    if Path(path).name == CACHE_INFO_NAME:
        return f"delete {path} and re-run the cache command (it then re-encodes everything)"
    return f"delete {path} and re-run the cache command (it resumes, re-encoding from that shard on)"


def _intact_shards(output_dir: Path, shards: list[dict], latent_shape=None) -> int:
    """How many leading shards of a manifest exist, have a readable parquet footer and the cache's latent shape."""
    for index, shard in enumerate(shards):
        try:
            check_shard(output_dir / shard["file"], latent_shape)
        except ValueError as error:
            logger.warning("%s", error)
            return index
    return len(shards)


def check_cache_info(info, source: str | Path, folder: str | Path | None = None) -> dict:
    """Validate a parsed `cache_info.json` (`source` names it in errors): the keys the readers need, and, for a
    local cache `folder`, that every shard is a relative path resolving inside `folder` (a manifest naming
    `../x.parquet` or an absolute path is refused, never read). Returns `info`."""
    if not isinstance(info, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(info).__name__}; {_fix_hint(source)}.")
    for key in _REQUIRED_INFO_KEYS:
        if key not in info:
            raise ValueError(
                f"{source} has no {key!r} entry: not a complete latent cache manifest; {_fix_hint(source)}."
            )
    if not isinstance(info["settings"], dict) or not isinstance(info["shards"], list):
        raise ValueError(f"{source}: 'settings' must be an object and 'shards' a list; {_fix_hint(source)}.")
    for key in _REQUIRED_SETTINGS_KEYS:
        if key not in info["settings"]:
            raise ValueError(f"{source}: 'settings' has no {key!r} entry; {_fix_hint(source)}.")
    if info["shards"] and "latent_shape" not in info:
        raise ValueError(f"{source} has no 'latent_shape' entry (it lists shards); {_fix_hint(source)}.")
    root = None if folder is None else Path(folder).resolve()
    for index, shard in enumerate(info["shards"]):
        missing = [k for k in _REQUIRED_SHARD_KEYS if not isinstance(shard, dict) or k not in shard]
        if missing:
            raise ValueError(f"{source}: shard #{index} has no {missing[0]!r} entry; {_fix_hint(source)}.")
        name = shard["file"]
        if not isinstance(name, str) or not name or Path(name).is_absolute() or "\\" in name:
            raise ValueError(
                f"{source}: shard #{index} file {name!r} must be a relative path inside the cache folder."
            )
        if root is not None and not (root / name).resolve().is_relative_to(root):
            raise ValueError(
                f"{source}: shard #{index} file {name!r} resolves outside the cache folder {str(root)!r}; refused."
            )
    return info


def _read_info_file(path: Path, folder: Path | None) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
        info = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {_fix_hint(path)}.") from None
    return check_cache_info(info, path, folder)


def read_cache_info(path_or_id: str | Path, revision: str | None = None) -> dict:
    """The `cache_info.json` of a local cache folder or a Hub dataset repo of latents, validated by
    `check_cache_info`; a local path that does not exist is a `FileNotFoundError`."""
    if _is_local(path_or_id):
        folder = Path(path_or_id)
        path = folder / CACHE_INFO_NAME
        if not folder.is_dir() or not path.is_file():
            raise ValueError(f"{path_or_id} is not a latent cache: it has no {CACHE_INFO_NAME}.")
        return _read_info_file(path, folder)
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(str(path_or_id), CACHE_INFO_NAME, repo_type="dataset", revision=revision)
    return _read_info_file(Path(path), None)


def check_shard(path: Path, latent_shape=None) -> None:
    """A `ValueError` naming the shard and the fix when `path` is missing, not a readable parquet file (its footer
    is read, not its data), or, given the cache's `latent_shape`, holds latents of another shape (a shard of another
    cache, e.g. of an 8-channel VAE)."""
    if not path.is_file():
        raise ValueError(f"latent cache shard {path} is missing; {_fix_hint(path)}.")
    try:
        schema = pq.read_schema(path)
    except Exception as error:  # pyarrow.ArrowInvalid ("Parquet magic bytes not found"), OSError
        raise ValueError(
            f"latent cache shard {path} is corrupt ({type(error).__name__}: {error}); {_fix_hint(path)}."
        ) from None
    if latent_shape is None:
        return
    try:
        features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
        shape = list(features["latents"]["shape"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"latent cache shard {path} has no latents column description (it was not written by the cache "
            f"command); {_fix_hint(path)}."
        ) from None
    if shape != list(latent_shape):
        raise ValueError(
            f"latent cache shard {path} holds latents of shape {tuple(shape)} but cache_info.json says "
            f"{tuple(latent_shape)}: it comes from another cache (another VAE); {_fix_hint(path)}."
        )


def unreadable_shard_error(folder: str | Path, shards: list[dict], error: BaseException) -> ValueError:
    """The error to raise when reading a local cache failed mid-way (a corrupt data page: pyarrow's "Couldn't
    deserialize thrift", `datasets`' DatasetGenerationError): each shard is read in full to name the broken one and
    the fix (only on this failure path; a healthy cache is never read twice)."""
    for shard in shards:
        path = Path(folder) / shard["file"]
        try:
            pq.read_table(path)
        except Exception as shard_error:  # noqa: BLE001 - any read failure names this shard
            first = str(shard_error).splitlines()[0] if str(shard_error) else ""
            return ValueError(
                f"latent cache shard {path} is corrupt ({type(shard_error).__name__}: {first}); {_fix_hint(path)}."
            )
    first = str(error).splitlines()[0] if str(error) else ""
    return ValueError(
        f"the latent cache {folder} could not be read ({type(error).__name__}: {first}); check its shards, or "
        "delete it and re-run the cache command."
    )


def load_latent_dataset(
    path_or_id: str | Path, split: str = "train", streaming: bool = True, revision: str | None = None
) -> datasets.IterableDataset | datasets.Dataset:
    """Open a latent cache (local folder or Hub dataset id) as a `datasets` dataset, streamed by default.

    Only completed shards listed in `cache_info.json` are read for a local folder, so an unfinished cache can be
    inspected while it is being written; each is checked first (`check_shard`), so a corrupt or missing shard is an
    error naming it rather than an Arrow error mid-training.
    """
    if _is_local(path_or_id):
        info = read_cache_info(path_or_id)
        files = [Path(path_or_id) / shard["file"] for shard in info["shards"]]
        if not files:
            raise ValueError(f"{path_or_id} holds no completed latent shard yet.")
        for file in files:
            check_shard(file, info.get("latent_shape"))
        data_files = {split: [str(f) for f in files]}
        try:
            return datasets.load_dataset("parquet", data_files=data_files, split=split, streaming=streaming)
        except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as error:
            raise unreadable_shard_error(path_or_id, info["shards"], error) from None
    return datasets.load_dataset(str(path_or_id), split=split, streaming=streaming, revision=revision)


def latent_batch(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Collate cache rows into `{"latents", "latents_std"?, "labels", "repa_features"?}` float32 tensors (latents
    unscaled)."""
    batch = {}
    for key, out in (("latents", "latents"), ("latents_std", "latents_std"), ("repa_features", "repa_features")):
        if key in examples[0]:
            batch[out] = torch.stack([torch.as_tensor(np.asarray(e[key], dtype=np.float32)) for e in examples])
    batch["labels"] = torch.tensor([int(e["label"]) for e in examples], dtype=torch.long)
    return batch


READ_ERRORS = (OSError, pa.ArrowException, datasets.exceptions.DatasetGenerationError)


def readable_rows(rows, source: str | Path | None = None):
    """Iterate `rows` (a latent dataset); a read failure mid-way (a corrupt data page) becomes a `ValueError`
    naming the shard of the local cache `source` and the fix (`unreadable_latents_error`)."""
    iterator = iter(rows)
    while True:
        try:
            row = next(iterator)
        except StopIteration:
            return
        except READ_ERRORS as error:
            raise unreadable_latents_error(source, error) from None
        yield row


def unreadable_latents_error(source, error: Exception) -> ValueError:
    """The one-line error for a latent dataset that fails mid-read: the corrupt shard of a local cache and the
    fix, or the dataset and the cause."""
    if source is not None and Path(source).is_dir():
        return unreadable_shard_error(source, read_cache_info(source)["shards"], error)
    return ValueError(f"the latent dataset {source} could not be read ({type(error).__name__}: {error}).")


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
        cache, factor, std, statistics["rows"], "scaling_factor", (factor or 1.0) / std, CACHE_INFO_NAME,
    )  # fmt: skip
    return True
