"""Ablation of the spectral regularisers on unconditional pixel-space diffusion (a miniature, CPU-sized).

The same tiny `UNet2DModel` is trained with `diffusers-spectrum train-unconditional`'s entry point
(`training.unconditional.parse_args` + `train_unconditional`, the code users run) on random crops of the embedded
photos, with the same budget and seeds, for: no regulariser, the Fourier loss, the wavelet loss and both, under DDPM
(epsilon prediction) and EDM, over several seeds. Each model is loaded back from its exported folder
(`load_pipeline`, i.e. `DiffusionPipeline.from_pretrained`) and sampled the way that pipeline samples:

- DDPM: the exported `DDPMPipeline` with its own `DDPMScheduler` (ancestral sampling, as exported), the primary row;
  DDIM with eta 0 and eta 1 (`DDIMScheduler.from_config(pipe.scheduler.config)` in a `DDIMPipeline`) are labelled
  extra rows, on fewer samples.
- EDM: the exported folder (a stock `ConsistencyModelPipeline` running its saved `EDMEulerScheduler`).

Samples are compared with held-out crops (crops of photos that no training crop comes from) by every metric of
`evaluation.study_metrics.GenerationMetricSuite`. The blur check decides which metrics the study relies on; the data
floor (training crops against the held-out crops, same count) and **pure noise** (N(0, 1) clamped to [-1, 1]: what a
model that learned nothing returns) anchor them. The study is **gated**: each formulation's unregularised arm, sampled
by its own pipeline, must beat pure noise on every relied-on metric, paired by seed and Holm-corrected; a
formulation that fails the gate has its regulariser comparisons reported as not interpretable (and the run stops
before training the regularised arms when it can already tell, unless `--ignore_gate`). Arms are compared with
their formulation's unregularised arm per shared seed (`evaluation.statistics.compare_arms`: t and bootstrap
intervals, Holm's correction over every arm x relied-on metric).

Units and resuming: one unit = one training run and all its samplers (its train, sample and measure seconds are in
the JSON). Every finished unit is merged into the JSON at once under a file lock, so an interrupted study resumes
where it stopped and `--shard i/n` processes (each runs every n-th unit; baselines first) can run concurrently into
the same JSON. The process that finds every unit present writes the analysis, the page, the figures and the README
bullet; `--reanalyse JSON` rewrites them from a stored JSON without training. A different budget starts a new JSON.

Writes `docs/spectral_regularization.json`, `docs/SPECTRAL_REGULARIZATION.md` (generated),
`docs/spectral_regularization.png`, `docs/spectral_regularization_paired.png`, the first seed's sample grids in
`docs/spectral_regularization_samples/` and (for the repository's docs folder only) the README's evidence bullet.

Usage: python benchmarks/ablate_spectral_regularization.py [--quick] [--shard i/n] [--output_dir docs]
       python benchmarks/ablate_spectral_regularization.py --reanalyse docs/spectral_regularization.json
"""

import argparse
import hashlib
import importlib
import json
import math
import os
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
sys.path.insert(0, str(BENCHMARK_DIR))
import study_units  # noqa: E402  (benchmarks/study_units.py: the shared lock, merge and shard helpers)


ROOT = BENCHMARK_DIR.parent
FORMULATIONS = ("ddpm", "edm")
REGULARIZERS = ("none", "fourier", "wavelet", "both")
JSON_NAME = "spectral_regularization.json"
PAGE_NAME = "SPECTRAL_REGULARIZATION.md"
FIGURE_NAME = "spectral_regularization.png"
PAIRED_FIGURE_NAME = "spectral_regularization_paired.png"
SAMPLES_DIR = "spectral_regularization_samples"
README_START, README_END = "<!-- spectral-regularization:start -->", "<!-- spectral-regularization:end -->"
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
# Each formulation's samplers: the first is the exported pipeline's own (the primary row, `num_samples` images);
# the others are labelled extra rows (`extra_num_samples` images).
SAMPLERS = {"ddpm": ("ancestral", "ddim_eta0", "ddim_eta1"), "edm": ("edm_euler",)}
PRIMARY = {"ddpm": "ancestral", "edm": "edm_euler"}
SAMPLER_LABELS = {
    "ancestral": "the exported DDPMPipeline with its DDPMScheduler as saved (ancestral, clip_sample on)",
    "ddim_eta0": "extra row: a DDIMPipeline with DDIMScheduler.from_config(the saved scheduler), eta 0",
    "ddim_eta1": "extra row: the same DDIM scheduler with eta 1",
    "edm_euler": "the exported folder (a stock ConsistencyModelPipeline) with its saved EDMEulerScheduler",
}
SHORT_SAMPLER = {
    "ancestral": "DDPM ancestral",
    "ddim_eta0": "DDIM eta 0",
    "ddim_eta1": "DDIM eta 1",
    "edm_euler": "EDM Euler",
}

# The budgets. Unit costs measured here in CPU seconds with 1 thread (the machine was shared, so wall times were 2-5x
# longer): a tiny-UNet training step at batch 8, 32 px, ~0.2 s; one sampler step ~8.2 ms per 32 px image at batch 64
# (0.41 s per image at 50 steps). Full mode: a DDPM unit ~85 s training + 210 s for 512 ancestral samples + 52 s for
# 2 x 64 DDIM samples + ~17 s of metrics = ~365 s; an EDM unit ~300 s; 40 units and two set-ups ~13,600 CPU-seconds:
# about 1.9 hours as two concurrent shards on 2 idle cores. 512 samples per model meets issue 18's ">= 500 at 32 px";
# the DDIM extra rows get 64 (their effect, grey samples under eta 0, is large), and 5 seeds are the minimum.
# Schedule: the trainer's default cosine schedule warms up for 500 steps, longer than the run; here a 40-step (10%)
# linear warm-up to the peak lr, then cosine decay to 0 at step 400. The pilot (seed 0, 128 samples) at this budget:
# DDPM ancestral spectrum distance 0.76 / colour-aware SWD 389 / KID 1.45, EDM 0.63 / 259 / 0.70, against pure noise
# 4.2 / 862 / 2.8 and the data floor 0.14 / 103 / 0.19; DDIM eta 0 gave grey noise (1.62 / 620 / 4.05 at 64 samples).
BUDGETS = {
    "full": dict(
        resolution=32,
        crops_per_photo=8,
        train_batch_size=8,
        max_train_steps=400,
        learning_rate=1e-3,
        lr_scheduler="cosine",
        lr_warmup_steps=40,
        num_samples=512,
        extra_num_samples=64,
        sampling_steps=50,
        sample_batch_size=64,
        seeds=(0, 1, 2, 3, 4),
        fourier_weight=0.1,
        wavelet_weight=0.1,
        unet_config="tiny",
        feature_net_steps=400,
        blur_splits=8,
    ),
    "quick": dict(
        resolution=32,
        crops_per_photo=2,
        train_batch_size=4,
        max_train_steps=2,
        learning_rate=1e-3,
        lr_scheduler="cosine",
        lr_warmup_steps=1,
        num_samples=8,
        extra_num_samples=4,
        sampling_steps=3,
        sample_batch_size=8,
        seeds=(0, 1),
        fourier_weight=0.1,
        wavelet_weight=0.1,
        unet_config="tiny",
        feature_net_steps=5,
        blur_splits=1,
    ),
}


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


