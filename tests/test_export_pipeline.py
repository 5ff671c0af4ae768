"""Exported folders load with plain diffusers (stock classes, no warnings) and sample; local folders naming our
classes load back too; the schedulers match the training objectives."""

import io
import json
import logging
import warnings

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    DiTPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
)
from safetensors.torch import load_file

from diffusers_spectrum import (
    REPADiTTransformer2DModel,
    SpectrumAutoencoderKL,
    default_scheduler,
    export_pipeline,
    export_vae,
    flow_matching_scheduler,
)
from diffusers_spectrum.pipelines.export import stock_vae


# diffusers' type check reads id2label back from JSON, whose keys are strings; the same line appears for
# facebook/DiT-XL-2-256 and is harmless (DiTPipeline converts the keys with int()).
ID2LABEL_TYPE_NOTE = "Expected types for id2label: (dict[int, str], <class 'NoneType'>), got typing.Dict[str, str]."


def _vae(shift_factor=None) -> SpectrumAutoencoderKL:
    torch.manual_seed(0)
    return SpectrumAutoencoderKL(
        block_out_channels=(8, 8),
        norm_num_groups=2,
        latent_channels=4,
        sample_size=16,
        dsm_levels=(0,),
        scaling_factor=0.7,
        shift_factor=shift_factor,
    ).eval()


def _transformer(**overrides) -> REPADiTTransformer2DModel:
    torch.manual_seed(0)
    config = dict(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        num_layers=2,
        sample_size=8,
        norm_num_groups=1,
        repa_depth=1,
        repa_target_dim=12,
        repa_projector_dim=16,
    )
    return REPADiTTransformer2DModel(**{**config, **overrides}).eval()


