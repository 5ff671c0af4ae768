"""`diffusers-spectrum analyze-audio`: band power spectra of audio on log-spaced (or mel) frequency bands, their
log-log slope, and the log-spectral distance between a generated and a reference set; a JSON report and a PNG plot.

A source is a local folder of audio files, a Hub / local `datasets` dataset with an `Audio` column, or a pipeline
folder (a `DanceDiffusionPipeline` or any diffusers audio pipeline returning `.audios`), from which `--num_samples`
clips are generated. Clips are resampled to `--sample_rate`, downmixed to mono and cropped to `--sample_size`
(centred crops; shorter clips are skipped and counted, as are unreadable files).

    diffusers-spectrum analyze-audio --audio_dir generated/ --reference_dir real/ --output_dir report/
    diffusers-spectrum analyze-audio --pipeline out/pipeline --reference_dir real/ --num_samples 16 --output_dir r/

Writes `output_dir/audio_report.json` (per set: clip count, skipped, mean band power, slope; the log-spectral distance,
its level-invariant form with the sets' mean dB offset removed, and that offset) and `output_dir/audio_spectra.png`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..spectral.audio import (
    band_center_frequencies,
    band_power_spectrum,
    frequency_band_edges,
    level_invariant_log_spectral_distance,
    log_spectral_distance,
    mean_level_offset_db,
    spectral_slope,
)
from ..utils.flags import add_flags
from ..utils.run_folders import claim_output_dir


if TYPE_CHECKING:
    from matplotlib.figure import Figure


__all__ = ["analyze_waveforms", "build_parser", "load_source", "main", "plot_band_spectra"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusers-spectrum analyze-audio",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio_dir", help="folder of audio files (wav/flac/ogg/...) to analyse.")
    add_flags(source, "--dataset_name", "--pipeline")
    reference = parser.add_mutually_exclusive_group()
    reference.add_argument("--reference_dir", help="folder of real audio to compare with (log-spectral distance).")
    reference.add_argument("--reference_dataset", help="Hub or local dataset of real audio to compare with.")
    add_flags(parser, "--output_dir", "--num_samples", required=("--output_dir",), num_samples=32)
    add_flags(parser, "--sample_rate", "--sample_size", sample_rate=None)  # default: the pipeline's, or 16 kHz, 1 s
    parser.add_argument("--num_bands", type=int, default=24, help="frequency bands. (%(default)s)")
    parser.add_argument("--min_frequency_hz", type=float, default=50.0, help="lowest band edge. (%(default)s)")
    parser.add_argument("--scale", choices=("log", "mel"), default="log", help="band spacing. (%(default)s)")
    add_flags(parser, "--audio_column", "--dataset_split", "--num_inference_steps", "--seed", num_inference_steps=100)
    return parser


def load_source(
    kind: str,
    value: str,
    sample_rate: int,
    sample_size: int,
    num_samples: int,
    *,
    split: str = "train",
    audio_column: str = "audio",
    num_inference_steps: int = 100,
    seed: int = 0,
) -> tuple[torch.Tensor, int, dict]:
    """`num_samples` `(N, 1, sample_size)` float64 mono clips of a `"folder"`, `"dataset"` or `"pipeline"` (generated,
    clip i seeded `seed + i`), the number of files skipped, and the clips per source sample rate."""
    from ..data.audio import AudioSkipCounter, AudioTransform, audio_batches
    from ..data.sources import load_audio_dataset

    if kind == "pipeline":
        return _generate(value, num_samples, num_inference_steps, seed, sample_size), 0, {}
    if kind == "folder" and not Path(value).is_dir():
        raise FileNotFoundError(
            f"--audio_dir / --reference_dir {value!r} is not a folder; pass a folder of audio files."
        )
    dataset = load_audio_dataset(
        dataset_name=value if kind == "dataset" else None,
        train_data_dir=value if kind == "folder" else None,
        split=split,
        audio_column=audio_column,
    )
    transform = AudioTransform(sample_rate, sample_size, channels=1, random_crop=False, too_short="skip")
    skipped = AudioSkipCounter()
    batches = list(audio_batches(dataset, 16, transform, audio_column, num_samples, skipped))
    if not batches:
        raise ValueError(
            f"{value!r}: no usable clip of at least {sample_size} samples at {sample_rate} Hz "
            f"({skipped.count} skipped: {skipped.reasons[:3]}); pass a smaller --sample_size."
        )
    print(f"{kind} {value}: {transform.resampling_summary()}")
    rates = {str(rate): n for rate, n in sorted(transform.source_rates.items())}
    return torch.cat(batches).double(), skipped.count, rates


def _generate(folder: str, num_samples: int, num_inference_steps: int, seed: int, sample_size: int) -> torch.Tensor:
    from ..pipelines.audio import generate_audio
    from ..pipelines.sampling import load_pipeline

    if not (Path(folder) / "model_index.json").is_file():
        raise FileNotFoundError(f"--pipeline {folder!r} is not a diffusers pipeline folder (no model_index.json).")
    pipe = load_pipeline(folder, kind="audio", command="analyze-audio --pipeline")  # strictly, audio only
    pipe.set_progress_bar_config(disable=True)
    clips = generate_audio(pipe, num_samples, num_inference_steps, seed, sample_size=sample_size)
    return torch.from_numpy(clips).double().mean(dim=1, keepdim=True)


def analyze_waveforms(waveforms: torch.Tensor, sample_rate: int, source: str = "the clips", **bands) -> dict:
    """Band powers `(N, num_bands)`, their mean, and the slope of the mean spectrum for `(N, C, T)` clips. Clips
    that are all silent (every sample 0) have no spectrum to fit: a `ValueError` naming `source`."""
    if not bool(waveforms.abs().amax() > 0):
        raise ValueError(
            f"{source}: all {waveforms.shape[0]} clips are silent (every sample is 0), so there is no spectrum or "
            "slope "
            "to measure; pass audio with sound in it (or check the files' gain / encoding)."
        )
    power = band_power_spectrum(waveforms, sample_rate, **bands)
    mean = power.mean(dim=0)
    slope = spectral_slope(mean, sample_rate, bands.get("min_frequency_hz", 50.0), None, bands.get("scale", "log"))
    return {"power": power, "mean_band_power": mean.tolist(), "slope": float(slope), "num_clips": int(power.shape[0])}


def plot_band_spectra(curves: dict, centres: np.ndarray, path: str | Path, title: str = "") -> Figure:
    """Mean band power of each set (name -> `(num_bands,)`) against band centre frequency, log-log; saved to `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, power in curves.items():
        power = np.asarray(power, dtype=np.float64)
        ax.plot(centres, np.where(power > 0, power, np.nan), marker="o", markersize=3, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("band centre frequency (Hz)")
    ax.set_ylabel("mean band power")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def _pipeline_defaults(folder: str) -> tuple[int | None, int | None]:
    import json

    config = Path(folder) / "unet" / "config.json"
    if not config.is_file():
        return None, None
    values = json.loads(config.read_text())
    return values.get("sample_rate"), values.get("sample_size")


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    for name in ("num_samples", "num_bands", "num_inference_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}.")
    rate, size = _pipeline_defaults(args.pipeline) if args.pipeline else (None, None)
    sample_rate = args.sample_rate or rate or 16000
    sample_size = args.sample_size or size or sample_rate
    bands = {"num_bands": args.num_bands, "min_frequency_hz": args.min_frequency_hz, "scale": args.scale}
    frequency_band_edges(sample_rate, **bands)  # clear error for bands that do not fit the rate

    claim_output_dir(args.output_dir, "analyze-audio", "audio_report.json", create=False)  # refused before work
    kind, value = (
        ("pipeline", args.pipeline)
        if args.pipeline
        else ("dataset", args.dataset_name)
        if args.dataset_name
        else ("folder", args.audio_dir)
    )
    sets = {"analysed": (kind, value)}
    if args.reference_dir or args.reference_dataset:
        sets["reference"] = (
            ("folder", args.reference_dir) if args.reference_dir else ("dataset", args.reference_dataset)
        )
    report = {"sample_rate": sample_rate, "sample_size": sample_size, "bands": bands, "sets": {}}
    powers, source_rates = {}, {}
    options = dict(
        split=args.dataset_split,
        audio_column=args.audio_column,
        num_inference_steps=args.num_inference_steps,
        seed=args.seed,
    )
    for name, (source_kind, source) in sets.items():
        loaded = load_source(source_kind, source, sample_rate, sample_size, args.num_samples, **options)
        waveforms, skipped, rates = loaded
        if rates:
            source_rates[f"{source_kind}:{source}"] = rates
        result = analyze_waveforms(waveforms, sample_rate, source=f"{source_kind} {source}", **bands)
        powers[name] = result.pop("power")
        report["sets"][name] = {"source": f"{source_kind}:{source}", "skipped": skipped, **result}
    report["source_sample_rates"] = source_rates  # clips per file sample rate (resampled unless = sample_rate)
    if "reference" in powers:
        pair = (powers["analysed"], powers["reference"])
        report["log_spectral_distance_db"] = float(log_spectral_distance(*pair))
        report["level_invariant_log_spectral_distance_db"] = float(level_invariant_log_spectral_distance(*pair))
        report["mean_level_offset_db"] = float(mean_level_offset_db(*pair))
    output_dir = claim_output_dir(args.output_dir, "analyze-audio", "audio_report.json")
    from ..utils.records import write_json

    write_json(output_dir / "audio_report.json", report)
    centres = band_center_frequencies(frequency_band_edges(sample_rate, **bands)).numpy()
    curves = {f"{name} ({report['sets'][name]['source']})": v["mean_band_power"] for name, v in report["sets"].items()}
    title = (
        f"log-spectral distance {report['log_spectral_distance_db']:.2f} dB (level-invariant "
        f"{report['level_invariant_log_spectral_distance_db']:.2f} dB, level offset "
        f"{report['mean_level_offset_db']:+.2f} dB)"
        if "log_spectral_distance_db" in report
        else ""
    )
    plot_band_spectra(curves, centres, output_dir / "audio_spectra.png", title)
    print(f"wrote {output_dir / 'audio_report.json'} and {output_dir / 'audio_spectra.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
