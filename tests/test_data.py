"""Image data: the embedded photos, image modes, reduced-size JPEG decoding, corrupt files, empty datasets, and the
resumable, sharded training stream over images (workers and processes)."""

import io
import json
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from diffusers_spectrum.data import ResumableStream, make_dataloader
from diffusers_spectrum.data.images import ImageReader, ImageTransform, image_batches, to_rgb
from diffusers_spectrum.data.sources import embedded_class_names, embedded_dataset_dir, load_image_dataset
from diffusers_spectrum.data.stream import SkipCounter


REPO = Path(__file__).resolve().parents[1]


def _write_folder(folder: Path, count: int, size=(40, 24), corrupt: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"img_{i:02d}.png")
    for i in range(corrupt):
        (folder / f"bad_{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return folder


def _batches(loader, count):
    iterator = iter(loader)
    return [next(iterator) for _ in range(count)]


def image_loader(dataset, batch_size, transform, *, state=None, num_workers=0, label_column=None, **stream_kwargs):
    """What the trainers build: a `ResumableStream` of `ImageReader` samples in `make_dataloader` batches."""
    stream = ResumableStream(dataset, ImageReader(transform, "image", label_column), **stream_kwargs)
    drop_last = stream_kwargs.get("infinite", True)
    return make_dataloader(stream, batch_size, num_workers=num_workers, state=state, drop_last=drop_last)


# ----------------------------------------------------------------------------------------------------------------
# The embedded dataset


def test_embedded_dataset_is_small_labelled_rgb_photos():
    folder = embedded_dataset_dir()
    total_bytes = sum(p.stat().st_size for p in folder.iterdir())
    assert total_bytes < 1_500_000
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    names = embedded_class_names()
    assert len(rows) == 112 and len(names) == 7
    assert {row["label"] for row in rows} == set(range(7))
    assert all(names[row["label"]] == row["source"] for row in rows)
    image = Image.open(folder / rows[0]["file_name"])
    assert image.mode == "RGB" and image.size == (64, 64)

    dataset = load_image_dataset(label_column="label")  # default: the embedded photos, streamed
    assert isinstance(dataset, datasets.IterableDataset)
    labels = torch.cat([b["labels"] for b in image_batches(dataset, 50, ImageTransform(32), label_column="label")])
    assert torch.equal(torch.bincount(labels), torch.full((7,), 16))


def test_embedded_dataset_builder_is_deterministic(tmp_path):
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_embedded_dataset.py"), "--output_dir", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    shipped = sorted(p.name for p in embedded_dataset_dir().iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == shipped
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (embedded_dataset_dir() / name).read_bytes(), name


def test_embedded_photos_have_natural_power_law_spectra():
    from diffusers_spectrum.spectral import power_law_slope, radial_spectrum

    batch = next(image_batches(load_image_dataset(), 64, ImageTransform(64)))["pixel_values"]
    slope = float(power_law_slope(radial_spectrum(batch).mean(0, keepdim=True)))
    noise_slope = float(power_law_slope(radial_spectrum(torch.randn_like(batch)).mean(0, keepdim=True)))
    assert slope < -1.5  # natural photographs: steep power law; white noise: flat
    assert abs(noise_slope) < 0.3


# ----------------------------------------------------------------------------------------------------------------
# Image modes and the transform


def _png_roundtrip(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize(
    ("array", "mode"),
    [
        (np.array([[0, 128, 255]], dtype=np.uint8), "L"),
        (np.array([[0, 32896, 65535]], dtype=np.uint16), "I;16"),  # a 16-bit PNG, as PIL reads it back
        (np.array([[0.0, 128 / 255, 1.0]], dtype=np.float32), "F"),
    ],
    ids=["grayscale", "16-bit", "float"],
)
def test_single_channel_modes_become_gray_rgb_without_clipping(array, mode):
    image = Image.fromarray(array)
    if mode == "I;16":
        image = _png_roundtrip(image)
        assert image.mode.startswith("I")
    else:
        assert image.mode == mode
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (1, 3, 3)
    np.testing.assert_allclose(rgb[0], np.repeat(np.array([[0], [128], [255]]), 3, axis=1), atol=1)


def test_rgba_is_composited_on_white_and_palette_is_expanded():
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 255, 0)  # fully transparent
    np.testing.assert_array_equal(np.asarray(to_rgb(Image.fromarray(rgba)))[0], [[255, 0, 0], [255, 255, 255]])

    palette_image = Image.new("P", (2, 1))
    palette_image.putdata([0, 1])
    palette_image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    np.testing.assert_array_equal(np.asarray(to_rgb(palette_image))[0], [[10, 20, 30], [200, 100, 50]])


def test_transform_center_crop_matches_manual_resize_and_crop():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8))  # W 40, H 20
    out = ImageTransform(10)(image)
    assert out.shape == (3, 10, 10) and out.dtype == torch.float32
    expected = image.resize((20, 10), Image.Resampling.BICUBIC, reducing_gap=None).crop((5, 0, 15, 10))
    expected = torch.from_numpy(np.asarray(expected, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
    torch.testing.assert_close(out, expected)
    assert out.min() >= -1 and out.max() <= 1


def test_random_crop_and_flip_are_a_function_of_seed_epoch_and_position():
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (48, 120, 3), dtype=np.uint8))  # resized to 16 x 40: 25 crops
    transform = ImageTransform(16, center_crop=False, random_flip=True, seed=3)
    torch.testing.assert_close(transform(image, position=5, epoch=1), transform(image, position=5, epoch=1))
    outputs = [transform(image, position=p) for p in range(40)]
    distinct = {tuple(o.flatten()[:32].tolist()) for o in outputs}
    assert len(distinct) > 15  # different positions draw different crops
    no_flip = ImageTransform(16, center_crop=False, random_flip=False, seed=3)
    flipped = 0
    for position, out in enumerate(outputs):
        plain = no_flip(image, position=position)  # same crop draw, no flip draw
        assert torch.equal(out, plain) or torch.equal(out, plain.flip(-1))
        flipped += int(not torch.equal(out, plain))
    assert 5 < flipped < 35  # about half are flipped


