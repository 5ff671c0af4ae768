#!/usr/bin/env python
"""Ablation: the same small Dance Diffusion UNet1DModel and budget trained with no regulariser, the Fourier loss,
the wavelet loss or the multi-resolution STFT loss (3 seeds each), on the embedded sounds; generated clips are
compared with held-out clips by the log-spectral distance on log-spaced frequency bands, raw and level-invariant
(each run's mean dB offset removed, so a louder or quieter run is not mistaken for a better or worse spectrum), and
the step time is measured. Arms are compared with `none` per shared seed (`evaluation.statistics`: t and bootstrap
intervals, Holm's correction over every arm x tested metric); every measured number is a claim.

    python benchmarks/ablate_audio_regularization.py            # full run -> docs/audio_regularization.json,
                                                                #   the figure, the table in docs/AUDIO.md
    python benchmarks/ablate_audio_regularization.py --quick --output_dir /tmp/ablation   # seconds, shape check only
    python benchmarks/ablate_audio_regularization.py --reanalyse docs/audio_regularization.json   # no training

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
    parser.add_argument("--reanalyse", default=None, help="a stored JSON: rewrite its analysis, figure and table.")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds.")
    return parser.parse_args(argv)


def split_embedded(folder: Path) -> tuple[Path, Path]:
    """Copy the embedded sounds into `folder/train` and `folder/heldout` (every fourth file, sorted by name)."""
    from diffusers_spectrum.data.sources import embedded_audio_dir, list_audio_files

    train, heldout = folder / "train", folder / "heldout"
    for path in (train, heldout):
        path.mkdir(parents=True, exist_ok=True)
    for i, file in enumerate(list_audio_files(embedded_audio_dir())):
        shutil.copy(file, (heldout if i % 4 == 3 else train) / file.name)
    return train, heldout


def band_powers(folder: Path, settings: dict, sample_rate: int = 16000) -> torch.Tensor:
    """`(N, num_bands)` band powers of `heldout_crops` random crops per file of `folder` (zero-padded short clips
    are left out: silence would bias the mean)."""
    from diffusers_spectrum.data.audio import AudioTransform, audio_batches
    from diffusers_spectrum.data.sources import load_audio_dataset
    from diffusers_spectrum.spectral.audio import band_power_spectrum

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

    from diffusers_spectrum.pipelines.audio import generate_audio
    from diffusers_spectrum.spectral.audio import band_power_spectrum
    from diffusers_spectrum.training.audio import parse_args as trainer_args
    from diffusers_spectrum.training.audio import train_audio

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
        **distances(generated.mean(0), real.mean(0)),
        "seconds_per_step": metrics["seconds_per_step"],
        "final_diffusion_loss": metrics["diffusion"],
        "wall_seconds": round(time.time() - started, 1),
        "generated_band_power": generated.mean(0).tolist(),
    }
    shutil.rmtree(output, ignore_errors=True)
    return result


def distances(generated_mean, real_mean) -> dict:
    """The raw and level-invariant log-spectral distances and the removed level offset (dB) between two sets' mean
    band powers (`spectral.audio`; the distances depend on the set means only, so stored means recompute them)."""
    from diffusers_spectrum.spectral.audio import (
        level_invariant_log_spectral_distance,
        log_spectral_distance,
        mean_level_offset_db,
    )

    pair = (torch.as_tensor(generated_mean, dtype=torch.float64)[None], torch.as_tensor(real_mean,
            dtype=torch.float64)[None])  # fmt: skip
    return {
        "log_spectral_distance_db": float(log_spectral_distance(*pair)),
        "level_invariant_lsd_db": float(level_invariant_log_spectral_distance(*pair)),
        "level_offset_db": float(mean_level_offset_db(*pair)),
    }


METRIC_LABELS = {
    "log_spectral_distance_db": "log-spectral distance (dB)",
    "level_invariant_lsd_db": "level-invariant log-spectral distance (dB)",
    "final_diffusion_loss": "final diffusion loss",
    "seconds_per_step": "seconds per step",
    "level_offset_db": "level offset (dB, generated - held-out)",
}
TESTED = ("log_spectral_distance_db", "level_invariant_lsd_db", "final_diffusion_loss")


def summarize(runs: dict) -> dict:
    """Per regulariser: mean and sample SD (ddof 1) over seeds of every measured number, the median step time and
    its overhead against `none`."""
    from diffusers_spectrum.evaluation.statistics import mean_sd

    table = {}
    for name in REGULARIZERS:
        rows = [r for r in runs.values() if r["regularizer"] == name]
        if not rows:
            continue
        table[name] = {"seeds": len(rows), "seconds_per_step": float(np.median([r["seconds_per_step"] for r in rows]))}
        for metric in METRIC_LABELS:
            stat = mean_sd(r[metric] for r in rows)
            table[name][f"{metric}_mean"] = stat["mean"]
            table[name][f"{metric}_sd"] = stat["sd"] if stat["n"] > 1 else 0.0
    base = table.get("none", {}).get("seconds_per_step")
    for row in table.values():
        row["step_overhead"] = row["seconds_per_step"] / base - 1 if base else None
    return table


def analyse(runs: dict) -> dict:
    """Paired comparisons of each regulariser with `none` per shared seed: one Holm family over the arms x the
    distances and the final diffusion loss; the step time and the level offset paired the same way, uncorrected."""
    from diffusers_spectrum.evaluation.statistics import compare_arms

    values: dict[str, dict] = {}
    for run in runs.values():
        for metric in METRIC_LABELS:
            values.setdefault(run["regularizer"], {}).setdefault(metric, {})[run["seed"]] = float(run[metric])
    arms = [name for name in REGULARIZERS if name != "none" and name in values]
    if "none" not in values or not arms:
        return {"family": [], "descriptive": []}
    family = compare_arms(values, "none", {m: True for m in TESTED}, arms=arms)
    descriptive = compare_arms(values, "none", {"seconds_per_step": True, "level_offset_db": True}, arms=arms,
                               correction="none")  # fmt: skip
    return {"family": family, "descriptive": descriptive}


def add_level_invariant(report: dict) -> list[str]:
    """Recompute the level-invariant distance and the offset of stored runs that lack them (from their stored mean
    band powers, exactly), and the floor's; returns what could not be recomputed."""
    real = report["heldout_band_power"]
    for run in report["runs"].values():
        if "level_invariant_lsd_db" not in run:
            run.update(distances(run["generated_band_power"], real))
    return []


