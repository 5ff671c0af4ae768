"""Spectrum Matching at a scale where its claims can show: 64 px images, f4 autoencoders (16 x 16 latents), every
autoencoder trained with several seeds, the same DiT on each latent space with more seeds, paired statistics
(issues 13, 18 and 22).

    python benchmarks/reproduce_spectrum_matching.py              # the full study (docs/REPRODUCTION.md)
    python benchmarks/reproduce_spectrum_matching.py --quick      # a ~2-minute smoke run (tests/test_reproduction.py)
    python benchmarks/reproduce_spectrum_matching.py --reanalyse docs/reproduction.json   # page from stored results
    python benchmarks/reproduce_spectrum_matching.py --encoder facebook/dinov2-base      # a real encoder (network)

Two (or more) processes can share the work: start the same command in each (same `--work_dir`); each one claims
the next unit whose inputs are ready with a lock file (`fcntl.flock`, released by the OS if a process dies), so no
unit runs twice, and every finished unit is stored as its own JSON under `--work_dir/units/` (written to a
temporary file, then renamed). The process that finds every unit stored writes the JSON and the page; a killed run
continues where it stopped. Each process runs torch with one thread (`--threads`).

Stages (each a set of units; a unit starts when the units it reads are stored):

1. Data (`build_data`): 64 px crops of the seven photographs the embedded photos were cut from (scikit-image /
   scikit-learn sample images; the 112 embedded 64 px images are themselves overlapping crops of them, so a split
   by embedded image would leak). Each photograph is cut into disjoint 128 px tiles; per photograph, a seeded
   permutation sends about 1/8 of its tiles to the **test** split and 1/8 to the **validation** split, the rest to
   training, so no source pixel is in two splits. From each tile: crops of 64, 96 and 128 px at a 16 px stride,
   resized to 64 px (Lanczos). The test crops are the analysis set and the generation reference; the ESM weight
   and the KL sweep are judged on the validation crops only.
2. Feature nets for KID / FD (`evaluation.feature_net`, trained on the training crops; a random-init net is the
   sanity row), the blur check of every generation metric on the test crops (the study relies only on the metrics
   that pass) and the data floor (training crops against the reference, same count).
3. Autoencoders, all the `tiny` preset (f4, 4 latent channels), the same steps, batch and optimiser; only the loss
   differs; every one with the same texture term (`--perceptual_loss fourier`, the offline stand-in for LPIPS) and
   no GAN. Arms: SD-VAE (KL 1e-6 in the authors' reduction), ESM at the validation-chosen weight and at weight 1.0,
   DSM, ESM+DSM (chosen weight), EQ-VAE and VA-VAE (with the stand-in encoder), each with every autoencoder seed.
   The ESM scan (weights `esm_scan`, seed 0) and the KL sweep (SD-VAE at `kl_sweep`, seed 0) are analysed on the
   validation crops. Each autoencoder is analysed on the test crops (`evaluation.analyze.analyze_vae`: verdicts DC
   kept and DC free with bootstrap intervals over images, mean-curve KL, slopes, DSM low-pass PSNR and its drop
   from level 0, posterior std, PSNR / SSIM); its reconstruction ceiling (decode(encode(reference)) against the
   reference, every generation metric) and its latent cache are units of their own.
4. The same DiT (`training.dit`, flow matching) on each latent space, DiT seed s on autoencoder seed
   s mod len(ae_seeds) of every arm (arms paired on both); samples drawn as the exported pipeline draws them (its
   scheduler, shared sampling seed) against the reference by every generation metric; the held-out flow-matching
   loss (test crops, fixed times, noise common to every arm: diffusability without the decoder); the loss curve.
5. docs/reproduction.json (every number, the settings, seeds, versions, per-unit wall and CPU seconds), the analysis
   (`analyse`: arm verdicts with intervals over autoencoder seeds, paired comparisons against SD-VAE with Holm's
   correction, `evaluation.statistics.compare_arms`, and every claim for and against), the figures and the page.

`--reanalyse JSON` recomputes the analysis, figures and page of a stored JSON without training anything.

The stand-in encoder (no pretrained weights can be downloaded here): a DINOv2-architecture transformers model whose
patch embedding is the fixed orthonormal 4 x 4 DCT basis per colour channel (no learned weights, one zero-initialised
block): a local-frequency analyser with natural-image spatial statistics and no semantics, so the VA-VAE arm tests
the plumbing and the spectral part of the claim only. `--encoder <Hub id or folder>` replaces it.
"""

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


REPO = Path(__file__).resolve().parents[1]
FORMAT = 3  # results format: 3 = the 64 px study with autoencoder seeds (issue 22)
BASELINE = "sd-vae"
ARMS = ("sd-vae", "esm", "esm-w1", "dsm", "esm+dsm", "eq-vae", "va-vae")
ARM_LABELS = {
    "sd-vae": "SD-VAE",
    "esm": "ESM (validation-chosen weight)",
    "esm-w1": "ESM (weight 1.0)",
    "dsm": "DSM",
    "esm+dsm": "ESM+DSM",
    "eq-vae": "EQ-VAE",
    "va-vae": "VA-VAE (stand-in encoder)",
}
DSM_LEVELS = (0, 8, 10, 12)
SD_VAE_KL = 1e-6  # the authors' SD-VAE KL weight (configs/train_vae_celeba256.yaml: "set 0.000001 for SDVAE")
# The authors' code read for the KL convention (page section "The KL convention"): branch SDVAE_and_ESM.
AUTHORS_REPO = "forever208/SpectrumMatching"
AUTHORS_COMMIT = "115c70b"  # SDVAE_and_ESM head; the DSM branch (3d8680c, vae_trainer.py) reduces the same way

SETTINGS = {
    "full": dict(
        resolution=64,
        tile=128,
        crop_sides=(64, 96, 128),
        crop_stride=16,
        vae_config="tiny",
        vae_steps=600,
        batch=8,
        lr=1e-3,
        warmup=20,
        texture_weight=0.5,
        ae_seeds=(0, 1, 2),
        dit_seeds=(0, 1, 2, 3, 4),
        esm_scan=(0.01, 0.1, 1.0),
        kl_sweep=(1e-4, 1e-3),
        dit_config="mini",
        dit_patch=2,
        dit_steps=1200,
        dit_batch=32,
        dit_lr=1e-3,
        dit_warmup=50,
        dit_ema=0.995,
        num_samples=None,  # None: as many as reference (test) crops
        sample_steps=20,
        analyze_samples=None,  # None: every test crop
        fm_times=(0.1, 0.3, 0.5, 0.7, 0.9),
        latent_stats_samples=256,
        feature_net_steps=400,
        blur_splits=8,
    ),
    "quick": dict(
        resolution=32,
        tile=128,
        crop_sides=(64, 128),
        crop_stride=64,
        vae_config="tiny",
        vae_steps=4,
        batch=4,
        lr=1e-3,
        warmup=2,
        texture_weight=0.5,
        ae_seeds=(0, 1),
        dit_seeds=(0, 1),
        esm_scan=(0.1, 1.0),
        kl_sweep=(1e-3,),
        dit_config="tiny",
        dit_patch=2,
        dit_steps=4,
        dit_batch=8,
        dit_lr=1e-3,
        dit_warmup=0,
        dit_ema=0.9,
        num_samples=32,
        sample_steps=2,
        analyze_samples=32,
        fm_times=(0.3, 0.7),
        latent_stats_samples=16,
        feature_net_steps=5,
        blur_splits=2,
    ),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} pid {os.getpid()}] {message}", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Units: one JSON per finished piece of work (resume), claimed with a lock file (several processes)


class Units:
    """The stored units of a study folder. `run(name, fn)` returns the stored result of unit ``name`` or computes it
    under an exclusive lock (so two processes never run one unit) and stores it atomically with its wall and CPU
    seconds; it returns None when another live process holds the unit's lock."""

    def __init__(self, folder: Path):
        self.folder = Path(folder) / "units"
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.folder / (name.replace("/", "_").replace("+", "_") + ".json")

    def get(self, name: str) -> dict | None:
        path = self.path(name)
        return json.loads(path.read_text()) if path.is_file() else None

    def done(self, name: str) -> bool:
        return self.path(name).is_file()

    def stored(self) -> dict[str, dict]:
        """Every stored unit, by file stem."""
        return {p.stem: json.loads(p.read_text()) for p in sorted(self.folder.glob("*.json"))}

    def run(self, name: str, fn: Callable[[], dict]) -> dict | None:
        stored = self.get(name)
        if stored is not None:
            return stored
        lock = _try_lock(self.path(name).with_suffix(".lock"))
        if lock is None:
            return None  # another process runs it
        try:
            stored = self.get(name)  # finished by another process between our check and our lock
            if stored is not None:
                return stored
            wall, cpu = time.time(), time.process_time()
            log(f"{name}: running")
            result = {
                "result": fn(),
                "seconds": round(time.time() - wall, 1),
                "cpu_seconds": round(time.process_time() - cpu, 1),
            }
            tmp = self.path(name).with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(result, indent=1, default=float))
            os.replace(tmp, self.path(name))
            log(f"{name}: finished in {result['seconds']} s ({result['cpu_seconds']} s CPU)")
            return result
        finally:
            os.close(lock)


def _try_lock(path: Path) -> int | None:
    """An open file descriptor holding an exclusive `flock` on ``path``, or None when another process holds it. The
    lock dies with its process. Without `fcntl` (not POSIX) every unit is taken: run one process only."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        import fcntl
    except ImportError:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _wait_lock(path: Path) -> int:
    """`_try_lock`, waiting for the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        import fcntl
    except ImportError:
        return fd
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@dataclass
class Task:
    name: str
    deps: tuple[str, ...]
    fn: Callable[[], dict]


def run_tasks(units: Units, plan: Callable[[], tuple[list[Task], bool]], poll_seconds: float = 5.0) -> None:
    """Run the plan's tasks until every one is stored. ``plan()`` returns ``(tasks, complete)``: the tasks known so
    far, in the order to prefer, and whether the list is final (it grows once the ESM weight is chosen). A process
    takes the first task whose dependencies are stored and which no other process holds; with none, it waits."""
    last_wait_log = 0.0
    while True:
        tasks, complete = plan()
        todo = [t for t in tasks if not units.done(t.name)]
        if complete and not todo:
            return
        for task in todo:
            if all(units.done(d) for d in task.deps) and units.run(task.name, task.fn) is not None:
                break  # ran (or found stored): plan again
        else:
            if time.time() - last_wait_log > 60:
                running = [t.name for t in todo if all(units.done(d) for d in t.deps)]
                log(f"waiting for other processes ({len(todo)} units left; running elsewhere: {running[:4]})")
                last_wait_log = time.time()
            time.sleep(poll_seconds)


# ----------------------------------------------------------------------------------------------------------------
# Data and the stand-in encoder


