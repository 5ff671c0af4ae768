"""evaluation.evaluate (the `evaluate-vae` / `evaluate-pipeline` commands): defaults that run as the README shows
(no --output_file, the data's own resolution, every trained class at the conditional guidance default), metrics
wired to independent computations, and the thin example scripts."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_spectrum.data.images import image_batches_from
from diffusers_spectrum.evaluation import evaluate, generation_metrics
from diffusers_spectrum.evaluation.metrics import frechet_distance
from diffusers_spectrum.models import SpectrumAutoencoderKL
from diffusers_spectrum.models.presets import build_transformer
from diffusers_spectrum.pipelines.export import export_pipeline
from diffusers_spectrum.pipelines.sampling import load_pipeline, pipeline_samples


ROOT = Path(__file__).resolve().parents[1]


def tiny_vae(blocks: int = 2) -> SpectrumAutoencoderKL:
    torch.manual_seed(0)
    return SpectrumAutoencoderKL(
        block_out_channels=(8,) * blocks,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=16,
        dsm_levels=(0,),
    ).eval()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Saved f2 and f8 VAEs, an exported 3-class DiT pipeline (16 px samples), and 6 natural 20 px images."""
    from skimage import data as skdata

    root = tmp_path_factory.mktemp("eval")
    tiny_vae().save_pretrained(root / "vae2")
    tiny_vae(blocks=4).save_pretrained(root / "vae8")
    from diffusers_spectrum.pipelines.schedulers import flow_matching_scheduler

    transformer = build_transformer("tiny", in_channels=4, sample_size=8, dit_init=False)
    export_pipeline(
        root / "pipeline",
        vae=tiny_vae(),
        transformer=transformer,
        scheduler=flow_matching_scheduler(),
        id2label={0: "cat", 1: "dog", 2: "tree"},
    )
    images = root / "images"
    images.mkdir()
    photo = skdata.astronaut()
    for i in range(6):
        crop = photo[40 * i : 40 * i + 80, 60 : 60 + 80]
        Image.fromarray(crop).resize((20, 20), Image.Resampling.BICUBIC).save(images / f"img_{i}.png")
    return root


def psnr_reference(vae, images: np.ndarray) -> float:
    """Mean PSNR (data range 2) of the VAE's posterior-mean reconstructions, written from the definition."""
    with torch.no_grad():
        x = torch.from_numpy(images)
        reconstruction = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1).numpy()
    mse = ((reconstruction.astype(np.float64) - images) ** 2).mean(axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(4.0 / mse)))


def test_evaluate_vae_defaults_to_the_data_size_and_an_output_file_in_output_dir(assets, tmp_path):
    args = evaluate.parse_vae_args(
        [
            "--vae",
            str(assets / "vae2"),
            "--train_data_dir",
            str(assets / "images"),
            "--num_samples",
            "4",
            "--batch_size",
            "3",
            "--output_dir",
            str(tmp_path),
            "--no_progress",
        ]
    )
    result = evaluate.evaluate_vae(args)
    written = json.loads((tmp_path / "eval_vae.json").read_text())
    assert written["levels"] == result["levels"] and written["resolution"] == result["resolution"] == 20
    assert result["data_resolution"] == 20 and result["upsampled_images"] == 0 and result["skipped_images"] == 0
    files = sorted((assets / "images").glob("*.png"))[:4]
    images = np.stack([np.asarray(Image.open(f), np.float64).transpose(2, 0, 1) / 127.5 - 1 for f in files])
    vae = SpectrumAutoencoderKL.from_pretrained(assets / "vae2").eval()
    assert result["levels"]["0"]["psnr"] == pytest.approx(psnr_reference(vae, images.astype(np.float32)), abs=1e-3)


def test_evaluate_vae_rounds_the_data_size_down_for_the_vae_and_warns_when_upsampling(assets, tmp_path, caplog):
    common = [
        "--vae",
        str(assets / "vae8"),
        "--train_data_dir",
        str(assets / "images"),
        "--num_samples",
        "2",
        "--no_progress",
    ]
    result = evaluate.evaluate_vae(evaluate.parse_vae_args([*common, "--output_file", str(tmp_path / "a.json")]))
    assert result["resolution"] == 16  # 20 px data, factor 8: the largest multiple below, never upsampled
    with caplog.at_level(logging.WARNING, logger="diffusers_spectrum.evaluation.evaluate"):
        result = evaluate.evaluate_vae(
            evaluate.parse_vae_args([*common, "--resolution", "32", "--output_file", str(tmp_path / "b.json")])
        )
    assert result["resolution"] == 32 and (tmp_path / "b.json").exists()
    assert any("UPSAMPLING" in r.message and "20 px" in r.message for r in caplog.records)


