"""Generation metrics as the studies use them: each metric with its anchors, and the blur check that decides which
metrics a study may rely on.

`GenerationMetricSuite.measure(samples, reference)` computes every metric of `GENERATION_METRICS`; `.anchors` gives
the data floor and, for latent models, the reconstruction ceiling (a value means something only between the two);
`.blur_check(crops, set_size=n)` and `relied_metrics` say which metrics pass at a study's own ``n`` images per set
(`blur_check_by_count` and `passing_count` over several counts).

Design, protocol and the measured blur-check ratios: docs/METHODS.md#study-metrics
"""

from collections.abc import Callable

import numpy as np
import torch

from .generation_metrics import (
    BLUR_SEPARATION_FACTOR,
    BLUR_SET_SIZE,
    blur_separation,
    kid,
    pyramid_swd,
    spectrum_distance,
)
from .metrics import frechet_distance


__all__ = [
    "GENERATION_METRICS",
    "GenerationMetricSuite",
    "anchored_table",
    "blur_check_by_count",
    "blur_check_table",
    "embedded_photos",
    "load_images",
    "natural_crops",
    "passing_count",
    "relied_metrics",
]

# name -> (description, lower is better); every metric here is a distance: lower is better
GENERATION_METRICS = {
    "spectrum_distance": "RMS difference of the sets' log radially averaged power spectra (DC free)",
    "swd_x1e3": "Laplacian-pyramid sliced Wasserstein distance x 1e3, mean over levels, per-set normalisation "
    "(Karras et al. 2018)",
    "swd_pooled_x1e3": "the same with pooled normalisation (colour-aware: sees a gain, an offset, a lost band)",
    "kid_trained": "KID (cubic polynomial kernel, unbiased) in the 16 whitened features of the net trained on the "
    "training photos (whitened autoencoder; log-energy readout)",
    "fd_trained": "Frechet distance in the 16 whitened features of the net trained on the training photos",
    "kid_random": "KID in the features of the random-init net (sanity row)",
    "fd_random": "Frechet distance in the features of the random-init net (sanity row)",
}


def load_images(paths) -> torch.Tensor:
    """RGB image files of one size -> ``(N, 3, H, W)`` float32 in [-1, 1], in the given order."""
    from PIL import Image

    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1)
    if not arrays:
        raise ValueError("load_images: no image files given.")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def embedded_photos() -> torch.Tensor:
    """The 112 embedded 64 px photos, sorted by file name: ``(112, 3, 64, 64)`` in [-1, 1]."""
    from ..data.sources import embedded_dataset_dir

    return load_images(sorted(embedded_dataset_dir().glob("*.png")))


def natural_crops(
    photos: torch.Tensor, size: int = 32, per_photo: int = 1, seed: int = 0, return_sources: bool = False
):
    """``per_photo`` random ``size x size`` crops of every photo ``(N, 3, H, W)``, shuffled: ``(N per_photo, 3, size,
    size)``. Seeded. With ``return_sources`` also the index of each crop's photo ``(N per_photo,)`` (the ``groups``
    of the blur check)."""
    generator = torch.Generator().manual_seed(seed)
    count, _, height, width = photos.shape
    if min(height, width) < size:
        raise ValueError(f"natural_crops: photos of {height} x {width} px are smaller than size={size}.")
    crops, sources = [], []
    for _ in range(per_photo):
        tops = torch.randint(0, height - size + 1, (count,), generator=generator)
        lefts = torch.randint(0, width - size + 1, (count,), generator=generator)
        crops += [photos[i, :, t : t + size, x : x + size] for i, (t, x) in enumerate(zip(tops, lefts))]
        sources += range(count)
    order = torch.randperm(len(crops), generator=generator)
    stacked = torch.stack(crops)[order].contiguous()
    return (stacked, torch.tensor(sources)[order]) if return_sources else stacked