def _build_embedded_dataset_module():
    """`scripts/build_embedded_dataset.py`: its `SOURCES` and `load_source` (the embedded photos' photographs)."""
    spec = importlib.util.spec_from_file_location(
        "build_embedded_dataset", REPO / "scripts" / "build_embedded_dataset.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tile_splits(num_tiles: int, seed: int) -> list[str]:
    """The split of each tile of one photograph: a seeded permutation sends ``max(1, round(n / 8))`` tiles to
    ``"test"``, as many to ``"validation"`` and the rest to ``"train"``."""
    order = np.random.default_rng(seed).permutation(num_tiles)
    held = max(1, round(num_tiles / 8))
    splits = ["train"] * num_tiles
    for rank, index in enumerate(order[: 2 * held]):
        splits[index] = "test" if rank < held else "validation"
    return splits


def build_data(folder: Path, s: dict) -> dict:
    """Crops of the source photographs, split by disjoint tiles (module docstring), as PNG folders ``train``,
    ``validation`` and ``test``; returns the counts and the split rule."""
    from PIL import Image

    done = folder / "data.json"
    if done.is_file():
        return json.loads(done.read_text())
    sources = _build_embedded_dataset_module()
    tile, size = s["tile"], s["resolution"]
    counts, tiles = {"train": 0, "validation": 0, "test": 0}, {"train": 0, "validation": 0, "test": 0}
    for split in counts:
        (folder / split).mkdir(parents=True, exist_ok=True)
    for source_index, name in enumerate(sources.SOURCES):
        image = sources.load_source(name)  # (H, W, 3) uint8
        corners = [
            (top, left)
            for top in range(0, image.shape[0] - tile + 1, tile)
            for left in range(0, image.shape[1] - tile + 1, tile)
        ]
        for (top, left), split in zip(corners, tile_splits(len(corners), seed=source_index)):
            tiles[split] += 1
            patch = image[top : top + tile, left : left + tile]
            for side in s["crop_sides"]:
                for y in range(0, tile - side + 1, s["crop_stride"]):
                    for x in range(0, tile - side + 1, s["crop_stride"]):
                        crop = Image.fromarray(patch[y : y + side, x : x + side])
                        if side != size:
                            crop = crop.resize((size, size), Image.Resampling.LANCZOS)
                        crop.save(folder / split / f"{name}_{top:03d}_{left:03d}_s{side}_{y:03d}_{x:03d}.png")
                        counts[split] += 1
    info = {
        "sources": list(sources.SOURCES),
        "resolution": size,
        **counts,
        "tiles": tiles,
        "split": f"each source photograph cut into disjoint {tile} px tiles; per photograph a seeded permutation "
        f"(seed = its index) sends max(1, round(n / 8)) tiles to test, as many to validation, the rest to training; "
        f"crops of {', '.join(str(c) for c in s['crop_sides'])} px at a {s['crop_stride']} px stride inside each "
        f"tile, resized to {size} px (Lanczos)",
    }
    done.write_text(json.dumps(info, indent=1))
    return info


def load_folder(folder: Path, limit: int | None = None) -> torch.Tensor:
    """The PNGs of ``folder`` in name order, ``(N, 3, H, W)`` in [-1, 1]."""
    from diffusers_spectrum.evaluation.study_metrics import load_images

    return load_images(sorted(Path(folder).glob("*.png"))[:limit])


def subset(images: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` of ``images`` drawn without replacement (seeded)."""
    if count > len(images):
        raise ValueError(f"subset: {count} images asked, {len(images)} available.")
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]].contiguous()


def build_standin_encoder(folder: Path) -> str:
    """A DINOv2-architecture model whose patch embedding is the orthonormal 4 x 4 DCT basis per colour channel."""
    import transformers

    if (folder / "config.json").is_file():
        return str(folder)
    patch, channels = 4, 3
    config = transformers.Dinov2Config(
        hidden_size=patch * patch * channels,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=48,
        image_size=32,
        patch_size=patch,
        layerscale_value=0.0,
    )
    model = transformers.Dinov2Model(config)
    n = np.arange(patch)
    basis = np.sqrt(2.0 / patch) * np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * patch))  # (u, x)
    basis[0] /= np.sqrt(2.0)
    with torch.no_grad():
        weight = torch.zeros(patch * patch * channels, channels, patch, patch)
        for c in range(channels):
            for u in range(patch):
                for v in range(patch):
                    weight[c * patch * patch + u * patch + v, c] = torch.from_numpy(np.outer(basis[u], basis[v]))
        model.embeddings.patch_embeddings.projection.weight.copy_(weight)
        model.embeddings.patch_embeddings.projection.bias.zero_()
        model.embeddings.position_embeddings.zero_()
        model.embeddings.cls_token.zero_()
        for layer in model.encoder.layer:  # layerscale 0: the block is the identity
            layer.layer_scale1.lambda1.zero_()
            layer.layer_scale2.lambda1.zero_()
    partial = folder.with_name(folder.name + f".partial{os.getpid()}")
    model.save_pretrained(partial)
    try:
        os.rename(partial, folder)
    except OSError:  # another process of the study saved the same model first
        import shutil

        shutil.rmtree(partial)
    return str(folder)


# ----------------------------------------------------------------------------------------------------------------
# Autoencoders


def vae_key(arm: str, esm_weight: float | None) -> str:
    """The training configuration (and folder name) of an arm's autoencoders."""
    if arm == "esm":
        return f"esm-w{esm_weight:g}"
    if arm == "esm-w1":
        return "esm-w1"
    if arm == "esm+dsm":
        return f"esm+dsm-w{esm_weight:g}"
    return arm


def vae_flags(key: str, encoder: str | None) -> list[str]:
    """The loss composition of a training configuration (`vae_key`, ``sd-vae-kl<w>`` for the KL sweep); everything
    else is shared (`train_autoencoder`)."""
    if key == "sd-vae":
        return ["--recipe", "sd-vae"]
    if key.startswith("sd-vae-kl"):
        return ["--recipe", "sd-vae", "--kl_weight", key.removeprefix("sd-vae-kl")]
    if key.startswith("esm+dsm-w"):
        return ["--recipe", "esm-ae", "--esm_weight", key.removeprefix("esm+dsm-w"), "--dsm_levels", "0,8,10,12"]
    if key.startswith("esm-w"):
        return ["--recipe", "esm-ae", "--esm_weight", key.removeprefix("esm-w")]
    if key == "dsm":
        return ["--recipe", "dsm-ae"]
    if key == "eq-vae":
        return ["--recipe", "eq-vae"]
    if key == "va-vae":
        return ["--recipe", "va-vae", "--vf_encoder", encoder]
    raise ValueError(f"unknown autoencoder configuration {key!r}")


def train_autoencoder(flags: list[str], out: Path, data: Path, s: dict, seed: int) -> str:
    """Train (or resume) one autoencoder with the shared optimisation: same preset, batch, lr, AdamW (0.9, 0.999,
    wd 0.005), the Fourier texture term at the same weight, no GAN; the recipes' own optimiser settings are
    overridden so only the loss composition differs."""
    from diffusers_spectrum.training import vae

    steps = s["vae_steps"]
    argv = [
        *flags,
        "--perceptual_loss",
        "fourier",
        "--perceptual_weight",
        str(s["texture_weight"]),
        "--disc_weight",
        "0",
        "--vae_config",
        s["vae_config"],
        "--resolution",
        str(s["resolution"]),
        "--train_data_dir",
        str(data),
        "--output_dir",
        str(out),
        "--train_batch_size",
        str(s["batch"]),
        "--max_train_steps",
        str(steps),
        "--learning_rate",
        str(s["lr"]),
        "--lr_warmup_steps",
        str(s["warmup"]),
        "--lr_scheduler",
        "constant_with_warmup",
        "--adam_beta1",
        "0.9",
        "--adam_beta2",
        "0.999",
        "--adam_weight_decay",
        "0.005",
        "--checkpointing_steps",
        str(max(steps // 2, 1)),
        "--checkpoints_total_limit",
        "1",
        "--validation_steps",
        str(10**9),
        "--num_validation_images",
        "2",
        "--latent_stats_samples",
        str(s["latent_stats_samples"]),
        "--report_to",
        "none",
        "--seed",
        str(seed),
        "--resume_from_checkpoint",
        "latest",
    ]
    vae.train_vae(vae.parse_args(argv))
    return str(out)


@torch.no_grad()
def posterior_statistics(vae_dir: str, images: torch.Tensor, batch_size: int = 128) -> dict:
    """Posterior std (mean over elements) against the spread of the posterior means; PSNR / SSIM of the mean."""
    from diffusers_spectrum import load_autoencoder, psnr, ssim

    model = load_autoencoder(vae_dir, torch_dtype=torch.float32).eval()
    means, stds, scores = [], [], {"psnr": [], "ssim": []}
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        posterior = model.encode(batch).latent_dist
        reconstruction = model.decode(posterior.mean).sample.clamp(-1, 1)
        means.append(posterior.mean)
        stds.append(posterior.std)
        scores["psnr"].append(psnr(reconstruction, batch))
        scores["ssim"].append(ssim(reconstruction, batch))
    mean, std = torch.cat(means), torch.cat(stds)
    return {
        "posterior_std": float(std.mean()),
        "latent_mean_std": float(mean.std()),
        "posterior_std_ratio": float(std.mean() / mean.std()),
        "psnr": float(torch.cat(scores["psnr"]).mean()),
        "ssim": float(torch.cat(scores["ssim"]).mean()),
    }


ANALYSIS_KEYS = (
    "latent_slope",
    "target_slope",
    "image_slope",
    "spectral_kl_delta1",
    "mean_spectrum_kl_delta1",
    "verdicts",
    "spectra",
    "dsm_lowpass_psnr",
    "dsm_lowpass_drop_db",
    "num_samples",
)


def analyze_autoencoder(vae_dir: str, folder: Path, images: torch.Tensor, s: dict, lowpass: bool = True) -> dict:
    """`analyze_vae` on posterior samples (the authors' view: the verdicts, DC kept and DC free) and, with
    ``lowpass``, on posterior means (the DSM low-pass view), plus `posterior_statistics`."""
    from diffusers_spectrum import analyze_vae

    count = s["analyze_samples"] or len(images)
    result = {}
    for latents in ("sample", "mean") if lowpass else ("sample",):
        report = analyze_vae(
            vae_dir,
            str(folder),
            num_samples=count,
            resolution=s["resolution"],
            batch_size=64,
            dsm_levels=DSM_LEVELS if latents == "mean" else (),
            latents=latents,
            progress=False,
        )
        result[latents] = {k: report[k] for k in ANALYSIS_KEYS if k in report}
    result.update(posterior_statistics(vae_dir, images[:count]))
    return result


@torch.no_grad()
def reconstructions(vae_dir: str, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """``decode(encode(images))`` with the posterior mean, clamped to [-1, 1] (the reconstruction ceiling's set)."""
    from diffusers_spectrum import load_autoencoder

    model = load_autoencoder(vae_dir, torch_dtype=torch.float32).eval()
    parts = [
        model.decode(model.encode(images[i : i + batch_size]).latent_dist.mean).sample.clamp(-1, 1)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts)


def choose_esm_weight(scan: dict, reference: dict) -> tuple[float, str]:
    """The ESM weight of the comparison, from the **validation** analyses ``scan`` ``{weight: unit}`` (seed 0) and
    SD-VAE's (seed 0, ``reference``): the smallest weight whose verdict (posterior samples, DC kept) is "matched" at
    a PSNR cost <= 1 dB against SD-VAE; if none is, the weight with the smallest w1 (distance of the latent curve
    to the delta = 1 target) at that cost; if every weight costs more, the one with the smallest PSNR cost."""
    weights = sorted(scan)
    cost = {w: reference["psnr"] - scan[w]["psnr"] for w in weights}
    affordable = [w for w in weights if cost[w] <= 1.0]
    view = {w: scan[w]["sample"]["verdicts"]["authors"] for w in weights}
    matched = [w for w in affordable if view[w]["verdict"] == "matched"]
    if matched:
        return matched[0], "the smallest weight whose validation verdict is matched at <= 1 dB PSNR cost vs SD-VAE"
    if affordable:
        best = min(affordable, key=lambda w: view[w]["w1"]["estimate"])
        return best, "no weight matched on validation; the smallest validation w1 at <= 1 dB PSNR cost vs SD-VAE"
    best = min(weights, key=lambda w: cost[w])
    return best, "every weight cost > 1 dB validation PSNR vs SD-VAE; the cheapest"


# ----------------------------------------------------------------------------------------------------------------
# Diffusion


def cache_latents_for(vae_dir: str, data: Path, out: Path, s: dict) -> str:
    """Posterior mean and std of every training crop (the DiT samples fresh latents each step). Re-running
    resumes."""
    from diffusers_spectrum.training import cache

    argv = [
        "--pretrained_vae",
        vae_dir,
        "--train_data_dir",
        str(data),
        "--resolution",
        str(s["resolution"]),
        "--output_dir",
        str(out),
        "--batch_size",
        "64",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--unconditional",
    ]
    cache.cache_latents(cache.parse_args(argv))
    return str(out)


def train_diffusion(cache_dir: str, out: Path, seed: int, s: dict) -> dict:
    """The same DiT on one latent space; returns the exported pipeline folder and the loss curve."""
    from diffusers_spectrum.training import dit

    steps = s["dit_steps"]
    argv = [
        "--latent_dataset",
        cache_dir,
        "--output_dir",
        str(out),
        "--dit_config",
        s["dit_config"],
        "--patch_size",
        str(s["dit_patch"]),
        "--unconditional",
        "--max_train_steps",
        str(steps),
        "--train_batch_size",
        str(s["dit_batch"]),
        "--learning_rate",
        str(s["dit_lr"]),
        "--lr_warmup_steps",
        str(s["dit_warmup"]),
        "--use_ema",
        "--ema_decay",
        str(s["dit_ema"]),
        "--checkpointing_steps",
        str(max(steps // 2, 1)),
        "--checkpoints_total_limit",
        "1",
        "--resume_from_checkpoint",
        "latest",
        "--validation_steps",
        str(10**9),
        "--seed",
        str(seed),
        "--report_to",
        "tensorboard",
        "--label_dropout",
        "0",
        "--repa_targets",
        "none",
    ]
    dit.train_dit(dit.parse_args(argv))
    return {"pipeline": str(out / "pipeline"), "loss_curve": loss_curve(out / "logs")}


def loss_curve(log_dir: Path) -> list[list[float]]:
    """(step, loss) pairs from the run's tensorboard events (a resumed run: the last events file with losses)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curve = {}
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if "loss" in accumulator.Tags().get("scalars", []):
            curve.update({e.step: e.value for e in accumulator.Scalars("loss")})
    return [[step, curve[step]] for step in sorted(curve)]


@torch.no_grad()
def heldout_flow_matching_loss(pipeline_dir: str, images: torch.Tensor, times, seed: int = 0, batch_size: int = 128):
    """The flow-matching loss of a trained DiT on held-out images at fixed times, with noise common to every arm:
    each image is encoded by the pipeline's VAE (a posterior sample, noise seeded), standardised as the DiT was
    trained (`latents_from_vae`), noised ``x_t = (1 - t) x0 + t eps`` with seeded ``eps``, and the velocity
    prediction compared with ``eps - x0`` (mean square, per image). Diffusability without the decoder: on
    standardised latents, so comparable across latent spaces of one shape.

    Returns ``{"mean": float, "per_t": {t: float}}``."""
    from diffusers_spectrum import latents_from_vae, load_pipeline

    pipe = load_pipeline(pipeline_dir, device="cpu")
    transformer, vae = pipe.transformer.eval(), pipe.vae.eval()
    config = dict(vae.config)
    generator = torch.Generator().manual_seed(seed)
    x0 = []
    for start in range(0, len(images), batch_size):
        posterior = vae.encode(images[start : start + batch_size]).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator)
        x0.append(latents_from_vae(posterior.mean + posterior.std * noise, config))
    x0 = torch.cat(x0).float()
    per_t = {}
    for index, t in enumerate(times):
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 1 + index))
        losses = []
        for start in range(0, len(x0), batch_size):
            clean, noise = x0[start : start + batch_size], eps[start : start + batch_size]
            x_t = (1 - t) * clean + t * noise
            timestep = torch.full((len(clean),), 1000.0 * t)
            labels = torch.zeros(len(clean), dtype=torch.long)
            prediction = transformer(x_t, timestep=timestep, class_labels=labels).sample.float()
            losses.append((prediction - (noise - clean)).square().flatten(1).mean(1))
        per_t[f"{t:g}"] = float(torch.cat(losses).mean())
    return {"mean": float(np.mean(list(per_t.values()))), "per_t": per_t}


@torch.no_grad()
def draw_samples(pipeline_dir: str, count: int, s: dict) -> torch.Tensor:
    """``count`` samples drawn as the exported pipeline draws them (its scheduler, the shared seed 10000 + i)."""
    from diffusers_spectrum import load_pipeline, pipeline_samples

    pipe = load_pipeline(pipeline_dir, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    batches = pipeline_samples(
        pipe, count, batch_size=64, num_inference_steps=s["sample_steps"], seed=10_000, progress=False
    )
    return torch.cat(list(batches)).clamp(-1, 1)


def save_images(images: torch.Tensor, path: Path) -> None:
    """``(N, 3, H, W)`` in [-1, 1] as uint8 ``(N, H, W, 3)`` in a compressed ``.npz`` (work folder only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = ((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    np.savez_compressed(path, images=array)


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    from PIL import Image

    from diffusers_spectrum.utils.images import image_grid

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, nrow=nrow)).save(path)


def exported_scheduler(pipeline_dir: str) -> str:
    """The scheduler class the DiT trainer exported (what the samples were drawn with)."""
    config = json.loads((Path(pipeline_dir) / "scheduler" / "scheduler_config.json").read_text())
    flow = " with flow sigmas" if config.get("use_flow_sigmas") else ""
    return f"{config['_class_name']}{flow}"


# ----------------------------------------------------------------------------------------------------------------
# The study: its units and their plan


class Study:
    """The units of one study folder and the resources they share (loaded on first use)."""

    def __init__(self, args, s: dict, mode: str):
        self.args, self.s, self.mode = args, s, mode
        self.work = Path(args.work_dir)
        self.units = Units(self.work)
        self.data_dir = self.work / "data"
        self._cache = {}

    # -- shared resources -------------------------------------------------------------------------------------
    def _get(self, key: str, make: Callable):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def images(self, split: str) -> torch.Tensor:
        return self._get(f"images/{split}", lambda: load_folder(self.data_dir / split))

    @property
    def reference(self) -> torch.Tensor:
        """The generation reference: every test crop (or ``num_samples`` of them, seeded)."""

        def make():
            test = self.images("test")
            count = self.s["num_samples"] or len(test)
            return test if count == len(test) else subset(test, count, seed=0)

        return self._get("reference", make)

    @property
    def encoder(self) -> str:
        return self.args.encoder or build_standin_encoder(self.work / "standin_encoder")

    @property
    def suite(self):
        def make():
            from diffusers_spectrum import GenerationMetricSuite, feature_net_for
            from diffusers_spectrum.evaluation.feature_net import random_feature_net

            train = self.images("train")
            net = feature_net_for(
                self.work / "feature_net", train, steps=self.s["feature_net_steps"], crop_size=self.s["resolution"]
            )
            return GenerationMetricSuite(net, random_feature_net(train), seed=0)

        return self._get("suite", make)

    def esm_choice(self) -> tuple[float, str] | None:
        """The validation-chosen ESM weight, once the scan units and SD-VAE seed 0 are stored."""
        names = [f"vae/esm-w{w:g}/seed0" for w in self.s["esm_scan"]] + ["vae/sd-vae/seed0"]
        if not all(self.units.done(n) for n in names):
            return None
        scan = {w: self.units.get(f"vae/esm-w{w:g}/seed0")["result"]["validation"] for w in self.s["esm_scan"]}
        return choose_esm_weight(scan, self.units.get("vae/sd-vae/seed0")["result"]["validation"])

    def arms(self, weight: float) -> list[str]:
        """The arms; the weight-1.0 ESM arm is the chosen one when validation chose 1.0."""
        return [a for a in ARMS if not (a == "esm-w1" and vae_key("esm", weight) == "esm-w1")]

    def ae_seed(self, dit_seed: int) -> int:
        return dit_ae_seed(dit_seed, self.s["ae_seeds"])

    # -- units ------------------------------------------------------------------------------------------------
    def data_unit(self) -> dict:
        return build_data(self.data_dir, self.s)

    def metrics_unit(self) -> dict:
        """The blur check of every generation metric (test crops) and the data floor (training crops against the
        reference, same count, seeded)."""
        check = self.suite.blur_check(self.images("test"), num_splits=self.s["blur_splits"])
        training = subset(self.images("train"), len(self.reference), seed=1)
        floor = self.suite.anchors(self.reference, training)["floor"]
        info = json.loads((self.work / "feature_net" / "feature_net.json").read_text())
        return {"blur_check": check, "floor": floor, "feature_net": info}

    def vae_unit(self, key: str, seed: int) -> dict:
        """Train one autoencoder, analyse it on the test crops and (seed 0) on the validation crops."""
        encoder = self.encoder if key == "va-vae" else None
        folder = train_autoencoder(
            vae_flags(key, encoder), self.work / "vae" / f"{key}-seed{seed}", self.data_dir / "train", self.s, seed
        )
        result = {"key": key, "seed": seed, "folder": folder}
        if not key.startswith("sd-vae-kl"):  # the KL sweep is judged on validation only
            result["test"] = analyze_autoencoder(folder, self.data_dir / "test", self.images("test"), self.s)
        if seed == 0:
            result["validation"] = analyze_autoencoder(
                folder, self.data_dir / "validation", self.images("validation"), self.s, lowpass=False
            )
        return result

    def ceiling_unit(self, key: str, seed: int) -> dict:
        folder = self.units.get(f"vae/{key}/seed{seed}")["result"]["folder"]
        reconstructed = reconstructions(folder, self.reference)
        if seed == 0:
            pairs = torch.cat([self.reference[:4], reconstructed[:4]])
            save_grid(pairs, self.work / "grids" / f"recon-{key}.png")
        return self.suite.measure(reconstructed, self.reference)

    def cache_unit(self, key: str, seed: int) -> dict:
        folder = self.units.get(f"vae/{key}/seed{seed}")["result"]["folder"]
        return {
            "cache": cache_latents_for(
                folder, self.data_dir / "train", self.work / "cache" / f"{key}-seed{seed}", self.s
            )
        }

    def dit_unit(self, arm: str, key: str, seed: int) -> dict:
        ae_seed = self.ae_seed(seed)
        cache_dir = self.units.get(f"cache/{key}/seed{ae_seed}")["result"]["cache"]
        trained = train_diffusion(cache_dir, self.work / "dit" / f"{arm}-seed{seed}", seed, self.s)
        samples = draw_samples(trained["pipeline"], len(self.reference), self.s)
        save_images(samples, self.work / "samples" / f"{arm}-seed{seed}.npz")
        if seed == self.s["dit_seeds"][0]:
            save_grid(samples[:8], self.work / "grids" / f"{arm}.png")
        heldout = heldout_flow_matching_loss(trained["pipeline"], self.images("test"), self.s["fm_times"])
        curve = trained.pop("loss_curve")
        trained["final_dit_loss"] = final_loss({"loss_curve": curve})
        trained["loss_curve"] = curve[:: max(1, len(curve) // 200)]  # every k-th logged step: the figure's curve
        return {
            "arm": arm,
            "seed": seed,
            "ae_seed": ae_seed,
            "vae_key": key,
            **trained,
            **self.suite.measure(samples, self.reference),
            "heldout_fm_loss": heldout["mean"],
            "heldout_fm_loss_per_t": heldout["per_t"],
        }

    # -- the plan ---------------------------------------------------------------------------------------------
    def plan(self) -> tuple[list[Task], bool]:
        """Every unit known so far, in the order a process should prefer (the ESM scan first, so the choice is
        made early; autoencoders before DiTs; the KL sweep last), and whether the list is final."""
        s, tasks = self.s, [Task("data", (), self.data_unit)]
        base = ("data",)
        tasks.append(Task("feature_net", base, lambda: {"suite": bool(self.suite)}))
        tasks.append(Task("metrics", ("feature_net",), self.metrics_unit))

        def vae_task(key, seed):
            return Task(f"vae/{key}/seed{seed}", base, lambda: self.vae_unit(key, seed))

        keys = [f"esm-w{w:g}" for w in s["esm_scan"]]
        tasks += [vae_task(key, 0) for key in [*keys, "sd-vae"]]
        choice = self.esm_choice()
        independent = [a for a in ARMS if a not in ("esm", "esm+dsm")]
        arms = independent if choice is None else self.arms(choice[0])
        for seed in s["ae_seeds"]:
            tasks += [vae_task(vae_key(arm, choice and choice[0]), seed) for arm in arms]
        arm_keys = {arm: vae_key(arm, choice and choice[0]) for arm in arms}
        for seed in s["ae_seeds"]:
            for key in arm_keys.values():
                vae = f"vae/{key}/seed{seed}"
                tasks.append(Task(f"cache/{key}/seed{seed}", (vae,), lambda k=key, sd=seed: self.cache_unit(k, sd)))
                tasks.append(
                    Task(
                        f"ceiling/{key}/seed{seed}",
                        (vae, "feature_net"),
                        lambda k=key, sd=seed: self.ceiling_unit(k, sd),
                    )
                )
        if choice is not None:
            for seed in s["dit_seeds"]:
                for arm, key in arm_keys.items():
                    deps = (f"cache/{key}/seed{self.ae_seed(seed)}", "feature_net")
                    fn = lambda a=arm, k=key, sd=seed: self.dit_unit(a, k, sd)  # noqa: E731
                    tasks.append(Task(f"dit/{arm}/seed{seed}", deps, fn))
        tasks += [vae_task(f"sd-vae-kl{w:g}", 0) for w in s["kl_sweep"]]
        unique = list({t.name: t for t in tasks}.values())
        return unique, choice is not None


def dit_ae_seed(dit_seed: int, ae_seeds) -> int:
    """The autoencoder seed a DiT seed trains on: ``ae_seeds[index(dit_seed) mod len(ae_seeds)]`` (DiT seeds are
    0, 1, 2, ...), the same in every arm, so arms are paired on both seeds."""
    return ae_seeds[dit_seed % len(ae_seeds)]


def run_study(args, mode: str) -> dict:
    s = SETTINGS[mode]
    study = Study(args, s, mode)
    start = time.time()
    run_tasks(study.units, study.plan)
    return assemble(args, s, mode, study, time.time() - start)


def assemble(args, s: dict, mode: str, study: Study, seconds: float) -> dict:
    """Every stored unit in one JSON-able dict (then `analyse` adds the statistics)."""
    import diffusers
    import transformers

    units = study.units
    weight, rule = study.esm_choice()
    arms = study.arms(weight)
    arm_keys = {arm: vae_key(arm, weight) for arm in arms}
    unit = lambda name: units.get(name)["result"]  # noqa: E731
    autoencoders = {}
    for key in dict.fromkeys([*arm_keys.values(), *[f"esm-w{w:g}" for w in s["esm_scan"]]]):
        seeds = s["ae_seeds"] if key in arm_keys.values() else (0,)
        autoencoders[key] = {str(seed): unit(f"vae/{key}/seed{seed}") for seed in seeds}
    sweep = {f"{SD_VAE_KL:g}": unit("vae/sd-vae/seed0")["validation"]}
    sweep.update({f"{w:g}": unit(f"vae/sd-vae-kl{w:g}/seed0")["validation"] for w in s["kl_sweep"]})
    stored = units.stored()
    first = unit(f"dit/{arms[0]}/seed{s['dit_seeds'][0]}")
    metric_setup = unit("metrics")
    return {
        "format": FORMAT,
        "mode": mode,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
        "arms": arms,
        "arm_vae_keys": arm_keys,
        "seeds": {
            "autoencoder": list(s["ae_seeds"]),
            "dit": list(s["dit_seeds"]),
            "dit_to_autoencoder": {str(d): study.ae_seed(d) for d in s["dit_seeds"]},
        },
        "sampler": exported_scheduler(first["pipeline"]),
        "data": {**unit("data"), "reference": f"{len(study.reference)} test crops"},
        "encoder": args.encoder or "stand-in: DINOv2 architecture, fixed 4x4 DCT patch embedding",
        "feature_net": metric_setup["feature_net"],
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
            "diffusers_spectrum": _git_commit(),
        },
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
        "kl_convention": kl_convention(s),
        "texture_term": {
            "flag": f"--perceptual_loss fourier --perceptual_weight {s['texture_weight']}",
            "loss": "losses.FourierAmplitudeLoss: L1 distance of log(1 + |FFT|) amplitude spectra (orthonormal 2-D "
            "FFT per channel), phase-blind",
        },
        "scan": {
            "weights": list(s["esm_scan"]),
            "results": {f"{w:g}": autoencoders[f"esm-w{w:g}"]["0"]["validation"] for w in s["esm_scan"]},
            "reference": autoencoders["sd-vae"]["0"]["validation"],
            "chosen_esm_weight": weight,
            "rule": rule,
            "measured_on": "validation",
        },
        "kl_sweep": {"weights": [SD_VAE_KL, *s["kl_sweep"]], "results": sweep, "measured_on": "validation"},
        "autoencoders": autoencoders,
        "ceilings": {
            key: {str(seed): unit(f"ceiling/{key}/seed{seed}") for seed in s["ae_seeds"]} for key in arm_keys.values()
        },
        "diffusion": {arm: [unit(f"dit/{arm}/seed{seed}") for seed in s["dit_seeds"]] for arm in arms},
        "blur_check": metric_setup["blur_check"],
        "floor": metric_setup["floor"],
        "wall_seconds_this_invocation": round(seconds, 1),
        "unit_seconds": {name: u["seconds"] for name, u in stored.items()},
        "unit_cpu_seconds": {name: u.get("cpu_seconds") for name, u in stored.items()},
        "unit_seconds_total": round(sum(u["seconds"] for u in stored.values()), 1),
        "unit_costs": unit_costs(stored),
    }


def unit_costs(stored: dict[str, dict]) -> dict:
    """Mean wall and CPU seconds per kind of unit (the part of the name before the first ``_``)."""
    kinds = {}
    for name, u in stored.items():
        kind = name.split("_")[0]
        if kind == "vae" and "sd-vae-kl" in name:
            kind = "vae (KL sweep: validation analysis only)"
        kinds.setdefault(kind, []).append((u["seconds"], u.get("cpu_seconds") or float("nan")))
    return {
        k: {
            "n": len(v),
            "mean_seconds": float(np.mean([a for a, _ in v])),
            "mean_cpu_seconds": float(np.mean([b for _, b in v])),
            "total_seconds": float(np.sum([a for a, _ in v])),
        }
        for k, v in kinds.items()
    }


def kl_convention(s: dict) -> dict:
    """How the authors' code and ours reduce the reconstruction and KL terms (read in the authors' repository,
    branch SDVAE_and_ESM at `AUTHORS_COMMIT`), and what the KL weights mean in the LDM reduction."""
    pixels = 3 * s["resolution"] ** 2
    latent_elements = 4 * (s["resolution"] // 4) ** 2
    return {
        "authors": {
            "source": f"{AUTHORS_REPO}, branch SDVAE_and_ESM (commit {AUTHORS_COMMIT}): stage1_vae_trainer.py, "
            "modules/vae.py, configs/train_vae_celeba256.yaml",
            "reconstruction": "F.l1_loss(pixel_values, reconstructions): mean over batch, channels and pixels",
            "kl": "VAE.kl_loss = -0.5 * torch.sum(1 + logvar - mean**2 - var, dim=[1, 2, 3]) (summed over latent "
            "elements, per sample); the trainer takes .mean() over the batch and multiplies by kl_weight",
            "kl_weight": "kl_weight: 0.0 in the config, with the comment 'set 0.000001 for SDVAE'",
            "pixelwise_average": "the config's pixelwise_average: True is not read by the trainer",
        },
        "ours": "losses/autoencoder_objective.py autoencoder_loss: reconstruction_loss(...) per sample = mean over "
        "channels and pixels, then .mean() over the batch; the KL is diffusers' DiagonalGaussianDistribution.kl() "
        "(0.5 * sum over latent elements of mean^2 + var - 1 - logvar, per sample), .mean() over the batch, times "
        "--kl_weight: the same "
        "reduction as the authors'",
        "matches_authors": True,
        "pixels_per_image": pixels,
        "latent_elements_per_image": latent_elements,
        "ldm_equivalent": "in the LDM reduction (reconstruction summed over pixels per sample, KL summed over latent "
        f"elements per sample) a weight w of the authors' reduction is w x {pixels} (3 x {s['resolution']}^2 pixels "
        "here); the LDM default 1e-6 is 1e-6 / that number in the authors' reduction",
    }


def _git_commit() -> str:
    import subprocess

    try:
        command = ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ----------------------------------------------------------------------------------------------------------------
# Analysis: arm verdicts, paired statistics and claims, from the stored results only

GENERATION_LABELS = {
    "spectrum_distance": "spectrum distance",
    "swd_pooled_x1e3": "colour-aware SWD x1e3",
    "swd_x1e3": "SWD x1e3 (published)",
    "kid_trained": "KID (trained net)",
    "fd_trained": "FD (trained net)",
    "kid_random": "KID (random net)",
    "fd_random": "FD (random net)",
}
DIFFUSION_LABELS = {"heldout_fm_loss": "held-out flow-matching loss", "final_dit_loss": "final DiT training loss"}
AE_LABELS = {
    "w1": "w1 to the delta = 1 target (samples, DC kept)",
    "psnr": "PSNR (dB)",
    "dsm_drop_10": "DSM low-pass PSNR drop, k = 10 (dB)",
    "mean_curve_kl": "mean-curve KL to the delta = 1 target (samples, DC kept)",
    "w1_dc_free": "w1 to the target (samples, DC free)",
    "centroid_gap": "centroid gap (samples, DC kept)",
    "centroid_gap_dc_free": "centroid gap (samples, DC free)",
    "ssim": "SSIM",
    "dsm_drop_8": "DSM low-pass PSNR drop, k = 8 (dB)",
    "dsm_drop_12": "DSM low-pass PSNR drop, k = 12 (dB)",
    "posterior_std_ratio": "posterior std / spread of the means",
    "latent_slope": "latent slope (samples, DC kept)",
}
LABELS = {**GENERATION_LABELS, **DIFFUSION_LABELS, **AE_LABELS}
SHORT_LABELS = {
    "w1": "w1 to target",
    "psnr": "PSNR",
    "dsm_drop_10": "DSM drop k=10",
    "spectrum_distance": "spectrum dist.",
    "swd_pooled_x1e3": "colour SWD",
    "swd_x1e3": "SWD",
    "kid_trained": "KID",
    "fd_trained": "FD",
    "kid_random": "KID (random)",
    "fd_random": "FD (random)",
    "heldout_fm_loss": "held-out FM loss",
    "final_dit_loss": "final DiT loss",
}
# The autoencoder family (Holm): the spectral distance the verdict reads, the reconstruction, the DSM drop at the
# middle level. The rest is reported beside, uncorrected. ``True``: lower is better.
AE_TESTED = {"w1": True, "psnr": False, "dsm_drop_10": False}
AE_DESCRIPTIVE = {"mean_curve_kl": True, "w1_dc_free": True, "ssim": False, "dsm_drop_8": False, "dsm_drop_12": False}
SIGNED = {"centroid_gap", "centroid_gap_dc_free", "posterior_std_ratio", "latent_slope"}  # no better / worse
# The paper's direction for each comparison against SD-VAE (None: no claim), and its reference values (the
# authors' figure data; `evaluation.diagnostics.REFERENCE_SPECTRA`).
PAPER_AE = {"w1": {a: "better" for a in ARMS if a != BASELINE}, "dsm_drop_10": {"dsm": "better", "esm+dsm": "better"}}
PAPER_VERDICTS = {
    "sd-vae": "over-noisy",
    "esm": "matched",
    "esm-w1": "matched",
    "dsm": "matched",
    "esm+dsm": "matched",
}
PAPER_KL_ARMS = {"sd-vae": "sd_vae", "eq-vae": "scale_equivariant", "esm": "esm_autoencoder", "dsm": "dsm_autoencoder"}
EXTRA_COMPARISONS = (("esm+dsm", "eq-vae"), ("esm+dsm", "va-vae"))  # the paper: outperforms prior approaches


def final_loss(run: dict) -> float:
    """Mean of the last 10% (at least 20) of the logged DiT losses (standardised latents): stored by the DiT unit,
    which keeps every k-th step of the curve only."""
    if "final_dit_loss" in run:
        return float(run["final_dit_loss"])
    values = [v for _, v in run["loss_curve"]]
    return float(np.mean(values[-max(20, len(values) // 10) :]))


def autoencoder_values(results: dict) -> dict:
    """``{arm: {metric: {autoencoder seed: value}}}`` of the test analyses."""
    out = {}
    for arm in results["arms"]:
        values = {}
        for seed, unit in results["autoencoders"][results["arm_vae_keys"][arm]].items():
            test = unit["test"]
            kept, free = test["sample"]["verdicts"]["authors"], test["sample"]["verdicts"]["dc_free"]
            psnr = test["mean"]["dsm_lowpass_psnr"]
            row = {
                "w1": kept["w1"]["estimate"],
                "centroid_gap": kept["centroid_gap"]["estimate"],
                "mean_curve_kl": kept["mean_spectrum_kl_delta1"],
                "latent_slope": kept["latent_slope"],
                "w1_dc_free": free["w1"]["estimate"],
                "centroid_gap_dc_free": free["centroid_gap"]["estimate"],
                "psnr": test["psnr"],
                "ssim": test["ssim"],
                "posterior_std_ratio": test["posterior_std_ratio"],
                **{f"dsm_drop_{k}": psnr[str(k)] - psnr["0"] for k in DSM_LEVELS[1:]},
            }
            for metric, value in row.items():
                values.setdefault(metric, {})[seed] = float(value)
        out[arm] = values
    return out


def diffusion_values(results: dict, by_autoencoder: bool = False) -> dict:
    """``{arm: {metric: {DiT seed: value}}}`` (every generation metric, the held-out flow-matching loss, the final
    DiT loss); ``by_autoencoder``: the mean over the DiT seeds that share an autoencoder seed, keyed by it."""
    out = {}
    for arm in results["arms"]:
        values = {}
        for run in results["diffusion"][arm]:
            row = {m: run[m] for m in (*GENERATION_LABELS, "heldout_fm_loss") if m in run}
            row["final_dit_loss"] = final_loss(run)
            for metric, value in row.items():
                values.setdefault(metric, {}).setdefault(run["ae_seed"] if by_autoencoder else run["seed"], []).append(
                    float(value)
                )
        out[arm] = {m: {k: float(np.mean(v)) for k, v in per.items()} for m, per in values.items()}
    return out


def arm_verdict(units: list[dict], view: str, latents: str = "sample") -> dict:
    """An arm's verdict over its autoencoder seeds: each statistic's estimate is the mean of the per-seed estimates
    (each on the test crops' mean curves), its interval Student's t over seeds at the verdict's confidence, and the
    rule of `evaluation.diagnostics.decide_verdict` on those intervals. The per-seed verdicts (bootstrap over
    images) are kept beside."""
    from diffusers_spectrum import t_interval
    from diffusers_spectrum.evaluation.diagnostics import (
        VERDICT_CONFIDENCE,
        VERDICT_STATISTICS,
        VERDICT_TOLERANCE,
        decide_verdict,
    )

    reports = [u["test"][latents]["verdicts"][view] for u in units]
    report = {
        "n": len(reports),
        "per_seed": [r["verdict"] for r in reports],
        "tolerance": VERDICT_TOLERANCE,
        "confidence": VERDICT_CONFIDENCE,
    }
    intervals = {}
    for key in VERDICT_STATISTICS:
        values = [r[key]["estimate"] for r in reports]
        if len(values) > 1:
            interval = t_interval(values, VERDICT_CONFIDENCE)
            intervals[key] = (interval["lo"], interval["hi"])
        else:
            intervals[key] = (reports[0][key]["lo"], reports[0][key]["hi"])
        report[key] = {
            "estimate": float(np.mean(values)),
            "lo": intervals[key][0],
            "hi": intervals[key][1],
            "per_seed": values,
        }
    report["verdict"] = decide_verdict(intervals, VERDICT_TOLERANCE)
    report["interval_method"] = (
        f"Student's t over {len(reports)} autoencoder seeds"
        if len(reports) > 1
        else reports[0].get("interval_method", "")
    )
    for key in ("mean_spectrum_kl_delta1", "latent_slope", "target_slope"):
        report[key] = float(np.mean([r[key] for r in reports]))
    report["latent_curve"] = np.mean([r["latent_curve"] for r in reports], axis=0).tolist()
    report["target_curve"] = np.mean([r["target_curve"] for r in reports], axis=0).tolist()
    return report


def _signed_outcomes(rows: list[dict]) -> list[dict]:
    """Rows of signed metrics say "higher" / "lower" instead of "better" / "worse"."""
    for row in rows:
        if row["metric"] in SIGNED and row["outcome"] in ("better", "worse"):
            row["outcome"] = "higher" if row["mean"] > 0 else "lower"
    return rows


def compare_family(values: dict, comparisons: list[tuple[str, str]], metrics: dict, correction: str = "holm"):
    """`compare_arms` over explicit (arm, baseline) pairs as one family: an arm compared with two baselines appears
    under an alias ``"arm vs baseline"``."""
    from diffusers_spectrum import compare_arms

    keyed, baselines = dict(values), {}
    for arm, baseline in comparisons:
        alias = arm if baseline == BASELINE else f"{arm} vs {baseline}"
        keyed[alias] = values[arm]
        baselines[alias] = baseline
    rows = compare_arms(keyed, baselines, metrics, correction=correction)
    for row in rows:
        row["arm"] = row["arm"].split(" vs ")[0]
    return _signed_outcomes(rows)


def analyse(results: dict) -> dict:
    """The study's statistics from ``results`` alone: arm verdicts (both views, intervals over autoencoder seeds),
    the scan and the KL sweep, DSM drops, the anchors, the blur check and the metrics relied on, paired comparisons
    against SD-VAE (autoencoder family over autoencoder seeds; diffusion family over DiT seeds, and the same over
    autoencoder-seed means as a check) with Holm's correction, and every claim."""
    from diffusers_spectrum.evaluation.statistics import mean_sd
    from diffusers_spectrum.evaluation.study_metrics import relied_metrics

    if results.get("format") != FORMAT:
        raise ValueError(
            f"analyse: this JSON has results format {results.get('format', 1)}, not {FORMAT} (the 64 px study of "
            "issue 22); the 32 px study's JSON is re-analysed by the script of its own commit (git log docs/)."
        )
    arms = results["arms"]
    relied = relied_metrics(results["blur_check"])
    keys = results["arm_vae_keys"]
    units = {arm: list(results["autoencoders"][keys[arm]].values()) for arm in arms}
    verdicts = {arm: {view: arm_verdict(units[arm], view) for view in ("authors", "dc_free")} for arm in arms}
    for arm in arms:  # the posterior means' spectrum: is the excess power the posterior noise or the mean's?
        verdicts[arm]["means"] = arm_verdict(units[arm], "authors", latents="mean")

    ae = autoencoder_values(results)
    others = [(arm, BASELINE) for arm in arms if arm != BASELINE]
    ae_family = compare_family(ae, others, AE_TESTED)
    ae_descriptive = compare_family(ae, others, AE_DESCRIPTIVE, correction="none")
    ae_summary = {arm: {m: mean_sd(v.values()) for m, v in ae[arm].items()} for arm in arms}

    diffusion = diffusion_values(results)
    measured = [m for m in GENERATION_LABELS if all(m in diffusion[a] for a in arms)]
    tested = {m: True for m in [*[m for m in measured if m in relied], *DIFFUSION_LABELS]}
    untested = {m: True for m in measured if m not in relied}
    comparisons = others + [pair for pair in EXTRA_COMPARISONS if all(a in arms for a in pair)]
    family = compare_family(diffusion, comparisons, tested)
    descriptive = compare_family(diffusion, others, untested, correction="none") if untested else []
    clustered = diffusion_values(results, by_autoencoder=True)
    n_clusters = min(len(v) for v in clustered[BASELINE].values())
    by_autoencoder = compare_family(clustered, comparisons, tested) if n_clusters > 1 else []
    summary = {arm: {m: mean_sd(v.values()) for m, v in diffusion[arm].items()} for arm in arms}

    ceilings = {}
    for arm in arms:
        per_seed = list(results["ceilings"][keys[arm]].values())
        ceilings[arm] = {m: float(np.mean([c[m] for c in per_seed])) for m in per_seed[0]}

    scan = {w: _validation_row(r) for w, r in results["scan"]["results"].items()}
    sweep = {w: _validation_row(r) for w, r in results["kl_sweep"]["results"].items()}
    analysis = {
        "relied_metrics": relied,
        "verdicts": verdicts,
        "autoencoder_values": ae,
        "autoencoder_summary": ae_summary,
        "autoencoder_family": ae_family,
        "autoencoder_descriptive": ae_descriptive,
        "diffusion_values": diffusion,
        "diffusion_summary": summary,
        "measured_metrics": measured,
        "family": family,
        "descriptive": descriptive,
        "by_autoencoder_seed": by_autoencoder,
        "ceilings": ceilings,
        "scan": scan,
        "scan_reference": _validation_row(results["scan"]["reference"]),
        "kl_sweep": sweep,
    }
    analysis["claims"] = claims(results, analysis)
    return analysis


def _validation_row(unit: dict) -> dict:
    view = unit["sample"]["verdicts"]["authors"]
    free = unit["sample"]["verdicts"]["dc_free"]
    return {
        "psnr": unit["psnr"],
        "posterior_std_ratio": unit["posterior_std_ratio"],
        "verdict": view["verdict"],
        "centroid_gap": view["centroid_gap"],
        "w1": view["w1"],
        "mean_curve_kl": view["mean_spectrum_kl_delta1"],
        "latent_slope": view["latent_slope"],
        "verdict_dc_free": free["verdict"],
        "centroid_gap_dc_free": free["centroid_gap"],
    }


def _agreement(outcome: str, expected: str | None) -> str:
    if expected is None:
        return "reported"
    if outcome == expected:
        return "reproduces"
    if outcome in ("better", "worse") or outcome in ("over-noisy", "over-smoothed", "matched", "mis-shaped"):
        return "contradicts"
    return "not decided"


def claims(results: dict, a: dict) -> list[dict]:
    """Every claim the study measured: ``{"group", "arm", "baseline", "metric", "value", "reference", "outcome",
    "paper", "agreement", "basis"}``; ``agreement`` is "reproduces", "contradicts" (the data decide against the
    paper), "not decided" (the paper expects a direction the data do not separate) or "reported" (no claim of the
    paper)."""
    out = []
    for arm in results["arms"]:
        for view, label in (("authors", "DC kept"), ("dc_free", "DC free")):
            v = a["verdicts"][arm][view]
            expected = PAPER_VERDICTS.get(arm) if view == "authors" else None
            out.append(
                {
                    "group": "spectrum",
                    "arm": arm,
                    "baseline": None,
                    "metric": f"verdict ({label})",
                    "value": v["verdict"],
                    "reference": None,
                    "outcome": v["verdict"],
                    "paper": expected,
                    "agreement": _agreement(v["verdict"], expected)
                    if v["verdict"] != "undetermined" or expected is None
                    else "not decided",
                    "basis": f"centroid gap {_interval(v['centroid_gap'])}, w1 {_interval(v['w1'])} "
                    f"({v['interval_method']}); "
                    f"per seed: {', '.join(v['per_seed'])}",
                }
            )
    for row in a["autoencoder_family"]:
        expected = PAPER_AE.get(row["metric"], {}).get(row["arm"])
        out.append(
            _row_claim(
                "autoencoder", row, expected, f"paired over autoencoder seeds, Holm family of {row['family_size']}"
            )
        )
    for row in a["autoencoder_descriptive"]:
        out.append(_row_claim("autoencoder (reported)", row, None, "paired over autoencoder seeds, uncorrected"))
    for arm, key in PAPER_KL_ARMS.items():
        if arm in results["arms"]:
            from diffusers_spectrum.evaluation.diagnostics import REFERENCE_SPECTRA

            ours = a["autoencoder_summary"][arm]["mean_curve_kl"]["mean"]
            out.append(
                {
                    "group": "paper values",
                    "arm": arm,
                    "baseline": None,
                    "metric": "mean-curve KL",
                    "value": ours,
                    "reference": REFERENCE_SPECTRA[key]["spectral_kl_delta1"],
                    "outcome": f"{ours / REFERENCE_SPECTRA[key]['spectral_kl_delta1']:.2g}x the paper's",
                    "paper": None,
                    "agreement": "reported",
                    "basis": "mean over autoencoder seeds; the paper's figure data (CelebA 256, f8)",
                }
            )
    for row in a["family"]:
        expected = "better"
        basis = f"paired over DiT seeds, Holm family of {row['family_size']}"
        check = next(
            (
                r
                for r in a["by_autoencoder_seed"]
                if (r["arm"], r["baseline"], r["metric"]) == (row["arm"], row["baseline"], row["metric"])
            ),
            None,
        )
        if check is not None:
            basis += f"; by autoencoder seed: {check['outcome']} (Holm p {check['p_holm']:.2g})"
        out.append(_row_claim("diffusion", row, expected, basis))
    for row in a["descriptive"]:
        out.append(
            _row_claim(
                "diffusion (not relied on)",
                row,
                None,
                "paired over DiT seeds, uncorrected; the metric fails the blur check",
            )
        )
    return out


def _row_claim(group: str, row: dict, expected: str | None, basis: str) -> dict:
    return {
        "group": group,
        "arm": row["arm"],
        "baseline": row["baseline"],
        "metric": row["metric"],
        "value": row["arm_mean"],
        "reference": row["baseline_mean"],
        "outcome": row["outcome"],
        "paper": expected,
        "agreement": _agreement(row["outcome"], expected),
        "basis": basis,
    }


def _interval(stat: dict, digits: int = 3) -> str:
    return f"{stat['estimate']:+.{digits}f} [{stat['lo']:+.{digits}f}, {stat['hi']:+.{digits}f}]"


def _pm(stat: dict, digits: int = 4) -> str:
    if stat["n"] > 1 and np.isfinite(stat["sd"]):
        return f"{stat['mean']:.{digits}g} +- {stat['sd']:.2g}"
    return f"{stat['mean']:.{digits}g}"


# ----------------------------------------------------------------------------------------------------------------
# The page (every number from `results`)


def _arm(arm: str) -> str:
    return ARM_LABELS.get(arm, arm)


def _verdict_cell(v: dict) -> str:
    return f"**{v['verdict']}** {_interval(v['centroid_gap'])}"


def page_text(results: dict, figures: list[str]) -> str:
    from diffusers_spectrum.evaluation.diagnostics import REFERENCE_SPECTRA, VERDICT_TOLERANCE
    from diffusers_spectrum.evaluation.statistics import comparison_table
    from diffusers_spectrum.evaluation.study_metrics import anchored_table, blur_check_table
    from diffusers_spectrum.spectral.psd import radial_bin_index

    s, a, arms = results["settings"], results["analysis"], results["arms"]
    side = s["resolution"] // 4
    cells = [int(c) for c in radial_bin_index(side, side, 16)[1]]
    json_name = "reproduction.json" if results["mode"] == "full" else f"reproduction_{results['mode']}.json"
    data, seeds, kl = results["data"], results["seeds"], results["kl_convention"]
    n_ae, n_dit = len(seeds["autoencoder"]), len(seeds["dit"])
    costs = results["unit_costs"]
    claims_list = a["claims"]
    lines = [
        "# Spectrum Matching at 64 px: a reproduction with the baselines it unifies",
        "",
        "Everything on this page is written by `benchmarks/reproduce_spectrum_matching.py` from its own run "
        f"(`{results['command']}`, mode `{results['mode']}`); every number is in [{json_name}]({json_name}) with "
        "the settings, seeds, versions and per-unit wall and CPU seconds. Nothing here is typed in. The paper: "
        "*Spectrum Matching* (Encoding and Decoding Spectrum Matching; code "
        f"[{AUTHORS_REPO}](https://github.com/{AUTHORS_REPO})).",
        "",
        "## What reproduces, what does not",
        "",
    ]
    lines += summary_lines(results)
    lines += [
        "What this miniature cannot test: the authors' regime (CelebA / ImageNet at 256 px, f8 and f16 latents, "
        "500k autoencoder steps, LPIPS + PatchGAN, SiT-B/XL, FID on 50k samples); semantics (the VA-VAE arm aligns to "
        "a fixed local-frequency stand-in, not DINOv2); REPA / DoG-REPA (not run in this study: without a semantic "
        f"encoder it would test plumbing only); a DiT trained to convergence. A {side} x {side} latent has 16 radial "
        f"bands of {min(cells)} to {max(cells)} cells (DC shares band 0), so the spectral shape is measurable, but "
        f"the generation metrics are computed on {len(results['diffusion'][BASELINE])} x "
        f"{results['data']['reference'].split()[0]} samples per arm.",
        "",
        "## Budget and settings",
        "",
        f"- Machine: {results['machine']['cpus']} CPU cores, no GPU, one torch thread per process. Wall time of the "
        f"study (the sum of its stored units, over every process and invocation): "
        f"{results['unit_seconds_total'] / 60:.1f} min. Per kind of unit (mean wall / CPU seconds, count): "
        + "; ".join(
            f"{k} {v['mean_seconds']:.0f} / {v['mean_cpu_seconds']:.0f} s x {v['n']}" for k, v in sorted(costs.items())
        )
        + ".",
        f"- Data: {data['train']} training, {data['validation']} validation and {data['test']} test "
        f"{data['resolution']} px crops of the photographs {', '.join(data['sources'])} ({data['split']}; "
        f"tiles: {data['tiles']['train']} / {data['tiles']['validation']} / {data['tiles']['test']}).",
        f"- Autoencoders: the `{s['vae_config']}` preset (channels 16, 32, 32; f4, 4 latent channels; "
        f"{s['resolution'] // 4} x {s['resolution'] // 4} latents), {s['vae_steps']} steps, batch {s['batch']}, AdamW "
        f"lr {s['lr']} (0.9, 0.999, weight decay 0.005), {s['warmup']} warm-up steps, for every one; only the loss "
        f"differs. Seeds {seeds['autoencoder']} per arm (initialisation and data order; the same in every arm). "
        f"Texture term `{results['texture_term']['flag']}` for every arm (below); no PatchGAN (the authors start it "
        "at step 50001).",
        f"- DiT: `{s['dit_config']}` preset, patch {s['dit_patch']} ({(s['resolution'] // 4 // s['dit_patch']) ** 2} "
        f"tokens), flow matching, {s['dit_steps']} steps, batch {s['dit_batch']}, lr {s['dit_lr']}, EMA "
        f"{s['dit_ema']}; seeds {seeds['dit']}, DiT seed s on autoencoder seed "
        f"{', '.join(f'{d}->{e}' for d, e in seeds['dit_to_autoencoder'].items())} of every arm (arms paired on both "
        f"seeds). {data['reference']} are the reference; each run draws as many samples ({s['sample_steps']} steps "
        f"of the exported {results['sampler']}, shared sampling seed).",
        f"- Vision encoder (VA-VAE): {results['encoder']}: a fixed local-frequency analyser without semantics.",
    ]
    net = results["feature_net"]
    lines.append(
        f"- Feature nets for KID / FD: `evaluation.feature_net` trained here on the {net['num_images']} training "
        f"crops ({net['objective']}; {net['settings']['steps']} steps, {net['train_seconds']:.0f} s), and a "
        "random-init "
        "net of the same architecture as the sanity row."
    )

    # KL convention and sweep
    sweep = a["kl_sweep"]
    lines += [
        "",
        "## The KL convention, checked against the authors' code",
        "",
        f"Read in {kl['authors']['source']}: the reconstruction is `{kl['authors']['reconstruction']}`; the KL is "
        f"{kl['authors']['kl']}; {kl['authors']['kl_weight']}; {kl['authors']['pixelwise_average']}. Ours: "
        f"{kl['ours']}. So \"KL 1e-6\" here is the authors' setting in the authors' reduction. "
        f"{kl['ldm_equivalent'][0].upper() + kl['ldm_equivalent'][1:]}: the authors' 1e-6 is "
        f"{SD_VAE_KL * kl['pixels_per_image']:.3g} in LDM terms at this size ({SD_VAE_KL * 3 * 256**2:.3g} at 256 "
        "px), "
        "a far stronger KL than LDM's own 1e-6.",
        "",
        "A short sweep of the SD-VAE's KL weight in the authors' reduction (seed 0, validation crops, posterior "
        "samples) shows whether the baseline's spectrum is an accident of the weight:",
        "",
        "| KL weight (authors' reduction) | LDM equivalent | PSNR | posterior std ratio | verdict DC kept (centroid "
        "gap) | w1 | mean-curve KL | verdict DC free |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for weight, row in sorted(sweep.items(), key=lambda kv: float(kv[0])):
        lines.append(
            f"| {weight} | {float(weight) * kl['pixels_per_image']:.3g} | {row['psnr']:.2f} | "
            f"{row['posterior_std_ratio']:.3f} | **{row['verdict']}** {_interval(row['centroid_gap'])} | "
            f"{row['w1']['estimate']:.3f} | {row['mean_curve_kl']:.4f} | {row['verdict_dc_free']} |"
        )
    lines += [
        "",
        "## The texture term (offline stand-in for LPIPS)",
        "",
        f"Every autoencoder trains with `{results['texture_term']['flag']}`: {results['texture_term']['loss']}. A "
        "pixel loss is minimised under uncertainty by leaving detail out (a blur); the amplitude term charges every "
        "frequency band whose energy is missing and ignores where in the crop it sits, so it pushes texture into the "
        "latent as LPIPS and the GAN do in the authors' recipe (at LPIPS' weight, 0.5). It is not LPIPS: it sees band "
        "energies per channel, not local features.",
    ]

    # Metrics relied on
    check = results["blur_check"]
    lines += [
        "",
        "## Which generation metrics this study relies on",
        "",
        "A generation metric must see a 5 x 5 box blur: at 32 images per set, test crops against other test crops "
        "blurred must be at least twice as far apart as two halves of unblurred crops (mean over "
        f"{next(iter(check.values()))['num_splits']} random splits; `evaluation.study_metrics`). Metrics that fail "
        "are reported, not relied on, and stay out of the tested family.",
        "",
        *blur_check_table(check),
        "",
        f"Relied on: {', '.join(a['relied_metrics']) or 'none'}.",
    ]

    # Scan
    scan = results["scan"]
    ref = a["scan_reference"]
    lines += [
        "",
        "## The ESM weight, chosen on validation",
        "",
        f"ESM weights {scan['weights']} (seed 0) analysed on the validation crops against SD-VAE seed 0 (PSNR "
        f"{ref['psnr']:.2f}). Rule: {scan['rule']}. Chosen: **{scan['chosen_esm_weight']:g}**"
        + (" (so the weight-1.0 arm is the ESM arm)." if "esm-w1" not in arms else "; weight 1.0 is its own arm."),
        "",
        "| ESM weight | PSNR | posterior std ratio | verdict DC kept (centroid gap) | w1 | mean-curve KL | latent "
        "slope | verdict DC free |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for weight, row in sorted(a["scan"].items(), key=lambda kv: float(kv[0])):
        lines.append(
            f"| {weight} | {row['psnr']:.2f} | {row['posterior_std_ratio']:.3f} | **{row['verdict']}** "
            f"{_interval(row['centroid_gap'])} | {row['w1']['estimate']:.3f} | {row['mean_curve_kl']:.4f} | "
            f"{row['latent_slope']:.2f} | {row['verdict_dc_free']} |"
        )

    # Spectra and verdicts
    first = a["verdicts"][BASELINE]["authors"]
    lines += [
        "",
        "## Spectra and verdicts",
        "",
        f"Target slope (delta = 1): {first['target_slope']:.2f}. The verdict asks where the latents' spectral power "
        "lies against the delta = 1 target: the centroid gap of the mean curves in ln frequency (> 0: power at higher "
        'frequencies, the paper\'s "over-noisy"); matched when the whole w1 interval is within '
        f"{VERDICT_TOLERANCE}. Per arm the interval is Student's t over its {n_ae} autoencoder seeds (each seed "
        "measured on the same test crops); the per-seed verdicts (bootstrap over images) are listed beside. Posterior "
        "samples, as the authors analyse and as the DiT sees; the posterior means' verdict beside says whether excess "
        "high-frequency power is the posterior noise or the means' own. Mean-curve KL is the paper's number (DC "
        "kept); the "
        "paper's values (CelebA 256, f8) are beside for scale: "
        + ", ".join(
            f"{k.replace('_', ' ')} {v['spectral_kl_delta1']}"
            for k, v in REFERENCE_SPECTRA.items()
            if "spectral_kl_delta1" in v
        )
        + ".",
        "",
        "| arm | DC kept: verdict, centroid gap | per seed | DC free: verdict, centroid gap | per seed | posterior "
        "means, DC kept | w1 (DC kept) | mean-curve KL | latent slope | PSNR | SSIM | posterior std ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        v, f, m = a["verdicts"][arm]["authors"], a["verdicts"][arm]["dc_free"], a["autoencoder_summary"][arm]
        lines.append(
            f"| {_arm(arm)} | {_verdict_cell(v)} | {', '.join(v['per_seed'])} | {_verdict_cell(f)} | "
            f"{', '.join(f['per_seed'])} | {_verdict_cell(a['verdicts'][arm]['means'])} | {_pm(m['w1'], 3)} | "
            f"{_pm(m['mean_curve_kl'], 3)} | "
            f"{_pm(m['latent_slope'], 3)} | {_pm(m['psnr'], 4)} | {_pm(m['ssim'], 3)} | "
            f"{_pm(m['posterior_std_ratio'], 3)} |"
        )
    lines += [
        "",
        "## DSM low-pass fidelity",
        "",
        "PSNR drop of decoded low-passed latents against low-passed images from level 0 (posterior means; closer to "
        "0 is better): the absolute PSNR tracks plain reconstruction, the drop is what DSM trains for. Mean +- SD "
        "over "
        "autoencoder seeds.",
        "",
        "| arm | k = 8 | k = 10 | k = 12 |",
        "|---|---|---|---|",
    ]
    for arm in arms:
        m = a["autoencoder_summary"][arm]
        lines.append(f"| {_arm(arm)} | " + " | ".join(_pm(m[f"dsm_drop_{k}"], 3) for k in DSM_LEVELS[1:]) + " |")
    lines += [
        "",
        f"## Paired comparisons of the autoencoders against SD-VAE ({n_ae} autoencoder seeds)",
        "",
        "Per shared autoencoder seed, arm minus SD-VAE; t interval of the mean difference (sample SD, ddof 1), "
        "Holm's correction over the family of every arm x tested metric (w1, PSNR, the DSM drop at k = 10); "
        "**separated** only when the Holm-adjusted p-value is at most 0.05. The bootstrap interval is reported, "
        "never decisive, at this number of seeds.",
        "",
        *comparison_table(a["autoencoder_family"], labels=LABELS),
        "",
        "Reported beside, uncorrected (signed quantities say higher / lower):",
        "",
        *comparison_table(a["autoencoder_descriptive"], labels=LABELS, corrected=False),
    ]

    # Generation
    measured = a["measured_metrics"]
    lines += [
        "",
        "## Generation and diffusability, with their anchors",
        "",
        f"Mean +- sample SD over {n_dit} DiT seeds, samples against the reference (lower is better). The data floor "
        "is "
        "what real training crops score against the same reference at the same count; the reconstruction ceiling "
        "what decode(encode(reference)) scores (mean over the arm's autoencoder seeds): samples drawn through that "
        "decoder carry at least that loss. The held-out flow-matching loss is the DiT's loss on the test crops' "
        f"latents at t = {', '.join(str(t) for t in s['fm_times'])} with noise common to every arm; both DiT losses "
        "are on standardised latents, so a lower loss means more predictable latents (a learnability signal that "
        "over-smoothed latents also earn), not better samples.",
        "",
        *anchored_table(
            {_arm(arm): a["diffusion_summary"][arm] for arm in arms},
            {"floor": results["floor"], "ceiling": {_arm(arm): a["ceilings"][arm] for arm in arms}},
            [*measured, *DIFFUSION_LABELS],
            [*a["relied_metrics"], *DIFFUSION_LABELS],
            LABELS,
        ),
        "",
        *[f"![{f}]({f})" for f in figures],
        "",
        f"## Paired comparisons of the DiTs ({n_dit} DiT seeds)",
        "",
        "Per shared DiT seed (same DiT seed, autoencoder seed, sampling seed and metric seed in every arm), arm minus "
        "its baseline (SD-VAE; ESM+DSM also against EQ-VAE and VA-VAE, the prior approaches the paper says it beats); "
        "Holm's correction over every comparison x tested metric (the relied-on generation metrics and both DiT "
        f"losses). DiT seeds that share an autoencoder seed share its randomness, so the {n_dit} differences are not "
        "fully independent; the last column repeats the test on the means per autoencoder seed "
        f"({len(seeds['autoencoder'])} values), the conservative unit.",
        "",
        *_with_check(comparison_table(a["family"], labels=LABELS), a["family"], a["by_autoencoder_seed"]),
    ]
    if a["descriptive"]:
        lines += [
            "",
            "Measured but not relied on (the metric fails the blur check): paired the same way, uncorrected.",
            "",
            *comparison_table(a["descriptive"], labels=LABELS, corrected=False),
        ]
    lines += ["", "## Every claim, for and against", ""]
    groups = {
        "spectrum": "Spectrum verdicts (the paper: SD-VAE over-noisy; ESM / DSM matched)",
        "autoencoder": "Autoencoders against SD-VAE (tested family)",
        "autoencoder (reported)": "Autoencoders against SD-VAE (reported, uncorrected)",
        "paper values": "Mean-curve KL beside the paper's values",
        "diffusion": "Generation and diffusability (tested family)",
        "diffusion (not relied on)": "Measured, not relied on",
    }
    for group, title in groups.items():
        rows = [c for c in claims_list if c["group"] == group]
        if rows:
            lines += [f"**{title}.**", "", *[f"- {_claim_line(c)}" for c in rows], ""]
    lines += [
        "## Rerun",
        "",
        "```",
        "python benchmarks/reproduce_spectrum_matching.py            # resumable; start it twice to use two cores",
        "python benchmarks/reproduce_spectrum_matching.py --quick    # smoke run (tests/test_reproduction.py)",
        "python benchmarks/reproduce_spectrum_matching.py --reanalyse docs/reproduction.json   # no training",
        "```",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}.",
        "",
    ]
    return "\n".join(lines)


