"""Ablation of the spectral regularisers on unconditional pixel-space diffusion (a miniature, CPU-sized).

The same tiny UNet2DModel is trained with `diffusers_spectrum.training.unconditional.train_unconditional` (the code
users run) on random crops of the embedded photos, with the same budget and seeds, for: no regulariser, the Fourier
loss, the wavelet loss and both, under DDPM (epsilon prediction) and EDM, over several seeds. Each model samples a
fixed number of images (DDIM for DDPM, `DDIMScheduler.from_config(pipe.scheduler.config)` in a `DDIMPipeline`; the
saved EDM Euler scheduler in `EDMPipeline` for EDM), which are compared with held-out crops (crops of photos that no
training crop comes from) by every metric of `evaluation.study_metrics.GenerationMetricSuite`: the radially averaged
log-power-spectrum distance, the Laplacian-pyramid SWD as published and its colour-aware variant, and KID / FD in
the features of a small net trained here on the training photos (and of a random-init one). The blur check decides
which of them the study relies on; the data floor (training crops against the held-out crops, same count) anchors
them. Arms are compared with their formulation's unregularised arm per shared seed (`evaluation.statistics`: t and
bootstrap intervals, Holm's correction over every arm x tested metric). The regulariser overhead per training step
comes from `bench_unet_regularizers.py` (added work timed alone / step).

Incremental: every finished run is appended to the JSON at once, and a re-run with the same budget skips the runs
the JSON already holds (an interrupted ablation resumes where it stopped). A different budget starts a new JSON.
`--reanalyse JSON` rewrites the analysis and the page of a stored JSON without training (the blur check is recomputed
from the crops; what the stored runs lack is listed on the page).

Writes `docs/spectral_regularization.json` (runs with their train / sample seconds, summary, analysis, overhead,
command line, seeds, budget, versions, wall time), `docs/SPECTRAL_REGULARIZATION.md` (generated) and
`docs/spectral_regularization.png`.

Usage: python benchmarks/ablate_spectral_regularization.py [--quick] [--output_dir docs] [--work_dir DIR]
       python benchmarks/ablate_spectral_regularization.py --reanalyse docs/spectral_regularization.json
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
PAIRED_FIGURE_NAME = "spectral_regularization_paired.png"
METRIC_LABELS = {
    "spectrum_distance": "spectrum distance",
    "swd_pooled_x1e3": "colour-aware SWD x1e3",
    "swd_x1e3": "SWD x1e3 (published)",
    "kid_trained": "KID (trained net)",
    "fd_trained": "FD (trained net)",
    "kid_random": "KID (random net)",
    "fd_random": "FD (random net)",
    "final_diffusion_loss": "final diffusion loss",
}

# The budgets. The issue sizes the ablation at about one hour on 2 CPU cores with e.g. 32 px crops; the stored full run
# (32 samples per model) took 17 minutes on 2 idle cores. Issue 18 asks for as many samples as sampling allows: 512.
BUDGETS = {
    "full": dict(
        resolution=32, crops_per_photo=8, train_batch_size=8, max_train_steps=300, learning_rate=1e-3,
        lr_warmup_steps=0, num_samples=512, sampling_steps=50, seeds=(0, 1, 2), fourier_weight=0.1,
        wavelet_weight=0.1, unet_config="tiny", feature_net_steps=400, blur_splits=8,
    ),
    "quick": dict(
        resolution=32, crops_per_photo=2, train_batch_size=4, max_train_steps=2, learning_rate=1e-3,
        lr_warmup_steps=0, num_samples=8, sampling_steps=4, seeds=(0,), fourier_weight=0.1, wavelet_weight=0.1,
        unet_config="tiny", feature_net_steps=5, blur_splits=1,
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


def prepare_data(work_dir: Path, budget: dict) -> dict:
    """Write the training crops as PNGs to `work_dir/train`; return that folder, the held-out crops and a same-size
    set of training crops (`(N, 3, H, W)` in [-1, 1], N = `num_samples`; the data floor), the training photos (for
    the feature net) and the blur-check crops."""
    from diffusers_spectrum.data.sources import embedded_dataset_dir

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
    return {
        "train_dir": train_dir,
        "heldout": _to_tensor([heldout[i] for i in order]),
        "train_reference": _to_tensor([train_crops[i] for i in reference]),
        "train_photos": _to_tensor([np.asarray(Image.open(p).convert("RGB")) for p in train_photos]),
        "blur_crops": blur_check_crops(heldout_photos, size),
    }


def blur_check_crops(heldout_photos: list[Path], size: int = 32, per_photo: int = 3) -> torch.Tensor:
    """``per_photo`` random crops of every held-out photo (own seed: the same set for every budget), >= 64 crops."""
    rng = np.random.default_rng(4321)
    return _to_tensor([c for p in heldout_photos for c in random_crops(p, per_photo, size, rng)])


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


def one_run(formulation: str, regularizer: str, seed: int, budget: dict, train_dir: Path, heldout, work_dir, suite):
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
        pipe, budget["num_samples"], batch_size=min(budget["num_samples"], 128),
        num_inference_steps=budget["sampling_steps"], seed=10000, progress=False,
    )))  # fmt: skip
    sample_seconds = time.perf_counter() - start
    final = json.loads((folder / "metrics.json").read_text())
    record = {
        "formulation": formulation, "regularizer": regularizer, "seed": seed,
        "final_training_loss": final.get("loss"), "final_diffusion_loss": final.get("diffusion"),
        "train_seconds": round(train_seconds, 2), "sample_seconds": round(sample_seconds, 2),
        **suite.measure(samples, heldout),
    }  # fmt: skip
    if seed == budget["seeds"][0]:
        grid = work_dir / "grids" / f"{formulation}_{regularizer}.pt"
        grid.parent.mkdir(parents=True, exist_ok=True)
        torch.save(samples[:16].clone(), grid)
    shutil.rmtree(out, ignore_errors=True)  # checkpoints and weights are not kept (the numbers are)
    return record


# ----------------------------------------------------------------------------------------------------------------
# Summary, analysis, page and figures


def measured_metrics(runs: list[dict]) -> list[str]:
    """The metrics every run holds, in `METRIC_LABELS` order."""
    return [m for m in METRIC_LABELS if runs and all(r.get(m) is not None for r in runs)]


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and sample SD (ddof 1; ``*_std``) over seeds per (formulation, regulariser), every measured metric and
    the training seconds."""
    from diffusers_spectrum.evaluation.statistics import mean_sd

    rows = []
    for formulation in FORMULATIONS:
        for regularizer in REGULARIZERS:
            group = [r for r in runs if r["formulation"] == formulation and r["regularizer"] == regularizer]
            if not group:
                continue
            row = {"formulation": formulation, "regularizer": regularizer, "num_seeds": len(group)}
            for key in [*measured_metrics(runs), "train_seconds"]:
                stat = mean_sd(r[key] for r in group)
                row[f"{key}_mean"], row[f"{key}_std"] = stat["mean"], stat["sd"] if stat["n"] > 1 else 0.0
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


