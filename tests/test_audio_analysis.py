"""`diffusers-spectrum analyze-audio` (evaluation.audio_analysis), the audio demo's quick mode and the ablation's
quick mode."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from diffusers_spectrum.evaluation import audio_analysis


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _folder(path: Path, gain: float, count: int = 6, rate: int = 16000) -> Path:
    """White-noise clips (the same seeds in every folder) times `gain`."""
    path.mkdir(parents=True)
    for i in range(count):
        noise = np.random.default_rng(i).uniform(-0.4, 0.4, rate).astype(np.float32)
        soundfile.write(path / f"clip_{i}.wav", gain * noise, rate, subtype="FLOAT")
    return path


def test_folder_vs_reference_report_and_plot(tmp_path):
    real = _folder(tmp_path / "real", 1.0)
    louder = _folder(tmp_path / "louder", 2.0)
    (louder / "broken.wav").write_bytes(b"not audio")
    out = tmp_path / "report"
    assert (
        audio_analysis.main(
            [
                "--audio_dir",
                str(louder),
                "--reference_dir",
                str(real),
                "--output_dir",
                str(out),
                "--sample_size",
                "8000",
            ]
        )
        == 0
    )
    report = json.loads((out / "audio_report.json").read_text())
    assert (out / "audio_spectra.png").stat().st_size > 0
    # A gain g on the same clips is exactly |20 log10 g| dB (log-spectral distance on power).
    assert report["log_spectral_distance_db"] == pytest.approx(20 * np.log10(2.0), abs=1e-6)
    assert report["mean_level_offset_db"] == pytest.approx(20 * np.log10(2.0), abs=1e-6)  # all of it is level
    assert report["level_invariant_log_spectral_distance_db"] == pytest.approx(0.0, abs=1e-6)
    assert report["sets"]["analysed"]["skipped"] == 1 and report["sets"]["analysed"]["num_clips"] == 6
    # White noise: flat spectrum, slope ~0 (independent: numpy periodogram of the same crops, fitted in log-log).
    crops = np.stack([soundfile.read(f)[0][4000:12000] for f in sorted(real.glob("*.wav"))])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(8000) / 8000)
    power = (np.abs(np.fft.rfft(crops * window)) ** 2 / (window**2).sum()).mean(0)
    frequencies = np.fft.rfftfreq(8000, 1 / 16000)
    keep = frequencies >= 50
    numpy_slope = np.polyfit(np.log(frequencies[keep]), np.log(power[keep]), 1)[0]
    assert abs(report["sets"]["reference"]["slope"]) < 0.1 and abs(numpy_slope) < 0.1


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--audio_dir"):
        audio_analysis.main(["--audio_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        audio_analysis.main(["--pipeline", str(tmp_path), "--output_dir", str(tmp_path / "o")])
    short = _folder(tmp_path / "short", 1.0, count=2, rate=8000)  # 1 s at 8 kHz -> 16000 samples at 16 kHz
    with pytest.raises(ValueError, match="smaller --sample_size"):
        audio_analysis.main(["--audio_dir", str(short), "--output_dir", str(tmp_path / "o"), "--sample_size", "20000"])
    with pytest.raises(ValueError, match="num_samples"):
        audio_analysis.main(["--audio_dir", str(short), "--output_dir", str(tmp_path / "o"), "--num_samples", "0"])


@pytest.mark.slow
def test_pipeline_source(tmp_path):
    from diffusers_spectrum.training import audio

    pipeline_dir = audio.train_audio(
        audio.parse_args(
            [
                "--unet_config",
                "tiny",
                "--sample_size",
                "512",
                "--max_train_steps",
                "1",
                "--train_batch_size",
                "2",
                "--report_to",
                "none",
                "--output_dir",
                str(tmp_path / "run"),
            ]
        )
    )
    out = tmp_path / "report"
    audio_analysis.main(
        [
            "--pipeline",
            str(pipeline_dir),
            "--num_samples",
            "3",
            "--num_inference_steps",
            "2",
            "--num_bands",
            "8",
            "--output_dir",
            str(out),
        ]
    )
    report = json.loads((out / "audio_report.json").read_text())
    assert report["sample_size"] == 512 and report["sets"]["analysed"]["num_clips"] == 3
    assert "log_spectral_distance_db" not in report


@pytest.mark.slow
def test_demo_quick(tmp_path):
    from diffusers_spectrum.demo_audio import print_summary, run_audio_demo

    summary = run_audio_demo(tmp_path / "demo", quick=True)
    assert summary["pipeline_class"]["value"] == "DanceDiffusionPipeline"
    assert summary["all_finite"]["value"] is True
    assert summary["clip_samples"]["value"] == 1024
    assert len(list((tmp_path / "demo" / "samples").glob("*.wav"))) == summary["generated_clips"]["value"] == 2
    assert (tmp_path / "demo" / "audio_spectra.png").is_file()
    assert json.loads((tmp_path / "demo" / "demo_audio_summary.json").read_text()) == json.loads(json.dumps(summary))
    assert all(set(entry) == {"value", "source"} for entry in summary.values())
    print_summary(summary)


@pytest.mark.slow
def test_ablation_quick_shards_json_and_figure(tmp_path):
    spec = importlib.util.spec_from_file_location("ablate", REPO / "benchmarks" / "ablate_audio_regularization.py")
    ablate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablate)
    # two shards fill one JSON; the second finds every unit and writes the analysis and the figure
    half = ablate.main(["--quick", "--output_dir", str(tmp_path), "--shard", "0/2"])
    assert len(half["units"]) == 4 and "analysis" not in half
    report = ablate.main(["--quick", "--output_dir", str(tmp_path), "--shard", "1/2"])
    saved = json.loads((tmp_path / "audio_regularization.json").read_text())
    assert set(saved["summary"]) == {"none", "fourier", "wavelet", "stft"}
    assert len(saved["units"]) == 8 and {"command", "settings", "versions", "processes"} <= set(saved)
    for row in saved["units"].values():
        assert np.isfinite(row["log_spectral_distance_db"]) and row["seconds_per_step"] > 0
        assert row["level_invariant_lsd_db"] <= row["log_spectral_distance_db"] + 1e-9
        assert row["unit_seconds"] > 0 and row["train_cpu_seconds"] > 0 and row["generate_seconds"] > 0
        assert {f"{ablate.peak_name(b)}_contrast_db" for b in ablate.peak_bands(saved)} <= set(row)
    for anchor in ("floor", "noise"):
        assert set(saved[anchor]) == {"log_spectral_distance_db", "level_invariant_lsd_db", "level_offset_db"}
    assert saved["noise"]["level_invariant_lsd_db"] > saved["floor"]["level_invariant_lsd_db"]
    assert saved["heldout_files"] == [
        "speech_kal16_1.flac",
        "speech_slt_1.flac",
        "theme_camera_shutter.flac",
        "theme_dialog_information.flac",
    ]
    family = saved["analysis"]["family"]
    assert len(family) == 3 * 2 and all(r["outcome"] != "one run" for r in family)  # two seeds: intervals
    assert len(saved["analysis"]["peaks"]) == 4 * len(ablate.peak_bands(saved))
    assert (tmp_path / "audio_regularization.png").is_file()
    assert report["summary"]["none"]["step_overhead"] == 0
    # the generated block, from the JSON alone
    text = ablate.markdown(saved)
    assert "Does any arm learn the held-out spectral peaks?" in text and "white noise" in text
    assert "Incomplete" not in text
