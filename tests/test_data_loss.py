"""Nothing a user owns is deleted: every command refuses an output folder that is not empty and not its own run
(one line naming it, nothing written), a re-run or resume into its own folder leaves the user's files alone, the
demo replaces only the files its earlier run recorded, and a resumed latent cache keeps files in `data/` it did not
write. Also the studies' `--work_dir` and the asset builders."""

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

import pytest
import torch

from diffusers_spectrum import cli
from diffusers_spectrum.data.images import ImageTransform
from diffusers_spectrum.data.sources import load_image_dataset
from diffusers_spectrum.models import SpectrumAutoencoderKL
from diffusers_spectrum.models.presets import build_transformer
from diffusers_spectrum.pipelines.export import export_pipeline
from diffusers_spectrum.pipelines.schedulers import flow_matching_scheduler
from diffusers_spectrum.training.latent_cache import write_latent_cache
from diffusers_spectrum.utils.run_folders import (
    RUN_MARKER,
    OutputFolderError,
    check_output_file,
    claim_output_dir,
    list_files,
    record_run_files,
    remove_recorded_files,
)


REPO = Path(__file__).resolve().parents[1]
USER_TEXT = "my notes: do not lose\n"


def tiny_vae() -> SpectrumAutoencoderKL:
    torch.manual_seed(0)
    return SpectrumAutoencoderKL(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=16,
        dsm_levels=(0,),
    ).eval()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data_loss")
    tiny_vae().save_pretrained(root / "vae")
    transformer = build_transformer("tiny", in_channels=4, sample_size=8, dit_init=False)
    export_pipeline(
        root / "pipeline",
        vae=tiny_vae(),
        transformer=transformer,
        scheduler=flow_matching_scheduler(),
        id2label={0: "cat", 1: "dog"},
    )
    from diffusers_spectrum.data.sources import embedded_audio_dir

    return {"root": root, "vae": root / "vae", "pipeline": root / "pipeline", "audio": embedded_audio_dir()}