def analyse(result: dict, blur_check: dict | None = None) -> dict:
    """Paired comparisons of each regulariser with its formulation's unregularised arm per shared seed, one Holm
    family over every arm x tested metric (the metrics that pass the blur check, and the final diffusion loss);
    metrics that fail it are paired the same way but reported, not tested. Every measured metric is a claim."""
    from diffusers_spectrum.evaluation.statistics import compare_arms
    from diffusers_spectrum.evaluation.study_metrics import relied_metrics

    check = blur_check if blur_check is not None else result.get("blur_check")
    relied = relied_metrics(check) if check else []
    runs = result["runs"]
    values: dict[str, dict] = {}
    for run in runs:
        arm = f"{run['formulation']}/{run['regularizer']}"
        for metric in measured_metrics(runs):
            values.setdefault(arm, {}).setdefault(metric, {})[run["seed"]] = float(run[metric])
    baselines = {f"{f}/{r}": f"{f}/none" for f in FORMULATIONS for r in REGULARIZERS[1:] if f"{f}/{r}" in values}
    measured = measured_metrics(runs)
    tested = [m for m in measured if m in relied or m == "final_diffusion_loss"]
    family = compare_arms(values, baselines, {m: True for m in tested})
    untested = [m for m in measured if m not in tested]
    untested_metrics = {m: True for m in untested}
    descriptive = compare_arms(values, baselines, untested_metrics, correction="none") if untested else []
    missing = []
    if not any(m.startswith("kid") for m in measured):
        missing.append("KID / FD (trained and random-init feature nets) and the colour-aware SWD: the stored runs "
                       "measured SWD and the spectrum distance only, and their samples were not kept")  # fmt: skip
    if result["budget"]["num_samples"] < 500:
        missing.append(f"samples: {result['budget']['num_samples']} per model (the issue asks for >= 500 where "
                       "sampling takes minutes; the script's full budget now draws 512)")  # fmt: skip
    return {"blur_check": check, "relied_metrics": relied, "measured_metrics": measured, "family": family,
            "descriptive": descriptive, "missing": missing}  # fmt: skip


