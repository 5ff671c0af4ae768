"""Latent cache: examples/cache_latents.py end to end, exact round trip, streaming, resume without duplicates or
gaps, REPA target storage, and the push dry-run."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_spectrum.data import ResumableStream, make_dataloader
from diffusers_spectrum.data.images import ImageTransform, decode_image
from diffusers_spectrum.data.latents import latent_batch, load_latent_dataset, read_cache_info
from diffusers_spectrum.data.sources import embedded_dataset_dir, load_image_dataset
from diffusers_spectrum.models import SpectrumAutoencoderKL
from diffusers_spectrum.training import latent_cache
from diffusers_spectrum.training.latent_cache import write_latent_cache
from diffusers_spectrum.utils.records import public_args


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    """The library loop module behind `examples/<name>.py` (the script only parses flags and calls it)."""
    import importlib

    return importlib.import_module(
        {"cache_latents": "diffusers_spectrum.training.cache", "train_dit_repa": "diffusers_spectrum.training.dit"}[
            name
        ]
    )


def tiny_vae() -> SpectrumAutoencoderKL:
    torch.manual_seed(0)
    return SpectrumAutoencoderKL(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=32,
        dsm_levels=(0,),
    ).eval()


@pytest.fixture()
def image_folder(tmp_path) -> Path:
    """13 embedded photos (labels 0..6 by source) resized to 32 px plus one corrupt file, as an imagefolder."""
    folder = tmp_path / "images"
    folder.mkdir()
    rows = [json.loads(line) for line in (embedded_dataset_dir() / "metadata.jsonl").read_text().splitlines()]
    chosen = rows[::9][:13]
    for row in chosen:
        Image.open(embedded_dataset_dir() / row["file_name"]).resize((32, 32)).save(folder / row["file_name"])
    (folder / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    chosen.append({"file_name": "zz_corrupt.png", "label": 0, "source": "corrupt"})
    with open(folder / "metadata.jsonl", "w") as f:
        for row in chosen:
            f.write(json.dumps({"file_name": row["file_name"], "label": row["label"]}) + "\n")
    return folder


def rows_of(path) -> list[dict]:
    return list(load_latent_dataset(path, streaming=True))


def test_cache_latents_script_round_trips_exact_posterior_and_streams(tmp_path, image_folder):
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    script = load_example("cache_latents")
    args = script.parse_args(
        [
            "--pretrained_vae",
            str(tmp_path / "vae"),
            "--train_data_dir",
            str(image_folder),
            "--label_column",
            "label",
            "--output_dir",
            str(tmp_path / "cache"),
            "--resolution",
            "32",
            "--batch_size",
            "4",
            "--shard_size",
            "5",
            "--latent_dtype",
            "float32",
        ]
    )
    info = script.cache_latents(args)

    # 13 readable images in 3 shards, the corrupt one skipped and counted
    assert info["num_examples"] == 13 and info["skipped_images"] == 1 and len(info["shards"]) == 3
    assert sorted(p.name for p in (tmp_path / "cache" / "data").iterdir()) == [
        "train-00000.parquet",
        "train-00001.parquet",
        "train-00002.parquet",
    ]
    assert read_cache_info(tmp_path / "cache")["settings"]["scaling_factor"] == pytest.approx(0.18215)

    # streamed rows equal a direct encode of the same images, in source order
    streamed = load_latent_dataset(tmp_path / "cache", streaming=True)
    assert type(streamed).__name__ == "IterableDataset"
    rows = list(streamed)
    dataset = load_image_dataset(train_data_dir=image_folder, label_column="label", streaming=False)
    readable = [i for i in range(len(dataset)) if dataset[i]["image"]["path"].endswith("zz_corrupt.png") is False]
    assert [r["source_index"] for r in rows] == readable
    transform = ImageTransform(32)
    images = torch.stack([transform(decode_image(dataset[i]["image"]), position=i) for i in readable])
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
    batch = latent_batch(rows)
    torch.testing.assert_close(batch["latents"], posterior.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch["latents_std"], posterior.std, atol=1e-5, rtol=1e-5)
    assert batch["labels"].tolist() == [dataset[i]["label"] for i in readable]


def test_interrupted_cache_resumes_without_duplicates_or_gaps(tmp_path, image_folder, monkeypatch):
    dataset = load_image_dataset(train_data_dir=image_folder, label_column="label")
    vae, transform = tiny_vae(), ImageTransform(32)
    kwargs = dict(label_column="label", batch_size=3, shard_size=4, mode="sample", seed=3, show_progress=False)
    reference = write_latent_cache(tmp_path / "full", dataset, vae, transform, **kwargs)

    # crash while writing the third shard (after the temp file exists, before it is renamed into place)
    real_write = latent_cache._write_shard
    calls = []

    def crashing_write(path, rows, features):
        calls.append(path)
        if len(calls) == 3:
            path.with_name(path.name + ".tmp").write_bytes(b"partial")
            raise KeyboardInterrupt("killed")
        real_write(path, rows, features)

    monkeypatch.setattr(latent_cache, "_write_shard", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        write_latent_cache(tmp_path / "resumed", dataset, vae, transform, **kwargs)
    assert read_cache_info(tmp_path / "resumed")["num_examples"] == 8
    monkeypatch.setattr(latent_cache, "_write_shard", real_write)
    resumed = write_latent_cache(tmp_path / "resumed", dataset, vae, transform, **kwargs)

    assert resumed["num_examples"] == reference["num_examples"] == 13
    assert not list((tmp_path / "resumed" / "data").glob("*.tmp"))
    full, again = rows_of(tmp_path / "full"), rows_of(tmp_path / "resumed")
    assert [r["source_index"] for r in again] == [r["source_index"] for r in full]
    assert len({r["source_index"] for r in again}) == 13
    # posterior samples are seeded per image, so they do not depend on where the run was interrupted (up to float16
    # rounding of a convolution run in a different batch)
    torch.testing.assert_close(latent_batch(again)["latents"], latent_batch(full)["latents"], atol=2e-3, rtol=2e-3)

    with pytest.raises(ValueError, match="different settings"):
        write_latent_cache(tmp_path / "resumed", dataset, vae, transform, **{**kwargs, "mode": "mean"})


def test_cache_with_two_workers_resumes_without_duplicates_or_gaps(tmp_path, image_folder, monkeypatch):
    dataset = load_image_dataset(train_data_dir=image_folder, label_column="label", streaming=False)
    vae, transform = tiny_vae(), ImageTransform(32)
    kwargs = dict(
        label_column="label", batch_size=3, shard_size=4, mode="sample", seed=3, show_progress=False, num_workers=2
    )
    reference = write_latent_cache(tmp_path / "full", dataset, vae, transform, **kwargs)
    real_write, calls = latent_cache._write_shard, []

    def crashing_write(path, rows, features):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        real_write(path, rows, features)

    monkeypatch.setattr(latent_cache, "_write_shard", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        write_latent_cache(tmp_path / "resumed", dataset, vae, transform, **kwargs)
    monkeypatch.setattr(latent_cache, "_write_shard", real_write)
    with pytest.raises(ValueError, match="--dataloader_num_workers 2"):  # the workers' shares depend on it
        write_latent_cache(tmp_path / "resumed", dataset, vae, transform, **{**kwargs, "num_workers": 0})
    resumed = write_latent_cache(tmp_path / "resumed", dataset, vae, transform, **kwargs)

    assert resumed["num_examples"] == reference["num_examples"] == 13 and resumed["skipped_images"] == 1
    full, again = rows_of(tmp_path / "full"), rows_of(tmp_path / "resumed")
    assert [r["source_index"] for r in again] == [r["source_index"] for r in full]
    readable = [i for i in range(len(dataset)) if not dataset[i]["image"]["path"].endswith("zz_corrupt.png")]
    assert sorted(r["source_index"] for r in again) == readable  # one stream per worker block: source indices
    assert [r["source_index"] for r in again] != readable  # the two workers' rows interleave
    torch.testing.assert_close(latent_batch(again)["latents"], latent_batch(full)["latents"], atol=2e-3, rtol=2e-3)


def test_cache_stores_repa_targets_and_latent_loader_resumes(tmp_path, image_folder):
    dataset = load_image_dataset(train_data_dir=image_folder, label_column="label")
    vae = tiny_vae()

    def encoder(images, grid_size):  # stand-in for RepresentationEncoder: per-image pooled colour tokens
        pooled = torch.nn.functional.adaptive_avg_pool2d(images, grid_size)  # (B, 3, g, g)
        return pooled.flatten(2).transpose(1, 2).repeat(1, 1, 2)  # (B, g*g, 6)

    info = write_latent_cache(
        tmp_path / "cache",
        dataset,
        vae,
        ImageTransform(32),
        label_column="label",
        encoder=encoder,
        repa_grid_size=4,
        shard_size=100,
        show_progress=False,
    )
    assert info["repa_feature_shape"] == [16, 6] and info["latent_shape"] == [4, 16, 16]
    rows = rows_of(tmp_path / "cache")
    assert np.asarray(rows[0]["repa_features"]).shape == (16, 6)

    # the training stream resumes at a data position: the tail of an uninterrupted stream. (Memory-mapped here: a
    # shuffled *streamed* parquet dataset sleeps 5 s whenever an iterator closes, datasets' arrow#45214 workaround.)
    cache = load_latent_dataset(tmp_path / "cache", streaming=False)

    def loader(state=None, workers=0):
        stream = ResumableStream(cache, None, seed=1, shuffle_buffer_size=8)
        return make_dataloader(stream, 4, num_workers=workers, collate_fn=latent_batch, state=state)

    batches = [b for _, b in zip(range(6), loader())]  # 24 rows: crosses into a second (reshuffled) epoch
    assert batches[0]["repa_features"].shape == (4, 16, 6) and batches[0]["latents"].dtype == torch.float32
    for workers in (0, 2):
        full = [b for _, b in zip(range(6), loader(workers=workers))]
        first = loader(workers=workers)
        head = [b for _, b in zip(range(3), first)]
        resumed = loader(first.state_dict(), workers=workers)
        for expected, got in zip(full, head + [b for _, b in zip(range(3), resumed)]):
            torch.testing.assert_close(got["latents"], expected["latents"], rtol=0, atol=0)
            assert got["labels"].tolist() == expected["labels"].tolist()
    first_epoch = torch.cat([b["labels"] for b in batches])[:13]
    assert sorted(first_epoch.tolist()) == sorted(r["label"] for r in rows)


def test_cache_push_dry_run_writes_dataset_card_and_lists_files(tmp_path, image_folder):
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    script = load_example("cache_latents")
    args = script.parse_args(
        [
            "--pretrained_vae",
            str(tmp_path / "vae"),
            "--train_data_dir",
            str(image_folder),
            "--label_column",
            "label",
            "--output_dir",
            str(tmp_path / "cache"),
            "--resolution",
            "32",
            "--push_to_hub",
            "--hub_dry_run",
            "--hub_model_id",
            "user/tiny-latents",
        ]
    )
    info = script.cache_latents(args)
    uploaded = script.push_cache_to_hub(
        args.output_dir,
        info,
        public_args(args),
        repo_id=args.hub_model_id,
        dataset_name=args.dataset_name,
        vae=args.pretrained_vae,
        dry_run=True,
    )
    assert "cache_info.json" in uploaded and "README.md" in uploaded and "data/train-00000.parquet" in uploaded
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(tmp_path / "cache" / "README.md")
    assert "diffusers-spectrum" in card.data.tags
    shutil.rmtree(tmp_path / "cache")


def test_readme_command_on_data_with_a_label_column_writes_a_conditional_cache(tmp_path, caplog):
    """`cache_latents.py --pretrained_vae X --train_data_dir D ...` without --label_column, on parquet data with a
    ClassLabel `label` column: labels are found as the DiT trainer finds them, logged, and stored with their names."""
    import io
    import logging

    import datasets

    cells, labels = [], [2, 0, 1, 2]
    for i in range(len(labels)):
        buffer = io.BytesIO()
        Image.fromarray(np.full((32, 32, 3), 30 * i, dtype=np.uint8)).save(buffer, format="PNG")
        cells.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_dict({"image": cells, "label": labels}, features).to_parquet(
        str(tmp_path / "data" / "t.parquet")
    )
    tiny_vae().save_pretrained(tmp_path / "vae")
    script = load_example("cache_latents")
    with caplog.at_level(logging.INFO):
        info = script.cache_latents(
            script.parse_args(
                [
                    "--pretrained_vae",
                    str(tmp_path / "vae"),
                    "--train_data_dir",
                    str(tmp_path / "data"),
                    "--resolution",
                    "32",
                    "--output_dir",
                    str(tmp_path / "cache"),
                ]
            )
        )
    assert info["settings"]["label_column"] == "label" and info["settings"]["id2label"] == {
        "0": "a",
        "1": "b",
        "2": "c",
    }
    assert [row["label"] for row in rows_of(tmp_path / "cache")] == labels
    assert "labels: found column 'label'" in caplog.text and "class-conditional (label column 'label')" in caplog.text


def test_corrupt_shard_is_named_and_rerunning_the_command_repairs_it(tmp_path, image_folder):
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    script = load_example("cache_latents")
    argv = [
        "--pretrained_vae",
        str(tmp_path / "vae"),
        "--train_data_dir",
        str(image_folder),
        "--resolution",
        "32",
        "--output_dir",
        str(tmp_path / "cache"),
        "--shard_size",
        "5",
        "--label_column",
        "label",
    ]
    script.cache_latents(script.parse_args(argv))
    before = rows_of(tmp_path / "cache")
    shard = tmp_path / "cache" / "data" / "train-00001.parquet"
    shard.write_bytes(b"PAR1 truncated")
    with pytest.raises(ValueError, match="train-00001.parquet is corrupt.*re-run the cache command"):
        load_latent_dataset(tmp_path / "cache")
    info = script.cache_latents(script.parse_args(argv))  # the same command, as the message says
    after = rows_of(tmp_path / "cache")
    assert info["complete"] and info["num_examples"] == len(before) == len(after) == 13
    assert [r["source_index"] for r in after] == [r["source_index"] for r in before]
    for a, b in zip(after, before):
        np.testing.assert_array_equal(np.asarray(a["latents"]), np.asarray(b["latents"]))