def embedded_photo_paths() -> list[Path]:
    from diffusers_spectrum.data.sources import embedded_dataset_dir

    return sorted(embedded_dataset_dir().glob("*.png"))


def prepare_data(work_dir: Path, budget: dict) -> dict:
    """Write the training crops as PNGs to `work_dir/train`; return that folder, the held-out crops and a same-size
    set of training crops (`(N, 3, H, W)` in [-1, 1], N = `num_samples`; the data floor), the training photos (for
    the feature net) and the blur-check crops."""
    train_photos, heldout_photos = photo_split(embedded_photo_paths())
    size, count = budget["resolution"], budget["num_samples"]
    rng = np.random.default_rng(1234)
    train_dir = work_dir / "train"
    shutil.rmtree(train_dir, ignore_errors=True)  # the study's own folder (claimed in `run_ablation`)
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
    if len(reference) < count:
        raise ValueError(f"the data floor needs {count} training crops; raise crops_per_photo.")
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


def noise_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Pure-noise "samples": N(0, 1) clamped to [-1, 1], `(count, 3, size, size)`: what a sampler returns from a
    model that learned nothing (its starting noise through the output clamp). Seeded per training seed."""
    generator = torch.Generator().manual_seed(900_000 + seed)
    return torch.randn(count, 3, size, size, generator=generator).clamp(-1, 1)


def sample_seed(seed: int) -> int:
    """The first sampling seed of a training seed's units (image i: + i): shared by every arm of that seed."""
    return 100_000 * (seed + 1)


# ----------------------------------------------------------------------------------------------------------------
# Units: train, sample with every sampler, measure


def run_key(formulation: str, regularizer: str, seed: int) -> str:
    return f"{formulation}/{regularizer}/seed{seed}"


def all_units(budget: dict) -> list[tuple[str, str, int]]:
    """Every (formulation, regulariser, seed), the unregularised baselines first (the gate needs only them)."""
    seeds = list(budget["seeds"])
    baselines = [(f, "none", s) for s in seeds for f in FORMULATIONS]
    return baselines + [(f, r, s) for s in seeds for f in FORMULATIONS for r in REGULARIZERS[1:]]


def unit_cost_estimate(formulation: str, budget: dict) -> float:
    """A unit's CPU seconds from the measured unit costs (0.2 s per training step, 8.2 ms per image and sampler
    step): what `--shard` balances."""
    images = budget["num_samples"] + (2 * budget["extra_num_samples"] if formulation == "ddpm" else 0)
    return 0.2 * budget["max_train_steps"] + 0.0082 * images * budget["sampling_steps"]


def train_argv(formulation: str, regularizer: str, seed: int, budget: dict, train_dir: Path, out: Path) -> list:
    """The command line of one run (`train-unconditional`'s flags)."""
    fourier = budget["fourier_weight"] if regularizer in ("fourier", "both") else 0.0
    wavelet = budget["wavelet_weight"] if regularizer in ("wavelet", "both") else 0.0
    return [
        "--train_data_dir",
        str(train_dir),
        "--output_dir",
        str(out),
        "--unet_config",
        budget["unet_config"],
        "--resolution",
        str(budget["resolution"]),
        "--random_flip",
        "--formulation",
        formulation,
        "--prediction_type",
        "epsilon",
        "--train_batch_size",
        str(budget["train_batch_size"]),
        "--max_train_steps",
        str(budget["max_train_steps"]),
        "--learning_rate",
        str(budget["learning_rate"]),
        "--lr_scheduler",
        budget["lr_scheduler"],
        "--lr_warmup_steps",
        str(budget["lr_warmup_steps"]),
        "--checkpointing_steps",
        str(budget["max_train_steps"]),
        "--validation_steps",
        "1000000000",
        "--report_to",
        "none",
        "--seed",
        str(seed),
        "--fourier_weight",
        str(fourier),
        "--wavelet_weight",
        str(wavelet),
        "--no_streaming",
    ]


class DDIMWithEta:
    """A `DDIMPipeline` called with a fixed ``eta`` (`pipeline_samples` passes the usual arguments only)."""

    def __init__(self, pipe, eta: float):
        self.pipe, self.eta = pipe, eta
        self._execution_device = pipe._execution_device

    def __call__(self, batch_size: int = 1, generator=None, num_inference_steps: int = 50, output_type: str = "pil"):
        return self.pipe(
            batch_size=batch_size,
            generator=generator,
            num_inference_steps=num_inference_steps,
            eta=self.eta,
            output_type=output_type,
        )


def sampler_pipelines(folder: Path, formulation: str) -> dict:
    """``{sampler: pipeline}`` for an exported folder: the folder loaded as diffusers loads it (its own pipeline and
    scheduler) first, then the DDIM extra rows for DDPM."""
    from diffusers import DDIMPipeline, DDIMScheduler

    from diffusers_spectrum import load_pipeline

    pipe = load_pipeline(folder)
    expected = {"ddpm": "DDPMPipeline", "edm": "ConsistencyModelPipeline"}[formulation]
    if type(pipe).__name__ != expected:
        raise RuntimeError(f"{folder} loaded as {type(pipe).__name__}, expected the exported {expected}.")
    if formulation == "edm":
        return {"edm_euler": pipe}
    ddim = DDIMPipeline(unet=pipe.unet, scheduler=DDIMScheduler.from_config(pipe.scheduler.config))
    ddim.set_progress_bar_config(disable=True)
    return {"ancestral": pipe, "ddim_eta0": DDIMWithEta(ddim, 0.0), "ddim_eta1": DDIMWithEta(ddim, 1.0)}


def draw(pipe, count: int, budget: dict, seed: int) -> torch.Tensor:
    from diffusers_spectrum import pipeline_samples

    batches = pipeline_samples(
        pipe,
        count,
        batch_size=min(count, budget["sample_batch_size"]),
        num_inference_steps=budget["sampling_steps"],
        seed=sample_seed(seed),
        progress=False,
    )
    return torch.cat(list(batches))


