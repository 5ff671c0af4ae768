"""Metrics against independent references: Fréchet distance (closed form, scipy), PSNR / SSIM (scikit-image)."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from diffusers import AutoencoderKL
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from diffusers_spectrum.evaluation.metrics import (
    InceptionFeatureExtractor,
    TransformersFeatureExtractor,
    collect_features,
    frechet_distance,
    frechet_distance_from_stats,
    load_feature_extractor,
    lpips,
    psnr,
    reconstruction_metrics,
    ssim,
)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    # for diagonal covariances FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.square(mu1 - mu2).sum() + np.square(np.sqrt(a) - np.sqrt(b)).sum()
    assert frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_direct_scipy_sqrtm_on_random_covariances():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    sigma1, sigma2 = m1 @ m1.T + 0.1 * np.eye(6), m2 @ m2.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    expected = np.square(mu1 - mu2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)
    assert frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_on_samples_uses_sample_mean_and_covariance_and_accepts_tensors():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 4)), rng.normal(loc=0.5, scale=2.0, size=(300, 4))
    expected = frechet_distance_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert frechet_distance(torch.from_numpy(a).float(), b) == pytest.approx(expected, rel=1e-5)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(a[:1], b)
    with pytest.raises(ValueError, match="shapes do not agree"):
        frechet_distance(a, b[:, :3])


def test_psnr_matches_scikit_image():
    rng = np.random.default_rng(2)
    target = rng.uniform(-1, 1, size=(2, 3, 16, 16))
    prediction = np.clip(target + rng.normal(scale=0.1, size=target.shape), -1, 1)
    ours = psnr(torch.from_numpy(prediction), torch.from_numpy(target))
    for i in range(2):
        assert float(ours[i]) == pytest.approx(
            peak_signal_noise_ratio(target[i], prediction[i], data_range=2.0), rel=1e-5
        )


@pytest.mark.parametrize("gaussian_weights", [True, False])
def test_ssim_matches_scikit_image(gaussian_weights):
    rng = np.random.default_rng(3)
    target = rng.uniform(-1, 1, size=(2, 3, 24, 24))
    prediction = np.clip(0.8 * target + rng.normal(scale=0.2, size=target.shape), -1, 1)
    ours = ssim(torch.from_numpy(prediction), torch.from_numpy(target), gaussian_weights=gaussian_weights)
    for i in range(2):
        reference = structural_similarity(
            target[i],
            prediction[i],
            channel_axis=0,
            data_range=2.0,
            gaussian_weights=gaussian_weights,
            sigma=1.5,
            use_sample_covariance=not gaussian_weights,
        )
        assert float(ours[i]) == pytest.approx(reference, abs=1e-5)
    assert torch.allclose(ssim(torch.from_numpy(target), torch.from_numpy(target)), torch.ones(2))


def test_lpips_without_the_package_raises_a_clear_import_error():
    x = torch.zeros(1, 3, 16, 16)
    try:
        import lpips as _  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install lpips"):
            lpips(x, x)
    else:
        assert float(lpips(x, x)) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    path = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=28, patch_size=14
    )
    Dinov2Model(config).save_pretrained(path)
    BitImageProcessor(
        size={"shortest_edge": 28},
        crop_size={"height": 28, "width": 28},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(path)
    return str(path)


def test_transformers_extractor_matches_manual_dinov2_forward(tiny_dinov2):
    from transformers import Dinov2Model

    extractor = load_feature_extractor(tiny_dinov2)
    images = torch.rand(3, 3, 40, 40) * 2 - 1
    features = extractor(images)
    assert features.shape == (3, 32)
    model = Dinov2Model.from_pretrained(tiny_dinov2).eval()
    pixels = torch.nn.functional.interpolate((images + 1) / 2, size=(28, 28), mode="bicubic", align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        hidden = model(pixel_values=(pixels - mean) / std).last_hidden_state
    torch.testing.assert_close(features, hidden[:, 0], rtol=1e-4, atol=1e-5)
    assert extractor.patch_tokens(images).shape == (3, 32, 2, 2)
    assert isinstance(load_feature_extractor(tiny_dinov2 + ":mean"), TransformersFeatureExtractor)
    with pytest.raises(ValueError, match="Could not load"):
        TransformersFeatureExtractor("/does/not/exist")


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_inception_extractor_loads_a_local_torchscript_file(tmp_path):
    class FakeInception(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return x.mean(dim=(2, 3)) if return_features else x.sum()

    path = tmp_path / "inception.pt"
    torch.jit.script(FakeInception()).save(str(path))
    extractor = load_feature_extractor(f"inception:{path}")
    assert isinstance(extractor, InceptionFeatureExtractor)
    images = torch.tensor([-1.0, 1.0]).reshape(2, 1, 1, 1).expand(2, 3, 4, 4)
    torch.testing.assert_close(extractor(images), torch.tensor([[0.0] * 3, [255.0] * 3]))
    with pytest.raises(ValueError, match="does not exist"):
        InceptionFeatureExtractor(tmp_path / "missing.pt")


def test_reconstruction_metrics_on_a_tiny_vae_agree_with_direct_computation():
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    ).eval()
    images = [torch.rand(2, 3, 32, 32) * 2 - 1 for _ in range(2)]

    def extractor(x):
        return x.mean(dim=(2, 3))

    result = reconstruction_metrics(vae, images, extractor=extractor, dsm_levels=(0, 8), progress=False)
    assert result["num_samples"] == 4 and sorted(result["levels"]) == [0, 8]
    with torch.no_grad():
        everything = torch.cat(images)
        reconstruction = vae.decode(vae.encode(everything).latent_dist.mode()).sample.clamp(-1, 1)
    assert result["levels"][0]["psnr"] == pytest.approx(float(psnr(reconstruction, everything).mean()), rel=1e-4)
    expected_fd = frechet_distance(
        collect_features(extractor, [everything]), collect_features(extractor, [reconstruction])
    )
    assert result["levels"][0]["fd"] == pytest.approx(expected_fd, rel=1e-4)
    # spectral numbers: seeded posterior samples (one generator across the batches), DC kept, as analyze reports
    from diffusers_spectrum.spectral import spectral_kl

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        samples = []
        for batch in images:
            posterior = vae.encode(batch).latent_dist
            samples.append(posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator))
    expected_kl = float(spectral_kl(everything, torch.cat(samples), delta=1.0, remove_dc=False).mean())
    assert result["spectral_kl_delta1"] == pytest.approx(expected_kl, rel=1e-4)
    assert result["conventions"]["reconstruction_latents"] == "mean"
    assert result["conventions"]["spectral_latents"] == "sample" and result["conventions"]["spectrum"] == "authors"


def test_local_evaluate_modules_load_offline_and_agree_with_the_functions():
    import evaluate

    from diffusers_spectrum.evaluation.evaluate_metrics import metric_module_path
    from diffusers_spectrum.spectral import spectral_kl

    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(30, 4)), rng.normal(loc=1.0, size=(30, 4))
    fd = evaluate.load(metric_module_path("frechet_distance")).compute(predictions=a, references=b)
    assert fd["frechet_distance"] == pytest.approx(frechet_distance(a, b), rel=1e-6)
    x = rng.uniform(-1, 1, size=(2, 3, 16, 16)).astype(np.float32)
    y = np.clip(x + rng.normal(scale=0.1, size=x.shape), -1, 1).astype(np.float32)
    value = evaluate.load(metric_module_path("psnr")).compute(predictions=y, references=x)["psnr"]
    assert value == pytest.approx(float(psnr(torch.from_numpy(y), torch.from_numpy(x)).mean()), rel=1e-5)
    value = evaluate.load(metric_module_path("ssim")).compute(predictions=y, references=x)["ssim"]
    assert value == pytest.approx(float(ssim(torch.from_numpy(y), torch.from_numpy(x)).mean()), rel=1e-5)
    latents = rng.normal(size=(2, 4, 8, 8)).astype(np.float32)
    images = rng.uniform(-1, 1, size=(2, 3, 32, 32)).astype(np.float32)
    value = evaluate.load(metric_module_path("spectral_kl")).compute(predictions=latents, references=images)
    expected = float(spectral_kl(torch.from_numpy(images), torch.from_numpy(latents)).mean())
    assert value["spectral_kl"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="Unknown metric module"):
        metric_module_path("fid")


def _example(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_evaluate_vae_example_writes_json_with_lowpass_levels(tmp_path, tiny_dinov2):
    torch.manual_seed(0)
    AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    ).save_pretrained(tmp_path / "vae")
    example = _example("evaluate_vae")  # thin: the library's parse_vae_args / evaluate_vae
    args = example.parse_vae_args(
        [
            "--vae",
            str(tmp_path / "vae"),
            "--num_samples",
            "4",
            "--batch_size",
            "2",
            "--resolution",
            "32",
            "--feature_extractor",
            tiny_dinov2,
            "--dsm_levels",
            "0,8",
            "--output_file",
            str(tmp_path / "eval.json"),
            "--no_progress",
        ]
    )
    example.evaluate_vae(args)
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["num_samples"] == 4 and sorted(result["levels"]) == ["0", "8"]
    assert np.isfinite(result["levels"]["8"]["fd"]) and result["levels"]["0"]["psnr"] > 0


@pytest.mark.slow
def test_evaluate_pipeline_example_scores_dit_samples_against_the_data(tmp_path, tiny_dinov2):
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=16,
    )
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    )
    DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "pipe")
    example = _example("evaluate_pipeline")  # thin: the library's parse_pipeline_args / evaluate_pipeline
    args = example.parse_pipeline_args(
        [
            "--pipeline",
            str(tmp_path / "pipe"),
            "--num_samples",
            "4",
            "--batch_size",
            "2",
            "--num_inference_steps",
            "2",
            "--class_labels",
            "1,3",
            "--feature_extractor",
            tiny_dinov2,
            "--output_file",
            str(tmp_path / "fd.json"),
            "--no_progress",
        ]
    )
    result = example.evaluate_pipeline(args)
    assert json.loads((tmp_path / "fd.json").read_text())["fd"] == pytest.approx(result["fd"])
    assert result["num_samples"] == 4 and result["num_reference"] == 4 and result["resolution"] == 16
    assert result["class_labels"] == [1, 3] and result["fd"] > 0


def test_benchmark_runner_collects_rows_reports_failures_and_writes_tables(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"
    spec = importlib.util.spec_from_file_location("benchmarks_run_all", path)
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    row = "{'benchmark': 'b', 'metric': 'm', 'value': 1.5, 'unit': 'ms', 'ratio': 2.0, 'target': 't'}"
    (tmp_path / "bench_zz_ok.py").write_text(f"def run(quick=False):\n    return [{row}] * (1 if quick else 2)\n")
    (tmp_path / "bench_zz_bad.py").write_text("def run(quick=False):\n    return [{'value': 1}]\n")
    (tmp_path / "bench_zz_crash.py").write_text("import os\n\ndef run(quick=False):\n    os._exit(3)\n")
    monkeypatch.setattr(run_all, "BENCHMARK_DIR", tmp_path)
    assert run_all.discover(["zz_ok"]) == ["bench_zz_ok"]
    with pytest.raises(ValueError, match="Unknown benchmark"):
        run_all.discover(["missing"])
    assert run_all.main(["--quick", "--output_dir", str(tmp_path / "out")]) == 1  # one module broke the protocol
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [s["ok"] for s in payload["status"]] == [False, False, True] and payload["quick"] is True
    assert [r["module"] for r in payload["rows"]] == ["bench_zz_bad", "bench_zz_crash", "bench_zz_ok"]
    assert "exit status 3" in payload["status"][1]["error"]
    assert payload["machine"]["cores"] >= 1 and payload["machine"]["versions"]["torch"]
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| b | m | 1.5 | ms | 2.00x | t |" in table and "bench_zz_bad FAILED" in table
    assert run_all.main(["--only", "zz_ok", "--output_dir", str(tmp_path / "full")]) == 0
    assert len(json.loads((tmp_path / "full" / "results.json").read_text())["rows"]) == 2
