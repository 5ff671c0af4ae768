"""Evaluation metrics: PSNR, SSIM, LPIPS, Fréchet distance with pluggable feature extractors, rFID, low-pass rFID.

- Images are ``(B, 3, H, W)`` tensors in [-1, 1] (the diffusers convention) unless said otherwise.
- `frechet_distance` works on any ``(N, D)`` features; the extractor decides what the "FD" is: Inception pool
  features (FID; `InceptionFeatureExtractor` on a local TorchScript file) or a transformers vision backbone
  (`TransformersFeatureExtractor`, e.g. DINOv2 for FD-DINOv2).
- `reconstruction_metrics` runs a VAE over image batches and returns rFID / FD, PSNR, SSIM, spectral KL and, for DSM
  levels > 0, the same on low-passed latents against low-passed images (the "low-pass rFID" of DSM, Ning et al. 2026).
- `sample_frechet_distance`: FID / FD of a pipeline's samples (`pipelines.sampling.pipeline_samples`) against
  a dataset.
"""

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..spectral import dsm_lowpass
from ..spectral._checks import require_4d
from ..spectral.esm import gaussian_kernel_1d
from .diagnostics import (
    LATENT_KINDS,
    SPECTRUM_CONVENTIONS,
    RunningMoments,
    SpectrumStatistics,
    check_convention,
    posterior_latents,
)
from .statistics import t_interval_from_summary


