"""A small feature network trained here, on a study's own training images, for KID and the Frechet distance.

No pretrained feature network can be downloaded where the studies run (and Inception or DINOv2 features of 32 px
crops would be a stretch anyway). `train_feature_net` trains `SmallFeatureNet` (six 3 x 3 convolutions with GELU in
three stages, ~60k parameters) self-supervised, as a denoising autoencoder (Vincent et al. 2008): a small decoder
must restore each clean random crop (random horizontal flip; no colour jitter, no blur) from a copy with Gaussian
noise (std 0.2), so the encoder must keep what a generation metric must see: colour, contrast and fine detail. The
features are the spatial mean and standard deviation of every stage's activations (multi-scale first and second
moments, as texture statistics; 224 numbers), standardised with the training crops' mean and std so that kernels
and distances on them have unit scale. On 2 CPU cores it trains in 1 to 3 minutes (the budget is 10). Its weights are
an artifact of the run (`feature_net_for` caches them in the study's work folder), never downloaded. A randomly
initialised network of the same architecture (`random_feature_net`) is the sanity row.

    net = feature_net_for(work_dir / "feature_net", train_photos)   # trains once, then loads
    features = net.features(images)                                 # (N, 224), images (N, 3, 32, 32) in [-1, 1]

`scripts/train_feature_net.py` trains it on the embedded photos and prints its time and the blur-separation ratios
of every generation metric (`evaluation.study_metrics`).
"""

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from tqdm.auto import tqdm

from ..spectral._checks import require_4d


__all__ = ["FEATURE_NET_SETTINGS", "SmallFeatureNet", "feature_net_for", "random_feature_net", "train_feature_net"]

FEATURE_NET_SETTINGS = {"steps": 400, "batch_size": 64, "learning_rate": 2e-3, "crop_size": 32, "noise_std": 0.2,
                        "seed": 0}  # fmt: skip


