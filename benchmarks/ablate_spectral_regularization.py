"""Ablation of the spectral regularisers on unconditional pixel-space diffusion (a miniature, CPU-sized).

The same tiny UNet2DModel is trained with `diffusers_spectrum.training.unconditional.train_unconditional` (the code
users run) on random crops of the embedded photos, with the same budget and seeds, for: no regulariser, the Fourier
loss, the wavelet loss and both, under DDPM (epsilon prediction) and EDM, over several seeds. Each model samples a
fixed number of images (DDIM for DDPM, `DDIMScheduler.from_config(pipe.scheduler.config)` in a `DDIMPipeline`; the
saved EDM Euler scheduler in `EDMPipeline` for EDM), which are compared with held-out crops (crops of photos that no
training crop comes from) by the Laplacian-pyramid sliced Wasserstein distance (`pyramid_swd`, x 1e3, mean over
levels) and the radially averaged log-power-spectrum distance (`spectrum_distance`); mean +- std over seeds. The
regulariser overhead per training step comes from `bench_unet_regularizers.py` (added work timed alone / step).

Incremental: every finished run is appended to the JSON at once, and a re-run with the same budget skips the runs
the JSON already holds (an interrupted ablation resumes where it stopped). A different budget starts a new JSON.

Writes `docs/spectral_regularization.json` (runs, summary, overhead, command line, seeds, budget, versions, wall
time), `docs/SPECTRAL_REGULARIZATION.md` (the table, generated) and `docs/spectral_regularization.png`.

Usage: python benchmarks/ablate_spectral_regularization.py [--quick] [--output_dir docs] [--work_dir DIR]
"""

import argparse
import importlib
import json
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


BENCHMARK_DIR = Path(__file__).resolve().parent
ROOT = BENCHMARK_DIR.parent
FORMULATIONS = ("ddpm", "edm")
REGULARIZERS = ("none", "fourier", "wavelet", "both")
JSON_NAME = "spectral_regularization.json"
PAGE_NAME = "SPECTRAL_REGULARIZATION.md"
FIGURE_NAME = "spectral_regularization.png"

# The budgets. The issue asks for about one hour on 2 CPU cores with e.g. 32 px crops; the full run here is sized to
# about 20 minutes on 2 idle cores (32 px crops, 300 steps, 32 samples per model): the page says so.
BUDGETS = {
    "full": dict(
        resolution=32, crops_per_photo=8, train_batch_size=8, max_train_steps=300, learning_rate=1e-3,
        lr_warmup_steps=0, num_samples=32, sampling_steps=50, seeds=(0, 1, 2), fourier_weight=0.1,
        wavelet_weight=0.1, unet_config="tiny",
    ),
    "quick": dict(
        resolution=32, crops_per_photo=2, train_batch_size=4, max_train_steps=2, learning_rate=1e-3,
        lr_warmup_steps=0, num_samples=8, sampling_steps=4, seeds=(0,), fourier_weight=0.1, wavelet_weight=0.1,
        unet_config="tiny",
    ),
}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Data: random crops of the embedded photos, split by photo


def photo_split(photos: list[Path]) -> tuple[list[Path], list[Path]]:
    """Every 4th photo (sorted by name) is held out; the others are training photos."""
    return [p for i, p in enumerate(photos) if i % 4 != 3], [p for i, p in enumerate(photos) if i % 4 == 3]


