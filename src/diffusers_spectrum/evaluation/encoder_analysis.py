"""The REPA-target view of `diffusers-spectrum analyze --encoder`: a vision encoder's feature-map spectrum and RMSC
before and after each target filter (none, iREPA's spatial_norm, DoG), so users see what DoG does to their target."""

import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.images import data_image_size, image_batches_from
from ..spectral import power_law_slope, radial_spectrum
from ..utils.records import write_json
from . import diagnostics, plotting
from .diagnostics import RunningMoments


__all__ = ["analyze_encoder"]


@torch.no_grad()
def analyze_encoder(
    encoder,
    data=None,
    num_samples: int = 32,
    grid_size: int = 16,
    resolution: int | None = None,
    batch_size: int = 8,
    output_dir: str | Path | None = None,
    n_bins: int = 16,
    dog_sigmas: tuple[float, float] = (0.6, 2.0),
    spatial_norm_alpha: float = 0.6,
    device="cpu",
    image_column: str = "image",
    split: str = "train",
    progress: bool = True,
    spectrum_convention: str = "authors",
) -> dict:
    """A REPA target's feature-map spectrum and RMSC before and after each target filter (none, spatial_norm, DoG).

    Args:
        encoder: a `RepresentationEncoder`, or a transformers vision backbone id / folder for
            `RepresentationEncoder.from_pretrained`.
        grid_size: token grid side (16 = a 32 x 32 latent with DiT patch 2; 224 px input for patch 14).
        dog_sigmas: ``(sigma1, sigma2)`` of the DoG filter in token units; ``spatial_norm_alpha``: iREPA's alpha.
        resolution: side of the images given to the encoder (it resamples them to its own input); ``None``: the
            data's own image size.
        spectrum_convention: ``"authors"`` (DC kept, default) or ``"dc_free"`` (`evaluation.diagnostics`).

    Memory is flat in ``num_samples``: running sums per filter, nothing kept per image.
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
    diagnostics.check_convention(spectrum=spectrum_convention)
    remove_dc = diagnostics.SPECTRUM_CONVENTIONS[spectrum_convention]["remove_dc"]
    if resolution is None:
        resolution = data_image_size(data, image_column, split)
    moments = {key: {part: RunningMoments() for part in ("spectrum", "power", "rmsc")} for key in filters}
    feature_dim = None
    batches = image_batches_from(data, num_samples, resolution, batch_size, image_column, split)
    for images in tqdm(
        batches, desc=f"analyze {name}", total=math.ceil(num_samples / batch_size), disable=not progress
    ):
        tokens = encoder(images.to(device), (grid_size, grid_size))  # (B, N, D)
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid_size, grid_size)  # (B, D, h, w)
        feature_dim = int(grid.shape[1])
        for key, apply in filters.items():
            filtered = apply(grid).float()
            moments[key]["spectrum"].update(diagnostics.normalized_log_spectrum(filtered, n_bins, spectrum_convention))
            moments[key]["power"].update(radial_spectrum(filtered, n_bins, remove_dc=remove_dc))
            moments[key]["rmsc"].update(diagnostics.rms_spatial_contrast(filtered))
    if feature_dim is None:
        raise ValueError(f"The dataset {data!r} gave no readable images.")
    results = {}
    for key in filters:
        spectrum = moments[key]["spectrum"]
        results[key] = {
            "spectrum": {"mean": spectrum.mean().tolist(), "std": spectrum.std().tolist()},
            "slope": float(power_law_slope(spectrum.mean())),
            "power_slope": float(power_law_slope(moments[key]["power"].mean(), "center")),
            "rmsc": float(moments[key]["rmsc"].mean()),
        }
    report = {
        "kind": "encoder",
        "name": name,
        "rmsc": results["none"]["rmsc"],
        "slope": results["none"]["slope"],
        "filters": results,
        "filter_settings": {"dog_sigmas": list(dog_sigmas), "spatial_norm_alpha": spatial_norm_alpha},
        "grid_size": grid_size,
        "feature_dim": feature_dim,
        "num_samples": moments["none"]["rmsc"].count,
        "resolution": resolution,
        "spectrum_convention": spectrum_convention,
        "spectrum_description": diagnostics.SPECTRUM_CONVENTIONS[spectrum_convention]["description"],
        "n_bins": n_bins,
        "reference_spectra": {"dinov2_features": diagnostics.REFERENCE_SPECTRA["dinov2_features"]},
        "elapsed_s": time.perf_counter() - start,
    }
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        plotting.plot_encoder_filters(
            {key: results[key]["spectrum"] for key in filters},
            {key: results[key]["rmsc"] for key in filters},
            output_dir / "encoder_spectra.png",
            title=f"{name}: feature spectra by REPA target filter",
        )
        report["plots"] = {"encoder_spectra": "encoder_spectra.png"}
        write_json(output_dir / "report.json", report, sort_keys=False)
    return report
