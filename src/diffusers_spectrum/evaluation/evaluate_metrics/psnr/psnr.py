"""PSNR as a local `evaluate` metric: `evaluate.load(".../evaluate_metrics/psnr")`."""

import datasets
import evaluate
import numpy as np
import torch

from diffusers_spectrum.evaluation.metrics import psnr


_DESCRIPTION = "Peak signal-to-noise ratio, 10 log10(data_range^2 / MSE), averaged over images (dB)."
_KWARGS = """
Args:
    predictions: images as (3, H, W) nested lists / arrays (values in [-1, 1] by default).
    references: images of the same shape.
    data_range: 2.0 for [-1, 1] (default), 1.0 for [0, 1], 255 for uint8 values.
Returns:
    {"psnr": mean PSNR over images}
"""
_IMAGE = datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float32"))))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Psnr(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": _IMAGE, "references": _IMAGE}),
        )

    def _compute(self, predictions, references, data_range: float = 2.0):
        prediction = torch.from_numpy(np.asarray(predictions, dtype=np.float32))
        reference = torch.from_numpy(np.asarray(references, dtype=np.float32))
        return {"psnr": float(psnr(prediction, reference, data_range=data_range).mean())}