def random_crops(photo: Path, count: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` random `size` x `size` RGB crops (uint8 `(size, size, 3)`) of one photo."""
    image = np.asarray(Image.open(photo).convert("RGB"))
    height, width = image.shape[:2]
    if height < size or width < size:
        raise ValueError(f"photo {photo.name} ({width}x{height}) is smaller than the crop size {size}.")
    tops = rng.integers(0, height - size + 1, count)
    lefts = rng.integers(0, width - size + 1, count)
    return [image[top : top + size, left : left + size] for top, left in zip(tops, lefts)]


def prepare_data(work_dir: Path, budget: dict) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """Write the training crops as PNGs to `work_dir/train` and return (that folder, held-out crops, a same-size set
    of training crops) as `(N, 3, H, W)` tensors in [-1, 1] (N = `num_samples`)."""
    from diffusers_spectrum.training.data import embedded_dataset_dir

    photos = sorted(embedded_dataset_dir().glob("*.png"))
    train_photos, heldout_photos = photo_split(photos)
    size, count = budget["resolution"], budget["num_samples"]
    rng = np.random.default_rng(1234)
    train_dir = work_dir / "train"
    shutil.rmtree(train_dir, ignore_errors=True)
    train_dir.mkdir(parents=True)
    train_crops = []
    for photo in train_photos:
        for k, crop in enumerate(random_crops(photo, budget["crops_per_photo"], size, rng)):
            Image.fromarray(crop).save(train_dir / f"{photo.stem}_{k}.png")
            train_crops.append(crop)
    per_photo = math.ceil(count / len(heldout_photos))
    heldout = [c for p in heldout_photos for c in random_crops(p, per_photo, size, rng)]
    order = rng.permutation(len(heldout))[:count]
    reference = rng.permutation(len(train_crops))[:count]
    return train_dir, _to_tensor([heldout[i] for i in order]), _to_tensor([train_crops[i] for i in reference])


def _to_tensor(crops: list[np.ndarray]) -> torch.Tensor:
    array = np.stack(crops).astype(np.float32) / 127.5 - 1.0  # (N, H, W, 3)
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# One run: train, sample, measure


def run_key(formulation: str, regularizer: str, seed: int) -> str:
    return f"{formulation}/{regularizer}/seed{seed}"


def train_argv(formulation: str, regularizer: str, seed: int, budget: dict, train_dir: Path, out: Path) -> list:
    """The command line of one run (`train_unconditional`'s flags)."""
    fourier = budget["fourier_weight"] if regularizer in ("fourier", "both") else 0.0
    wavelet = budget["wavelet_weight"] if regularizer in ("wavelet", "both") else 0.0
    return [
        "--train_data_dir", str(train_dir), "--output_dir", str(out), "--unet_config", budget["unet_config"],
        "--resolution", str(budget["resolution"]), "--random_flip", "--formulation", formulation,
        "--prediction_type", "epsilon", "--train_batch_size", str(budget["train_batch_size"]),
        "--max_train_steps", str(budget["max_train_steps"]), "--learning_rate", str(budget["learning_rate"]),
        "--lr_scheduler", "constant", "--lr_warmup_steps", str(budget["lr_warmup_steps"]),
        "--checkpointing_steps", str(budget["max_train_steps"]), "--validation_steps", "1000000000",
        "--report_to", "none", "--seed", str(seed), "--fourier_weight", str(fourier), "--wavelet_weight", str(wavelet),
        "--no_streaming",
    ]  # fmt: skip


def sampling_pipeline(folder: Path, formulation: str):
    """DDIM from the saved DDPM folder (as the model card shows), or the saved EDMPipeline."""
    if formulation == "edm":
        from diffusers_spectrum.pipelines.edm_pipeline import EDMPipeline

        pipe = EDMPipeline.from_pretrained(folder)
    else:
        from diffusers import DDIMPipeline, DDIMScheduler, DiffusionPipeline

        stock = DiffusionPipeline.from_pretrained(folder)
        pipe = DDIMPipeline(unet=stock.unet, scheduler=DDIMScheduler.from_config(stock.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generation_metrics(samples: torch.Tensor, heldout: torch.Tensor) -> dict:
    """SWD x 1e3 (mean over pyramid levels, and per level) and the log-spectrum distance to the held-out crops."""
    from diffusers_spectrum.evaluation.generation_metrics import pyramid_swd, spectrum_distance

    levels = pyramid_swd(samples, heldout, seed=0) * 1e3
    return {
        "swd_x1e3": float(levels.mean()),
        "swd_levels_x1e3": [float(v) for v in levels],
        "spectrum_distance": float(spectrum_distance(samples, heldout)),
    }


def one_run(formulation: str, regularizer: str, seed: int, budget: dict, train_dir: Path, heldout, work_dir):
    """Train, sample `num_samples` images (seeds 10000 + i) and measure; returns the run's record."""
    from diffusers_spectrum.pipelines.sampling import pipeline_samples
    from diffusers_spectrum.training.unconditional import parse_args, train_unconditional

    out = work_dir / "runs" / run_key(formulation, regularizer, seed).replace("/", "_")
    shutil.rmtree(out, ignore_errors=True)
    argv = train_argv(formulation, regularizer, seed, budget, train_dir, out)
    start = time.perf_counter()
    folder = train_unconditional(parse_args(argv))
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    pipe = sampling_pipeline(folder, formulation)
    samples = torch.cat(list(pipeline_samples(
        pipe, budget["num_samples"], batch_size=budget["num_samples"], num_inference_steps=budget["sampling_steps"],
        seed=10000, progress=False,
    )))  # fmt: skip
    sample_seconds = time.perf_counter() - start
    final = json.loads((folder / "metrics.json").read_text())
    record = {
        "formulation": formulation, "regularizer": regularizer, "seed": seed,
        "final_training_loss": final.get("loss"), "final_diffusion_loss": final.get("diffusion"),
        "train_seconds": round(train_seconds, 2), "sample_seconds": round(sample_seconds, 2),
        **generation_metrics(samples, heldout),
    }  # fmt: skip
    if seed == budget["seeds"][0]:
        grid = work_dir / "grids" / f"{formulation}_{regularizer}.pt"
        grid.parent.mkdir(parents=True, exist_ok=True)
        torch.save(samples[:16].clone(), grid)
    shutil.rmtree(out, ignore_errors=True)  # checkpoints and weights are not kept (the numbers are)
    return record


# ----------------------------------------------------------------------------------------------------------------
# Summary, page and figure


def mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and sample std over seeds per (formulation, regulariser)."""
    rows = []
    for formulation in FORMULATIONS:
        for regularizer in REGULARIZERS:
            group = [r for r in runs if r["formulation"] == formulation and r["regularizer"] == regularizer]
            if not group:
                continue
            row = {"formulation": formulation, "regularizer": regularizer, "num_seeds": len(group)}
            for key in ("swd_x1e3", "spectrum_distance", "train_seconds"):
                row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r[key] for r in group])
            rows.append(row)
    return rows


def overhead(budget: dict, quick: bool) -> list[dict]:
    """Regulariser time / training step time for the ablation's UNet and batch (bench_unet_regularizers)."""
    sys.path.insert(0, str(BENCHMARK_DIR))
    bench = importlib.import_module("bench_unet_regularizers")
    rows = bench.overhead_rows(
        budget["unet_config"], budget["resolution"], budget["train_batch_size"], 2 if quick else 5, torch.device("cpu")
    )
    return [{"benchmark": r["benchmark"], "regularizer_ms": r["value"], "ratio": r["ratio"]} for r in rows]


def verdict(summary: list[dict]) -> list[str]:
    """One sentence per formulation: does a regulariser beat `none` by more than the seeds' spread (both metrics)?"""
    lines = []
    for formulation in FORMULATIONS:
        rows = {r["regularizer"]: r for r in summary if r["formulation"] == formulation}
        if "none" not in rows:
            continue
        base = rows["none"]
        parts = []
        for name in REGULARIZERS[1:]:
            if name not in rows:
                continue
            row = rows[name]
            if min(row["num_seeds"], base["num_seeds"]) < 2:
                parts.append(f"{name}: one seed only, no spread to judge a difference against")
                continue
            outcomes = []
            for key, label in (("swd_x1e3", "SWD"), ("spectrum_distance", "spectrum distance")):
                delta = row[f"{key}_mean"] - base[f"{key}_mean"]
                spread = math.hypot(row[f"{key}_std"], base[f"{key}_std"])
                if abs(delta) <= spread:
                    outcomes.append(f"{label} within the seed spread ({delta:+.3g})")
                else:
                    outcomes.append(f"{label} {'lower (better)' if delta < 0 else 'higher (worse)'} ({delta:+.3g})")
            parts.append(f"{name}: " + ", ".join(outcomes))
        lines.append(f"- **{formulation.upper()}** vs no regulariser: " + "; ".join(parts) + ".")
    return lines


def write_figure(summary: list[dict], work_dir: Path, path: Path) -> None:
    """Bars of SWD and spectrum distance (mean +- std over seeds) per regulariser and formulation, and the first
    seed's samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusers_spectrum.training.utils import image_grid

    figure, axes = plt.subplots(1, 4, figsize=(17, 3.8), gridspec_kw={"width_ratios": [1, 1, 1.1, 1.1]})
    width = 0.38
    x = np.arange(len(REGULARIZERS))
    panels = (("swd_x1e3", "SWD x 1e3 (lower is better)"),
              ("spectrum_distance", "log-spectrum distance (lower is better)"))  # fmt: skip
    for panel, (key, label) in enumerate(panels):
        ax = axes[panel]
        for offset, formulation in zip((-width / 2, width / 2), FORMULATIONS):
            rows = {r["regularizer"]: r for r in summary if r["formulation"] == formulation}
            means = [rows[n][f"{key}_mean"] if n in rows else np.nan for n in REGULARIZERS]
            stds = [rows[n][f"{key}_std"] if n in rows else 0.0 for n in REGULARIZERS]
            ax.bar(x + offset, means, width, yerr=stds, capsize=3, label=formulation.upper())
        ax.set_xticks(x, REGULARIZERS)
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=8)
    for ax, formulation in zip(axes[2:], FORMULATIONS):
        grids = []
        for name in ("none", "both"):
            file = work_dir / "grids" / f"{formulation}_{name}.pt"
            if file.is_file():
                grids.append(image_grid(torch.load(file, weights_only=True), nrow=4))
        if grids:
            ax.imshow(np.concatenate(grids, axis=1))
        ax.set_title(f"{formulation.upper()} samples: none (left) | both (right)", fontsize=10)
        ax.axis("off")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_page(result: dict, path: Path) -> None:
    """docs/SPECTRAL_REGULARIZATION.md, generated from the JSON."""
    budget, summary = result["budget"], result["summary"]
    table = ["| formulation | regulariser | SWD x 1e3 | log-spectrum distance | train s / run | seeds |",
             "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in summary:
        table.append(
            f"| {r['formulation'].upper()} | {r['regularizer']} | {r['swd_x1e3_mean']:.2f} +- {r['swd_x1e3_std']:.2f} "
            f"| {r['spectrum_distance_mean']:.3f} +- {r['spectrum_distance_std']:.3f} | "
            f"{r['train_seconds_mean']:.1f} | {r['num_seeds']} |"
        )
    reference = result["reference"]
    table.append(
        f"| data | training crops (same count) | {reference['swd_x1e3']:.2f} | {reference['spectrum_distance']:.3f} "
        "| | |"
    )
    over = ["| step | regulariser time | ratio to the step |", "|---|---:|---:|"]
    over += [f"| {o['benchmark']} | {o['regularizer_ms']:.2f} ms | {o['ratio']:.4f} |" for o in result["overhead"]]
    machine = result["machine"]
    text = f"""# Spectral regularisation on unconditional pixel-space diffusion: a CPU miniature

Generated by `{result["command"]}` (`benchmarks/ablate_spectral_regularization.py`); the numbers below are read
from [`spectral_regularization.json`](spectral_regularization.json), which also holds every run. Do not edit by hand.

## What was run

- Model: the `{budget["unet_config"]}` `UNet2DModel` preset, {budget["resolution"]} px, trained with
  `diffusers-spectrum train-unconditional` (`training.unconditional.train_unconditional`).
- Data: random {budget["resolution"]} px crops of the embedded photos ({budget["crops_per_photo"]} per photo, drawn
  once with a fixed seed, plus random flips); every 4th photo is held out, and {budget["num_samples"]} random crops of
  the held-out photos are the reference set.
- Budget per run: {budget["max_train_steps"]} optimizer steps of batch {budget["train_batch_size"]}, AdamW lr
  {budget["learning_rate"]} (constant), no EMA; Fourier weight {budget["fourier_weight"]}, wavelet weight
  {budget["wavelet_weight"]} (3-level Haar, L1), `signal` timestep weighting. Seeds {list(budget["seeds"])} (init,
  data order, noise).
- Formulations: DDPM with epsilon prediction (1000 linear-beta steps), sampled with DDIM
  ({budget["sampling_steps"]} steps, `DDIMScheduler.from_config(pipe.scheduler.config)`); EDM (sigma_data 0.5,
  P_mean -1.2, P_std 1.2), sampled with the saved `EDMEulerScheduler` ({budget["sampling_steps"]} steps).
- Metrics: {budget["num_samples"]} samples per model against the {budget["num_samples"]} held-out crops: the
  Laplacian-pyramid sliced Wasserstein distance (Karras et al. 2018; x 1e3, mean over the pyramid levels) and the RMS
  difference of the log radially averaged power spectra; mean +- sample std over the seeds.
- Machine: {machine["cpu"]}, {machine["cores"]} cores, torch {machine["versions"]["torch"]},
  diffusers {machine["versions"]["diffusers"]}. Wall time of the whole ablation: {result["wall_seconds"] / 60:.1f}
  min.

**The budget is below the issue's.** The issue sizes the ablation at about one hour on 2 CPU cores with e.g. 32 px
crops; this run used {result["wall_seconds"] / 60:.0f} minutes: {budget["resolution"]} px crops, each model gets
{budget["max_train_steps"]} steps of batch {budget["train_batch_size"]} of the `{budget["unet_config"]}` UNet and is
measured on {budget["num_samples"]} samples. At this budget the models are early in training; the numbers say whether
the regularisers change early training in this miniature, not how they behave at convergence or at the higher
resolutions where the paper reports its largest gains.

## Results

{chr(10).join(table)}

The last row is the floor of the metrics at this sample count: training crops against the held-out crops.

Outcome (a difference counts only when it exceeds the root-sum-square of the two seed standard deviations):

{chr(10).join(verdict(summary))}

![SWD and spectrum distance per regulariser, and samples](spectral_regularization.png)

## Overhead of the regularisers on a training step

Regulariser work timed alone (x0 recovery, losses, timestep weighting, backward to the model output) against a
training step without it, best of several runs (`benchmarks/bench_unet_regularizers.py`; goal <= 2%):

{chr(10).join(over)}

## Reproduce

```bash
python benchmarks/ablate_spectral_regularization.py           # this page (about {result["wall_seconds"] / 60:.0f} min here)
python benchmarks/ablate_spectral_regularization.py --quick   # about a minute, smoke test
```
Runs already in the JSON with the same budget are skipped, so an interrupted ablation resumes where it stopped.
"""
    path.write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# Driver


def machine() -> dict:
    import diffusers

    import diffusers_spectrum

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": __import__("os").cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "diffusers_spectrum": diffusers_spectrum.__version__},
    }  # fmt: skip


def load_previous(path: Path, budget: dict) -> dict | None:
    """The JSON of an earlier run with the same budget (to resume), else None."""
    if not path.is_file():
        return None
    previous = json.loads(path.read_text())
    return previous if previous.get("budget") == json.loads(json.dumps(budget)) else None


def run_ablation(quick: bool = False, output_dir: Path = ROOT / "docs", work_dir: Path | None = None) -> dict:
    """Run (or resume) the ablation; writes the JSON after every run, then the page and the figure."""
    from diffusers_spectrum.training.utils import write_json

    budget = BUDGETS["quick" if quick else "full"]
    output_dir = Path(output_dir)
    json_path = output_dir / JSON_NAME
    from diffusers_spectrum.run_folders import claim_output_dir

    own_work_dir = work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="ablation-")) if own_work_dir else Path(work_dir)
    # a given --work_dir must be new, empty or this study's: its train/ and runs/ are replaced, nothing else
    claim_output_dir(work_dir, "ablate-spectral-regularization", ("train", "runs"), flag="--work_dir")
    previous = load_previous(json_path, budget)
    result = previous or {
        "command": "python benchmarks/ablate_spectral_regularization.py" + (" --quick" if quick else ""),
        "budget": budget, "seeds": list(budget["seeds"]), "runs": [], "wall_seconds": 0.0,
    }  # fmt: skip
    result["machine"] = machine()
    start = time.perf_counter() - result["wall_seconds"]
    train_dir, heldout, reference = prepare_data(work_dir, budget)
    result["reference"] = generation_metrics(reference, heldout)
    done = {run_key(r["formulation"], r["regularizer"], r["seed"]) for r in result["runs"]}
    try:
        for seed in budget["seeds"]:
            for formulation in FORMULATIONS:
                for regularizer in REGULARIZERS:
                    if run_key(formulation, regularizer, seed) in done:
                        continue
                    record = one_run(formulation, regularizer, seed, budget, train_dir, heldout, work_dir)
                    result["runs"].append(record)
                    result["wall_seconds"] = round(time.perf_counter() - start, 1)
                    write_json(json_path, result, sort_keys=False)  # incremental: one line per finished run
                    print(
                        f"{run_key(formulation, regularizer, seed)}: SWDx1e3 {record['swd_x1e3']:.2f}, spectrum "
                        f"distance {record['spectrum_distance']:.3f}, {record['train_seconds']:.0f} s",
                        flush=True,
                    )
        result["summary"] = summarize(result["runs"])
        result["overhead"] = overhead(budget, quick)
        result["wall_seconds"] = round(time.perf_counter() - start, 1)
        write_json(json_path, result, sort_keys=False)
        write_figure(result["summary"], work_dir, output_dir / FIGURE_NAME)
        write_page(result, output_dir / PAGE_NAME)
    finally:
        if own_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke run (1 seed, 2 steps, 8 samples)")
    parser.add_argument("--output_dir", type=Path, default=ROOT / "docs", help="where the JSON, page and figure go")
    parser.add_argument("--work_dir", type=Path, default=None, help="crops and run folders (default: a temp dir)")
    cli = parser.parse_args()
    run_ablation(cli.quick, cli.output_dir, cli.work_dir)