class GenerationMetricSuite:
    """The studies' generation metrics; feature nets optional (no net: the pixel metrics only).

    Args:
        trained_net: a `feature_net.SmallFeatureNet` trained on the study's training photos, or None.
        random_net: the random-init net of the same architecture (sanity row), or None.
        seed: the SWD's patch and direction seed (the same for every set: common random numbers).
    """

    def __init__(self, trained_net=None, random_net=None, seed: int = 0):
        self.trained_net, self.random_net, self.seed = trained_net, random_net, seed

    def metric_functions(self) -> dict[str, Callable[[torch.Tensor, torch.Tensor], float]]:
        """``{name: metric(images_a, images_b) -> float}`` for the metrics this suite can compute."""
        seed = self.seed

        def swd(normalization):
            def metric(a, b):
                count = min(len(a), len(b))
                return float(pyramid_swd(a[:count], b[:count], seed=seed, normalization=normalization).mean()) * 1e3

            return metric

        functions = {
            "spectrum_distance": lambda a, b: float(spectrum_distance(a, b)),
            "swd_x1e3": swd("per_set"),
            "swd_pooled_x1e3": swd("pooled"),
        }
        for key, net in (("trained", self.trained_net), ("random", self.random_net)):
            if net is not None:
                functions[f"kid_{key}"] = lambda a, b, net=net: kid(net.features(a), net.features(b))
                functions[f"fd_{key}"] = lambda a, b, net=net: frechet_distance(net.features(a), net.features(b))
        return functions

    def measure(self, samples: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """Every metric of ``samples`` against ``reference`` (both ``(N, 3, H, W)`` in [-1, 1]; the SWDs use the
        first ``min`` of the two counts)."""
        return {name: metric(samples, reference) for name, metric in self.metric_functions().items()}

    def anchors(self, reference: torch.Tensor, training: torch.Tensor, reconstructed: torch.Tensor | None = None):
        """``{"floor": measure(training[:n], reference), "ceiling": measure(reconstructed, reference) or None}``
        with ``n = len(reference)`` (the data floor at the same count; the reconstruction ceiling of a latent
        model: ``reconstructed = decode(encode(reference))``)."""
        if len(training) < len(reference):
            raise ValueError(
                f"anchors: the data floor needs as many training images as reference images ({len(training)} < "
                f"{len(reference)})."
            )
        floor = self.measure(training[: len(reference)], reference)
        ceiling = None if reconstructed is None else self.measure(reconstructed, reference)
        return {"floor": floor, "ceiling": ceiling}

    def blur_check(
        self,
        crops: torch.Tensor,
        num_splits: int = 8,
        seed: int = 0,
        set_size: int = BLUR_SET_SIZE,
        groups=None,
        metrics: list[str] | None = None,
    ) -> dict[str, dict]:
        """`generation_metrics.blur_separation` of every metric (or of ``metrics``) on natural ``crops`` (at least
        ``2 set_size``) at ``set_size`` images per set; ``groups``: each crop's source photo (sets split by source:
        no photo in both)."""
        functions = self.metric_functions()
        unknown = set(metrics or ()) - set(functions)
        if unknown:
            raise ValueError(f"blur_check: this suite has no metric {sorted(unknown)}; it has {list(functions)}.")
        result = {}
        for name, metric in functions.items():
            if metrics is not None and name not in metrics:
                continue
            check = blur_separation(metric, crops, set_size=set_size, num_splits=num_splits, seed=seed, groups=groups)
            result[name] = {k: v for k, v in check.items() if not k.endswith("_per_split")}
        return result


def blur_check_by_count(
    suite: GenerationMetricSuite,
    crops: torch.Tensor,
    set_sizes,
    groups=None,
    num_splits: int = 8,
    seed: int = 0,
    metrics: list[str] | None = None,
    progress=None,
) -> dict[int, dict[str, dict]]:
    """``{n: suite.blur_check(crops, set_size=n, groups=groups, metrics=metrics)}`` for every ``n`` in ``set_sizes``
    (ascending); ``progress(n, check)`` is called after each count."""
    result = {}
    for n in sorted(set_sizes):
        result[n] = suite.blur_check(crops, num_splits, seed, set_size=n, groups=groups, metrics=metrics)
        if progress is not None:
            progress(n, result[n])
    return result


def passing_count(checks: dict[int, dict[str, dict]]) -> dict[str, int | None]:
    """Per metric, the smallest measured count from which the blur check passes at every larger measured count
    (None: it fails at the largest count measured)."""
    counts = sorted(checks)
    result = {}
    for name in checks[counts[0]]:
        passing = None
        for n in reversed(counts):
            if not checks[n][name]["passes"]:
                break
            passing = n
        result[name] = passing
    return result


def relied_metrics(blur_check: dict[str, dict]) -> list[str]:
    """The metrics that pass the blur check, in the suite's order: the ones a study may rely on. Pass the check
    measured at the number of samples per set the study compares (``blur_check(..., set_size=n)``)."""
    return [name for name, check in blur_check.items() if check["passes"] and np.isfinite(check["ratio"])]


def blur_check_table(check: dict[str, dict]) -> list[str]:
    """Markdown lines of a blur check: each metric's unblurred and blurred distance, their ratio, relied on or not."""
    lines = [
        "| metric | two unblurred halves (mean abs.) | one half blurred 5x5 | ratio | relied on |",
        "|---|---:|---:|---:|---|",
    ]
    for name, row in check.items():
        relied = "yes" if row["passes"] else f"no (< {BLUR_SEPARATION_FACTOR:g}x)"
        lines.append(f"| {name} | {row['unblurred_abs']:.4g} | {row['blurred']:.4g} | {row['ratio']:.2f} | {relied} |")
    return lines


def anchored_table(
    arms: dict[str, dict], anchors: dict, metrics: list[str], relied: list[str], labels: dict | None = None
) -> list[str]:
    """Markdown lines: per arm the mean +- sample SD over seeds of each metric, then the data floor and the
    reconstruction ceiling rows (``"not measured"`` where absent). ``arms``: ``{arm: {metric: {"mean", "sd", "n"}}}``;
    ``anchors``: ``{"floor": {metric: value} | None, "ceiling": {arm or "": {metric: value}} | None}``."""
    labels = labels or {}
    head = [f"{labels.get(m, m)}{'' if m in relied else ' (not relied on)'}" for m in metrics]
    lines = ["| arm | " + " | ".join(head) + " |", "|---|" + "---:|" * len(metrics)]
    for arm, values in arms.items():
        cells = []
        for metric in metrics:
            stat = values.get(metric)
            if stat is None:
                cells.append("not measured")
            elif stat["n"] > 1:
                cells.append(f"{stat['mean']:.4g} +- {stat['sd']:.2g}")
            else:
                cells.append(f"{stat['mean']:.4g}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    floor = anchors.get("floor") or {}
    cells = [f"{floor[m]:.4g}" if m in floor else "not measured" for m in metrics]
    lines.append("| data floor (training images vs reference, same count) | " + " | ".join(cells) + " |")
    ceilings = anchors.get("ceiling")
    if ceilings is not None:
        for arm, values in ceilings.items():
            name = f"reconstruction ceiling{f' ({arm})' if arm else ''}: decode(encode(reference)) vs reference"
            cells = [f"{values[m]:.4g}" if values and m in values else "not measured" for m in metrics]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines
