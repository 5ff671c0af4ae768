"""`--dry_run` on every trainer: the resolved configuration (recipe and presets filled, secrets dropped) is printed as
JSON and nothing is written."""

import json

import pytest

from diffusers_spectrum.training import audio, dit, unconditional, vae


def _printed(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_vae_dry_run_prints_the_recipe_filled_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "--recipe",
        "esm-ae",
        "--perceptual_loss",
        "none",
        "--output_dir",
        str(out),
        "--dry_run",
        "--hub_token",
        "hf_secret",
    ]
    assert vae.train_vae(vae.parse_args(argv)) is None
    config = _printed(capsys)
    # the recipe's values, not the parser's None
    assert config["esm_weight"] == 0.01 and config["kl_weight"] == 0.0 and config["esm_delta"] == 1.0
    assert config["learning_rate"] == 5e-5 and config["lr_warmup_steps"] == 2000
    assert config["perceptual_loss"] == "none" and config["recipe"] == "esm-ae"
    assert "hub_token" not in config and "hf_secret" not in json.dumps(config)
    assert not out.exists()


def test_explicit_flag_wins_over_the_recipe_in_the_dry_run(capsys, tmp_path):
    argv = [
        "--recipe",
        "sd-vae",
        "--perceptual_loss",
        "none",
        "--kl_weight",
        "1e-4",
        "--output_dir",
        str(tmp_path / "run"),
        "--dry_run",
    ]
    vae.train_vae(vae.parse_args(argv))
    assert _printed(capsys)["kl_weight"] == 1e-4


@pytest.mark.parametrize(
    "module, train, argv, expected",
    [
        (dit, dit.train_dit, ["--space", "pixel", "--repa_projector", "conv"], {"repa_coeff": 1.0, "space": "pixel"}),
        (unconditional, unconditional.train_unconditional, ["--formulation", "edm"], {"formulation": "edm"}),
        (audio, audio.train_audio, [], {"dry_run": True}),
    ],
)
def test_diffusion_trainers_dry_run(module, train, argv, expected, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(module.parse_args([*argv, "--output_dir", str(out), "--dry_run"])) is None
    config = _printed(capsys)
    assert {key: config[key] for key in expected} == expected
    assert config["output_dir"] == str(out) and not out.exists()
