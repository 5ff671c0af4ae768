"""The miniature reproduction (`benchmarks/reproduce_spectrum_matching.py`) end to end in `--quick` mode: the JSON's
shape, the claims quick mode is large enough to decide, and resume (a lost unit is recomputed, nothing else is).

What quick mode (10 VAE steps, 10 DiT steps) can decide, and is checked here: properties that hold from
initialisation on, i.e. of the data and of the posterior noise: the crops' spectrum is steeper than the delta = 1
target, and posterior samples are flatter than posterior means for every autoencoder (the noise the spectral terms
act through). It cannot decide the four claims of the page (spectral ordering after training, diffusability, DSM
low-pass fidelity, REPA): those are only checked for shape here, and reported by the full run.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "reproduce_spectrum_matching.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("reproduce_spectrum_matching", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_study_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    study = _load_script()
    work, out = tmp_path / "work", tmp_path / "docs"
    argv = ["--quick", "--work_dir", str(work), "--output_dir", str(out)]
    results = study.main(argv)

    # shape of the JSON (the one on disk is the returned one)
    on_disk = json.loads((out / "reproduction_quick.json").read_text())
    assert on_disk["table"].keys() == set(study.AUTOENCODERS)
    for key in ("command", "seeds", "versions", "settings", "scan", "autoencoders", "diffusion", "repa", "claims"):
        assert key in on_disk, key
    assert on_disk["mode"] == "quick" and on_disk["seeds"] == [0, 1]
    for name in study.AUTOENCODERS:
        row = on_disk["table"][name]
        assert row["swd_x1e3"]["n"] == 2 and row["spectrum_distance"]["n"] == 2
        assert set(row["dsm_lowpass_psnr"]) == {"0", "8", "10", "12"}
        assert len(on_disk["diffusion"][name]) == 2 and all(r["loss_curve"] for r in on_disk["diffusion"][name])
    assert set(on_disk["repa"]) == {"none", "plain", "dog"}
    assert on_disk["scan"]["chosen_esm_weight"] in on_disk["scan"]["weights"]
    assert (out / "REPRODUCTION_quick.md").is_file() and (out / "reproduction_spectra_quick.png").is_file()

    # what quick mode can decide: data and posterior-noise properties
    for name in study.AUTOENCODERS:
        row = on_disk["table"][name]
        ae = on_disk["autoencoders"][name]
        assert ae["sample"]["image_slope"] < row["target_slope"]
        assert row["latent_slope_sample"] > row["latent_slope_mean"], name

    # resume: lose one DiT unit; only it is recomputed, to the same numbers (everything is seeded)
    unit = study.Units(work).path("dit/sd-vae/seed1")
    unit.unlink()
    shutil.rmtree(work / "dit" / "sd-vae-seed1")
    stored = {p.name: p.stat().st_mtime_ns for p in (work / "units").glob("*.json")}
    again = study.main(argv)
    recomputed = {p.name for p in (work / "units").glob("*.json") if stored.get(p.name) != p.stat().st_mtime_ns}
    assert recomputed == {unit.name}
    assert again["table"] == results["table"]
