"""Hostile input to the data loaders, the latent cache, the pipeline loaders and the command line: each case asserts
the error type and that the message names the culprit (or that the item is skipped and counted). Every case that
touches the file system runs under a timeout, so a loader that blocks (a FIFO, a Hub retry) fails instead of
hanging; none may return a silently wrong result."""

import io
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_spectrum.cli import main as cli_main
from diffusers_spectrum.data.images import ImageTransform, data_image_size, image_batches, image_batches_from
from diffusers_spectrum.data.latents import load_latent_dataset, read_cache_info
from diffusers_spectrum.data.sources import load_image_dataset
from diffusers_spectrum.data.stream import SkipCounter
from diffusers_spectrum.evaluation import evaluate
from diffusers_spectrum.models import SpectrumAutoencoderKL
from diffusers_spectrum.models.checks import check_resolution
from diffusers_spectrum.models.presets import build_transformer
from diffusers_spectrum.pipelines import sampling
from diffusers_spectrum.pipelines.export import export_pipeline
from diffusers_spectrum.training import cache
from diffusers_spectrum.training.latent_cache import write_latent_cache


TIMEOUT_S = 60.0


def within(seconds: float, function, *args, **kwargs):
    """Run `function` in a daemon thread; fail (instead of hanging the suite) if it has not returned in `seconds`.
    Its exception, if any, is re-raised here."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as error:  # noqa: B036 - re-raised in the caller
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(function, '__name__', function)} still running after {seconds} s (hang)"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def read_all(folder, resolution=8, **kwargs):
    """Every readable image of a local folder / file, with the scan and decode skips counted."""
    scan, decode = SkipCounter(), SkipCounter()
    dataset = load_image_dataset(train_data_dir=folder, skip_counter=scan, **kwargs)
    transform = ImageTransform(resolution)
    batches = list(image_batches(dataset, 4, transform, kwargs.get("image_column", "image"), skip_counter=decode))
    count = sum(b["pixel_values"].shape[0] for b in batches)
    return count, scan, decode, transform


def png_bytes(side: int, value: int = 100) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_folder(folder: Path, count: int = 3, side: int = 16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"img_{i}.png").write_bytes(png_bytes(side, 40 * i))
    return folder


def tiny_vae(blocks: int = 2, sample_size: int = 16) -> SpectrumAutoencoderKL:
    torch.manual_seed(0)
    return SpectrumAutoencoderKL(
        block_out_channels=(8,) * blocks,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=sample_size,
        dsm_levels=(0,),
    ).eval()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A saved f2 VAE, a saved f8 VAE, an exported 3-class pipeline, a small image folder and a complete cache."""
    root = tmp_path_factory.mktemp("assets")
    tiny_vae().save_pretrained(root / "vae2")
    tiny_vae(blocks=4, sample_size=32).save_pretrained(root / "vae8")
    transformer = build_transformer("tiny", in_channels=4, sample_size=8, dit_init=False)
    from diffusers_spectrum.pipelines.schedulers import flow_matching_scheduler

    export_pipeline(
        root / "pipeline",
        vae=tiny_vae(),
        transformer=transformer,
        scheduler=flow_matching_scheduler(),
        id2label={0: "cat", 1: "dog", 2: "tree"},
    )
    images = image_folder(root / "images", count=4)
    write_latent_cache(
        root / "cache",
        load_image_dataset(train_data_dir=images),
        tiny_vae(),
        ImageTransform(16),
        batch_size=2,
        shard_size=2,
        show_progress=False,
    )
    return root


def copy_of(assets, name, tmp_path) -> Path:
    return Path(shutil.copytree(assets / name, tmp_path / name))


# ----------------------------------------------------------------------------------------------------------------
# Data loaders: non-regular files, tiny and corrupt images, wrong columns


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_in_image_folder_does_not_hang_and_is_skipped_and_counted(tmp_path):
    folder = image_folder(tmp_path / "imgs")
    os.mkfifo(folder / "zz_pipe.png")  # opening it would block forever without a writer
    count, scan, decode, _ = within(TIMEOUT_S, read_all, folder)
    assert count == 3 and scan.count == 1 and decode.count == 0
    assert "zz_pipe.png" in scan.reasons[0] and "FIFO" in scan.reasons[0]


