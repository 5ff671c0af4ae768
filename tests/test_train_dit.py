"""examples/train_dit_repa.py end to end (cached latents with cached REPA targets, images with online targets, DCT
space), exact resume after a kill, the exported pipeline loading with plain diffusers, and the loss helpers."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline, DiTPipeline
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import Dinov2Config, Dinov2Model

from diffusers_spectrum.losses.repa import repa_term
from diffusers_spectrum.losses.spectral_regularizers import spectral_regularizer_terms
from diffusers_spectrum.models import SpectrumAutoencoderKL
from diffusers_spectrum.models.presets import build_transformer
from diffusers_spectrum.training.dit_data import standardize_latents


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    """The library loop module behind `examples/<name>.py` (the script only parses flags and calls it)."""
    import importlib

    return importlib.import_module(
        {"cache_latents": "diffusers_spectrum.training.cache", "train_dit_repa": "diffusers_spectrum.training.dit"}[
            name
        ]
    )


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    """A tiny Spectrum VAE (f2, 4 channels), a tiny random DINOv2 (patch 4, width 32), and a latent cache of 24
    embedded photos at 32 px with REPA targets on the DiT's 8 x 8 token grid."""
    root = tmp_path_factory.mktemp("dit_assets")
    torch.manual_seed(0)
    vae = SpectrumAutoencoderKL(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=32,
        dsm_levels=(0,),
    )
    vae.save_pretrained(root / "vae")
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=4, image_size=32
    )
    Dinov2Model(config).save_pretrained(root / "dino")
    cache = load_example("cache_latents")
    cache.cache_latents(
        cache.parse_args(
            [
                "--pretrained_vae",
                str(root / "vae"),
                "--output_dir",
                str(root / "cache"),
                "--resolution",
                "32",
                "--max_samples",
                "24",
                "--repa_encoder",
                str(root / "dino"),
                "--repa_grid_size",
                "8",
                "--shard_size",
                "10",
            ]
        )
    )
    return {"root": root, "vae": root / "vae", "dino": root / "dino", "cache": root / "cache"}


TINY = [
    "--dit_config",
    "tiny",
    "--repa_projector_dim",
    "32",
    "--train_batch_size",
    "4",
    "--report_to",
    "none",
    "--validation_inference_steps",
    "2",
    "--num_validation_images",
    "2",
]


def weights(folder: Path) -> dict:
    return load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.slow