def user_folder(path: Path) -> Path:
    """A folder of the user's: a notes file and a sub-folder with a file."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "notes.txt").write_text(USER_TEXT)
    (path / "project").mkdir(exist_ok=True)
    (path / "project" / "data.csv").write_text("a,b\n1,2\n")
    return path


def assert_untouched(path: Path) -> None:
    assert (path / "notes.txt").read_text() == USER_TEXT
    assert (path / "project" / "data.csv").read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in path.iterdir()) == ["notes.txt", "project"], "something was written"


# ----------------------------------------------------------------------------------------------------------------
# run_folders


def test_claim_creates_marks_and_reuses_its_own_folder_only(tmp_path):
    folder = claim_output_dir(tmp_path / "new" / "run", "train-vae")
    assert json.loads((folder / RUN_MARKER).read_text())["command"] == "train-vae"
    (folder / "notes.txt").write_text(USER_TEXT)
    assert claim_output_dir(folder, "train-vae") == folder  # its own run, with a user file: reused
    with pytest.raises(OutputFolderError, match="holds a `train-vae` run, not a `sample` run"):
        claim_output_dir(folder, "sample")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert claim_output_dir(empty, "sample") == empty
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        claim_output_dir(folder / "notes.txt", "sample")
    unmarked = claim_output_dir(tmp_path / "checked", "sample", create=False)
    assert not unmarked.exists()


def test_claim_refuses_a_foreign_folder_in_one_line_and_adopts_a_legacy_run(tmp_path):
    foreign = user_folder(tmp_path / "project")
    with pytest.raises(OutputFolderError) as caught:
        claim_output_dir(foreign, "cache-latents", "cache_info.json")
    message = str(caught.value)
    assert "\n" not in message and str(foreign) in message and "notes.txt" in message and "not empty" in message
    assert_untouched(foreign)
    legacy = tmp_path / "legacy"  # a run folder written before markers existed: recognised by its signature file
    (legacy / "checkpoint-2").mkdir(parents=True)
    (legacy / "checkpoint-2" / "extra_state.json").write_text("{}")
    assert claim_output_dir(legacy, "train-dit", ("training_args.json", "checkpoint-*/extra_state.json")) == legacy
    assert (legacy / RUN_MARKER).is_file()


def test_recorded_files_are_removed_and_nothing_else(tmp_path):
    folder = claim_output_dir(tmp_path / "run", "demo")
    (folder / "project").mkdir()
    (folder / "project" / "mine.txt").write_text(USER_TEXT)
    (folder / "empty_of_the_user").mkdir()
    before = list_files(folder)
    (folder / "stage" / "deep").mkdir(parents=True)
    for name in ("stage/deep/a.bin", "stage/b.json", "summary.json", "edited.txt"):
        (folder / name).write_text("ours")
    record_run_files(folder, before)
    (folder / "stage" / "user.txt").write_text(USER_TEXT)  # a user file put inside the run's own sub-folder
    os.utime(folder / "edited.txt", ns=(0, 0))  # a run file the user changed since: it is the user's now
    removed, kept = remove_recorded_files(folder)
    assert sorted(removed) == ["stage/b.json", "stage/deep/a.bin", "summary.json"]
    assert sorted(kept) == ["edited.txt", "project/mine.txt", "stage/user.txt"]
    assert not (folder / "stage" / "deep").exists() and (folder / "empty_of_the_user").is_dir()


def test_results_file_is_overwritten_only_when_it_is_our_result(tmp_path):
    ours = tmp_path / "eval_vae.json"
    ours.write_text(json.dumps({"vae": "x", "psnr": 1.0}))
    assert check_output_file(ours, "evaluate-vae", "vae") == ours
    theirs = tmp_path / "results.json"
    theirs.write_text(json.dumps({"accuracy": 0.9}))
    with pytest.raises(OutputFolderError, match="is not a `evaluate-vae` result; it was left as it is"):
        check_output_file(theirs, "evaluate-vae", "vae")
    assert json.loads(theirs.read_text()) == {"accuracy": 0.9}


# ----------------------------------------------------------------------------------------------------------------
# Every command: a user's folder as --output_dir is refused, nothing written, nothing deleted


def command_cases(assets, out):
    vae, pipe, audio = str(assets["vae"]), str(assets["pipeline"]), str(assets["audio"])
    return {
        "demo": ["demo", "--quick", "--output_dir", out],
        "demo-audio": ["demo", "--modality", "audio", "--quick", "--output_dir", out],
        "train-vae": ["train-vae", "--pretrained_vae", vae, "--max_train_steps", "1", "--output_dir", out],
        "cache-latents": ["cache-latents", "--pretrained_vae", vae, "--resolution", "16", "--output_dir", out],
        "train-dit": ["train-dit", "--latent_dataset", vae, "--dit_config", "tiny", "--output_dir", out],
        "sample": ["sample", "--pretrained_model_name_or_path", pipe, "--output_dir", out],
        "train-unconditional": [
            "train-unconditional",
            "--unet_config",
            "tiny",
            "--resolution",
            "16",
            "--output_dir",
            out,
        ],
        "train-audio": ["train-audio", "--unet_config", "tiny", "--output_dir", out],
        "analyze": ["analyze", "--vae", vae, "--output_dir", out],
        "analyze-audio": ["analyze-audio", "--audio_dir", audio, "--output_dir", out],
    }


COMMANDS = [
    "demo",
    "demo-audio",
    "train-vae",
    "cache-latents",
    "train-dit",
    "sample",
    "train-unconditional",
    "train-audio",
    "analyze",
    "analyze-audio",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_a_users_folder_and_leaves_it_as_it_was(command, assets, tmp_path, capsys):
    folder = user_folder(tmp_path / "project")
    argv = command_cases(assets, str(folder))[command]
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code not in (0, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and str(folder) in err[0] and "Traceback" not in err[0], err
    assert_untouched(folder)


@pytest.mark.parametrize("command", ["evaluate-vae", "evaluate-pipeline"])
def test_evaluate_refuses_to_overwrite_a_users_file_of_the_same_name(command, assets, tmp_path, capsys):
    folder = user_folder(tmp_path / "project")
    name = "eval_vae.json" if command == "evaluate-vae" else "eval_pipeline.json"
    (folder / name).write_text('{"my": "results"}')
    flag = ["--vae", str(assets["vae"])] if command == "evaluate-vae" else ["--pipeline", str(assets["pipeline"])]
    with pytest.raises(SystemExit) as caught:
        cli.main([command, *flag, "--output_dir", str(folder)])
    assert caught.value.code == 2 and "it was left as it is" in capsys.readouterr().err
    assert json.loads((folder / name).read_text()) == {"my": "results"}


# ----------------------------------------------------------------------------------------------------------------
# Re-runs and resumes into a command's own folder keep the user's files


@pytest.mark.slow
def test_demo_rerun_replaces_its_own_files_only_and_refuses_the_current_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--output_dir", str(out), "--quick"]) == 0
    (out / "notes.txt").write_text(USER_TEXT)
    (out / "vae" / "my_eval.txt").write_text(USER_TEXT)  # inside a stage's folder
    first = json.loads((out / "demo_summary.json").read_text())
    assert cli.main(["demo", "--output_dir", str(out), "--quick"]) == 0
    assert "kept 2 it did not write" in capsys.readouterr().out
    assert (out / "notes.txt").read_text() == USER_TEXT and (out / "vae" / "my_eval.txt").read_text() == USER_TEXT
    second = json.loads((out / "demo_summary.json").read_text())
    assert second["outputs"] == first["outputs"] and (out / "dit" / "pipeline" / "model_index.json").is_file()
    # `cd project && diffusers-spectrum demo --output_dir .`: refused, nothing deleted
    project = user_folder(tmp_path / "project")
    monkeypatch.chdir(project)
    with pytest.raises(SystemExit) as caught:
        cli.main(["demo", "--output_dir", ".", "--quick"])
    assert caught.value.code == 2 and "'.' is not empty and is not a `demo` run" in capsys.readouterr().err
    assert_untouched(project)


def test_cache_resume_keeps_files_it_did_not_write_in_data(tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for i in range(6):
        Image.new("RGB", (16, 16), (40 * i, 10, 200)).save(images / f"{i}.png")
    dataset = load_image_dataset(train_data_dir=images)
    cache = tmp_path / "cache"
    info = write_latent_cache(
        cache, dataset, tiny_vae(), ImageTransform(16), batch_size=2, shard_size=2, max_samples=4, show_progress=False
    )
    assert len(info["shards"]) == 2
    manifest = json.loads((cache / "cache_info.json").read_text())
    (cache / "cache_info.json").write_text(json.dumps({**manifest, "complete": False}))  # as if it was interrupted
    data = cache / "data"
    (data / "notes.txt").write_text(USER_TEXT)
    (data / "other.parquet").write_bytes(b"PAR1 not ours PAR1")
    (data / "train-00007.parquet.tmp").write_bytes(b"half-written")  # an interrupted write of ours
    with caplog.at_level(logging.WARNING):
        info = write_latent_cache(
            cache,
            dataset,
            tiny_vae(),
            ImageTransform(16),
            batch_size=2,
            shard_size=2,
            max_samples=6,
            show_progress=False,
        )
    assert info["num_examples"] == 6 and len(info["shards"]) == 3
    assert (data / "notes.txt").read_text() == USER_TEXT and (data / "other.parquet").is_file()
    assert not (data / "train-00007.parquet.tmp").exists()
    assert "did not write (notes.txt, other.parquet)" in caplog.text


def test_sample_twice_into_its_folder_keeps_a_users_file(assets, tmp_path):
    out = tmp_path / "samples"
    argv = [
        "sample",
        "--pretrained_model_name_or_path",
        str(assets["pipeline"]),
        "--num_inference_steps",
        "2",
        "--output_dir",
        str(out),
    ]
    assert cli.main(argv) == 0
    (out / "notes.txt").write_text(USER_TEXT)
    assert cli.main(argv) == 0
    assert (out / "notes.txt").read_text() == USER_TEXT and (out / "grid.png").is_file()


@pytest.mark.slow
def test_trainer_resume_keeps_a_users_file_in_its_output_folder(tmp_path):
    from diffusers_spectrum.training import unconditional

    out = tmp_path / "ddpm"
    argv = [
        "--unet_config",
        "tiny",
        "--resolution",
        "16",
        "--max_train_steps",
        "2",
        "--checkpointing_steps",
        "1",
        "--validation_steps",
        "100",
        "--train_batch_size",
        "2",
        "--report_to",
        "none",
        "--ddpm_num_steps",
        "10",
        "--ddpm_num_inference_steps",
        "2",
        "--output_dir",
        str(out),
    ]
    unconditional.train_unconditional(unconditional.parse_args(argv))
    (out / "notes.txt").write_text(USER_TEXT)
    (out / "checkpoint-1" / "notes.txt").write_text(USER_TEXT)
    argv[argv.index("--max_train_steps") + 1] = "3"
    unconditional.train_unconditional(unconditional.parse_args([*argv, "--resume_from_checkpoint", "latest"]))
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 3
    assert (out / "notes.txt").read_text() == USER_TEXT
    assert (out / "checkpoint-1" / "notes.txt").read_text() == USER_TEXT  # no total limit: nothing pruned


# ----------------------------------------------------------------------------------------------------------------
# Studies and asset builders


def load_script(relative: str):
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def test_studies_refuse_a_users_work_dir(tmp_path):
    folder = user_folder(tmp_path / "project")
    ablation = load_script("benchmarks/ablate_spectral_regularization.py")
    with pytest.raises(OutputFolderError, match="--work_dir"):
        ablation.run_ablation(quick=True, output_dir=tmp_path / "out", work_dir=folder)
    audio = load_script("benchmarks/ablate_audio_regularization.py")
    with pytest.raises(OutputFolderError, match="--work_dir"):
        audio.main(["--quick", "--work_dir", str(folder), "--output_dir", str(tmp_path / "out")])
    figures = load_script("scripts/readme_figures.py")
    with pytest.raises(OutputFolderError, match="--output_dir"):
        figures.main(["--output_dir", str(folder)])
    assert_untouched(folder)


def test_asset_builders_replace_only_what_they_listed(tmp_path):
    audio = load_script("scripts/build_embedded_audio.py")
    folder = user_folder(tmp_path / "assets")
    (folder / "speech_a_0.flac").write_bytes(b"ours")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "speech_a_0.flac"}) + "\n")
    (folder / "LICENSES.md").write_text("ours")
    audio._remove_previous_build(folder)
    assert_untouched(folder)
