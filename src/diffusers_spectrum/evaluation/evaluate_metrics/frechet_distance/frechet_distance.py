"""Fréchet distance between two feature sets as a local `evaluate` metric (FID / FD-DINOv2 on given features).

`evaluate.load(".../evaluate_metrics/frechet_distance")`; compute with `predictions` = features of generated or
reconstructed images and `references` = features of real images, each a list of D-vectors. Extract the features
with `diffusers_spectrum.evaluation.metrics.load_feature_extractor` (Inception for FID, DINOv2 for FD-DINOv2).
"""

import datasets
import evaluate

from diffusers_spectrum.evaluation.metrics import frechet_distance


_DESCRIPTION = "Fréchet distance between Gaussians fitted to two (N, D) feature sets (Heusel et al. 2017)."
_CITATION = "Heusel et al. GANs trained by a two time-scale update rule converge to a local Nash equilibrium. 2017."
_KWARGS = """
Args:
    predictions: feature vectors of the evaluated images, N x D.
    references: feature vectors of the reference images, N x D (`evaluate` stores the two columns as rows of
        one table, so both sets need the same number of vectors; call `metrics.frechet_distance` for unequal sets).
Returns:
    {"frechet_distance": float}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class FrechetDistance(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }
            ),
        )

    def _compute(self, predictions, references):
        return {"frechet_distance": frechet_distance(predictions, references)}