def test_symlink_loop_is_skipped_and_counted(tmp_path):
    folder = image_folder(tmp_path / "imgs")
    os.symlink(folder / "loop_b.png", folder / "loop_a.png")
    os.symlink(folder / "loop_a.png", folder / "loop_b.png")
    count, scan, _, _ = within(TIMEOUT_S, read_all, folder)
    assert count == 3 and scan.count == 2
    assert all("loop_" in reason for reason in scan.reasons)


def test_broken_symlink_is_skipped_and_counted(tmp_path):
    folder = image_folder(tmp_path / "imgs")
    os.symlink(tmp_path / "gone.png", folder / "dangling.png")
    count, scan, _, _ = within(TIMEOUT_S, read_all, folder)
    assert count == 3 and scan.count == 1 and "dangling.png" in scan.reasons[0]


def test_socket_in_image_folder_is_skipped_and_counted(tmp_path):
    short = Path(tempfile.mkdtemp(prefix="sock", dir="/tmp"))  # AF_UNIX paths must stay under ~100 characters
    folder = image_folder(short / "s")
    path = folder / "k.png"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        count, scan, _, _ = within(TIMEOUT_S, read_all, folder)
    finally:
        server.close()
    assert count == 3 and scan.count == 1 and "socket" in scan.reasons[0]


def test_tiny_images_upsampled_8x_or_more_are_counted(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, side in enumerate((4, 4, 16)):  # to 32 px: 8x, 8x, 2x
        (folder / f"img_{i}.png").write_bytes(png_bytes(side))
    count, _, _, transform = within(TIMEOUT_S, read_all, folder, resolution=32)
    assert count == 3 and transform.num_upsampled == 2


def _image_table(cells: list) -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"image": cells, "label": list(range(len(cells)))}, features=features)


def test_corrupt_image_in_parquet_is_skipped_and_counted(tmp_path):
    cells = [{"bytes": png_bytes(8), "path": None}, {"bytes": b"\x89PNG garbage", "path": "bad.png"}]
    _image_table(cells + [{"bytes": png_bytes(8, 7), "path": None}]).to_parquet(str(tmp_path / "d.parquet"))
    count, _, decode, _ = within(TIMEOUT_S, read_all, tmp_path / "d.parquet")
    assert count == 2 and decode.count == 1 and "example 1" in decode.reasons[0]


def test_corrupt_image_in_arrow_file_is_skipped_and_counted(tmp_path):
    cells = [{"bytes": b"not an image at all", "path": None}, {"bytes": png_bytes(8), "path": None}]
    _image_table(cells).save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    count, _, decode, _ = within(TIMEOUT_S, read_all, arrow)
    assert count == 1 and decode.count == 1 and "example 0" in decode.reasons[0]


def test_missing_data_folder_is_file_not_found_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        within(TIMEOUT_S, load_image_dataset, train_data_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        within(TIMEOUT_S, lambda: next(image_batches_from(str(tmp_path / "nowhere"), 2, 8)))


def test_wrong_image_and_label_columns_are_named(tmp_path):
    _image_table([{"bytes": png_bytes(8), "path": None}]).to_parquet(str(tmp_path / "d.parquet"))
    with pytest.raises(ValueError, match="image_column='pixels'.*Pass --image_column"):
        within(TIMEOUT_S, load_image_dataset, train_data_dir=tmp_path / "d.parquet", image_column="pixels")
    with pytest.raises(ValueError, match="label_column='klass'"):
        within(TIMEOUT_S, load_image_dataset, train_data_dir=tmp_path / "d.parquet", label_column="klass")


def test_text_label_column_is_refused_naming_it(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "name": datasets.Value("string")})
    table = datasets.Dataset.from_dict({"image": [{"bytes": png_bytes(8), "path": None}], "name": ["cat"]}, features)
    table.to_parquet(str(tmp_path / "d.parquet"))
    dataset = load_image_dataset(train_data_dir=tmp_path / "d.parquet", label_column="name")
    with pytest.raises(ValueError, match="label_column='name' must hold integer class indices"):
        next(image_batches(dataset, 1, ImageTransform(8), label_column="name"))


