"""examples/sample.py on exported pipeline folders: classes by name or id, per-image seeds independent of the batch
size, scheduler choice (kept flow-compatible), unconditional sampling, files and grid written."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_spectrum.models import SpectrumAutoencoderKL
from diffusers_spectrum.models.presets import build_transformer
from diffusers_spectrum.pipelines.export import export_pipeline
from diffusers_spectrum.pipelines.schedulers import default_scheduler, flow_matching_scheduler


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    """The library module behind `examples/sample.py` (the script only parses flags and calls it)."""
    from diffusers_spectrum.pipelines import sampling

    assert name == "sample"
    return sampling


def tiny_pipeline(folder: Path, scheduler) -> Path:
    torch.manual_seed(0)
    vae = SpectrumAutoencoderKL(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=16,
        dsm_levels=(0,),
    )
    transformer = build_transformer("tiny", in_channels=4, sample_size=8, dit_init=False)
    id2label = {0: "cat", 1: "dog", 2: "tree"}
    return export_pipeline(folder, vae=vae, transformer=transformer, scheduler=scheduler, id2label=id2label)


@pytest.fixture(scope="module")
def flow_pipeline(tmp_path_factory) -> Path:
    return tiny_pipeline(tmp_path_factory.mktemp("flow") / "pipeline", flow_matching_scheduler())


def run(script, *argv) -> Path:
    return script.sample(script.parse_args(list(argv)))


def test_sample_writes_one_png_per_image_a_grid_and_a_record_by_class_name(flow_pipeline, tmp_path):
    script = load_example("sample")
    out = run(
        script,
        "--pretrained_model_name_or_path",
        str(flow_pipeline),
        "--class_labels",
        "dog,tree",
        "--num_images",
        "3",
        "--num_inference_steps",
        "2",
        "--output_dir",
        str(tmp_path / "a"),
        "--seed",
        "5",
    )
    record = json.loads((out / "samples.json").read_text())
    assert [(r["class_id"], r["class_name"], r["seed"]) for r in record["images"]] == [
        (1, "dog", 5),
        (2, "tree", 6),
        (1, "dog", 7),
    ]
    assert record["scheduler"] == "DPMSolverMultistepScheduler" and record["guidance_scale"] == 1.8
    first = np.asarray(Image.open(out / record["images"][0]["file"]))
    assert first.shape == (16, 16, 3)
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (2 * 18 + 2, 2 * 18 + 2, 3)  # 2 x 2 grid of 16 px images with 2 px padding
    np.testing.assert_array_equal(grid[2:18, 2:18], first)


def test_sample_images_do_not_depend_on_batch_size(flow_pipeline, tmp_path):
    script = load_example("sample")
    common = [
        "--pretrained_model_name_or_path",
        str(flow_pipeline),
        "--class_labels",
        "0,1,2",
        "--num_inference_steps",
        "2",
    ]
    one = run(script, *common, "--batch_size", "1", "--output_dir", str(tmp_path / "one"))
    three = run(script, *common, "--batch_size", "3", "--output_dir", str(tmp_path / "three"))
    for name in sorted(p.name for p in one.glob("0*.png")):
        a, b = np.asarray(Image.open(one / name), np.int16), np.asarray(Image.open(three / name), np.int16)
        assert np.abs(a - b).max() <= 1, name  # equal up to rounding of batched matmuls
    images = [np.asarray(Image.open(p)) for p in sorted(one.glob("0*.png"))]
    assert not np.array_equal(images[0], images[1])  # different seeds give different images


def test_sample_scheduler_choice_keeps_training_schedule_and_refuses_mismatch(flow_pipeline, tmp_path):
    script = load_example("sample")
    with pytest.raises(ValueError, match="cannot sample this flow-matching pipeline"):
        run(
            script,
            "--pretrained_model_name_or_path",
            str(flow_pipeline),
            "--scheduler",
            "ddim",
            "--output_dir",
            str(tmp_path / "x"),
        )
    with pytest.raises(ValueError, match="unknown class label 'zebra'"):
        run(
            script,
            "--pretrained_model_name_or_path",
            str(flow_pipeline),
            "--class_labels",
            "zebra",
            "--output_dir",
            str(tmp_path / "x"),
        )

    # an epsilon pipeline sampled with DDIM instead of its default, unconditionally (label 0, no CFG)
    eps = tiny_pipeline(tmp_path / "eps", default_scheduler("epsilon", solver="dpmsolver++"))
    out = run(
        script,
        "--pretrained_model_name_or_path",
        str(eps),
        "--scheduler",
        "ddim",
        "--unconditional",
        "--num_images",
        "2",
        "--num_inference_steps",
        "2",
        "--output_dir",
        str(tmp_path / "u"),
    )
    record = json.loads((out / "samples.json").read_text())
    assert record["scheduler"] == "DDIMScheduler" and record["guidance_scale"] == 1.0
    assert [r["class_id"] for r in record["images"]] == [0, 0]


def test_sample_loads_strictly_and_refuses_a_missing_folder_at_once(flow_pipeline, tmp_path, capsys):
    """A config that says 3 layers over 2-layer weights is an error naming the component and weights file (plain
    diffusers only warns and initialises the third block randomly); a mistyped local folder exits at parse time."""
    import shutil

    script = load_example("sample")
    bad = Path(shutil.copytree(flow_pipeline, tmp_path / "bad"))
    config = json.loads((bad / "transformer" / "config.json").read_text())
    (bad / "transformer" / "config.json").write_text(json.dumps({**config, "num_layers": config["num_layers"] + 1}))
    with pytest.raises(ValueError, match="component 'transformer'.*transformer/diffusion_pytorch_model.safetensors"):
        run(script, "--pretrained_model_name_or_path", str(bad), "--output_dir", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as caught:
        script.parse_args(["--pretrained_model_name_or_path", str(tmp_path / "pipleine")])
    assert caught.value.code == 2 and "pipleine: no such folder" in capsys.readouterr().err