__all__ = [
    "InceptionFeatureExtractor",
    "TransformersFeatureExtractor",
    "collect_features",
    "frechet_distance",
    "frechet_distance_from_stats",
    "feature_statistics",
    "load_feature_extractor",
    "lpips",
    "psnr",
    "reconstruction_metrics",
    "sample_frechet_distance",
    "ssim",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------------
# Pixel metrics


def _check_pair(prediction: torch.Tensor, target: torch.Tensor, func: str) -> None:
    require_4d(prediction, func, "prediction")
    require_4d(target, func, "target")
    if prediction.shape != target.shape:
        raise ValueError(f"{func}: shapes differ: prediction {tuple(prediction.shape)}, target {tuple(target.shape)}.")


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, ``10 log10(data_range^2 / MSE)``: ``(B, C, H, W) x 2 -> (B,)`` dB.

    ``data_range`` is 2 for images in [-1, 1] (1 for [0, 1], 255 for uint8 values). Identical images give +inf.
    """
    _check_pair(prediction, target, "psnr")
    mse = (prediction.double() - target.double()).square().mean(dim=(1, 2, 3))  # (B,)
    return (10 * torch.log10(data_range**2 / mse)).float()


def ssim(
    prediction: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 2.0,
    gaussian_weights: bool = True,
    win_size: int = 7,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004, Eq. 13) per image, mean over channels and valid windows: ``(B,)``.

    ``gaussian_weights=True`` uses the paper's 11 x 11 Gaussian window (sigma 1.5) with population statistics;
    ``False`` a ``win_size`` box window with sample covariance. Windows lie fully inside the image (scikit-image's
    `structural_similarity` crops the same border), so both settings match scikit-image with the same options.
    """
    _check_pair(prediction, target, "ssim")
    if gaussian_weights:
        radius = int(3.5 * sigma + 0.5)  # scikit-image's truncate = 3.5
        taps = gaussian_kernel_1d(2 * radius + 1, sigma)
        cov_norm = 1.0
    else:
        if win_size < 3 or win_size % 2 == 0:
            raise ValueError(f"ssim: win_size must be an odd integer >= 3, got {win_size}.")
        taps = torch.full((win_size,), 1.0 / win_size, dtype=torch.float64)
        cov_norm = win_size**2 / (win_size**2 - 1)
    size = taps.numel()
    if min(prediction.shape[-2:]) < size:
        raise ValueError(f"ssim: images of size {tuple(prediction.shape[-2:])} are smaller than the {size} px window.")
    batch, channels = prediction.shape[:2]
    kernel = (taps[:, None] * taps[None, :])[None, None]  # (1, 1, k, k)
    x = prediction.double().reshape(batch * channels, 1, *prediction.shape[-2:])
    y = target.double().reshape(batch * channels, 1, *target.shape[-2:])
    stats = F.conv2d(torch.cat([x, y, x * x, y * y, x * y]), kernel)  # (5 * B*C, 1, h', w') local means
    mu_x, mu_y, xx, yy, xy = stats.chunk(5)
    var_x, var_y = cov_norm * (xx - mu_x * mu_x), cov_norm * (yy - mu_y * mu_y)
    cov_xy = cov_norm * (xy - mu_x * mu_y)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(batch, -1).mean(dim=1).float()  # (B,)


_LPIPS_MODELS: dict = {}


def lpips(prediction: torch.Tensor, target: torch.Tensor, net: str = "vgg") -> torch.Tensor:
    """LPIPS distance (Zhang et al. 2018) per image through the `lpips` package: ``(B,)``; images in [-1, 1].

    Needs ``pip install lpips`` and a working torchvision (and its pretrained weights, cached or downloadable).
    """
    _check_pair(prediction, target, "lpips")
    try:
        import lpips as lpips_package
    except ImportError as error:  # lpips also imports torchvision
        raise ImportError(
            "lpips() needs the `lpips` package and torchvision: `pip install lpips torchvision`. "
            f"Import failed with: {error}"
        ) from error
    if net not in _LPIPS_MODELS:
        _LPIPS_MODELS[net] = lpips_package.LPIPS(net=net, verbose=False).eval()
    model = _LPIPS_MODELS[net].to(prediction.device)
    with torch.no_grad():
        return model(prediction.float(), target.float()).reshape(-1)


# ------------------------------------------------------------------------------------------------
# Fréchet distance (Dowson & Landau 1982; FID: Heusel et al. 2017)


def _as_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    array = np.asarray(x, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` contains NaN or Inf values.")
    return array


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (float64) of ``(N, D)`` features, ``N >= 2``."""
    array = _as_numpy(features, "features")
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"features must be an (N, D) array with N >= 2, got shape {array.shape}.")
    return array.mean(axis=0), np.atleast_2d(np.cov(array, rowvar=False))


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1^(1/2) sigma2 sigma1^(1/2))^(1/2))``. The trace term is
    computed from symmetric eigendecompositions (negative round-off eigenvalues clipped to 0), which stays real and
    stable for the singular covariances of small samples.
    """
    mu1, mu2 = _as_numpy(mu1, "mu1").reshape(-1), _as_numpy(mu2, "mu2").reshape(-1)
    sigma1, sigma2 = np.atleast_2d(_as_numpy(sigma1, "sigma1")), np.atleast_2d(_as_numpy(sigma2, "sigma2"))
    dim = mu1.shape[0]
    if mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"frechet_distance_from_stats: shapes do not agree: mu1 {mu1.shape}, sigma1 {sigma1.shape}, "
            f"mu2 {mu2.shape}, sigma2 {sigma2.shape}."
        )
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    values, vectors = scipy.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T  # sigma1^(1/2)
    middle = root1 @ sigma2 @ root1
    trace_root = np.sqrt(scipy.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
    distance = np.square(mu1 - mu2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root
    return float(max(distance, 0.0))


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N_a, D)`` and ``(N_b, D)`` (arrays/tensors)."""
    mu1, sigma1 = feature_statistics(features_a)
    mu2, sigma2 = feature_statistics(features_b)
    return frechet_distance_from_stats(mu1, sigma1, mu2, sigma2)


# ------------------------------------------------------------------------------------------------
# Feature extractors: callables mapping images (B, 3, H, W) in [-1, 1] to features (B, D)


class TransformersFeatureExtractor:
    """Global features from any transformers vision backbone (Hub id or local path), e.g. DINOv2 for FD-DINOv2.

    Images are resized (bicubic) to the backbone's input size, normalised with its image processor's mean / std
    (ImageNet's when it has none), and run under ``no_grad`` in eval mode.

    Args:
        model_name_or_path: anything `transformers.AutoModel.from_pretrained` loads.
        pooling: ``"cls"`` (first token; FD-DINOv2), ``"mean"`` (mean of the patch tokens) or ``"pooler"``
            (the model's ``pooler_output``). Convolutional backbones are always average-pooled.
        resolution: input side in pixels; ``None`` reads it from the processor / config (224 for DINOv2).
    """

    def __init__(self, model_name_or_path: str, pooling: str = "cls", resolution: int | None = None, device="cpu"):
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        if pooling not in ("cls", "mean", "pooler"):
            raise ValueError(f"pooling must be 'cls', 'mean' or 'pooler', got {pooling!r}.")
        try:
            config = AutoConfig.from_pretrained(model_name_or_path)
            model = AutoModel.from_pretrained(model_name_or_path)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"Could not load a transformers vision backbone from {model_name_or_path!r}: {error}"
            ) from error
        self.model = getattr(model, "vision_model", model).eval().requires_grad_(False).to(device)  # CLIP / SigLIP
        vision_config = getattr(config, "vision_config", config)
        try:
            processor = AutoImageProcessor.from_pretrained(model_name_or_path)
        except (OSError, ValueError):
            processor = None
        mean = getattr(processor, "image_mean", None) or IMAGENET_MEAN
        std = getattr(processor, "image_std", None) or IMAGENET_STD
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).reshape(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).reshape(1, 3, 1, 1)
        if resolution is None:
            crop = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
            resolution = crop.get("height") or crop.get("shortest_edge") if isinstance(crop, dict) else None
            resolution = resolution or getattr(vision_config, "image_size", 224)
        self.resolution = int(resolution)
        self.pooling = pooling
        self.num_prefix_tokens = 1 + int(getattr(vision_config, "num_register_tokens", 0) or 0)
        self.device = torch.device(device)
        self.name = f"transformers:{model_name_or_path}:{pooling}"

    def _hidden_states(self, images: torch.Tensor):
        require_4d(images, "TransformersFeatureExtractor", "images", channels=3)
        pixels = (images.float().to(self.device) + 1) / 2  # [-1, 1] -> [0, 1]
        pixels = F.interpolate(pixels, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False)
        return self.model(pixel_values=(pixels - self.mean) / self.std)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> ``(B, D)`` float32 features."""
        output = self._hidden_states(images)
        hidden = output.last_hidden_state
        if hidden.ndim == 4:  # convolutional backbone: (B, D, h, w)
            return hidden.mean(dim=(2, 3)).float()
        if self.pooling == "pooler":
            if getattr(output, "pooler_output", None) is None:
                raise ValueError(f"{self.name}: this backbone has no pooler_output; use pooling='cls' or 'mean'.")
            return output.pooler_output.float()
        if self.pooling == "cls":
            return hidden[:, 0].float()
        return hidden[:, self.num_prefix_tokens :].mean(dim=1).float()

    @torch.no_grad()
    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Final patch tokens as a feature map ``(B, D, h, w)`` (CLS and register tokens dropped)."""
        hidden = self._hidden_states(images).last_hidden_state
        if hidden.ndim == 4:
            return hidden.float()
        tokens = hidden[:, self.num_prefix_tokens :]  # (B, N, D)
        side = int(round(tokens.shape[1] ** 0.5))
        if side * side != tokens.shape[1]:
            raise ValueError(f"{self.name}: {tokens.shape[1]} patch tokens do not form a square grid.")
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side).float()  # (B, D, h, w)


class InceptionFeatureExtractor:
    """FID's Inception-v3 pool features (2048-D) from a local TorchScript file.

    The file is the one the StyleGAN / EDM / ADM evaluation code uses (``inception-2015-12-05.pt``, a TorchScript
    port of the TensorFlow FID network): it takes uint8-valued float images ``(B, 3, H, W)`` in [0, 255] of any size
    (it resizes to 299 inside) and is called with ``return_features=True``. Download it once elsewhere and pass
    its path; nothing is fetched here.
    """

    def __init__(self, weights_path: str | Path, device="cpu"):
        path = Path(weights_path)
        if not path.is_file():
            raise ValueError(f"Inception weights file {str(path)!r} does not exist; pass a local TorchScript file.")
        try:
            self.model = torch.jit.load(str(path), map_location=device).eval()
        except RuntimeError as error:
            raise ValueError(f"{str(path)!r} is not a TorchScript Inception network: {error}") from error
        self.device = torch.device(device)
        self.name = f"inception:{path.name}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        require_4d(images, "InceptionFeatureExtractor", "images", channels=3)
        pixels = ((images.float().to(self.device) + 1) * 127.5).clamp(0, 255).round()  # [-1, 1] -> uint8 values
        return self.model(pixels, return_features=True).float()


def load_feature_extractor(spec: str, device="cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """``"inception:PATH"`` -> `InceptionFeatureExtractor`; anything else (``"facebook/dinov2-base"``, a folder,
    optionally ``"...:mean"``) -> `TransformersFeatureExtractor`."""
    if spec.startswith("inception:"):
        return InceptionFeatureExtractor(spec[len("inception:") :], device=device)
    name, _, pooling = spec.rpartition(":") if spec.endswith((":cls", ":mean", ":pooler")) else (spec, "", "cls")
    return TransformersFeatureExtractor(name, pooling=pooling, device=device)


@torch.no_grad()
def collect_features(
    extractor: Callable[[torch.Tensor], torch.Tensor], images: Iterable[torch.Tensor], max_samples: int | None = None
) -> np.ndarray:
    """Features ``(N, D)`` (float64) of an iterable of image batches ``(B, 3, H, W)`` in [-1, 1]."""
    chunks, seen = [], 0
    for batch in images:
        if max_samples is not None:
            batch = batch[: max_samples - seen]
        chunks.append(extractor(batch).double().cpu())
        seen += batch.shape[0]
        if max_samples is not None and seen >= max_samples:
            break
    if not chunks:
        raise ValueError("collect_features: no images were given.")
    return torch.cat(chunks).numpy()


# ------------------------------------------------------------------------------------------------
# VAE reconstruction metrics: rFID / FD, PSNR, SSIM, spectral KL, low-pass rFID


@torch.no_grad()
def reconstruction_metrics(
    vae,
    batches: Iterable[torch.Tensor],
    extractor: Callable[[torch.Tensor], torch.Tensor] | None = None,
    dsm_levels: Iterable[int] = (0,),
    block_size: int = 8,
    sample_posterior: bool = False,
    progress: bool = True,
    total: int | None = None,
    spectral_latents: str = "sample",
    spectrum_convention: str = "authors",
    seed: int = 0,
) -> dict:
    """Reconstruct image batches with a VAE and measure them, per DSM level.

    Level 0 compares ``decode(encode(x))`` with ``x``; level ``k > 0`` compares ``decode(dsm_lowpass(z, k))`` with
    ``dsm_lowpass(x, k)`` (the low-pass rFID of a DSM-aware view).

    Args:
        vae: an `AutoencoderKL`-compatible model (``encode(x).latent_dist``, ``decode(z).sample``).
        batches: image batches ``(B, 3, H, W)`` in [-1, 1].
        extractor: feature extractor for the Fréchet distance (``None``: no FD).
        sample_posterior: reconstruct from a posterior sample instead of its mean.
        spectral_latents, spectrum_convention, seed: the spectral numbers' conventions, as `diffusers-spectrum
            analyze` reports them (`evaluation.diagnostics.SpectrumStatistics`): by default seeded posterior samples,
            DC kept, no centring.

    Returns:
        ``{"num_samples", "spectral_kl_delta0", "spectral_kl_delta1", "mean_spectrum_kl_delta1", "latent_slope",
        "target_slope", "verdict", "verdicts", "conventions", "levels": {k: {"psnr", "ssim", "mse", "fd"?}}}`` (means
        over images; ``verdicts``: the DC-kept and DC-free views); levels after the first also hold ``psnr_drop``
        (mean per-image PSNR minus the first level's) with its 95% t interval over images (``psnr_drop_lo/hi``):
        the DSM low-pass fidelity, apart from plain reconstruction quality. ``conventions`` says which latents each
        group of numbers used.
    """
    check_convention(spectral_latents, spectrum_convention)
    stats = SpectrumStatistics(convention=spectrum_convention)

    levels = [int(k) for k in dsm_levels]
    sums: dict = {k: {"psnr": 0.0, "ssim": 0.0, "mse": 0.0} for k in levels}
    drops = {k: RunningMoments() for k in levels[1:]}  # per-image PSNR drop from the first level
    features: dict = {k: ([], []) for k in levels}
    count = 0
    device = next(vae.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    for images in tqdm(batches, desc="reconstruct", total=total, disable=not progress):
        images = images.to(device=device, dtype=vae.dtype)
        posterior = vae.encode(images).latent_dist
        analysed, std = posterior_latents(posterior, spectral_latents, generator)
        stats.update(images.float(), analysed, std)
        if not sample_posterior:
            latents = posterior.mode()
        elif spectral_latents == "sample":
            latents = analysed.to(vae.dtype)  # the same draw the spectral numbers describe
        else:
            latents = posterior.sample(generator=generator)
        first = None
        for level in levels:
            target = dsm_lowpass(images, level, block_size=block_size).float()
            reconstruction = vae.decode(dsm_lowpass(latents, level, block_size=block_size)).sample.float().clamp(-1, 1)
            level_psnr = psnr(reconstruction, target)  # (B,)
            sums[level]["psnr"] += float(level_psnr.sum())
            if first is None:
                first = level_psnr
            else:
                drops[level].update(level_psnr - first)
            sums[level]["ssim"] += float(ssim(reconstruction, target).sum())
            sums[level]["mse"] += float((reconstruction - target).square().mean(dim=(1, 2, 3)).sum())
            if extractor is not None:
                features[level][0].append(extractor(target).double().cpu())
                features[level][1].append(extractor(reconstruction).double().cpu())
        count += images.shape[0]
    if count == 0:
        raise ValueError("reconstruction_metrics: no images were given.")
    spectral = stats.result()
    keys = ("spectral_kl_delta0", "spectral_kl_delta1", "mean_spectrum_kl_delta1", "latent_slope", "target_slope")
    result = {"num_samples": count, **{key: spectral[key] for key in keys}, "verdict": spectral["verdict"]}
    result["verdicts"] = {
        name: {k: view[k] for k in ("verdict", "centroid_gap", "excess_high", "excess_low", "w1", "interval_method")}
        for name, view in spectral["verdicts"].items()
    }
    result["posterior_std"] = spectral["posterior_std"]["mean"]
    result["conventions"] = {
        "reconstruction_latents": "sample" if sample_posterior else "mean",
        "spectral_latents": spectral_latents,
        "spectral_latents_description": LATENT_KINDS[spectral_latents] + f", seed {seed}",
        "spectrum": spectrum_convention,
        "spectrum_description": SPECTRUM_CONVENTIONS[spectrum_convention]["description"],
    }
    result["levels"] = {}
    for level in levels:
        entry = {name: value / count for name, value in sums[level].items()}
        if extractor is not None:
            if count < 2:
                raise ValueError("reconstruction_metrics: the Fréchet distance needs at least 2 images.")
            entry["fd"] = frechet_distance(torch.cat(features[level][0]), torch.cat(features[level][1]))
        if level in drops:
            interval = t_interval_from_summary(float(drops[level].mean()), float(drops[level].std()), count)
            entry["psnr_drop_from_level"] = levels[0]
            entry["psnr_drop"] = entry["psnr"] - sums[levels[0]]["psnr"] / count
            entry["psnr_drop_lo"], entry["psnr_drop_hi"] = interval["lo"], interval["hi"]
        result["levels"][level] = entry
    return result


# ------------------------------------------------------------------------------------------------
# Pipelines: samples and their FID / FD against a dataset


@torch.no_grad()
def sample_frechet_distance(
    samples: Iterable[torch.Tensor],
    references: Iterable[torch.Tensor],
    extractor: Callable[[torch.Tensor], torch.Tensor],
    max_samples: int | None = None,
) -> float:
    """FID / FD of generated image batches against reference image batches (both ``(B, 3, H, W)`` in [-1, 1])."""
    return frechet_distance(
        collect_features(extractor, samples, max_samples), collect_features(extractor, references, max_samples)
    )
