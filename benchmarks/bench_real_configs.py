"""The trainers at their real configurations: a few steps of each, timed inside the real training loop.

Configurations: the f8d4 SD-VAE at 256 px (`train_spectrum_vae.py --recipe sd-vae`, LPIPS off: no weights offline),
DiT-B/2 and DiT-XL/2 on 32 x 32 x 4 cached latents (`train_dit_repa.py`), the `ddpm-256` UNet at 256 px
(`train_unconditional.py`) and the Dance Diffusion UNet on 65 536-sample clips (`train_audio.py`). Each runs in its
own process on generated data (256 px JPEGs from the embedded photos; a latent cache of them; the embedded sounds):
the trainer's own loop runs, its data loader is wrapped to time the interval between consecutive batches (one
optimizer step: data, forward, backward, AdamW), and the run stops after the timed steps. Reported: the median
step time after the warm-up steps (1 on CPU, 2 on CUDA), images (or clips) per second, peak memory (peak RSS on CPU,
`torch.cuda.max_memory_allocated` on CUDA), and the data-stream headroom: images/s of the same loader alone (its
workers, no model) / images/s of training. Headroom < 1 means the GPU waits for data.

On CPU: batch 1-2, float32. With `--device cuda`: bfloat16 autocast, TF32, the real batch sizes below, 8 workers.

Usage: python benchmarks/bench_real_configs.py [--quick] [--device cuda] [--only vae-f8d4,dit-b2] [--json out.json]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# name: (trainer module, per-device batch on CPU, on CUDA, what one example is)
CONFIGS = {
    "vae-f8d4-256px": ("vae", 1, 16, "img"),
    "dit-b2-32x32-latents": ("dit", 2, 256, "img"),
    "dit-xl2-32x32-latents": ("dit", 1, 64, "img"),
    "ddpm-256-unet-256px": ("unconditional", 1, 32, "img"),
    "dance-unet-65536-samples": ("audio", 1, 16, "clip"),
}
DRY_RUN = {"dit-tiny-dry-run": ("dit", 2, 2, "img")}  # gpu_check.py --dry_run: the plumbing, not a measurement
QUICK = ("vae-f8d4-256px", "dit-b2-32x32-latents", "ddpm-256-unet-256px", "dance-unet-65536-samples")
WARMUP_STEPS = {"cpu": 1, "cuda": 2}  # steps before timing (allocation; cuDNN autotuning and the like on CUDA)


class StopBenchmark(Exception):
    """Raised from the timed loader once the timed steps are done: the trainer stops there."""


class TimedLoader:
    """Wraps a trainer's data loader: records when each batch was handed over and how long the trainer waited."""

    def __init__(self, loader, batches: int):
        self.loader, self.batches = loader, batches
        self.stamps, self.waits, self.iterator = [], [], None

    def __iter__(self):
        self.iterator = iter(self.loader)
        while True:
            start = time.perf_counter()
            batch = next(self.iterator)
            now = time.perf_counter()
            self.waits.append(now - start)
            self.stamps.append(now)
            if len(self.stamps) == self.batches:  # the end of the last timed step: stop before another one
                raise StopBenchmark
            yield batch

    def __getattr__(self, name):
        return getattr(self.loader, name)


# ----------------------------------------------------------------------------------------------------------------
# Data


