"""`diffusers-spectrum demo --quick`: every stage runs, the outputs exist, the pipeline loads with plain diffusers."""

import json

import numpy as np
import pytest
from diffusers import DiffusionPipeline, DiTPipeline
from PIL import Image

from diffusers_spectrum import cli
from diffusers_spectrum.demo import DEMO_ENCODER, DEMO_SETTINGS, DEMO_VAE, find_examples_dir


@pytest.mark.slow
def test_demo_quick_writes_loadable_pipeline_sample_grid_and_spectrum_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--output_dir", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "diffusers-spectrum demo finished" in printed and "[5/5]" in printed

    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["settings"] == DEMO_SETTINGS["quick"]
    assert set(summary["stage_seconds"]) == {"vae", "cache", "dit", "sample", "analyze"}

    # the pipeline folder is a stock DiTPipeline that samples the embedded photos' classes
    pipe = DiffusionPipeline.from_pretrained(summary["outputs"]["pipeline"])
    assert type(pipe) is DiTPipeline and pipe.labels["coffee"] == 3
    assert pipe.transformer.config.sample_size == 8 and pipe.vae.config.latent_channels == 4

    # the sample grid holds the requested number of 32 px images; the spectrum report has the verdict and slopes
    grid = np.asarray(Image.open(out / "samples" / "grid.png"))
    assert grid.shape == (2 + 34, 2 + 34 * DEMO_SETTINGS["quick"]["num_images"], 3)
    shown = np.asarray(Image.open(out / "sample_grid.png"))  # the same grid, 4x nearest-neighbour
    np.testing.assert_array_equal(shown[::4, ::4], grid)
    report = json.loads((out / "spectrum" / "report.json").read_text())
    assert report["verdict"] in printed and np.isfinite(report["latent_slope"])
    assert (out / "spectrum.png").is_file()

    # the cache holds every embedded photo with REPA targets on the DiT's token grid
    info = json.loads((out / "latents" / "cache_info.json").read_text())
    assert info["num_examples"] == 112 and info["repa_feature_shape"] == [64, DEMO_ENCODER["hidden_size"]]


def test_demo_configuration_is_consistent():
    # encoder grid = DiT token grid (latent side / patch 1) for the demo resolution
    resolution = DEMO_SETTINGS["full"]["resolution"]
    latent_side = resolution // 2 ** (len(DEMO_VAE["block_out_channels"]) - 1)
    assert resolution // DEMO_ENCODER["patch_size"] == latent_side == 8
    assert (find_examples_dir() / "train_spectrum_vae.py").is_file()
