"""`diffusers-spectrum analyze` end to end on tiny random models and the embedded photos, plus the plotting helpers."""

import gc
import json
import logging
import warnings

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from diffusers_spectrum import cli
from diffusers_spectrum.data.images import image_batches_from
from diffusers_spectrum.evaluation.analyze import analyze_vae, compare_vaes
from diffusers_spectrum.evaluation.diagnostics import (
    VERDICT_TOLERANCE,
    VERDICTS,
    SpectrumStatistics,
    rms_spatial_contrast,
)
from diffusers_spectrum.evaluation.encoder_analysis import analyze_encoder
from diffusers_spectrum.evaluation.plotting import figure_to_array, plot_image_latent_spectra
from diffusers_spectrum.models import SpectrumAutoencoderKL
from diffusers_spectrum.spectral import spectral_kl


TINY_VAE = dict(
    block_out_channels=(8, 16),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    latent_channels=4,
    norm_num_groups=4,
    layers_per_block=1,
    sample_size=64,
)


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae")
    AutoencoderKL(**TINY_VAE).save_pretrained(path)
    return path


def _valid_png(path) -> bool:
    with Image.open(path) as image:
        image.verify()
        return image.format == "PNG"


@pytest.mark.slow
def test_analyze_command_on_tiny_vae_and_embedded_dataset_writes_report_and_pngs(tiny_vae_dir, tmp_path):
    out = tmp_path / "report"
    argv = ["analyze", "--vae", str(tiny_vae_dir), "--num_samples", "6", "--batch_size", "4", "--output_dir", str(out)]
    assert cli.main(argv + ["--no_progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    # no --resolution: the embedded photos' own 64 px, nothing upsampled
    assert report["resolution"] == report["data_resolution"] == 64 and report["upsampled"] is False
    assert report["convention"]["latents"] == "sample" and report["convention"]["spectrum"] == "authors"
    assert report["verdict"] in VERDICTS and report["num_samples"] == 6 and report["latent_shape"] == [4, 32, 32]
    assert report["verdict_rule"]["tolerance"] == VERDICT_TOLERANCE
    assert set(report["verdicts"]) == {"authors", "dc_free"}  # DC kept and DC free, side by side
    assert report["verdicts"]["authors"]["verdict"] == report["verdict"]
    for view in report["verdicts"].values():
        assert view["verdict"] in VERDICTS and view["centroid_gap"]["lo"] <= view["centroid_gap"]["hi"]
    assert sorted(report["dsm_lowpass_mse"]) == ["0", "10", "12", "8"]
    for level in ("8", "10", "12"):  # the drop from level 0 beside the absolute PSNR
        drop = report["dsm_lowpass_drop_db"][level]
        assert drop["drop_db"] == pytest.approx(report["dsm_lowpass_psnr"][level] - report["dsm_lowpass_psnr"]["0"])
        assert drop["per_image_lo_db"] <= drop["per_image_mean_db"] <= drop["per_image_hi_db"]
    assert len(report["spectra"]["latent"]["mean"]) == 16 and len(report["channel_spectra"]) == 4
    assert 0 < report["rmsc"] <= 1 and report["image_slope"] < report["target_slope"]
    for name in report["plots"].values():
        assert _valid_png(out / name)

    # the report's numbers are those of the same images and seeded posterior samples, computed directly with the
    # spectral core in the authors' convention (DC kept)
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    images = torch.cat(list(image_batches_from(None, num_samples=6, resolution=64, batch_size=4)))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        samples, stds = [], []
        for batch in (images[:4], images[4:]):  # the same batches, so the same noise draws
            posterior = vae.encode(batch).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=generator)
            samples.append(posterior.mean + posterior.std * noise)
            stds.append(posterior.std)
        latents, std = torch.cat(samples), torch.cat(stds)
        reconstruction = vae.decode(latents).sample.clamp(-1, 1)
    for delta, key in ((1.0, "spectral_kl_delta1"), (0.0, "spectral_kl_delta0")):
        expected = float(spectral_kl(images, latents, delta=delta, remove_dc=False).mean())
        assert report[key] == pytest.approx(expected, rel=1e-4)
    assert report["rmsc"] == pytest.approx(float(rms_spatial_contrast(latents).mean()), rel=1e-4)
    assert report["posterior_std"]["mean"] == pytest.approx(float(std.mean()), rel=1e-4)
    assert report["dsm_lowpass_mse"]["0"] == pytest.approx(float((reconstruction - images).square().mean()), rel=1e-4)


def test_analyze_labels_the_mean_and_dc_free_options_and_warns_when_it_upsamples(tiny_vae_dir, tmp_path, caplog):
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    common = dict(num_samples=4, batch_size=4, dsm_levels=(), progress=False)
    with caplog.at_level(logging.WARNING):
        report = analyze_vae(vae, resolution=128, latents="mean", spectrum_convention="dc_free", **common)
    assert report["upsampled"] is True and report["resolution"] == 128 and report["data_resolution"] == 64
    assert "UPSAMPLING" in caplog.text
    assert report["convention"]["latents"] == "mean" and report["convention"]["spectrum"] == "dc_free"
    images = torch.cat(list(image_batches_from(None, num_samples=4, resolution=128, batch_size=4)))
    with torch.no_grad():
        means = vae.encode(images).latent_dist.mean
    expected = float(spectral_kl(images, means, delta=1.0, remove_dc=True).mean())
    assert report["spectral_kl_delta1"] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="latents"):
        analyze_vae(vae, latents="mode", **common)
    with pytest.raises(ValueError, match="spectrum_convention"):
        analyze_vae(vae, spectrum_convention="centred", **common)