def run_unit(formulation, regularizer, seed, budget, data, work_dir, suite, samples_dir: Path) -> dict:
    """Train one run, sample it with every sampler of its formulation and measure; returns the unit's record."""
    from diffusers_spectrum.training.unconditional import parse_args, train_unconditional

    unit_clock = study_units.Stopwatch()
    out = work_dir / "runs" / run_key(formulation, regularizer, seed).replace("/", "_")
    shutil.rmtree(out, ignore_errors=True)  # an interrupted earlier attempt of this unit (the study's own folder)
    clock = study_units.Stopwatch()
    argv = train_argv(formulation, regularizer, seed, budget, data["train_dir"], out)
    folder = train_unconditional(parse_args(argv))
    train_time = clock.record("train")
    final = json.loads((folder / "metrics.json").read_text())
    rows = {}
    heldout = data["heldout"]
    n, n_extra = budget["num_samples"], budget["extra_num_samples"]
    for sampler, pipe in sampler_pipelines(folder, formulation).items():
        count = n if sampler == PRIMARY[formulation] else n_extra
        clock = study_units.Stopwatch()
        samples = draw(pipe, count, budget, seed)
        sample_time = clock.record("sample")
        clock = study_units.Stopwatch()
        rows[sampler] = {"num_samples": count, **suite.measure(samples, heldout[:count])}
        if sampler == "ancestral":  # the primary sampler at the extra rows' count: DDIM vs ancestral at equal n
            extra = suite.measure(samples[:n_extra], heldout[:n_extra])
            rows["ancestral_extra_n"] = {"num_samples": n_extra, **extra}
        rows[sampler].update(**sample_time, **clock.record("measure"))
        if seed == budget["seeds"][0]:
            from diffusers_spectrum.utils.images import image_grid

            samples_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image_grid(samples[:16], nrow=4)).save(
                samples_dir / f"{formulation}_{regularizer}_{sampler}.png"
            )
    shutil.rmtree(out, ignore_errors=True)  # checkpoints and weights are not kept (the numbers are)
    return {
        "formulation": formulation,
        "regularizer": regularizer,
        "seed": seed,
        "final_training_loss": final.get("loss"),
        "final_diffusion_loss": final.get("diffusion"),
        **train_time,
        "samplers": rows,
        **unit_clock.record("unit"),
    }


# ----------------------------------------------------------------------------------------------------------------
# The merge-safe JSON


def fresh_result(budget: dict, quick: bool) -> dict:
    return {
        "command": "python benchmarks/ablate_spectral_regularization.py" + (" --quick" if quick else ""),
        "budget": json.loads(json.dumps(budget)),
        "seeds": list(budget["seeds"]),
        "setup": None,
        "units": {},
        "processes": [],
    }


def read_result(path: Path, budget: dict, quick: bool) -> dict:
    """The stored JSON when it holds this budget (to resume or merge), else a fresh one."""
    return study_units.load_matching(path, "budget", budget, lambda: fresh_result(budget, quick))


def merge(path: Path, budget: dict, quick: bool, update) -> dict:
    """Under the lock: read the JSON, ``update(result)``, write it back; returns the merged result."""
    return study_units.merge(path, lambda p: read_result(p, budget, quick), update)


