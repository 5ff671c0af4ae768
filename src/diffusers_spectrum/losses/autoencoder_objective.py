"""The generator-side loss of one autoencoder step, from its unweighted terms and one config of weights: pixel
reconstruction, perceptual, KL, ESM, VA-VAE's VF alignment and the PatchGAN generator term (each with its adaptive
weight where the recipe has one), and the discriminator's hinge loss. The terms come from
`SpectrumAutoencoderKL.training_losses`; the networks (perceptual, discriminator) are imported where used, so the
trainer's flag parser stays light."""

import contextlib
from dataclasses import dataclass

import torch


__all__ = [
    "PERCEPTUAL_MIN_SIZE",
    "AutoencoderLossWeights",
    "autoencoder_loss",
    "discriminator_loss",
    "discriminator_min_size",
    "gan_fits",
    "perceptual_fits",
]

# LPIPS-VGG pools four times before its last tap (relu5_3): below 16 px that tap is empty. The feature loss resizes
# its input to the backbone's resolution, so it has no minimum.
PERCEPTUAL_MIN_SIZE = {"lpips": 16, "features": 1, "fourier": 1, "none": 1}


@dataclass(frozen=True)
class AutoencoderLossWeights:
    """What the autoencoder loss adds and how much of each (a recipe's values; `--recipe` in the VAE trainer)."""

    reconstruction_loss: str = "l1"  # "l1" or "l2"
    reconstruction_weight: float = 1.0
    perceptual_loss: str = "none"  # "lpips", "features", "fourier" or "none"
    perceptual_weight: float = 0.0
    kl_weight: float = 0.0
    esm_weight: float = 0.0
    vf_weight: float = 0.0  # VA-VAE's w_hyper
    adaptive_vf: bool = True  # VA-VAE's gradient-norm ratio at the encoder's last layer
    disc_weight: float = 0.0
    adaptive_disc_weight: bool = True  # VQGAN's gradient-norm ratio at the decoder's last layer
    disc_layers: int = 3  # stride-2 layers of the PatchGAN (its smallest input: `discriminator_min_size`)


def discriminator_min_size(num_layers: int) -> int:
    """Smallest image side the PatchGAN (`NLayerDiscriminator`) scores: each of its `num_layers` stride-2 4x4 convs
    (padding 1) maps a side s to floor(s / 2), and its two stride-1 4x4 convs take 1 each, so the output has a pixel
    only when s / 2**num_layers >= 3: 24 px for the 3-layer default. EQ-VAE's downscaled targets fall below that at
    small resolutions (a 32 px image at scale 0.25 is 8 px), so the recipe skips the GAN terms on such steps."""
    return 3 * 2**num_layers


def perceptual_fits(out: dict, perceptual_loss: str) -> bool:
    """Whether the perceptual network can score this step's reconstructions (EQ-VAE's downscaled targets can be
    smaller than LPIPS' 16 px minimum; `PERCEPTUAL_MIN_SIZE`). Python ints only: no host sync."""
    return min(out["reconstruction"].shape[-2:]) >= PERCEPTUAL_MIN_SIZE[perceptual_loss]


def gan_fits(out: dict, disc_layers: int) -> bool:
    """Whether the PatchGAN can score this step's reconstructions (`discriminator_min_size`)."""
    return min(out["reconstruction"].shape[-2:]) >= discriminator_min_size(disc_layers)


def autoencoder_loss(
    out: dict,
    weights: AutoencoderLossWeights,
    perceptual: torch.nn.Module | None = None,
    discriminator: torch.nn.Module | None = None,
    last_layer: torch.Tensor | None = None,
    autocast=contextlib.nullcontext,
    encoder_last_layer: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """The weighted autoencoder (generator-side) loss of one batch and its unweighted named terms.

    Every term keeps its graph (the perceptual loss is *not* under no_grad). `discriminator` (unwrapped; `None` = GAN
    off for this step) is frozen while scoring the reconstructions, so this loss never trains it. The perceptual and
    GAN terms are skipped on steps whose reconstructions are below their networks' minimum size (EQ-VAE's
    downscaled branch at small resolutions; `perceptual_fits`, `gan_fits`).

    VA-VAE: when `out` holds `"vf"` (the unweighted `VFAlignmentLoss` value, L_mcos + L_mdms), adds
    `w_hyper * w_adaptive * vf` with w_hyper = `weights.vf_weight` and w_adaptive the gradient-norm ratio of the
    reconstruction NLL to the VF loss at `encoder_last_layer` (`vae.encoder.conv_out.weight`; `weights.adaptive_vf`).
    """
    from .alignment import adaptive_weight
    from .autoencoder import adaptive_discriminator_weight, hinge_g_loss, reconstruction_loss

    terms = {
        "reconstruction": reconstruction_loss(out["reconstruction"], out["target"], weights.reconstruction_loss).mean()
    }
    nll = weights.reconstruction_weight * terms["reconstruction"]
    if discriminator is not None and not gan_fits(out, weights.disc_layers):
        discriminator = None
    if perceptual is not None and perceptual_fits(out, weights.perceptual_loss):
        with autocast():
            terms["perceptual"] = perceptual(out["reconstruction"], out["target"]).mean()
        nll = nll + weights.perceptual_weight * terms["perceptual"]
    loss = nll
    if weights.kl_weight > 0:
        terms["kl"] = out["kl"].mean()
        loss = loss + weights.kl_weight * terms["kl"]
    if weights.esm_weight > 0:
        loss = loss + weights.esm_weight * out["esm"]
    terms["esm"] = out["esm"].detach()
    if "vf" in out:
        terms["vf"] = out["vf"]
        vf_weight = torch.full((), weights.vf_weight, device=loss.device)
        if weights.adaptive_vf and nll.requires_grad:
            vf_weight = adaptive_weight(nll, terms["vf"], encoder_last_layer, w_hyper=weights.vf_weight)
        terms["vf_weight"] = vf_weight
        loss = loss + vf_weight * terms["vf"]
    if discriminator is not None:
        discriminator.requires_grad_(False)
        with autocast():
            terms["generator"] = hinge_g_loss(discriminator(out["reconstruction"])).mean()
        discriminator.requires_grad_(True)
        gan_weight = torch.ones((), device=loss.device)
        if weights.adaptive_disc_weight and nll.requires_grad:
            gan_weight = adaptive_discriminator_weight(nll, terms["generator"], last_layer)
        terms["adaptive_weight"] = gan_weight
        loss = loss + weights.disc_weight * gan_weight * terms["generator"]
    return loss, terms


def discriminator_loss(discriminator: torch.nn.Module, out: dict) -> torch.Tensor:
    """Hinge loss of the discriminator on the *detached* targets and reconstructions (one forward, so DDP sees one
    call per step)."""
    from .autoencoder import hinge_d_loss

    pair = torch.cat([out["target"].detach(), out["reconstruction"].detach()])  # (2B, 3, H, W)
    return hinge_d_loss(*discriminator(pair).chunk(2)).mean()