def paired_lines(analysis: dict) -> list[str]:
    """One sentence per formulation: each regulariser's tested outcomes (Holm-corrected)."""
    lines = []
    for formulation in FORMULATIONS:
        rows = [r for r in analysis["family"] if r["arm"].startswith(f"{formulation}/")]
        if not rows:
            continue
        parts = []
        for name in REGULARIZERS[1:]:
            mine = [r for r in rows if r["arm"] == f"{formulation}/{name}"]
            if mine:
                outcomes = [f"{METRIC_LABELS.get(r['metric'], r['metric'])} {r['outcome']} ({r['mean']:+.3g})"
                            for r in mine]  # fmt: skip
                parts.append(f"{name}: " + ", ".join(outcomes))
        lines.append(f"- **{formulation.upper()}** vs no regulariser: " + "; ".join(parts) + ".")
    return lines


def write_figure(summary: list[dict], work_dir: Path, path: Path) -> bool:
    """Bars of SWD and spectrum distance (mean +- sample SD over seeds) per regulariser and formulation, and the
    first seed's samples. Returns False (and writes nothing) when the run's sample grids are not at hand (a
    re-analysis keeps the stored figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusers_spectrum.utils.images import image_grid

    if not (work_dir / "grids").is_dir():
        return False
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
    return True


def write_paired_figure(analysis: dict, path: Path) -> None:
    """Per metric, each regulariser's per-seed differences from its formulation's unregularised arm (dots) with the
    95% t interval and the Holm-corrected interval of their mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = analysis["family"] + analysis["descriptive"]
    metrics = [m for m in METRIC_LABELS if any(r["metric"] == m for r in rows)]
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        mine = [r for r in rows if r["metric"] == metric]
        for index, row in enumerate(mine):
            ax.plot([index] * len(row["differences"]), row["differences"], "o", color="0.4", ms=4)
            if row["outcome"] != "one run":
                ax.errorbar(index + 0.15, row["mean"], yerr=[[row["mean"] - row["lo"]], [row["hi"] - row["mean"]]],
                            fmt="s", color="C0", capsize=3)  # fmt: skip
                if metric in analysis["relied_metrics"] or metric == "final_diffusion_loss":
                    ax.errorbar(index + 0.3, row["mean"], fmt="none", color="C3", capsize=3,
                                yerr=[[row["mean"] - row["holm_lo"]], [row["holm_hi"] - row["mean"]]])  # fmt: skip
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(mine)), [r["arm"] for r in mine], rotation=40, fontsize=8)
        tested = metric in analysis["relied_metrics"] or metric == "final_diffusion_loss"
        ax.set_title(f"{METRIC_LABELS[metric]}: arm - none{'' if tested else ' (not relied on)'}", fontsize=9)
    axes[0][0].set_ylabel("per seed (dots); mean, 95% t (blue), Holm (red)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_page(result: dict, path: Path) -> None:
    """docs/SPECTRAL_REGULARIZATION.md, generated from the JSON."""
    from diffusers_spectrum.evaluation.statistics import comparison_table
    from diffusers_spectrum.evaluation.study_metrics import blur_check_table

    budget, summary, analysis = result["budget"], result["summary"], result["analysis"]
    measured = analysis["measured_metrics"]
    generation = [m for m in measured if m != "final_diffusion_loss"]
    head = " | ".join(f"{METRIC_LABELS[m]}{'' if m in analysis['relied_metrics'] else ' (not relied on)'}"
                      for m in generation)  # fmt: skip
    table = [f"| formulation | regulariser | {head} | final diffusion loss | train s / run | seeds |",
             "|---|---|" + "---:|" * (len(generation) + 3)]  # fmt: skip
    for r in summary:
        cells = [f"{r[f'{m}_mean']:.4g} +- {r[f'{m}_std']:.2g}" for m in generation + ["final_diffusion_loss"]]
        table.append(f"| {r['formulation'].upper()} | {r['regularizer']} | " + " | ".join(cells)
                     + f" | {r['train_seconds_mean']:.1f} | {r['num_seeds']} |")  # fmt: skip
    floor = result["reference"]
    cells = [f"{floor[m]:.4g}" if m in floor else "not measured" for m in generation]
    table.append("| data floor | training crops vs held-out crops (same count) | " + " | ".join(cells) + " | | | |")
    over = ["| step | regulariser time | ratio to the step |", "|---|---:|---:|"]
    over += [f"| {o['benchmark']} | {o['regularizer_ms']:.2f} ms | {o['ratio']:.4f} |" for o in result["overhead"]]
    machine = result["machine"]
    reanalysis = result.get("reanalysis")
    figure_note = ""
    if reanalysis:
        figure_note = (
            f"\n**Re-analysed without new training** (`{reanalysis['command']}`, commit {reanalysis['commit']}): the "
            "statistics, the blur check and the claims are recomputed from the stored runs; the bar-and-samples "
            "figure is the stored run's. Not stored, so not on this page:\n\n"
            + "\n".join(f"- {m}." for m in analysis["missing"]) + "\n"
        )  # fmt: skip
    claims = []
    for row in analysis["family"]:
        claims.append(f"- {row['arm']} vs {row['baseline']}, {METRIC_LABELS[row['metric']]}: {row['arm_mean']:.4g} vs "
                      f"{row['baseline_mean']:.4g}, **{row['outcome']}** (paired, Holm family of "
                      f"{row['family_size']}).")  # fmt: skip
    for row in analysis["descriptive"]:
        claims.append(f"- {row['arm']} vs {row['baseline']}, {METRIC_LABELS[row['metric']]}: {row['arm_mean']:.4g} vs "
                      f"{row['baseline_mean']:.4g}, {row['outcome']} uncorrected (metric not relied on: it fails the "
                      "blur check).")  # fmt: skip
    check = analysis["blur_check"]
    splits, minutes = next(iter(check.values()))["num_splits"], result["wall_seconds"] / 60
    descriptive = "none."
    if analysis["descriptive"]:
        descriptive = "\n".join(comparison_table(analysis["descriptive"], labels=METRIC_LABELS, corrected=False))
    text = f"""# Spectral regularisation on unconditional pixel-space diffusion: a CPU miniature

Generated by `{result["command"]}` (`benchmarks/ablate_spectral_regularization.py`); the numbers below are read
from [`spectral_regularization.json`](spectral_regularization.json), which also holds every run. Do not edit by hand.
{figure_note}
## What was run

- Model: the `{budget["unet_config"]}` `UNet2DModel` preset, {budget["resolution"]} px, trained with
  `diffusers-spectrum train-unconditional` (`training.unconditional.train_unconditional`).
- Data: random {budget["resolution"]} px crops of the embedded photos ({budget["crops_per_photo"]} per photo, drawn
  once with a fixed seed, plus random flips); every 4th photo is held out, and {budget["num_samples"]} random crops of
  the held-out photos are the reference set.
- Budget per run: {budget["max_train_steps"]} optimizer steps of batch {budget["train_batch_size"]}, AdamW lr
  {budget["learning_rate"]} (constant), no EMA; Fourier weight {budget["fourier_weight"]}, wavelet weight
  {budget["wavelet_weight"]} (3-level Haar, L1), `signal` timestep weighting. Seeds {list(budget["seeds"])} (init,
  data order, noise; the sampling seed and the metrics' seeds are shared by every arm, so arms are paired by seed).
- Formulations: DDPM with epsilon prediction (1000 linear-beta steps), sampled with DDIM
  ({budget["sampling_steps"]} steps, `DDIMScheduler.from_config(pipe.scheduler.config)`); EDM (sigma_data 0.5,
  P_mean -1.2, P_std 1.2), sampled with the saved `EDMEulerScheduler` ({budget["sampling_steps"]} steps).
- Metrics: {budget["num_samples"]} samples per model against the {budget["num_samples"]} held-out crops
  (`evaluation.study_metrics`; lower is better); mean +- sample SD (ddof 1) over the seeds. Each run's train and
  sample seconds are in the JSON.
- Machine: {machine["cpu"]}, {machine["cores"]} cores, torch {machine["versions"]["torch"]},
  diffusers {machine["versions"]["diffusers"]}. Wall time of the whole ablation: {result["wall_seconds"] / 60:.1f}
  min.

**The budget is below the issue's.** Each model gets {budget["max_train_steps"]} steps of batch
{budget["train_batch_size"]} of the `{budget["unet_config"]}` UNet and is measured on {budget["num_samples"]} samples.
At this budget the models are early in training; the numbers say whether the regularisers change early training in
this miniature, not how they behave at convergence or at the higher resolutions where the paper reports its largest
gains.

## Which metrics the ablation relies on

At 32 images per set, held-out crops against other held-out crops box-blurred 5 x 5 must be at least twice as far
apart as two halves of unblurred crops (`evaluation.study_metrics`, mean over {splits} random splits). Metrics that
fail are reported, not relied on, and stay out of the tested family.

{chr(10).join(blur_check_table(check))}

## Results

{chr(10).join(table)}

The data floor is what real training crops score against the held-out crops at the same count: no generator can be
expected to beat it.

![SWD and spectrum distance per regulariser, and samples](spectral_regularization.png)

## Paired comparisons

Each regulariser minus its formulation's unregularised arm, per shared seed: t interval of the mean difference (sample
SD, ddof 1), percentile bootstrap over seeds beside it (too narrow with 3 seeds: reported, not decisive), and Holm's
correction over every arm x tested metric (the relied-on metrics and the final diffusion loss). **Separated** only
when the Holm-adjusted p-value is at most 0.05 (the corrected interval excludes 0).

{chr(10).join(comparison_table(analysis["family"], labels=METRIC_LABELS))}

Metrics that fail the blur check, paired the same way, uncorrected and outside the family:

{descriptive}

![paired differences per seed](spectral_regularization_paired.png)

Outcome, tested family:

{chr(10).join(paired_lines(analysis))}

## Every claim, for and against

{chr(10).join(claims)}

## Overhead of the regularisers on a training step

Regulariser work timed alone (x0 recovery, losses, timestep weighting, backward to the model output) against a
training step without it, best of several runs (`benchmarks/bench_unet_regularizers.py`; goal <= 2%):

{chr(10).join(over)}

## Reproduce

```bash
python benchmarks/ablate_spectral_regularization.py           # the full ablation (the stored run: {minutes:.0f} min)
python benchmarks/ablate_spectral_regularization.py --quick   # about a minute, smoke test
python benchmarks/ablate_spectral_regularization.py --reanalyse docs/spectral_regularization.json  # no training
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


def _git_commit() -> str:
    import subprocess

    try:
        command = ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_ablation(quick: bool = False, output_dir: Path = ROOT / "docs", work_dir: Path | None = None) -> dict:
    """Run (or resume) the ablation; writes the JSON after every run, then the analysis, the page and the figures."""
    from diffusers_spectrum.evaluation.feature_net import feature_net_for, random_feature_net
    from diffusers_spectrum.evaluation.study_metrics import GenerationMetricSuite
    from diffusers_spectrum.utils.records import write_json

    budget = BUDGETS["quick" if quick else "full"]
    output_dir = Path(output_dir)
    json_path = output_dir / JSON_NAME
    from diffusers_spectrum.utils.run_folders import claim_output_dir

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
    data = prepare_data(work_dir, budget)
    try:
        net = feature_net_for(work_dir / "feature_net", data["train_photos"], steps=budget["feature_net_steps"])
        suite = GenerationMetricSuite(net, random_feature_net(data["train_photos"]), seed=0)
        result["feature_net"] = json.loads((work_dir / "feature_net" / "feature_net.json").read_text())
        result["reference"] = suite.measure(data["train_reference"], data["heldout"])  # the data floor
        result["blur_check"] = suite.blur_check(data["blur_crops"], num_splits=budget["blur_splits"])
        done = {run_key(r["formulation"], r["regularizer"], r["seed"]) for r in result["runs"]}
        for seed in budget["seeds"]:
            for formulation in FORMULATIONS:
                for regularizer in REGULARIZERS:
                    if run_key(formulation, regularizer, seed) in done:
                        continue
                    record = one_run(formulation, regularizer, seed, budget, data["train_dir"], data["heldout"],
                                     work_dir, suite)  # fmt: skip
                    result["runs"].append(record)
                    result["wall_seconds"] = round(time.perf_counter() - start, 1)
                    write_json(json_path, result, sort_keys=False)  # incremental: one line per finished run
                    print(
                        f"{run_key(formulation, regularizer, seed)}: spectrum distance "
                        f"{record['spectrum_distance']:.3f}, {record['train_seconds']:.0f} s",
                        flush=True,
                    )
        result["summary"] = summarize(result["runs"])
        result["analysis"] = analyse(result)
        result["overhead"] = overhead(budget, quick)
        result["wall_seconds"] = round(time.perf_counter() - start, 1)
        write_json(json_path, result, sort_keys=False)
        write_figure(result["summary"], work_dir, output_dir / FIGURE_NAME)
        write_paired_figure(result["analysis"], output_dir / PAIRED_FIGURE_NAME)
        write_page(result, output_dir / PAGE_NAME)
    finally:
        if own_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    return result


def reanalyse(json_path: Path, output_dir: Path) -> dict:
    """Rewrite the analysis, summary, paired figure and page of a stored ablation JSON without training: the blur
    check of the metrics it measured is recomputed from the held-out photos (no model needed)."""
    from diffusers_spectrum.data.sources import embedded_dataset_dir
    from diffusers_spectrum.evaluation.study_metrics import GenerationMetricSuite
    from diffusers_spectrum.utils.records import write_json

    result = json.loads(Path(json_path).read_text())
    _, heldout_photos = photo_split(sorted(embedded_dataset_dir().glob("*.png")))
    check = result.get("blur_check")
    if check is None:
        check = GenerationMetricSuite(seed=0).blur_check(blur_check_crops(heldout_photos), num_splits=8)
        check = {m: v for m, v in check.items() if m in measured_metrics(result["runs"])}
    result["blur_check"] = check
    result["summary"] = summarize(result["runs"])
    result["analysis"] = analyse(result, check)
    result["reanalysis"] = {"command": " ".join(["python", *sys.argv]), "commit": _git_commit()}
    output_dir = Path(output_dir)
    write_json(output_dir / JSON_NAME, result, sort_keys=False)
    write_paired_figure(result["analysis"], output_dir / PAIRED_FIGURE_NAME)
    write_page(result, output_dir / PAGE_NAME)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke run (1 seed, 2 steps, 8 samples)")
    parser.add_argument("--output_dir", type=Path, default=ROOT / "docs", help="where the JSON, page and figure go")
    parser.add_argument("--work_dir", type=Path, default=None, help="crops and run folders (default: a temp dir)")
    parser.add_argument("--reanalyse", type=Path, default=None, help="a stored JSON: analysis and page, no training")
    cli = parser.parse_args()
    if cli.reanalyse:
        reanalyse(cli.reanalyse, cli.output_dir)
    else:
        run_ablation(cli.quick, cli.output_dir, cli.work_dir)
