"""SSIM as a local `evaluate` metric: `evaluate.load(".../evaluate_metrics/ssim")`."""

import datasets
import evaluate
import numpy as np
import torch

from diffusers_spectrum.evaluation.metrics import ssim


_DESCRIPTION = "Structural similarity (Wang et al. 2004), Gaussian 11 x 11 window, averaged over images."
_CITATION = (
    "Wang, Bovik, Sheikh, Simoncelli. Image quality assessment: from error visibility to structural similarity. 2004."
)
_KWARGS = """
Args:
    predictions: images as (3, H, W) nested lists / arrays (values in [-1, 1] by default).
    references: images of the same shape.
    data_range: 2.0 for [-1, 1] (default), 1.0 for [0, 1].
    gaussian_weights: Gaussian window (default) or a 7 x 7 box window.
Returns:
    {"ssim": mean SSIM over images}
"""
_IMAGE = datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float32"))))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Ssim(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": _IMAGE, "references": _IMAGE}),
        )

    def _compute(self, predictions, references, data_range: float = 2.0, gaussian_weights: bool = True):
        prediction = torch.from_numpy(np.asarray(predictions, dtype=np.float32))
        reference = torch.from_numpy(np.asarray(references, dtype=np.float32))
        value = ssim(prediction, reference, data_range=data_range, gaussian_weights=gaussian_weights)
        return {"ssim": float(value.mean())}
