"""What the unconditional trainer's resolved flags build, and what its run shows and writes: the formulation
(DDPM's schedule and prediction type or EDM's noise levels, with the pipeline that samples it), the UNet, the
validation grid, and the exported pipeline folder with its card."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .._version import __version__
from ..diffusion.edm import EDM_P_MEAN, EDM_P_STD, EDM_SIGMA_DATA, check_edm_unet
from ..diffusion.objectives import DiffusionObjective
from ..models.presets import build_unet, read_model_config
from ..utils.records import write_json
from .args import Outputs, _FromFlags


if TYPE_CHECKING:
    from diffusers import UNet2DModel

    from ..diffusion.loss import SpectralRegularizers


__all__ = [
    "DDPM_BETA_SCHEDULES",
    "PREDICTION_TYPES",
    "Formulation",
    "build_model",
    "ddpm_noise_scheduler",
    "validate",
    "validation_samples",
    "write_outputs",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
DDPM_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def ddpm_noise_scheduler(num_steps: int = 1000, beta_schedule: str = "linear", prediction_type: str = "epsilon"):
    """The training (and DDPM sampling) schedule: diffusers' `DDPMScheduler` with DDPM's betas 1e-4 to 0.02."""
    from diffusers import DDPMScheduler

    if beta_schedule not in DDPM_BETA_SCHEDULES:
        raise ValueError(f"--ddpm_beta_schedule must be one of {DDPM_BETA_SCHEDULES}, got {beta_schedule!r}.")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"--prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
    return DDPMScheduler(num_train_timesteps=num_steps, beta_schedule=beta_schedule, prediction_type=prediction_type)


@dataclasses.dataclass(frozen=True)
class Formulation(_FromFlags):
    """DDPM (its schedule, prediction type and sampling steps) or EDM (its noise levels and sampler): what the UNet
    learns and how its pipeline samples it, built once from the flags."""

    formulation: str = "ddpm"
    prediction_type: str = "epsilon"
    ddpm_num_steps: int = 1000
    ddpm_beta_schedule: str = "linear"
    ddpm_num_inference_steps: int = 1000
    edm_p_mean: float = EDM_P_MEAN
    edm_p_std: float = EDM_P_STD
    edm_scheduler: str = "euler"
    edm_num_inference_steps: int = 40

    @property
    def edm(self) -> bool:
        return self.formulation == "edm"

    @property
    def inference_steps(self) -> int:
        return self.edm_num_inference_steps if self.edm else self.ddpm_num_inference_steps

    def objective(self) -> DiffusionObjective:
        """DDPM's objective on `ddpm_noise_scheduler`'s schedule, or EDM's with its noise levels."""
        if self.edm:
            return DiffusionObjective("edm", p_mean=self.edm_p_mean, p_std=self.edm_p_std, sigma_data=EDM_SIGMA_DATA)
        scheduler = ddpm_noise_scheduler(self.ddpm_num_steps, self.ddpm_beta_schedule, self.prediction_type)
        return DiffusionObjective(self.prediction_type, scheduler)

    def pipeline(self, unet: UNet2DModel):
        """The pipeline that samples `unet` as trained: `DDPMPipeline` (DDPM schedule) or `EDMPipeline`."""
        from diffusers import DDPMPipeline

        from ..pipelines.edm_pipeline import EDMPipeline, edm_scheduler

        if self.edm:
            return EDMPipeline(unet=unet, scheduler=edm_scheduler(self.edm_scheduler, sigma_data=EDM_SIGMA_DATA))
        scheduler = ddpm_noise_scheduler(self.ddpm_num_steps, self.ddpm_beta_schedule, self.prediction_type)
        return DDPMPipeline(unet=unet, scheduler=scheduler)

    def description(self) -> str:
        """One line for the model card."""
        from ..pipelines.edm_pipeline import edm_scheduler

        if not self.edm:
            return (
                f"DDPM (Ho et al. 2020), {self.prediction_type} prediction, {self.ddpm_num_steps} steps, "
                f"{self.ddpm_beta_schedule} betas"
            )
        sampler = type(edm_scheduler(self.edm_scheduler)).__name__
        return (
            f"EDM (Karras et al. 2022): sigma_data {EDM_SIGMA_DATA}, ln sigma ~ N({self.edm_p_mean}, "
            f"{self.edm_p_std}^2), sampled with {sampler}"
        )


