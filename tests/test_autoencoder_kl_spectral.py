"""SpectrumAutoencoderKL: the diffusers contract (round trips, stock loading, pipelines) and its training outputs."""

import json
import logging

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, DiTPipeline, DiTTransformer2DModel
from diffusers.utils import logging as diffusers_logging

from diffusers_spectrum import SpectrumAutoencoderKL
from diffusers_spectrum.spectral import dsm_lowpass, esm_loss


TINY = dict(
    block_out_channels=(8, 16),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    norm_num_groups=4,
    latent_channels=4,
    sample_size=32,
)


def tiny_vae(**overrides) -> SpectrumAutoencoderKL:
    torch.manual_seed(0)
    return SpectrumAutoencoderKL(**{**TINY, **overrides}).eval()


def images(batch=2, size=32, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_save_and_from_pretrained_round_trip_config_and_weights_exactly(tmp_path):
    vae = tiny_vae(esm_delta=0.5, dsm_levels=(0, 10), esm_blur=False)
    vae.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = SpectrumAutoencoderKL.from_pretrained(tmp_path)
    for key in ("esm_delta", "dsm_levels", "esm_blur", "block_out_channels"):
        assert (
            list(loaded.config[key]) == list(vae.config[key])
            if isinstance(vae.config[key], tuple)
            else (loaded.config[key] == vae.config[key])
        )
    assert list(vae.state_dict()) == list(loaded.state_dict())  # the same keys in the same order
    for (name, a), (_, b) in zip(vae.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = images()
    torch.testing.assert_close(loaded(x).sample, vae(x).sample, rtol=0, atol=0)


def test_from_config_keeps_non_default_settings():
    vae = tiny_vae(esm_delta=0.0, dsm_block_size=4, dsm_levels=(0, 2), scaling_factor=0.5)
    rebuilt = SpectrumAutoencoderKL.from_config(vae.config)
    assert rebuilt.config.esm_delta == 0.0 and rebuilt.config.dsm_block_size == 4
    assert tuple(rebuilt.config.dsm_levels) == (0, 2) and rebuilt.config.scaling_factor == 0.5
    assert tuple(rebuilt.config.block_out_channels) == (8, 16)


def test_loads_a_stock_autoencoder_kl_folder_with_default_spectral_settings(tmp_path):
    torch.manual_seed(0)
    stock = AutoencoderKL(**TINY).eval()
    stock.save_pretrained(tmp_path)
    vae = SpectrumAutoencoderKL.from_pretrained(tmp_path).eval()
    assert vae.config.esm_delta == 1.0 and tuple(vae.config.dsm_levels) == (0, 8, 10, 12)
    x = images()
    torch.testing.assert_close(vae.encode(x).latent_dist.mean, stock.encode(x).latent_dist.mean, rtol=0, atol=0)
    z = torch.randn(2, 4, 16, 16)
    torch.testing.assert_close(vae.decode(z).sample, stock.decode(z).sample, rtol=0, atol=0)
    torch.testing.assert_close(vae(x).sample, stock(x).sample, rtol=0, atol=0)


def test_training_losses_apply_the_shared_dsm_mask_and_esm_on_the_sampled_posterior():
    vae = tiny_vae()
    x = images()
    out = vae.training_losses(x, dsm_level=10, generator=torch.Generator().manual_seed(1))
    assert out.dsm_level == 10
    torch.testing.assert_close(out.target, dsm_lowpass(x, 10))
    expected_reconstruction = vae.decode(dsm_lowpass(out.latents, 10)).sample
    torch.testing.assert_close(out.reconstruction, expected_reconstruction)
    torch.testing.assert_close(out.esm, esm_loss(x, out.latents))
    # The sample is drawn from the posterior with the generator: same seed, same latents.
    again = vae.training_losses(x, dsm_level=10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again.latents, out.latents)
    assert out.kl.shape == (2,) and (out.kl > 0).all()
    assert out.spectral_kl_delta0.ndim == 0 and not out.spectral_kl_delta0.requires_grad


def test_training_losses_level_zero_reconstructs_the_image_itself():
    vae = tiny_vae()
    x = images()
    out = vae.training_losses(x, dsm_level=0)
    assert out.target is x
    torch.testing.assert_close(out.reconstruction, vae.decode(out.latents).sample)


def test_dsm_levels_are_drawn_from_the_configured_set_reproducibly():
    vae = tiny_vae(dsm_levels=(0, 8, 12))
    draw = [vae.sample_dsm_level(torch.Generator().manual_seed(s)) for s in range(40)]
    assert set(draw) == {0, 8, 12}
    assert draw == [vae.sample_dsm_level(torch.Generator().manual_seed(s)) for s in range(40)]


def test_esm_gradient_reaches_the_encoder_and_reconstruction_gradient_the_decoder():
    vae = tiny_vae().train()
    out = vae.training_losses(images(), dsm_level=8)
    out.esm.backward(retain_graph=True)
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0
    assert vae.decoder.conv_out.weight.grad is None
    vae.zero_grad()
    (out.reconstruction - out.target).abs().mean().backward()
    assert vae.decoder.conv_out.weight.grad.abs().sum() > 0 and vae.encoder.conv_in.weight.grad.abs().sum() > 0


def test_estimate_latent_stats_writes_one_over_std_and_optional_shift():
    vae = tiny_vae()
    batches = [images(seed=s) for s in range(3)]
    stats = vae.estimate_latent_stats(batches, num_samples=5, sample_posterior=False, show_progress=False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(b).latent_dist.mode() for b in batches])[:5].double()
    assert stats["num_samples"] == 5
    assert stats["std"] == pytest.approx(float(latents.std(unbiased=False)), rel=1e-6)
    assert vae.config.scaling_factor == pytest.approx(1 / stats["std"]) and vae.config.shift_factor is None
    vae.estimate_latent_stats(batches, num_samples=4, use_shift=True, sample_posterior=False, show_progress=False)
    assert vae.config.shift_factor == pytest.approx(float(latents[:4].mean()), rel=1e-6)
    assert len(stats["channel_std"]) == 4


def test_to_autoencoder_kl_folds_the_shift_into_the_conv_biases(tmp_path):
    vae = tiny_vae()
    vae.register_to_config(shift_factor=0.3, scaling_factor=2.0)
    stock = vae.to_autoencoder_kl(fold_shift=True)
    assert type(stock) is AutoencoderKL and stock.config.shift_factor is None and stock.config.scaling_factor == 2.0
    x = images()
    torch.testing.assert_close(
        stock.encode(x).latent_dist.mean, vae.encode(x).latent_dist.mean - 0.3, atol=1e-5, rtol=0
    )
    z = torch.randn(2, 4, 16, 16)
    torch.testing.assert_close(stock.decode(z).sample, vae.decode(z + 0.3).sample, atol=1e-5, rtol=0)
    stock.save_pretrained(tmp_path)
    assert "esm_delta" not in json.loads((tmp_path / "config.json").read_text())


def _tiny_dit_pipeline(vae):
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        sample_size=16,
        patch_size=2,
        norm_num_groups=4,
    )
    return DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler())


