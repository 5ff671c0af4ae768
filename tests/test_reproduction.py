"""The Spectrum Matching reproduction (`benchmarks/reproduce_spectrum_matching.py`): its pieces (the split by tiles of
the source photographs, the seed pairing, the ESM-weight rule, the unit locks shared by several processes) and the
study end to end in `--quick` mode: the JSON's shape (arm verdicts over autoencoder seeds, both views, anchors, the
blur check, the KL sweep, paired statistics, per-unit seconds), the claims quick mode is large enough to decide, and
resume (a lost unit is recomputed, nothing else is).

What quick mode (4 autoencoder steps, 4 DiT steps, 32 px) can decide, and is checked here: properties that hold
from initialisation on, i.e. of the data and of the posterior noise: the crops' spectrum is steeper than the
delta = 1 target, and posterior samples are flatter than posterior means for every autoencoder. It cannot decide the
page's claims (spectral ordering after training, diffusability, DSM low-pass fidelity): those are checked for shape
here, and reported by the full run.
"""

import importlib.util
import json
import multiprocessing
import shutil
import time
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "reproduce_spectrum_matching.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("reproduce_spectrum_matching", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiles_split_each_photograph_and_dit_seeds_pair_with_autoencoder_seeds():
    study = _load_script()
    for count in (6, 12, 15, 16):
        splits = study.tile_splits(count, seed=3)
        held = max(1, round(count / 8))
        assert splits.count("test") == splits.count("validation") == held and splits.count("train") == count - 2 * held
        assert splits == study.tile_splits(count, seed=3) and splits != study.tile_splits(count, seed=4)
    assert [study.dit_ae_seed(s, (0, 1, 2)) for s in range(5)] == [0, 1, 2, 0, 1]
    assert study.vae_flags("sd-vae-kl0.001", "enc") == ["--recipe", "sd-vae", "--kl_weight", "0.001"]
    assert study.vae_flags(study.vae_key("esm+dsm", 0.1), "enc")[-2:] == ["--dsm_levels", "0,8,10,12"]
    assert study.vae_key("esm", 1.0) == study.vae_key("esm-w1", None) == "esm-w1"


def test_esm_weight_is_chosen_on_validation_by_the_rule():
    study = _load_script()

    def unit(psnr, verdict, w1):
        return {"psnr": psnr, "sample": {"verdicts": {"authors": {"verdict": verdict, "w1": {"estimate": w1}}}}}

    reference = {"psnr": 20.0}
    scan = {0.01: unit(20.0, "over-noisy", 0.4), 0.1: unit(19.5, "matched", 0.08), 1.0: unit(19.2, "matched", 0.05)}
    assert study.choose_esm_weight(scan, reference)[0] == 0.1  # the smallest matched weight
    scan[0.1] = unit(18.0, "matched", 0.08)  # too costly: 2 dB
    assert study.choose_esm_weight(scan, reference)[0] == 1.0
    scan[1.0] = unit(19.5, "over-noisy", 0.3)  # none matched: the smallest w1 at <= 1 dB
    assert study.choose_esm_weight(scan, reference)[0] == 1.0
    scan = {w: unit(10.0, "matched", 0.01) for w in (0.01, 0.1)}
    assert "cheapest" in study.choose_esm_weight(scan, reference)[1]


def _worker(folder: str, names: list[str], record: str) -> None:
    """One study process: runs the shared plan (each unit sleeps, then writes who ran it)."""
    study = _load_script()
    units = study.Units(Path(folder))

    def unit(name):
        time.sleep(0.2)
        with open(record, "a") as f:
            f.write(f"{name} {multiprocessing.current_process().pid}\n")
        return {"name": name}

    def plan():
        tasks = [study.Task("first", (), lambda: unit("first"))]
        tasks += [study.Task(n, ("first",), lambda n=n: unit(n)) for n in names]
        return tasks, True

    study.run_tasks(units, plan, poll_seconds=0.05)


def test_two_processes_share_the_units_and_run_each_once(tmp_path):
    study = _load_script()
    units = study.Units(tmp_path)
    # a unit held by another process (its lock taken) is not run here
    lock = study._try_lock(units.path("held").with_suffix(".lock"))
    assert units.run("held", lambda: pytest.fail("ran a unit another process holds")) is None
    study.os.close(lock)
    assert units.run("held", lambda: {"x": 1})["result"] == {"x": 1} and units.done("held")

    names, record = [f"unit{i}" for i in range(8)], tmp_path / "record.txt"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(str(tmp_path), names, str(record))) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    runs = [line.split() for line in record.read_text().splitlines()]
    assert sorted(name for name, _ in runs) == sorted(["first", *names])  # each unit once
    assert len({pid for _, pid in runs}) == 2  # both processes worked
    assert all(units.get(n)["result"] == {"name": n} for n in names)