def state_hash(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def store_setup(result: dict, setup: dict) -> None:
    """Keep the first process's setup (feature net, anchors, blur check); a later process must have computed the
    same feature net (same weights hash), or its units would be measured differently: refuse."""
    stored = result.get("setup")
    if stored is None:
        result["setup"] = setup
    elif stored["feature_net_hash"] != setup["feature_net_hash"]:
        raise RuntimeError(
            f"this process's feature net ({setup['feature_net_hash']}) differs from the one the JSON's units were "
            f"measured with ({stored['feature_net_hash']}); run every shard on the same machine and versions, or "
            "start a new JSON (another --output_dir)."
        )


# ----------------------------------------------------------------------------------------------------------------
# Analysis


def row_values(units: dict, formulation: str, sampler: str) -> dict:
    """``{regulariser: {metric: {seed: value}}}`` of one formulation's runs under one sampler row (the final
    diffusion loss belongs to the training run, so it is the same under every sampler)."""
    values: dict = {}
    for unit in units.values():
        if unit["formulation"] != formulation or sampler not in unit["samplers"]:
            continue
        arm = values.setdefault(unit["regularizer"], {})
        for metric, value in unit["samplers"][sampler].items():
            if metric in METRIC_LABELS:
                arm.setdefault(metric, {})[unit["seed"]] = float(value)
        if unit.get("final_diffusion_loss") is not None:
            arm.setdefault("final_diffusion_loss", {})[unit["seed"]] = float(unit["final_diffusion_loss"])
    return values


def measured_metrics(result: dict) -> list[str]:
    """The generation metrics every stored sampler row holds, in `METRIC_LABELS` order."""
    rows = [row for unit in result["units"].values() for row in unit["samplers"].values()]
    return [m for m in METRIC_LABELS if m != "final_diffusion_loss" and rows and all(m in r for r in rows)]


def noise_values(setup: dict, count: int) -> dict:
    """``{metric: {seed: value}}`` of the pure-noise sets of `count` images."""
    values: dict = {}
    for seed, metrics in setup["noise"][str(count)].items():
        for metric, value in metrics.items():
            values.setdefault(metric, {})[int(seed)] = float(value)
    return values


def gate(result: dict, relied: list[str]) -> dict:
    """Each formulation's unregularised arm under its own sampler against pure noise, paired by seed, one Holm
    family over formulations x relied-on metrics; passed when every comparison is separated and better. The extra
    rows (DDIM; the ancestral sampler at the extra rows' count) against noise at their count, uncorrected."""
    from diffusers_spectrum.evaluation.statistics import compare_arms

    setup, budget = result["setup"], result["budget"]
    results = {}
    for formulation in FORMULATIONS:
        values = row_values(result["units"], formulation, PRIMARY[formulation]).get("none")
        if values:
            results[f"{formulation}/none ({SHORT_SAMPLER[PRIMARY[formulation]]})"] = values
    if not results or not relied:
        return {"family": [], "extra": [], "passed": {}, "relied": relied}
    results["noise"] = noise_values(setup, budget["num_samples"])
    family = compare_arms(results, "noise", {m: True for m in relied})
    passed = {}
    for formulation in FORMULATIONS:
        rows = [r for r in family if r["arm"].startswith(f"{formulation}/")]
        if rows:
            passed[formulation] = all(r["outcome"] == "better" for r in rows)
    extra_results = {"noise": noise_values(setup, budget["extra_num_samples"])}
    for sampler in ("ancestral_extra_n", "ddim_eta0", "ddim_eta1"):
        values = row_values(result["units"], "ddpm", sampler).get("none")
        if values:
            extra_results[f"ddpm/none ({row_label(sampler)})"] = values
    extra = []
    if len(extra_results) > 1:
        extra = compare_arms(extra_results, "noise", {m: True for m in relied}, correction="none")
    return {"family": family, "extra": extra, "passed": passed, "relied": relied}


def row_label(sampler: str) -> str:
    return "DDPM ancestral, first n of the extra rows" if sampler == "ancestral_extra_n" else SHORT_SAMPLER[sampler]


def analyse(result: dict) -> dict:
    """Blur check -> relied-on metrics; the gate; the main family (each regulariser against its formulation's
    unregularised arm under the formulation's own sampler, every relied-on metric, one Holm family); descriptive
    rows (metrics that fail the blur check, the final diffusion loss); the extra rows' family (DDIM eta 0 / 1); the
    sampler comparison (DDIM minus ancestral at equal n, per arm, paired by seed)."""
    from diffusers_spectrum.evaluation.statistics import compare_arms

    measured = measured_metrics(result)
    relied = relied_rows(result)
    unrelied = [m for m in measured if m not in relied]
    units = result["units"]
    results, baselines = {}, {}
    for formulation in FORMULATIONS:
        rows = row_values(units, formulation, PRIMARY[formulation])
        for regularizer in [r for r in REGULARIZERS if r in rows]:
            results[f"{formulation}/{regularizer}"] = rows[regularizer]
    for arm in results:
        formulation, regularizer = arm.split("/")
        if regularizer != "none" and f"{formulation}/none" in results:
            baselines[arm] = f"{formulation}/none"
    family = compare_arms(results, baselines, {m: True for m in relied}) if baselines and relied else []
    descriptive_metrics = {m: True for m in [*unrelied, "final_diffusion_loss"]}
    descriptive = compare_arms(results, baselines, descriptive_metrics, correction="none") if baselines else []
    extra_results, extra_baselines = {}, {}
    for sampler in SAMPLERS["ddpm"][1:]:
        rows = row_values(units, "ddpm", sampler)
        for regularizer in [r for r in REGULARIZERS if r in rows]:
            extra_results[f"ddpm/{regularizer} ({SHORT_SAMPLER[sampler]})"] = rows[regularizer]
        for regularizer in REGULARIZERS[1:]:
            arm, base = f"ddpm/{regularizer} ({SHORT_SAMPLER[sampler]})", f"ddpm/none ({SHORT_SAMPLER[sampler]})"
            if arm in extra_results and base in extra_results:
                extra_baselines[arm] = base
    extra = []
    if extra_baselines and relied:
        extra = compare_arms(extra_results, extra_baselines, {m: True for m in relied})
    sampler_rows = []
    if relied:
        for regularizer in REGULARIZERS:
            arms = {}
            for sampler in ("ancestral_extra_n", "ddim_eta0", "ddim_eta1"):
                values = row_values(units, "ddpm", sampler).get(regularizer)
                if values:
                    arms[f"ddpm/{regularizer} ({row_label(sampler)})"] = {m: values[m] for m in relied}
            base = f"ddpm/{regularizer} ({row_label('ancestral_extra_n')})"
            if base in arms and len(arms) > 1:
                sampler_rows += compare_arms(arms, base, {m: True for m in relied}, correction="none")
    return {
        "measured_metrics": measured,
        "relied_metrics": relied,
        "gate": gate(result, relied),
        "family": family,
        "descriptive": descriptive,
        "extra": extra,
        "samplers": sampler_rows,
    }


def summarize(result: dict) -> list[dict]:
    """Mean and sample SD (ddof 1) over seeds per (formulation, regulariser, sampler row) of every measured metric,
    the final diffusion loss and the seconds."""
    from diffusers_spectrum.evaluation.statistics import mean_sd

    rows = []
    measured = measured_metrics(result)
    for formulation in FORMULATIONS:
        for sampler in (*SAMPLERS[formulation], *(("ancestral_extra_n",) if formulation == "ddpm" else ())):
            for regularizer in REGULARIZERS:
                group = [
                    u
                    for u in result["units"].values()
                    if u["formulation"] == formulation and u["regularizer"] == regularizer and sampler in u["samplers"]
                ]
                if not group:
                    continue
                count = group[0]["samplers"][sampler]["num_samples"]
                row = {
                    "formulation": formulation,
                    "regularizer": regularizer,
                    "sampler": sampler,
                    "num_samples": count,
                    "num_seeds": len(group),
                }
                columns = {m: [u["samplers"][sampler][m] for u in group] for m in measured}
                columns["final_diffusion_loss"] = [u["final_diffusion_loss"] for u in group]
                columns["train_seconds"] = [u["train_seconds"] for u in group]
                columns["sample_seconds"] = [u["samplers"][sampler].get("sample_seconds", 0.0) for u in group]
                for key, values in columns.items():
                    stat = mean_sd(values)
                    row[f"{key}_mean"], row[f"{key}_sd"] = stat["mean"], stat["sd"] if stat["n"] > 1 else 0.0
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


# ----------------------------------------------------------------------------------------------------------------
# Page, figures, README bullet


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def results_table(result: dict, analysis: dict) -> list[str]:
    """Every row (formulation, regulariser, sampler, n) with every measured metric, then the anchors per count."""
    measured, relied = analysis["measured_metrics"], analysis["relied_metrics"]
    head = " | ".join(f"{METRIC_LABELS[m]}{'' if m in relied else ' (not relied on)'}" for m in measured)
    lines = [
        f"| formulation | regulariser | sampler | n | {head} | final diffusion loss | seeds |",
        "|---|---|---|---:|" + "---:|" * (len(measured) + 2),
    ]
    for r in result["summary"]:
        cells = [f"{_fmt(r[f'{m}_mean'])} +- {r[f'{m}_sd']:.2g}" for m in [*measured, "final_diffusion_loss"]]
        lines.append(
            f"| {r['formulation'].upper()} | {r['regularizer']} | {row_label(r['sampler'])} | "
            f"{r['num_samples']} | " + " | ".join(cells) + f" | {r['num_seeds']} |"
        )
    setup = result["setup"]
    for count in sorted({int(c) for c in setup["floor"]}, reverse=True):
        floor = setup["floor"][str(count)]
        cells = [_fmt(floor[m]) if m in floor else "not measured" for m in measured]
        lines.append(
            f"| **data floor** | training crops vs held-out crops | - | {count} | " + " | ".join(cells) + " | | |"
        )
        noise = noise_values(setup, count)
        cells = []
        for metric in measured:
            values = list(noise.get(metric, {}).values())
            cells.append(
                f"{_fmt(np.mean(values))} +- {np.std(values, ddof=1) if len(values) > 1 else 0:.2g}"
                if values
                else "not measured"
            )
        lines.append(
            f"| **pure noise** | N(0, 1) clamped to [-1, 1], one set per seed | - | {count} | "
            + " | ".join(cells)
            + f" | | {len(next(iter(noise.values()), {}))} |"
        )
    return lines


def claim_lines(analysis: dict) -> list[str]:
    """Every comparison as one sentence, for and against."""
    lines = []
    passed = analysis["gate"]["passed"]
    for row in analysis["family"]:
        formulation = row["arm"].split("/")[0]
        note = "" if passed.get(formulation) else " (gate failed: not interpretable)"
        lines.append(
            f"- {row['arm']} vs {row['baseline']} ({SHORT_SAMPLER[PRIMARY[formulation]]}), "
            f"{METRIC_LABELS[row['metric']]}: {_fmt(row['arm_mean'])} vs {_fmt(row['baseline_mean'])}, "
            f"**{row['outcome']}** (paired, Holm family of {row['family_size']}){note}."
        )
    for row in analysis["descriptive"]:
        formulation = row["arm"].split("/")[0]
        why = "training loss of one batch" if row["metric"] == "final_diffusion_loss" else "fails the blur check"
        lines.append(
            f"- {row['arm']} vs {row['baseline']} ({SHORT_SAMPLER[PRIMARY[formulation]]}), "
            f"{METRIC_LABELS[row['metric']]}: {_fmt(row['arm_mean'])} vs {_fmt(row['baseline_mean'])}, "
            f"{row['outcome']} uncorrected (descriptive: {why})."
        )
    for row in analysis["extra"]:
        lines.append(
            f"- extra row, {row['arm']} vs {row['baseline']}, {METRIC_LABELS[row['metric']]}: "
            f"{_fmt(row['arm_mean'])} vs {_fmt(row['baseline_mean'])}, **{row['outcome']}** (paired, Holm "
            f"family of {row['family_size']} over the DDIM rows)."
        )
    for row in analysis["samplers"]:
        lines.append(
            f"- sampler, {row['arm']} vs {row['baseline']}, {METRIC_LABELS[row['metric']]}: "
            f"{_fmt(row['arm_mean'])} vs {_fmt(row['baseline_mean'])}, {row['outcome']} uncorrected."
        )
    return lines


def gate_sentences(analysis: dict) -> list[str]:
    gate_result = analysis["gate"]
    lines = []
    for formulation in FORMULATIONS:
        rows = [r for r in gate_result["family"] if r["arm"].startswith(f"{formulation}/")]
        if not rows:
            continue
        verdict = "**passed**" if gate_result["passed"].get(formulation) else "**failed**"
        parts = ", ".join(
            f"{METRIC_LABELS[r['metric']]} {_fmt(r['arm_mean'])} vs noise {_fmt(r['baseline_mean'])} "
            f"({r['outcome']}, Holm p {r['p_holm']:.2g})"
            for r in rows
        )
        lines.append(f"- {formulation.upper()} ({SHORT_SAMPLER[PRIMARY[formulation]]}): gate {verdict}: {parts}.")
    return lines


def write_page(result: dict, path: Path) -> None:
    """docs/SPECTRAL_REGULARIZATION.md, generated from the JSON."""
    from diffusers_spectrum.evaluation.statistics import comparison_table
    from diffusers_spectrum.evaluation.study_metrics import blur_check_table

    budget, analysis, setup = result["budget"], result["analysis"], result["setup"]
    expected = len(all_units(budget))
    missing = expected - len(result["units"])
    status = ""
    if missing:
        status = (
            f"\n**Incomplete: {missing} of {expected} units are missing** (shards still running or stopped); the "
            "numbers below are those of the stored units only.\n"
        )
    gate_result = analysis["gate"]
    failed = [f for f, ok in gate_result["passed"].items() if not ok]
    gate_note = (
        "every formulation's baseline beats pure noise on every relied-on metric, so the regulariser "
        "comparisons below are read."
        if not failed
        else f"{', '.join(f.upper() for f in failed)} failed it: their regulariser comparisons are listed but "
        "not interpretable (a model no better than noise cannot show a regulariser's effect)."
    )
    if result.get("stopped_by_gate"):
        gate_note += f" The run stopped before the regularised arms: {result['stopped_by_gate']}."
    samplers = "\n".join(
        f"  - **{SHORT_SAMPLER[s]}**: {SAMPLER_LABELS[s]}; {budget['sampling_steps']} steps, "
        f"{budget['num_samples'] if s in PRIMARY.values() else budget['extra_num_samples']} samples per model."
        for s in SHORT_SAMPLER
    )
    units = list(result["units"].values())
    unit_cost = {
        f: np.mean([u.get("unit_cpu_seconds", u["unit_seconds"]) for u in units if u["formulation"] == f] or [np.nan])
        for f in FORMULATIONS
    }
    processes = result.get("processes", [])
    shards = sorted({p["shard"] for p in processes})
    cost = study_units.study_cost(units, processes)
    over = ["| step | regulariser time | ratio to the step |", "|---|---:|---:|"]
    over += [f"| {o['benchmark']} | {o['regularizer_ms']:.2f} ms | {o['ratio']:.4f} |" for o in result["overhead"]]
    machine = result.get("machine", {})
    reanalysis = result.get("reanalysis")
    reanalysis_note = ""
    if reanalysis:
        reanalysis_note = (
            f"\nRe-analysed from the stored units (`{reanalysis['command']}`, commit {reanalysis['commit']}).\n"
        )
    descriptive = comparison_table(analysis["descriptive"], labels=METRIC_LABELS, corrected=False)
    sampler_table = comparison_table(analysis["samplers"], labels=METRIC_LABELS, corrected=False)
    text = f"""# Spectral regularisation on unconditional pixel-space diffusion: a CPU miniature

Generated by `{result["command"]}` (`benchmarks/ablate_spectral_regularization.py`); every number below is read
from [`spectral_regularization.json`](spectral_regularization.json), which holds every unit (one training run and its
samplers, with its seconds). Do not edit by hand.
{status}{reanalysis_note}
## What was run

- Model: the `{budget["unet_config"]}` `UNet2DModel` preset, {budget["resolution"]} px, trained with
  `diffusers-spectrum train-unconditional`'s entry point (`training.unconditional.train_unconditional`); no EMA.
- Data: random {budget["resolution"]} px crops of the embedded photos ({budget["crops_per_photo"]} per photo, drawn
  once with a fixed seed, plus random flips); every 4th photo is held out, and {budget["num_samples"]} random crops of
  the held-out photos are the reference set (its first {budget["extra_num_samples"]} for the extra rows).
- Budget per run: {budget["max_train_steps"]} optimizer steps of batch {budget["train_batch_size"]}; AdamW, peak
  learning rate {budget["learning_rate"]}, `--lr_scheduler {budget["lr_scheduler"]} --lr_warmup_steps
  {budget["lr_warmup_steps"]}` (linear warm-up over the first {budget["lr_warmup_steps"]} steps, then
  {budget["lr_scheduler"]} decay to 0 at step {budget["max_train_steps"]}: the run reaches the peak rate and anneals;
  the trainer's default 500 warm-up steps would never reach it). Fourier weight {budget["fourier_weight"]}, wavelet
  weight {budget["wavelet_weight"]} (3-level Haar, L1), `signal` timestep weighting; weights fixed before any run.
- Seeds {list(budget["seeds"])}: initialisation, data order and training noise; the sampling noise of seed s
  (image i: {sample_seed(0) // 1000}k (s + 1) + i) and the metrics' seeds are shared by every arm, so arms are paired
  by seed.
- Formulations: DDPM with epsilon prediction (1000 linear-beta steps); EDM (sigma_data 0.5, P_mean -1.2, P_std 1.2).
- Samplers (every number below names its sampler):
{samplers}

  `DDPMPipeline` defaults to all 1000 steps; every sampler here takes {budget["sampling_steps"]} (sampling is most
  of the study's cost), which for the ancestral sampler is `DDPMScheduler.set_timesteps({budget["sampling_steps"]})`:
  the same ancestral chain on a strided schedule.
- Metrics: `evaluation.study_metrics.GenerationMetricSuite` against the held-out crops at the same count (lower is
  better); mean +- sample SD (ddof 1) over seeds.
- Cost: {len(units)} units, mean {unit_cost["ddpm"]:.0f} CPU-seconds per DDPM unit (training and three samplers)
  and {unit_cost["edm"]:.0f} per EDM unit; {cost["cpu_seconds"] / 3600:.2f} CPU-hours in all (units and set-ups; 1
  torch thread per process, {len(shards) or 1} process(es); wall {cost["wall_seconds"] / 3600:.2f} h summed over
  units, slowest process {cost["longest_process_wall_seconds"] / 3600:.2f} h).
  Machine: {machine.get("cpu", "?")}, {machine.get("cores", "?")} cores, torch
  {machine.get("versions", {}).get("torch", "?")}, diffusers {machine.get("versions", {}).get("diffusers", "?")}.

**Scale.** {budget["max_train_steps"]} steps of batch {budget["train_batch_size"]} of a 0.65M-parameter UNet: the
models are early in training. The numbers say whether the regularisers change early training in this miniature,
not how they behave at convergence. **No 64 px arm:** the embedded photos are 64 px, so a 64 px study would have one
crop per photo (28 held-out images: too few for KID or a spectrum statistic), and a 64 px step and sample cost about
four times a 32 px one (measured: a 64 px training step ~0.8 s and one sampler step ~65 ms per image on one thread),
so the higher-resolution claim of the paper is not tested here.

## The gate: does the unregularised baseline beat pure noise?

A study of regularisers means nothing when the baseline's samples are no better than noise (the previous version of
this page sampled DDPM with deterministic DDIM and got grey noise in every arm). Pure-noise "samples" (N(0, 1)
clamped to [-1, 1], one set per seed, at each count) are measured like a model; each formulation's unregularised arm,
sampled by its own pipeline, must be separated from them and better on every relied-on metric (paired by seed, Holm
over formulations x metrics). Outcome: {gate_note}

{chr(10).join(gate_sentences(analysis))}

{chr(10).join(comparison_table(gate_result["family"], labels=METRIC_LABELS))}

The DDPM extra rows against noise at their count ({budget["extra_num_samples"]} images), uncorrected:

{chr(10).join(comparison_table(gate_result["extra"], labels=METRIC_LABELS, corrected=False))}

## Which metrics the study relies on

At 32 images per set, held-out crops against other held-out crops box-blurred 5 x 5 must be at least twice as far
apart as two halves of unblurred crops (`evaluation.study_metrics`, mean over {budget["blur_splits"]} random splits).
Metrics that fail are reported, not relied on: they stay out of the gate and of the tested families.

{chr(10).join(blur_check_table(setup["blur_check"]))}

## Results

{chr(10).join(results_table(result, analysis))}

The data floor is what real training crops score against the held-out crops at the same count (no generator can be
expected to beat it); pure noise is what a model that learned nothing scores. "DDPM ancestral, first n of the extra
rows" is the primary DDPM samples' first {budget["extra_num_samples"]}, measured at the DDIM rows' count.

![relied-on metrics per arm and sampler, with the floor and noise, and samples](spectral_regularization.png)

## Paired comparisons: each regulariser against no regulariser, under the formulation's own sampler

Each regulariser minus its formulation's unregularised arm, per shared seed: t interval of the mean difference
(sample SD, ddof 1), percentile bootstrap over seeds beside it (reported, not decisive at this n), Holm's correction
over every arm x relied-on metric. **Separated** only when the Holm-adjusted p-value is at most 0.05.

{chr(10).join(comparison_table(analysis["family"], labels=METRIC_LABELS))}

Paired the same way, uncorrected and outside the family: the metrics that fail the blur check, and the final
diffusion loss (the loss of the last training batch: one batch, one draw of timesteps, so noisy):

{chr(10).join(descriptive)}

![paired differences per seed](spectral_regularization_paired.png)

## Extra rows: DDIM

The same DDPM models sampled with DDIM, eta 0 (deterministic) and eta 1, {budget["extra_num_samples"]} samples each.
Each regulariser against no regulariser under each DDIM sampler (paired, Holm over these rows):

{chr(10).join(comparison_table(analysis["extra"], labels=METRIC_LABELS))}

The samplers against each other (each DDIM row minus the ancestral sampler's first {budget["extra_num_samples"]}
samples of the same model, paired by seed, uncorrected):

{chr(10).join(sampler_table)}

## Every claim, for and against

{chr(10).join(claim_lines(analysis))}

## Overhead of the regularisers on a training step

Regulariser work timed alone (x0 recovery, losses, timestep weighting, backward to the model output) against a
training step without it, best of several runs (`benchmarks/bench_unet_regularizers.py`; goal <= 2%):

{chr(10).join(over)}

## Reproduce

```bash
python benchmarks/ablate_spectral_regularization.py                 # the full study, one process
python benchmarks/ablate_spectral_regularization.py --shard 0/2 &   # or two concurrent halves (1 torch thread each)
python benchmarks/ablate_spectral_regularization.py --shard 1/2
python benchmarks/ablate_spectral_regularization.py --quick --output_dir /tmp/ablation   # 1-2 minutes, smoke test
python benchmarks/ablate_spectral_regularization.py --reanalyse docs/spectral_regularization.json  # no training
```
Units already in the JSON with the same budget are skipped, so an interrupted study resumes where it stopped.
"""
    path.write_text(text, encoding="utf-8")


def readme_bullet(result: dict) -> str:
    """The README's evidence bullet, from the analysis."""
    budget, analysis = result["budget"], result["analysis"]
    seconds = study_units.study_cost(result["units"].values(), result.get("processes", []))["cpu_seconds"]
    gate_result = analysis["gate"]
    gate_text = "; ".join(
        f"{f.upper()} ({SHORT_SAMPLER[PRIMARY[f]]}) {'passes' if ok else 'FAILS'}"
        for f, ok in gate_result["passed"].items()
    )
    separated = [r for r in analysis["family"] if r["outcome"] in ("better", "worse")]
    found = "; ".join(
        f"{r['arm']} {r['outcome']} on {METRIC_LABELS[r['metric']]} ({r['mean']:+.3g})" for r in separated
    )
    extra_separated = [r for r in analysis["extra"] if r["outcome"] in ("better", "worse")]
    extra = "; ".join(f"{r['arm']} {r['outcome']} on {METRIC_LABELS[r['metric']]}" for r in extra_separated)
    relied = ", ".join(METRIC_LABELS[m] for m in analysis["relied_metrics"])
    return (
        "- **Spectral regularisation, pixel space** ([docs/SPECTRAL_REGULARIZATION.md]"
        "(docs/SPECTRAL_REGULARIZATION.md),\n  `benchmarks/ablate_spectral_regularization.py`, "
        f"{seconds / 3600:.1f} CPU-hours): none / Fourier / wavelet / both under DDPM and EDM on "
        f"{budget['resolution']} px crops, {budget['max_train_steps']} steps, "
        f"{len(budget['seeds'])} seeds, {budget['num_samples']} samples per model, each formulation sampled by its "
        f"exported pipeline (DDPM ancestral, EDM Euler; DDIM eta 0 / 1 as extra rows). Gate (the baseline beats pure "
        f"noise on every relied-on metric: {relied}): {gate_text}. Paired by seed and Holm-corrected over "
        f"{len(analysis['family'])} comparisons: "
        + (f"separated: {found}" if found else "no regulariser separates from none")
        + (f". Under DDIM: {extra}" if extra else ". Under DDIM nothing separates either")
        + ". No 64 px arm (the embedded photos are 64 px: 28 held-out images)."
    )


def update_readme(result: dict, readme: Path = ROOT / "README.md") -> bool:
    """Replace the bullet between the README's markers (when they are there)."""
    bullet = study_units.wrap_bullet(readme_bullet(result))
    return study_units.replace_between(readme, README_START, README_END, bullet)


def paired_lines(analysis: dict) -> list[str]:
    """One sentence per formulation: each regulariser's tested outcomes (Holm-corrected)."""
    lines = []
    for formulation in FORMULATIONS:
        rows = [r for r in analysis["family"] if r["arm"].startswith(f"{formulation}/")]
        if rows:
            parts = [
                f"{r['arm'].split('/')[1]}: {METRIC_LABELS[r['metric']]} {r['outcome']} ({r['mean']:+.3g})"
                for r in rows
            ]
            lines.append(f"- **{formulation.upper()}** vs no regulariser: " + "; ".join(parts) + ".")
    return lines


def write_figure(result: dict, samples_dir: Path, path: Path) -> None:
    """Top: each relied-on metric per arm and sampler row (mean +- SD over seeds), with the data floor and pure
    noise at the row's count. Bottom: the first seed's samples, none | both, per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    analysis, setup = result["analysis"], result["setup"]
    metrics = analysis["relied_metrics"] or analysis["measured_metrics"][:2]
    rows = [(f, s) for f in FORMULATIONS for s in SAMPLERS[f]]
    figure = plt.figure(figsize=(4.2 * max(len(metrics), len(rows)), 6.6))
    grid = figure.add_gridspec(2, max(len(metrics), len(rows)), height_ratios=(1.6, 1))
    width = 0.8 / len(rows)
    for index, metric in enumerate(metrics):
        ax = figure.add_subplot(grid[0, index])
        for k, (formulation, sampler) in enumerate(rows):
            summary = {
                r["regularizer"]: r
                for r in result["summary"]
                if r["formulation"] == formulation and r["sampler"] == sampler
            }
            means = [summary[n][f"{metric}_mean"] if n in summary else np.nan for n in REGULARIZERS]
            sds = [summary[n][f"{metric}_sd"] if n in summary else 0.0 for n in REGULARIZERS]
            ax.bar(
                np.arange(4) + (k - (len(rows) - 1) / 2) * width,
                means,
                width,
                yerr=sds,
                capsize=2,
                label=SHORT_SAMPLER[sampler],
            )
        for count, style in ((result["budget"]["num_samples"], "-"), (result["budget"]["extra_num_samples"], ":")):
            floor = setup["floor"][str(count)].get(metric)
            noise = list(noise_values(setup, count).get(metric, {}).values())
            if floor is not None:
                ax.axhline(floor, color="green", ls=style, lw=1, label=f"data floor (n={count})")
            if noise:
                ax.axhline(np.mean(noise), color="red", ls=style, lw=1, label=f"pure noise (n={count})")
        ax.set_xticks(range(4), REGULARIZERS)
        ax.set_title(f"{METRIC_LABELS[metric]} (lower is better)", fontsize=9)
        if index == 0:
            ax.legend(fontsize=6)
    for index, (formulation, sampler) in enumerate(rows):
        ax = figure.add_subplot(grid[1, index])
        files = [samples_dir / f"{formulation}_{name}_{sampler}.png" for name in ("none", "both")]
        images = [np.asarray(Image.open(file)) for file in files if file.is_file()]
        if images:
            gap = np.full((images[0].shape[0], 6, 3), 255, np.uint8)
            ax.imshow(np.concatenate([images[0], gap, *images[1:]], axis=1))
        first = result["budget"]["seeds"][0]
        ax.set_title(f"{SHORT_SAMPLER[sampler]}: none | both (seed {first})", fontsize=9)
        ax.axis("off")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_paired_figure(analysis: dict, path: Path) -> None:
    """Per relied-on metric, each regulariser's per-seed differences from its formulation's unregularised arm (dots)
    with the 95% t interval (blue) and the Holm-corrected interval (red) of their mean; DDIM rows beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusers_spectrum.evaluation.plotting import paired_differences

    rows = analysis["family"] + analysis["extra"]
    metrics = [m for m in METRIC_LABELS if any(r["metric"] == m for r in rows)] or ["spectrum_distance"]
    figure, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        mine = [r for r in rows if r["metric"] == metric]
        paired_differences(ax, mine, marker_size=3)
        ax.set_xticks(range(len(mine)), [r["arm"] for r in mine], rotation=60, fontsize=7, ha="right")
        ax.set_title(f"{METRIC_LABELS[metric]}: arm - none, per seed", fontsize=9)
    axes[0][0].set_ylabel("per seed (dots); mean, 95% t (blue), Holm (red)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ----------------------------------------------------------------------------------------------------------------
# Driver


def _blas_threads():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return max((pool["num_threads"] for pool in threadpool_info()), default=None)


def machine() -> dict:
    import diffusers

    import diffusers_spectrum

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "blas_threads": _blas_threads(),
        "platform": platform.platform(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "diffusers_spectrum": diffusers_spectrum.__version__,
        },
    }


def compute_setup(data: dict, budget: dict, work_dir: Path):
    """The feature nets, the metric suite, the anchors (data floor and pure noise per seed, at both counts) and the
    blur check. Returns ``(suite, setup record)``."""
    from diffusers_spectrum import GenerationMetricSuite, feature_net_for
    from diffusers_spectrum.evaluation.feature_net import random_feature_net

    net = feature_net_for(work_dir / "feature_net", data["train_photos"], steps=budget["feature_net_steps"])
    suite = GenerationMetricSuite(net, random_feature_net(data["train_photos"]), seed=0)
    heldout, size = data["heldout"], budget["resolution"]
    counts = (budget["num_samples"], budget["extra_num_samples"])
    setup = {
        "feature_net": json.loads((work_dir / "feature_net" / "feature_net.json").read_text()),
        "feature_net_hash": state_hash(net),
        "floor": {str(n): suite.measure(data["train_reference"][:n], heldout[:n]) for n in counts},
        "noise": {
            str(n): {str(s): suite.measure(noise_images(n, size, s), heldout[:n]) for s in budget["seeds"]}
            for n in counts
        },
        "blur_check": suite.blur_check(data["blur_crops"], num_splits=budget["blur_splits"]),
    }
    return suite, setup


def finish(result: dict, output_dir: Path, quick: bool) -> dict:
    """Summary, analysis, overhead, figures, page (and, for the repository's docs folder, the README bullet)."""
    from diffusers_spectrum.utils.records import write_json

    result["summary"] = summarize(result)
    result["analysis"] = analyse(result)
    if "overhead" not in result:
        result["overhead"] = overhead(result["budget"], quick)
    write_json(output_dir / JSON_NAME, result, sort_keys=False)
    write_figure(result, output_dir / SAMPLES_DIR, output_dir / FIGURE_NAME)
    write_paired_figure(result["analysis"], output_dir / PAIRED_FIGURE_NAME)
    write_page(result, output_dir / PAGE_NAME)
    if not quick and output_dir.resolve() == (ROOT / "docs").resolve():
        update_readme(result)
    return result


def run_ablation(
    quick: bool = False,
    output_dir: Path = ROOT / "docs",
    work_dir: Path | None = None,
    shard: tuple[int, int] = (0, 1),
    ignore_gate: bool | None = None,
) -> dict:
    """Run (or resume) this process's share of the units, merging each into the JSON; the process that finds every
    unit present writes the analysis, page and figures. Returns the merged result. ``ignore_gate`` defaults to
    ``quick`` (the quick mode's 2-step models are noise: it smoke-tests every arm)."""
    ignore_gate = quick if ignore_gate is None else ignore_gate
    from diffusers_spectrum.utils.run_folders import claim_output_dir

    budget = BUDGETS["quick" if quick else "full"]
    output_dir = Path(output_dir)
    json_path = output_dir / JSON_NAME
    own_work_dir = work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="ablation-")) if own_work_dir else Path(work_dir)
    # a given --work_dir must be new, empty or this study's: its train/ and runs/ are replaced, nothing else
    claim_output_dir(work_dir, "ablate-spectral-regularization", ("train", "runs"), flag="--work_dir")
    process_clock = study_units.Stopwatch()
    try:
        data = prepare_data(work_dir, budget)
        suite, setup = compute_setup(data, budget, work_dir)
        setup_time = process_clock.record("setup")
        result = merge(json_path, budget, quick, lambda r: store_setup(r, setup))
        units = all_units(budget)
        mine = study_units.shard_units(units, shard, [unit_cost_estimate(f, budget) for f, _, _ in units])
        baselines = {run_key(f, r, s) for f, r, s in all_units(budget) if r == "none"}
        for formulation, regularizer, seed in mine:
            key = run_key(formulation, regularizer, seed)
            if key in result["units"]:
                print(f"{key}: done, skipped", flush=True)
                continue
            if regularizer != "none" and not ignore_gate and baselines <= set(result["units"]):
                verdict = gate(result, relied_rows(result))
                failed = [f for f, ok in verdict["passed"].items() if not ok]
                if failed:
                    message = (
                        f"the gate failed for {', '.join(failed)} (the unregularised baseline does not beat "
                        "pure noise on every relied-on metric); stopping before the regularised arms "
                        "(--ignore_gate runs them anyway)"
                    )
                    result = merge(json_path, budget, quick, lambda r, m=message: r.update(stopped_by_gate=m))
                    print(message, flush=True)
                    break
            record = run_unit(formulation, regularizer, seed, budget, data, work_dir, suite, output_dir / SAMPLES_DIR)
            record["shard"] = f"{shard[0]}/{shard[1]}"
            result = merge(json_path, budget, quick, lambda r, k=key, v=record: r["units"].__setitem__(k, v))
            primary = record["samplers"][PRIMARY[formulation]]
            print(
                f"{key}: spectrum distance {primary['spectrum_distance']:.3f}, unit {record['unit_seconds']:.0f} s "
                f"(train {record['train_seconds']:.0f} s)",
                flush=True,
            )

        def note_process(r):
            r.setdefault("processes", []).append(
                {
                    "shard": f"{shard[0]}/{shard[1]}",
                    **setup_time,
                    **process_clock.record("wall"),
                    "finished": time.strftime("%Y-%m-%d %H:%M"),
                }
            )
            r["machine"] = machine()
            if all(run_key(*u) in r["units"] for u in all_units(budget)):
                r.pop("stopped_by_gate", None)  # a later --ignore_gate run completed the study

        result = merge(json_path, budget, quick, note_process)
        missing = [run_key(*u) for u in all_units(budget) if run_key(*u) not in result["units"]]
        if missing and not result.get("stopped_by_gate"):
            print(
                f"{len(missing)} units are not in the JSON yet (other shards); the shard that completes them writes "
                "the page (or run --reanalyse).",
                flush=True,
            )
        else:
            with study_units.json_lock(json_path):
                result = read_result(json_path, budget, quick)
                finish(result, output_dir, quick)
    finally:
        if own_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    return result


