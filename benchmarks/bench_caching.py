"""Latent caching throughput and peak memory at two dataset sizes (streaming must keep memory flat).

A local imagefolder of N synthetic 128 x 128 PNG images (smooth colour fields plus sharp-edged discs) is encoded by
`diffusers_spectrum.training.latent_cache.write_latent_cache` (what `examples/cache_latents.py` runs) with a small VAE,
streamed, into sharded parquet. Each size runs in a fresh subprocess. Memory is the RSS (sampled every 20 ms: peak
and median) above the RSS after a warm-up caching run of one 64-image shard (model, imports, parquet writer and
allocator pools excluded); the ratio large / small near 1.0x means memory does not grow with the dataset.
Throughput is sensitive to other load on the machine.

Usage: python benchmarks/bench_caching.py [--quick]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


VAE_CONFIG = dict(
    block_out_channels=(32, 64, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=128,
)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _write_images(folder: Path, count: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        a, b, c = rng.uniform(0, 6, size=3)
        base = np.stack([np.sin(a * x + b * y + k) for k in (0, 2, 4)], axis=-1) * 0.4 + 0.5
        base[(x - rng.uniform()) ** 2 + (y - rng.uniform()) ** 2 < c / 60] *= 0.3  # a disc with sharp edges
        pixels = np.clip(base + rng.normal(scale=0.02, size=base.shape), 0, 1)
        Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"{i:06d}.png")


def _child(data_dir: str, out_dir: str, count: int, resolution: int, batch_size: int) -> dict:
    """Runs in a subprocess: encode `count` images, report throughput and memory."""
    import torch
    from diffusers import AutoencoderKL

    from diffusers_spectrum.data.images import ImageTransform
    from diffusers_spectrum.data.sources import load_image_dataset
    from diffusers_spectrum.training.latent_cache import write_latent_cache

    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    dataset = load_image_dataset(train_data_dir=data_dir, streaming=True)
    transform = ImageTransform(resolution)
    # warm-up: one shard through the same code path (imports, parquet writer, allocator pools), then the baseline
    write_latent_cache(
        out_dir + "_warmup",
        dataset,
        vae,
        transform,
        batch_size=batch_size,
        shard_size=64,
        max_samples=64,
        show_progress=False,
    )
    baseline = _current_rss_mb()
    samples, done = [], threading.Event()

    def sample_rss() -> None:  # RSS every 20 ms while caching runs
        while not done.wait(0.02):
            samples.append(_current_rss_mb())

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    start = time.perf_counter()
    info = write_latent_cache(
        out_dir, dataset, vae, transform, batch_size=batch_size, shard_size=64, show_progress=False
    )
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    samples = samples or [_current_rss_mb()]
    return {
        "images": info["num_examples"],
        "seconds": elapsed,
        "images_per_s": info["num_examples"] / elapsed,
        "peak_above_baseline_mb": max(max(samples) - baseline, 0.0),
        "median_above_baseline_mb": max(statistics.median(samples) - baseline, 0.0),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _measure(count: int, resolution: int, batch_size: int, root: Path) -> dict:
    data_dir, out_dir = root / f"images_{count}", root / f"cache_{count}"
    _write_images(data_dir, count, resolution)
    command = [
        sys.executable,
        __file__,
        "--_child",
        str(data_dir),
        str(out_dir),
        str(count),
        str(resolution),
        str(batch_size),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"caching subprocess failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    sizes = (64, 256) if quick else (256, 1024)
    resolution, batch_size = 128, 16
    with tempfile.TemporaryDirectory() as folder:
        small, large = (_measure(n, resolution, batch_size, Path(folder)) for n in sizes)
    rows = []
    for stats in (small, large):
        rows.append(
            {
                "benchmark": f"latent caching, {stats['images']} imgs {resolution}px, small VAE (f8), streamed",
                "metric": "throughput",
                "value": stats["images_per_s"],
                "unit": "img/s",
                "ratio": None if stats is small else stats["images_per_s"] / small["images_per_s"],
                "target": "baseline" if stats is small else "~1.0x (throughput independent of size)",
            }
        )
    for key, label in (("peak_above_baseline_mb", "peak"), ("median_above_baseline_mb", "median")):
        for stats in (small, large):
            ratio = stats[key] / max(small[key], 1.0)
            rows.append(
                {
                    "benchmark": f"  {label} RSS above warm baseline, {stats['images']} imgs",
                    "metric": "memory",
                    "value": stats[key],
                    "unit": "MB",
                    "ratio": None if stats is small else ratio,
                    "target": "baseline"
                    if stats is small
                    else f"flat: <= 1.2x (or < +32 MB) for {sizes[1] // sizes[0]}x the data",
                }
            )
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        data_dir, out_dir, count, resolution, batch_size = sys.argv[2:7]
        print(json.dumps(_child(data_dir, out_dir, int(count), int(resolution), int(batch_size))))
        sys.exit(0)
    from bench_esm import print_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller datasets")
    print_table(run(parser.parse_args().quick))