def prepare_data(root: Path, quick: bool) -> dict:
    """256 px-ready JPEGs (500 x 375) and a latent cache of 32 x 32 x 4 latents made from them by a small f8 VAE."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_data import make_jpeg_folder

    from diffusers_spectrum.data.images import ImageTransform
    from diffusers_spectrum.data.sources import load_image_dataset
    from diffusers_spectrum.models import SpectrumAutoencoderKL
    from diffusers_spectrum.training.latent_cache import write_latent_cache

    images = make_jpeg_folder(root / "images", 16 if quick else 64, (500, 375))
    vae = SpectrumAutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=256,
        layers_per_block=1,
        dsm_levels=(0,),
    ).eval()
    vae.save_pretrained(root / "vae")
    dataset = load_image_dataset(train_data_dir=images, streaming=False)
    write_latent_cache(
        root / "cache",
        dataset,
        vae,
        ImageTransform(256),
        batch_size=16,
        shard_size=16,
        metadata={"pretrained_vae": str(root / "vae")},
        show_progress=False,
    )
    return {"images": str(images), "cache": str(root / "cache")}


def trainer_args(name: str, data: dict, out: Path, device: str, batch: int, workers: int) -> list[str]:
    common = [
        "--output_dir",
        str(out),
        "--train_batch_size",
        str(batch),
        "--max_train_steps",
        "1000",
        "--checkpointing_steps",
        "1000",
        "--validation_steps",
        "1000",
        "--report_to",
        "none",
        "--dataloader_num_workers",
        str(workers),
    ]
    if device == "cuda":
        common += ["--mixed_precision", "bf16", "--allow_tf32"]
    images = ["--train_data_dir", data["images"], "--no_streaming", "--resolution", "256"]
    if name == "vae-f8d4-256px":
        return [
            *common,
            *images,
            "--vae_config",
            "f8d4",
            "--recipe",
            "sd-vae",
            "--perceptual_loss",
            "none",
            "--latent_stats_samples",
            "1",
            "--num_validation_images",
            "1",
        ]
    if name.startswith("dit-"):
        preset = "tiny" if "tiny" in name else "B/2" if "-b2-" in name else "XL/2"
        return [*common, "--latent_dataset", data["cache"], "--dit_config", preset, "--num_validation_images", "1"]
    if name == "ddpm-256-unet-256px":
        return [*common, *images, "--unet_config", "ddpm-256"]
    return [*common, "--unet_config", "dance", "--sample_size", "65536", "--num_validation_samples", "1"]


# ----------------------------------------------------------------------------------------------------------------
# One configuration (child process)


def run_config(name: str, data: dict, out: Path, device: str, steps: int, workers: int) -> dict:
    import importlib

    import torch

    module_name, cpu_batch, cuda_batch, unit = {**CONFIGS, **DRY_RUN}[name]
    warmup = WARMUP_STEPS[device]
    batch = cuda_batch if device == "cuda" else cpu_batch
    module = importlib.import_module(f"diffusers_spectrum.training.{module_name}")
    loop = importlib.import_module("diffusers_spectrum.training.loop")  # the trainers import the loader from here
    timed = {}
    real_loader = loop.train_dataloader

    def timed_loader(*args, **kwargs):
        timed["loader"] = TimedLoader(real_loader(*args, **kwargs), warmup + steps + 1)
        return timed["loader"]

    loop.train_dataloader = timed_loader
    train = {"vae": "train_vae", "dit": "train_dit", "unconditional": "train_unconditional", "audio": "train_audio"}
    args = module.parse_args(trainer_args(name, data, out, device, batch, workers))
    start = time.perf_counter()
    try:
        getattr(module, train[module_name])(args)
        raise RuntimeError(f"{name}: the trainer finished before the timed steps ended")
    except StopBenchmark:
        pass
    loader = timed["loader"]
    intervals = [b - a for a, b in zip(loader.stamps[warmup:], loader.stamps[warmup + 1 :])]
    step = statistics.median(intervals)
    waits = statistics.median(loader.waits[warmup + 1 :])
    # the same loader alone (its workers, no model): what the data stream can deliver
    for _ in range(2 * max(workers, 1)):  # batches the workers prefetched during the last step
        next(loader.iterator)
    count = 4 if name.startswith("dit-") or device == "cuda" else 2
    data_start = time.perf_counter()
    for _ in range(count):
        next(loader.iterator)
    stream_rate = count * batch / (time.perf_counter() - data_start)
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "config": name,
        "device": device,
        "batch_size": batch,
        "unit": unit,
        "steps_timed": len(intervals),
        "step_seconds": step,
        "step_seconds_all": intervals,
        "data_wait_seconds": waits,
        "warmup_steps": warmup,
        "examples_per_second": batch / step,
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": "cuda max_memory_allocated" if device == "cuda" else "peak RSS",
        "workers": workers,
        "stream_examples_per_second": stream_rate,
        "headroom": stream_rate / (batch / step),
        "wall_seconds": time.perf_counter() - start,
    }


def _child(argv: list[str]) -> None:
    name, data_json, out, device, steps, workers = argv
    result = run_config(name, json.loads(data_json), Path(out), device, int(steps), int(workers))
    print("\n" + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Run


def measure(quick: bool = False, device: str = "cpu", only=None, workers: int | None = None) -> dict:
    names = [n for n in (only or (QUICK if quick else CONFIGS)) if n in CONFIGS or n in DRY_RUN]
    steps = 2 if quick else 3
    workers = (8 if device == "cuda" else 2) if workers is None else workers
    results = {"device": device, "workers": workers, "load_before": _load(), "configs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = prepare_data(root, quick)
        for name in names:
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
            command = [
                sys.executable,
                __file__,
                "--_child",
                name,
                json.dumps(data),
                str(root / name.replace("/", "")),
                device,
                str(steps),
                str(workers),
            ]
            result = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
            lines = result.stdout.strip().splitlines()
            if result.returncode != 0 or not lines:
                results["configs"][name] = {"config": name, "error": f"exit status {result.returncode}"}
                continue
            results["configs"][name] = json.loads(lines[-1])
    results["load_after"] = _load()
    return results


def _load() -> str:
    try:
        with open("/proc/loadavg", encoding="utf-8") as f:
            return "load average " + ", ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def rows_from(results: dict) -> list[dict]:
    rows = []
    for name, r in results["configs"].items():
        if "error" in r:
            rows.append(_row(f"{name} FAILED", r["error"], None, "", None, ""))
            continue
        label = f"{name} ({r['device']}, batch {r['batch_size']}, {r['workers']} workers)"
        rows.append(
            _row(
                label,
                "step time (median)",
                1000 * r["step_seconds"],
                "ms",
                None,
                f"{r['steps_timed']} steps after {WARMUP_STEPS[r['device']]} warm-up",
            )
        )
        rows.append(_row(label, f"{r['unit']}/s", r["examples_per_second"], f"{r['unit']}/s", None, ""))
        rows.append(_row(label, r["peak_memory_kind"], r["peak_memory_mb"], "MB", None, ""))
        rows.append(
            _row(
                label,
                "data-stream headroom (stream / training)",
                r["stream_examples_per_second"],
                f"{r['unit']}/s",
                r["headroom"],
                ">= 1 (the GPU never waits)",
            )
        )
    rows.append(
        _row(
            "machine load during the run",
            f"{results['load_before']} -> {results['load_after']}",
            None,
            "",
            None,
            "noisy above ~1 on 2 cores",
        )
    )
    return rows


def _row(benchmark, metric, value, unit, ratio, target) -> dict:
    return {"benchmark": benchmark, "metric": metric, "value": value, "unit": unit, "ratio": ratio, "target": target}


def run(quick: bool = False) -> list[dict]:
    return rows_from(measure(quick))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        _child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 timed steps; DiT-XL/2 left out")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {sorted(CONFIGS)}")
    parser.add_argument("--workers", type=int, default=None, help="dataloader workers (default: 2 on CPU, 8 on CUDA)")
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    args = parser.parse_args()
    results = measure(args.quick, args.device, args.only.split(",") if args.only else None, args.workers)
    for row in rows_from(results):
        value = "" if row["value"] is None else f"{row['value']:10.1f}"
        ratio = "" if row["ratio"] is None else f" ({row['ratio']:.2f}x)"
        print(f"{row['benchmark']:<70} {row['metric']:<42} {value} {row['unit']}{ratio}")
    print(results["load_before"], "->", results["load_after"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
