"""The VAE trainer's recipes (`--recipe`: every loss weight and rarely touched knob of the authors' settings in one
place; a flag given explicitly wins, an unset one takes the recipe's value, or `DEFAULTS` without a recipe), the
frozen settings built once from the resolved flags and what they build (the autoencoder, the perceptual network,
VA-VAE's encoder and VF loss, EQ-VAE's transform draws, the loss weights), and what a finished run writes.
docs/PROVENANCE.md lists where each setting was read."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..losses.autoencoder_objective import AutoencoderLossWeights
from ..losses.equivariance import EquivarianceTransform, sample_equivariance_transform
from .args import Outputs, _FromFlags


if TYPE_CHECKING:
    from ..losses.alignment import VFAlignmentLoss
    from ..models.autoencoder_kl_spectral import SpectrumAutoencoderKL
    from ..models.encoders import RepresentationEncoder


__all__ = [
    "DEFAULTS",
    "RECIPES",
    "VAETrainingModule",
    "AutoencoderModel",
    "Equivariance",
    "PerceptualLoss",
    "VFAlignment",
    "latent_statistics",
    "loss_weights",
    "transform_generator",
    "validate",
    "vf_features",
    "write_outputs",
]


# The knobs every recipe shares unless it says otherwise: the PatchGAN (3 stride-2 layers, 64 channels, batch norm,
# the VQGAN adaptive weight), LPIPS on VGG, EQ-VAE's transform draws (branch probabilities 0.5 / 0.25, scales from
# 0.25, quarter turns) and VA-VAE's margins (cosine 0.5, distance matrix 0.25) with its adaptive weight.
_KNOBS = dict(
    disc_layers=3,
    disc_channels=64,
    disc_norm="batch",
    adaptive_disc_weight=True,
    lpips_net="vgg",
    eq_probability=0.5,
    eq_low_resolution_probability=0.25,
    eq_min_scale=0.25,
    eq_rotations=True,
    vf_margin_cos=0.5,
    vf_margin_dist=0.25,
    adaptive_vf=True,
)


# The authors' recipes (Spectrum Matching's autoencoders): L1 + 0.5 LPIPS + PatchGAN (hinge, adaptive weight, weight
# 0.5, from step 50k), AdamW (0.9, 0.999, wd 0.005), lr 5e-5 after 2k warm-up steps, grad clip 1.0, flip 0.5. SD-VAE
# adds KL 1e-6; ESM-AE uses ESM 0.01 (delta 1) without KL; DSM-AE uses the DSM levels 0, 8, 10, 12 without KL.
_AUTHORS_BASE = dict(
    _KNOBS,
    reconstruction_loss="l1",
    perceptual_loss="lpips",
    perceptual_weight=0.5,
    disc_weight=0.5,
    disc_start=50001,
    learning_rate=5e-5,
    lr_scheduler="constant_with_warmup",
    lr_warmup_steps=2000,
    adam_weight_decay=0.005,
    max_grad_norm=1.0,
    random_flip=True,
)


# EQ-VAE (Kouzelis et al. 2025; the authors' eqvae_config.yaml) and VA-VAE (Yao et al. 2025; the authors'
# f16d32_vfdinov2.yaml): the SD-VAE loss with, for EQ-VAE, the equivariance branch (disc_start 0 since they
# fine-tune; their fine-tuning lr 4.5e-6 x 160 = 7.2e-4 on 8 GPUs x batch 10 x accumulation 2) and, for VA-VAE, the
# VF loss 0.1 x the adaptive weight against a frozen encoder (--vf_encoder; DINOv2 ViT-L/14 in the paper). Both use
# Adam betas (0.5, 0.9). docs/PROVENANCE.md lists where each setting was read.
_BASELINE = dict(_AUTHORS_BASE, kl_weight=1e-6, esm_weight=0.0, dsm_levels=(0,), lr_warmup_steps=0)


_BASELINE.update(adam_beta1=0.5, adam_beta2=0.9, adam_weight_decay=0.0)
RECIPES = {
    "sd-vae": dict(_AUTHORS_BASE, kl_weight=1e-6, esm_weight=0.0, dsm_levels=(0,)),
    "esm-ae": dict(_AUTHORS_BASE, kl_weight=0.0, esm_weight=0.01, esm_delta=1.0, dsm_levels=(0,)),
    "dsm-ae": dict(_AUTHORS_BASE, kl_weight=0.0, esm_weight=0.0, dsm_levels=(0, 8, 10, 12)),
    "eq-vae": dict(_BASELINE, disc_start=0, learning_rate=7.2e-4, equivariance=True),
    "va-vae": dict(_BASELINE, disc_start=5001, learning_rate=1e-4, vf_weight=0.1),
}


# Without a recipe: ESM + DSM with pixel losses only (runs anywhere, no LPIPS weights needed).
DEFAULTS = dict(
    _KNOBS,
    reconstruction_loss="l1",
    perceptual_loss="none",
    perceptual_weight=0.0,
    disc_weight=0.0,
    disc_start=0,
    learning_rate=1e-4,
    lr_scheduler="constant_with_warmup",
    lr_warmup_steps=0,
    adam_weight_decay=0.005,
    max_grad_norm=1.0,
    random_flip=False,
    kl_weight=0.0,
    esm_weight=0.01,
    esm_delta=1.0,
    dsm_levels=(0, 8, 10, 12),
    adam_beta1=0.9,
    adam_beta2=0.999,
    equivariance=False,
    vf_weight=0.0,
)


# ----------------------------------------------------------------------------------------------------------------
# What the resolved flags build


@dataclasses.dataclass(frozen=True)
class AutoencoderModel(_FromFlags):
    """The autoencoder: `pretrained_vae` (any family, its latent convention kept) or a fresh `vae_config` preset at
    `resolution`, with the ESM / DSM settings its `training_losses` use."""

    vae_config: str = "f8d4"
    resolution: int = 256
    pretrained_vae: str | None = None
    vae_subfolder: str | None = None
    esm_delta: float = 1.0
    dsm_levels: tuple[int, ...] = (0,)
    dsm_block_size: int = 8

    def build(self) -> SpectrumAutoencoderKL:
        from ..models.autoencoder_kl_spectral import SpectrumAutoencoderKL
        from ..models.loading import load_autoencoder
        from ..models.presets import build_vae

        spectral = dict(esm_delta=self.esm_delta, dsm_levels=tuple(self.dsm_levels))
        spectral.update(dsm_block_size=self.dsm_block_size)
        if self.pretrained_vae is None:
            return build_vae(self.vae_config, self.resolution, **spectral)
        loaded = load_autoencoder(self.pretrained_vae, subfolder=self.vae_subfolder)
        vae = SpectrumAutoencoderKL.from_config({**loaded.config, **spectral})
        vae.load_state_dict(loaded.state_dict(), strict=True)
        return vae


def loss_weights(args) -> AutoencoderLossWeights:
    """The autoencoder loss's weights and kinds, from the resolved flags (same names)."""
    return AutoencoderLossWeights(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(AutoencoderLossWeights)}
    )


