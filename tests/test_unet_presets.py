"""UNet presets: each builds, the DDPM sizes match the paper's parameter counts, the tiny one runs."""

import pytest
import torch
from diffusers import UNet2DModel

from diffusers_spectrum.models.presets import UNET_PRESETS, build_unet, unet_downsampling_factor


def _num_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize(("preset", "resolution"), [("tiny", 32), ("ddpm-32", 32), ("ddpm-64", 64), ("ddpm-256", 256)])
def test_every_preset_builds_a_stock_unet_at_its_resolution(preset, resolution):
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        unet = build_unet(preset, resolution, channels=3)
    assert type(unet) is UNet2DModel
    assert unet.config.sample_size == resolution
    assert unet.config.in_channels == unet.config.out_channels == 3
    assert unet.config.time_embedding_type == "positional"


@pytest.mark.parametrize(("preset", "resolution", "millions"), [("ddpm-32", 32, 35.7), ("ddpm-256", 256, 114)])
def test_ddpm_presets_have_the_papers_parameter_counts(preset, resolution, millions):
    # Ho et al. 2020, Appendix B: "Our CIFAR10 model has 35.7 million parameters, and our LSUN and CelebA-HQ models
    # have 114 million parameters"; the paper rounds to the last digit given.
    with torch.device("meta"):
        count = _num_parameters(build_unet(preset, resolution)) / 1e6
    digits = 1 if preset == "ddpm-32" else 0
    assert round(count, digits) == millions


def test_ddpm_32_puts_attention_at_16_px_and_uses_dropout_0_1():
    kwargs = UNET_PRESETS["ddpm-32"]
    attention_levels = [i for i, block in enumerate(kwargs["down_block_types"]) if block.startswith("Attn")]
    assert [32 // 2**i for i in attention_levels] == [16]
    assert kwargs["block_out_channels"] == (128, 256, 256, 256) and kwargs["layers_per_block"] == 2
    assert kwargs["dropout"] == 0.1


def test_tiny_preset_runs_forward_and_backward():
    torch.manual_seed(0)
    unet = build_unet("tiny", 32, channels=3)
    x = torch.randn(2, 3, 32, 32)
    out = unet(x, torch.tensor([0.3, -0.5])).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in unet.parameters() if p.requires_grad)


def test_build_unet_rejects_unknown_presets_and_bad_resolutions():
    with pytest.raises(ValueError, match="Unknown UNet preset 'huge'"):
        build_unet("huge", 32)
    assert unet_downsampling_factor("ddpm-32") == 8
    with pytest.raises(ValueError, match="multiple of 8"):
        build_unet("ddpm-32", 36)
    with pytest.raises(ValueError, match="multiple of 2"):
        build_unet("tiny", 33)
    with pytest.raises(ValueError, match="channels"):
        build_unet("tiny", 32, channels=0)