@pytest.mark.slow
def test_evaluate_pipeline_scores_every_trained_class_at_the_conditional_default(assets, tmp_path, monkeypatch):
    calls = []

    def spy(pipe, num_samples, batch_size, labels, steps, guidance, seed, **kwargs):
        calls.append((list(labels), guidance))
        return pipeline_samples(pipe, num_samples, batch_size, labels, steps, guidance, seed, **kwargs)

    monkeypatch.setattr(evaluate, "pipeline_samples", spy)
    args = evaluate.parse_pipeline_args(
        [
            "--pipeline",
            str(assets / "pipeline"),
            "--train_data_dir",
            str(assets / "images"),
            "--num_samples",
            "5",
            "--batch_size",
            "2",
            "--num_inference_steps",
            "2",
            "--output_dir",
            str(tmp_path),
            "--no_progress",
        ]
    )
    result = evaluate.evaluate_pipeline(args)
    assert calls == [([0, 1, 2, 0, 1], 1.8)]
    assert result["class_labels"] == [0, 1, 2] and result["class_names"] == ["cat", "dog", "tree"]
    assert result["guidance_scale"] == 1.8 and json.loads((tmp_path / "eval_pipeline.json").read_text())["fd"] is None

    # the offline metrics are those of the same samples and references computed directly
    pipe = load_pipeline(assets / "pipeline")
    samples = torch.cat(list(pipeline_samples(pipe, 5, 5, [0, 1, 2, 0, 1], 2, 1.8, 0, progress=False)))
    references = torch.cat(list(image_batches_from(str(assets / "images"), 5, 16, 5)))
    distance = generation_metrics.spectrum_distance(samples, references)
    swd = generation_metrics.pyramid_swd(samples, references, min_resolution=16, seed=0)
    assert result["spectrum_distance"] == pytest.approx(float(distance), rel=1e-4)
    assert result["swd_x1e3"] == pytest.approx([float(v) * 1e3 for v in swd], rel=1e-4)
    assert result["num_samples"] == result["num_reference"] == 5 and result["resolution"] == 16
    # the reconstruction ceiling of this latent pipeline: its VAE's decode(encode(references)) against them
    with torch.no_grad():
        reconstructed = pipe.vae.decode(pipe.vae.encode(references).latent_dist.mean).sample.clamp(-1, 1)
    ceiling = generation_metrics.spectrum_distance(reconstructed, references)
    assert result["ceiling"]["spectrum_distance"] == pytest.approx(float(ceiling), rel=1e-4)
    assert result["floor"] is None and result["blur_check"] is None  # no floor set; too few references to check


@pytest.mark.slow
def test_evaluate_pipeline_takes_class_names_a_guidance_flag_and_a_feature_extractor(assets, tmp_path, monkeypatch):
    def channel_stats(images):  # (B, 3, H, W) -> (B, 6): a stand-in backbone
        return torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], dim=1)

    from diffusers_spectrum.evaluation import metrics

    monkeypatch.setattr(metrics, "load_feature_extractor", lambda spec, device: channel_stats)
    args = evaluate.parse_pipeline_args(
        [
            "--pipeline",
            str(assets / "pipeline"),
            "--train_data_dir",
            str(assets / "images"),
            "--num_samples",
            "6",
            "--class_labels",
            "tree,dog",
            "--guidance_scale",
            "1",
            "--num_inference_steps",
            "2",
            "--feature_extractor",
            "stand-in",
            "--output_file",
            str(tmp_path / "e.json"),
            "--no_progress",
        ]
    )
    result = evaluate.evaluate_pipeline(args)
    assert result["class_labels"] == [1, 2] and result["guidance_scale"] == 1.0
    pipe = load_pipeline(assets / "pipeline")
    samples = torch.cat(list(pipeline_samples(pipe, 6, 16, [2, 1, 2, 1, 2, 1], 2, 1.0, 0, progress=False)))
    references = torch.cat(list(image_batches_from(str(assets / "images"), 6, 16, 6)))
    expected = frechet_distance(channel_stats(samples).double(), channel_stats(references).double())
    assert result["fd"] == pytest.approx(expected, rel=1e-6)
    assert result["kid"] == pytest.approx(
        generation_metrics.kid(channel_stats(samples).double(), channel_stats(references).double()), rel=1e-6
    )


@pytest.mark.slow
def test_example_scripts_are_thin_and_exit_with_a_message(assets, tmp_path):
    for script in ("evaluate_vae.py", "evaluate_pipeline.py"):
        text = (ROOT / "examples" / script).read_text()
        assert "from diffusers_spectrum.evaluation.evaluate import" in text and len(text.splitlines()) < 30
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "evaluate_vae.py"),
            "--vae",
            str(assets / "vae8"),
            "--train_data_dir",
            str(assets / "images"),
            "--resolution",
            "30",
            "--num_samples",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 1 and "evaluate_vae.py: error: --resolution 30 is not divisible" in run.stderr
    assert "Traceback" not in run.stderr