def test_file_that_is_not_parquet_or_arrow_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt.*not .parquet or .arrow"):
        within(TIMEOUT_S, load_image_dataset, train_data_dir=tmp_path / "notes.txt")


def test_folder_of_only_unreadable_images_has_no_size(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        (tmp_path / "imgs" / f"bad_{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match="could be read"):
        within(TIMEOUT_S, data_image_size, str(tmp_path / "imgs"))


# ----------------------------------------------------------------------------------------------------------------
# Latent cache


def rewrite_info(folder: Path, change) -> Path:
    path = folder / "cache_info.json"
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))
    return path


@pytest.mark.parametrize("shard", ["../outside.parquet", "data/../../outside.parquet", "/etc/passwd"])
def test_cache_shard_outside_the_folder_is_refused(assets, tmp_path, shard):
    folder = copy_of(assets, "cache", tmp_path)
    (tmp_path / "outside.parquet").write_bytes((folder / "data" / "train-00000.parquet").read_bytes())
    rewrite_info(folder, lambda info: info["shards"][0].update(file=shard))
    with pytest.raises(ValueError, match=f"shard #0 file '{shard}'.*(outside the cache folder|relative path inside)"):
        within(TIMEOUT_S, load_latent_dataset, folder)


@pytest.mark.parametrize("key", ["shards", "settings", "num_examples", "latent_shape"])
def test_cache_info_missing_key_names_file_and_key(assets, tmp_path, key):
    folder = copy_of(assets, "cache", tmp_path)
    rewrite_info(folder, lambda info: info.pop(key))
    with pytest.raises(ValueError, match=f"cache_info.json has no '{key}' entry"):
        within(TIMEOUT_S, read_cache_info, folder)


def test_cache_info_invalid_json_names_the_file(assets, tmp_path):
    folder = copy_of(assets, "cache", tmp_path)
    (folder / "cache_info.json").write_text('{"settings": {"mode": ')
    with pytest.raises(ValueError, match="cache_info.json is not valid JSON"):
        within(TIMEOUT_S, read_cache_info, folder)


def test_corrupt_cache_shard_names_the_shard_and_the_fix(assets, tmp_path):
    folder = copy_of(assets, "cache", tmp_path)
    (folder / "data" / "train-00001.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(ValueError, match="train-00001.parquet is corrupt.*re-run the cache command"):
        within(TIMEOUT_S, load_latent_dataset, folder)


def test_missing_cache_shard_names_it(assets, tmp_path):
    folder = copy_of(assets, "cache", tmp_path)
    (folder / "data" / "train-00000.parquet").unlink()
    with pytest.raises(ValueError, match="train-00000.parquet is missing"):
        within(TIMEOUT_S, load_latent_dataset, folder)


@pytest.mark.parametrize("reader", [read_cache_info, load_latent_dataset])
def test_missing_local_cache_path_is_no_such_folder(tmp_path, reader):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="no such folder.*latents_typo"):
        within(TIMEOUT_S, reader, str(tmp_path / "latents_typo"))
    assert time.perf_counter() - start < 5  # no Hub retries


def test_folder_without_cache_info_is_not_a_cache(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="is not a latent cache: it has no cache_info.json"):
        read_cache_info(tmp_path / "folder")


def test_cache_latents_resolution_not_multiple_of_f8_is_the_one_check_message(assets, tmp_path):
    args = cache.parse_args(
        [
            "--pretrained_vae",
            str(assets / "vae8"),
            "--train_data_dir",
            str(assets / "images"),
            "--resolution",
            "30",
            "--output_dir",
            str(tmp_path / "c"),
        ]
    )
    with pytest.raises(ValueError) as caught:
        within(TIMEOUT_S, cache.cache_latents, args)
    with pytest.raises(ValueError) as expected:
        check_resolution(SpectrumAutoencoderKL.from_pretrained(assets / "vae8"), 30)
    assert str(caught.value) == str(expected.value)
    assert "--resolution 30 is not divisible by the VAE's downsampling factor 8" in str(caught.value)
    assert not (tmp_path / "c" / "data").exists()  # nothing was written


