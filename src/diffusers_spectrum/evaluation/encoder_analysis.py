"""The REPA-target view of `diffusers-spectrum analyze --encoder`: a vision encoder's feature-map spectrum and RMSC
before and after each target filter (none, iREPA's spatial_norm, DoG), so users see what DoG does to their target."""

import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..spectral import power_law_slope, radial_spectrum
from ..training.data import image_batches_from
from ..training.utils import write_json
from . import diagnostics, plotting


__all__ = ["analyze_encoder"]


@torch.no_grad()
def analyze_encoder(
    encoder,
    data=None,
    num_samples: int = 32,
    grid_size: int = 16,
    resolution: int = 256,
    batch_size: int = 8,
    output_dir: str | Path | None = None,
    n_bins: int = 16,
    dog_sigmas: tuple[float, float] = (0.6, 2.0),
    spatial_norm_alpha: float = 0.6,
    device="cpu",
    image_column: str = "image",
    split: str = "train",
    progress: bool = True,
) -> dict:
    """A REPA target's feature-map spectrum and RMSC before and after each target filter (none, spatial_norm, DoG).

    Args:
        encoder: a `RepresentationEncoder`, or a transformers vision backbone id / folder for
            `RepresentationEncoder.from_pretrained`.
        grid_size: token grid side (16 = a 32 x 32 latent with DiT patch 2; 224 px input for patch 14).
        dog_sigmas: ``(sigma1, sigma2)`` of the DoG filter in token units; ``spatial_norm_alpha``: iREPA's alpha.
    """
    from ..models.encoders import RepresentationEncoder
    from ..spectral.filters import dog_filter, spatial_normalize

    start = time.perf_counter()
    name = str(encoder) if isinstance(encoder, (str, Path)) else type(encoder).__name__
    if not isinstance(encoder, RepresentationEncoder):
        try:
            encoder = RepresentationEncoder.from_pretrained(str(encoder), device=device)
        except (OSError, ValueError) as error:
            raise ValueError(f"Could not load a vision encoder from {name!r}: {error}") from error
    filters = {
        "none": lambda y: y,
        "spatial_norm": lambda y: spatial_normalize(y, spatial_norm_alpha),
        "dog": lambda y: dog_filter(y, *dog_sigmas),
    }
    spectra = {key: [] for key in filters}
    power = {key: [] for key in filters}
    contrast = {key: [] for key in filters}
    batches = image_batches_from(data, num_samples, resolution, batch_size, image_column, split)
    for images in tqdm(
        batches, desc=f"analyze {name}", total=math.ceil(num_samples / batch_size), disable=not progress
    ):
        tokens = encoder(images.to(device), (grid_size, grid_size))  # (B, N, D)
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid_size, grid_size)  # (B, D, h, w)
        for key, apply in filters.items():
            filtered = apply(grid).float()
            spectra[key].append(diagnostics.normalized_log_spectrum(filtered, n_bins).cpu())
            power[key].append(radial_spectrum(filtered, n_bins).cpu())
            contrast[key].append(diagnostics.rms_spatial_contrast(filtered).cpu())
    if not spectra["none"]:
        raise ValueError(f"The dataset {data!r} gave no readable images.")
    results = {}
    for key in filters:
        rows = torch.cat(spectra[key])
        results[key] = {
            "spectrum": diagnostics.mean_std(rows),
            "slope": float(power_law_slope(rows.mean(0))),
            "power_slope": float(power_law_slope(torch.cat(power[key]).mean(0), "center")),
            "rmsc": float(torch.cat(contrast[key]).mean()),
        }
    report = {
        "kind": "encoder",
        "name": name,
        "rmsc": results["none"]["rmsc"],
        "slope": results["none"]["slope"],
        "filters": results,
        "filter_settings": {"dog_sigmas": list(dog_sigmas), "spatial_norm_alpha": spatial_norm_alpha},
        "grid_size": grid_size,
        "feature_dim": int(grid.shape[1]),
        "num_samples": int(torch.cat(spectra["none"]).shape[0]),
        "n_bins": n_bins,
        "reference_spectra": {"dinov2_features": diagnostics.REFERENCE_SPECTRA["dinov2_features"]},
        "elapsed_s": time.perf_counter() - start,
    }
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        plotting.plot_encoder_filters(
            {key: torch.cat(spectra[key]) for key in filters},
            {key: results[key]["rmsc"] for key in filters},
            output_dir / "encoder_spectra.png",
            title=f"{name}: feature spectra by REPA target filter",
        )
        report["plots"] = {"encoder_spectra": "encoder_spectra.png"}
        write_json(output_dir / "report.json", report, sort_keys=False)
    return report