def test_train_dit_on_cached_latents_exports_pipeline_that_plain_diffusers_loads_and_samples(assets, tmp_path):
    script = load_example("train_dit_repa")
    out = tmp_path / "dit"
    args = script.parse_args(
        [
            "--latent_dataset",
            str(assets["cache"]),
            "--output_dir",
            str(out),
            "--max_train_steps",
            "3",
            "--checkpointing_steps",
            "3",
            "--validation_steps",
            "3",
            "--repa_target_filter",
            "dog",
            "--use_ema",
            "--fourier_weight",
            "0.1",
            "--wavelet_weight",
            "0.1",
            "--wavelet_levels",
            "2",
            "--push_to_hub",
            "--hub_dry_run",
            "--hub_model_id",
            "user/tiny-dit",
            *TINY,
        ]
    )
    pipeline_dir = script.train_dit(args)

    # every term is logged separately; REPA used the cached targets
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"diffusion", "repa", "repa_cosine", "fourier", "wavelet", "loss"} <= set(metrics)
    info = json.loads((pipeline_dir / "spectrum_info.json").read_text())
    assert metrics["global_step"] == 3 and info["training"]["repa"] == "cached"
    assert not hasattr(args, "repa_targets_resolved")  # resolved on the data, recorded; the flags stay as parsed
    assert (out / "validation" / "step-0000003.png").is_file() and (out / "checkpoint-3").is_dir()

    # the pipeline folder loads with plain diffusers as a stock DiTPipeline and samples with CFG
    pipe = DiffusionPipeline.from_pretrained(pipeline_dir)
    assert type(pipe) is DiTPipeline and type(pipe.transformer).__name__ == "DiTTransformer2DModel"
    assert pipe.labels["chelsea"] == 2 and type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    image = pipe(
        class_labels=[2], guidance_scale=1.8, num_inference_steps=2, generator=torch.manual_seed(0), output_type="np"
    ).images
    assert image.shape == (1, 32, 32, 3) and bool((image >= 0).all() and (image <= 1).all())

    # the training transformer keeps the projector; the card has the metadata; the push lists the files
    assert any(k.startswith("projector.") for k in weights(out))
    card = ModelCard.load(pipeline_dir / "README.md")
    assert card.data.library_name == "diffusers" and "repa" in card.data.tags
    upload = json.loads((out / "hub_upload.json").read_text())
    assert upload["dry_run"] and "model_index.json" in upload["files"]
    assert "transformer/diffusion_pytorch_model.safetensors" in upload["files"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_train_dit_killed_after_checkpoint_resumes_to_identical_weights(assets, tmp_path, workers):
    script = load_example("train_dit_repa")
    common = [
        "--latent_dataset",
        str(assets["cache"]),
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--validation_steps",
        "100",
        "--objective",
        "v_prediction",
        "--use_ema",
        "--ema_decay",
        "0.5",
        "--repa_target_filter",
        "spatial_norm",
        "--dataloader_num_workers",
        str(workers),
        *TINY,
    ]
    script.train_dit(script.parse_args(["--output_dir", str(tmp_path / "full"), *common]))

    # a run killed during step 3: its folder holds checkpoint-2 (and nothing complete after it)
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", killed / "checkpoint-2")
    (killed / ".checkpoint-4.tmp").mkdir()  # a partial checkpoint write must be ignored
    script.train_dit(script.parse_args(["--output_dir", str(killed), "--resume_from_checkpoint", "latest", *common]))

    full, resumed = weights(tmp_path / "full"), weights(killed)
    assert full.keys() == resumed.keys()
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=0, atol=0, msg=name)
    trained = json.loads((tmp_path / "full" / "metrics.json").read_text())
    again = json.loads((killed / "metrics.json").read_text())
    assert again["loss"] == trained["loss"]


@pytest.mark.slow
def test_two_processes_with_two_workers_each_resume_to_identical_weights(assets, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    def launch(*args):  # 2 CPU processes, as `accelerate launch` runs them
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            str(EXAMPLES / "train_dit_repa.py"),
            *args,
        ]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]

    common = [
        "--latent_dataset",
        str(assets["cache"]),
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--validation_steps",
        "100",
        "--dataloader_num_workers",
        "2",
        *TINY,
    ]
    launch("--output_dir", str(tmp_path / "full"), *common)
    states = json.loads((tmp_path / "full" / "checkpoint-2" / "extra_state.json").read_text())["data_states"]
    assert len(states) == 2 and all(state["num_workers"] == 2 for state in states)
    launch(
        "--output_dir",
        str(tmp_path / "resumed"),
        "--resume_from_checkpoint",
        str(tmp_path / "full" / "checkpoint-2"),
        *common,
    )
    full, resumed = weights(tmp_path / "full"), weights(tmp_path / "resumed")
    assert full.keys() == resumed.keys()
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_train_dit_on_images_with_online_repa_targets_and_in_dct_space(assets, tmp_path):
    script = load_example("train_dit_repa")
    # latent space, images encoded on the fly, REPA targets from the encoder online
    online = script.parse_args(
        [
            "--pretrained_vae",
            str(assets["vae"]),
            "--repa_encoder",
            str(assets["dino"]),
            "--resolution",
            "32",
            "--output_dir",
            str(tmp_path / "online"),
            "--max_train_steps",
            "2",
            "--checkpointing_steps",
            "2",
            "--validation_steps",
            "100",
            "--objective",
            "epsilon",
            *TINY,
        ]
    )
    online_pipeline = script.train_dit(online)
    assert json.loads((online_pipeline / "spectrum_info.json").read_text())["training"]["repa"] == "online"
    assert json.loads((tmp_path / "online" / "metrics.json").read_text())["repa"] < 0.5

    # DCT space (no VAE): the pipeline holds a DCTTransform and samples images
    dct = script.parse_args(
        [
            "--space",
            "dct",
            "--resolution",
            "32",
            "--dct_block_size",
            "2",
            "--dct_entropy_weights",
            "--snr_scale",
            "2",
            "--objective",
            "epsilon",
            "--output_dir",
            str(tmp_path / "dct"),
            "--max_train_steps",
            "2",
            "--checkpointing_steps",
            "2",
            "--validation_steps",
            "2",
            *TINY,
        ]
    )
    pipeline_dir = script.train_dit(dct)
    pipe = DiffusionPipeline.from_pretrained(pipeline_dir)
    assert type(pipe.vae).__name__ == "DCTTransform" and pipe.transformer.config.in_channels == 24
    image = pipe(class_labels=[0], guidance_scale=1.0, num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3)