# ----------------------------------------------------------------------------------------------------------------
# Sources, corrupt files, empty datasets


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    folder = _write_folder(tmp_path / "imgs", count=5, corrupt=2)
    for streaming in (True, False):
        counter = SkipCounter()
        dataset = load_image_dataset(train_data_dir=folder, streaming=streaming)
        batches = list(image_batches(dataset, 2, ImageTransform(16), skip_counter=counter))
        assert sum(len(b["pixel_values"]) for b in batches) == 5
        assert counter.count == 2 and len(counter.reasons) == 2
        assert all(torch.equal(b["labels"], torch.zeros(len(b["labels"]), dtype=torch.long)) for b in batches)

    for workers in (0, 2):
        dataset = load_image_dataset(train_data_dir=folder, streaming=False)
        loader = image_loader(dataset, 2, ImageTransform(16), num_workers=workers)
        _batches(loader, 6)  # 12 images from 5 good ones: more than two passes
        assert loader.counts()["skipped"] >= 4  # counted in the workers, read here
        assert all("bad_" in reason for reason in loader.skip_reasons())

    only_corrupt = _write_folder(tmp_path / "bad", count=0, corrupt=3)
    loader = image_loader(load_image_dataset(train_data_dir=only_corrupt), 2, ImageTransform(16))
    with pytest.raises(ValueError, match="could be used"):  # an endless loop over nothing is an error
        next(iter(loader))


def test_parquet_files_load_streamed_and_in_memory(tmp_path):
    images = [Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)) for i in range(3)]
    buffers = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        buffers.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"img": datasets.Image(), "y": datasets.Value("int64")})
    table = datasets.Dataset.from_dict({"img": buffers, "y": [2, 0, 1]}, features=features)
    (tmp_path / "data").mkdir()
    table.to_parquet(str(tmp_path / "data" / "train-00000.parquet"))
    for streaming in (True, False):
        dataset = load_image_dataset(train_data_dir=tmp_path / "data", image_column="img", streaming=streaming)
        batch = next(image_batches(dataset, 3, ImageTransform(8), image_column="img", label_column="y"))
        assert torch.equal(batch["labels"], torch.tensor([2, 0, 1]))
        torch.testing.assert_close(batch["pixel_values"][:, 0, 0, 0], torch.tensor([0, 40, 80]) / 127.5 - 1)


