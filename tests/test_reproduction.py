"""The miniature reproduction (`benchmarks/reproduce_spectrum_matching.py`) end to end in `--quick` mode: the JSON's
shape (both verdict views, anchors, the blur check, paired statistics, per-unit seconds), the claims quick mode is
large enough to decide, and resume (a lost unit is recomputed, nothing else is).

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
    for key in ("command", "seeds", "versions", "settings", "scan", "autoencoders", "diffusion", "repa_runs",
                "blur_check", "floor", "feature_net", "unit_seconds", "analysis"):  # fmt: skip
        assert key in on_disk, key
    assert on_disk["mode"] == "quick" and on_disk["seeds"] == [0, 1] and on_disk["format"] == study.FORMAT
    assert on_disk["data"]["validation"] == on_disk["data"]["heldout"] == 126  # three photo splits
    assert on_disk["scan"]["measured_on"] == "validation" and on_disk["scan"]["chosen_esm_weight"] in [0.0, 1.0]
    assert all(seconds > 0 for seconds in on_disk["unit_seconds"].values())  # per-unit wall seconds
    analysis = on_disk["analysis"]
    for name in study.AUTOENCODERS:
        ae = on_disk["autoencoders"][name]
        assert set(ae["sample"]["verdicts"]) == {"authors", "dc_free"}  # both views, with bootstrap intervals
        assert "bootstrap" in ae["sample"]["verdicts"]["dc_free"]["interval_method"]
        assert set(ae["mean"]["dsm_lowpass_drop_db"]) == {"8", "10", "12"}
        assert set(ae["ceiling"]) == set(on_disk["floor"])  # reconstruction ceiling beside the data floor
        assert len(on_disk["diffusion"][name]) == 2 and all(r["loss_curve"] for r in on_disk["diffusion"][name])
        for run in on_disk["diffusion"][name]:
            assert {"spectrum_distance", "swd_x1e3", "swd_pooled_x1e3", "kid_trained", "fd_random"} <= set(run)
    assert "spectrum_distance" in analysis["relied_metrics"] and "swd_x1e3" not in analysis["relied_metrics"]
    tested = {(r["arm"], r["metric"]) for r in analysis["family"]}
    assert {m for _, m in tested} == set(analysis["relied_metrics"]) | {"final_dit_loss"}
    assert len(tested) == 5 * len({m for _, m in tested}) and all(r["n"] == 2 for r in analysis["family"])
    untested = {r["metric"] for r in analysis["descriptive"]}
    assert untested | {m for _, m in tested} == set(analysis["measured_metrics"])  # every metric, for or against
    assert set(on_disk["repa_runs"]) == {"none", "plain", "dog"}
    page = (out / "REPRODUCTION_quick.md").read_text()
    assert "## Every claim, for and against" in page and "data floor" in page and "reconstruction ceiling" in page
    assert (out / "reproduction_spectra_quick.png").is_file()

    # what quick mode can decide: data and posterior-noise properties
    for name in study.AUTOENCODERS:
        ae = on_disk["autoencoders"][name]
        assert ae["sample"]["image_slope"] < ae["sample"]["target_slope"]
        assert ae["sample"]["latent_slope"] > ae["mean"]["latent_slope"], name

    # the page and analysis regenerate from the JSON alone
    again_analysis = study.analyse(on_disk)
    assert again_analysis["family"] == analysis["family"]

    # resume: lose one DiT unit; only it is recomputed, to the same numbers (everything is seeded)
    unit = study.Units(work).path("dit/sd-vae/seed1")
    unit.unlink()
    shutil.rmtree(work / "dit" / "sd-vae-seed1")
    stored = {p.name: p.stat().st_mtime_ns for p in (work / "units").glob("*.json")}
    again = study.main(argv)
    recomputed = {p.name for p in (work / "units").glob("*.json") if stored.get(p.name) != p.stat().st_mtime_ns}
    assert recomputed == {unit.name}
    assert again["diffusion"] == results["diffusion"] and again["analysis"]["family"] == results["analysis"]["family"]
