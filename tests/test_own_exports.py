"""Every export we write, we can read back: the EDM export loads with plain `DiffusionPipeline.from_pretrained` and
with `sample`, `evaluate-pipeline`; each pipeline command takes every pipeline we export of its kind and says in one
line which kind it takes when given the other; a UNet config that cannot train at its size is a clear error."""

import json

import numpy as np
import pytest
import torch
from diffusers import ConsistencyModelPipeline, DiffusionPipeline

from diffusers_spectrum import cli
from diffusers_spectrum.pipelines.edm_pipeline import EDMPipeline
from diffusers_spectrum.pipelines.sampling import load_pipeline
from diffusers_spectrum.training import audio, unconditional


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The folders train-unconditional (EDM, DDPM) and train-audio export, two steps each."""
    root = tmp_path_factory.mktemp("exports")
    common = [
        "--unet_config",
        "tiny",
        "--resolution",
        "16",
        "--train_batch_size",
        "2",
        "--max_train_steps",
        "2",
        "--checkpointing_steps",
        "100",
        "--validation_steps",
        "100",
        "--report_to",
        "none",
        "--lr_warmup_steps",
        "0",
        "--ddpm_num_steps",
        "20",
        "--ddpm_num_inference_steps",
        "2",
    ]
    edm = unconditional.train_unconditional(
        unconditional.parse_args([*common, "--formulation", "edm", "--output_dir", str(root / "edm")])
    )
    ddpm = unconditional.train_unconditional(unconditional.parse_args([*common, "--output_dir", str(root / "ddpm")]))
    sound = audio.train_audio(
        audio.parse_args(
            [
                "--unet_config",
                "tiny",
                "--sample_size",
                "512",
                "--train_batch_size",
                "2",
                "--max_train_steps",
                "2",
                "--checkpointing_steps",
                "100",
                "--validation_steps",
                "100",
                "--report_to",
                "none",
                "--output_dir",
                str(root / "audio"),
            ]
        )
    )
    return {"edm": edm, "ddpm": ddpm, "audio": sound, "root": root}


def run(argv, capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_edm_export_loads_with_plain_diffusers_and_our_class_image_for_image(exports):
    index = json.loads((exports["edm"] / "model_index.json").read_text())
    assert index["_class_name"] == "ConsistencyModelPipeline"
    plain = DiffusionPipeline.from_pretrained(exports["edm"])
    ours = EDMPipeline.from_pretrained(exports["edm"])
    assert type(plain) is ConsistencyModelPipeline and type(ours) is EDMPipeline
    kwargs = dict(batch_size=2, num_inference_steps=3, output_type="np")
    np.testing.assert_array_equal(
        plain(generator=torch.manual_seed(0), **kwargs).images, ours(generator=torch.manual_seed(0), **kwargs).images
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["edm", "ddpm"])
def test_sample_and_evaluate_pipeline_take_every_image_pipeline_we_export(name, exports, tmp_path, capsys):
    folder = str(exports[name])
    code, err = run(
        [
            "sample",
            "--pretrained_model_name_or_path",
            folder,
            "--num_images",
            "3",
            "--batch_size",
            "2",
            "--num_inference_steps",
            "2",
            "--output_dir",
            str(tmp_path / "s"),
        ],
        capsys,
    )
    assert code == 0, err
    record = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert len(record["images"]) == 3 and (tmp_path / "s" / "grid.png").is_file()
    code, err = run(
        [
            "evaluate-pipeline",
            "--pipeline",
            folder,
            "--num_samples",
            "2",
            "--num_inference_steps",
            "2",
            "--output_dir",
            str(tmp_path / "e"),
            "--no_progress",
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads((tmp_path / "e" / "eval_pipeline.json").read_text())
    assert result["num_samples"] == 2 and np.isfinite(result["spectrum_distance"])


@pytest.mark.slow
def test_an_edm_folder_of_the_older_export_still_loads_with_our_class(exports, tmp_path, capsys):
    import shutil

    older = tmp_path / "older"
    shutil.copytree(exports["edm"], older)
    index = json.loads((older / "model_index.json").read_text())
    (older / "model_index.json").write_text(json.dumps({**index, "_class_name": "EDMPipeline"}))
    assert type(load_pipeline(older)) is EDMPipeline
    code, err = run(
        [
            "sample",
            "--pretrained_model_name_or_path",
            str(older),
            "--num_images",
            "1",
            "--num_inference_steps",
            "2",
            "--output_dir",
            str(tmp_path / "s"),
        ],
        capsys,
    )
    assert code == 0, err


@pytest.mark.slow
@pytest.mark.parametrize("class_name", ["FancyPipeline", ["diffusers_spectrum", "EDMPipeline"]])
def test_an_unknown_class_name_is_one_line_naming_model_index(class_name, exports, tmp_path, capsys):
    import shutil

    folder = tmp_path / "odd"
    shutil.copytree(exports["edm"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": class_name}))
    code, err = run(
        ["sample", "--pretrained_model_name_or_path", str(folder), "--output_dir", str(tmp_path / "s")], capsys
    )
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "model_index.json: _class_name" in lines[0] and "re-export" in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, flag", [("sample", "--pretrained_model_name_or_path"), ("evaluate-pipeline", "--pipeline")]
)
def test_image_commands_say_they_take_image_pipelines_when_given_audio(command, flag, exports, tmp_path, capsys):
    code, err = run([command, flag, str(exports["audio"]), "--output_dir", str(tmp_path / "o")], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert f"{command} takes an image pipeline" in lines[0] and "DanceDiffusionPipeline" in lines[0]
    assert "analyze-audio --pipeline" in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["edm", "ddpm"])
def test_analyze_audio_says_it_takes_audio_pipelines_when_given_an_image_one(name, exports, tmp_path, capsys):
    code, err = run(
        ["analyze-audio", "--pipeline", str(exports[name]), "--num_samples", "1", "--output_dir", str(tmp_path / "o")],
        capsys,
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "analyze-audio --pipeline takes an audio pipeline" in lines[0] and "sample / evaluate-pipeline" in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_analyze_audio_takes_the_audio_export(exports, tmp_path, capsys):
    argv = [
        "analyze-audio",
        "--pipeline",
        str(exports["audio"]),
        "--num_samples",
        "2",
        "--num_inference_steps",
        "2",
        "--num_bands",
        "8",
        "--output_dir",
        str(tmp_path / "o"),
    ]
    code, err = run(argv, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "audio_report.json").read_text())
    assert report["sets"]["analysed"]["num_clips"] == 2


def write_unet_config(path, **overrides):
    config = {
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": [16, 32, 32],
        "down_block_types": ["DownBlock2D"] * 3,
        "up_block_types": ["UpBlock2D"] * 3,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "_class_name": "UNet2DModel",
        **overrides,
    }
    path.write_text(json.dumps(config))
    return path


def test_a_unet_config_that_cannot_train_at_its_size_is_a_clear_error(tmp_path):
    config = write_unet_config(tmp_path / "odd.json", sample_size=33)
    with pytest.raises(ValueError, match=r"downsamples 2 times \(by 4\).*33 is not.*use 32 or 36"):
        unconditional.parse_args(["--model_config_name_or_path", str(config), "--resolution", "33"])
    with pytest.raises(ValueError, match="has sample_size 32; the data are 16 px squares"):
        unconditional.parse_args(
            ["--model_config_name_or_path", str(write_unet_config(tmp_path / "c.json")), "--resolution", "16"]
        )


def test_a_typo_in_a_unet_config_names_the_key_and_the_nearest_valid_one(tmp_path):
    config = write_unet_config(tmp_path / "typo.json")
    text = json.loads(config.read_text())
    text["sample_sise"] = text.pop("sample_size")
    config.write_text(json.dumps(text))
    with pytest.raises(ValueError, match="'sample_sise' is not a UNet2DModel argument; did you mean 'sample_size'"):
        unconditional.parse_args(["--model_config_name_or_path", str(config), "--resolution", "32"])


def test_cli_says_the_config_error_in_one_line(tmp_path, capsys):
    config = write_unet_config(tmp_path / "odd.json", sample_size=33)
    code, err = run(
        [
            "train-unconditional",
            "--model_config_name_or_path",
            str(config),
            "--resolution",
            "33",
            "--output_dir",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()