# ----------------------------------------------------------------------------------------------------------------
# Loss helpers


def test_repa_term_is_minus_one_for_targets_equal_to_projection_and_checks_shapes():
    tokens = torch.randn(2, 16, 8)
    loss, cosine = repa_term(tokens, tokens.clone(), (4, 4), "none")
    assert loss.item() == pytest.approx(-1.0, abs=1e-6) and cosine.item() == pytest.approx(1.0, abs=1e-6)
    # the DoG target is the band-passed map: aligning to the raw tokens no longer gives -1
    dog_loss, _ = repa_term(tokens, tokens.clone(), (4, 4), "dog", dog_sigma1=0.6, dog_sigma2=2.0)
    assert dog_loss.item() > -0.99
    with pytest.raises(ValueError, match="repa_target_dim"):
        repa_term(tokens, torch.randn(2, 16, 4), (4, 4))


def test_standardize_latents_samples_posterior_then_shifts_and_scales():
    mean, std = torch.full((2, 4, 4, 4), 3.0), torch.full((2, 4, 4, 4), 0.5)
    flux_like = {"scaling_factor": 0.25, "shift_factor": 1.0}
    assert torch.equal(standardize_latents(mean, flux_like), torch.full_like(mean, 0.5))  # (3 - 1) * 0.25
    assert torch.equal(standardize_latents(mean, {"scaling_factor": 0.25}), torch.full_like(mean, 0.75))
    per_channel = {"scaling_factor": 1.0, "latents_mean": [1.0, 2.0, 3.0, 4.0], "latents_std": [2.0] * 4}
    expected = (3.0 - torch.tensor([1.0, 2.0, 3.0, 4.0])) / 2.0
    torch.testing.assert_close(standardize_latents(mean, per_channel)[0, :, 0, 0], expected)
    sampled = standardize_latents(
        mean, {"scaling_factor": 1.0}, latents_std=std, generator=torch.Generator().manual_seed(0)
    )
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sampled, mean + 0.5 * noise)


def test_spectral_regularizer_terms_vanish_for_exact_prediction_and_follow_timestep_weights():
    x0 = torch.randn(3, 4, 8, 8)
    x0_hat = x0 + 0.3 * torch.randn_like(x0)
    ones, zeros = torch.ones(3), torch.zeros(3)
    fourier, wavelet = {"loss_type": "l1"}, {"levels": 2}
    exact = spectral_regularizer_terms(x0, x0, ones, fourier, wavelet)
    assert exact["fourier"].item() == pytest.approx(0.0, abs=1e-6) and exact["wavelet"].item() == 0.0
    off = spectral_regularizer_terms(x0_hat, x0, ones, fourier, wavelet)
    assert off["fourier"].item() > 0 and off["wavelet"].item() > 0
    weighted = spectral_regularizer_terms(x0_hat, x0, zeros, fourier, wavelet)
    assert weighted["fourier"].item() == 0.0 and weighted["wavelet"].item() == 0.0
    assert spectral_regularizer_terms(x0_hat, x0, ones) == {}


def test_build_transformer_uses_dit_pipeline_label_table_and_rejects_bad_grid():
    model = build_transformer("tiny", in_channels=4, sample_size=8, repa_depth=1, repa_target_dim=32)
    assert model.config.num_embeds_ada_norm == 1000 and model.config.out_channels == 4
    assert model.transformer_blocks[0].norm1.emb.class_embedder.embedding_table.num_embeddings == 1001
    with pytest.raises(ValueError, match="divisible by the patch size"):
        build_transformer("tiny", in_channels=4, sample_size=7)
    with pytest.raises(ValueError, match="unknown DiT preset"):
        build_transformer("huge", in_channels=4, sample_size=8)
