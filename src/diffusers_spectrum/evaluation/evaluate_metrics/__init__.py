"""Local `evaluate` metric modules (Hub-hosted modules cannot be fetched offline).

Load one with ``evaluate.load(metric_module_path("frechet_distance"))`` (or the folder's path directly):
``psnr``, ``ssim``, ``frechet_distance``, ``spectral_kl``. Each wraps the function of the same name in
`diffusers_spectrum.evaluation.metrics` / `diffusers_spectrum.spectral`.
"""

from pathlib import Path


METRIC_MODULES = ("frechet_distance", "psnr", "spectral_kl", "ssim")


def metric_module_path(name: str) -> str:
    """Folder of the local `evaluate` module ``name``, for ``evaluate.load(...)``."""
    if name not in METRIC_MODULES:
        raise ValueError(f"Unknown metric module {name!r}; choose one of {METRIC_MODULES}.")
    return str(Path(__file__).resolve().parent / name)
