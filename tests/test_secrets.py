"""Secrets never reach a written file: every command runs at its tiniest with a fake Hub token (where it has the
`--hub_token` flag) and `--push_to_hub --hub_dry_run`, then every file under its output folder (JSON, model and
dataset cards, tensorboard event files, checkpoints, safetensors) and everything it logged is searched for the
token, byte for byte."""

import importlib.util
import json
import logging
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_spectrum.models import SpectrumAutoencoderKL


TOKEN = "hf_FAKE_SECRET_123"
PUSH = ["--push_to_hub", "--hub_dry_run", "--hub_token", TOKEN, "--hub_model_id", "user/secret-test"]


def tiny_vae() -> SpectrumAutoencoderKL:
    torch.manual_seed(0)
    return SpectrumAutoencoderKL(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=32,
        dsm_levels=(0,),
    ).eval()


def files_holding_token(folder: Path) -> list[str]:
    """Every file under `folder` whose bytes contain the token (plain, or as JSON / repr escapes it)."""
    needles = [TOKEN.encode(), json.dumps(TOKEN).encode()[1:-1], TOKEN.encode("utf-16-le")]
    return [str(p) for p in folder.rglob("*") if p.is_file() and any(n in p.read_bytes() for n in needles)]


def assert_clean(folder: Path, caplog, capsys) -> None:
    written = [p for p in folder.rglob("*") if p.is_file()]
    assert written, f"nothing was written under {folder}"
    assert files_holding_token(folder) == []
    captured = capsys.readouterr()
    assert TOKEN not in caplog.text and TOKEN not in captured.out and TOKEN not in captured.err


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("secret_assets")
    tiny_vae().save_pretrained(root / "vae")
    from diffusers_spectrum.models.presets import build_transformer
    from diffusers_spectrum.pipelines.export import export_pipeline
    from diffusers_spectrum.pipelines.schedulers import flow_matching_scheduler

    transformer = build_transformer("tiny", in_channels=4, sample_size=8, dit_init=False)
    export_pipeline(
        root / "pipeline",
        vae=tiny_vae(),
        transformer=transformer,
        scheduler=flow_matching_scheduler(),
        id2label={0: "cat", 1: "dog"},
    )
    return root


@pytest.fixture(scope="module")
def cache_run(assets, tmp_path_factory):
    """cache-latents with the token (its folder is searched by a test, and train-dit reads it)."""
    from diffusers_spectrum.training import cache

    out = tmp_path_factory.mktemp("secret_cache") / "cache"
    cache.cache_latents(
        cache.parse_args(
            [
                "--pretrained_vae",
                str(assets / "vae"),
                "--output_dir",
                str(out),
                "--resolution",
                "32",
                "--max_samples",
                "4",
                "--batch_size",
                "4",
                *PUSH,
            ]
        )
    )
    return out


def run_command(name: str, argv: list[str]):
    """Parse and run `diffusers-spectrum <name>` in-process (the CLI's table: module, parse fn, run fn)."""
    from diffusers_spectrum.cli import SUBCOMMANDS

    module_name, parse_name, run_name, _ = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    return getattr(module, run_name)(getattr(module, parse_name)(argv))