@pytest.mark.slow
def test_quick_study_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    study = _load_script()
    work, out = tmp_path / "work", tmp_path / "docs"
    argv = ["--quick", "--work_dir", str(work), "--output_dir", str(out)]
    results = study.main(argv)

    # shape of the JSON (the one on disk is the returned one)
    on_disk = json.loads((out / "reproduction_quick.json").read_text())
    for key in (
        "command",
        "seeds",
        "versions",
        "settings",
        "arms",
        "scan",
        "kl_sweep",
        "kl_convention",
        "texture_term",
        "autoencoders",
        "ceilings",
        "diffusion",
        "blur_check",
        "floor",
        "feature_net",
        "unit_seconds",
        "unit_cpu_seconds",
        "unit_costs",
        "analysis",
    ):
        assert key in on_disk, key
    assert on_disk["mode"] == "quick" and on_disk["format"] == study.FORMAT
    data, seeds = on_disk["data"], on_disk["seeds"]
    assert data["test"] == data["validation"] == 65 and data["train"] == 345  # 5 crops per tile, 13 / 13 / 69 tiles
    splits = {
        s: {p.name.split("_s")[0] for p in (work / "data" / s).glob("*.png")} for s in ("train", "validation", "test")
    }
    assert not (
        splits["train"] & splits["test"]
        or splits["train"] & splits["validation"]
        or splits["validation"] & splits["test"]
    )  # no source tile in two splits
    assert seeds == {"autoencoder": [0, 1], "dit": [0, 1], "dit_to_autoencoder": {"0": 0, "1": 1}}
    scan = on_disk["scan"]
    assert scan["measured_on"] == "validation" and scan["chosen_esm_weight"] in [0.1, 1.0]
    assert set(on_disk["arms"]) == set(study.ARMS) - ({"esm-w1"} if scan["chosen_esm_weight"] == 1.0 else set())
    assert set(on_disk["kl_sweep"]["results"]) == {"1e-06", "0.001"}
    assert on_disk["kl_convention"]["matches_authors"] is True
    assert all(seconds > 0 for seconds in on_disk["unit_seconds"].values())  # per-unit wall seconds
    assert {"vae", "dit", "cache", "ceiling"} <= set(on_disk["unit_costs"])
    analysis = on_disk["analysis"]
    for arm in on_disk["arms"]:
        key = on_disk["arm_vae_keys"][arm]
        assert set(on_disk["autoencoders"][key]) == {"0", "1"} and set(on_disk["ceilings"][key]) == {"0", "1"}
        for unit in on_disk["autoencoders"][key].values():
            test = unit["test"]
            assert set(test["sample"]["verdicts"]) == {"authors", "dc_free"}
            assert "bootstrap" in test["sample"]["verdicts"]["dc_free"]["interval_method"]
            assert set(test["mean"]["dsm_lowpass_drop_db"]) == {"8", "10", "12"}
        for view in ("authors", "dc_free"):  # the arm verdict: an interval over its autoencoder seeds
            verdict = analysis["verdicts"][arm][view]
            assert verdict["n"] == 2 and "autoencoder seeds" in verdict["interval_method"]
            gap = verdict["centroid_gap"]
            assert gap["lo"] <= gap["estimate"] <= gap["hi"]
        runs = on_disk["diffusion"][arm]
        assert [r["seed"] for r in runs] == [0, 1] and [r["ae_seed"] for r in runs] == [0, 1]
        for run in runs:
            assert (
                run["loss_curve"]
                and run["heldout_fm_loss"] > 0
                and set(run["heldout_fm_loss_per_t"]) == {"0.3", "0.7"}
            )
            assert {"spectrum_distance", "swd_x1e3", "swd_pooled_x1e3", "kid_trained", "fd_random"} <= set(run)
    assert "spectrum_distance" in analysis["relied_metrics"]
    tested = {r["metric"] for r in analysis["family"]}
    assert tested == {
        *[m for m in analysis["measured_metrics"] if m in analysis["relied_metrics"]],
        "heldout_fm_loss",
        "final_dit_loss",
    }
    assert {(r["arm"], r["baseline"]) for r in analysis["family"]} >= {("esm+dsm", "eq-vae"), ("esm+dsm", "va-vae")}
    assert all(r["n"] == 2 for r in analysis["family"] + analysis["autoencoder_family"])
    assert {r["metric"] for r in analysis["autoencoder_family"]} == {"w1", "psnr", "dsm_drop_10"}
    agreements = {c["agreement"] for c in analysis["claims"]}
    assert agreements <= {"reproduces", "contradicts", "not decided", "reported"}
    page = (out / "REPRODUCTION_quick.md").read_text()
    for phrase in (
        "## What reproduces, what does not",
        "## The KL convention, checked against the authors' code",
        "data floor",
        "reconstruction ceiling",
        "## Every claim, for and against",
        "by autoencoder seed",
    ):
        assert phrase in page, phrase
    assert (out / "reproduction_spectra_quick.png").is_file() and (out / "reproduction_samples_quick.png").is_file()

    # what quick mode can decide: data and posterior-noise properties
    for key, per_seed in on_disk["autoencoders"].items():
        for unit in per_seed.values():
            if "test" in unit:
                test = unit["test"]
                assert test["sample"]["image_slope"] < test["sample"]["target_slope"]
                assert test["sample"]["latent_slope"] > test["mean"]["latent_slope"], key

    # the page and analysis regenerate from the JSON alone
    assert study.analyse(on_disk)["family"] == analysis["family"]

    # resume: lose one DiT unit; only it is recomputed, to the same numbers (everything is seeded)
    unit = study.Units(work).path("dit/sd-vae/seed1")
    unit.unlink()
    shutil.rmtree(work / "dit" / "sd-vae-seed1")
    stored = {p.name: p.stat().st_mtime_ns for p in (work / "units").glob("*.json")}
    again = study.main(argv)
    recomputed = {p.name for p in (work / "units").glob("*.json") if stored.get(p.name) != p.stat().st_mtime_ns}
    assert recomputed == {unit.name}
    assert again["diffusion"] == results["diffusion"] and again["analysis"]["family"] == results["analysis"]["family"]