def test_pipeline_folder_naming_our_vae_loads_with_diffusion_pipeline_and_samples(tmp_path):
    pipe = _tiny_dit_pipeline(tiny_vae())
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["vae"][1] == "SpectrumAutoencoderKL"
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert isinstance(loaded, DiTPipeline) and type(loaded.vae) is SpectrumAutoencoderKL
    # A hand-written index naming the package itself, as users and docs write it.
    index["vae"] = ["diffusers_spectrum", "SpectrumAutoencoderKL"]
    (tmp_path / "saved" / "model_index.json").write_text(json.dumps(index))
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert type(loaded.vae) is SpectrumAutoencoderKL
    out = loaded(class_labels=[0, 1], num_inference_steps=2, generator=torch.manual_seed(0), output_type="np")
    assert out.images.shape == (2, 32, 32, 3) and (out.images >= 0).all() and (out.images <= 1).all()


def test_from_pretrained_of_the_folder_logs_no_unexpected_keys(tmp_path, caplog):
    tiny_vae().save_pretrained(tmp_path)
    diffusers_logging.enable_propagation()
    with caplog.at_level(logging.WARNING):
        SpectrumAutoencoderKL.from_pretrained(tmp_path)
    diffusers_logging.disable_propagation()
    assert not [r for r in caplog.records if "not expected" in r.getMessage() or "not used" in r.getMessage()]


def test_bad_inputs_raise_clear_errors():
    vae = tiny_vae()
    with pytest.raises(ValueError, match="4-D"):
        vae.training_losses(images()[0])
    with pytest.raises(ValueError, match="3 channels"):
        vae.training_losses(images()[:, :1])
    with pytest.raises(ValueError, match="divisible by 16"):
        vae.training_losses(torch.zeros(1, 3, 24, 24))
    with pytest.raises(ValueError, match="NaN or Inf"):
        vae.training_losses(images() * float("nan"))
    with pytest.raises(ValueError, match="Unknown DSM level"):
        vae.training_losses(images(), dsm_level=3.5)
    with pytest.raises(ValueError, match="Unknown DSM level"):
        tiny_vae(dsm_levels=(0, 20))
    with pytest.raises(ValueError, match="num_samples"):
        vae.estimate_latent_stats([images()], num_samples=0)


def test_load_autoencoder_returns_the_saved_class_without_warnings(tmp_path, caplog):
    from diffusers_spectrum.models import load_autoencoder

    tiny_vae().save_pretrained(tmp_path / "spectrum")
    AutoencoderKL(**TINY).save_pretrained(tmp_path / "stock")
    diffusers_logging.enable_propagation()
    with caplog.at_level(logging.WARNING):
        assert type(load_autoencoder(tmp_path / "spectrum")) is SpectrumAutoencoderKL
        assert type(load_autoencoder(tmp_path / "stock")) is AutoencoderKL
    diffusers_logging.disable_propagation()
    assert not [r for r in caplog.records if "not expected" in r.getMessage()]