@dataclasses.dataclass(frozen=True)
class PerceptualLoss(_FromFlags):
    """The perceptual term's network: LPIPS (`lpips_net`), a transformers backbone's features, the offline Fourier
    amplitude stand-in, or none."""

    perceptual_loss: str = "none"
    perceptual_weight: float = 0.0
    lpips_net: str = "vgg"
    perceptual_backbone: str | None = None
    perceptual_layers: tuple[int, ...] | None = None

    def build(self):
        """The network, or None when off."""
        from ..losses.autoencoder import FeaturePerceptualLoss, FourierAmplitudeLoss, LPIPSLoss

        if self.perceptual_loss == "none" or self.perceptual_weight == 0:
            return None
        if self.perceptual_loss == "lpips":
            return LPIPSLoss(net=self.lpips_net)
        if self.perceptual_loss == "fourier":
            return FourierAmplitudeLoss()
        return FeaturePerceptualLoss(self.perceptual_backbone, layers=self.perceptual_layers)


@dataclasses.dataclass(frozen=True)
class VFAlignment(_FromFlags):
    """VA-VAE: a frozen vision encoder (`vf_encoder`, loaded like REPA's targets) and the VF loss's margins."""

    vf_encoder: str | None = None
    vf_weight: float = 0.0
    vf_margin_cos: float = 0.5
    vf_margin_dist: float = 0.25

    def build(self, latent_channels: int, device) -> tuple[RepresentationEncoder | None, VFAlignmentLoss | None]:
        """The frozen encoder and the VF loss with its 1x1 projector (latent channels -> the encoder's feature
        width); `(None, None)` when off."""
        from ..losses.alignment import VFAlignmentLoss
        from ..models.encoders import RepresentationEncoder

        if self.vf_weight == 0:
            return None, None
        encoder = RepresentationEncoder.from_pretrained(self.vf_encoder, input_range="[-1,1]", device=device)
        encoder.requires_grad_(False)
        margins = dict(margin_cos=self.vf_margin_cos, margin_dist=self.vf_margin_dist)
        return encoder, VFAlignmentLoss(latent_channels, encoder.feature_dim, **margins)


