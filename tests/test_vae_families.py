"""Every AutoencoderKL family fine-tunes with ESM + DSM and drops back into its own pipeline's latent formula.

The four families are built as diffusers builds them (`AutoencoderKL.from_config` of the Hub config's keys), narrowed
to tiny widths: SD 1.x/2.x (scale only, 0.18215), SDXL (scale only, 0.13025, `force_upcast`), SD3 (16 channels, no
quant convs, scale 1.5305, shift 0.0609) and FLUX (16 channels, no quant convs, scale 0.3611, shift 0.1159).

The pipeline formulas below are written out from diffusers' own pipelines (not from the package's helpers):
- SD (`pipeline_stable_diffusion.py`): decode `latents / scaling_factor`; training encodes `z * scaling_factor`.
- SDXL (`pipeline_stable_diffusion_xl.py`): same formula; a float16 VAE with `force_upcast` is moved to float32 for
  the decode and back to float16 afterwards.
- SD3 (`pipeline_stable_diffusion_3.py`) and FLUX (`pipeline_flux.py`): decode `latents / scaling_factor +
  shift_factor`; img2img (`pipeline_flux_img2img.py`) encodes `(z - shift_factor) * scaling_factor`.
"""

import copy
import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from diffusers_spectrum.models import SpectrumAutoencoderKL, load_autoencoder
from diffusers_spectrum.models.latent_conventions import fold_latent_shift, latents_from_vae


