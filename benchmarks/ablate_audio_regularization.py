#!/usr/bin/env python
"""Ablation: the same small Dance Diffusion UNet1DModel and budget trained with no regulariser, the Fourier loss,
the wavelet loss or the multi-resolution STFT loss (3 seeds each), on the embedded sounds; generated clips are
compared with held-out clips by the log-spectral distance on log-spaced frequency bands, and the step time is
measured.

    python benchmarks/ablate_audio_regularization.py            # full run -> docs/audio_regularization.json,
                                                                #   docs/audio_regularization.png, table in docs/AUDIO.md
    python benchmarks/ablate_audio_regularization.py --quick --output_dir /tmp/ablation   # seconds, shape check only

Incremental: a run whose settings are already in the JSON is skipped, so an interrupted ablation resumes where it
stopped. The held-out set is every fourth embedded file (by sorted name); the rest trains. The Fréchet distance
stays pluggable: pass embeddings of your own to `diffusers_spectrum.evaluation.generation_metrics` if you have an
audio embedding model; this script only uses the offline band-spectrum distance.
"""

import argparse
import hashlib
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


REPO = Path(__file__).resolve().parents[1]
TABLE_START, TABLE_END = "<!-- ablation-table:start -->", "<!-- ablation-table:end -->"
REGULARIZERS = {  # name -> trainer flags (weights chosen once, before any run; see docs/AUDIO.md)
    "none": [],
    "fourier": ["--fourier_weight", "0.1"],
    "wavelet": ["--wavelet_weight", "0.1"],
    "stft": ["--stft_weight", "0.05"],
}
FULL = {"unet_config": "small", "sample_size": 2048, "steps": 150, "batch": 4, "lr": 1e-3, "seeds": [0, 1, 2],
        "clips": 8, "inference_steps": 20, "heldout_crops": 4}  # fmt: skip
QUICK = {"unet_config": "tiny", "sample_size": 512, "steps": 2, "batch": 2, "lr": 1e-3, "seeds": [0],
         "clips": 2, "inference_steps": 2, "heldout_crops": 1}  # fmt: skip
