"""Spectral KL (the ESM divergence) between images and their latents as a local `evaluate` metric."""

import datasets
import evaluate
import numpy as np
import torch

from diffusers_spectrum.spectral import spectral_kl


_DESCRIPTION = (
    "KL divergence of a latent's normalised log radial spectrum from the delta-flattened image power law "
    "(Encoding Spectrum Matching), averaged over samples; 0 = the latent follows the target."
)
_KWARGS = """
Args:
    predictions: latents as (C, h, w) nested lists / arrays.
    references: the images they encode, (3, H, W) in [-1, 1].
    delta: flattening exponent of the target (1.0 = ESM, 0.0 = the image's own law).
    n_bins: radial bands (16).
Returns:
    {"spectral_kl": float}
"""
_TENSOR = datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float32"))))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class SpectralKl(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": _TENSOR, "references": _TENSOR}),
        )

    def _compute(self, predictions, references, delta: float = 1.0, n_bins: int = 16):
        latents = torch.from_numpy(np.asarray(predictions, dtype=np.float32))
        images = torch.from_numpy(np.asarray(references, dtype=np.float32))
        return {"spectral_kl": float(spectral_kl(images, latents, delta=delta, n_bins=n_bins).mean())}
