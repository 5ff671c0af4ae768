"""Images: robust decoding, the transform, the stream's reader and plain batches (datasets come from `sources`).

- `ImageTransform`: a dataset cell or PIL image, any mode (grayscale, RGBA, palette, 16-bit, float) -> RGB ->
  resize, crop, flip -> `(3, H, W)` float32 in [-1, 1]; a JPEG at least twice the target size is decoded at 1/2,
  1/4 or 1/8 scale first (libjpeg's DCT scaling). Its randomness is a function of `(seed, epoch, position)`, so a
  resumed run draws the same crops and flips as an uninterrupted one.
- `ImageReader`: the image decoder of `diffusers_spectrum.data.ResumableStream` (the worker-aware, resumable
  training stream; batches come from `diffusers_spectrum.data.make_dataloader`).
- `image_batches`: one pass over a dataset as `{"pixel_values", "labels"}` batches (for latent statistics, caching);
  `image_batches_from` the same from a folder, Hub id or the embedded photos, centre-cropped (analysis, evaluation).
"""

import io
import logging
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .sources import open_image_data
from .stream import Position, ResumableStream, SkipCounter, SkipExample


__all__ = [
    "IMAGE_ERRORS",
    "ImageReader",
    "ImageTransform",
    "data_image_size",
    "decode_image",
    "image_batches",
    "image_batches_from",
    "open_image",
    "to_rgb",
]

logger = logging.getLogger(__name__)

IMAGE_ERRORS = (OSError, ValueError, TypeError, SyntaxError, Image.DecompressionBombError)  # unreadable: skipped
_EXIF_ORIENTATION = 0x0112


# ----------------------------------------------------------------------------------------------------------------
# Decoding and transforms


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
                    "--resolution against the data",
                    self.num_upsampled,
                    8,
                    width,
                    height,
                    self.resolution,
                )
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
        dataset,
        ImageReader(transform, image_column, label_column),
        shuffle=False,
        infinite=False,
        skip_counter=skip_counter,
    )
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


def data_image_size(data=None, image_column: str = "image", split: str = "train", max_tries: int = 16) -> int:
    """The shorter side in pixels of the first readable image of `data` (as `open_image_data` reads it): the
    resolution at which evaluation neither upsamples nor throws detail away. Raises a `ValueError` naming `data`
    when none of its first `max_tries` examples can be read."""
    dataset = open_image_data(data, image_column, split)
    errors = []
    for example in dataset.take(max_tries):
        try:
            return min(decode_image(example[image_column]).size)
        except IMAGE_ERRORS as error:
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
