"""DCTdiff against pixel diffusion: the same DiT trained in pixel space and in DCT space (a CPU miniature).

DCTdiff (Ning et al. 2024, "DCTdiff: Intriguing Properties of Image Generative Modeling in the DCT Space",
arXiv:2412.15032) models images in the blockwise DCT space and reports better generative quality and training
efficiency than pixel-space diffusion, and easy scaling to higher resolution. This study trains the same DiT
(`diffusers-spectrum train-dit`, i.e. `training.dit.parse_args` + `train_dit`, the code users run) on the same crops
of the embedded photos with the same budget and seeds, in pixel space (`--space pixel`) and in DCT space
(`--space dct`), with DCTdiff's own settings on and off:

- Token counts matched: at 32 px, pixel patches of 4 x 4 (`--patch_size 4`: 8 x 8 = 64 tokens of 48 RGB values)
  against 2 x 2 DCT blocks (`--dct_block_size 2 --patch_size 1`: a token holds four Y blocks and the co-located
  chroma blocks of the same 4 x 4 pixels, 64 tokens of 24 coefficients), the authors' block size at 32 px and the
  token count of their CIFAR-10 model. At 64 px (the resolution test): pixel patches of 8 x 8 against 4 x 4 DCT
  blocks, 64 tokens again, with the authors' 4 x 4-block recipe of 8 kept coefficients per block.
- Arms (`ARMS`): `pixel`; `dctdiff` (SNR scale c = 4 and entropy-weighted loss, all coefficients kept: the authors'
  CIFAR-10 configuration); `dct` (the transform alone: c = 1, plain MSE); `dctdiff-no-snr`, `dctdiff-no-entropy`
  (one setting off each); `dctdiff-drop1` (the highest zigzag coefficient of every block dropped); `pixel-64` and
  `dctdiff-64`.
- Training efficiency: each run trains in stages (`--max_train_steps` at each checkpoint of `BUDGETS[...]
  ["checkpoints"]`, resumed with `--resume_from_checkpoint latest`, bit-exact with one long run), and after every
  stage its exported pipeline is loaded as `DiffusionPipeline.from_pretrained` loads it (`load_pipeline`) and
  sampled with its own scheduler (DDIM, eta 0, `num_inference_steps` of the budget); the metrics against the
  checkpoint's step and its cumulative training seconds are the efficiency curves. The final checkpoint is also
  sampled with the ancestral DDPM sampler on the exported schedule (`DDPMScheduler.from_config`), a labelled extra
  row.
- Quality: every metric of `evaluation.study_metrics.GenerationMetricSuite` (log-spectrum distance, SWD as
  published and colour-aware, KID / FD in the features of a net trained here on the training photos and of a
  random-init one), each beside its anchors: the data floor (training crops against the held-out reference, same
  count), the reconstruction ceiling of each DCT configuration (decode(encode(reference)): chroma subsampling and
  dropped coefficients lose detail) and uniform noise. The blur check decides which metrics the study relies on.
- Statistics (`evaluation.statistics.compare_arms`): arms paired by seed (initialisation, data order, noise and the
  sampling seeds are shared), t intervals and Holm's correction, one family per claim of the paper: quality (final
  checkpoint) and training efficiency (the mean of each metric over the checkpoints, which are spaced evenly in
  log-steps: the area under the curve against log-steps). The DCT arms are compared with `pixel`, the ablations
  with `dctdiff`, `dctdiff-64` with `pixel-64`.

Resumable: every finished stage of a run is stored at once (`--work_dir/units/`, and the JSON), and a re-run with
the same budget continues where it stopped (a killed stage resumes from its last checkpoint). `--shard i/n` runs
every n-th run from the i-th; shards started together on one machine share `--work_dir` (the default) and merge
into the one JSON under a file lock; whichever finishes last writes the analysis, the figures and the page
(`--reanalyse` also does, from the JSON alone). One torch thread per process (`--threads`).

Writes `docs/dct_vs_pixel.json` (every run and stage with its seconds, anchors, blur check, analysis, budget, command
lines, seeds, versions), `docs/DCT_VS_PIXEL.md` (generated) and `docs/dct_vs_pixel_{curves,samples,paired}.png`;
`--quick` writes `*_quick.*` files beside them instead (default output: the work folder).

Usage: python benchmarks/compare_dct_pixel.py [--quick] [--shard i/n] [--output_dir docs] [--work_dir DIR]
       python benchmarks/compare_dct_pixel.py --reanalyse docs/dct_vs_pixel.json
"""

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


ROOT = Path(__file__).resolve().parent.parent
COMMAND = "compare-dct-pixel"
FORMAT = 1
METRIC_LABELS = {
    "spectrum_distance": "spectrum distance",
    "swd_pooled_x1e3": "colour-aware SWD x1e3",
    "swd_x1e3": "SWD x1e3 (published)",
    "kid_trained": "KID (trained net)",
    "fd_trained": "FD (trained net)",
    "kid_random": "KID (random net)",
    "fd_random": "FD (random net)",
}
# Arms: the train-dit flags that differ. Every arm shares the budget's model, optimiser, schedule and seeds.
ARMS = {
    "pixel": dict(resolution=32, space="pixel", patch_size=4),
    "dctdiff": dict(
        resolution=32, space="dct", patch_size=1, dct_block_size=2, dct_num_dropped=0, entropy=True, snr_scale=4.0
    ),
    "dct": dict(
        resolution=32, space="dct", patch_size=1, dct_block_size=2, dct_num_dropped=0, entropy=False, snr_scale=1.0
    ),
    "dctdiff-no-snr": dict(
        resolution=32, space="dct", patch_size=1, dct_block_size=2, dct_num_dropped=0, entropy=True, snr_scale=1.0
    ),
    "dctdiff-no-entropy": dict(
        resolution=32, space="dct", patch_size=1, dct_block_size=2, dct_num_dropped=0, entropy=False, snr_scale=4.0
    ),
    "dctdiff-drop1": dict(
        resolution=32, space="dct", patch_size=1, dct_block_size=2, dct_num_dropped=1, entropy=True, snr_scale=4.0
    ),
    "pixel-64": dict(resolution=64, space="pixel", patch_size=8),
    "dctdiff-64": dict(
        resolution=64, space="dct", patch_size=1, dct_block_size=4, dct_num_dropped=8, entropy=True, snr_scale=4.0
    ),
}
# Each arm's comparison: (arm, baseline). DCT against pixels (the paper's claims), each DCTdiff setting against
# DCTdiff with it (the ablation), and the 64 px pair.
COMPARISONS = (
    ("dctdiff", "pixel"),
    ("dct", "pixel"),
    ("dctdiff-no-snr", "dctdiff"),
    ("dctdiff-no-entropy", "dctdiff"),
    ("dctdiff-drop1", "dctdiff"),
    ("dctdiff-64", "pixel-64"),
)