_DOWN, _UP = ["DownEncoderBlock2D"] * 4, ["UpDecoderBlock2D"] * 4
_COMMON = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": _DOWN,
    "in_channels": 3,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "up_block_types": _UP,
}
# The keys and values of the families' published vae/config.json files.
FAMILY_CONFIGS = {
    "sd": {**_COMMON, "latent_channels": 4, "sample_size": 512, "scaling_factor": 0.18215},
    "sdxl": {**_COMMON, "latent_channels": 4, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
    "sd3": {
        **_COMMON,
        "force_upcast": True,
        "latent_channels": 16,
        "latents_mean": None,
        "latents_std": None,
        "mid_block_add_attention": True,
        "sample_size": 1024,
        "scaling_factor": 1.5305,
        "shift_factor": 0.0609,
        "use_post_quant_conv": False,
        "use_quant_conv": False,
    },
    "flux": {
        **_COMMON,
        "force_upcast": True,
        "latent_channels": 16,
        "latents_mean": None,
        "latents_std": None,
        "mid_block_add_attention": True,
        "sample_size": 1024,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "use_post_quant_conv": False,
        "use_quant_conv": False,
    },
}
SHIFTED = {"sd": False, "sdxl": False, "sd3": True, "flux": True}
# The dtype each family's pipelines are run in (FLUX in bfloat16, the others in float16).
HALF = {"sd": torch.float16, "sdxl": torch.float16, "sd3": torch.float16, "flux": torch.bfloat16}
FAMILIES = tuple(FAMILY_CONFIGS)


def narrowed(config: dict) -> dict:
    """Same keys, tiny widths: two blocks of 8 / 16 channels, one layer each, 4 norm groups, 32 px."""
    return {
        **config,
        "block_out_channels": [8, 16],
        "down_block_types": config["down_block_types"][:2],
        "up_block_types": config["up_block_types"][:2],
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "sample_size": 32,
    }


def images(seed: int, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# Pipeline formulas, written out from diffusers' pipelines -----------------------------------------------------


def pipeline_decode(family: str, vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Image `(B, 3, H, W)` from diffusion latents, as the family's pipeline decodes them."""
    with torch.no_grad():
        if family in ("sd3", "flux"):
            latents = (latents / vae.config.scaling_factor) + vae.config.shift_factor
            return vae.decode(latents).sample
        if family == "sdxl":
            needs_upcasting = vae.dtype == torch.float16 and vae.config.force_upcast
            if needs_upcasting:
                vae.to(dtype=torch.float32)
                latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
            latents = latents / vae.config.scaling_factor
            image = vae.decode(latents).sample
            if needs_upcasting:
                vae.to(dtype=torch.float16)
            return image
        return vae.decode(latents / vae.config.scaling_factor).sample


def pipeline_encode(family: str, config, z: torch.Tensor) -> torch.Tensor:
    """Diffusion latents from raw VAE latents, as the family's training scripts / img2img pipelines do."""
    if family in ("sd3", "flux"):
        return (z - config.shift_factor) * config.scaling_factor
    return z * config.scaling_factor


# One fine-tune per family, shared by the tests below ------------------------------------------------------------


@pytest.fixture(scope="module", params=FAMILIES)
def finetuned(request, tmp_path_factory):
    """Pretrained stock VAE -> SpectrumAutoencoderKL, 2 ESM + DSM steps, latent stats, saved three ways."""
    family = request.param
    root = tmp_path_factory.mktemp(family)
    torch.manual_seed(0)
    pretrained = AutoencoderKL.from_config(narrowed(FAMILY_CONFIGS[family]))
    pretrained.save_pretrained(root / "pretrained")

    vae = SpectrumAutoencoderKL.from_pretrained(root / "pretrained").train()
    start = {k: v.clone() for k, v in vae.state_dict().items()}
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for step, level in enumerate((0, 10)):
        out = vae.training_losses(images(step), dsm_level=level, generator=generator)
        loss = (out.reconstruction - out.target).abs().mean() + 0.1 * out.esm
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    vae.eval()

    stats_batches = [images(10 + s) for s in range(2)]
    stats = vae.estimate_latent_stats(stats_batches, num_samples=4, sample_posterior=False, show_progress=False)
    vae.save_pretrained(root / "spectrum")
    vae.to_autoencoder_kl().save_pretrained(root / "stock")
    return {
        "family": family,
        "root": root,
        "vae": vae,
        "start": start,
        "losses": losses,
        "stats": stats,
        "stats_batches": stats_batches,
    }


def _raw_latents(vae, batches) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([vae.encode(b).latent_dist.mode() for b in batches]).double().numpy()


def test_training_steps_run_and_change_the_weights(finetuned):
    assert all(torch.isfinite(loss) for loss in finetuned["losses"])
    changed = [k for k, v in finetuned["vae"].state_dict().items() if not torch.equal(v, finetuned["start"][k])]
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("decoder.") for k in changed)


def test_latent_stats_follow_the_family_convention(finetuned):
    family, vae, stats = finetuned["family"], finetuned["vae"], finetuned["stats"]
    z = _raw_latents(vae, finetuned["stats_batches"])  # (4, C, h, w) from the definition, in numpy
    assert stats.convention == ("shift_scale" if SHIFTED[family] else "scale")
    assert vae.config.scaling_factor == pytest.approx(1.0 / z.std(), rel=1e-9)
    if SHIFTED[family]:
        assert isinstance(vae.config.shift_factor, float) and vae.config.shift_factor == pytest.approx(z.mean())
        assert stats["shift_factor"] == vae.config.shift_factor
    else:
        assert vae.config.shift_factor is None and stats.shift_factor is None
    channels = FAMILY_CONFIGS[family]["latent_channels"]
    np.testing.assert_allclose(stats.channel_mean, z.mean(axis=(0, 2, 3)), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats.channel_std, z.std(axis=(0, 2, 3)), rtol=1e-9, atol=1e-12)
    assert len(stats.channel_std) == channels
    # The family's own encode formula now gives unit-std latents (and zero-mean ones where it shifts).
    diffusion = pipeline_encode(family, vae.config, torch.from_numpy(z)).numpy()
    assert diffusion.std() == pytest.approx(1.0, rel=1e-9)
    if SHIFTED[family]:
        assert abs(diffusion.mean()) < 1e-9


def test_saved_configs_keep_every_family_key(finetuned):
    family, root, vae = finetuned["family"], finetuned["root"], finetuned["vae"]
    expected = narrowed(FAMILY_CONFIGS[family])
    for folder in ("spectrum", "stock"):
        saved = json.loads((root / folder / "config.json").read_text())
        for key, value in expected.items():
            if key in ("_class_name", "scaling_factor", "shift_factor"):
                continue
            assert saved[key] == value, (folder, key)
        assert saved["scaling_factor"] == vae.config.scaling_factor
        assert saved["shift_factor"] == vae.config.shift_factor
        if SHIFTED[family]:
            assert isinstance(saved["shift_factor"], float)
    assert json.loads((root / "stock" / "config.json").read_text())["_class_name"] == "AutoencoderKL"


@pytest.mark.parametrize("folder", ["stock", "spectrum"])
def test_stock_reload_decodes_identically_through_the_family_formula(finetuned, folder):
    family, vae = finetuned["family"], finetuned["vae"]
    reloaded, info = AutoencoderKL.from_pretrained(finetuned["root"] / folder, output_loading_info=True)
    assert type(reloaded) is AutoencoderKL
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    assert reloaded.config.scaling_factor == vae.config.scaling_factor
    assert reloaded.config.shift_factor == vae.config.shift_factor
    channels = FAMILY_CONFIGS[family]["latent_channels"]
    latents = torch.randn(2, channels, 16, 16, generator=torch.Generator().manual_seed(3))
    before, after = pipeline_decode(family, vae, latents), pipeline_decode(family, reloaded.eval(), latents)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_the_family_formula_round_trips_the_encoder_latents(finetuned):
    """encode -> family encode formula -> family decode formula == decode(z): the stats define a consistent pair,
    and dropping the shift (where the family has one) would change the image."""
    family, vae = finetuned["family"], finetuned["vae"]
    reloaded = load_autoencoder(finetuned["root"] / "stock")
    x = images(20)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()
        direct = vae.decode(z).sample
    image = pipeline_decode(family, reloaded, pipeline_encode(family, reloaded.config, z))
    torch.testing.assert_close(image, direct, rtol=1e-5, atol=1e-5)  # float rounding of (z - s) * k / k + s
    torch.testing.assert_close(latents_from_vae(z, reloaded.config), pipeline_encode(family, reloaded.config, z))
    if SHIFTED[family]:
        with torch.no_grad():
            unshifted = reloaded.decode(pipeline_encode(family, reloaded.config, z) / reloaded.config.scaling_factor)
        assert (unshifted.sample - direct).abs().max() > 1e-3


def test_half_precision_where_the_family_uses_it(finetuned):
    """Float16 (SD, SDXL, SD3) / bfloat16 (FLUX) reload decodes exactly as the fine-tuned model cast to that dtype;
    SDXL's force_upcast path decodes in float32 and hands the VAE back in float16. (float16 runs on this CPU.)"""
    family, vae = finetuned["family"], finetuned["vae"]
    dtype = HALF[family]
    half = load_autoencoder(finetuned["root"] / "stock", torch_dtype=dtype)
    assert half.dtype == dtype
    channels = FAMILY_CONFIGS[family]["latent_channels"]
    latents = torch.randn(2, channels, 16, 16, generator=torch.Generator().manual_seed(4)).to(dtype)
    image = pipeline_decode(family, half, latents)
    reference_vae = copy.deepcopy(vae).to(dtype)
    if family == "sdxl":  # upcast: float16 weights, float32 arithmetic, VAE back in float16 afterwards
        assert half.dtype == torch.float16 and image.dtype == torch.float32
        reference_vae = reference_vae.to(torch.float32)
        latents = latents.float()
    else:
        assert image.dtype == dtype
    reference = pipeline_decode(family, reference_vae, latents)
    torch.testing.assert_close(image, reference, rtol=0, atol=0)
    assert torch.isfinite(image).all()
    # Not garbage: the half-precision image stays near the float32 one (a few eps of the dtype per layer).
    full = pipeline_decode(family, vae, latents.float())
    assert (image.float() - full).norm() / full.norm() < 0.05


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_shift_fold_for_dit_pipelines_is_exact_without_quant_convs(family):
    """A DiT trained on `(z - shift) * scale` and exported with the shift folded: `DiTPipeline`'s decode
    (`latents / scaling_factor`) of the folded VAE equals the family formula on the unfolded VAE."""
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(narrowed(FAMILY_CONFIGS[family])).eval()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    folded = fold_latent_shift(vae)
    assert folded.config.shift_factor is None and folded.config.scaling_factor == vae.config.scaling_factor
    assert folded.config.use_quant_conv and folded.config.use_post_quant_conv
    assert vae.config.shift_factor == FAMILY_CONFIGS[family]["shift_factor"]  # the input is untouched
    assert all(torch.equal(v, before[k]) for k, v in vae.state_dict().items())
    x = images(30)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()
        latents = pipeline_encode(family, vae.config, z)  # what the cache stores and the DiT learns
        expected = pipeline_decode(family, vae, latents)
        dit_pipeline_image = folded.decode(latents / folded.config.scaling_factor).sample
        folded_mean = folded.encode(x).latent_dist.mode()
    torch.testing.assert_close(dit_pipeline_image, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded_mean, z - vae.config.shift_factor, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(folded_mean * folded.config.scaling_factor, latents, rtol=1e-5, atol=1e-5)


def test_estimate_latent_stats_never_writes_none_over_a_shift():
    """A shifted family keeps its shift even when the caller does not ask for one; use_shift adds one to SD."""
    torch.manual_seed(0)
    flux = SpectrumAutoencoderKL(**narrowed(FAMILY_CONFIGS["flux"])).eval()
    stats = flux.estimate_latent_stats([images(0)], num_samples=2, use_shift=False, show_progress=False)
    assert stats.convention == "shift_scale" and isinstance(flux.config.shift_factor, float)
    sd = SpectrumAutoencoderKL(**narrowed(FAMILY_CONFIGS["sd"])).eval()
    stats = sd.estimate_latent_stats([images(0)], num_samples=2, use_shift=True, show_progress=False)
    assert stats.convention == "shift_scale" and sd.config.shift_factor == stats.mean
    untouched = SpectrumAutoencoderKL(**narrowed(FAMILY_CONFIGS["sd3"])).eval()
    stats = untouched.estimate_latent_stats([images(0)], num_samples=2, update_config=False, show_progress=False)
    assert untouched.config.shift_factor == 0.0609 and untouched.config.scaling_factor == 1.5305
    assert not stats.config_updated and stats.shift_factor == pytest.approx(stats.mean)


def test_per_channel_convention_updates_latents_mean_and_std_and_keeps_the_scale():
    """SDXL-pipeline per-channel form (`latents_mean` / `latents_std`, e.g. Playground v2.5): both lists are
    re-estimated per channel, `scaling_factor` (the target std) stays, and the SDXL formula standardises."""
    torch.manual_seed(0)
    config = {**narrowed(FAMILY_CONFIGS["sdxl"]), "scaling_factor": 0.5}
    vae = SpectrumAutoencoderKL(**config, latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()
    batches = [images(0), images(1)]
    stats = vae.estimate_latent_stats(batches, num_samples=4, sample_posterior=False, show_progress=False)
    z = _raw_latents(vae, batches)
    assert stats.convention == "per_channel" and vae.config.scaling_factor == 0.5 and vae.config.shift_factor is None
    np.testing.assert_allclose(vae.config.latents_mean, z.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(vae.config.latents_std, z.std(axis=(0, 2, 3)), rtol=1e-9)
    # pipeline_stable_diffusion_xl_img2img: (z - latents_mean) * scaling_factor / latents_std
    mean = torch.tensor(vae.config.latents_mean).view(1, 4, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 4, 1, 1)
    diffusion = ((torch.from_numpy(z) - mean) * vae.config.scaling_factor / std).numpy()
    np.testing.assert_allclose(diffusion.std(axis=(0, 2, 3)), 0.5, rtol=1e-5)
    with pytest.raises(ValueError, match="use_shift"):
        vae.estimate_latent_stats(batches, num_samples=2, use_shift=True, show_progress=False)
