"""A small feature network trained here, on a study's own training images, for KID and the Frechet distance.

`train_feature_net` trains `SmallFeatureNet` (~60k parameters: a spectrally whitened autoencoder read out as 16
whitened principal components of per-channel means and log standard deviations) self-supervised;
`random_feature_net` is the same architecture at its seeded random initialisation, the sanity row. Weights are an
artifact of the run (`feature_net_for` caches them in the study's work folder), never downloaded.

    net = feature_net_for(work_dir / "feature_net", train_photos)   # trains once, then loads
    features = net.features(images)                                 # (N, 16), images (N, 3, S, S) in [-1, 1]

Why it is built this way (Olshausen & Field 1996, Coates & Ng 2011): docs/METHODS.md#feature-net
"""

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from tqdm.auto import tqdm

from ..spectral._checks import require_4d
from ..spectral.dct import dct_2d


__all__ = ["FEATURE_NET_SETTINGS", "SmallFeatureNet", "feature_net_for", "random_feature_net", "train_feature_net"]

FEATURE_NET_SETTINGS = {
    "steps": 400,
    "batch_size": None,
    "learning_rate": 2e-3,
    "crop_size": 32,
    "noise_std": 0.0,
    "loss": "whitened",
    "fit_crops_per_image": 8,
    "seed": 0,
}
# batch_size None: 64 crops of 32 px per step, fewer for larger crops (the same pixels per step)
LOG_STD_FLOOR = 1e-4  # added to the spatial variance before the log: activations are O(1), 1 % is the resolution
_OBJECTIVES = {
    "whitened": "autoencoder, reconstruction error of each DCT coefficient divided by the training crops' mean power "
    "at that frequency (spectrally whitened)",
    "pixel": "autoencoder, pixel MSE",
}


