"""Data-stream throughput: images per second of the training image stream with 0, 1, 2 and 4 decoding workers, with
and without the reduced-size JPEG decode, and `cache-latents` split into decode / VAE encode / REPA encoder / write.

Data: folders of quality-90 JPEGs at a typical ImageNet size (500 x 375) and at 1024 x 768, made from the embedded
photo crops (a mosaic of 64 px crops, some upscaled 2x, so the files hold real photographic detail and edges). The
stream is what the trainers run (`ResumableStream` + `ImageReader` at 256 px, centre crop, `make_dataloader`), on the
folder loaded without streaming (split by example, so any number of workers). Images/s are timed after the workers'
start-up, over a whole pass; the best of 3 interleaved rounds is kept (1 with --quick). The cache split times each
stage alone at 256 px: decode (the stream, no workers), the f8d4 SD-VAE encoder (`encode_latents`, mean and std), a
DINOv2-B/14 REPA encoder at 224 px (random weights: the architecture is what costs), and writing parquet rows
(`write_latent_cache`'s shard writer, float16).

Goals on 2 CPU cores: 2 workers >= 1.7x one worker; reduced-size decode >= 2x for 1024 x 768 -> 256. Throughput
depends on the machine's load: record `uptime` with the numbers (run with `nice` on a shared machine).

Usage: python benchmarks/bench_data.py [--quick] [--device cuda] [--json out.json]
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


RESOLUTION = 256
SIZES = {"500x375": (500, 375), "1024x768": (1024, 768)}
WORKERS = (0, 1, 2, 4)


# ----------------------------------------------------------------------------------------------------------------
# Data


def make_jpeg_folder(folder: Path, count: int, size: tuple[int, int], quality: int = 90, seed: int = 0) -> Path:
    """`count` JPEGs of `size`, each a mosaic of the embedded 64 px photo crops (a quarter of the tiles upscaled 2x),
    saved at `quality`. Deterministic in `seed`."""
    from diffusers_spectrum.data.sources import embedded_dataset_dir

    folder.mkdir(parents=True, exist_ok=True)
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(embedded_dataset_dir().glob("*.png"))]
    rng = np.random.default_rng(seed)
    width, height = size
    for index in range(count):
        canvas = np.zeros((height + 128, width + 128, 3), np.uint8)
        y = 0
        while y < height:
            x, row = 0, 64 if rng.random() < 0.75 else 128
            while x < width:
                tile = tiles[int(rng.integers(len(tiles)))]
                if row == 128:
                    tile = np.asarray(Image.fromarray(tile).resize((128, 128), Image.Resampling.BICUBIC))
                canvas[y : y + row, x : x + row] = tile
                x += row
            y += row
        Image.fromarray(canvas[:height, :width]).save(folder / f"{index:05d}.jpg", quality=quality)
    return folder


def image_stream_rate(folder: Path, workers: int, reduced: bool, batch_size: int = 8, passes: int = 1) -> float:
    """Images/s of the trainers' image stream over `folder` at 256 px with `workers` decoding workers, timed over
    `passes` whole passes after a warm-up batch per worker (worker start-up excluded)."""
    from diffusers_spectrum.data import ResumableStream, make_dataloader
    from diffusers_spectrum.data.images import ImageReader, ImageTransform
    from diffusers_spectrum.data.sources import load_image_dataset

    dataset = load_image_dataset(train_data_dir=folder, streaming=False)
    transform = ImageTransform(RESOLUTION, center_crop=True, reduced_decode=reduced)
    loader = make_dataloader(ResumableStream(dataset, ImageReader(transform), seed=0), batch_size, num_workers=workers)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a worker: one stream, one thread (threaded collation stalls under load)
    try:
        iterator = iter(loader)
        for _ in range(max(workers, 1) * 2):  # start-up, and each worker's prefetched batches
            next(iterator)
        count = max(passes * len(dataset) // batch_size, 2)
        start = time.perf_counter()
        for _ in range(count):
            next(iterator)
        return count * batch_size / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def transform_rate(folder: Path, reduced: bool) -> float:
    """Images/s of `ImageTransform` alone (read the file, decode, resize, crop, to a tensor) in this process: the
    decode speed-up without the stream around it."""
    from diffusers_spectrum.data.images import ImageTransform

    transform = ImageTransform(RESOLUTION, center_crop=True, reduced_decode=reduced)
    files = sorted(folder.glob("*.jpg"))
    start = time.perf_counter()
    for path in files:
        transform({"bytes": None, "path": str(path)})
    return len(files) / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------------------------
# Cache-latents stages


def f8d4_vae():
    """The f8d4 SD-VAE architecture (`--vae_config f8d4`), random weights."""
    from diffusers_spectrum.models import SpectrumAutoencoderKL
    from diffusers_spectrum.models.presets import VAE_PRESETS

    preset = VAE_PRESETS["f8d4"]
    levels = len(preset["block_out_channels"])
    return SpectrumAutoencoderKL(
        **preset,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        sample_size=RESOLUTION,
    ).eval()


def dinov2_base_encoder(device, folder: Path):
    """A DINOv2-B/14 (86 M parameters) REPA target encoder with random weights, loaded as the cache loads one."""
    from transformers import Dinov2Config, Dinov2Model

    from diffusers_spectrum.models.encoders import RepresentationEncoder

    Dinov2Model(Dinov2Config(image_size=224, patch_size=14)).save_pretrained(folder)
    return RepresentationEncoder.from_pretrained(str(folder), device=device)


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def cache_stage_times(device: str, batch_size: int, repeats: int, decode_rate: float, workdir: Path) -> dict:
    """Milliseconds per image of each `cache-latents` stage at 256 px (bfloat16 autocast on CUDA)."""
    from diffusers_spectrum.training import latent_cache

    torch.manual_seed(0)
    images = torch.rand(batch_size, 3, RESOLUTION, RESOLUTION, device=device) * 2 - 1
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    vae = f8d4_vae().to(device)
    with autocast:
        encoded = latent_cache.encode_latents(vae, images, "mean_std")
        vae_s = _timed(lambda: latent_cache.encode_latents(vae, images, "mean_std"), repeats)
    vae = None  # free it before the encoder
    encoder = dinov2_base_encoder(device, workdir / "dinov2-base")
    with autocast:
        features = encoder(images, (16, 16)).float().cpu()  # (B, 256, 768): the DiT-B/2 token grid of 32 x 32 latents
        repa_s = _timed(lambda: encoder(images, (16, 16)), repeats)
    rows = {
        "latents": list(encoded["latents"].numpy().astype(np.float16)),
        "latents_std": list(encoded["latents_std"].numpy().astype(np.float16)),
        "label": [0] * batch_size,
        "source_index": list(range(batch_size)),
        "repa_features": list(features.numpy().astype(np.float16)),
    }
    columns = latent_cache._features(encoded["latents"].shape[1:], True, features.shape[1:], "float16")
    write_s = _timed(lambda: latent_cache._write_shard(workdir / "shard.parquet", rows, columns), repeats)
    per_image = {
        "decode": 1000 / decode_rate,
        "vae_encode": 1000 * vae_s / batch_size,
        "repa_encoder": 1000 * repa_s / batch_size,
        "write": 1000 * write_s / batch_size,
    }
    return {"batch_size": batch_size, "device": device, "ms_per_image": per_image}


# ----------------------------------------------------------------------------------------------------------------
# Run


def measure(
    quick: bool = False, device: str = "cpu", workers=WORKERS, count: int | None = None, cache_stages: bool = True
) -> dict:
    """Every number, as a dict (what `gpu_check.py` stores). `count` images per folder (default 64 quick, else 256);
    `cache_stages=False` leaves out the encoder stages."""
    count = count or (64 if quick else 256)
    rounds = 1 if quick else 3
    results = {
        "images_per_folder": count,
        "resolution": RESOLUTION,
        "rounds": rounds,
        "stream": {},
        "uptime": _uptime(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plan = []
        for name, size in SIZES.items():
            folder = make_jpeg_folder(root / name, count, size)
            results["stream"][name] = {}
            for reduced in (True, False):
                plan += [(name, folder, w, reduced) for w in (workers if reduced else (0, max(workers)))]
        # best of `rounds`, the configurations interleaved, so load from other processes hits them alike
        results["transform"] = {name: {} for name in SIZES}
        for _ in range(rounds):
            for name, folder, w, reduced in plan:
                key = f"{'reduced' if reduced else 'full'}_w{w}"
                rate = image_stream_rate(folder, w, reduced)
                results["stream"][name][key] = max(rate, results["stream"][name].get(key, 0.0))
            for name, folder, w, reduced in plan:
                if w == 0:
                    key, rates = "reduced" if reduced else "full", results["transform"][name]
                    rates[key] = max(transform_rate(folder, reduced), rates.get(key, 0.0))
        decode_rate = results["stream"]["500x375"]["reduced_w0"]
        batch, repeats = (64, 3) if device == "cuda" else ((2, 1) if quick else (4, 2))
        if cache_stages:
            results["cache"] = cache_stage_times(device, batch, repeats, decode_rate, root)
    results["uptime_after"] = _uptime()
    return results


def _uptime() -> str:
    try:
        with open("/proc/loadavg", encoding="utf-8") as f:
            return "load average " + ", ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def rows_from(results: dict) -> list[dict]:
    rows = []
    for name, rates in results["stream"].items():
        base = rates["reduced_w1"]
        for key, rate in rates.items():
            decode, workers = key.split("_w")
            if decode == "full":
                continue
            target = "2 workers >= 1.7x one worker" if workers == "2" else ""
            rows.append(
                _row(
                    f"image stream {name} JPEG -> {RESOLUTION} px, {workers} worker(s)",
                    "throughput",
                    rate,
                    "img/s",
                    rate / base if workers != "1" else None,
                    target,
                )
            )
        for workers in sorted({int(k.split("_w")[1]) for k in rates if k.startswith("full")}):
            full = rates[f"full_w{workers}"]
            reduced = rates[f"reduced_w{workers}"]
            target = ">= 2x" if name == "1024x768" else "~1x (source < 2x target: not reduced)"
            rows.append(
                _row(
                    f"image stream {name} JPEG, {workers} worker(s): reduced-size / full decode",
                    "speed-up",
                    reduced,
                    "img/s",
                    reduced / full,
                    target,
                )
            )
    for name, rates in results.get("transform", {}).items():
        target = ">= 2x" if name == "1024x768" else "~1x (source < 2x target: not reduced)"
        rows.append(
            _row(
                f"ImageTransform alone {name} JPEG -> {RESOLUTION} px: reduced-size / full decode",
                "speed-up",
                rates["reduced"],
                "img/s",
                rates["reduced"] / rates["full"],
                target,
            )
        )
    if "cache" not in results:
        return rows
    stages = results["cache"]["ms_per_image"]
    total = sum(stages.values())
    where = f"{results['cache']['device']}, batch {results['cache']['batch_size']}"
    for stage, ms in stages.items():
        rows.append(_row(f"cache-latents {stage} ({where})", "time per image", ms, "ms", ms / total, "share of sum"))
    rows.append(
        _row(
            "cache-latents, all stages in line (decode in the process)",
            "throughput",
            1000 / total,
            "img/s",
            None,
            f"load: {results['uptime']}",
        )
    )
    return rows


def _row(benchmark, metric, value, unit, ratio, target) -> dict:
    return {"benchmark": benchmark, "metric": metric, "value": value, "unit": unit, "ratio": ratio, "target": target}


def run(quick: bool = False) -> list[dict]:
    return rows_from(measure(quick))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 images per folder, smaller encoder batches")
    parser.add_argument("--device", default="cpu", help="device of the encoder stages (cpu or cuda)")
    parser.add_argument("--workers", default=",".join(map(str, WORKERS)), help="worker counts, comma-separated")
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    results = measure(args.quick, args.device, tuple(int(w) for w in args.workers.split(",")))
    for row in rows_from(results):
        ratio = "" if row["ratio"] is None else f"  ({row['ratio']:.2f}x)"
        print(f"{row['benchmark']:<75} {row['value']:9.2f} {row['unit']}{ratio}  {row['target']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
