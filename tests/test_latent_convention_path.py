"""A VAE family's latent convention survives the whole path: latent cache -> DiT training inputs -> exported pipeline.

SD-style VAEs are scale-only (`z * scaling_factor`); SD3 / FLUX VAEs shift and scale (`(z - shift_factor) *
scaling_factor`, decoded as `latents / scaling_factor + shift_factor`). Losing the shift at any stage changes what
the DiT learns or what the pipeline decodes: each stage is checked against the family's own formula here.
"""

import json

import pytest
import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL, DiffusionPipeline

from diffusers_spectrum.training import cache, dit
from diffusers_spectrum.training.args import Loading
from diffusers_spectrum.training.dit_data import DiTData, DiTDataSettings


FAMILIES = {
    "sd": dict(latent_channels=4, scaling_factor=0.18215, shift_factor=None),
    "sd3": dict(
        latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False
    ),
    "flux": dict(
        latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False
    ),
}


def _family_vae(folder, **family) -> AutoencoderKL:
    """A narrowed stock AutoencoderKL with the family's latent keys (f2: two blocks of 8 channels)."""
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        sample_size=16,
        **family,
    )
    vae.save_pretrained(folder)
    return vae.eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_cache_dit_inputs_and_export_keep_the_family_latent_convention(name, tmp_path):
    family = FAMILIES[name]
    vae = _family_vae(tmp_path / "vae", **family)
    scale, shift = family["scaling_factor"], family["shift_factor"]

    # 1. The cache records the convention (raw latents, unscaled)
    cache.cache_latents(
        cache.parse_args(
            [
                "--pretrained_vae",
                str(tmp_path / "vae"),
                "--output_dir",
                str(tmp_path / "cache"),
                "--resolution",
                "16",
                "--max_samples",
                "8",
                "--latent_mode",
                "mean",
                "--latent_dtype",
                "float32",
                "--unconditional",
            ]
        )
    )
    settings = json.loads((tmp_path / "cache" / "cache_info.json").read_text())["settings"]
    assert settings["scaling_factor"] == pytest.approx(scale) and settings["shift_factor"] == shift
    assert settings["latent_convention"] == ("scale" if shift is None else "shift_scale")

    # 2. The DiT trains on the family's standardised latents: (z - shift) * scale
    common = [
        "--latent_dataset",
        str(tmp_path / "cache"),
        "--dit_config",
        "tiny",
        "--train_batch_size",
        "4",
        "--report_to",
        "none",
        "--repa_targets",
        "none",
        "--num_validation_images",
        "1",
        "--validation_inference_steps",
        "2",
        "--max_train_steps",
        "1",
        "--checkpointing_steps",
        "1",
        "--validation_steps",
        "100",
        "--unconditional",
    ]
    args = dit.parse_args(["--output_dir", str(tmp_path / "dit"), *common])
    accelerator = Accelerator(cpu=True)
    source = DiTData(DiTDataSettings.of(args), Loading.of(args), accelerator.device)
    batch = next(iter(source.dataloader(accelerator, None)))
    inputs = source.prepare(batch, torch.Generator().manual_seed(0), (4, 4))
    raw = batch["latents"]  # (B, C, 8, 8) posterior means
    expected = raw * scale if shift is None else (raw - shift) * scale
    torch.testing.assert_close(inputs["x0"], expected.float(), atol=1e-6, rtol=1e-6)

    # 3. The exported stock DiTPipeline decodes `latents / scaling_factor` to what the family's VAE decodes from
    #    `latents / scaling_factor + shift_factor` (the shift folded into the VAE, exactly)
    pipeline_dir = dit.train_dit(args)
    pipe = DiffusionPipeline.from_pretrained(pipeline_dir)
    assert pipe.vae.config.shift_factor is None and pipe.vae.config.scaling_factor == pytest.approx(scale)
    latents = torch.randn(2, family["latent_channels"], 8, 8)
    with torch.no_grad():
        exported = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        family_formula = latents / scale + (0.0 if shift is None else shift)
        torch.testing.assert_close(exported, vae.decode(family_formula).sample, atol=1e-5, rtol=1e-4)