def write_wavs(folder: Path, count: int = 3, length: int = 2048, rate: int = 16000) -> Path:
    folder.mkdir(parents=True)
    t = np.arange(length) / rate
    for i in range(count):
        signal = (0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t) * 32767).astype(np.int16)
        with wave.open(str(folder / f"clip_{i}.wav"), "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(rate)
            f.writeframes(signal.tobytes())
    return folder


@pytest.fixture(autouse=True)
def _log_everything(caplog):
    caplog.set_level(logging.DEBUG)


def test_public_args_is_the_one_filter():
    from diffusers_spectrum.utils.records import public_args

    assert public_args({"hub_token": TOKEN, "seed": 0}) == {"seed": 0}


def test_cache_latents_writes_no_token(cache_run, caplog, capsys):
    readme = (cache_run / "README.md").read_text()
    assert "hub_model_id" in readme  # the card's flag table was written, without the token
    assert_clean(cache_run, caplog, capsys)


@pytest.mark.slow
def test_train_vae_writes_no_token_with_tensorboard(tmp_path, caplog, capsys):
    run_command(
        "train-vae",
        [
            "--output_dir",
            str(tmp_path / "vae"),
            "--vae_config",
            "tiny",
            "--resolution",
            "32",
            "--train_batch_size",
            "2",
            "--max_train_steps",
            "1",
            "--checkpointing_steps",
            "1",
            "--validation_steps",
            "1",
            "--latent_stats_samples",
            "4",
            "--perceptual_loss",
            "none",
            "--report_to",
            "tensorboard",
            *PUSH,
        ],
    )
    assert (tmp_path / "vae" / "README.md").is_file() and (tmp_path / "vae" / "hub_upload.json").is_file()
    assert_clean(tmp_path, caplog, capsys)


@pytest.mark.slow
def test_train_dit_writes_no_token(cache_run, tmp_path, caplog, capsys):
    run_command(
        "train-dit",
        [
            "--latent_dataset",
            str(cache_run),
            "--output_dir",
            str(tmp_path / "dit"),
            "--dit_config",
            "tiny",
            "--train_batch_size",
            "2",
            "--max_train_steps",
            "1",
            "--checkpointing_steps",
            "1",
            "--validation_steps",
            "1",
            "--num_validation_images",
            "2",
            "--validation_inference_steps",
            "2",
            "--report_to",
            "tensorboard",
            *PUSH,
        ],
    )
    assert (tmp_path / "dit" / "hub_upload.json").is_file()
    assert_clean(tmp_path, caplog, capsys)


@pytest.mark.slow
def test_train_unconditional_writes_no_token(tmp_path, caplog, capsys):
    argv = [
        "--output_dir",
        str(tmp_path / "u"),
        "--unet_config",
        "tiny",
        "--resolution",
        "16",
        "--train_batch_size",
        "2",
        "--max_train_steps",
        "1",
        "--checkpointing_steps",
        "1",
        "--validation_steps",
        "1",
        "--eval_batch_size",
        "1",
        "--ddpm_num_inference_steps",
        "2",
        "--report_to",
        "none",
        *PUSH,
    ]
    run_command("train-unconditional", argv)
    assert_clean(tmp_path, caplog, capsys)


@pytest.mark.slow
def test_train_audio_writes_no_token(tmp_path, caplog, capsys):
    data = write_wavs(tmp_path / "wavs")
    run_command(
        "train-audio",
        [
            "--train_data_dir",
            str(data),
            "--output_dir",
            str(tmp_path / "a"),
            "--unet_config",
            "tiny",
            "--train_batch_size",
            "2",
            "--max_train_steps",
            "1",
            "--checkpointing_steps",
            "1",
            "--validation_steps",
            "1",
            "--num_validation_samples",
            "1",
            "--validation_inference_steps",
            "2",
            "--report_to",
            "none",
            *PUSH,
        ],
    )
    assert_clean(tmp_path, caplog, capsys)


@pytest.mark.slow
def test_sample_and_evaluate_commands_write_no_token(assets, tmp_path, caplog, capsys):
    """These have no token flag (they never upload); their outputs are searched all the same."""
    pipeline = str(assets / "pipeline")
    run_command(
        "sample",
        [
            "--pretrained_model_name_or_path",
            pipeline,
            "--num_images",
            "2",
            "--num_inference_steps",
            "1",
            "--output_dir",
            str(tmp_path / "samples"),
        ],
    )
    run_command(
        "evaluate-vae",
        ["--vae", str(assets / "vae"), "--num_samples", "2", "--output_dir", str(tmp_path / "ev"), "--no_progress"],
    )
    run_command(
        "evaluate-pipeline",
        [
            "--pipeline",
            pipeline,
            "--num_samples",
            "2",
            "--num_inference_steps",
            "1",
            "--output_dir",
            str(tmp_path / "ep"),
            "--no_progress",
        ],
    )
    assert {p.name for p in tmp_path.rglob("*.json")} >= {"samples.json", "eval_vae.json", "eval_pipeline.json"}
    assert_clean(tmp_path, caplog, capsys)