def test_empty_or_missing_datasets_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        load_image_dataset(train_data_dir=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_image_dataset(train_data_dir=tmp_path / "missing")
    empty = datasets.Dataset.from_dict({"image": []}, features=datasets.Features({"image": datasets.Image()}))
    empty.to_parquet(str(tmp_path / "empty.parquet"))
    with pytest.raises(ValueError, match="empty"):
        load_image_dataset(train_data_dir=tmp_path / "empty.parquet")
    with pytest.raises(ValueError, match="image_column"):
        load_image_dataset(image_column="pixels")
    with pytest.raises(ValueError, match="not both"):
        load_image_dataset(dataset_name="x/y", train_data_dir=tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# Resumable, sharded stream


@pytest.mark.parametrize(("streaming", "workers"), [(True, 0), (False, 0), (False, 2)])
def test_dataloader_resumes_exactly_across_epochs(tmp_path, streaming, workers):
    folder = _write_folder(tmp_path / "imgs", count=7, corrupt=1)
    dataset = load_image_dataset(train_data_dir=folder, streaming=streaming)
    transform = ImageTransform(8, center_crop=False, random_flip=True, seed=0)
    kwargs = {"num_workers": workers, "seed": 5, "shuffle_buffer_size": 4}
    full = _batches(image_loader(dataset, 3, transform, **kwargs), 8)  # 24 samples: three epochs of 7 good images
    for resume_after in (2, 5):
        first = image_loader(dataset, 3, transform, **kwargs)
        _batches(first, resume_after)
        state = json.loads(json.dumps(first.state_dict()))  # what the checkpoint stores
        resumed = _batches(image_loader(dataset, 3, transform, state=state, **kwargs), 8 - resume_after)
        for expected, got in zip(full[resume_after:], resumed):
            torch.testing.assert_close(got["pixel_values"], expected["pixel_values"], rtol=0, atol=0)
    # every epoch is a reshuffle of the same 7 images
    epoch_one = torch.cat([b["pixel_values"] for b in full])[:7]
    epoch_two = torch.cat([b["pixel_values"] for b in full])[7:14]
    assert not torch.equal(epoch_one, epoch_two)


def test_processes_and_workers_get_disjoint_shares_that_cover_the_dataset(tmp_path):
    folder = _write_folder(tmp_path / "imgs", count=8)
    everything = torch.cat(
        [b["pixel_values"] for b in image_batches(load_image_dataset(train_data_dir=folder), 8, ImageTransform(8))]
    )
    keys = lambda x: sorted(tuple(v.flatten()[:16].tolist()) for v in x)  # noqa: E731
    for streaming, workers in ((True, 0), (False, 2)):
        dataset = load_image_dataset(train_data_dir=folder, streaming=streaming)
        seen = []
        for rank in range(2):
            loader = image_loader(
                dataset,
                1,
                ImageTransform(8),
                num_workers=workers,
                num_processes=2,
                process_index=rank,
                shuffle=False,
                infinite=False,
            )
            seen.append(torch.cat([b["pixel_values"] for b in loader]))
        assert len(seen[0]) == len(seen[1]) == 4
        assert not set(keys(seen[0])) & set(keys(seen[1]))
        assert keys(torch.cat(seen)) == keys(everything)
    with pytest.raises(ValueError, match="process_index"):
        image_loader(dataset, 4, ImageTransform(8), num_processes=2, process_index=2)
    streamed_folder = load_image_dataset(train_data_dir=folder, streaming=True)  # one shard: no worker split
    with pytest.raises(ValueError, match="1 shard.*--no_streaming"):
        image_loader(streamed_folder, 4, ImageTransform(8), num_workers=2)


# ----------------------------------------------------------------------------------------------------------------
# Reduced-size JPEG decoding


def _jpeg_photo(tmp_path, name: str, size: tuple[int, int]) -> Path:
    """A photograph (scikit-image's sample) saved as a quality-90 JPEG of `size`."""
    from skimage import data

    photo = getattr(data, name)()
    photo = np.stack([photo] * 3, -1) if photo.ndim == 2 else photo[..., :3]
    path = tmp_path / f"{name}_{size[0]}x{size[1]}.jpg"
    Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS).save(path, quality=90)
    return path


def _full_decode(path, resolution: int, resample) -> torch.Tensor:
    """The reference: full decode, shorter side to `resolution` with `resample`, centre crop."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), resample, reducing_gap=None)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    array = np.asarray(image.crop((left, top, left + resolution, top + resolution)), dtype=np.float32)
    return torch.from_numpy(array / 127.5 - 1).permute(2, 0, 1)


@pytest.mark.parametrize(
    ("name", "size", "resolution"),
    [("astronaut", (512, 512), 128), ("chelsea", (640, 426), 128), ("coffee", (1024, 768), 256)],
)
def test_reduced_size_jpeg_decode_matches_full_decode_up_to_the_resize_filter(tmp_path, name, size, resolution):
    path = _jpeg_photo(tmp_path, name, size)
    transform = ImageTransform(resolution)
    image, full_size, box = transform.decode({"bytes": None, "path": str(path)})
    assert full_size == size and box is not None and min(image.size) >= resolution  # decoded at 1/2 or 1/4 scale
    assert image.size[0] < size[0] and min(image.size) < 2 * resolution

    reduced = transform({"bytes": path.read_bytes(), "path": None})
    full = ImageTransform(resolution, reduced_decode=False)({"bytes": path.read_bytes(), "path": None})
    torch.testing.assert_close(full, _full_decode(path, resolution, Image.Resampling.BICUBIC), rtol=0, atol=0)
    difference = (reduced - full).abs()
    # The stated tolerance: the DCT-scaled decode + bicubic differs from full decode + bicubic by at most 0.02 mean
    # and 0.3 max (in [-1, 1]), no more than bilinear and bicubic resizing of the full image differ (+25 %).
    bilinear = (_full_decode(path, resolution, Image.Resampling.BILINEAR) - full).abs()
    assert difference.mean() < 0.02 and difference.max() < 0.3
    assert difference.mean() < 1.25 * bilinear.mean() and difference.max() < 1.25 * max(bilinear.max(), 0.2)
    # same geometry: the images are aligned (a one-pixel shift would be far worse than the filter difference)
    shifted = (reduced[:, :, 1:] - full[:, :, :-1]).abs().mean()
    assert difference.mean() < 0.5 * shifted


def test_small_pngs_and_rotated_jpegs_are_decoded_at_full_size(tmp_path):
    path = _jpeg_photo(tmp_path, "astronaut", (512, 512))
    small = ImageTransform(300)  # the source is less than twice the target
    assert small.decode(str(path))[2] is None
    png = tmp_path / "photo.png"
    Image.open(path).save(png)
    assert ImageTransform(64).decode(str(png))[2] is None
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.open(path).save(rotated, quality=90, exif=exif)
    transform = ImageTransform(64)
    assert transform.decode(str(rotated))[2] is None
    torch.testing.assert_close(transform(str(rotated)), transform(ImageOps.exif_transpose(Image.open(rotated))))


def test_data_image_size_is_the_first_readable_images_shorter_side_and_batches_count_upsampling(tmp_path):
    from diffusers_spectrum.data.images import data_image_size, image_batches_from

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(folder / "b.png")  # 20 wide, 12 high
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(folder / "c.png")
    assert data_image_size(str(folder)) == 12
    transform, skips = ImageTransform(24), SkipCounter()
    batches = list(image_batches_from(str(folder), 8, 24, 8, skip_counter=skips, transform=transform))
    assert [tuple(b.shape) for b in batches] == [(2, 3, 24, 24)]
    assert skips.count == 1 and transform.num_upsampled == 1  # 3 px -> 24 px is 8x; 12 px -> 24 px is 2x
