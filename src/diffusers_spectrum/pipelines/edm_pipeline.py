"""The smallest pipeline that samples an EDM-trained ``UNet2DModel`` with diffusers' EDM schedulers.

``DDPMPipeline`` and ``DDIMPipeline`` apply neither ``init_noise_sigma`` nor ``scale_model_input`` (EDM's ``c_in``).
Saved folders are stock: ``model_index.json`` names ``ConsistencyModelPipeline`` (same images), so
``DiffusionPipeline.from_pretrained(folder)`` samples them with diffusers alone, while
``EDMPipeline.from_pretrained(folder)`` loads the same folder as this class.

Why, and why the folder does not name this class: docs/METHODS.md#edm-pipeline
"""

import json
import os

import torch
from diffusers import DiffusionPipeline, EDMDPMSolverMultistepScheduler, EDMEulerScheduler, UNet2DModel
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from ..diffusion.edm import EDM_SIGMA_DATA, check_edm_unet


EDM_SCHEDULERS = ("euler", "dpmsolver")
# the stock pipeline whose loop is EDMPipeline's, named in saved folders so diffusers alone loads them
STOCK_PIPELINE = "ConsistencyModelPipeline"
OUTPUT_TYPES = ("pil", "np", "pt")


def edm_scheduler(kind: str = "euler", sigma_data: float = EDM_SIGMA_DATA, **kwargs):
    """A diffusers EDM scheduler configured for networks trained with :mod:`diffusers_spectrum.diffusion.edm`.

    ``prediction_type="epsilon"`` is EDM's own ``c_out`` in these schedulers (``"v_prediction"`` flips its sign).
    Other keyword arguments (``sigma_min``, ``sigma_max``, ``rho``, ...) go to the scheduler; their defaults are the
    EDM paper's (0.002, 80, 7).

    Args:
        kind: ``"euler"`` (``EDMEulerScheduler``) or ``"dpmsolver"`` (``EDMDPMSolverMultistepScheduler``).
        sigma_data: must equal the value used in training (0.5 in EDM).
    """
    if kind not in EDM_SCHEDULERS:
        raise ValueError(f"edm_scheduler: unknown kind {kind!r}; choose one of {EDM_SCHEDULERS}.")
    if kwargs.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError("edm_scheduler: EDM training matches prediction_type='epsilon' only (EDM's own c_out).")
    scheduler_class = EDMEulerScheduler if kind == "euler" else EDMDPMSolverMultistepScheduler
    return scheduler_class(sigma_data=sigma_data, **{**kwargs, "prediction_type": "epsilon"})


class EDMPipeline(DiffusionPipeline):
    r"""Unconditional image generation with an EDM-preconditioned ``UNet2DModel`` (Karras et al. 2022).

    The network is EDM's raw ``F``: the scheduler scales its input by ``c_in`` (``scale_model_input``), passes
    ``c_noise = log(sigma) / 4`` as the timestep and forms ``D = c_skip x + c_out F`` in ``step``.

    Args:
        unet ([`UNet2DModel`]): trained with :func:`diffusers_spectrum.diffusion.edm.edm_denoise`
            (``time_embedding_type="positional"``).
        scheduler ([`EDMEulerScheduler`] or [`EDMDPMSolverMultistepScheduler`]): ``prediction_type="epsilon"`` and the
            training ``sigma_data``; see :func:`edm_scheduler`.

    Example:
        ```py
        pipe = EDMPipeline.from_pretrained("path/to/output_dir")
        images = pipe(batch_size=4, generator=torch.manual_seed(0), num_inference_steps=40).images
        ```
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: EDMEulerScheduler | EDMDPMSolverMultistepScheduler):
        super().__init__()
        check_edm_unet(unet)
        if not isinstance(scheduler, (EDMEulerScheduler, EDMDPMSolverMultistepScheduler)):
            raise TypeError(
                f"EDMPipeline: `scheduler` must be an EDMEulerScheduler or EDMDPMSolverMultistepScheduler, got "
                f"{type(scheduler).__name__}; build one with `edm_scheduler('euler')`."
            )
        if scheduler.config.prediction_type != "epsilon":
            raise ValueError(
                "EDMPipeline: the scheduler's prediction_type must be 'epsilon' (EDM's own c_out), got "
                f"{scheduler.config.prediction_type!r}."
            )
        self.register_modules(unet=unet, scheduler=scheduler)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """`DiffusionPipeline.save_pretrained`, then `model_index.json` names the stock `ConsistencyModelPipeline`
        (same loop, same images), so `DiffusionPipeline.from_pretrained(save_directory)` works with diffusers alone;
        `EDMPipeline.from_pretrained` still loads the folder as this class. (With `push_to_hub=True` the upload
        happens inside diffusers' method, before the rename: save first, then push the folder.)"""
        super().save_pretrained(save_directory, *args, **kwargs)
        if not isinstance(self.unet.config.sample_size, int):
            return  # ConsistencyModelPipeline samples square images only; keep our name for non-square ones
        index = os.path.join(save_directory, "model_index.json")
        with open(index, encoding="utf-8") as f:
            config = json.load(f)
        config["_class_name"] = STOCK_PIPELINE
        with open(index, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 50,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        r"""Sample ``batch_size`` images.

        Args:
            batch_size (`int`, *optional*, defaults to 1): number of images.
            generator (`torch.Generator`, *optional*): seeds the initial noise (and the scheduler's noise, if any).
            num_inference_steps (`int`, *optional*, defaults to 50): sampler steps (network evaluations).
            output_type (`str`, *optional*, defaults to `"pil"`): `"pil"`, `"np"` (``(B, H, W, C)`` in [0, 1]) or
                `"pt"` (``(B, C, H, W)`` in [0, 1]).
            return_dict (`bool`, *optional*, defaults to `True`): return an `ImagePipelineOutput` or a tuple.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"EDMPipeline: `output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if batch_size < 1 or num_inference_steps < 1:
            raise ValueError("EDMPipeline: `batch_size` and `num_inference_steps` must be positive.")
        # 1. Initial noise x_T ~ N(0, init_noise_sigma^2 I)
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, height, width)
        device = self._execution_device
        image = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        image = image * self.scheduler.init_noise_sigma

        # 2. Denoising loop: c_in scaling, F(c_in x; c_noise), the scheduler's step on D = c_skip x + c_out F
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(image, t)
            model_output = self.unet(model_input, t).sample
            image = self.scheduler.step(model_output, t, image, generator=generator).prev_sample

        # 3. [-1, 1] -> [0, 1] and the requested format
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