def build_model(
    unet_config: str | None, model_config_name_or_path: str | None, resolution: int, edm: bool
) -> UNet2DModel:
    """A fresh UNet2DModel: the preset, or the config of `model_config_name_or_path`; checked for EDM."""
    from diffusers import UNet2DModel

    if model_config_name_or_path is None:
        unet = build_unet(unet_config, resolution)
    else:  # checked by `resolve_args` (unknown keys, sample size, downsampling)
        unet = UNet2DModel.from_config(read_model_config(model_config_name_or_path))
    if edm:
        check_edm_unet(unet)
    return unet


# ----------------------------------------------------------------------------------------------------------------
# What a run shows and writes


@torch.no_grad()
def validation_samples(formulation: Formulation, unet: UNet2DModel, num_images: int, seed: int = 0) -> torch.Tensor:
    """`(num_images, 3, H, W)` samples in [-1, 1] from the pipeline of `unet` (image i seeded `seed + i`)."""
    from ..pipelines.sampling import pipeline_samples

    pipeline = formulation.pipeline(unet)
    pipeline.set_progress_bar_config(disable=True)
    batches = pipeline_samples(
        pipeline,
        num_images,
        batch_size=num_images,
        num_inference_steps=formulation.inference_steps,
        seed=seed,
        progress=False,
    )
    return torch.cat(list(batches))


def validate(
    accelerator, formulation: Formulation, raw_model, ema, num_images: int, step: int, output_dir: Path
) -> Path:
    """Sample a grid of `num_images` with the (EMA) weights; saved as `validation/step-<step>.png` and logged."""
    from .loop import ema_weights, save_validation_grid

    raw_model.eval()
    with ema_weights(ema, raw_model):
        images = validation_samples(formulation, raw_model, num_images)
    raw_model.train()
    return save_validation_grid(accelerator, images, step, output_dir)


def write_outputs(
    unet: UNet2DModel,
    metrics: dict,
    outputs: Outputs,
    training_args: dict,
    formulation: Formulation,
    regularizers: SpectralRegularizers,
    *,
    unet_description: str,
    dataset_name: str | None,
    dataset_description: str,
) -> Path:
    """The pipeline folder (stock components), `spectrum_info.json`, `metrics.json`, the card and the push, in
    `outputs.output_dir`. `training_args`: the flags as the card shows them (`records.public_args`)."""
    from ..pipelines.model_cards import unconditional_model_card
    from .loop import push_output

    output_dir = Path(outputs.output_dir)
    pipeline = formulation.pipeline(unet.to("cpu"))
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    info = {
        "diffusers_spectrum_version": __version__,
        "formulation": formulation.formulation,
        "prediction_type": "edm" if formulation.edm else formulation.prediction_type,
        "pipeline": type(pipeline).__name__,
        "scheduler": type(pipeline.scheduler).__name__,
        "regularizers": {
            "fourier_weight": regularizers.weights.get("fourier", 0.0),
            "wavelet_weight": regularizers.weights.get("wavelet", 0.0),
            "weighting": regularizers.weighting,
        },
        "metrics": metrics,
    }
    write_json(output_dir / "spectrum_info.json", info)
    write_json(output_dir / "metrics.json", metrics)
    keys = ("sample_size", "block_out_channels", "layers_per_block", "down_block_types", "time_embedding_type")
    architecture = {key: unet.config[key] for key in keys}
    architecture["parameters"] = sum(p.numel() for p in unet.parameters())
    card = unconditional_model_card(
        outputs.hub_model_id or output_dir.resolve().name,
        unet=unet_description,
        formulation=formulation.formulation,
        formulation_description=formulation.description(),
        regularizers=regularizers,
        sample_steps=formulation.edm_num_inference_steps if formulation.edm else formulation.ddpm_num_steps,
        config=architecture,
        metrics=metrics,
        training_args=training_args,
        datasets=[dataset_name] if dataset_name else None,
        dataset_description=dataset_description,
    )
    card.save(output_dir / "README.md")
    push_output(outputs, output_dir)
    return output_dir