def test_to_autoencoder_kl_keeps_the_latent_convention_keys_by_default():
    vae = tiny_vae(force_upcast=False)
    vae.register_to_config(shift_factor=0.3, scaling_factor=2.0)
    stock = vae.to_autoencoder_kl()
    assert type(stock) is AutoencoderKL and stock.config.shift_factor == 0.3 and stock.config.scaling_factor == 2.0
    assert stock.config.force_upcast is False
    for (name, a), (_, b) in zip(vae.state_dict().items(), stock.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    per_channel = tiny_vae(latents_mean=[0.1, 0.2, 0.3, 0.4], latents_std=[1.0, 2.0, 3.0, 4.0]).to_autoencoder_kl()
    assert list(per_channel.config.latents_mean) == [0.1, 0.2, 0.3, 0.4]
    assert list(per_channel.config.latents_std) == [1.0, 2.0, 3.0, 4.0]


def test_bad_config_values_name_the_key():
    with pytest.raises(ValueError, match="scaling_factor"):
        tiny_vae(scaling_factor="abc")
    with pytest.raises(ValueError, match="scaling_factor"):
        tiny_vae(scaling_factor=0.0)
    with pytest.raises(ValueError, match="shift_factor"):
        tiny_vae(shift_factor=float("nan"))
    with pytest.raises(ValueError, match="block_out_channels"):
        tiny_vae(block_out_channels=())
    with pytest.raises(ValueError, match="down_block_types"):
        tiny_vae(down_block_types=("DownEncoderBlock2D",) * 3)
    with pytest.raises(ValueError, match="latents_std"):
        tiny_vae(latents_mean=[0.0] * 4)
    with pytest.raises(ValueError, match="latents_mean"):
        tiny_vae(latents_mean=[0.0] * 3, latents_std=[1.0] * 3)


def test_half_precision_images_into_a_float32_model_raise_a_clear_error():
    vae = tiny_vae()
    with pytest.raises(TypeError, match=r"torch.float16.*torch.float32"):
        vae.training_losses(images().half())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: the caller asked for the cast
        out = vae.training_losses(images().bfloat16(), dsm_level=0)
    assert torch.isfinite(out.esm)


def _save_stock(folder):
    torch.manual_seed(0)
    AutoencoderKL(**TINY).save_pretrained(folder)
    return folder


def test_load_autoencoder_fails_at_once_on_a_missing_local_path(tmp_path, monkeypatch):
    from diffusers_spectrum.models import load_autoencoder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spectrum-demo").mkdir()
    for name in ("spectrum-demo/vea", "./nowhere", "~/no-such-vae-folder-xyz", "a/b/c", str(tmp_path / "gone")):
        with pytest.raises(FileNotFoundError, match="no such folder"):
            load_autoencoder(name)
    with pytest.raises(FileNotFoundError, match="closest existing folder is .*spectrum-demo"):
        load_autoencoder("spectrum-demo/vea")


def test_load_autoencoder_names_a_missing_weights_file_or_config(tmp_path):
    from diffusers_spectrum.models import load_autoencoder

    folder = _save_stock(tmp_path / "vae")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"diffusion_pytorch_model\.safetensors.*save_pretrained"):
        load_autoencoder(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_autoencoder(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json.* is not valid JSON"):
        load_autoencoder(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file"):
        load_autoencoder(tmp_path / "file")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.pop("block_out_channels"), "block_out_channels"),
        (lambda c: c.update(scaling_factor="abc"), "scaling_factor"),
        (lambda c: c.update(shift_factor="0.1"), "shift_factor"),
        (lambda c: c.update(layers_per_block=2), "does not match its weights"),
        (lambda c: c.update(block_out_channels=[8, 32]), "does not match its weights"),
        (lambda c: c.update(_class_name="UNet2DModel"), "not an AutoencoderKL"),
    ],
)
def test_load_autoencoder_rejects_a_config_that_does_not_describe_the_weights(tmp_path, edit, match):
    from diffusers_spectrum.models import load_autoencoder

    folder = _save_stock(tmp_path / "vae")
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match) as error:
        load_autoencoder(folder)
    assert "config.json" in str(error.value)


def test_load_autoencoder_reads_pipeline_folders_subfolders_dtype_and_instances(tmp_path):
    from diffusers_spectrum.models import load_autoencoder

    _save_stock(tmp_path / "pipe" / "vae")
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    reference = _save_stock(tmp_path / "ref")
    expected = AutoencoderKL.from_pretrained(reference).eval()
    z = torch.randn(1, 4, 16, 16)
    for vae in (load_autoencoder(tmp_path / "pipe"), load_autoencoder(str(tmp_path / "pipe"), subfolder="vae")):
        assert type(vae) is AutoencoderKL and not vae.training
        with torch.no_grad():
            torch.testing.assert_close(vae.decode(z).sample, expected.decode(z).sample, rtol=0, atol=0)
    assert load_autoencoder(reference, torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    assert load_autoencoder(expected) is expected
    with pytest.raises(TypeError, match="torch_dtype"):
        load_autoencoder(reference, torch_dtype="float16")