def _live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage reachable by the garbage collector (model weights included)."""
    gc.collect()
    storages = {}
    with warnings.catch_warnings():  # isinstance on deprecated torch module attributes warns
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


@pytest.mark.slow
def test_analyze_memory_is_flat_in_the_number_of_images(tiny_vae_dir, monkeypatch):
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    original = SpectrumStatistics.update
    measured = []

    def update(self, *args, **kwargs):
        original(self, *args, **kwargs)
        batches = self.count // 2
        live = _live_tensor_bytes() if batches in (2, num_samples // 2) else None  # after the 2nd and the last batch
        measured[-1].append((live, self.state_nbytes()))

    monkeypatch.setattr(SpectrumStatistics, "update", update)
    for num_samples in (4, 16):  # N and 4N images, 2 per batch, with the DSM low-pass decodes
        measured.append([])
        analyze_vae(vae, num_samples=num_samples, batch_size=2, resolution=16, dsm_levels=(0, 8), progress=False)
    short, long = measured
    assert len(short) == 2 and len(long) == 8
    assert short[-1][1] == long[-1][1]  # the accumulators' state does not grow
    # nothing per image survives a batch: live tensors after the last batch are the same for N and 4N images
    assert long[-1][0] == long[1][0] == short[-1][0]


def test_analyze_vae_takes_a_spectrum_autoencoder_folder_and_a_pipeline_folder(tmp_path):
    torch.manual_seed(0)
    vae = SpectrumAutoencoderKL(**TINY_VAE)
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    (tmp_path / "pipe" / "model_index.json").write_text('{"_class_name": "DiTPipeline"}')
    report = analyze_vae(tmp_path / "pipe", num_samples=2, batch_size=2, resolution=32, dsm_levels=(), progress=False)
    assert report["num_samples"] == 2 and report["latent_shape"] == [4, 16, 16] and report["dsm_lowpass_mse"] == {}


def test_compare_writes_one_table_and_one_plot(tiny_vae_dir, tmp_path):
    torch.manual_seed(1)
    other = AutoencoderKL(**TINY_VAE)
    result = compare_vaes(
        [tiny_vae_dir, other],
        names=["a", "b"],
        output_dir=tmp_path,
        num_samples=2,
        batch_size=2,
        resolution=32,
        dsm_levels=(0,),
        progress=False,
    )
    assert [row["name"] for row in result["table"]] == ["a", "b"]
    assert result["table"][0]["latent_slope"] != result["table"][1]["latent_slope"]
    assert json.loads((tmp_path / "compare.json").read_text())["table"][1]["name"] == "b"
    markdown = (tmp_path / "compare.md").read_text()
    assert sum(line.startswith("| ") for line in markdown.splitlines()) == 3  # header and two rows
    assert "Latents: posterior samples" in markdown
    assert _valid_png(tmp_path / "compare.png") and (tmp_path / "a" / "report.json").is_file()


def test_encoder_view_reports_spectrum_and_rmsc_before_and_after_each_filter(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    from diffusers_spectrum.models.encoders import RepresentationEncoder

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=28, patch_size=14
    )
    Dinov2Model(config).save_pretrained(tmp_path / "dino")
    report = analyze_encoder(
        str(tmp_path / "dino"),
        num_samples=3,
        grid_size=4,
        resolution=32,
        batch_size=3,
        output_dir=tmp_path / "out",
        progress=False,
    )
    assert set(report["filters"]) == {"none", "spatial_norm", "dog"} and report["feature_dim"] == 16
    images = torch.cat(list(image_batches_from(None, num_samples=3, resolution=32, batch_size=3)))
    tokens = RepresentationEncoder.from_pretrained(str(tmp_path / "dino"))(images, (4, 4))  # (3, 16, 16)
    grid = tokens.transpose(1, 2).reshape(3, 16, 4, 4)
    assert report["rmsc"] == pytest.approx(float(rms_spatial_contrast(grid).mean()), rel=1e-4)
    # DoG removes each channel's spatial mean (the DC that dominates raw tokens), so the spatial contrast rises
    assert report["filters"]["dog"]["rmsc"] > report["filters"]["none"]["rmsc"]
    assert _valid_png(tmp_path / "out" / "encoder_spectra.png")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["kind"] == "encoder"


def test_analyze_reports_clear_errors(tiny_vae_dir, tmp_path, capsys):
    base = ["analyze", "--output_dir", str(tmp_path / "out"), "--no_progress", "--num_samples", "1"]
    assert cli.main(base + ["--vae", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert cli.main(base + ["--vae", str(tiny_vae_dir), "--data", str(tmp_path / "nodata")]) == 2
    assert "--data " + str(tmp_path / "nodata") + ": no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(base + ["--vae", str(tiny_vae_dir), "--data", str(tmp_path / "empty"), "--resolution", "32"]) == 2
    assert "Could not read the dataset" in capsys.readouterr().err
    assert cli.main(base + ["--vae", str(tiny_vae_dir), "--resolution", "33"]) == 2
    assert "downsampling factor 2" in capsys.readouterr().err
    assert cli.main(base + ["--vae", str(tiny_vae_dir), "--resolution", "40"]) == 2
    assert "multiple of 16" in capsys.readouterr().err


def test_plot_image_latent_spectra_renders_an_rgb_array_for_tensorboard():
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    figure = plot_image_latent_spectra(images, torch.randn(2, 4, 32, 32), delta=1.0)
    array = figure_to_array(figure)
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3 and array.std() > 0