# The budgets. Full, sized from unit costs measured here (1 torch thread, CPU seconds, on a loaded machine): a training
# step of the mini DiT at batch 32 costs about 0.11 s in either space (start-up included), drawing 512 samples with
# 50 DDIM steps about 23 s and measuring them about 16 s. A 32 px run (2000 steps, 4 evaluations, the ancestral extra
# row) is then about 440 s, a 64 px run (56 samples per evaluation) about 300 s: 18 x 440 + 6 x 300 = 2.7 h of CPU,
# about 1.4 h on 2 idle cores as two shards, plus the preparation (feature net, anchors, blur checks: a few minutes).
# Measured (2026-12-02, two shards, the machine shared for the first 40 min): 99 min wall, 191 min of summed unit
# wall time; sampling and measuring cost more than sized (about 25 s + 16 s per evaluation when idle, twice that when
# shared), training about 0.13 s per step.
# lr 5e-4 with 100 warm-up steps: checked stable on both spaces for 1400 steps (samples with colour and layout).
BUDGETS = {
    "full": dict(
        arms=list(ARMS),
        seeds=[0, 1, 2],
        dit_config="mini",
        train_batch_size=32,
        learning_rate=5e-4,
        lr_scheduler="constant_with_warmup",
        lr_warmup_steps=100,
        checkpoints=[250, 500, 1000, 2000],
        crops_per_photo=16,
        num_samples=512,
        num_samples_64=56,
        sampling_steps=50,
        ancestral_extra=True,
        feature_net_steps=400,
        blur_splits=8,
    ),
    "quick": dict(
        arms=["pixel", "dctdiff", "pixel-64", "dctdiff-64"],
        seeds=[0, 1],
        dit_config="tiny",
        train_batch_size=8,
        learning_rate=1e-3,
        lr_scheduler="constant_with_warmup",
        lr_warmup_steps=1,
        checkpoints=[2, 4],
        crops_per_photo=1,
        num_samples=24,
        num_samples_64=24,
        sampling_steps=3,
        ancestral_extra=True,
        feature_net_steps=5,
        blur_splits=1,
    ),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Data: crops of the embedded photos, split by photo


def split_photos() -> tuple[torch.Tensor, torch.Tensor]:
    """The 112 embedded 64 px photos: every 4th (sorted by name) held out, the others train: `(84, 3, 64, 64)` and
    `(28, 3, 64, 64)` in [-1, 1]."""
    from diffusers_spectrum.evaluation.study_metrics import embedded_photos

    photos = embedded_photos()
    held = torch.tensor([i % 4 == 3 for i in range(len(photos))])
    return photos[~held], photos[held]


def study_data(budget: dict) -> dict:
    """Every image set of the study, deterministic (seeded), per resolution: the training images, the held-out
    reference, the data floor (training images, the reference's count) and the blur-check crops."""
    from diffusers_spectrum.evaluation.study_metrics import natural_crops

    train, heldout = split_photos()
    count = budget["num_samples"]
    per_photo = math.ceil(count / len(heldout))
    train32 = natural_crops(train, 32, per_photo=budget["crops_per_photo"], seed=1)
    floor_pool = train32 if len(train32) >= count else natural_crops(train, 32, math.ceil(count / len(train)), 3)
    count64 = min(budget["num_samples_64"], 2 * len(heldout))
    return {
        32: {
            "train": train32,
            "reference": natural_crops(heldout, 32, per_photo=per_photo, seed=2)[:count],
            "floor": floor_pool[:count],
            "blur": natural_crops(heldout, 32, per_photo=3, seed=4),
        },
        # 64 px: the photos themselves; the reference is the held-out photos and their mirror images, the floor as
        # many training photos; the blur check needs 64 images, so it uses all 112 photos (no model is involved)
        64: {
            "train": train,
            "reference": torch.cat([heldout, heldout.flip(-1)])[:count64],
            "floor": train[:count64],
            "blur": torch.cat([train, heldout]),
        },
    }


def write_images(images: torch.Tensor, folder: Path) -> None:
    """PNG files `00000.png`, ... of `(N, 3, H, W)` images in [-1, 1] (a `--train_data_dir` folder)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    array = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for index, image in enumerate(array):
        Image.fromarray(image).save(folder / f"{index:05d}.png")


# ----------------------------------------------------------------------------------------------------------------
# One run: train in stages through train-dit, sample each stage's exported pipeline, measure


def unit_key(arm: str, seed: int) -> str:
    return f"{arm}/seed{seed}"


def train_argv(arm: str, seed: int, steps: int, budget: dict, data_dir: Path, out: Path) -> list[str]:
    """The `train-dit` command line of one stage of one run (the same flags every stage; only the steps grow)."""
    spec = ARMS[arm]
    argv = [
        "--train_data_dir",
        str(data_dir),
        "--no_streaming",
        "--unconditional",
        "--random_flip",
        "--resolution",
        str(spec["resolution"]),
        "--space",
        spec["space"],
        "--patch_size",
        str(spec["patch_size"]),
        "--dit_config",
        budget["dit_config"],
        "--objective",
        "epsilon",
        "--label_dropout",
        "0",
        "--train_batch_size",
        str(budget["train_batch_size"]),
        "--max_train_steps",
        str(steps),
        "--learning_rate",
        str(budget["learning_rate"]),
        "--lr_scheduler",
        budget["lr_scheduler"],
        "--lr_warmup_steps",
        str(budget["lr_warmup_steps"]),
        "--checkpointing_steps",
        str(budget["checkpoints"][0]),
        "--checkpoints_total_limit",
        "1",
        "--validation_steps",
        str(10**9),
        "--report_to",
        "none",
        "--seed",
        str(seed),
        "--output_dir",
        str(out),
        "--resume_from_checkpoint",
        "latest",
    ]
    if spec["space"] == "dct":
        argv += [
            "--dct_block_size",
            str(spec["dct_block_size"]),
            "--dct_num_dropped",
            str(spec["dct_num_dropped"]),
            "--snr_scale",
            str(spec["snr_scale"]),
        ]
        argv += ["--dct_entropy_weights"] if spec["entropy"] else []
    return argv


@torch.no_grad()
def draw_samples(pipeline_dir: Path, count: int, steps: int, sampler: str) -> torch.Tensor:
    """`count` samples of the exported pipeline as `DiffusionPipeline.from_pretrained` loads it (`load_pipeline`),
    with its own scheduler (`"exported"`) or the ancestral DDPM sampler on the same schedule (`"ancestral"`); image
    `i` has seed 10000 + i in every arm."""
    from diffusers import DDPMScheduler

    from diffusers_spectrum.pipelines.sampling import load_pipeline, pipeline_samples

    pipe = load_pipeline(pipeline_dir, device="cpu", kind="image")
    if sampler == "ancestral":
        pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    batches = pipeline_samples(
        pipe,
        count,
        batch_size=64,
        class_labels=[0],
        num_inference_steps=steps,
        guidance_scale=1.0,
        seed=10_000,
        progress=False,
    )
    return torch.cat(list(batches)).clamp(-1, 1)


def stage_record(arm, seed, steps, budget, data_dir, run_dir, suites, data, work_dir, final) -> dict:
    """Train (or resume) one run to `steps`, then sample its exported pipeline and measure; returns the stage."""
    from diffusers_spectrum.training.dit import parse_args, train_dit

    resolution = ARMS[arm]["resolution"]
    resumed = any(run_dir.glob("checkpoint-*"))
    start = time.perf_counter()
    pipeline_dir = train_dit(parse_args(train_argv(arm, seed, steps, budget, data_dir, run_dir)))
    train_seconds = time.perf_counter() - start
    trained = json.loads((run_dir / "metrics.json").read_text())
    count = budget["num_samples"] if resolution == 32 else len(data[resolution]["reference"])
    record = {
        "step": steps,
        "train_seconds": round(train_seconds, 2),
        "resumed_from_checkpoint": resumed,
        "final_diffusion_loss": trained.get("diffusion"),
        "samplers": {},
    }
    for sampler in ("exported", "ancestral") if final and budget["ancestral_extra"] else ("exported",):
        start = time.perf_counter()
        samples = draw_samples(pipeline_dir, count, budget["sampling_steps"], sampler)
        sample_seconds = time.perf_counter() - start
        start = time.perf_counter()
        metrics = suites[resolution].measure(samples, data[resolution]["reference"])
        record["samplers"][sampler] = {
            **metrics,
            "sample_seconds": round(sample_seconds, 2),
            "measure_seconds": round(time.perf_counter() - start, 2),
        }
        if final and seed == budget["seeds"][0]:
            grid = work_dir / "grids" / f"{arm}_{sampler}.pt"
            grid.parent.mkdir(parents=True, exist_ok=True)
            torch.save(samples[:16].clone(), grid)
    return record


# ----------------------------------------------------------------------------------------------------------------
# Shared state: preparation under a lock, units, the merged JSON


def file_lock(path: Path):
    from filelock import FileLock

    return FileLock(str(path))


def prepare(work_dir: Path, budget: dict) -> tuple[dict, dict, dict]:
    """Training folders, the feature nets and the anchors: computed once per work folder (the first shard does it
    under the lock; the others load it). Returns `(data, suites, prepared)`."""
    from diffusers_spectrum.evaluation.feature_net import feature_net_for, random_feature_net
    from diffusers_spectrum.evaluation.study_metrics import GenerationMetricSuite
    from diffusers_spectrum.models.dct_transform import DCTTransform
    from diffusers_spectrum.utils.records import write_json

    data = study_data(budget)
    with file_lock(work_dir / ".prepare.lock"):
        marker = work_dir / "prepared.json"
        stored = json.loads(marker.read_text()) if marker.is_file() else None
        fresh = stored is None or stored.get("budget") != budget
        start = time.perf_counter()
        if fresh:
            # this command's own folders: training images (re)written whole; the runs and stored stages of another
            # budget would be resumed under this one, so they go
            for name in ("data", "units", "runs", "grids"):
                shutil.rmtree(work_dir / name, ignore_errors=True)
            for resolution in (32, 64):
                write_images(data[resolution]["train"], work_dir / "data" / f"train{resolution}")
        else:
            log("data, feature nets and anchors: prepared before (stored)")
        train_photos, _ = split_photos()
        net_dir = work_dir / f"feature_net_{budget['feature_net_steps']}"
        net = feature_net_for(net_dir, train_photos, steps=budget["feature_net_steps"])
        suite = GenerationMetricSuite(net, random_feature_net(train_photos), seed=0)
        suites = {32: suite, 64: suite}
        if fresh:
            anchors = {}
            generator = torch.Generator().manual_seed(5)
            for resolution in (32, 64):
                reference = data[resolution]["reference"]
                noise = torch.rand(reference.shape, generator=generator) * 2 - 1
                ceilings = {}  # one per DCT configuration (the arms that share it listed)
                for arm in budget["arms"]:
                    spec = ARMS[arm]
                    if spec["resolution"] != resolution or spec["space"] != "dct":
                        continue
                    name = dct_config_name(arm)
                    if name not in ceilings:
                        transform = DCTTransform(
                            block_size=spec["dct_block_size"], num_dropped=spec["dct_num_dropped"]
                        )
                        ceilings[name] = {"arms": [], **suite.measure(transform(reference).sample, reference)}
                    ceilings[name]["arms"].append(arm)
                anchors[str(resolution)] = {
                    "floor": suite.measure(data[resolution]["floor"], reference),
                    "noise": suite.measure(noise, reference),
                    "ceiling": ceilings,
                    "blur_check": suite.blur_check(data[resolution]["blur"], num_splits=budget["blur_splits"]),
                    "num_reference": len(reference),
                    "num_train_images": len(data[resolution]["train"]),
                }
            feature_info = json.loads((net_dir / "feature_net.json").read_text())
            stored = {
                "budget": budget,
                "anchors": anchors,
                "feature_net": feature_info,
                "seconds": round(time.perf_counter() - start, 1),
            }
            write_json(marker, stored, sort_keys=False)
            log(f"prepared data, feature nets and anchors in {stored['seconds']} s")
    return data, suites, stored


def dct_config_name(arm: str) -> str:
    """The DCT configuration of an arm, e.g. `"block 2, 4 of 4 coefficients"`."""
    spec = ARMS[arm]
    b = spec["dct_block_size"]
    return f"block {b}, {b * b - spec['dct_num_dropped']} of {b * b} coefficients"


def all_units(budget: dict) -> list[tuple[str, int]]:
    """Every (arm, seed) run, seed-major (so a partial run holds whole seeds of every arm)."""
    return [(arm, seed) for seed in budget["seeds"] for arm in budget["arms"]]


def shard_units(budget: dict, shard: tuple[int, int]) -> list[tuple[str, int]]:
    index, count = shard
    return [unit for position, unit in enumerate(all_units(budget)) if position % count == index]


def unit_path(work_dir: Path, key: str) -> Path:
    return work_dir / "units" / (key.replace("/", "_") + ".json")


def run_unit(arm, seed, budget, work_dir, data, suites, json_path, skeleton) -> dict:
    """Every stage of one run, each stored at once (unit file and JSON); stages already stored are skipped. A run
    that the JSON holds complete (same budget) but the work folder does not, as when the study continues on another
    machine or in a fresh work folder from the committed JSON, is taken from the JSON without training."""
    from diffusers_spectrum.utils.records import write_json

    key = unit_key(arm, seed)
    path = unit_path(work_dir, key)
    if not path.is_file():
        stored = ((load_result(json_path, budget) or {}).get("runs") or {}).get(key)
        if stored is not None and stored.get("complete"):
            log(f"{key}: complete in {json_path.name}, not trained again")
            write_json(path, stored, sort_keys=False)
            return stored
    unit = json.loads(path.read_text()) if path.is_file() else {"arm": arm, "seed": seed, "stages": []}
    done = {stage["step"] for stage in unit["stages"]}
    data_dir = work_dir / "data" / f"train{ARMS[arm]['resolution']}"
    run_dir = work_dir / "runs" / key.replace("/", "_")
    for steps in budget["checkpoints"]:
        if steps in done:
            continue
        log(f"{key}: training to step {steps}")
        final = steps == budget["checkpoints"][-1]
        stage = stage_record(arm, seed, steps, budget, data_dir, run_dir, suites, data, work_dir, final)
        unit["stages"].append(stage)
        unit["stages"].sort(key=lambda s: s["step"])
        unit["seconds"] = round(
            sum(
                s["train_seconds"] + sum(v["sample_seconds"] + v["measure_seconds"] for v in s["samplers"].values())
                for s in unit["stages"]
            ),
            1,
        )
        unit["complete"] = [s["step"] for s in unit["stages"]] == list(budget["checkpoints"])
        write_json(path, unit, sort_keys=False)
        merge_unit(json_path, work_dir, key, unit, skeleton)
        exported = stage["samplers"]["exported"]
        log(
            f"{key} step {steps}: spectrum distance {exported['spectrum_distance']:.3f}, colour-aware SWD "
            f"{exported['swd_pooled_x1e3']:.1f}, train {stage['train_seconds']:.0f} s"
        )
    return unit


def merge_unit(json_path: Path, work_dir: Path, key: str, unit: dict, skeleton: dict) -> dict:
    """Put one run into the JSON under the work folder's lock (several shards write it): read, set this run's
    entry, write atomically. A JSON of another budget is replaced by the skeleton."""
    from diffusers_spectrum.utils.records import write_json

    with file_lock(work_dir / ".json.lock"):
        result = load_result(json_path, skeleton["budget"]) or json.loads(json.dumps(skeleton))
        result["runs"][key] = unit
        result["unit_seconds"] = {k: u.get("seconds") for k, u in sorted(result["runs"].items())}
        write_json(json_path, result, sort_keys=False)
    return result


def load_result(json_path: Path, budget: dict) -> dict | None:
    """The stored JSON when it holds this budget (to continue), else None."""
    if not json_path.is_file():
        return None
    stored = json.loads(json_path.read_text())
    return stored if stored.get("budget") == json.loads(json.dumps(budget)) else None


# ----------------------------------------------------------------------------------------------------------------
# Analysis (from the JSON alone)


def complete_runs(result: dict) -> dict[str, dict]:
    return {key: unit for key, unit in result["runs"].items() if unit.get("complete")}


def measured_metrics(result: dict) -> list[str]:
    runs = complete_runs(result)
    finals = [u["stages"][-1]["samplers"]["exported"] for u in runs.values()]
    return [m for m in METRIC_LABELS if finals and all(f.get(m) is not None for f in finals)]


def arm_values(result: dict, metric: str, what: str, sampler: str = "exported") -> dict[str, dict[int, float]]:
    """`{arm: {seed: value}}` of a metric: `what` = "final" (last checkpoint) or "auc" (mean over checkpoints)."""
    values: dict[str, dict[int, float]] = {}
    for unit in complete_runs(result).values():
        stages = [s for s in unit["stages"] if sampler in s["samplers"]]
        if not stages:
            continue
        if what == "final":
            value = stages[-1]["samplers"][sampler][metric]
        else:
            value = float(np.mean([s["samplers"][sampler][metric] for s in stages]))
        values.setdefault(unit["arm"], {})[unit["seed"]] = float(value)
    return values


def relied_for(result: dict, arm: str) -> list[str]:
    from diffusers_spectrum.evaluation.study_metrics import relied_metrics

    return relied_metrics(result["anchors"][str(ARMS[arm]["resolution"])]["blur_check"])


def comparisons_present(result: dict, values: dict) -> list[tuple[str, str]]:
    return [(a, b) for a, b in COMPARISONS if a in values and b in values]


def family(result: dict, what: str, tested: bool, sampler: str = "exported") -> list[dict]:
    """Paired comparisons (arm - baseline per shared seed) of every comparison x metric; `tested=True`: the metrics
    each pair's blur check relies on, one Holm family; `False`: the others, uncorrected (descriptive)."""
    from diffusers_spectrum.evaluation.statistics import compare_arms

    measured = measured_metrics(result)
    results: dict[str, dict] = {}
    for metric in measured:
        for arm, seeds in arm_values(result, metric, what, sampler).items():
            results.setdefault(arm, {})[metric] = seeds
    pairs = comparisons_present(result, results)
    rows = []
    for arm, baseline in pairs:
        relied = relied_for(result, arm)
        metrics = [m for m in measured if (m in relied) == tested]
        if metrics:
            rows.append((arm, baseline, metrics))
    if not rows:
        return []
    # one call per pair (each pair has its own metric list), then Holm over the whole family at once
    out = []
    for arm, baseline, metrics in rows:
        out += compare_arms(results, {arm: baseline}, {m: True for m in metrics}, correction="none")
    if tested:
        out = holm_family(out)
    return out


def holm_family(rows: list[dict]) -> list[dict]:
    """Holm's correction over rows compared one pair at a time (`compare_arms(..., correction="none")`): the
    adjusted p-values, the corrected intervals and the outcomes of one family (`evaluation.statistics`)."""
    from diffusers_spectrum.evaluation.statistics import ALPHA, holm_adjust, t_interval

    adjusted = holm_adjust([r["p_value"] for r in rows])
    valid = [i for i, r in enumerate(rows) if not np.isnan(r["p_value"])]
    ranks = {index: rank for rank, index in enumerate(sorted(valid, key=lambda i: rows[i]["p_value"]))}
    for index, row in enumerate(rows):
        row["family_size"] = len(valid)
        if index not in ranks:
            continue
        level = ALPHA / (len(valid) - ranks[index])
        corrected = t_interval(row["differences"], 1 - level)
        separated = bool(adjusted[index] <= ALPHA)
        better = (row["mean"] < 0) == row["lower_is_better"]
        row.update(
            p_holm=float(adjusted[index]),
            holm_confidence=1 - level,
            holm_lo=corrected["lo"],
            holm_hi=corrected["hi"],
            separated=separated,
            outcome=("better" if better else "worse") if separated else "not separated",
        )
    return rows


def summarize(result: dict) -> dict:
    """Per arm: mean and sample SD over seeds of every metric at every checkpoint (both samplers where drawn),
    the cumulative training seconds at each checkpoint, and the seconds per optimizer step."""
    from diffusers_spectrum.evaluation.statistics import mean_sd

    runs = complete_runs(result)
    summary = {}
    for arm in result["budget"]["arms"]:
        units = [u for u in runs.values() if u["arm"] == arm]
        if not units:
            continue
        checkpoints = []
        for index, step in enumerate(result["budget"]["checkpoints"]):
            row = {"step": step}
            cumulative = [sum(s["train_seconds"] for s in u["stages"][: index + 1]) for u in units]
            row["train_seconds"] = mean_sd(cumulative)
            for sampler in ("exported", "ancestral"):
                stages = [u["stages"][index]["samplers"].get(sampler) for u in units]
                if all(stages):
                    row[sampler] = {m: mean_sd(s[m] for s in stages) for m in measured_metrics(result)}
            checkpoints.append(row)
        last = result["budget"]["checkpoints"][-1]
        per_step = [sum(s["train_seconds"] for s in u["stages"]) / last for u in units]
        losses = [u["stages"][-1]["final_diffusion_loss"] for u in units]
        summary[arm] = {
            "num_seeds": len(units),
            "checkpoints": checkpoints,
            "seconds_per_step": mean_sd(per_step),
            "final_diffusion_loss": mean_sd(losses),
        }
    return summary


def analyse(result: dict) -> dict:
    """Blur checks, the gate, both Holm families (quality at the final checkpoint, efficiency over checkpoints),
    the descriptive rows (metrics not relied on, the ancestral sampler, seconds per step) and the resolution test."""
    from diffusers_spectrum.evaluation.statistics import compare_arms, t_interval

    summary = result["summary"]
    measured = measured_metrics(result)
    relied = {str(r): [m for m in measured if m in relied_metrics_at(result, r)] for r in (32, 64)}
    gate = {}
    for arm in ("pixel", "pixel-64"):
        if arm in summary:
            resolution = str(ARMS[arm]["resolution"])
            noise = result["anchors"][resolution]["noise"]
            final = summary[arm]["checkpoints"][-1]["exported"]
            gate[arm] = {
                m: {"baseline": final[m]["mean"], "noise": noise[m], "passes": final[m]["mean"] < noise[m]}
                for m in relied[resolution]
            }
    timing = {}
    seconds = {
        arm: {
            u["seed"]: sum(s["train_seconds"] for s in u["stages"])
            for u in complete_runs(result).values()
            if u["arm"] == arm
        }
        for arm in summary
    }
    for arm, baseline in COMPARISONS:
        if arm in seconds and baseline in seconds:
            shared = sorted(set(seconds[arm]) & set(seconds[baseline]))
            ratios = [seconds[arm][s] / seconds[baseline][s] for s in shared]
            timing[f"{arm}/{baseline}"] = {
                "ratios": ratios,
                **(t_interval(ratios) if len(ratios) > 1 else {"mean": ratios[0] if ratios else float("nan")}),
            }
    # The resolution test: DCTdiff's relative advantage over pixels at 64 px against at 32 px, per seed
    scaling = {}
    for metric in measured:
        finals = arm_values(result, metric, "final")
        if not all(a in finals for a in ("pixel", "dctdiff", "pixel-64", "dctdiff-64")):
            continue
        seeds = sorted(set.intersection(*(set(finals[a]) for a in ("pixel", "dctdiff", "pixel-64", "dctdiff-64"))))
        gap32 = [(finals["dctdiff"][s] - finals["pixel"][s]) / abs(finals["pixel"][s]) for s in seeds]
        gap64 = [(finals["dctdiff-64"][s] - finals["pixel-64"][s]) / abs(finals["pixel-64"][s]) for s in seeds]
        scaling[metric] = {
            "seeds": seeds,
            "relative_gap_32": gap32,
            "relative_gap_64": gap64,
            "difference": t_interval([b - a for a, b in zip(gap32, gap64)]) if len(seeds) > 1 else None,
        }
    ancestral = []
    if result["budget"].get("ancestral_extra"):
        values = {}
        for metric in measured:
            for arm, per_seed in arm_values(result, metric, "final", "ancestral").items():
                values.setdefault(arm, {})[metric] = per_seed
        pairs = comparisons_present(result, values)
        if pairs:
            ancestral = compare_arms(values, dict(pairs), {m: True for m in measured}, correction="none")
    return {
        "relied_metrics": relied,
        "measured_metrics": measured,
        "gate": gate,
        "quality": family(result, "final", True),
        "efficiency": family(result, "auc", True),
        "quality_descriptive": family(result, "final", False),
        "efficiency_descriptive": family(result, "auc", False),
        "ancestral": ancestral,
        "seconds_ratio": timing,
        "scaling": scaling,
        "missing_runs": [
            unit_key(a, s) for a, s in all_units(result["budget"]) if unit_key(a, s) not in complete_runs(result)
        ],
    }


def relied_metrics_at(result: dict, resolution: int) -> list[str]:
    from diffusers_spectrum.evaluation.study_metrics import relied_metrics

    return relied_metrics(result["anchors"][str(resolution)]["blur_check"])


# ----------------------------------------------------------------------------------------------------------------
# Figures and page (every number from the JSON)


def arm_label(arm: str) -> str:
    spec = ARMS[arm]
    if spec["space"] == "pixel":
        return f"{arm} ({spec['resolution']} px, patch {spec['patch_size']})"
    parts = [
        f"block {spec['dct_block_size']}",
        f"c {spec['snr_scale']:g}",
        "entropy" if spec["entropy"] else "plain MSE",
        f"m {spec['dct_num_dropped']}",
    ]
    return f"{arm} ({spec['resolution']} px, " + ", ".join(parts) + ")"


def tokens(arm: str) -> tuple[int, int]:
    """(tokens, values per token) of an arm's DiT input."""
    spec = ARMS[arm]
    if spec["space"] == "pixel":
        return (spec["resolution"] // spec["patch_size"]) ** 2, 3 * spec["patch_size"] ** 2
    b = spec["dct_block_size"]
    return (spec["resolution"] // (2 * b)) ** 2, 6 * (b * b - spec["dct_num_dropped"])


def token_capacity(arm: str, dit_config: str) -> tuple[int, int, float] | None:
    """(values per token, hidden width, 1 - width / values) when an arm's tokens are wider than the DiT's hidden
    state (heads x head dim of the preset): a token's independent noise values cannot all pass through it, so the
    epsilon loss has a floor near 1 - width / values. None when the tokens fit."""
    from diffusers_spectrum.models.presets import DIT_PRESETS

    preset = DIT_PRESETS[dit_config]
    hidden = preset["num_attention_heads"] * preset["attention_head_dim"]
    values = tokens(arm)[1]
    return (values, hidden, 1 - hidden / values) if values > hidden else None


def write_curves(result: dict, path: Path) -> None:
    """Each relied-on metric (and KID, trained net) against steps and against training seconds, mean +- sample SD
    over seeds per arm, with the data floor; 32 px arms, then the 64 px pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, analysis = result["summary"], result["analysis"]
    metrics = list(dict.fromkeys(analysis["relied_metrics"]["32"] + ["kid_trained"]))
    metrics = [m for m in metrics if m in analysis["measured_metrics"]]
    if not metrics or not summary:
        return
    figure, axes = plt.subplots(len(metrics), 3, figsize=(15, 3.4 * len(metrics)), squeeze=False)
    for row, metric in enumerate(metrics):
        for col, (resolution, xkey) in enumerate(((32, "step"), (32, "seconds"), (64, "step"))):
            ax = axes[row][col]
            for index, (arm, stats) in enumerate(summary.items()):
                if ARMS[arm]["resolution"] != resolution:
                    continue
                points = stats["checkpoints"]
                x = [p["step"] if xkey == "step" else p["train_seconds"]["mean"] for p in points]
                y = [p["exported"][metric]["mean"] for p in points]
                sd = [p["exported"][metric]["sd"] if p["exported"][metric]["n"] > 1 else 0.0 for p in points]
                style = "-" if ARMS[arm]["space"] == "pixel" else "--" if arm.startswith("dctdiff") else ":"
                ax.errorbar(x, y, yerr=sd, fmt=style + "o", ms=3, capsize=2, label=arm, color=f"C{index}")
            floor = result["anchors"][str(resolution)]["floor"].get(metric)
            if floor is not None:
                ax.axhline(floor, color="k", lw=0.8, ls=":", label="data floor")
            ax.set_xscale("log")
            ax.set_xlabel("optimizer steps" if xkey == "step" else "cumulative training seconds")
            ax.set_title(f"{METRIC_LABELS[metric]}, {resolution} px", fontsize=9)
            ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def write_samples(result: dict, work_dir: Path, path: Path) -> bool:
    """Final samples of the first seed per arm (the exported sampler; the ancestral row below where drawn). Returns
    False (nothing written) when the run's grids are not at hand (a re-analysis keeps the stored figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusers_spectrum.utils.images import image_grid

    arms = [a for a in result["budget"]["arms"] if (work_dir / "grids" / f"{a}_exported.pt").is_file()]
    if not arms:
        return False
    samplers = [
        s for s in ("exported", "ancestral") if all((work_dir / "grids" / f"{a}_{s}.pt").is_file() for a in arms)
    ]
    figure, axes = plt.subplots(
        len(samplers), len(arms), figsize=(2.6 * len(arms), 2.9 * len(samplers)), squeeze=False
    )
    for row, sampler in enumerate(samplers):
        for col, arm in enumerate(arms):
            grid = torch.load(work_dir / "grids" / f"{arm}_{sampler}.pt", weights_only=True)
            axes[row][col].imshow(image_grid(grid, nrow=4))
            axes[row][col].set_title(f"{arm}\n{sampler} sampler", fontsize=8)
            axes[row][col].axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def write_paired(result: dict, path: Path) -> None:
    """Per tested metric, each comparison's per-seed differences (dots), the 95% t interval (blue) and the
    Holm-corrected one (red), for the quality family (final checkpoint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusers_spectrum.evaluation.plotting import paired_differences

    rows = result["analysis"]["quality"]
    metrics = [m for m in METRIC_LABELS if any(r["metric"] == m for r in rows)]
    if not metrics:
        return
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        mine = [r for r in rows if r["metric"] == metric]
        paired_differences(ax, mine, marker_size=4)
        ax.set_xticks(
            range(len(mine)), [f"{r['arm']} - {r['baseline']}" for r in mine], rotation=35, fontsize=7, ha="right"
        )
        ax.set_title(f"{METRIC_LABELS[metric]}, final checkpoint", fontsize=9)
    axes[0][0].set_ylabel("per seed (dots); mean, 95% t (blue), Holm (red)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _cell(stat: dict) -> str:
    return f"{stat['mean']:.4g} +- {stat['sd']:.2g}" if stat["n"] > 1 else f"{stat['mean']:.4g}"


def _claim_lines(rows: list[dict], what: str, note: str | None = None) -> list[str]:
    """One line per comparison: `what` names the statistic (final quality, efficiency, the extra sampler); `note`
    marks rows outside the Holm families (uncorrected), None rows of a family."""
    lines = []
    for row in rows:
        status = f"**{row['outcome']}**" + (
            f" (paired, Holm family of {row['family_size']})" if note is None else f" uncorrected ({note})"
        )
        lines.append(
            f"- {what}, {row['arm']} vs {row['baseline']}, {METRIC_LABELS[row['metric']]}: "
            f"{row['arm_mean']:.4g} vs {row['baseline_mean']:.4g}, {status}."
        )
    return lines


def page_text(result: dict, suffix: str) -> str:
    from diffusers_spectrum.evaluation.statistics import comparison_table
    from diffusers_spectrum.evaluation.study_metrics import blur_check_table

    budget, summary, analysis, anchors = result["budget"], result["summary"], result["analysis"], result["anchors"]
    measured = analysis["measured_metrics"]
    first = budget["checkpoints"][-1]
    arms_table = [
        "| arm | space | tokens x values per token | DCTdiff settings | seconds / step | final diffusion "
        "loss (own space) | seeds |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for arm in budget["arms"]:
        spec, (n_tokens, width) = ARMS[arm], tokens(arm)
        settings = (
            "-"
            if spec["space"] == "pixel"
            else (
                f"block {spec['dct_block_size']}, {spec['dct_block_size'] ** 2 - spec['dct_num_dropped']} of "
                f"{spec['dct_block_size'] ** 2} coefficients kept, SNR scale c = {spec['snr_scale']:g}, "
                f"{'entropy-weighted loss' if spec['entropy'] else 'plain MSE'}"
            )
        )
        stats = summary.get(arm)
        timing = f"{_cell(stats['seconds_per_step'])}" if stats else "not run"
        loss = f"{_cell(stats['final_diffusion_loss'])}" if stats else ""
        seeds = stats["num_seeds"] if stats else 0
        arms_table.append(
            f"| {arm} | {spec['space']}, {spec['resolution']} px, patch {spec['patch_size']} | "
            f"{n_tokens} x {width} | {settings} | {timing} | {loss} | {seeds} |"
        )

    def results_table(resolution: int, sampler: str) -> list[str]:
        relied = analysis["relied_metrics"][str(resolution)]
        head = [f"{METRIC_LABELS[m]}{'' if m in relied else ' (not relied on)'}" for m in measured]
        lines = ["| arm | " + " | ".join(head) + " |", "|---|" + "---:|" * len(measured)]
        for arm, stats in summary.items():
            if ARMS[arm]["resolution"] != resolution or sampler not in stats["checkpoints"][-1]:
                continue
            final = stats["checkpoints"][-1][sampler]
            lines.append(f"| {arm} | " + " | ".join(_cell(final[m]) for m in measured) + " |")
        anchor = anchors[str(resolution)]
        lines.append(
            "| data floor (training images vs reference, same count) | "
            + " | ".join(f"{anchor['floor'][m]:.4g}" for m in measured)
            + " |"
        )
        for name, values in anchor["ceiling"].items():
            lines.append(
                f"| reconstruction ceiling, DCT {name} ({', '.join(values['arms'])}): decode(encode("
                "reference)) | " + " | ".join(f"{values[m]:.4g}" for m in measured) + " |"
            )
        lines.append(
            "| uniform noise in [-1, 1] | " + " | ".join(f"{anchor['noise'][m]:.4g}" for m in measured) + " |"
        )
        return lines

    def curve_table(resolution: int) -> list[str]:
        relied = [m for m in analysis["relied_metrics"][str(resolution)] if m in measured]
        lines = []
        for metric in relied:
            lines += [
                f"**{METRIC_LABELS[metric]}** ({resolution} px; mean +- SD over seeds; cumulative training "
                "seconds in brackets):",
                "",
                "| arm | " + " | ".join(f"step {s}" for s in budget["checkpoints"]) + " |",
                "|---|" + "---:|" * len(budget["checkpoints"]),
            ]
            for arm, stats in summary.items():
                if ARMS[arm]["resolution"] != resolution:
                    continue
                cells = [
                    f"{_cell(p['exported'][metric])} [{p['train_seconds']['mean']:.0f} s]"
                    for p in stats["checkpoints"]
                ]
                lines.append(f"| {arm} | " + " | ".join(cells) + " |")
            lines.append("")
        return lines

    gate_lines = []
    for arm, checks in analysis["gate"].items():
        failed = [m for m, c in checks.items() if not c["passes"]]
        text = "passes" if not failed else "FAILS on " + ", ".join(METRIC_LABELS[m] for m in failed)
        details = "; ".join(
            f"{METRIC_LABELS[m]} {c['baseline']:.4g} vs noise {c['noise']:.4g}" for m, c in checks.items()
        )
        gate_lines.append(f"- {arm}: {text} ({details}).")
        capacity = token_capacity(arm, result["budget"]["dit_config"])
        if failed and capacity is not None and summary.get(arm):
            values, hidden, floor = capacity
            gate_lines.append(
                f"  Why: its tokens hold {values} values but the `{result['budget']['dit_config']}` DiT's hidden "
                f"state is {hidden} wide, so it can carry at most {hidden} of the {values} independent noise values "
                f"of a token: the epsilon loss cannot fall much below 1 - {hidden}/{values} = {floor:.2f} (measured "
                f"at the final checkpoint: {_cell(summary[arm]['final_diffusion_loss'])}). A capacity limit of this "
                "miniature, not a property of pixel space: a fair pair at this resolution needs a DiT at least as "
                "wide as the pixel token."
            )
    timing_lines = []
    for name, stat in analysis["seconds_ratio"].items():
        arm, baseline = name.split("/")
        interval = f" [95% t {stat['lo']:.3f}, {stat['hi']:.3f}]" if "lo" in stat else ""
        timing_lines.append(
            f"- {arm} / {baseline}: {stat['mean']:.3f}{interval} (per seed "
            + " / ".join(f"{r:.3f}" for r in stat["ratios"])
            + ")"
        )
    scaling_lines = []
    for metric, row in analysis["scaling"].items():
        diff = row["difference"]
        interval = f", difference {diff['mean']:+.3f} [95% t {diff['lo']:+.3f}, {diff['hi']:+.3f}]" if diff else ""
        scaling_lines.append(
            f"- {METRIC_LABELS[metric]}: (dctdiff - pixel) / pixel per seed at 32 px "
            + " / ".join(f"{g:+.3f}" for g in row["relative_gap_32"])
            + ", at 64 px "
            + " / ".join(f"{g:+.3f}" for g in row["relative_gap_64"])
            + interval
            + " (descriptive)."
        )

    def table(rows, corrected=True):
        return "\n".join(comparison_table(rows, labels=METRIC_LABELS, corrected=corrected)) if rows else "none."

    claims = []
    failed_gate = [arm for arm, checks in analysis["gate"].items() if not all(c["passes"] for c in checks.values())]
    if failed_gate:
        claims.append(
            f"- **The gate failed** for {', '.join(failed_gate)}: the baseline does not beat uniform noise "
            "on every relied-on metric, so differences at that resolution say little about the claims"
            + (
                " (its tokens are wider than the DiT's hidden state: see the gate above)."
                if any(token_capacity(arm, budget["dit_config"]) for arm in failed_gate)
                else "."
            )
        )
    efficiency = "Efficiency (mean over checkpoints)"
    claims += (
        _claim_lines(analysis["quality"], "Quality (final)")
        + _claim_lines(analysis["efficiency"], efficiency)
        + _claim_lines(analysis["quality_descriptive"], "Quality (final)", "metric not relied on")
        + _claim_lines(analysis["efficiency_descriptive"], efficiency, "metric not relied on")
        + _claim_lines(analysis["ancestral"], "Quality (final, ancestral)", "extra sampler")
    )
    missing = ""
    if analysis["missing_runs"]:
        missing = (
            "\n**Incomplete run**: these runs are missing from the JSON, so their arms have fewer seeds (or "
            "none): " + ", ".join(analysis["missing_runs"]) + ".\n"
        )
    reanalysis = result.get("reanalysis")
    reanalysed = ""
    if reanalysis:
        reanalysed = (
            f"\nRe-analysed without new training (`{reanalysis['command']}`, commit "
            f"{reanalysis['commit']}): the summary, statistics, curves and claims are recomputed from the "
            "stored runs.\n"
        )
    machine = result["machine"]
    run_minutes = sum(v or 0 for v in result["unit_seconds"].values()) / 60
    samples64 = anchors["64"]["num_reference"]
    relied32 = ", ".join(METRIC_LABELS[m] for m in analysis["relied_metrics"]["32"]) or "none"
    relied64 = ", ".join(METRIC_LABELS[m] for m in analysis["relied_metrics"]["64"]) or "none"
    quick_note = ""
    if suffix:
        quick_note = (
            "\n**Smoke run (`--quick`)**: a few steps of a tiny model; the numbers test the plumbing only "
            "and say nothing about the claims.\n"
        )
    return f"""# DCTdiff against pixel diffusion: the same DiT in DCT space and in pixel space (a CPU miniature)

Generated by `{result["command"]}` (`benchmarks/compare_dct_pixel.py`); every number below is read from
[`dct_vs_pixel{suffix}.json`](dct_vs_pixel{suffix}.json), which also holds every run and stage. Do not edit by hand.
{quick_note}{reanalysed}{missing}
The paper: Ning et al. 2024, "DCTdiff: Intriguing Properties of Image Generative Modeling in the DCT Space"
(arXiv:2412.15032), reports that diffusion in the blockwise DCT space beats pixel-space diffusion in generative
quality and in training efficiency, and scales easily to higher resolution. Here the same DiT is trained on the same
images in both spaces, with the same budget, seeds and token count.

## What was run

- Model: the `{budget["dit_config"]}` DiT preset (`diffusers-spectrum train-dit --dit_config {budget["dit_config"]}`,
  `training.dit.train_dit`), unconditional, epsilon prediction on DiT's linear DDPM schedule (1000 steps; the DCT
  arms multiply its SNR by c: `--snr_scale`), no EMA, exported as a `DiTPipeline` (`PixelTransform` or
  `DCTTransform` in its `vae` slot).
- Data: 32 px crops of the embedded photos ({budget["crops_per_photo"]} random crops per training photo, written
  once, random flips in training); every 4th photo is held out, and {budget["num_samples"]} random crops of the
  held-out photos are the reference. The held-out photos are other crops of the same 7 source photographs as the
  training photos: this measures the fit to the training distribution, not generalisation to new scenes. 64 px: the
  84 training photos themselves; the reference is the 28 held-out photos and their mirror images ({samples64} images).
- Budget per run: {budget["checkpoints"][-1]} optimizer steps of batch {budget["train_batch_size"]}, AdamW lr
  {budget["learning_rate"]} (`{budget["lr_scheduler"]}`, {budget["lr_warmup_steps"]} warm-up steps, then constant; no
  decay, so the staged runs equal one long run), gradient clipping 1. Seeds {budget["seeds"]} (initialisation, data
  order, noise; the sampling seeds 10000 + i and the metrics' seeds are shared by every arm, so arms are paired by
  seed). Evaluated at steps {budget["checkpoints"]}.
- Sampler: each checkpoint's exported pipeline, loaded as `DiffusionPipeline.from_pretrained` loads it
  (`load_pipeline`), with its own scheduler: DDIM, eta 0, {budget["sampling_steps"]} steps, on the (SNR-scaled)
  training schedule; {budget["num_samples"]} samples at 32 px, {samples64} at 64 px. Extra row (final checkpoint):
  the ancestral DDPM sampler on the same schedule (`DDPMScheduler.from_config(pipe.scheduler.config)`), same steps.
- Machine: {machine["cpu"]}, {machine["cores"]} cores, {machine["torch_threads"]} torch thread per process, torch
  {machine["versions"]["torch"]}, diffusers {machine["versions"]["diffusers"]}. Summed wall seconds of every run
  (training, sampling, measuring; in the JSON per run and stage): {run_minutes:.0f} min;
  preparation (data, feature nets, anchors): {result["prepared_seconds"]:.0f} s.

{chr(10).join(arms_table)}

Token counts are matched: a pixel token is a 4 x 4 (8 x 8 at 64 px) patch of RGB values, a DCT token the DCT
coefficients of the same 4 x 4 (8 x 8) pixels: four Y blocks and one Cb and one Cr block of the 2x-subsampled chroma.
The DCT token has half the values (chroma subsampling) or fewer (dropped coefficients), so the DCT arms are lossy:
their reconstruction ceiling is in the results table. Seconds per step come from the whole training calls (start-up,
the DCT statistics pass and checkpoint saves included) on a shared machine.

## What the miniature cannot test

The paper trains UViT / DiT models of tens to hundreds of millions of parameters for 100k-500k steps of batch 256 on
CIFAR-10, CelebA, ImageNet and FFHQ and reports FID-50k. This run trains a {budget["dit_config"]} DiT for
{budget["checkpoints"][-1]} steps on crops of 7 photographs and measures {budget["num_samples"]} samples with small
metrics: it can say whether DCT-space training is ahead early in training at a tiny scale, not whether it is at
convergence, at scale, or by FID. "Scaling to higher resolution" is tested only as a 64 px pair at the same 64 tokens
(8 x 8 pixels each, 4 x 4 DCT blocks with 8 of 16 coefficients kept, the authors' 4 x 4-block setting); the paper's
claim is about 256-512 px without a VAE, which this machine cannot train. Class conditioning, guidance, other
samplers (the paper uses DPM-Solver) and other objectives are not varied.

## Which metrics the study relies on

At 32 images per set, held-out images against other held-out images box-blurred 5 x 5 must be at least twice as far
apart as two halves of unblurred images (`evaluation.study_metrics`). Metrics that fail are reported, not relied on,
and stay out of the tested families. Relied on at 32 px: {relied32}; at 64 px: {relied64}.

32 px (held-out crops):

{chr(10).join(blur_check_table(anchors["32"]["blur_check"]))}

64 px (all 112 photos: the held-out ones alone are fewer than the 64 the check needs):

{chr(10).join(blur_check_table(anchors["64"]["blur_check"]))}

Gate: the pixel baseline must beat uniform noise on every relied-on metric at its final checkpoint, or the study
cannot tell arms apart:

{chr(10).join(gate_lines) or "not evaluated (no pixel run)."}

## Quality at the final checkpoint (step {first}, exported sampler)

32 px:

{chr(10).join(results_table(32, "exported"))}

64 px:

{chr(10).join(results_table(64, "exported"))}

![samples of every arm](dct_vs_pixel_samples{suffix}.png)

Paired comparisons, one Holm family over every comparison x relied-on metric (**separated** only when the
Holm-adjusted p-value is at most 0.05):

{table(analysis["quality"])}

![paired differences per seed](dct_vs_pixel_paired{suffix}.png)

Metrics not relied on (they fail the blur check), paired the same way, uncorrected:

{table(analysis["quality_descriptive"], corrected=False)}

Extra sampler (ancestral DDPM, final checkpoint), every metric, uncorrected:

{chr(10).join(results_table(32, "ancestral"))}

{table(analysis["ancestral"], corrected=False)}

## Training efficiency

Each relied-on metric at every checkpoint (exported sampler):

{chr(10).join(curve_table(32) + curve_table(64))}
![metric against steps and against training seconds](dct_vs_pixel_curves{suffix}.png)

The efficiency statistic of a run is the mean of a metric over its checkpoints ({budget["checkpoints"]}, evenly
spaced in log-steps, so the mean is the area under the curve against log-steps divided by its width): lower means
better samples earlier. One Holm family over every comparison x relied-on metric:

{table(analysis["efficiency"])}

Metrics not relied on, the same statistic, uncorrected:

{table(analysis["efficiency_descriptive"], corrected=False)}

Training seconds, arm / baseline over the whole run, per seed (wall time of the training calls on this machine):

{chr(10).join(timing_lines) or "none."}

## Scaling to higher resolution

{chr(10).join(scaling_lines) or "not run."}

A negative relative gap means DCTdiff is ahead of pixels. The paper's claim predicts a larger advantage (a more
negative gap) at the higher resolution; the comparison across resolutions is descriptive (different data and
references at each resolution), the 64 px pair itself is in the quality family above.

## Every claim, for and against

{chr(10).join(claims) or "none (no complete pairs)."}

## Reproduce

```bash
python benchmarks/compare_dct_pixel.py                        # the full study, one process
python benchmarks/compare_dct_pixel.py --shard 0/2 &          # or two halves at once, one per core
python benchmarks/compare_dct_pixel.py --shard 1/2            # (the last to finish writes the page)
python benchmarks/compare_dct_pixel.py --quick                # a smoke run (about 2 minutes)
python benchmarks/compare_dct_pixel.py --reanalyse docs/dct_vs_pixel.json   # analysis and page, no training
```
Runs and stages already stored (same budget) are skipped, so an interrupted study continues where it stopped; runs
the JSON holds complete are not trained again even from a fresh work folder (another machine or session), while an
incomplete run without its work folder retrains from step 0 with the same seeds.
"""


def write_outputs(result: dict, output_dir: Path, work_dir: Path | None, suffix: str) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_curves(result, output_dir / f"dct_vs_pixel_curves{suffix}.png")
    write_paired(result, output_dir / f"dct_vs_pixel_paired{suffix}.png")
    if work_dir is not None:
        write_samples(result, work_dir, output_dir / f"dct_vs_pixel_samples{suffix}.png")
    (output_dir / f"DCT_VS_PIXEL{suffix}.md").write_text(page_text(result, suffix), encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# Driver


def machine() -> dict:
    import diffusers

    import diffusers_spectrum

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "diffusers_spectrum": diffusers_spectrum.__version__,
        },
    }


def _git_commit() -> str:
    try:
        command = ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise SystemExit(f"--shard must look like i/n (e.g. 0/2), got {text!r}.") from None
    if not 0 <= index < count:
        raise SystemExit(f"--shard {text}: need 0 <= i < n.")
    return index, count


def finish(json_path: Path, work_dir: Path, output_dir: Path, suffix: str, budget: dict) -> dict | None:
    """Under the JSON lock: when every run is complete, the summary, analysis, figures and page; else None."""
    from diffusers_spectrum.utils.records import write_json

    with file_lock(work_dir / ".json.lock"):
        result = load_result(json_path, budget)
        done = complete_runs(result) if result is not None else {}
        pending = [unit_key(a, s) for a, s in all_units(budget) if unit_key(a, s) not in done]
        if result is None or pending:
            log(
                f"{len(pending)} run(s) still to do ({', '.join(pending[:4])}{' ...' if len(pending) > 4 else ''}): "
                "the page is written when the last shard finishes (or run --reanalyse on the JSON)."
            )
            return None
        result["summary"] = summarize(result)
        result["analysis"] = analyse(result)
        write_json(json_path, result, sort_keys=False)
    write_outputs(result, output_dir, work_dir, suffix)
    log(f"wrote {json_path} and {output_dir / f'DCT_VS_PIXEL{suffix}.md'}")
    return result


def run_study(quick: bool, output_dir: Path, work_dir: Path, shard: tuple[int, int]) -> dict | None:
    from diffusers_spectrum.utils.run_folders import claim_output_dir

    mode = "quick" if quick else "full"
    budget = json.loads(json.dumps(BUDGETS[mode]))
    suffix = "" if mode == "full" else "_quick"
    claim_output_dir(work_dir, COMMAND, ("prepared.json", "units"), flag="--work_dir")
    json_path = output_dir / f"dct_vs_pixel{suffix}.json"
    output_dir.mkdir(parents=True, exist_ok=True)
    data, suites, prepared = prepare(work_dir, budget)
    command = "python benchmarks/compare_dct_pixel.py" + (" --quick" if quick else "")
    skeleton = {
        "format": FORMAT,
        "command": command,
        "mode": mode,
        "budget": budget,
        "seeds": budget["seeds"],
        "arms": {arm: ARMS[arm] for arm in budget["arms"]},
        "comparisons": [list(c) for c in COMPARISONS],
        "train_argv_example": train_argv(
            "dctdiff" if "dctdiff" in budget["arms"] else budget["arms"][0],
            budget["seeds"][0],
            budget["checkpoints"][-1],
            budget,
            Path("<train folder>"),
            Path("<run folder>"),
        ),
        "anchors": prepared["anchors"],
        "feature_net": prepared["feature_net"],
        "prepared_seconds": prepared["seconds"],
        "machine": machine(),
        "commit": _git_commit(),
        "runs": {},
        "unit_seconds": {},
    }
    with file_lock(work_dir / ".json.lock"):
        from diffusers_spectrum.utils.records import write_json

        result = load_result(json_path, budget)
        if result is None:
            write_json(json_path, skeleton, sort_keys=False)
    for arm, seed in shard_units(budget, shard):
        run_unit(arm, seed, budget, work_dir, data, suites, json_path, skeleton)
    return finish(json_path, work_dir, output_dir, suffix, budget)


def reanalyse(json_path: Path, output_dir: Path, work_dir: Path | None) -> dict:
    """Summary, analysis, figures and page of a stored JSON, without training (sample grids only if `work_dir`
    still holds them; the stored figure stays otherwise)."""
    from diffusers_spectrum.utils.records import write_json

    result = json.loads(Path(json_path).read_text())
    result["summary"] = summarize(result)
    result["analysis"] = analyse(result)
    result["reanalysis"] = {"command": " ".join(["python", *sys.argv]), "commit": _git_commit()}
    suffix = "" if result["mode"] == "full" else "_quick"
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / f"dct_vs_pixel{suffix}.json", result, sort_keys=False)
    write_outputs(result, output_dir, work_dir if work_dir and (work_dir / "grids").is_dir() else None, suffix)
    return result


def default_work_dir(quick: bool) -> Path:
    return Path(tempfile.gettempdir()) / "diffusers-spectrum-dct-vs-pixel" / ("quick" if quick else "full")


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A smoke run of about two minutes (tests).")
    parser.add_argument(
        "--shard",
        type=str,
        default=None,
        help="i/n: run every n-th run from the i-th (start n processes with the same --work_dir).",
    )
    parser.add_argument(
        "--output_dir",
        type=Path,
        default=None,
        help="Where the JSON, figures and page go (default: docs/; --quick: the work folder).",
    )
    parser.add_argument(
        "--work_dir",
        type=Path,
        default=None,
        help="Training data, runs, stored stages, feature nets (resume here; shards share it). "
        "Default: <tmp>/diffusers-spectrum-dct-vs-pixel/<full|quick>.",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process (1 per core).")
    parser.add_argument("--reanalyse", type=Path, default=None, help="A stored JSON: analysis and page, no training.")
    args = parser.parse_args(argv)
    shard = parse_shard(args.shard)
    work_dir = args.work_dir or default_work_dir(args.quick)
    output_dir = args.output_dir or (work_dir / "output" if args.quick else ROOT / "docs")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        if args.reanalyse:
            quick = json.loads(Path(args.reanalyse).read_text()).get("mode") == "quick"
            return reanalyse(
                args.reanalyse, args.output_dir or ROOT / "docs", args.work_dir or default_work_dir(quick)
            )
        return run_study(args.quick, output_dir, work_dir, shard)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