@dataclasses.dataclass(frozen=True)
class Equivariance(_FromFlags):
    """EQ-VAE's transform draws: branch probabilities, smallest scale, quarter turns."""

    equivariance: bool = False
    eq_probability: float = 0.5
    eq_low_resolution_probability: float = 0.25
    eq_min_scale: float = 0.25
    eq_rotations: bool = True

    def sampler(self):
        """One step's draw, `(generator, latent_size) -> EquivarianceTransform`; None when off."""
        if not self.equivariance:
            return None
        return functools.partial(
            sample_equivariance_transform,
            equivariance_probability=self.eq_probability,
            low_resolution_probability=self.eq_low_resolution_probability,
            min_scale=self.eq_min_scale,
            quarter_turns=(1, 2, 3) if self.eq_rotations else (0,),
        )


def transform_generator(seed: int, global_step: int, micro_step: int) -> torch.Generator:
    """CPU generator of one micro-step's EQ-VAE transform: a function of the step only, the same on every process
    (so all processes decode the same sizes and run the same networks) and on a resumed run."""
    state = np.random.SeedSequence([seed, global_step, micro_step, 0x5EED, 0]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


@torch.no_grad()
def vf_features(encoder: RepresentationEncoder, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The frozen encoder's patch features on the latent grid: `(B, 3, H, W)` -> `(B, D, h, w)` (float32)."""
    tokens = encoder(images, grid)  # (B, h * w, D)
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], *grid)


class VAETrainingModule(torch.nn.Module):
    """What `accelerator.prepare` wraps: its `forward` runs `vae.training_losses` (an EQ-VAE step with a
    non-identity transform included), so encode and decode go through the DDP / autocast wrapper."""

    def __init__(self, vae: SpectrumAutoencoderKL):
        super().__init__()
        self.vae = vae

    @property
    def wrapped_model(self) -> SpectrumAutoencoderKL:
        """What the `Checkpointer` saves as a `save_pretrained` folder."""
        return self.vae

    def forward(self, images: torch.Tensor, generator=None, transform: EquivarianceTransform | None = None) -> dict:
        """The unweighted terms of `SpectrumAutoencoderKLTrainingOutput` as a dict, the posterior left out."""
        out = self.vae.training_losses(images, generator=generator, transform=transform)
        return {key: value for key, value in out.items() if key != "posterior"}


# ----------------------------------------------------------------------------------------------------------------
# What a run shows and writes


def validate(accelerator, vae: SpectrumAutoencoderKL, ema, images: torch.Tensor, step: int) -> None:
    """Validation of the (EMA) weights on `images` `(B, 3, H, W)`: the numbers of
    `evaluation.validation.vae_validation_metrics`, the originals above their reconstructions, and the image and
    latent spectra (the authors' convention), logged to the trackers."""
    from ..evaluation.plotting import plot_image_latent_spectra
    from ..evaluation.validation import vae_validation_metrics
    from .loop import ema_weights, log_figure, log_images

    vae.eval()
    with ema_weights(ema, vae):
        metrics, reconstructions, latents = vae_validation_metrics(vae, images, vae.config.esm_delta)
    vae.train()
    accelerator.log({f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
    log_images(accelerator, "val/reconstructions", torch.cat([images, reconstructions]), step, nrow=len(images))
    figure = plot_image_latent_spectra(images, latents, delta=vae.config.esm_delta, convention="authors")
    log_figure(accelerator, "val/spectrum", figure, step)


def latent_statistics(vae, batches, count: int, use_shift: bool, seed: int, device) -> dict:
    """`SpectrumAutoencoderKL.estimate_latent_stats` over the first `count` images of `batches` (seeded posterior
    samples): the scaling and shift factors the exported VAE carries."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return vae.estimate_latent_stats(batches, count, use_shift, sample_posterior=True, generator=generator)


def write_outputs(
    vae: SpectrumAutoencoderKL,
    metrics: dict,
    outputs: Outputs,
    training_args: dict,
    *,
    recipe: str | None,
    base_model: str | None,
    dataset_name: str | None,
    dataset_description: str | None,
    eval_description: str,
) -> None:
    """save_pretrained, the stock export, metrics.json, the model card, and the (dry-run) push, in
    `outputs.output_dir`. `training_args`: the flags as the card shows them (`records.public_args`)."""
    from ..pipelines.export import export_vae
    from ..pipelines.model_cards import vae_model_card
    from ..utils.records import write_json
    from .loop import push_output

    output_dir = Path(outputs.output_dir)
    vae.save_pretrained(output_dir)
    export_vae(output_dir / "stock", vae, training_info={"metrics": metrics, "recipe": recipe})
    write_json(output_dir / "metrics.json", metrics)
    card = vae_model_card(
        outputs.hub_model_id or output_dir.resolve().name,
        config=dict(vae.config),
        training_args=training_args,
        metrics=metrics,
        base_model=base_model,
        datasets=[dataset_name] if dataset_name else None,
        dataset_description=dataset_description,
        recipe=recipe,
        eval_description=eval_description,
    )
    card.save(output_dir / "README.md")
    push_output(outputs, output_dir)
