"""`diffusers-spectrum demo --quick`: every stage runs, the outputs exist, the pipeline loads with plain diffusers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from diffusers import DiffusionPipeline, DiTPipeline
from PIL import Image

from diffusers_spectrum import cli
from diffusers_spectrum.demo import DEMO_ENCODER, DEMO_SETTINGS


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_quick_writes_loadable_pipeline_sample_grid_and_spectrum_report(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an unrelated folder: the demo needs nothing from the repository
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


@pytest.mark.slow
def test_a_non_editable_install_runs_the_demo_from_another_folder(tmp_path):
    """`pip install .` (a built wheel, not editable) into a fresh venv, then the demo from an unrelated folder: the
    package must not need the repository's examples/ or any file outside the wheel.

    The wheel is built offline by the test environment's own pip and setuptools (the venv has no pip and no packages
    of its own: the test environment's site-packages come in through PYTHONPATH, where `.pth` files, such as the
    editable install's, are not read; `.[test]` pins setuptools >= 70.1, which builds wheels itself, as
    pyproject.toml declares), with any installed `wheel` package shadowed by setuptools' own vendored copy: what a
    fresh machine without `wheel` has. Nothing comes from the interpreter the test environment was made from."""
    import sysconfig

    import setuptools

    vendored = Path(setuptools.__file__).parent / "_vendor" / "wheel"
    assert vendored.is_dir(), f"setuptools {setuptools.__version__} cannot build wheels itself; pip install -e .[test]"
    shadow = tmp_path / "no_installed_wheel"
    shadow.mkdir()
    (shadow / "wheel").symlink_to(vendored, target_is_directory=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    test_site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    python = venv / "bin" / "python"
    build = tmp_path / "build"
    built = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "--no-index",
            "--target",
            str(build),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), *test_site])},
    )
    assert built.returncode == 0, built.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = os.pathsep.join([str(build), *test_site])
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    code = (
        "import sys, diffusers_spectrum, diffusers_spectrum.cli as c; "
        f"assert diffusers_spectrum.__file__.startswith({str(build)!r}), diffusers_spectrum.__file__; "
        "sys.exit(c.main(['demo', '--output_dir', 'out', '--quick']))"
    )
    result = subprocess.run(
        [str(python), "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (elsewhere / "out" / "dit" / "pipeline" / "model_index.json").is_file()
    assert (build / "diffusers_spectrum" / "assets" / "photos" / "metadata.jsonl").is_file()