def summary_lines(results: dict) -> list[str]:
    """The page's opening: each arm's verdict against the paper's, a table of every tested comparison's outcome, the
    mean-curve KL beside the paper's values, and the claims that reproduce or are contradicted, in full."""
    from diffusers_spectrum.evaluation.diagnostics import REFERENCE_SPECTRA

    a, claims_list = results["analysis"], results["analysis"]["claims"]
    lines = [
        "Verdicts (posterior samples; interval over autoencoder seeds) beside the paper's, and the mean-curve KL to "
        "the delta = 1 target beside the paper's figure data (CelebA 256, f8; mean +- SD over autoencoder seeds):",
        "",
        "| arm | verdict, DC kept | verdict, DC free | the paper | mean-curve KL | the paper's |",
        "|---|---|---|---|---|---|",
    ]
    for arm in results["arms"]:
        v, f = a["verdicts"][arm]["authors"], a["verdicts"][arm]["dc_free"]
        paper_kl = REFERENCE_SPECTRA.get(PAPER_KL_ARMS.get(arm, ""), {}).get("spectral_kl_delta1")
        lines.append(
            f"| {_arm(arm)} | {_verdict_cell(v)} | {_verdict_cell(f)} | {PAPER_VERDICTS.get(arm, '-')} | "
            f"{_pm(a['autoencoder_summary'][arm]['mean_curve_kl'], 3)} | {paper_kl if paper_kl is not None else '-'} |"
        )
    tested = [c for c in claims_list if c["group"] in ("autoencoder", "diffusion")]
    metrics = list(dict.fromkeys(c["metric"] for c in tested))
    pairs = list(dict.fromkeys((c["arm"], c["baseline"]) for c in tested))
    cell = {(c["arm"], c["baseline"], c["metric"]): c for c in tested}
    lines += [
        "",
        "Every tested comparison (Holm-corrected families; autoencoder metrics paired over autoencoder seeds, the "
        "rest over DiT seeds): the outcome, and whether it reproduces or contradicts the paper's direction where the "
        "paper has one; n.s. = not separated.",
        "",
        "| comparison | " + " | ".join(SHORT_LABELS.get(m, m) for m in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for arm, baseline in pairs:
        cells = []
        for metric in metrics:
            c = cell.get((arm, baseline, metric))
            if c is None:
                cells.append("-")
                continue
            outcome = "n.s." if c["outcome"] == "not separated" else f"**{c['outcome']}**"
            note = {"reproduces": " (reproduces)", "contradicts": " (contradicts)"}.get(c["agreement"], "")
            cells.append(outcome + note)
        lines.append(f"| {_arm(arm)} vs {_arm(baseline)} | " + " | ".join(cells) + " |")
    lines.append("")
    for title, kind in (
        ("Reproduces", "reproduces"),
        ("Does not reproduce (the data decide against the paper)", "contradicts"),
    ):
        rows = [c for c in claims_list if c["agreement"] == kind]
        lines += [f"**{title}** ({len(rows)}):", "", *([f"- {_claim_line(c)}" for c in rows] or ["- none"]), ""]
    undecided = [c for c in claims_list if c["agreement"] == "not decided"]
    lines += [
        f"**Not decided at this budget**: {len(undecided)} of the paper's directions are not separated by the data "
        '(the table above; each in full under "Every claim").',
        "",
    ]
    return lines


def _claim_line(c: dict) -> str:
    value = "" if c["value"] == c["outcome"] else c["value"] if isinstance(c["value"], str) else f"{c['value']:.4g}"
    against = ""
    if c.get("baseline"):
        against = f" vs {_arm(c['baseline'])} {c['reference']:.4g}"
    elif c.get("reference") is not None:
        against = f" (paper {c['reference']:.4g})"
    paper = f"; paper: {c['paper']}" if c.get("paper") else ""
    head = f"{_arm(c['arm'])}, {LABELS.get(c['metric'], c['metric'])}"
    if value or against:
        head += f": {value}{against}"
    return f"{head}: **{c['outcome']}**{paper} ({c['basis']})."


def _with_check(table: list[str], rows: list[dict], check: list[dict]) -> list[str]:
    """The comparison table with a column: the outcome and Holm p of the same comparison on autoencoder-seed means."""
    if not check:
        return table
    index = {(r["arm"], r["baseline"], r["metric"]): r for r in check}
    out = [table[0] + " by autoencoder seed |", table[1] + "---|"]
    for line, row in zip(table[2:], rows):
        other = index.get((row["arm"], row["baseline"], row["metric"]))
        out.append(line + (f" {other['outcome']} (Holm p {other['p_holm']:.2g}) |" if other else " - |"))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Figures (every number from `results`)


def write_figures(results: dict, output_dir: Path, work_dir: Path, suffix: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    a, arms = results["analysis"], results["arms"]
    names = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(output_dir / name, dpi=90)
        plt.close(fig)
        names.append(name)

    # 1. Spectra (mean over autoencoder seeds) against the target, and the centroid gaps with their intervals
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    key = results["arm_vae_keys"][BASELINE]
    image_curve = next(iter(results["autoencoders"][key].values()))["test"]["sample"]["spectra"]["image"]["mean"]
    for ax, view, title in zip(axes[:2], ("authors", "dc_free"), ("DC kept", "DC free")):
        target = a["verdicts"][BASELINE][view]["target_curve"]
        bins = np.arange(1, len(target) + 1)
        if view == "authors":
            ax.plot(bins, image_curve, "k--", lw=2, label="image (delta 0)")
        ax.plot(bins, target, "k-", lw=3, alpha=0.4, label="target (delta 1)")
        for arm in arms:
            v = a["verdicts"][arm][view]
            ax.plot(bins, v["latent_curve"], label=f"{arm}: {v['verdict']}")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="radial band k + 1",
            ylabel="normalised log power",
            title=f"latent spectra (posterior samples, {title}; mean over seeds)",
        )
        ax.legend(fontsize=7)
    x = np.arange(len(arms))
    for offset, view in ((-0.15, "authors"), (0.15, "dc_free")):
        gaps = [a["verdicts"][arm][view]["centroid_gap"] for arm in arms]
        est = np.array([g["estimate"] for g in gaps])
        err = np.array([[g["estimate"] - g["lo"] for g in gaps], [g["hi"] - g["estimate"] for g in gaps]])
        axes[2].errorbar(x + offset, est, yerr=err, fmt="o", capsize=3, label=f"{view}: mean, t interval")
        for i, g in enumerate(gaps):
            axes[2].plot([i + offset] * len(g["per_seed"]), g["per_seed"], ".", color="0.5", ms=4)
    tolerance = a["verdicts"][BASELINE]["authors"]["tolerance"]
    axes[2].axhspan(-tolerance, tolerance, color="0.9", label="tolerance")
    axes[2].axhline(0, color="k", lw=0.8)
    axes[2].set_xticks(x, arms, rotation=30, fontsize=8)
    axes[2].set(
        ylabel="centroid gap, latents - target (ln frequency)",
        title="where the power lies (> 0: high-frequency heavy; dots: seeds)",
    )
    axes[2].legend(fontsize=7)
    save(fig, f"reproduction_spectra{suffix}.png")

    # 2. Samples (first DiT seed) and reconstructions (autoencoder seed 0), when the run's grids are at hand
    grids = [
        (arm, work_dir / "grids" / f"{arm}.png", work_dir / "grids" / f"recon-{results['arm_vae_keys'][arm]}.png")
        for arm in arms
    ]
    grids = [g for g in grids if g[1].is_file() and g[2].is_file()]
    if grids:
        fig, axes = plt.subplots(len(grids), 2, figsize=(12, 1.15 * len(grids)), squeeze=False)
        for row, (arm, samples, recon) in zip(axes, grids):
            for ax, path, what in zip(row, (samples, recon), ("DiT samples", "4 test crops, their reconstructions")):
                ax.imshow(Image.open(path))
                ax.set_title(f"{arm}: {what}", fontsize=8)
                ax.axis("off")
        save(fig, f"reproduction_samples{suffix}.png")
    elif (output_dir / f"reproduction_samples{suffix}.png").is_file():
        names.append(f"reproduction_samples{suffix}.png")

    # 3. DiT loss curves, held-out flow-matching loss per time, the KL sweep and the ESM scan
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for arm in arms:
        curves = [np.asarray(r["loss_curve"]) for r in results["diffusion"][arm] if r["loss_curve"]]
        if curves:
            length = min(len(c) for c in curves)
            values = np.stack([c[:length, 1] for c in curves])
            window = max(1, length // 20)
            smooth = np.stack([np.convolve(v, np.ones(window) / window, mode="valid") for v in values])
            steps = curves[0][: smooth.shape[1], 0] + window - 1
            spread = smooth.std(0, ddof=1) if len(smooth) > 1 else np.zeros(smooth.shape[1])
            axes[0].plot(steps, smooth.mean(0), label=arm)
            axes[0].fill_between(steps, smooth.mean(0) - spread, smooth.mean(0) + spread, alpha=0.15)
        times = [float(t) for t in results["diffusion"][arm][0]["heldout_fm_loss_per_t"]]
        per_t = np.array([[r["heldout_fm_loss_per_t"][f"{t:g}"] for t in times] for r in results["diffusion"][arm]])
        axes[1].errorbar(
            times, per_t.mean(0), yerr=per_t.std(0, ddof=1) if len(per_t) > 1 else None, fmt="o-", capsize=2, label=arm
        )
    axes[0].set(xlabel="DiT step", ylabel="loss (smoothed; mean +- SD over seeds)", title="DiT training loss")
    axes[1].set(xlabel="t", ylabel="held-out flow-matching loss", title="held-out loss at fixed t (common noise)")
    sweep = sorted(a["kl_sweep"].items(), key=lambda kv: float(kv[0]))
    weights = [float(w) for w, _ in sweep]
    axes[2].plot(weights, [r["w1"]["estimate"] for _, r in sweep], "o-", label="w1 to the target")
    axes[2].plot(weights, [r["posterior_std_ratio"] for _, r in sweep], "s-", label="posterior std ratio")
    axes[2].set(xscale="log", xlabel="KL weight (authors' reduction)", title="KL sweep (SD-VAE, validation)")
    scan = sorted(a["scan"].items(), key=lambda kv: float(kv[0]))
    axes[3].plot([float(w) for w, _ in scan], [r["w1"]["estimate"] for _, r in scan], "o-", label="w1 to the target")
    axes[3].axhline(a["scan_reference"]["w1"]["estimate"], color="k", ls=":", label="SD-VAE w1")
    axes[3].axhline(tolerance, color="0.5", ls="--", label="matched below")
    axes[3].set(xscale="log", xlabel="ESM weight", title="ESM scan (validation)")
    for ax in axes:
        ax.legend(fontsize=7)
    save(fig, f"reproduction_curves{suffix}.png")
    return names


def write_page(results: dict, output_dir: Path, work_dir: Path, suffix: str) -> None:
    """Figures and the Markdown page, from `results` (and its `analysis`) only."""
    figures = write_figures(results, output_dir, work_dir, suffix)
    name = "REPRODUCTION.md" if not suffix else f"REPRODUCTION{suffix}.md"
    _write_atomic(output_dir / name, page_text(results, figures))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A smoke run of about two minutes (tests).")
    parser.add_argument("--work_dir", type=str, default=None, help="Where units, models and caches go (resume here).")
    parser.add_argument("--output_dir", type=str, default=None, help="Where the JSON, figures and page go (docs/).")
    parser.add_argument("--encoder", type=str, default=None, help="Hub id / folder of a real vision encoder.")
    parser.add_argument("--no_page", action="store_true", help="Write the JSON only (no figures, no page).")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process (1: see below).")
    parser.add_argument(
        "--reanalyse",
        type=str,
        default=None,
        help="A stored reproduction JSON: recompute its analysis, figures and page without training anything.",
    )
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    default_work = Path.home() / ".cache" / "diffusers-spectrum" / "reproduction-64"
    args.work_dir = args.work_dir or str(default_work / mode)
    args.output_dir = Path(args.output_dir or (REPO / "docs"))
    # One thread per process: on a shared machine two intra-op threads per process thrash, and two processes (one
    # per core) share the units instead.
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        if args.reanalyse:
            results = json.loads(Path(args.reanalyse).read_text())
            start = time.time()
            results["analysis"] = analyse(results)
            results["analysis"]["reanalysis"] = {
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "commit": _git_commit(),
                "seconds": round(time.time() - start, 1),
            }
        else:
            results = run_study(args, mode)
            results["analysis"] = analyse(results)
    finally:
        torch.set_num_threads(threads)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if results["mode"] == "full" else f"_{results['mode']}"
    lock = _wait_lock(Path(args.work_dir) / "units" / "page.lock") if not args.reanalyse else None
    try:  # several processes of one study: one writes at a time (each writes the same numbers)
        _write_atomic(args.output_dir / f"reproduction{suffix}.json", json.dumps(results, indent=1, default=float))
        if not args.no_page:
            write_page(results, args.output_dir, Path(args.work_dir), suffix)
    finally:
        if lock is not None:
            os.close(lock)
    log(f"wrote {args.output_dir / f'reproduction{suffix}.json'}")
    return results


if __name__ == "__main__":
    main()
