"""The studies' plumbing (benchmarks/study_units.py and the analysis of the two regulariser ablations) on synthetic
numbers: concurrent merges lose nothing, shards cover every unit once, the pixel study's noise gate, the audio study's
peak rule. The end-to-end quick modes are in test_train_unconditional.py and test_audio_analysis.py."""

import importlib.util
import json
import multiprocessing
import sys
from pathlib import Path

import numpy as np
import pytest


REPO = Path(__file__).resolve().parents[1]


def load_script(relative: str):
    path = REPO / relative
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def _merge_keys(path: str, worker: int, count: int) -> None:
    units = load_script("benchmarks/study_units.py")

    def fresh():
        return {"budget": {"b": 1}, "units": {}}

    for i in range(count):
        units.merge(
            Path(path),
            lambda p: units.load_matching(p, "budget", {"b": 1}, fresh),
            lambda r, k=f"w{worker}-{i}": r["units"].__setitem__(k, worker),
        )


def test_concurrent_merges_keep_every_unit(tmp_path):
    path = tmp_path / "study.json"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_merge_keys, args=(str(path), w, 15)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    stored = json.loads(path.read_text())
    assert sorted(stored["units"]) == sorted(f"w{w}-{i}" for w in range(4) for i in range(15))


def test_load_matching_starts_fresh_for_another_budget(tmp_path):
    units = load_script("benchmarks/study_units.py")
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"budget": {"steps": 2}, "units": {"a": 1}}))
    assert units.load_matching(path, "budget", {"steps": 2}, dict)["units"] == {"a": 1}
    assert units.load_matching(path, "budget", {"steps": 3}, lambda: {"fresh": True}) == {"fresh": True}
    # a JSON of the previous format (no units) is not resumed
    path.write_text(json.dumps({"budget": {"steps": 2}, "runs": []}))
    assert units.load_matching(path, "budget", {"steps": 2}, lambda: {"fresh": True}) == {"fresh": True}


def test_cost_balanced_shards_match_a_hand_worked_plan():
    units = load_script("benchmarks/study_units.py")
    # costs 3, 1, 1, 1, 2: shard 0 takes a (3); b, c, d go to shard 1 (1, 2, 3); e goes to shard 0 (tie 3-3: lower)
    items, costs = ["a", "b", "c", "d", "e"], [3, 1, 1, 1, 2]
    assert units.shard_units(items, (0, 2), costs) == ["a", "e"]
    assert units.shard_units(items, (1, 2), costs) == ["b", "c", "d"]
    with pytest.raises(ValueError, match="costs"):
        units.shard_units(items, (0, 2), [1])


def test_shards_cover_every_unit_once():
    units = load_script("benchmarks/study_units.py")
    items = list(range(23))
    shards = [units.shard_units(items, (i, 3)) for i in range(3)]
    assert sorted(x for shard in shards for x in shard) == items
    assert units.parse_shard("1/2") == (1, 2)
    for bad in ("2/2", "a/b", "1", "-1/2"):
        with pytest.raises(Exception, match="--shard"):
            units.parse_shard(bad)


def test_replace_between_keeps_the_rest(tmp_path):
    units = load_script("benchmarks/study_units.py")
    page = tmp_path / "README.md"
    page.write_text("head\n<!-- a -->\nold\n<!-- b -->\ntail\n")
    assert units.replace_between(page, "<!-- a -->", "<!-- b -->", "new")
    assert page.read_text() == "head\n<!-- a -->\nnew\n<!-- b -->\ntail\n"
    assert not units.replace_between(page, "<!-- x -->", "<!-- b -->", "new")


