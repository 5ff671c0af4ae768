"""Image data for the trainers: Hub / local / embedded datasets, robust decoding, batching and resumable loaders.

- `load_image_dataset`: a Hub dataset id (streamed), a local image folder or parquet / arrow files, or by default the
  embedded photo crops (`embedded_dataset_dir`). Image columns are left *undecoded* (bytes + path) so a corrupt file
  is skipped by the readers below instead of crashing the stream.
- `ImageTransform`: a dataset cell or PIL image, any mode (grayscale, RGBA, palette, 16-bit, float) -> RGB ->
  resize, crop, flip -> `(3, H, W)` float32 in [-1, 1]; a JPEG at least twice the target size is decoded at 1/2,
  1/4 or 1/8 scale first (libjpeg's DCT scaling). Its randomness is a function of `(seed, epoch, position)`, so a
  resumed run draws the same crops and flips as an uninterrupted one.
- `ImageReader`: the image decoder of `diffusers_spectrum.data.ResumableStream` (the worker-aware, resumable
  training stream; batches come from `diffusers_spectrum.data.make_dataloader`).
- `image_batches`: one pass over a dataset as `{"pixel_values", "labels"}` batches (for latent statistics, caching).
"""

import io
import json
import logging
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image, ImageOps

from ..data.stream import Position, ResumableStream, SkipExample
from ..models.checks import check_hub_dataset_reachable, looks_local


__all__ = [
    "IMAGE_ERRORS",
    "ImageReader",
    "ImageTransform",
    "SkipCounter",
    "data_image_size",
    "decode_image",
    "embedded_class_names",
    "embedded_dataset_dir",
    "image_batches",
    "load_image_dataset",
    "open_image",
    "open_image_data",
    "to_rgb",
]

logger = logging.getLogger(__name__)

_PARQUET_SUFFIXES = (".parquet",)
_ARROW_SUFFIXES = (".arrow",)
IMAGE_ERRORS = (OSError, ValueError, TypeError, SyntaxError, Image.DecompressionBombError)  # unreadable: skipped
_EXIF_ORIENTATION = 0x0112


def embedded_dataset_dir() -> Path:
    """Folder of the embedded photo dataset (112 RGB 64 x 64 crops of scikit-image / scikit-learn photographs).

    A `datasets` imagefolder: PNGs plus `metadata.jsonl` with `label` (index of the source photo) and `source`.
    Built by `scripts/build_embedded_dataset.py`.
    """
    return Path(__file__).resolve().parents[1] / "assets" / "photos"


def embedded_class_names() -> list[str]:
    """Names of the embedded dataset's source photographs, indexed by `label`."""
    with open(embedded_dataset_dir() / "classes.json", encoding="utf-8") as f:
        return list(json.load(f))


# ----------------------------------------------------------------------------------------------------------------
# Loading