class SmallFeatureNet(ModelMixin, ConfigMixin):
    """Images ``(B, 3, H, W)`` in [-1, 1] -> features ``(B, num_components)``; a decoder for training only.

    Three stages of two 3 x 3 convolutions with GELU (the second and third downsample by 2); any ``H, W`` divisible
    by 4. Readout (`readout`): per stage and channel the spatial mean and ``0.5 log(var + 1e-4)``, ``(B, 2
    sum(widths))``. Features (`forward`): the readout minus ``readout_mean``, times ``readout_projection`` (the
    whitened top principal components, set by `fit_readout`).

    Args:
        widths: channels of the three stages.
        with_decoder: build the training decoder (a 1 x 1 bottleneck of ``bottleneck`` channels, then transposed
            convolutions back to 3 channels at the input size).
        bottleneck: channels of the decoder's bottleneck.
        num_components: the feature dimension (whitened principal components of the readout).
    """

    @register_to_config
    def __init__(
        self, widths: tuple = (16, 32, 64), with_decoder: bool = True, bottleneck: int = 16, num_components: int = 16
    ):
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
            layers, channels = [nn.Conv2d(channels, bottleneck, 1)], bottleneck
            for width in reversed(widths[:-1]):
                layers += [nn.ConvTranspose2d(channels, width, 4, stride=2, padding=1), nn.GELU()]
                channels = width
            self.decoder = nn.Sequential(*layers, nn.Conv2d(channels, 3, 3, padding=1))
        readout_dim = 2 * sum(widths)
        if not 1 <= num_components <= readout_dim:
            raise ValueError(f"SmallFeatureNet: num_components must be in [1, {readout_dim}], got {num_components}.")
        self.register_buffer("readout_mean", torch.zeros(readout_dim))
        self.register_buffer("readout_projection", torch.eye(readout_dim)[:, :num_components].clone())

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's activations."""
        activations, x = [], images
        for stage in self.stages:
            x = stage(x)
            activations.append(x)
        return activations

    def readout(self, images: torch.Tensor) -> torch.Tensor:
        """Per stage, the channels' spatial mean and log spatial std ``(B, 2 sum(widths))``, before projection."""
        parts = []
        for x in self.encode(images):
            variance = x.var(dim=(2, 3), unbiased=False)
            parts += [x.mean(dim=(2, 3)), 0.5 * torch.log(variance + LOG_STD_FLOOR)]
        return torch.cat(parts, dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``(B, num_components)``: the projected, whitened readout."""
        return (self.readout(images) - self.readout_mean) @ self.readout_projection

    @torch.no_grad()
    def fit_readout(self, images: torch.Tensor, batch_size: int = 256) -> dict:
        """Set ``readout_mean`` and ``readout_projection`` from ``images`` (training crops, at least
        ``num_components + 1``): the top principal components of their readout, each scaled to unit variance.
        Returns the spectrum ``{"explained": fraction of the readout's variance the components keep, "eigenvalues":
        the kept eigenvalues}``."""
        k = self.config.num_components
        if images.shape[0] <= k:
            raise ValueError(f"fit_readout: need more than {k} images to fit {k} components, got {images.shape[0]}.")
        self.eval()
        readout = torch.cat(
            [self.readout(images[i : i + batch_size].float()).double() for i in range(0, images.shape[0], batch_size)]
        )
        mean = readout.mean(0)
        eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(readout.T))  # ascending
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        kept = eigenvalues[:k].clamp_min(1e-12 * float(eigenvalues[0]))
        self.readout_mean.copy_(mean.float())
        self.readout_projection.copy_((eigenvectors[:, :k] / kept.sqrt()).float())
        return {"explained": float(kept.sum() / eigenvalues.clamp_min(0).sum()), "eigenvalues": kept.tolist()}

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Features of many images ``(N, 3, H, W)`` in [-1, 1], in eval mode and batches: ``(N, num_components)``
        float64 on the CPU."""
        require_4d(images, "SmallFeatureNet.features", "images", channels=3)
        self.eval()
        device = next(self.parameters()).device
        parts = [
            self(images[i : i + batch_size].to(device).float()).double().cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
        return torch.cat(parts)


def fit_crops(images: torch.Tensor, crop_size: int, per_image: int, seed: int) -> torch.Tensor:
    """``per_image`` seeded random ``crop_size`` crops (random flips) of every training image: the crops the readout
    projection and the whitening weights are fitted on."""
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.cat([_random_crops(images.float(), crop_size, generator) for _ in range(per_image)])


def random_feature_net(
    images: torch.Tensor,
    seed: int = 0,
    crop_size: int = FEATURE_NET_SETTINGS["crop_size"],
    fit_crops_per_image: int = FEATURE_NET_SETTINGS["fit_crops_per_image"],
    **config,
) -> SmallFeatureNet:
    """The same architecture with seeded random weights (PyTorch's default initialisation), its readout projection
    fitted on the same training crops as the trained net's: the sanity row."""
    require_4d(images, "random_feature_net", "images", channels=3)
    torch.manual_seed(seed)
    net = SmallFeatureNet(with_decoder=False, **config)
    net.fit_readout(fit_crops(images, crop_size, fit_crops_per_image, seed))
    return net.eval()


def _random_crops(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``size x size`` crop per image, flipped horizontally with probability 1/2."""
    batch, _, height, width = images.shape
    tops = torch.randint(0, height - size + 1, (batch,), generator=generator)
    lefts = torch.randint(0, width - size + 1, (batch,), generator=generator)
    crops = torch.stack([images[i, :, t : t + size, x : x + size] for i, (t, x) in enumerate(zip(tops, lefts))])
    flip = torch.rand(batch, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(-1), crops)


def whitening_weights(crops: torch.Tensor) -> torch.Tensor:
    """``1 / P(u, v)``: the inverse of the crops' mean DCT power per frequency (over crops and channels), ``(S, S)``,
    scaled so that reconstructing zeros costs 1."""
    power = dct_2d(crops.double()).square().mean(dim=(0, 1))
    weights = 1.0 / power.clamp_min(1e-12 * float(power.max()))
    return (weights / weights.numel()).float()


def train_feature_net(
    images: torch.Tensor,
    steps: int = FEATURE_NET_SETTINGS["steps"],
    batch_size: int | None = FEATURE_NET_SETTINGS["batch_size"],
    learning_rate: float = FEATURE_NET_SETTINGS["learning_rate"],
    crop_size: int = FEATURE_NET_SETTINGS["crop_size"],
    noise_std: float = FEATURE_NET_SETTINGS["noise_std"],
    loss: str = FEATURE_NET_SETTINGS["loss"],
    fit_crops_per_image: int = FEATURE_NET_SETTINGS["fit_crops_per_image"],
    seed: int = FEATURE_NET_SETTINGS["seed"],
    progress: bool = False,
) -> SmallFeatureNet:
    """Autoencoder training on random ``crop_size`` crops (random flips) of ``images``, then `fit_readout`.

    ``loss="whitened"`` (default): mean over DCT coefficients of the squared reconstruction error divided by the
    training crops' mean power at that frequency (`whitening_weights`; 1.0 = reconstructing zeros); ``"pixel"``:
    pixel MSE. ``noise_std > 0`` corrupts the input with Gaussian noise (a denoising autoencoder; kept for
    comparison, not the default: see docs/METHODS.md#feature-net). AdamW, cosine learning-rate decay, seeded.
    ``net.training_losses`` holds the first and the last losses (mean of the last 20 steps).

    Args:
        images: ``(N, 3, H, W)`` training photos in [-1, 1], ``H, W >= crop_size`` (larger photos give more crops).
        batch_size: crops per step; None: ``64 (32 / crop_size)^2`` (at least 8), the same pixels per step.
    """
    require_4d(images, "train_feature_net", "images", channels=3)
    if min(images.shape[-2:]) < crop_size or images.shape[0] < 2 or crop_size % 4:
        raise ValueError(
            f"train_feature_net: need at least 2 images of at least crop_size={crop_size} px (a multiple of 4), got "
            f"{tuple(images.shape)}."
        )
    if loss not in _OBJECTIVES:
        raise ValueError(f"train_feature_net: loss must be one of {sorted(_OBJECTIVES)}, got {loss!r}.")
    if batch_size is None:
        batch_size = max(8, round(64 * (32 / crop_size) ** 2))
    torch.manual_seed(seed)
    net = SmallFeatureNet()
    images = images.float()
    fitting = fit_crops(images, crop_size, fit_crops_per_image, seed)
    weights = whitening_weights(fitting) if loss == "whitened" else None
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    net.train()
    for _ in tqdm(range(steps), desc="feature net", disable=not progress):
        index = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        clean = _random_crops(images[index], crop_size, generator)
        inputs = clean + noise_std * torch.randn(clean.shape, generator=generator) if noise_std > 0 else clean
        error = net.decoder(net.encode(inputs)[-1]) - clean
        if weights is None:
            value = error.square().mean()
        else:  # sum over frequencies of weighted power, mean over crops and channels
            value = (dct_2d(error).square() * weights).sum(dim=(-2, -1)).mean()
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        schedule.step()
        losses.append(value.detach())
    net.loss_curve = torch.stack(losses).tolist()
    net.training_losses = [net.loss_curve[0], float(np.mean(net.loss_curve[-20:]))]
    net.readout_spectrum = net.fit_readout(fitting)
    return net.eval()


def _fingerprint(images: torch.Tensor, settings: dict) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images.float().numpy()).tobytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def feature_net_for(folder: str | Path, images: torch.Tensor, progress: bool = False, **settings) -> SmallFeatureNet:
    """The feature net of these training images: loaded from ``folder`` when it holds one trained on the same images
    with the same settings, else trained (`train_feature_net`) and saved there (written beside, then renamed; a
    folder holding something else is refused, never deleted). ``settings`` override `FEATURE_NET_SETTINGS`."""
    unknown = set(settings) - set(FEATURE_NET_SETTINGS)
    if unknown:
        raise ValueError(f"feature_net_for: unknown settings {sorted(unknown)}; use {sorted(FEATURE_NET_SETTINGS)}.")
    settings = {**FEATURE_NET_SETTINGS, **settings}
    folder = Path(folder)
    key = _fingerprint(images, settings)
    info = folder / "feature_net.json"
    if info.is_file():
        stored = json.loads(info.read_text())
        if stored.get("fingerprint") == key:
            return SmallFeatureNet.from_pretrained(folder).eval()
        raise ValueError(
            f"feature_net_for: {folder} holds a feature net of other images or settings (or of an older version); "
            "pass another folder."
        )
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"feature_net_for: {folder} exists and is not a feature-net folder; pass another folder.")
    start, cpu_start = time.perf_counter(), time.process_time()
    net = train_feature_net(images, progress=progress, **settings)
    cpu_seconds = time.process_time() - cpu_start
    folder.parent.mkdir(parents=True, exist_ok=True)
    # a fresh hidden folder beside the target (never one that already exists): renamed into place when complete
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    partial.chmod(0o755)  # mkdtemp makes it private
    net.save_pretrained(partial)
    objective = _OBJECTIVES[settings["loss"]]
    if settings["noise_std"] > 0:
        objective = f"denoising {objective}, noise std {settings['noise_std']}"
    record = {
        "fingerprint": key,
        "settings": settings,
        "num_images": int(images.shape[0]),
        "train_seconds": round(time.perf_counter() - start, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "losses_first_last": net.training_losses,
        "loss_every_20_steps": [
            round(float(np.mean(net.loss_curve[i : i + 20])), 4) for i in range(0, len(net.loss_curve), 20)
        ],
        "objective": objective,
        "readout": "per stage and channel: spatial mean, log spatial std; top "
        f"{net.config.num_components} whitened principal components",
        "readout_explained_variance": net.readout_spectrum["explained"],
    }
    (partial / "feature_net.json").write_text(json.dumps(record, indent=1))
    if folder.exists():
        folder.rmdir()  # empty (checked above)
    os.replace(partial, folder)
    return net