def test_cache_resume_with_broken_manifest_names_the_file(assets, tmp_path):
    folder = copy_of(assets, "cache", tmp_path)
    rewrite_info(folder, lambda info: info["settings"].pop("mode"))
    with pytest.raises(ValueError, match="cache_info.json: 'settings' has no 'mode' entry"):
        within(
            TIMEOUT_S,
            write_latent_cache,
            folder,
            load_image_dataset(train_data_dir=assets / "images"),
            tiny_vae(),
            ImageTransform(16),
            show_progress=False,
        )


# ----------------------------------------------------------------------------------------------------------------
# Pipeline loaders


def test_missing_local_pipeline_fails_at_once_with_no_such_folder(tmp_path):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="no such folder.*pipleine"):
        within(TIMEOUT_S, sampling.load_pipeline, str(tmp_path / "dit" / "pipleine"))
    assert time.perf_counter() - start < 5


def test_folder_without_model_index_is_not_a_pipeline(assets):
    with pytest.raises(FileNotFoundError, match="vae2.*no model_index.json"):
        sampling.load_pipeline(assets / "vae2")


def test_invalid_model_index_json_names_the_file(assets, tmp_path):
    folder = copy_of(assets, "pipeline", tmp_path)
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="model_index.json: not valid JSON"):
        sampling.load_pipeline(folder)


def test_missing_component_weights_name_the_component(assets, tmp_path):
    folder = copy_of(assets, "pipeline", tmp_path)
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="component 'transformer'.*no weights file"):
        sampling.load_pipeline(folder)


def test_missing_component_folder_is_named(assets, tmp_path):
    folder = copy_of(assets, "pipeline", tmp_path)
    shutil.rmtree(folder / "vae")
    with pytest.raises(FileNotFoundError, match="component 'vae'.*has no folder"):
        sampling.load_pipeline(folder)