BANDS = {"num_bands": 24, "min_frequency_hz": 50.0, "scale": "log"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 steps, 1 seed (a smoke test).")
    parser.add_argument("--output_dir", default=str(REPO / "docs"), help="where the JSON / PNG (/ AUDIO.md) go.")
    parser.add_argument("--work_dir", default=None, help="training folders (default: a temporary folder).")
    parser.add_argument(
        "--num_threads",
        type=int,
        default=1,
        help="torch threads (1: two threads on the shared 2-core machine oversubscribe).",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds.")
    return parser.parse_args(argv)


def split_embedded(folder: Path) -> tuple[Path, Path]:
    """Copy the embedded sounds into `folder/train` and `folder/heldout` (every fourth file, sorted by name)."""
    from diffusers_spectrum.training.audio_data import embedded_audio_dir, list_audio_files

    train, heldout = folder / "train", folder / "heldout"
    for path in (train, heldout):
        path.mkdir(parents=True, exist_ok=True)
    for i, file in enumerate(list_audio_files(embedded_audio_dir())):
        shutil.copy(file, (heldout if i % 4 == 3 else train) / file.name)
    return train, heldout


def band_powers(folder: Path, settings: dict, sample_rate: int = 16000) -> torch.Tensor:
    """`(N, num_bands)` band powers of `heldout_crops` random crops per file of `folder` (zero-padded short clips
    are left out: silence would bias the mean)."""
    from diffusers_spectrum.spectral.audio import band_power_spectrum
    from diffusers_spectrum.training.audio_data import AudioTransform, audio_batches, load_audio_dataset

    dataset = load_audio_dataset(train_data_dir=folder)
    rows = []
    for crop_seed in range(settings["heldout_crops"]):
        transform = AudioTransform(sample_rate, settings["sample_size"], too_short="skip", seed=100 + crop_seed)
        for batch in audio_batches(dataset, 16, transform):
            rows.append(band_power_spectrum(batch.double(), sample_rate, **BANDS))
    return torch.cat(rows)


def run_key(name: str, seed: int, settings: dict) -> str:
    digest = hashlib.sha1(json.dumps([REGULARIZERS[name], settings], sort_keys=True).encode()).hexdigest()[:10]
    return f"{name}-seed{seed}-{digest}"


def train_and_measure(name: str, seed: int, settings: dict, train_dir: Path, real: torch.Tensor, work: Path) -> dict:
    """Train one configuration, generate clips from the exported pipeline, measure the distance and step time."""
    from diffusers import DiffusionPipeline

    from diffusers_spectrum.spectral.audio import band_power_spectrum, log_spectral_distance
    from diffusers_spectrum.training.audio import generate_audio, train_audio
    from diffusers_spectrum.training.audio import parse_args as trainer_args

    output = work / f"{name}-{seed}"
    shutil.rmtree(output, ignore_errors=True)
    argv = [
        "--train_data_dir", str(train_dir), "--unet_config", settings["unet_config"],
        "--sample_size", str(settings["sample_size"]), "--max_train_steps", str(settings["steps"]),
        "--train_batch_size", str(settings["batch"]), "--learning_rate", str(settings["lr"]), "--seed", str(seed),
        "--checkpointing_steps", str(10**6), "--validation_steps", str(10**6), "--report_to", "none",
        "--output_dir", str(output), *REGULARIZERS[name],
    ]  # fmt: skip
    started = time.time()
    pipeline_dir = train_audio(trainer_args(argv))
    metrics = json.loads((output / "metrics.json").read_text())
    pipe = DiffusionPipeline.from_pretrained(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    clips = generate_audio(pipe, settings["clips"], settings["inference_steps"], seed=1000)
    generated = band_power_spectrum(torch.from_numpy(clips).double(), 16000, **BANDS)
    result = {
        "regularizer": name,
        "seed": seed,
        "log_spectral_distance_db": float(log_spectral_distance(generated, real)),
        "seconds_per_step": metrics["seconds_per_step"],
        "final_diffusion_loss": metrics["diffusion"],
        "wall_seconds": round(time.time() - started, 1),
        "generated_band_power": generated.mean(0).tolist(),
    }
    shutil.rmtree(output, ignore_errors=True)
    return result


def summarize(runs: dict) -> dict:
    """Per regulariser: mean and std over seeds of the distance, step time and its overhead against `none`."""
    table = {}
    for name in REGULARIZERS:
        rows = [r for r in runs.values() if r["regularizer"] == name]
        if not rows:
            continue
        lsd = np.array([r["log_spectral_distance_db"] for r in rows])
        step = np.array([r["seconds_per_step"] for r in rows])
        table[name] = {"seeds": len(rows), "lsd_db_mean": float(lsd.mean()), "lsd_db_std": float(lsd.std()),
                       "seconds_per_step": float(np.median(step))}  # fmt: skip
    base = table.get("none", {}).get("seconds_per_step")
    for row in table.values():
        row["step_overhead"] = row["seconds_per_step"] / base - 1 if base else None
    return table


def write_figure(report: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from diffusers_spectrum.spectral.audio import band_center_frequencies, frequency_band_edges

    centres = band_center_frequencies(frequency_band_edges(16000, **BANDS)).numpy()
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(centres, report["heldout_band_power"], color="black", linewidth=2, label="held-out audio")
    for name in REGULARIZERS:
        rows = [r["generated_band_power"] for r in report["runs"].values() if r["regularizer"] == name]
        if rows:
            ax.plot(centres, np.mean(rows, axis=0), marker="o", markersize=3, label=f"generated, {name}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("band centre frequency (Hz)")
    ax.set_ylabel("mean band power")
    ax.set_title(f"{report['settings']['steps']} steps x {len(report['settings']['seeds'])} seeds", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"Budget: `{s['unet_config']}` UNet1DModel, clips of {s['sample_size']} samples at 16 kHz, {s['steps']} steps x "
        f"batch {s['batch']} (lr {s['lr']}), {len(s['seeds'])} seeds, {s['clips']} generated clips per run "
        f"({s['inference_steps']} IPNDM steps), on {report['machine']} with {report['num_threads']} torch threads; "
        f"total wall time {report['wall_seconds'] / 60:.1f} min.",
        "",
        "| regulariser | log-spectral distance (dB, mean ± std over seeds) | s / step | step overhead |",
        "| --- | --- | --- | --- |",
    ]
    for name, row in report["summary"].items():
        overhead = "—" if name == "none" or row["step_overhead"] is None else f"{100 * row['step_overhead']:+.0f}%"
        lines.append(f"| {name} | {row['lsd_db_mean']:.2f} ± {row['lsd_db_std']:.2f} | "
                     f"{row['seconds_per_step']:.3f} | {overhead} |")  # fmt: skip
    lines += ["", f"Reference: training crops vs held-out crops, {report['train_vs_heldout_lsd_db']:.2f} dB "
              "(what real audio of the same kind scores)."]  # fmt: skip
    return "\n".join(lines)


def update_page(page: Path, table: str) -> None:
    text = page.read_text(encoding="utf-8") if page.exists() else f"{TABLE_START}\n{TABLE_END}\n"
    if TABLE_START not in text or TABLE_END not in text:
        text += f"\n{TABLE_START}\n{TABLE_END}\n"
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    page.write_text(f"{head}{TABLE_START}\n{table}\n{TABLE_END}{tail}", encoding="utf-8")


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    import diffusers

    import diffusers_spectrum
    from diffusers_spectrum.spectral.audio import log_spectral_distance
    from diffusers_spectrum.training.utils import write_json

    settings = dict(QUICK if args.quick else FULL)
    if args.seeds is not None:
        settings["seeds"] = list(args.seeds)
    output_dir = Path(args.output_dir)
    json_path = output_dir / "audio_regularization.json"
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    runs = previous.get("runs", {}) if previous.get("settings") == settings else {}
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="audio-ablation-"))
    # a given --work_dir must be new, empty or this study's: its data/ and run folders are replaced, nothing else
    from diffusers_spectrum.run_folders import claim_output_dir

    claim_output_dir(work, "ablate-audio-regularization", "data", flag="--work_dir")
    started = time.time()
    train_dir, heldout_dir = split_embedded(work / "data")
    real = band_powers(heldout_dir, settings)
    train_real = band_powers(train_dir, settings)
    report = {
        "command": " ".join([Path(sys.argv[0]).name] + list(sys.argv[1:] if argv is None else argv)),
        "settings": settings,
        "regularizer_flags": REGULARIZERS,
        "bands": BANDS,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "diffusers_spectrum": diffusers_spectrum.__version__},
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "num_threads": args.num_threads,
        "heldout_clips": int(real.shape[0]),
        "heldout_band_power": real.mean(0).tolist(),
        "train_vs_heldout_lsd_db": float(log_spectral_distance(train_real, real)),
        "runs": runs,
        "wall_seconds": previous.get("wall_seconds", 0.0) if runs else 0.0,
    }  # fmt: skip
    report["wall_seconds"] += time.time() - started  # data split and held-out spectra of this invocation
    for seed in settings["seeds"]:
        for name in REGULARIZERS:
            key = run_key(name, seed, settings)
            if key in runs:
                print(f"skip {key} (done)", flush=True)
                continue
            run_start = time.time()
            runs[key] = train_and_measure(name, seed, settings, train_dir, real, work)
            report["wall_seconds"] += time.time() - run_start
            report["summary"] = summarize(runs)
            write_json(json_path, report)
            print(f"{key}: {runs[key]['log_spectral_distance_db']:.2f} dB, {runs[key]['seconds_per_step']:.3f} s/step",
                  flush=True)  # fmt: skip
    report["summary"] = summarize(runs)
    report["wall_seconds"] = round(report["wall_seconds"], 1)
    write_json(json_path, report)
    write_figure(report, output_dir / "audio_regularization.png")
    if not args.quick:
        update_page(output_dir / "AUDIO.md", markdown(report))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
