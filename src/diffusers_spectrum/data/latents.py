"""Reading a latent cache back (local folder or Hub dataset repo): its manifest, checked; its completed shards,
checked before they are read; rows collated into batches; and one-line errors naming a corrupt shard and the fix.
The cache itself is written by `diffusers_spectrum.training.latent_cache.write_latent_cache`.

Layout of a cache folder (also the layout of the dataset repo it is pushed to)::

    cache_info.json                 # what was encoded and how (VAE, scaling factor, shapes, shards, positions)
    data/train-00000.parquet        # shards of `shard_size` rows, each written atomically (tmp file + rename)
    data/train-00001.parquet
    README.md                       # dataset card

Columns: `latents` `(C, h, w)` (the posterior mean, or one posterior sample), `latents_std` `(C, h, w)` (only in
`"mean_std"` mode), `label` (int), `source_index` (position of the image in the source dataset) and, optionally,
`repa_features` `(N, D)`: the frozen encoder's patch tokens of the same image, unfiltered, so the REPA target filter
is chosen at training time. Latents are stored *unscaled*; the VAE's latent convention is recorded
(`latent_convention`, `scaling_factor`, `shift_factor`, `latents_mean`, `latents_std`) and
`models.latents_from_vae` standardises them for diffusion.
"""

import json
import logging
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..utils.hub import looks_local


__all__ = [
    "CACHE_INFO_NAME",
    "check_cache_info",
    "check_shard",
    "intact_shards",
    "latent_batch",
    "load_latent_dataset",
    "read_cache_info",
    "readable_rows",
    "unreadable_latents_error",
    "unreadable_shard_error",
]

CACHE_INFO_NAME = "cache_info.json"
logger = logging.getLogger(__name__)


_REQUIRED_INFO_KEYS = ("settings", "shards", "num_examples")


_REQUIRED_SETTINGS_KEYS = ("mode", "label_column", "scaling_factor")


_REQUIRED_SHARD_KEYS = ("file", "num_examples", "end_position")


def _is_local(path_or_id: str | Path) -> bool:
    """True for an existing path; a `FileNotFoundError` ("no such folder") for a name that looks like a local path
    (`utils.hub.looks_local`) but does not exist, instead of a Hub id validation error or Hub retries."""
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


def intact_shards(output_dir: Path, shards: list[dict], latent_shape=None) -> int:
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
