"""Autoencoder training losses: reconstruction, perceptual (LPIPS, a transformers backbone, or the offline
Fourier-amplitude texture term), PatchGAN with hinge loss and the VQGAN adaptive weight.

References: PatchGAN discriminator, Isola et al. 2017 ("Image-to-Image Translation with Conditional Adversarial
Networks", Sec. 3.2.2); hinge GAN loss, Lim & Ye 2017 / Miyato et al. 2018; adaptive discriminator weight,
Esser et al. 2021 ("Taming Transformers", Eq. 7); LPIPS, Zhang et al. 2018. The recipe (L1 + 0.5 LPIPS + PatchGAN
weight 0.5, hinge, adaptive weight, delayed start) follows the Spectrum Matching authors' autoencoders.
"""

import os

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config

# diffusers resolves custom components through the module that defines them; keep the base classes importable here.
from diffusers.models.modeling_utils import ModelMixin

from ..spectral._checks import require_4d, require_tensor


__all__ = [
    "ConfigMixin",
    "FeaturePerceptualLoss",
    "FourierAmplitudeLoss",
    "LPIPSLoss",
    "ModelMixin",
    "NLayerDiscriminator",
    "adaptive_discriminator_weight",
    "hinge_d_loss",
    "hinge_g_loss",
    "lpips_available",
    "reconstruction_loss",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------------------------
# Reconstruction


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, loss_type: str = "l1") -> torch.Tensor:
    """Per-sample pixel loss: mean |r - x| (`"l1"`) or mean (r - x)^2 (`"l2"`). `(B, C, H, W)` x 2 -> `(B,)`."""
    require_tensor(reconstruction, "reconstruction_loss", "reconstruction")
    require_tensor(target, "reconstruction_loss", "target")
    if reconstruction.shape != target.shape:
        raise ValueError(
            f"reconstruction_loss: reconstruction {tuple(reconstruction.shape)} and target {tuple(target.shape)} "
            "must have the same shape."
        )
    difference = reconstruction.float() - target.float()
    if loss_type == "l1":
        per_element = difference.abs()
    elif loss_type == "l2":
        per_element = difference.square()
    else:
        raise ValueError(f"loss_type must be 'l1' or 'l2', got {loss_type!r}.")
    return per_element.flatten(1).mean(1).to(reconstruction.dtype)


# ----------------------------------------------------------------------------------------------------------------
# PatchGAN discriminator and hinge losses


class NLayerDiscriminator(ModelMixin, ConfigMixin):
    r"""PatchGAN discriminator (Isola et al. 2017): a stack of 4x4 convolutions that scores overlapping patches.

    Layout: conv(stride 2) + LeakyReLU(0.2); `num_layers - 1` x [conv(stride 2) + norm + LeakyReLU], channels doubling
    up to 8 x `base_channels`; conv(stride 1) + norm + LeakyReLU; conv(stride 1) to one logit per patch. With 3 layers
    the receptive field is 70 x 70 pixels.

    Args:
        in_channels (`int`, *optional*, defaults to 3): image channels.
        base_channels (`int`, *optional*, defaults to 64): channels of the first convolution.
        num_layers (`int`, *optional*, defaults to 3): number of stride-2 convolutions.
        norm (`str`, *optional*, defaults to `"batch"`): `"batch"` (the original), `"group"` (batch-size
            independent, 1 group per 32 channels) or `"none"`.
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3, norm: str = "batch"):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
        if norm not in ("batch", "group", "none"):
            raise ValueError(f"norm must be 'batch', 'group' or 'none', got {norm!r}.")

        def normalization(channels: int) -> torch.nn.Module:
            if norm == "batch":
                return torch.nn.BatchNorm2d(channels)
            if norm == "group":
                return torch.nn.GroupNorm(max(channels // 32, 1), channels)
            return torch.nn.Identity()

        layers = [torch.nn.Conv2d(in_channels, base_channels, 4, 2, 1), torch.nn.LeakyReLU(0.2)]
        channels = base_channels
        for i in range(1, num_layers + 1):
            out_channels = base_channels * min(2**i, 8)
            stride = 2 if i < num_layers else 1
            layers += [
                torch.nn.Conv2d(channels, out_channels, 4, stride, 1, bias=norm == "none"),
                normalization(out_channels),
                torch.nn.LeakyReLU(0.2),
            ]
            channels = out_channels
        layers.append(torch.nn.Conv2d(channels, 1, 4, 1, 1))
        self.layers = torch.nn.Sequential(*layers)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # DCGAN initialisation (Radford et al. 2016): conv weights N(0, 0.02), norm scales N(1, 0.02), biases 0.
        for module in self.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
            elif isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                torch.nn.init.normal_(module.weight, 1.0, 0.02)
                torch.nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`(B, C, H, W)` -> patch logits `(B, 1, h, w)`."""
        require_4d(images, "NLayerDiscriminator", "images", channels=self.config.in_channels)
        return self.layers(images)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss 0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]) (Lim & Ye 2017), per sample `(B,)`."""
    require_tensor(logits_real, "hinge_d_loss", "logits_real")
    require_tensor(logits_fake, "hinge_d_loss", "logits_fake")
    if logits_real.shape[:1] != logits_fake.shape[:1] or logits_real.ndim < 2:
        raise ValueError(
            f"hinge_d_loss: `logits_real` {tuple(logits_real.shape)} and `logits_fake` {tuple(logits_fake.shape)} "
            "must be (B, ...) with the same batch size B (score real and fake batches of equal size)."
        )
    real = F.relu(1.0 - logits_real.float()).flatten(1).mean(1)
    fake = F.relu(1.0 + logits_fake.float()).flatten(1).mean(1)
    return 0.5 * (real + fake)


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss -E[D(G(z))], per sample `(B,)`."""
    return -logits_fake.float().flatten(1).mean(1)


