"""Model / dataset cards carry real metadata and load with huggingface_hub; the push dry run lists the files."""

from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, ModelCard

from diffusers_spectrum.pipelines.model_cards import (
    dataset_card,
    markdown_table,
    model_card_template_path,
    pipeline_model_card,
    push_folder_to_hub,
    vae_model_card,
)


REPO = Path(__file__).resolve().parents[1]


def test_vae_card_has_metadata_numbers_and_loads(tmp_path):
    card = vae_model_card(
        "user/spectrum-vae",
        config={"block_out_channels": (8, 16), "latent_channels": 4, "scaling_factor": 0.5, "esm_delta": 1.0},
        training_args={
            "esm_weight": 0.01,
            "esm_delta": 1.0,
            "dsm_levels": (0, 8),
            "max_train_steps": 7,
            "output_dir": Path("/tmp/x"),
        },
        metrics={"spectral_kl_delta1": 0.0123, "psnr": 27.5},
        base_model="stabilityai/sd-vae-ft-mse",
        datasets="user/photos",
        recipe="esm-ae",
    )
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    data = loaded.data.to_dict()
    assert data["library_name"] == "diffusers"
    assert data["base_model"] == "stabilityai/sd-vae-ft-mse"
    assert data["datasets"] == ["user/photos"]
    assert {"diffusers-spectrum", "autoencoder"} <= set(data["tags"])
    assert data["diffusers_spectrum"]["metrics"]["spectral_kl_delta1"] == pytest.approx(0.0123)
    text = loaded.text
    assert 'AutoencoderKL.from_pretrained("user/spectrum-vae", subfolder="stock")' in text
    assert "| `psnr` | 27.5 |" in text and "| `max_train_steps` | 7 |" in text
    assert "ESM, weight 0.01" in text and "DSM, levels 0, 8" in text
    assert "{{" not in text  # every template field was filled


def test_pipeline_and_dataset_cards_load(tmp_path):
    card = pipeline_model_card(
        "user/pipe", id2label={0: "astronaut", 1: "coffee"}, repa=True, metrics={"fid": 12.5}, datasets=["user/d"]
    )
    card.save(tmp_path / "pipe.md")
    loaded = ModelCard.load(tmp_path / "pipe.md")
    assert loaded.data.library_name == "diffusers" and "repa" in loaded.data.tags
    assert loaded.data.to_dict()["diffusers_spectrum"]["num_classes"] == 2
    assert 'pipe.get_label_ids(["astronaut"])' in loaded.text and "{{" not in loaded.text

    card = dataset_card("user/latents", contents={"num_examples": 100}, vae="user/vae", source_datasets="user/d")
    card.save(tmp_path / "data.md")
    loaded = DatasetCard.load(tmp_path / "data.md")
    assert loaded.data.source_datasets == ["user/d"] and "latents" in loaded.data.tags
    assert 'load_dataset("user/latents"' in loaded.text and "| `num_examples` | 100 |" in loaded.text


def test_templates_ship_with_the_package_and_match_the_repo_copies():
    for kind in ("vae", "pipeline", "dataset"):
        packaged = model_card_template_path(kind)
        assert packaged.is_file()
        assert packaged.read_text() == (REPO / "model_cards" / f"{kind}.md").read_text()
    with pytest.raises(ValueError, match="kind"):
        model_card_template_path("scheduler")


def test_markdown_table_escapes_and_formats():
    assert markdown_table({}) == "_none_"
    table = markdown_table({"a|b": 1.23456789, "levels": (0, 8)})
    assert "| `a|b` | 1.23457 |" in table and "| `levels` | 0, 8 |" in table


def test_push_dry_run_lists_the_publishable_files_only(tmp_path):
    for relative in (
        "README.md",
        "config.json",
        "stock/config.json",
        "checkpoint-5/model.safetensors",
        "logs/run/events.out",
        ".checkpoint-6.tmp/x",
        "stock/.hidden",
    ):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    files = push_folder_to_hub(tmp_path, "user/repo", "model", dry_run=True)
    assert files == ["README.md", "config.json", "stock/config.json"]
    with pytest.raises(ValueError, match="repo_type"):
        push_folder_to_hub(tmp_path, "user/repo", "models", dry_run=True)
    with pytest.raises(ValueError, match="does not exist"):
        push_folder_to_hub(tmp_path / "missing", "user/repo", dry_run=True)


@pytest.mark.parametrize("kind", ["vae", "pipeline", "dataset"])
def test_cards_drop_the_hub_token_even_from_raw_vars(kind):
    """Every card filters its flag table with `utils.records.public_args`: `training_args=vars(args)` with a token
    (the old cache-latents leak) publishes every other flag and never the token."""
    flags = {"hub_token": "hf_FAKE_SECRET_123", "learning_rate": 0.5, "hub_model_id": "user/x"}
    make = {"vae": vae_model_card, "pipeline": pipeline_model_card, "dataset": dataset_card}[kind]
    text = str(make("user/x", training_args=flags))
    assert "hf_FAKE_SECRET_123" not in text and "hub_token" not in text
    assert "learning_rate" in text and "hub_model_id" in text