def _load_capturing_warnings(folder, cls=DiffusionPipeline):
    """Load with `cls.from_pretrained`, returning the object and every warning logged or raised meanwhile."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers", "diffusers_spectrum")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = cls.from_pretrained(folder)
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    messages = [line for line in stream.getvalue().splitlines() if line.strip()]
    return loaded, messages + [str(w.message) for w in caught]


def _only_stock_classes(folder) -> dict:
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "DiTPipeline"
    for component in ("transformer", "vae", "scheduler"):
        assert index[component][0] == "diffusers", index[component]
    return index


def test_exported_ten_class_pipeline_loads_as_stock_dit_pipeline_without_warnings_and_samples_with_cfg(tmp_path):
    vae, transformer = _vae(shift_factor=0.2), _transformer()
    id2label = {i: f"class{i}" for i in range(10)} | {3: "cat, kitty"}
    export_pipeline(
        tmp_path,
        vae=vae,
        transformer=transformer,
        scheduler=default_scheduler("epsilon"),
        id2label=id2label,
        training_info={"objective": "epsilon", "max_train_steps": 3},
    )
    index = _only_stock_classes(tmp_path)
    assert index["scheduler"][1] == "DDIMScheduler"
    t_config = json.loads((tmp_path / "transformer" / "config.json").read_text())
    assert not any(key.startswith("repa_") for key in t_config) and t_config["out_channels"] == 4
    assert not any(
        k.startswith("projector.") for k in load_file(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")
    )
    info = json.loads((tmp_path / "spectrum_info.json").read_text())
    assert info["transformer"]["repa_config"]["repa_depth"] == 1 and info["vae"]["spectral_config"]["esm_delta"] == 1.0
    assert info["training"]["max_train_steps"] == 3 and (tmp_path / "README.md").read_text().startswith("---")

    pipe, messages = _load_capturing_warnings(tmp_path)
    assert type(pipe) is DiTPipeline
    assert type(pipe.transformer) is DiTTransformer2DModel and type(pipe.vae) is AutoencoderKL
    assert messages == [ID2LABEL_TYPE_NOTE], messages  # exactly diffusers' id2label type note, nothing else
    assert pipe.vae.config.shift_factor is None  # folded into the conv biases
    assert pipe.get_label_ids(["kitty", "class9"]) == [3, 9]

    # The stock transformer computes exactly what ours does.
    latents, timesteps, labels = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.tensor([3, 1000])
    with torch.no_grad():
        assert torch.equal(
            pipe.transformer(latents, timesteps, labels).sample, transformer(latents, timesteps, labels).sample
        )
    images = pipe(
        class_labels=[3, 9],
        guidance_scale=4.0,
        num_inference_steps=3,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()


def test_exported_flow_matching_pipeline_with_learned_sigma_samples_with_cfg(tmp_path):
    transformer = _transformer(out_channels=8)  # learned sigma on: DiTPipeline keeps the first half
    export_pipeline(tmp_path, vae=_vae(), transformer=transformer, scheduler=flow_matching_scheduler())
    _only_stock_classes(tmp_path)
    pipe, messages = _load_capturing_warnings(tmp_path)
    assert messages == []
    assert type(pipe.scheduler) is DPMSolverMultistepScheduler
    assert pipe.scheduler.config.use_flow_sigmas and pipe.scheduler.config.prediction_type == "flow_prediction"
    images = pipe(
        class_labels=[0, 1],
        guidance_scale=1.8,
        num_inference_steps=4,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()


def test_flow_matching_scheduler_follows_the_linear_interpolant_convention():
    """x_t = (1 - t) x + t noise, timestep t * 1000, velocity noise - x: the exact velocity of a point mass at x0,
    v(x_t, t) = (x_t - x0) / t, must carry noise to x0."""
    scheduler = flow_matching_scheduler()
    scheduler.set_timesteps(8)
    times = scheduler.sigmas[:-1].double()  # t of each step; the model is given floor(t * 1000)
    assert ((times * 1000 - scheduler.timesteps.double()) < 1).all() and (
        times * 1000 > scheduler.timesteps - 1e-3
    ).all()
    x0 = torch.full((1, 4, 2, 2), 0.7)
    sample = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    for t, time in zip(scheduler.timesteps, times, strict=True):
        velocity = (sample - x0) / time.float()
        sample = scheduler.step(velocity, t, sample).prev_sample
    torch.testing.assert_close(sample, x0, atol=1e-4, rtol=0)


def test_default_scheduler_matches_dit_training_schedule_and_rejects_unknown_types():
    ddim = default_scheduler("epsilon")
    assert isinstance(ddim, DDIMScheduler) and ddim.config.beta_schedule == "linear"
    assert ddim.config.beta_start == 1e-4 and ddim.config.beta_end == 0.02
    dpm = default_scheduler("v_prediction", solver="dpmsolver++")
    assert isinstance(dpm, DPMSolverMultistepScheduler) and dpm.config.prediction_type == "v_prediction"
    assert default_scheduler("flow_prediction").config.use_flow_sigmas
    with pytest.raises(ValueError, match="prediction_type"):
        default_scheduler("sample")


def test_exported_vae_loads_with_plain_autoencoder_kl_and_decodes_like_the_spectrum_vae(tmp_path):
    vae = _vae(shift_factor=0.3)
    export_vae(tmp_path, vae, training_info={"dataset": "tiny"})
    stock, messages = _load_capturing_warnings(tmp_path, AutoencoderKL)
    # the VAE export keeps the family's convention (SD3 / FLUX pipelines add the shift themselves) ...
    assert messages == [] and type(stock) is AutoencoderKL and stock.config.shift_factor == 0.3
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == "AutoencoderKL"
    latents = torch.randn(1, 4, 8, 8)
    scale = stock.config.scaling_factor
    with torch.no_grad():  # ... and decodes the family formula latents / scale + shift exactly as ours
        torch.testing.assert_close(
            stock.decode(latents / scale + 0.3).sample, vae.decode(latents / scale + 0.3).sample, atol=1e-6, rtol=0
        )
    # the DiT export folds it instead (DiTPipeline decodes latents / scale, no shift)
    folded = stock_vae(vae, fold_shift=True)
    assert folded.config.shift_factor is None
    with torch.no_grad():
        torch.testing.assert_close(
            folded.decode(latents / scale).sample, vae.decode(latents / scale + 0.3).sample, atol=1e-5, rtol=1e-4
        )


def test_local_pipeline_folder_naming_our_classes_loads_back_with_diffusion_pipeline(tmp_path):
    transformer, vae = _transformer(), _vae()
    DiTPipeline(transformer=transformer, vae=vae, scheduler=default_scheduler()).save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers_spectrum.models.dit_repa", "REPADiTTransformer2DModel"]
    pipe, messages = _load_capturing_warnings(tmp_path)
    assert messages == []
    assert type(pipe.transformer) is REPADiTTransformer2DModel and type(pipe.vae) is SpectrumAutoencoderKL
    for (name, a), (_, b) in zip(transformer.state_dict().items(), pipe.transformer.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    images = pipe(class_labels=[1], guidance_scale=2.0, num_inference_steps=2, output_type="np").images
    assert np.isfinite(images).all()


def test_export_rejects_what_dit_pipeline_cannot_run(tmp_path):
    with pytest.raises(ValueError, match="num_embeds_ada_norm=1000"):
        export_pipeline(
            tmp_path, vae=_vae(), transformer=_transformer(num_embeds_ada_norm=10), scheduler=default_scheduler()
        )
    with pytest.raises(ValueError, match="latent_channels"):
        export_pipeline(tmp_path, vae=_vae(), transformer=_transformer(in_channels=8), scheduler=default_scheduler())
    with pytest.raises(TypeError, match="stock diffusers scheduler"):
        export_pipeline(tmp_path, vae=_vae(), transformer=_transformer(), scheduler=object())
    with pytest.raises(ValueError, match="id2label keys"):
        export_pipeline(
            tmp_path, vae=_vae(), transformer=_transformer(), scheduler=default_scheduler(), id2label={1000: "null"}
        )
