"""The waveform diffusion trainer (`diffusers_spectrum.training.audio`): the objective is the one
`DanceDiffusionPipeline`'s IPNDMScheduler samples with, each regulariser trains, the export loads with plain
diffusers, resume is exact, and bad audio files are skipped or padded and counted."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from diffusers import DiffusionPipeline, IPNDMScheduler
from safetensors.torch import load_file

from diffusers_spectrum.data.sources import embedded_audio_dir
from diffusers_spectrum.diffusion import v_diffusion
from diffusers_spectrum.losses.spectral_regularizers import spectral_regularizer_terms
from diffusers_spectrum.losses.stft import fit_stft_resolutions
from diffusers_spectrum.training import audio
from diffusers_spectrum.training.args import spectral_regularizers


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: two threads on the shared 2-core machine oversubscribe and run many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------------------------------
# The objective against the sampler


def test_ipndm_times_are_the_cosine_angle():
    """IPNDM feeds t with (alpha, sigma) = (cos(pi t / 2), sin(pi t / 2)), from its own alphas / betas."""
    scheduler = IPNDMScheduler()
    scheduler.set_timesteps(10)
    t = scheduler.timesteps.double()
    np.testing.assert_allclose(scheduler.alphas[:-1].double(), torch.cos(math.pi * t / 2), atol=1e-6)
    np.testing.assert_allclose(scheduler.betas[:-1].double(), torch.sin(math.pi * t / 2), atol=1e-6)
    alpha, sigma = v_diffusion.v_diffusion_alphas_sigmas(t)
    np.testing.assert_allclose(alpha, np.cos(np.pi * t.numpy() / 2), atol=1e-12)
    np.testing.assert_allclose(sigma, np.sin(np.pi * t.numpy() / 2), atol=1e-12)


@pytest.mark.parametrize("index", [1, 4, 8])
def test_ipndm_step_with_the_true_velocity_is_exact(index):
    """Fed the true v at x_t = alpha x0 + sigma eps, IPNDM's first step lands exactly on alpha' x0 + sigma' eps at
    the next time (its eps and x0 estimates are exact): the quantity trained is the one the sampler consumes."""
    generator = torch.Generator().manual_seed(index)
    x0 = torch.rand(2, 1, 64, generator=generator, dtype=torch.float64) * 2 - 1
    noise = torch.randn(2, 1, 64, generator=generator, dtype=torch.float64)
    scheduler = IPNDMScheduler()
    scheduler.set_timesteps(10)
    scheduler.set_begin_index(index)
    t, t_next = scheduler.timesteps[index], scheduler.timesteps[index + 1]
    times = torch.full((2,), float(t), dtype=torch.float64)
    x_t = v_diffusion.v_diffusion_inputs(x0, noise, times)
    previous = scheduler.step(v_diffusion.v_diffusion_target(x0, noise, times), t, x_t).prev_sample
    a, s = math.cos(math.pi * float(t_next) / 2), math.sin(math.pi * float(t_next) / 2)
    # the scheduler's tables are float32: relative error ~1e-7 on values of order 3
    np.testing.assert_allclose(previous.numpy(), (a * x0 + s * noise).numpy(), atol=1e-5)


def test_v_objective_closed_forms():
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 2, 2, 32, generator=generator, dtype=torch.float64).unbind(0)
    t = torch.tensor([0.1, 0.8], dtype=torch.float64)
    a, s = np.cos(np.pi * t.numpy() / 2)[:, None, None], np.sin(np.pi * t.numpy() / 2)[:, None, None]
    x_t = v_diffusion.v_diffusion_inputs(x0, noise, t)
    v = v_diffusion.v_diffusion_target(x0, noise, t)
    np.testing.assert_allclose(x_t, a * x0.numpy() + s * noise.numpy(), atol=1e-12)
    np.testing.assert_allclose(v, a * noise.numpy() - s * x0.numpy(), atol=1e-12)
    np.testing.assert_allclose(v_diffusion.x0_from_v_diffusion(v, x_t, t), x0, atol=1e-12)
    np.testing.assert_allclose(v_diffusion.v_diffusion_snr(t), (a / s).ravel() ** 2, rtol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Shapes and flags


def test_sample_size_must_fit_the_unet():
    model = audio.build_audio_unet("tiny", 1024, 16000, 1)
    with pytest.raises(ValueError, match="multiple of 16"):
        audio.check_sample_size(model, 1000)
    with pytest.raises(ValueError, match="--sample_size 40 does not fit"):
        audio.build_audio_unet("tiny", 40, 16000, 1)


def test_stft_resolutions_are_fitted_to_the_clip():
    assert fit_stft_resolutions(65536) == ((1024, 2048, 512), (120, 240, 50), (600, 1200, 240))
    assert fit_stft_resolutions(512) == ((256, 512, 128), (30, 60, 12), (150, 300, 60))
    args = audio.parse_args(["--unet_config", "tiny", "--sample_size", "512"])
    assert args.stft_fft_sizes == [256, 512, 128]
    with pytest.raises(ValueError, match="--stft_fft_sizes"):
        audio.parse_args(
            [
                "--sample_size",
                "512",
                "--stft_fft_sizes",
                "2048",
                "--stft_hop_lengths",
                "10",
                "--stft_win_lengths",
                "100",
            ]
        )
    with pytest.raises(ValueError, match="all three"):
        audio.parse_args(["--stft_fft_sizes", "256"])


def test_dance_preset_is_dance_diffusion_sized():
    model = audio.build_audio_unet("dance", 65536, 16000, 2)
    assert model.config.block_out_channels == (128, 128, 256, 256) + (512,) * 9
    assert model.time_proj.weight.shape == (8,)  # 16 Fourier channels, as harmonai's checkpoints
    assert 200e6 < sum(p.numel() for p in model.parameters()) < 230e6


# ----------------------------------------------------------------------------------------------------------------
# Each regulariser trains (fixed batch, loss goes down)


def _fixed_batch(length: int = 1024, count: int = 4) -> torch.Tensor:
    files = sorted(embedded_audio_dir().glob("speech_*.flac"))[:count]
    clips = [soundfile.read(f, dtype="float32")[0][16000 : 16000 + length] for f in files]  # 1 s in: voiced
    return torch.from_numpy(np.stack(clips))[:, None]  # (B, 1, T)


@pytest.mark.parametrize("regularizer", ["none", "fourier", "wavelet", "stft"])
def test_each_regularizer_lowers_the_loss_on_a_fixed_batch(regularizer):
    torch.manual_seed(0)
    x0 = _fixed_batch()
    model = audio.build_audio_unet("tiny", 1024, 16000, 1)
    weight = {
        "none": [],
        "fourier": ["--fourier_weight", "0.5"],
        "wavelet": ["--wavelet_weight", "0.5"],
        "stft": ["--stft_weight", "0.05"],
    }[regularizer]  # the STFT loss is ~100x larger at initialisation
    args = audio.parse_args(["--unet_config", "tiny", "--sample_size", "1024", *weight])
    regularizers = spectral_regularizers(args)
    fourier, wavelet, stft = regularizers.fourier, regularizers.wavelet, regularizers.stft
    weights = {"fourier": args.fourier_weight, "wavelet": args.wavelet_weight, "stft": args.stft_weight}
    generator = torch.Generator().manual_seed(0)
    t = torch.rand(x0.shape[0], generator=generator) * 0.5  # informative noise levels
    noise = torch.randn(x0.shape, generator=generator)
    x_t = v_diffusion.v_diffusion_inputs(x0, noise, t)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def total_loss():
        prediction = model(x_t, t).sample
        loss = (prediction - v_diffusion.v_diffusion_target(x0, noise, t)).square().mean()
        x0_hat = v_diffusion.x0_from_v_diffusion(prediction, x_t, t)
        terms = spectral_regularizer_terms(x0_hat, x0, torch.ones(x0.shape[0]), fourier, wavelet, stft)
        assert set(terms) == ({regularizer} - {"none"})
        return loss + sum(weights[k] * v for k, v in terms.items())

    losses = []
    for _ in range(12):
        loss = total_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and np.mean(losses[-3:]) < losses[0], losses  # it goes down, not just once


# ----------------------------------------------------------------------------------------------------------------
# End to end


def _train_args(output_dir, *extra):
    return audio.parse_args(
        [
            "--unet_config",
            "tiny",
            "--sample_size",
            "512",
            "--train_batch_size",
            "2",
            "--max_train_steps",
            "4",
            "--checkpointing_steps",
            "2",
            "--validation_steps",
            "4",
            "--num_validation_samples",
            "2",
            "--validation_inference_steps",
            "3",
            "--report_to",
            "none",
            "--output_dir",
            str(output_dir),
            *extra,
        ]
    )


@pytest.mark.slow
def test_export_loads_with_plain_diffusers_and_generates(tmp_path):
    out = tmp_path / "run"
    pipeline_dir = audio.train_audio(
        _train_args(
            out,
            "--stft_weight",
            "0.1",
            "--fourier_weight",
            "0.1",
            "--wavelet_weight",
            "0.1",
            "--use_ema",
            "--push_to_hub",
            "--hub_dry_run",
            "--report_to",
            "tensorboard",
        )
    )
    pipe = DiffusionPipeline.from_pretrained(pipeline_dir)
    assert type(pipe).__name__ == "DanceDiffusionPipeline"
    assert type(pipe.scheduler).__name__ == "IPNDMScheduler"
    audios = pipe(batch_size=2, num_inference_steps=3, generator=torch.manual_seed(0)).audios
    assert audios.shape == (2, 1, 512) and np.isfinite(audios).all()
    shorter = pipe(num_inference_steps=2, audio_length_in_s=256 / 16000).audios
    assert shorter.shape == (1, 1, 256)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"diffusion", "fourier", "wavelet", "stft", "skipped_clips", "padded_clips"} <= set(metrics)
    assert sorted(p.name for p in (out / "validation").glob("*.wav")) == ["step-0000004_00.wav", "step-0000004_01.wav"]
    assert (out / "validation" / "step-0000004-spectrogram.png").is_file()
    card = (pipeline_dir / "README.md").read_text()
    assert "DanceDiffusionPipeline" in card and "hub_token" not in card
    assert "README.md" in json.loads((out / "hub_upload.json").read_text())["files"]
    assert list((out / "logs").rglob("events.out.tfevents*"))


@pytest.mark.slow
def test_kill_and_resume_gives_identical_weights(tmp_path):
    full = audio.train_audio(_train_args(tmp_path / "full", "--stft_weight", "0.1", "--use_ema"))
    _ = audio.train_audio(_train_args(tmp_path / "cut", "--stft_weight", "0.1", "--use_ema", "--max_train_steps", "2"))
    resumed = audio.train_audio(
        _train_args(tmp_path / "cut", "--stft_weight", "0.1", "--use_ema", "--resume_from_checkpoint", "latest")
    )
    a = load_file(Path(full) / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(Path(resumed) / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.slow
def test_bad_files_are_skipped_or_padded_and_counted(tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        soundfile.write(folder / f"good_{i}.wav", rng.uniform(-0.5, 0.5, 4000).astype(np.float32), 16000)
    soundfile.write(folder / "three_channels.wav", rng.uniform(-0.5, 0.5, (3000, 3)).astype(np.float32), 16000)
    soundfile.write(folder / "odd_rate.flac", rng.uniform(-0.5, 0.5, 3000).astype(np.float32), 7999)
    soundfile.write(folder / "too_short.wav", rng.uniform(-0.5, 0.5, 100).astype(np.float32), 16000)
    (folder / "corrupt.wav").write_bytes(b"RIFF this is not audio")
    (folder / "empty.wav").write_bytes(b"")
    out = tmp_path / "run"
    # Stereo: mono files are duplicated, the 3-channel file has no stereo downmix and is skipped like the corrupt
    # and empty ones; 4 batches of 3 read the folder (8 files, 5 usable) more than once.
    pipeline_dir = audio.train_audio(
        _train_args(
            out,
            "--train_data_dir",
            str(folder),
            "--channels",
            "2",
            "--max_train_steps",
            "4",
            "--train_batch_size",
            "3",
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_clips"] >= 3, metrics["skipped_reasons"]  # at least one pass over the folder
    for name in ("corrupt.wav", "empty.wav", "three_channels.wav"):
        assert any(name in reason for reason in metrics["skipped_reasons"]), name
    assert not any("odd_rate" in reason for reason in metrics["skipped_reasons"])  # 7999 Hz is resampled
    assert metrics["padded_clips"] >= 1  # too_short.wav (100 samples) zero-padded to 512
    assert json.loads((pipeline_dir / "unet" / "config.json").read_text())["in_channels"] == 2