def write_figure(report: dict, path: Path) -> None:
    """Mean band power of the held-out audio and of each arm's generated clips (left), and the same with each run's
    mean dB offset removed before averaging (right: the shapes the level-invariant distance compares)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from diffusers_spectrum.spectral.audio import band_center_frequencies, frequency_band_edges

    centres = band_center_frequencies(frequency_band_edges(16000, **BANDS)).numpy()
    real = np.asarray(report["heldout_band_power"])
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    raw, aligned = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for ax in (raw, aligned):
        ax.plot(centres, real, color="black", linewidth=2, label="held-out audio")
    for name in REGULARIZERS:
        runs = [r for r in report["runs"].values() if r["regularizer"] == name]
        if not runs:
            continue
        powers = np.asarray([r["generated_band_power"] for r in runs])
        raw.plot(centres, powers.mean(0), marker="o", markersize=3, label=f"generated, {name}")
        offsets = np.asarray([r["level_offset_db"] for r in runs])  # each run's mean dB offset, removed
        shapes = 10 * np.log10(powers) - offsets[:, None]
        aligned.plot(centres, 10 ** (shapes.mean(0) / 10), marker="o", markersize=3, label=f"{name}, level removed")
    for ax, title in ((raw, "mean band power"), (aligned, "each run's mean dB offset removed")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("band centre frequency (Hz)")
        ax.set_ylabel("band power")
        ax.set_title(f"{title}; {report['settings']['steps']} steps x {len(report['settings']['seeds'])} seeds",
                     fontsize=9)  # fmt: skip
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def markdown(report: dict) -> str:
    """The generated block of docs/AUDIO.md: budget, table with the floor, paired comparisons, every claim."""
    from diffusers_spectrum.evaluation.statistics import comparison_table

    s, analysis = report["settings"], report["analysis"]
    lines = [
        f"Budget: `{s['unet_config']}` UNet1DModel, clips of {s['sample_size']} samples at 16 kHz, {s['steps']} "
        f"steps x batch {s['batch']} (lr {s['lr']}), {len(s['seeds'])} seeds, {s['clips']} generated clips per run "
        f"({s['inference_steps']} IPNDM steps), on {report['machine']} with {report['num_threads']} torch threads; "
        f"total wall time {report['wall_seconds'] / 60:.1f} min (each run's wall seconds are in the JSON).",
    ]
    if report.get("reanalysis"):
        lines += ["", f"Re-analysed without new training (`{report['reanalysis']['command']}`, commit "
                  f"{report['reanalysis']['commit']}): the level-invariant distances, the paired statistics and the "
                  "claims are recomputed from the stored runs (the distances depend only on the stored mean band "
                  "powers)."]  # fmt: skip
    lines += [
        "",
        "| regulariser | log-spectral distance (dB) | level-invariant (dB) | level offset (dB) | final diffusion "
        "loss | s / step | step overhead |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in report["summary"].items():
        overhead = "—" if name == "none" or row["step_overhead"] is None else f"{100 * row['step_overhead']:+.0f}%"
        shown = ("log_spectral_distance_db", "level_invariant_lsd_db", "level_offset_db", "final_diffusion_loss")
        cells = [f"{row[f'{m}_mean']:.3g} ± {row[f'{m}_sd']:.2g}" for m in shown]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['seconds_per_step']:.3f} | {overhead} |")
    floor = report["floor"]
    lines += [
        f"| data floor: training crops vs held-out crops | {floor['log_spectral_distance_db']:.3g} | "
        f"{floor['level_invariant_lsd_db']:.3g} | {floor['level_offset_db']:+.3g} | | | |",
        "",
        "Mean ± sample SD (ddof 1) over seeds. The level-invariant distance removes each run's mean dB offset against "
        "the held-out audio (`spectral.audio.level_invariant_log_spectral_distance`): it compares the shape of the "
        "spectrum only; the raw distance mixes shape and loudness.",
        "",
        "Paired per seed against `none` (t interval of the mean difference, Holm's correction over the 3 arms x the "
        "two distances and the final diffusion loss; **separated** only when the corrected interval excludes 0):",
        "",
        *comparison_table(analysis["family"], labels=METRIC_LABELS),
        "",
        "Step time and level offset, paired the same way, uncorrected:",
        "",
        *comparison_table(analysis["descriptive"], labels=METRIC_LABELS, corrected=False),
        "",
        "Every claim, for and against:",
        "",
    ]
    for row in analysis["family"] + analysis["descriptive"]:
        tested = row["metric"] in TESTED
        lines.append(f"- {row['arm']} vs none, {METRIC_LABELS[row['metric']]}: {row['arm_mean']:.4g} vs "
                     f"{row['baseline_mean']:.4g}: **{row['outcome']}**"
                     f"{' (Holm-corrected)' if tested else ' (uncorrected, descriptive)'}.")  # fmt: skip
    return "\n".join(lines)


def update_page(page: Path, table: str) -> None:
    text = page.read_text(encoding="utf-8") if page.exists() else f"{TABLE_START}\n{TABLE_END}\n"
    if TABLE_START not in text or TABLE_END not in text:
        text += f"\n{TABLE_START}\n{TABLE_END}\n"
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    page.write_text(f"{head}{TABLE_START}\n{table}\n{TABLE_END}{tail}", encoding="utf-8")


def _git_commit() -> str:
    import subprocess

    try:
        command = ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def finish(report: dict, output_dir: Path, page: bool) -> None:
    """Summary, analysis, JSON, figure and (full runs) the AUDIO.md block."""
    from diffusers_spectrum.utils.records import write_json

    report["summary"] = summarize(report["runs"])
    report["analysis"] = analyse(report["runs"])
    write_json(output_dir / "audio_regularization.json", report)
    write_figure(report, output_dir / "audio_regularization.png")
    if page:
        update_page(output_dir / "AUDIO.md", markdown(report))


def reanalyse(json_path: Path, output_dir: Path) -> dict:
    """A stored JSON's level-invariant distances (from its stored mean band powers), the floor's (the training
    crops' spectrum recomputed from the embedded sounds with the stored settings), statistics, figure and table."""
    report = json.loads(Path(json_path).read_text())
    add_level_invariant(report)
    if "floor" not in report:
        work = Path(tempfile.mkdtemp(prefix="audio-reanalysis-"))
        try:
            train_dir, heldout_dir = split_embedded(work / "data")
            real, train_real = band_powers(heldout_dir, report["settings"]), band_powers(train_dir, report["settings"])
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if not np.allclose(real.mean(0).numpy(), report["heldout_band_power"], rtol=1e-6):
            raise ValueError("reanalyse: the held-out spectrum recomputed here differs from the stored one.")
        report["floor"] = distances(train_real.mean(0), real.mean(0))
    report["reanalysis"] = {"command": " ".join(["python", *sys.argv]), "commit": _git_commit()}
    finish(report, Path(output_dir), page=True)
    return report


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    if args.reanalyse:
        return reanalyse(Path(args.reanalyse), Path(args.output_dir))
    import diffusers

    import diffusers_spectrum
    from diffusers_spectrum.utils.records import write_json

    settings = dict(QUICK if args.quick else FULL)
    if args.seeds is not None:
        settings["seeds"] = list(args.seeds)
    output_dir = Path(args.output_dir)
    json_path = output_dir / "audio_regularization.json"
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    runs = previous.get("runs", {}) if previous.get("settings") == settings else {}
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="audio-ablation-"))
    # a given --work_dir must be new, empty or this study's: its data/ and run folders are replaced, nothing else
    from diffusers_spectrum.utils.run_folders import claim_output_dir

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
        "train_band_power": train_real.mean(0).tolist(),
        "floor": distances(train_real.mean(0), real.mean(0)),
        "train_vs_heldout_lsd_db": distances(train_real.mean(0), real.mean(0))["log_spectral_distance_db"],
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
            print(f"{key}: {runs[key]['log_spectral_distance_db']:.2f} dB (level-invariant "
                  f"{runs[key]['level_invariant_lsd_db']:.2f}), {runs[key]['seconds_per_step']:.3f} s/step",
                  flush=True)  # fmt: skip
    report["wall_seconds"] = round(report["wall_seconds"], 1)
    finish(report, output_dir, page=not args.quick)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