def adaptive_discriminator_weight(
    reconstruction_loss: torch.Tensor,
    generator_loss: torch.Tensor,
    last_layer: torch.Tensor,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VQGAN adaptive weight (Esser et al. 2021, Eq. 7): ||grad_L(rec)|| / (||grad_L(gan)|| + eps) at the decoder's
    last layer L, clamped to [0, max_weight] and detached. Both losses must be scalars still attached to the graph
    (the graph is retained); in no-grad mode (evaluation) returns 0."""
    if not torch.is_grad_enabled() or not generator_loss.requires_grad:
        return torch.zeros((), device=last_layer.device)
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.float().norm() / (gan_grad.float().norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


# ----------------------------------------------------------------------------------------------------------------
# Perceptual losses


def lpips_available() -> bool:
    """Whether the `lpips` package (and torchvision, which it needs) can be imported."""
    try:
        import lpips  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


class LPIPSLoss(torch.nn.Module):
    """LPIPS (Zhang et al. 2018) from the `lpips` package, frozen; images in [-1, 1] -> per-sample distance `(B,)`.

    Needs `pip install lpips` (with torchvision); the first use downloads the backbone's ImageNet weights.
    """

    def __init__(self, net: str = "vgg"):
        super().__init__()
        if not lpips_available():
            raise ImportError(
                "LPIPSLoss needs the `lpips` package and a torchvision built for your exact torch version, and "
                "downloads the backbone's ImageNet weights on first use. An unpinned `pip install torchvision` "
                "replaces torch with another build: pin the torchvision release made for your torch. Offline (or "
                "without them), train with --perceptual_loss none, or FeaturePerceptualLoss with a local "
                "transformers backbone folder (--perceptual_loss features --perceptual_backbone DIR)."
            )
        import lpips

        self.model = lpips.LPIPS(net=net, verbose=False).eval().requires_grad_(False)

    def train(self, mode: bool = True):  # the network stays in eval mode
        return super().train(False)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.model(reconstruction.float(), target.float(), normalize=False).flatten(1).mean(1)


class FourierAmplitudeLoss(torch.nn.Module):
    """A texture-forcing reconstruction term that needs no weights: the L1 distance between the amplitude spectra
    (orthonormal 2-D FFT per channel, ``log(1 + |F|)`` by default) of reconstruction and target, blind to phase
    (`losses.spectral_regularizers.fourier_loss` with ``phase_weight=0``).

    Why it forces texture where pixel L1 does not: under uncertainty about *where* fine detail lies, a pixel loss is
    minimised by leaving it out (a blur), while an amplitude loss charges every frequency band whose energy is
    missing and does not care where in the image the energy sits (a circular shift of the target costs nothing). So
    a blurred reconstruction pays for each band it lost, like LPIPS and the PatchGAN make it pay. It is a stand-in
    for LPIPS where LPIPS' VGG weights cannot be downloaded, not a perceptual metric: it sees global band energies
    per channel, not local features. Works at any image size (EQ-VAE's downscaled targets included).

    Args:
        log_amplitude: compare ``log(1 + |F|)`` (compresses the large low-frequency amplitudes) or ``|F|``.
        frequency_power: radial weights ``(r / r_max)^power`` normalised to mean 1 (0 = uniform).
    """

    def __init__(self, log_amplitude: bool = True, frequency_power: float = 0.0):
        super().__init__()
        self.log_amplitude, self.frequency_power = bool(log_amplitude), float(frequency_power)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """`(B, C, H, W)` x 2 -> per-sample distance `(B,)` (gradient to both inputs; detach the target yourself)."""
        from .spectral_regularizers import fourier_loss

        require_4d(reconstruction, "FourierAmplitudeLoss", "reconstruction")
        return fourier_loss(
            reconstruction,
            target,
            amplitude_weight=1.0,
            phase_weight=0.0,
            log_amplitude=self.log_amplitude,
            frequency_power=self.frequency_power,
            loss_type="l1",
            reduction="none",
        )


def _require_existing_local_path(path, func: str, name: str) -> None:
    """A string that looks like a filesystem path (absolute, `./`, `../`, `~`, or more than one `/`) must exist: fail
    at once with the folder's name instead of retrying it as a Hub id."""
    text = os.fspath(path)
    looks_local = text.startswith((".", "~", os.sep)) or os.path.isabs(text) or text.count("/") > 1
    if looks_local and not os.path.exists(os.path.expanduser(text)):
        raise FileNotFoundError(f"{func}: `{name}` {text!r}: no such folder; check the path (a Hub id is 'org/name').")


class FeaturePerceptualLoss(torch.nn.Module):
    """Perceptual distance in the feature space of a frozen transformers vision backbone (any local path or Hub id
    that `AutoModel` loads: DINOv2, ViT, CLIP vision, ConvNeXt, ResNet, ...).

    Like LPIPS without the learned linear heads: both images are normalised as the backbone expects, features of the
    chosen hidden states are unit-normalised along the channel axis, and the squared distance is summed over channels
    and averaged over positions and layers. Gradients flow to the reconstruction; the backbone is never updated.

    Args:
        backbone: path or Hub id of the model.
        layers: indices into `hidden_states` (the embedding output is 0); `None` = every hidden state after the
            embeddings.
        resolution: side the images are resized to (bicubic) before the backbone; `None` = the backbone config's
            `image_size`, or leave the size unchanged when it has none.
        mean, std: input normalisation; `None` = the backbone's image processor, else ImageNet's.
    """

    def __init__(
        self,
        backbone: str,
        layers: tuple[int, ...] | None = None,
        resolution: int | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ):
        super().__init__()
        from transformers import AutoImageProcessor, AutoModel

        _require_existing_local_path(backbone, "FeaturePerceptualLoss", "backbone")
        model = AutoModel.from_pretrained(backbone)
        model = getattr(model, "vision_model", model)  # CLIP / SigLIP: keep the vision tower
        self.model = model.eval().requires_grad_(False)
        if mean is None or std is None:
            try:
                processor = AutoImageProcessor.from_pretrained(backbone)
                mean, std = processor.image_mean, processor.image_std
            except (OSError, ValueError, AttributeError, KeyError):
                mean, std = IMAGENET_MEAN, IMAGENET_STD
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        image_size = getattr(self.model.config, "image_size", None)
        self.resolution = resolution if resolution is not None else image_size if isinstance(image_size, int) else None
        self.layers = None if layers is None else tuple(int(i) for i in layers)

    def train(self, mode: bool = True):  # the backbone stays in eval mode
        return super().train(False)

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        images = (images.float() + 1.0) / 2.0  # (B, 3, H, W) in [0, 1]
        if self.resolution is not None and images.shape[-2:] != (self.resolution, self.resolution):
            images = F.interpolate(images, size=(self.resolution,) * 2, mode="bicubic", align_corners=False)
        images = (images - self.mean) / self.std
        hidden_states = self.model(pixel_values=images, output_hidden_states=True).hidden_states
        indices = self.layers if self.layers is not None else range(1, len(hidden_states))
        features = []
        for index in indices:
            hidden = hidden_states[index]
            if hidden.ndim == 3:  # transformer tokens (B, N, D)
                hidden = F.normalize(hidden.float(), dim=-1, eps=1e-10)
            else:  # feature map (B, C, h, w) -> (B, h*w, C)
                hidden = F.normalize(hidden.float().flatten(2).transpose(1, 2), dim=-1, eps=1e-10)
            features.append(hidden)
        return features

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """`(B, 3, H, W)` x 2 in [-1, 1] -> per-sample distance `(B,)` (gradient to `reconstruction` only)."""
        require_4d(reconstruction, "FeaturePerceptualLoss", "reconstruction", channels=3)
        with torch.no_grad():
            target_features = self._features(target)
        distance = torch.zeros(reconstruction.shape[0], device=reconstruction.device)
        for rec, tgt in zip(self._features(reconstruction), target_features):
            distance = distance + (rec - tgt).square().sum(-1).mean(-1)
        return (distance / max(len(target_features), 1)).to(reconstruction.dtype)
