"""The DCTdiff-against-pixels study (`benchmarks/compare_dct_pixel.py`): matched token counts and the flags each arm
passes to train-dit, shards that partition the runs, and, in `--quick` mode, two shards merging into one JSON (the
last writes the page), a killed run continuing bit-exact, and `--reanalyse` from the JSON alone.

Quick mode (4 steps of a tiny DiT) cannot decide the paper's claims: the test checks the plumbing, the JSON's shape,
the anchors and the statistics' families, not the outcomes."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "compare_dct_pixel.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("compare_dct_pixel", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


study = _load_script()


def test_arms_match_token_counts_and_pass_their_settings_to_train_dit():
    # 32 px: 4 x 4 pixel patches and 2 x 2 DCT blocks (a token covers the same 4 x 4 pixels): 64 tokens each
    assert study.tokens("pixel") == (64, 48) and study.tokens("dctdiff") == (64, 24)
    assert study.tokens("dctdiff-drop1") == (64, 18)  # 3 of 4 coefficients per block
    assert study.tokens("pixel-64") == (64, 192) and study.tokens("dctdiff-64") == (64, 48)  # 8 of 16 kept
    budget = study.BUDGETS["full"]
    for arm in budget["arms"]:
        argv = study.train_argv(arm, 1, 500, budget, Path("data"), Path("run"))
        flags = {}
        for index, token in enumerate(argv):
            if token.startswith("--") and index + 1 < len(argv) and not argv[index + 1].startswith("--"):
                flags[token] = argv[index + 1]
        spec = study.ARMS[arm]
        assert flags["--space"] == spec["space"] and flags["--patch_size"] == str(spec["patch_size"])
        assert flags["--max_train_steps"] == "500" and flags["--seed"] == "1" and flags["--objective"] == "epsilon"
        assert flags["--resume_from_checkpoint"] == "latest"
        assert ("--dct_entropy_weights" in argv) == bool(spec.get("entropy"))
        if spec["space"] == "dct":
            assert float(flags["--snr_scale"]) == spec["snr_scale"]
            assert flags["--dct_num_dropped"] == str(spec["dct_num_dropped"])
        # the same model, optimiser and schedule in every arm
        for flag in ("--dit_config", "--train_batch_size", "--learning_rate", "--lr_scheduler", "--lr_warmup_steps"):
            assert flags[flag] == str(budget[flag[2:]])
    from diffusers_spectrum.training.dit import parse_args

    parse_args(study.train_argv("dctdiff-64", 0, 4, budget, Path("data"), Path("run")))  # the trainer accepts them


def test_token_capacity_names_tokens_wider_than_the_dit():
    # the mini DiT is 4 heads x 16 = 64 wide: a 64 px pixel token of 8 x 8 x 3 = 192 values cannot pass through it
    assert study.token_capacity("pixel-64", "mini") == (192, 64, pytest.approx(1 - 64 / 192))
    assert study.token_capacity("pixel", "mini") is None and study.token_capacity("dctdiff-64", "mini") is None
    assert study.token_capacity("pixel-64", "S/2") is None  # 6 x 64 = 384 wide


def test_shards_partition_the_runs_and_bad_shards_are_refused():
    budget = study.BUDGETS["full"]
    every = study.all_units(budget)
    halves = [study.shard_units(budget, (i, 2)) for i in range(2)]
    assert sorted(halves[0] + halves[1]) == sorted(every) and not set(halves[0]) & set(halves[1])
    assert len(every) == len(budget["arms"]) * len(budget["seeds"]) == 24
    assert study.parse_shard(None) == (0, 1) and study.parse_shard("1/2") == (1, 2)
    for bad in ("2/2", "a/b", "1"):
        with pytest.raises(SystemExit, match="--shard"):
            study.parse_shard(bad)


@pytest.mark.slow
def test_quick_study_in_two_shards_resumes_and_reanalyses(tmp_path):
    work, out = tmp_path / "work", tmp_path / "docs"
    common = ["--quick", "--work_dir", str(work), "--output_dir", str(out)]
    assert study.main([*common, "--shard", "0/2"]) is None  # half the runs: no page yet
    half = json.loads((out / "dct_vs_pixel_quick.json").read_text())
    assert set(half["runs"]) == {study.unit_key(a, s) for a, s in study.shard_units(half["budget"], (0, 2))}
    assert not (out / "DCT_VS_PIXEL_quick.md").exists()
    result = study.main([*common, "--shard", "1/2"])  # the last shard writes the analysis and the page
    on_disk = json.loads((out / "dct_vs_pixel_quick.json").read_text())
    assert on_disk["analysis"] == json.loads(json.dumps(result["analysis"]))

    # every run: both checkpoints, the exported sampler at each, the ancestral extra row at the last; seconds
    budget = on_disk["budget"]
    assert set(on_disk["runs"]) == {study.unit_key(a, s) for a, s in study.all_units(budget)}
    for key, unit in on_disk["runs"].items():
        assert unit["complete"] and [s["step"] for s in unit["stages"]] == budget["checkpoints"]
        assert on_disk["unit_seconds"][key] == unit["seconds"] > 0
        assert set(unit["stages"][0]["samplers"]) == {"exported"}
        assert set(unit["stages"][-1]["samplers"]) == {"exported", "ancestral"}
        assert unit["stages"][-1]["resumed_from_checkpoint"] and not unit["stages"][0]["resumed_from_checkpoint"]
        final = unit["stages"][-1]["samplers"]["exported"]
        assert set(study.METRIC_LABELS) <= set(final) and final["sample_seconds"] > 0

    # anchors: floor and noise at both resolutions, the reconstruction ceiling of each DCT configuration
    names = {"32": "block 2, 4 of 4 coefficients", "64": "block 4, 8 of 16 coefficients"}
    for resolution, dct_arm in (("32", "dctdiff"), ("64", "dctdiff-64")):
        anchors = on_disk["anchors"][resolution]
        assert anchors["ceiling"][names[resolution]]["arms"] == [dct_arm] and len(anchors["ceiling"]) == 1
        assert set(anchors["blur_check"]) == set(study.METRIC_LABELS)
        assert anchors["floor"]["spectrum_distance"] < anchors["noise"]["spectrum_distance"]
    # 8 of 16 coefficients dropped (and chroma subsampled): the 64 px DCT loses more than the 32 px one
    ceiling = {r: on_disk["anchors"][r]["ceiling"][names[r]]["spectrum_distance"] for r in ("32", "64")}
    assert ceiling["64"] > ceiling["32"] > 0

    # the statistics: both families on the relied-on metrics, paired over the two seeds
    analysis = on_disk["analysis"]
    assert "spectrum_distance" in analysis["relied_metrics"]["32"]
    assert "swd_x1e3" not in analysis["relied_metrics"]["32"]  # the published SWD cannot see a blur here
    for name in ("quality", "efficiency"):
        rows = analysis[name]
        assert {(r["arm"], r["baseline"]) for r in rows} == {("dctdiff", "pixel"), ("dctdiff-64", "pixel-64")}
        assert all(r["seeds"] == ["0", "1"] and r["family_size"] == len(rows) for r in rows)
    assert {r["metric"] for r in analysis["quality_descriptive"]} >= {"swd_x1e3", "kid_trained"}
    assert analysis["ancestral"] and not analysis["missing_runs"] and set(analysis["gate"]) == {"pixel", "pixel-64"}
    assert set(analysis["scaling"]) == set(analysis["measured_metrics"])
    page = (out / "DCT_VS_PIXEL_quick.md").read_text()
    assert "Smoke run" in page and "Holm" in page and "64 x 48" in page
    for figure in ("curves", "paired", "samples"):
        assert (out / f"dct_vs_pixel_{figure}_quick.png").is_file()

    # a run killed after its first checkpoint continues from there and ends where the uninterrupted one did
    key = "dctdiff/seed1"
    unit_file = study.unit_path(work, key)
    unit = json.loads(unit_file.read_text())
    original = unit["stages"][-1]
    unit["stages"] = unit["stages"][:1]
    unit["complete"] = False
    unit_file.write_text(json.dumps(unit))
    stored = json.loads((out / "dct_vs_pixel_quick.json").read_text())
    stored["runs"][key] = unit
    (out / "dct_vs_pixel_quick.json").write_text(json.dumps(stored))
    run_dir = work / "runs" / "dctdiff_seed1"
    shutil.rmtree(run_dir)  # the checkpoint is gone too: the stage retrains from scratch with the same seed
    study.main(common)
    again = json.loads((out / "dct_vs_pixel_quick.json").read_text())
    redone = again["runs"][key]["stages"][-1]
    for metric in study.METRIC_LABELS:
        assert redone["samplers"]["exported"][metric] == pytest.approx(original["samplers"]["exported"][metric])
    others = {k: u for k, u in again["runs"].items() if k != key}
    assert others == {k: u for k, u in on_disk["runs"].items() if k != key}  # nothing else was redone

    # a fresh work folder (another machine or session) with the committed JSON: complete runs are not trained again
    shutil.rmtree(work / "units")
    shutil.rmtree(work / "runs")

    def no_training(*args, **kwargs):
        raise AssertionError("a run complete in the JSON was trained again")

    study.stage_record, stage_record = no_training, study.stage_record
    try:
        study.main(common)
    finally:
        study.stage_record = stage_record
    assert json.loads((out / "dct_vs_pixel_quick.json").read_text())["runs"] == again["runs"]
    assert study.unit_path(work, key).is_file()  # the unit files are written back

    # the page from the JSON alone
    (out / "DCT_VS_PIXEL_quick.md").unlink()
    reanalysed = study.main(["--reanalyse", str(out / "dct_vs_pixel_quick.json"), "--output_dir", str(out)])
    assert reanalysed["analysis"]["quality"] and (out / "DCT_VS_PIXEL_quick.md").is_file()
    assert "Re-analysed without new training" in (out / "DCT_VS_PIXEL_quick.md").read_text()
