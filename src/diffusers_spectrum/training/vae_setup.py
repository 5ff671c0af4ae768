"""The VAE trainer's recipes (`--recipe`: every loss weight and rarely touched knob of the authors' settings in one
place; a flag given explicitly wins, an unset one takes the recipe's value, or `DEFAULTS` without a recipe) and what
the resolved flags build: the autoencoder, the perceptual network, VA-VAE's encoder and VF loss, EQ-VAE's transform
draws and the loss weights. docs/PROVENANCE.md lists where each setting was read."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..losses.autoencoder_objective import AutoencoderLossWeights
from ..losses.equivariance import EquivarianceTransform, sample_equivariance_transform


if TYPE_CHECKING:
    from ..losses.alignment import VFAlignmentLoss
    from ..models.autoencoder_kl_spectral import SpectrumAutoencoderKL
    from ..models.encoders import RepresentationEncoder


__all__ = [
    "DEFAULTS",
    "RECIPES",
    "VAETrainingModule",
    "build_model",
    "build_perceptual",
    "build_vf_loss",
    "equivariance_sampler",
    "loss_weights",
    "transform_generator",
    "vf_features",
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


def build_model(args) -> SpectrumAutoencoderKL:
    """`--pretrained_vae` (any family, its latent convention kept) with the ESM / DSM settings, or a fresh preset."""
    from ..models.autoencoder_kl_spectral import SpectrumAutoencoderKL
    from ..models.loading import load_autoencoder
    from ..models.presets import build_vae

    spectral = dict(esm_delta=args.esm_delta, dsm_levels=tuple(args.dsm_levels), dsm_block_size=args.dsm_block_size)
    if args.pretrained_vae is None:
        return build_vae(args.vae_config, args.resolution, **spectral)
    loaded = load_autoencoder(args.pretrained_vae, subfolder=args.vae_subfolder)
    vae = SpectrumAutoencoderKL.from_config({**loaded.config, **spectral})
    vae.load_state_dict(loaded.state_dict(), strict=True)
    return vae


def loss_weights(args) -> AutoencoderLossWeights:
    """The autoencoder loss's weights and kinds, from the resolved flags (same names)."""
    return AutoencoderLossWeights(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(AutoencoderLossWeights)}
    )


def build_perceptual(args):
    """The perceptual network (`--perceptual_loss`), or None when off."""
    from ..losses.autoencoder import FeaturePerceptualLoss, FourierAmplitudeLoss, LPIPSLoss

    if args.perceptual_loss == "none" or args.perceptual_weight == 0:
        return None
    if args.perceptual_loss == "lpips":
        return LPIPSLoss(net=args.lpips_net)
    if args.perceptual_loss == "fourier":
        return FourierAmplitudeLoss()
    return FeaturePerceptualLoss(args.perceptual_backbone, layers=args.perceptual_layers)


def build_vf_loss(args, vae, device) -> tuple[RepresentationEncoder | None, VFAlignmentLoss | None]:
    """VA-VAE: the frozen vision encoder (`--vf_encoder`, loaded like REPA's targets: `RepresentationEncoder`) and
    the VF loss with its 1x1 projector (latent channels -> the encoder's feature width); `(None, None)` when off."""
    from ..losses.alignment import VFAlignmentLoss
    from ..models.encoders import RepresentationEncoder

    if args.vf_weight == 0:
        return None, None
    encoder = RepresentationEncoder.from_pretrained(args.vf_encoder, input_range="[-1,1]", device=device)
    encoder.requires_grad_(False)
    margins = dict(margin_cos=args.vf_margin_cos, margin_dist=args.vf_margin_dist)
    return encoder, VFAlignmentLoss(vae.config.latent_channels, encoder.feature_dim, **margins)


def equivariance_sampler(args):
    """EQ-VAE's draw of one step's transform, `(generator, latent_size) -> EquivarianceTransform`, with the recipe's
    probabilities and scales; None when `--equivariance` is off."""
    if not args.equivariance:
        return None
    return functools.partial(
        sample_equivariance_transform,
        equivariance_probability=args.eq_probability,
        low_resolution_probability=args.eq_low_resolution_probability,
        min_scale=args.eq_min_scale,
        quarter_turns=(1, 2, 3) if args.eq_rotations else (0,),
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