def test_config_with_more_layers_than_weights_is_refused_not_randomly_initialised(assets, tmp_path):
    folder = copy_of(assets, "pipeline", tmp_path)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    assert config["num_layers"] == 2
    (folder / "transformer" / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(ValueError, match=r"component 'transformer'.*diffusion_pytorch_model.safetensors.*blocks\.2"):
        within(TIMEOUT_S, sampling.load_pipeline, folder)


def test_weights_the_config_does_not_use_are_refused(assets, tmp_path):
    folder = copy_of(assets, "pipeline", tmp_path)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    (folder / "transformer" / "config.json").write_text(json.dumps({**config, "num_layers": 1}))
    with pytest.raises(ValueError, match="component 'transformer'.*does not match its weights"):
        within(TIMEOUT_S, sampling.load_pipeline, folder)


def test_sample_refuses_an_untrained_class_id(assets, tmp_path):
    args = sampling.parse_args(
        [
            "--pretrained_model_name_or_path",
            str(assets / "pipeline"),
            "--class_labels",
            "12",
            "--output_dir",
            str(tmp_path / "s"),
        ]
    )
    with pytest.raises(ValueError, match=r"\[12\] are not classes this pipeline was trained on; valid ids: 0..2"):
        within(TIMEOUT_S, sampling.sample, args)
    assert not (tmp_path / "s").exists()


def test_evaluate_pipeline_refuses_an_unknown_class_name(assets, tmp_path):
    args = evaluate.parse_pipeline_args(
        ["--pipeline", str(assets / "pipeline"), "--class_labels", "dog,zebra", "--output_dir", str(tmp_path)]
    )
    with pytest.raises(ValueError, match="unknown class label 'zebra'.*cat, dog, tree"):
        within(TIMEOUT_S, evaluate.evaluate_pipeline, args)


def test_evaluate_vae_resolution_not_multiple_of_f8_is_the_one_check_message(assets, tmp_path):
    args = evaluate.parse_vae_args(
        [
            "--vae",
            str(assets / "vae8"),
            "--train_data_dir",
            str(assets / "images"),
            "--resolution",
            "30",
            "--output_dir",
            str(tmp_path),
        ]
    )
    with pytest.raises(ValueError, match="--resolution 30 is not divisible by the VAE's downsampling factor 8"):
        within(TIMEOUT_S, evaluate.evaluate_vae, args)
    assert not (tmp_path / "eval_vae.json").exists()


# ----------------------------------------------------------------------------------------------------------------
# Command line: bad flags exit with status 2 and one line naming the flag, never a traceback

CLI_CASES = [
    (["evaluate-vae"], "the following arguments are required: --vae"),
    (["evaluate-vae", "--vae", "./spectrum-demo/vea"], "--vae ./spectrum-demo/vea: no such folder"),
    (["evaluate-vae", "--vae", "x/y", "--dsm_levels", "8,a"], "--dsm_levels must be comma-separated integers"),
    (["evaluate-vae", "--vae", "x/y", "--num_samples", "0"], "--num_samples must be positive"),
    (["evaluate-vae", "--vae", "x/y", "--train_data_dir", "/no/such/images"], "--train_data_dir /no/such/images"),
    (["evaluate-vae", "--vae", "x/y", "--dataset_name", "a/b", "--train_data_dir", "."], "not both"),
    (["evaluate-pipeline", "--pipeline", "./dit/pipleine"], "--pipeline ./dit/pipleine: no such folder"),
    (["evaluate-pipeline", "--pipeline", "x/y", "--guidance_scale", "0.5"], "--guidance_scale must be >= 1"),
    (["evaluate-pipeline", "--pipeline", "x/y", "--num_samples", "1"], "--num_samples must be at least 2"),
    (["evaluate-pipeline", "--pipeline", "x/y", "--output_file", "/"], "--output_file / is a folder"),
    (["sample", "--pretrained_model_name_or_path", "../nope/pipeline"], "no such folder"),
    (["sample", "--pretrained_model_name_or_path", "x/y", "--num_images", "0"], "--num_images must be positive"),
    (["sample", "--pretrained_model_name_or_path", "x/y", "--scheduler", "bogus"], "invalid choice: 'bogus'"),
    (["cache-latents", "--pretrained_vae", "./vea", "--output_dir", "o"], "--pretrained_vae ./vea: no such folder"),
    (["cache-latents", "--pretrained_vae", "x/y", "--output_dir", "o", "--resolution", "0"], "--resolution must be"),
    (["cache-latents", "--pretrained_vae", "x/y", "--output_dir", "o", "--train_data_dir", "/no/such"], "/no/such"),
    (
        ["cache-latents", "--pretrained_vae", "x/y", "--output_dir", "o", "--unconditional", "--label_column", "y"],
        "either --unconditional or --label_column",
    ),
    (["evaluate-vea"], "invalid choice: 'evaluate-vea'"),
]


@pytest.mark.parametrize("argv, message", CLI_CASES, ids=[" ".join(c[0][:3]) for c in CLI_CASES])
def test_cli_bad_flags_exit_with_a_message_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        within(TIMEOUT_S, cli_main, argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------------------------
# No network: Hub ids fail at once, naming the flag and the fix (no minute of retries)


def test_unreachable_hub_dataset_fails_at_once_naming_the_flag(monkeypatch):
    from diffusers_spectrum.data.sources import load_image_dataset
    from diffusers_spectrum.utils import hub

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as on a user's machine without the offline switch
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    start = time.time()
    with pytest.raises(ValueError, match="--dataset_name 'someone/photos': the Hub cannot be reached"):
        load_image_dataset(dataset_name="someone/photos")
    assert time.time() - start < 5


def test_unreachable_hub_vae_is_read_from_the_cache_only(monkeypatch, tmp_path):
    from diffusers_spectrum.models import load_autoencoder
    from diffusers_spectrum.utils import hub

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    start = time.time()
    with pytest.raises(OSError, match="not in the local cache: pass a local folder"):
        load_autoencoder("someone/some-vae")
    assert time.time() - start < 10