def test_every_unit_ordered_baselines_first():
    ablation = load_script("benchmarks/ablate_spectral_regularization.py")
    budget = ablation.BUDGETS["full"]
    units = ablation.all_units(budget)
    assert len(units) == len(set(units)) == 2 * 4 * len(budget["seeds"]) and len(budget["seeds"]) >= 5
    baselines = [u for u in units if u[1] == "none"]
    assert units[: len(baselines)] == baselines
    # two cost-balanced shards: every unit once, each starts with baselines, their estimated work within one unit
    costs = [ablation.unit_cost_estimate(f, budget) for f, _, _ in units]
    shards = [ablation.study_units.shard_units(units, (i, 2), costs) for i in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(units)
    assert all(u[1] == "none" for shard in shards for u in shard[:4])
    loads = [sum(ablation.unit_cost_estimate(f, budget) for f, _, _ in shard) for shard in shards]
    assert abs(loads[0] - loads[1]) <= max(costs)


def _synthetic_result(ablation, model_value: dict, seeds=(0, 1, 2, 3, 4)) -> dict:
    """A result whose noise sets score 4.0 (spectrum distance) and 800 (colour-aware SWD) with a little spread, and
    whose units score `model_value[formulation]` (+ a per-seed wobble) under every sampler."""
    budget = {**ablation.BUDGETS["full"], "seeds": list(seeds)}
    rng = np.random.default_rng(0)
    noise = {
        str(n): {
            str(s): {
                "spectrum_distance": 4.0 + 0.01 * rng.standard_normal(),
                "swd_pooled_x1e3": 800 + rng.standard_normal(),
            }
            for s in seeds
        }
        for n in (budget["num_samples"], budget["extra_num_samples"])
    }
    check = {m: {"passes": True, "ratio": 5.0} for m in ("spectrum_distance", "swd_pooled_x1e3")}
    units = {}
    for formulation, regularizer, seed in ablation.all_units(budget):
        value = model_value[formulation] + 0.05 * rng.standard_normal()
        samplers = (*ablation.SAMPLERS[formulation], *(("ancestral_extra_n",) if formulation == "ddpm" else ()))
        rows = {s: {"num_samples": 1, "spectrum_distance": value, "swd_pooled_x1e3": 200 * value} for s in samplers}
        units[ablation.run_key(formulation, regularizer, seed)] = {
            "formulation": formulation,
            "regularizer": regularizer,
            "seed": seed,
            "samplers": rows,
            "final_diffusion_loss": 0.1,
            "train_seconds": 1.0,
            "unit_seconds": 2.0,
        }
    return {"budget": budget, "setup": {"noise": noise, "blur_check": check, "floor": {}}, "units": units}


def test_the_gate_passes_a_baseline_far_better_than_noise_and_fails_one_at_noise_level():
    ablation = load_script("benchmarks/ablate_spectral_regularization.py")
    result = _synthetic_result(ablation, {"ddpm": 1.0, "edm": 4.0})
    verdict = ablation.gate(result, ["spectrum_distance", "swd_pooled_x1e3"])
    assert verdict["passed"] == {"ddpm": True, "edm": False}
    assert {r["baseline"] for r in verdict["family"]} == {"noise"} and len(verdict["family"]) == 4
    assert all(r["outcome"] == "better" for r in verdict["family"] if r["arm"].startswith("ddpm/"))
    # the DDPM extra rows are compared with noise at their own count
    assert {r["arm"].split(" (")[1] for r in verdict["extra"]} == {
        "DDPM ancestral, first n of the extra rows)",
        "DDIM eta 0)",
        "DDIM eta 1)",
    }
    analysis = ablation.analyse(result)
    assert analysis["relied_metrics"] == ["spectrum_distance", "swd_pooled_x1e3"]
    assert len(analysis["family"]) == 2 * 3 * 2  # formulations x regularisers x relied-on metrics
    assert all(r["outcome"] != "one run" for r in analysis["family"])
    assert len(analysis["extra"]) == 2 * 3 * 2  # DDIM eta 0 / 1 x regularisers x metrics
    lines = ablation.claim_lines(analysis)
    assert any("gate failed: not interpretable" in line for line in lines if line.startswith("- edm/"))
    assert not any("gate failed" in line for line in lines if line.startswith("- ddpm/"))


def test_peak_rule_and_contrast_on_a_known_curve():
    audio = load_script("benchmarks/ablate_audio_regularization.py")
    curve = np.full(24, -30.0)
    curve[5], curve[6] = 0.0, -1.0  # a two-band peak standing 30 dB above its surroundings
    curve[12] = -27.0  # a bump of 3 dB: below the 6 dB rule
    assert audio.find_peaks(curve) == [5]
    assert audio.contrast_db(curve, 5) == pytest.approx(0.0 - 0.5 * (-30.0 + -30.0))
    assert audio.contrast_db(curve, 12) == pytest.approx(3.0)
    assert audio.contrast_db(curve, 0) == pytest.approx(0.0)  # clipped at the ends: the band against itself and +2
    assert audio.find_peaks(np.linspace(0, -40, 24)) == []  # a plain slope has no peak
    # a band without power (no bin in a short clip) is NaN: no peak beside it, no -300 dB cliff
    silent = audio.to_db(np.r_[1e-3, 0.0, np.full(22, 1e-3)])
    assert np.isnan(silent[1]) and silent[0] == pytest.approx(-30.0) and audio.find_peaks(silent) == []
    name = audio.peak_name(5)
    assert audio.peak_hz(f"{name}_contrast_db").endswith(" Hz") and name.startswith("peak_")


def test_audio_analysis_names_a_learned_peak():
    audio = load_script("benchmarks/ablate_audio_regularization.py")
    rng = np.random.default_rng(0)
    peak = audio.peak_name(5) + "_contrast_db"
    units = {}
    for seed in range(5):
        for name in audio.REGULARIZERS:
            contrast = [9.0, 11.0, 10.5, 9.5, 10.0][seed] if name == "stft" else [-1.0, 0.8, -0.3, 0.4, 0.1][seed]
            units[f"{name}-{seed}"] = {
                "regularizer": name,
                "seed": seed,
                "log_spectral_distance_db": 10 + rng.standard_normal(),
                "level_invariant_lsd_db": 8 + rng.standard_normal(),
                "level_offset_db": rng.standard_normal(),
                "final_diffusion_loss": 0.1,
                "seconds_per_step": 0.1,
                peak: contrast,
                "unit_seconds": 1.0,
            }
    report = {"units": units, "heldout_peaks": [5]}
    analysis = audio.analyse(report)
    learned = {r["arm"]: r["learned"] for r in analysis["peaks"]}
    assert learned == {"none": False, "fourier": False, "wavelet": False, "stft": True}
    assert len(analysis["family"]) == 3 * 2 and all(r["family_size"] == 6 for r in analysis["family"])
    stft = next(r for r in analysis["descriptive"] if r["arm"] == "stft" and r["metric"] == peak)
    assert stft["outcome"] == "better"  # higher contrast is more peak-like
