"""Pixel-space DiT: the identity `PixelTransform`, `train-dit --space pixel` with its flag checks, and exported
DCT- and pixel-space pipelines loading in a fresh process (after `import diffusers_spectrum`, and through
`load_pipeline` for folders that name a module path)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusers_spectrum import PixelTransform
from diffusers_spectrum.training.dit import parse_args, train_dit


ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--dit_config",
    "tiny",
    "--train_batch_size",
    "4",
    "--report_to",
    "none",
    "--resolution",
    "32",
    "--validation_inference_steps",
    "2",
    "--num_validation_images",
    "2",
    "--max_train_steps",
    "2",
    "--checkpointing_steps",
    "2",
    "--validation_steps",
    "2",
    "--objective",
    "epsilon",
]


def test_pixel_transform_is_the_identity_with_a_clamp_and_round_trips_through_save(tmp_path):
    transform = PixelTransform()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1
    assert transform.config.scaling_factor == 1.0 and transform.latent_channels == 3
    assert transform.config.shift_factor is None and transform.downsample_factor == 1
    latents = transform.encode(x).latent_dist.sample()
    assert latents.dtype == torch.float64 and torch.equal(latents, x)
    assert torch.equal(transform.encode(x).latent_dist.mode(), x) and bool(
        (transform.encode(x).latent_dist.kl() == 0).all()
    )
    z = torch.tensor([-3.0, -1.0, 0.25, 1.0, 2.5]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert torch.equal(transform.decode(z).sample[0, 0, 0], torch.tensor([-1.0, -1.0, 0.25, 1.0, 1.0]))
    torch.testing.assert_close(transform(x).sample, x, rtol=0, atol=0)
    transform.save_pretrained(tmp_path)
    loaded = PixelTransform.from_pretrained(tmp_path)
    keys = ("in_channels", "scaling_factor", "shift_factor", "latent_channels")
    assert {k: loaded.config[k] for k in keys} == {
        "in_channels": 3,
        "scaling_factor": 1.0,
        "shift_factor": None,
        "latent_channels": 3,
    }
    assert torch.equal(loaded.pixel_range, torch.tensor([-1.0, 1.0]))
    with pytest.raises(ValueError, match="scaling_factor` must be 1.0"):
        PixelTransform(scaling_factor=0.5)
    with pytest.raises(ValueError, match="must equal in_channels"):
        PixelTransform(latent_channels=4)
    with pytest.raises(ValueError, match="3 channels"):
        transform.encode(torch.zeros(1, 4, 8, 8))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--latent_dataset", "cache"], "--space pixel trains on images; it cannot use --latent_dataset"),
        (["--pretrained_vae", "vae"], "--space pixel diffuses the pixels themselves; drop --pretrained_vae"),
        (["--dct_entropy_weights"], "--dct_entropy_weights applies to DCT space only"),
        (["--dct_num_dropped", "1"], "--dct_num_dropped applies to DCT space only"),
    ],
)
def test_pixel_space_flag_errors_name_the_flag(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_args(["--space", "pixel", *argv])


LOAD_IN_A_FRESH_PROCESS = """
import json, sys
import diffusers_spectrum
from diffusers import DiffusionPipeline
result = {}
for folder in sys.argv[1:]:
    pipe = DiffusionPipeline.from_pretrained(folder)
    image = pipe(class_labels=[0], guidance_scale=1.0, num_inference_steps=2, output_type="np").images
    result[folder] = [type(pipe).__name__, type(pipe.vae).__name__, list(image.shape)]
print(json.dumps(result))
"""

LOAD_AN_OLDER_EXPORT = """
import json, sys
from diffusers_spectrum.pipelines.sampling import load_pipeline
pipe = load_pipeline(sys.argv[1])
print(json.dumps(type(pipe.vae).__name__))
"""


def _run(code: str, *args) -> object:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_pixel_and_dct_space_dits_train_and_their_pipelines_load_in_a_fresh_process(tmp_path):
    pixel = parse_args(["--space", "pixel", "--patch_size", "4", "--output_dir", str(tmp_path / "pixel"), *TINY])
    pixel_dir = train_dit(pixel)
    dct = parse_args(
        ["--space", "dct", "--dct_block_size", "2", "--patch_size", "1", "--output_dir", str(tmp_path / "dct"), *TINY]
    )
    dct_dir = train_dit(dct)

    # the same backbone at the same token count: 8 x 8 tokens of 4 x 4 pixels each (48 RGB values / 24 coefficients)
    pixel_config = json.loads((pixel_dir / "transformer" / "config.json").read_text())
    dct_config = json.loads((dct_dir / "transformer" / "config.json").read_text())
    assert (pixel_config["sample_size"] // pixel_config["patch_size"]) ** 2 == 64 == dct_config["sample_size"] ** 2
    assert (pixel_config["in_channels"], dct_config["in_channels"]) == (3, 24)
    keys = ("num_layers", "num_attention_heads", "attention_head_dim")
    assert {k: pixel_config[k] for k in keys} == {k: dct_config[k] for k in keys}
    assert (tmp_path / "pixel" / "validation" / "step-0000002.png").is_file()

    # the folders name the package root, so `import diffusers_spectrum` is all a fresh process needs
    for folder, name in ((pixel_dir, "PixelTransform"), (dct_dir, "DCTTransform")):
        assert json.loads((folder / "model_index.json").read_text())["vae"] == ["diffusers_spectrum", name]
    loaded = _run(LOAD_IN_A_FRESH_PROCESS, pixel_dir, dct_dir)
    assert loaded[str(pixel_dir)] == ["DiTPipeline", "PixelTransform", [1, 32, 32, 3]]
    assert loaded[str(dct_dir)] == ["DiTPipeline", "DCTTransform", [1, 32, 32, 3]]

    # an older export naming the defining module still loads through load_pipeline (sample, evaluate-pipeline)
    index = json.loads((dct_dir / "model_index.json").read_text())
    index["vae"] = ["diffusers_spectrum.pipelines.dct_transform", "DCTTransform"]
    (dct_dir / "model_index.json").write_text(json.dumps(index))
    assert _run(LOAD_AN_OLDER_EXPORT, dct_dir) == "DCTTransform"