def relied_rows(result: dict) -> list[str]:
    from diffusers_spectrum.evaluation.study_metrics import relied_metrics

    measured = measured_metrics(result)
    return [m for m in relied_metrics(result["setup"]["blur_check"]) if m in measured]


def reanalyse(json_path: Path, output_dir: Path) -> dict:
    """Rewrite the analysis, figures and page of a stored JSON without training (partial JSONs are marked)."""
    result = json.loads(Path(json_path).read_text())
    if "units" not in result or not result.get("setup"):
        raise ValueError(f"{json_path}: not a JSON of this version of the study (no 'units' / 'setup'); re-run it.")
    result["reanalysis"] = {"command": " ".join(["python", *sys.argv]), "commit": study_units.git_commit()}
    output_dir = Path(output_dir)
    quick = result["budget"] == json.loads(json.dumps(BUDGETS["quick"]))
    with study_units.json_lock(output_dir / JSON_NAME):
        return finish(result, output_dir, quick)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute smoke run (2 seeds, 2 steps, 8 samples)")
    parser.add_argument("--output_dir", type=Path, default=ROOT / "docs", help="where the JSON, page and figures go")
    parser.add_argument("--work_dir", type=Path, default=None, help="crops and run folders (default: a temp dir)")
    shard_help = "i/n: run every n-th unit from the i-th (baselines first), into the same JSON"
    parser.add_argument("--shard", type=study_units.parse_shard, default=(0, 1), help=shard_help)
    parser.add_argument("--num_threads", type=int, default=1, help="torch threads (1: shards share the cores)")
    parser.add_argument(
        "--ignore_gate",
        action="store_true",
        help="train the regularised arms even if the gate fails (always in --quick)",
    )
    parser.add_argument("--reanalyse", type=Path, default=None, help="a stored JSON: analysis and page, no training")
    cli = parser.parse_args()
    study_units.limit_threads(cli.num_threads)
    if cli.reanalyse:
        reanalyse(cli.reanalyse, cli.output_dir)
    else:
        run_ablation(cli.quick, cli.output_dir, cli.work_dir, cli.shard, cli.ignore_gate or None)