class SmallFeatureNet(ModelMixin, ConfigMixin):
    """Images ``(B, 3, H, W)`` in [-1, 1] -> features ``(B, 2 sum(widths))``; a decoder for training only.

    Three stages of two 3 x 3 convolutions with GELU (the second and third downsample by 2). Features: the spatial
    mean and standard deviation of every stage's activations, concatenated, then standardised per dimension with the
    stored ``feature_mean`` / ``feature_std`` buffers (`standardise_on`).

    Args:
        widths: channels of the three stages.
        with_decoder: build the training decoder (transposed convolutions back to 3 channels at the input size).
    """

    @register_to_config
    def __init__(self, widths: tuple = (16, 32, 64), with_decoder: bool = True):
        super().__init__()
        stages, channels = [], 3
        for index, width in enumerate(widths):
            layers = [nn.Conv2d(channels, width, 3, stride=1 if index == 0 else 2, padding=1), nn.GELU()]
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.GELU()]
            stages.append(nn.Sequential(*layers))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.decoder = None
        if with_decoder:
            layers = []
            for width in reversed(widths[:-1]):
                layers += [nn.ConvTranspose2d(channels, width, 4, stride=2, padding=1), nn.GELU()]
                channels = width
            self.decoder = nn.Sequential(*layers, nn.Conv2d(channels, 3, 3, padding=1))
        dim = 2 * sum(widths)
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's activations."""
        activations, x = [], images
        for stage in self.stages:
            x = stage(x)
            activations.append(x)
        return activations

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """Spatial mean and std of every stage's activations ``(B, 2 sum(widths))``, before standardisation."""
        pooled = []
        for x in self.encode(images):
            pooled += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
        return torch.cat(pooled, dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Standardised features ``(B, 2 sum(widths))``."""
        return (self.pooled(images) - self.feature_mean) / self.feature_std

    @torch.no_grad()
    def standardise_on(self, images: torch.Tensor, batch_size: int = 256) -> None:
        """Set the standardisation buffers to the mean and std of ``images``' pooled features."""
        self.eval()
        pooled = torch.cat([self.pooled(images[i : i + batch_size].float()) for i in
                            range(0, images.shape[0], batch_size)])  # fmt: skip
        self.feature_mean.copy_(pooled.mean(0))
        self.feature_std.copy_(pooled.std(0).clamp_min(1e-6))

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Features of many images ``(N, 3, H, W)`` in [-1, 1], in eval mode and batches: ``(N, 2 sum(widths))``
        float64 on the CPU."""
        require_4d(images, "SmallFeatureNet.features", "images", channels=3)
        self.eval()
        device = next(self.parameters()).device
        parts = [self(images[i : i + batch_size].to(device).float()).double().cpu() for i in
                 range(0, images.shape[0], batch_size)]  # fmt: skip
        return torch.cat(parts)


def random_feature_net(images: torch.Tensor, seed: int = 0, **config) -> SmallFeatureNet:
    """The same architecture with seeded random weights (PyTorch's default initialisation), standardised on
    ``images`` (the training photos' central crops) like the trained one: the sanity row."""
    torch.manual_seed(seed)
    net = SmallFeatureNet(with_decoder=False, **config)
    net.standardise_on(_center_crops(images, FEATURE_NET_SETTINGS["crop_size"]))
    return net.eval()


def _center_crops(images: torch.Tensor, size: int) -> torch.Tensor:
    top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
    return images[..., top : top + size, left : left + size].float()


def _random_crops(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``size x size`` crop per image, flipped horizontally with probability 1/2."""
    batch, _, height, width = images.shape
    tops = torch.randint(0, height - size + 1, (batch,), generator=generator)
    lefts = torch.randint(0, width - size + 1, (batch,), generator=generator)
    crops = torch.stack([images[i, :, t : t + size, x : x + size] for i, (t, x) in enumerate(zip(tops, lefts))])
    flip = torch.rand(batch, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(-1), crops)


def train_feature_net(
    images: torch.Tensor,
    steps: int = FEATURE_NET_SETTINGS["steps"],
    batch_size: int = FEATURE_NET_SETTINGS["batch_size"],
    learning_rate: float = FEATURE_NET_SETTINGS["learning_rate"],
    crop_size: int = FEATURE_NET_SETTINGS["crop_size"],
    noise_std: float = FEATURE_NET_SETTINGS["noise_std"],
    seed: int = FEATURE_NET_SETTINGS["seed"],
    progress: bool = False,
) -> SmallFeatureNet:
    """Denoising-autoencoder training on random ``crop_size`` crops (random flips) of ``images``: MSE between the
    decoded ``crop + noise_std * noise`` and the clean crop; AdamW, cosine learning-rate decay, seeded. Then the
    features are standardised on the central crops of ``images``. ``net.training_losses`` holds the first and last
    losses.

    Args:
        images: ``(N, 3, H, W)`` training photos in [-1, 1], ``H, W >= crop_size`` (larger photos give more crops).
    """
    require_4d(images, "train_feature_net", "images", channels=3)
    if min(images.shape[-2:]) < crop_size or images.shape[0] < 2:
        raise ValueError(
            f"train_feature_net: need at least 2 images of at least {crop_size} px, got {tuple(images.shape)}."
        )
    torch.manual_seed(seed)
    net = SmallFeatureNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    images = images.float()
    losses = []
    net.train()
    for _ in tqdm(range(steps), desc="feature net", disable=not progress):
        index = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        clean = _random_crops(images[index], crop_size, generator)
        noisy = clean + noise_std * torch.randn(clean.shape, generator=generator)
        loss = F.mse_loss(net.decoder(net.encode(noisy)[-1]), clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.detach())
    net.training_losses = [float(losses[0]), float(torch.stack(losses[-20:]).mean())]
    net.standardise_on(_center_crops(images, crop_size))
    return net.eval()


def _fingerprint(images: torch.Tensor, settings: dict) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images.float().numpy()).tobytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def feature_net_for(folder: str | Path, images: torch.Tensor, progress: bool = False, **settings) -> SmallFeatureNet:
    """The feature net of these training images: loaded from ``folder`` when it holds one trained on the same images
    with the same settings, else trained (`train_feature_net`) and saved there (written beside, then renamed; a
    folder holding something else is refused, never deleted). ``settings`` override `FEATURE_NET_SETTINGS`."""
    settings = {**FEATURE_NET_SETTINGS, **settings}
    folder = Path(folder)
    key = _fingerprint(images, settings)
    info = folder / "feature_net.json"
    if info.is_file():
        stored = json.loads(info.read_text())
        if stored.get("fingerprint") == key:
            return SmallFeatureNet.from_pretrained(folder).eval()
        raise ValueError(
            f"feature_net_for: {folder} holds a feature net of other images or settings; pass another folder."
        )
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"feature_net_for: {folder} exists and is not a feature-net folder; pass another folder.")
    start = time.perf_counter()
    net = train_feature_net(images, progress=progress, **settings)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # our own leftover from an interrupted save
    net.save_pretrained(partial)
    record = {"fingerprint": key, "settings": settings, "num_images": int(images.shape[0]),
              "train_seconds": round(time.perf_counter() - start, 1), "losses_first_last": net.training_losses,
              "objective": "denoising autoencoder (Vincent et al. 2008) on random crops, noise std "
                           f"{settings['noise_std']}"}  # fmt: skip
    (partial / "feature_net.json").write_text(json.dumps(record, indent=1))
    if folder.exists():
        folder.rmdir()  # empty (checked above)
    os.replace(partial, folder)
    return net
