"""`diffusers-spectrum demo --modality audio`: train a small waveform diffusion model (Dance Diffusion layout, with
the multi-resolution STFT regulariser) on the embedded sounds in a few CPU minutes, write WAVs and a band-spectrum
plot, export the stock `DanceDiffusionPipeline` folder and load it back with `DiffusionPipeline.from_pretrained`.

`run_audio_demo(output_dir)` returns (and writes as `demo_audio_summary.json`) a summary whose every number names
its source; `print_summary(summary)` prints it.
"""

import json
import time

import torch

from .utils.records import write_json


__all__ = ["print_summary", "run_audio_demo"]

SAMPLE_RATE = 16000
FULL = {"unet_config": "small", "sample_size": 4096, "steps": 150, "batch": 4, "clips": 4, "inference_steps": 50}
QUICK = {"unet_config": "tiny", "sample_size": 1024, "steps": 4, "batch": 2, "clips": 2, "inference_steps": 4}


def run_audio_demo(output_dir, quick: bool = False, seed: int = 0, num_threads: int = 1) -> dict:
    """Train, export, reload, generate and measure; returns the summary dict (also written as
    `output_dir/demo_audio_summary.json`).

    Args:
        output_dir: folder for the run (`train/` with the pipeline, `samples/*.wav`, `audio_spectra.png`).
        quick: a seconds-long smoke run (tiny UNet, 4 steps) instead of the few-minute demo.
        seed: training and sampling seed.
        num_threads: torch CPU threads.
    """
    from .data.audio import AudioTransform, audio_batches
    from .data.sources import embedded_audio_dir, load_audio_dataset
    from .evaluation.audio_analysis import analyze_waveforms, plot_band_spectra
    from .pipelines.audio import generate_audio, write_wavs
    from .pipelines.sampling import load_pipeline
    from .spectral.audio import band_center_frequencies, frequency_band_edges, log_spectral_distance
    from .training.audio import parse_args, train_audio
    from .utils.run_folders import record_run_files, restart_run_folder

    output_dir, before = restart_run_folder(output_dir, "demo-audio")
    torch.set_num_threads(num_threads)
    settings = QUICK if quick else FULL
    started = time.time()
    argv = [
        "--unet_config",
        settings["unet_config"],
        "--sample_size",
        str(settings["sample_size"]),
        "--sample_rate",
        str(SAMPLE_RATE),
        "--max_train_steps",
        str(settings["steps"]),
        "--train_batch_size",
        str(settings["batch"]),
        "--learning_rate",
        "1e-3",
        "--seed",
        str(seed),
        "--stft_weight",
        "0.05",
        "--checkpointing_steps",
        str(10**6),
        "--validation_steps",
        str(10**6),
        "--report_to",
        "none",
        "--output_dir",
        str(output_dir / "train"),
    ]
    pipeline_dir = train_audio(parse_args(argv))
    record_run_files(output_dir, before)
    train_seconds = time.time() - started
    metrics = json.loads((output_dir / "train" / "metrics.json").read_text())

    # Load back with diffusers alone, generate, write WAVs.
    pipe = load_pipeline(pipeline_dir)  # DiffusionPipeline.from_pretrained, strictly
    pipe.set_progress_bar_config(disable=True)
    clips = generate_audio(pipe, settings["clips"], settings["inference_steps"], seed=seed)
    wavs = write_wavs(clips, SAMPLE_RATE, output_dir / "samples")

    # Spectra of generated vs embedded sounds (centred crops, short clips skipped).
    bands = {"num_bands": 16, "min_frequency_hz": 50.0, "scale": "log"}
    transform = AudioTransform(SAMPLE_RATE, settings["sample_size"], random_crop=False, too_short="skip")
    real = torch.cat(list(audio_batches(load_audio_dataset(), 16, transform))).double()
    generated = analyze_waveforms(torch.from_numpy(clips).double(), SAMPLE_RATE, **bands)
    reference = analyze_waveforms(real, SAMPLE_RATE, **bands)
    distance = float(log_spectral_distance(generated["power"], reference["power"]))
    centres = band_center_frequencies(frequency_band_edges(SAMPLE_RATE, **bands)).numpy()
    plot_path = output_dir / "audio_spectra.png"
    plot_band_spectra(
        {"generated": generated["mean_band_power"], "embedded sounds": reference["mean_band_power"]},
        centres,
        plot_path,
        f"log-spectral distance {distance:.2f} dB",
    )

    summary = {
        "pipeline": {"value": str(pipeline_dir), "source": "train_audio export (stock DanceDiffusionPipeline)"},
        "pipeline_class": {"value": type(pipe).__name__, "source": "DiffusionPipeline.from_pretrained(pipeline)"},
        "train_steps": {"value": metrics["global_step"], "source": "train/metrics.json global_step"},
        "final_diffusion_loss": {"value": round(metrics["diffusion"], 4), "source": "train/metrics.json diffusion"},
        "final_stft_loss": {"value": round(metrics.get("stft", float("nan")), 4), "source": "train/metrics.json stft"},
        "seconds_per_step": {"value": metrics["seconds_per_step"], "source": "train/metrics.json (median)"},
        "train_seconds": {"value": round(train_seconds, 1), "source": "wall clock around train_audio"},
        "generated_clips": {"value": len(wavs), "source": f"{output_dir / 'samples'} (WAV, {SAMPLE_RATE} Hz)"},
        "clip_samples": {"value": int(clips.shape[-1]), "source": "generated array length"},
        "all_finite": {"value": bool(torch.isfinite(torch.from_numpy(clips)).all()), "source": "generated clips"},
        "generated_slope": {"value": round(generated["slope"], 3), "source": "spectral_slope of generated mean"},
        "embedded_slope": {"value": round(reference["slope"], 3), "source": "spectral_slope of embedded sounds"},
        "log_spectral_distance_db": {
            "value": round(distance, 2),
            "source": "log_spectral_distance(generated, embedded), 16 log bands",
        },
        "embedded_clips_analysed": {"value": reference["num_clips"], "source": "embedded sounds >= clip length"},
        "spectrum_plot": {"value": str(plot_path), "source": "plot_band_spectra"},
        "total_seconds": {"value": round(time.time() - started, 1), "source": "wall clock of run_audio_demo"},
        "quick": {"value": quick, "source": "argument"},
        "data": {"value": str(embedded_audio_dir()), "source": "embedded sounds (licences in metadata.jsonl)"},
    }
    write_json(output_dir / "demo_audio_summary.json", summary)
    record_run_files(output_dir, before)
    return summary


def print_summary(summary: dict) -> None:
    """One line per number: name, value and where it comes from."""
    width = max(len(name) for name in summary)
    for name, entry in summary.items():
        print(f"{name:<{width}}  {entry['value']}  [{entry['source']}]")