def scan_folder(path: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Every regular file under `path` (symlinks to regular files included), and the entries that are skipped
    because they are not: FIFOs, sockets, devices, broken symlinks and symlink loops (`(path, reason)` pairs).
    Nothing is opened, so a FIFO can never block the loader."""
    files, skipped = [], []
    for entry in sorted(path.rglob("*")):
        try:
            mode = entry.stat().st_mode  # follows symlinks: ELOOP / ENOENT for loops and dangling links
        except OSError as error:
            skipped.append((str(entry), f"{type(error).__name__}: {error.strerror or error}"))
            continue
        if stat.S_ISREG(mode):
            files.append(entry)
        elif not stat.S_ISDIR(mode):
            kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device or special file"
            skipped.append((str(entry), f"not a regular file ({kind})"))
    return files, skipped


def _data_files(path: Path, files: list[Path]) -> tuple[str, list[str]] | None:
    """`(builder, files)` when `path` is, or directly holds, parquet / arrow files; `None` for an image folder."""
    files = [path] if path.is_file() else files
    for builder, suffixes in (("parquet", _PARQUET_SUFFIXES), ("arrow", _ARROW_SUFFIXES)):
        matches = [str(p) for p in files if p.suffix in suffixes]
        if matches:
            return builder, matches
    if path.is_file():
        raise ValueError(f"train_data_dir={str(path)!r} is a file but not .parquet or .arrow; pass a folder instead.")
    return None


def load_image_dataset(
    dataset_name: str | None = None,
    train_data_dir: str | Path | None = None,
    split: str = "train",
    image_column: str = "image",
    streaming: bool = True,
    label_column: str | None = None,
    skip_counter: "SkipCounter | None" = None,
) -> datasets.IterableDataset | datasets.Dataset:
    """Open an image dataset, checked to be non-empty and to hold the named columns.

    Args:
        dataset_name: a Hub dataset id (or anything `datasets.load_dataset` accepts); streamed when `streaming`.
        train_data_dir: a local image folder (optionally with `metadata.jsonl`), or parquet / arrow file(s).
        split: the split to read.
        image_column: the column holding the images.
        streaming: return a `datasets.IterableDataset` (no full download or conversion) instead of a `Dataset`.
        label_column: if given, must exist in the dataset.
        skip_counter: receives the entries of a local folder that are skipped because they are not regular files
            (FIFOs, sockets, broken symlinks, symlink loops); they are logged either way.

    With both `dataset_name` and `train_data_dir` unset, the embedded photos (`embedded_dataset_dir()`) are used.
    The image column is cast to `datasets.Image(decode=False)`: readers decode with `decode_image` and skip failures.
    """
    if dataset_name is not None and train_data_dir is not None:
        raise ValueError("Pass either dataset_name or train_data_dir, not both.")
    # 1. Open
    if dataset_name is not None:
        check_hub_dataset_reachable(dataset_name)
        dataset = datasets.load_dataset(dataset_name, split=split, streaming=streaming)
        source = f"dataset_name={dataset_name!r}"
    else:
        path = Path(train_data_dir) if train_data_dir is not None else embedded_dataset_dir()
        source = f"train_data_dir={str(path)!r}"
        if not path.exists():
            raise FileNotFoundError(f"{source}: no such file or folder; check the path.")
        regular, skipped = scan_folder(path) if path.is_dir() else ([path], [])
        for where, reason in skipped:
            (skip_counter or SkipCounter()).record(where, ValueError(reason))
        files = _data_files(path, regular)
        if files is None:
            if not any(p.name != "metadata.jsonl" for p in regular):
                raise ValueError(f"{source} is empty: it holds no image files.")
            data_files = {split: [str(p) for p in regular]}
            dataset = datasets.load_dataset("imagefolder", data_files=data_files, split=split, streaming=streaming)
        else:
            builder, data_files = files
            dataset = datasets.load_dataset(builder, data_files={split: data_files}, split=split, streaming=streaming)

    # 2. Check the columns and that there is data
    features = dataset.features
    if features is not None and image_column not in features:
        raise ValueError(
            f"image_column={image_column!r} is not a column of {source}; its columns are {list(features)}. "
            "Pass --image_column."
        )
    if features is not None and label_column is not None and label_column not in features:
        raise ValueError(
            f"label_column={label_column!r} is not a column of {source}; its columns are {list(features)}."
        )
    if features is not None and isinstance(features[image_column], datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    empty = len(dataset) == 0 if isinstance(dataset, datasets.Dataset) else next(iter(dataset.take(1)), None) is None
    if empty:
        raise ValueError(f"{source} (split {split!r}) is empty: it holds no examples.")
    return dataset


LABEL_COLUMN_CANDIDATES = ("label", "labels", "class", "class_label")


def detect_label_column(dataset, label_column: str | None = None, unconditional: bool = False) -> str | None:
    """The column of integer class labels to use: `label_column` when given (checked by `load_image_dataset`),
    `None` when `unconditional`, else the first of `label`, `labels`, `class`, `class_label` that the dataset has
    (a `datasets.ClassLabel` column first). Logs what it found, so an unconditional run is never an accident."""
    if unconditional:
        logger.info("labels: none (unconditional)")
        return None
    if label_column is not None:
        logger.info("labels: column %r (as requested)", label_column)
        return label_column
    features = dataset.features
    if features is None:  # a streamed dataset without declared features: look at its first example
        columns = list(next(iter(dataset.take(1)), {}))
        class_label_columns = []
    else:
        columns = list(features)
        class_label_columns = [name for name in columns if isinstance(features[name], datasets.ClassLabel)]
    for name in [*class_label_columns, *[c for c in LABEL_COLUMN_CANDIDATES if c in columns]]:
        logger.info("labels: found column %r; class-conditional (pass --unconditional to ignore it)", name)
        return name
    logger.info("labels: none found (columns %s); every label is 0 (unconditional)", columns)
    return None


def class_names_of(dataset, label_column: str | None) -> dict[int, str] | None:
    """`{id: name}` from a `datasets.ClassLabel` column, else `None`."""
    features = getattr(dataset, "features", None)
    feature = None if features is None or label_column is None else features.get(label_column)
    if isinstance(feature, datasets.ClassLabel):
        return dict(enumerate(feature.names))
    return None


# ----------------------------------------------------------------------------------------------------------------
# Decoding and transforms


class SkipCounter:
    """Counts examples skipped because their image could not be read, and logs one line per skip."""

    def __init__(self):
        self.count = 0
        self.reasons: list[str] = []

    def record(self, where: str, error: BaseException) -> None:
        self.count += 1
        reason = f"{where}: {type(error).__name__}: {error}"
        if len(self.reasons) < 100:
            self.reasons.append(reason)
        logger.warning("skipped unreadable image #%d (%s)", self.count, reason)

    def __repr__(self) -> str:
        return f"SkipCounter(count={self.count})"


def open_image(value) -> Image.Image:
    """A lazily opened PIL image from a dataset cell: a PIL image, `{"bytes", "path"}` (undecoded `datasets.Image`),
    raw bytes or a path. Only the header is read: `load()` decodes (and raises on corrupt data)."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and (value.get("bytes") is not None or value.get("path") is not None):
        data = value.get("bytes")
        return Image.open(io.BytesIO(data)) if data is not None else Image.open(_regular_file(value["path"]))
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    if isinstance(value, (str, Path)):
        return Image.open(_regular_file(value))
    raise TypeError(f"cannot read an image from a {type(value).__name__}.")


def decode_image(value) -> Image.Image:
    """A PIL image from a dataset cell (see `open_image`). Raises on corrupt data (the image is fully loaded here,
    not lazily)."""
    image = open_image(value)
    image.load()
    return image


def _regular_file(path) -> str:
    """`path` if it is a regular file; a `ValueError` (skipped and counted by the readers) for a FIFO, socket or
    device, which `open` would block on or misread."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path} is not a regular file (FIFO, socket or device)")
    return str(path)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparency is composited on white; 16-bit and float images are rescaled (not
    clipped) to 8 bit; EXIF orientation is applied."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if mode == "F":
            peak = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
        else:
            peak = 65535.0 if mode.startswith("I;16") or array.max(initial=0.0) > 255 else 255.0
        array = np.clip(np.round(array / peak * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


class ImageTransform:
    """Dataset cell or PIL image -> `(3, resolution, resolution)` float32 in [-1, 1].

    Resize the shorter side to `resolution` (bicubic, antialiased), crop a square (centre or random), optionally
    flip horizontally with probability 0.5.

    Given a dataset cell (`{"bytes", "path"}`, bytes or a path) rather than a PIL image, the transform decodes it
    itself: a JPEG whose shorter side is at least twice `resolution` is then decoded at 1/2, 1/4 or 1/8 scale (the
    largest reduction that keeps the shorter side >= `resolution`; libjpeg's DCT-domain scaling through PIL's
    `Image.draft`) and resized from there to exactly the size, region and crop of the full-size path, several times
    faster. The output differs from full decode + resize only by the filters (DCT scaling + bicubic vs bicubic):
    on photographs by about as much as bilinear and bicubic resizing differ from each other (mean |diff| < 0.02,
    max < 0.3 in [-1, 1]; `tests/test_data.py` pins it). JPEGs with an EXIF rotation are decoded at full size.

    Args:
        resolution: output side in pixels.
        center_crop: centre crop (`True`) or random crop (`False`).
        random_flip: flip horizontally with probability 0.5.
        seed: seed of the random crop / flip. The draws for one example depend only on `(seed, epoch, position)`
            passed to `__call__`, so they are reproducible and identical after a resume.
        reduced_decode: decode large JPEGs at reduced size (`False`: always full size).
    """

    def __init__(
        self,
        resolution: int,
        center_crop: bool = True,
        random_flip: bool = False,
        seed: int | None = None,
        reduced_decode: bool = True,
    ):
        if not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive integer, got {resolution!r}.")
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.seed = 0 if seed is None else int(seed)
        self.reduced_decode = reduced_decode
        self.num_upsampled = 0  # images whose shorter side was upscaled 8x or more (counted, logged)

    def _generator(self, epoch: int, position: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(epoch), int(position)])

    def decode(self, value) -> tuple[Image.Image, tuple[int, int], tuple[float, float, float, float] | None]:
        """`(image, full_size, box)`: the decoded image of a dataset cell, its full size, and for a JPEG decoded
        at reduced size the region of the reduced image that maps to the full image (PIL's `draft` box), else
        `None`."""
        image = open_image(value)
        size, box = image.size, None
        if (
            self.reduced_decode
            and image.format == "JPEG"
            and min(size) >= 2 * self.resolution
            and image.getexif().get(_EXIF_ORIENTATION, 1) == 1
        ):
            scale = self.resolution / min(size)
            drafted = image.draft(None, (math.ceil(size[0] * scale), math.ceil(size[1] * scale)))
            if drafted is not None and image.size != size:
                box = drafted[1]
        image.load()
        return image, size, box

    def __call__(self, image, position: int = 0, epoch: int = 0) -> torch.Tensor:
        rng = self._generator(epoch, position)
        box = None
        if not isinstance(image, Image.Image):
            image, full_size, box = self.decode(image)
        image = to_rgb(image)
        # 1. Resize the shorter side (a reduced-size decode: from the region `box` that maps to the full image)
        width, height = full_size if box is not None else image.size
        scale = self.resolution / min(width, height)
        if scale >= 8:
            self.num_upsampled += 1
            if self.num_upsampled in (1, 10, 100) or self.num_upsampled % 1000 == 0:
                logger.warning(
                    "%d image(s) so far were upsampled %dx or more (this one %dx%d px to %d px): check "
                    "--resolution against the data", self.num_upsampled, 8, width, height, self.resolution,
                )  # fmt: skip
        new_size = (max(self.resolution, round(width * scale)), max(self.resolution, round(height * scale)))
        if box is not None:
            image = image.resize(new_size, Image.Resampling.BICUBIC, box=box, reducing_gap=None)
        elif new_size != image.size:
            image = image.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=None)
        # 2. Crop
        width, height = image.size
        if self.center_crop:
            left, top = (width - self.resolution) // 2, (height - self.resolution) // 2
        else:
            left = int(rng.integers(0, width - self.resolution + 1))
            top = int(rng.integers(0, height - self.resolution + 1))
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        # 3. Flip and scale
        if self.random_flip and rng.random() < 0.5:
            image = ImageOps.mirror(image)
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
        return torch.from_numpy(array.transpose(2, 0, 1).copy())  # (3, H, W)

    def __repr__(self) -> str:
        return (
            f"ImageTransform(resolution={self.resolution}, center_crop={self.center_crop}, "
            f"random_flip={self.random_flip}, seed={self.seed}, reduced_decode={self.reduced_decode})"
        )


def _label_of(example: dict, label_column: str | None) -> int:
    if label_column is None:
        return 0
    label = example[label_column]
    if isinstance(label, torch.Tensor):
        label = label.item()
    if not isinstance(label, (int, np.integer)) or isinstance(label, bool):
        raise ValueError(
            f"label_column={label_column!r} must hold integer class indices, got {label!r}; cast the column to "
            "datasets.ClassLabel first."
        )
    return int(label)


class ImageReader:
    """The image decoder of a `diffusers_spectrum.data.ResumableStream`: a dataset row ->
    `{"pixel_values": (3, H, W), "labels": int}` through `transform` (seeded by the example's epoch and key).
    Unreadable images raise `SkipExample` (skipped and counted); images upsampled 8x or more are counted as
    `"upsampled"`. Labels are 0 without `label_column`; a label that is not an integer class index is an error."""

    def __init__(self, transform: ImageTransform, image_column: str = "image", label_column: str | None = None):
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column

    def __call__(self, example: dict, where: Position, counts: dict) -> dict:
        label = _label_of(example, self.label_column)
        cell = example[self.image_column]
        upsampled = self.transform.num_upsampled
        try:
            pixel_values = self.transform(cell, position=where.key, epoch=where.epoch)
        except IMAGE_ERRORS as error:
            raise SkipExample((cell.get("path") if isinstance(cell, dict) else None) or "") from error
        if self.transform.num_upsampled != upsampled:
            counts["upsampled"] = counts.get("upsampled", 0) + 1
        return {"pixel_values": pixel_values, "labels": label}

    def __repr__(self) -> str:
        return f"ImageReader({self.transform!r}, {self.image_column!r}, {self.label_column!r})"


def image_batches(
    dataset,
    batch_size: int,
    transform: ImageTransform,
    image_column: str = "image",
    label_column: str | None = None,
    max_samples: int | None = None,
    skip_counter: SkipCounter | None = None,
) -> Iterator[dict]:
    """One pass over `dataset` in batches of `{"pixel_values": (B, 3, H, W), "labels": (B,) long}`.

    Unreadable images are skipped and counted in `skip_counter`; labels are 0 without `label_column`. The last batch
    may be smaller. Stops after `max_samples` images.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    skip_counter = SkipCounter() if skip_counter is None else skip_counter
    stream = ResumableStream(
        dataset, ImageReader(transform, image_column, label_column), shuffle=False, infinite=False,
        skip_counter=skip_counter,
    )  # fmt: skip
    pixels, labels, seen = [], [], 0
    for sample in stream:
        if max_samples is not None and seen >= max_samples:
            break
        pixels.append(sample["pixel_values"])
        labels.append(sample["labels"])
        seen += 1
        if len(pixels) == batch_size:
            yield {"pixel_values": torch.stack(pixels), "labels": torch.tensor(labels, dtype=torch.long)}
            pixels, labels = [], []
    if pixels:
        yield {"pixel_values": torch.stack(pixels), "labels": torch.tensor(labels, dtype=torch.long)}


# ----------------------------------------------------------------------------------------------------------------
# Analysis and evaluation batches


def open_image_data(data=None, image_column: str = "image", split: str = "train"):
    """A streamed image dataset from a local folder / files, a Hub id or (``None``) the embedded photos; a path that
    looks local and does not exist is a `FileNotFoundError` at once, anything else unreadable one `ValueError`
    naming `data`."""
    if data is not None and looks_local(data) and not Path(str(data)).exists():
        raise FileNotFoundError(f"no such folder or file: the dataset path {str(data)!r} does not exist.")
    if data is None or Path(str(data)).exists():
        kwargs = {"train_data_dir": data}
    else:
        kwargs = {"dataset_name": str(data)}
    try:
        return load_image_dataset(**kwargs, split=split, image_column=image_column, streaming=True)
    except Exception as error:  # datasets raises many kinds (missing repo, offline, bad files); one clear message
        raise ValueError(f"Could not read the dataset {data!r}: {type(error).__name__}: {error}") from error


def data_image_size(data=None, image_column: str = "image", split: str = "train", max_tries: int = 16) -> int:
    """The shorter side in pixels of the first readable image of `data` (as `open_image_data` reads it): the
    resolution at which evaluation neither upsamples nor throws detail away. Raises a `ValueError` naming `data`
    when none of its first `max_tries` examples can be read."""
    dataset = open_image_data(data, image_column, split)
    errors = []
    for example in dataset.take(max_tries):
        try:
            return min(decode_image(example[image_column]).size)
        except (OSError, ValueError, TypeError, SyntaxError, Image.DecompressionBombError) as error:
            errors.append(f"{type(error).__name__}: {error}")
    raise ValueError(f"none of the first {max_tries} images of {data!r} could be read ({'; '.join(errors[:3])}).")


def image_batches_from(
    data=None,
    num_samples: int = 64,
    resolution: int = 256,
    batch_size: int = 8,
    image_column: str = "image",
    split: str = "train",
    skip_counter=None,
    transform: ImageTransform | None = None,
):
    """Image batches ``(B, 3, resolution, resolution)`` in [-1, 1] from a local folder / files, a Hub id or (``None``)
    the embedded photos, streamed, centre-cropped, at most ``num_samples`` images. Pass `transform` (an
    `ImageTransform` at `resolution`) to read its `num_upsampled` count afterwards."""
    dataset = open_image_data(data, image_column, split)
    skip_counter = SkipCounter() if skip_counter is None else skip_counter
    transform = ImageTransform(resolution, center_crop=True, random_flip=False) if transform is None else transform
    if transform.resolution != resolution:
        raise ValueError(f"image_batches_from: transform is {transform.resolution} px, resolution {resolution} px.")
    for batch in image_batches(
        dataset, batch_size, transform, image_column, max_samples=num_samples, skip_counter=skip_counter
    ):
        yield batch["pixel_values"]
