#!/usr/bin/env python
"""FID / FD of a pipeline's samples against a dataset, plus the samples' radial spectrum against the data's.

    python examples/evaluate_pipeline.py --pipeline out/pipeline --train_data_dir photos --num_samples 1000 \
        --feature_extractor facebook/dinov2-base --num_inference_steps 50 --guidance_scale 1.8 \
        --output_file out/pipeline_eval.json

Any pipeline `DiffusionPipeline.from_pretrained` loads works: class-conditional ones (`DiTPipeline`, the format
this project publishes) get `--class_labels` (default: the pipeline's `id2label` keys, else class 0), cycled over the
samples; unconditional ones (`DDPMPipeline` ...) get `batch_size`. Reference images are resized and centre-cropped to
the samples' size. `--feature_extractor` is a transformers backbone (FD, e.g. FD-DINOv2) or `inception:PATH` (FID
from a local TorchScript Inception file). Also reported: the log-log slope of the samples' and the data's radial
power spectra (16 bands), a quick check that samples are neither too noisy nor too smooth.
"""

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import check_min_version
from tqdm.auto import tqdm

from diffusers_spectrum.evaluation.metrics import load_feature_extractor, sample_frechet_distance
from diffusers_spectrum.pipelines.sampling import pipeline_samples
from diffusers_spectrum.spectral import power_law_slope, radial_spectrum
from diffusers_spectrum.training.data import image_batches_from


check_min_version("0.32.0")
logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def class_labels_for(pipeline, class_labels: str | None) -> list[int]:
    """`--class_labels` as ints, else the pipeline's `id2label` keys, else `[0]`."""
    if class_labels:
        return [int(v) for v in class_labels.split(",") if v.strip()]
    id2label = getattr(pipeline, "id2label", None) or pipeline.config.get("id2label")
    return sorted(int(k) for k in id2label) if id2label else [0]


def mean_spectrum_slope(batches) -> tuple[float, list[torch.Tensor]]:
    """Slope of the mean DC-free radial power spectrum (band-centre frequencies); also returns the batches."""
    kept, spectra = [], []
    for images in batches:
        kept.append(images)
        spectra.append(radial_spectrum(images))
    return float(power_law_slope(torch.cat(spectra).mean(0), "center")), kept


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="pipeline folder or Hub id (DiffusionPipeline).")
    parser.add_argument("--dataset_name", default=None, help="reference Hub dataset id (streamed).")
    parser.add_argument("--train_data_dir", default=None, help="reference image folder or parquet / arrow files.")
    parser.add_argument("--image_column", default="image", help="dataset column holding the images.")
    parser.add_argument("--split", default="train", help="dataset split.")
    parser.add_argument("--num_samples", type=int, default=1000, help="samples generated (and reference images read).")
    parser.add_argument("--batch_size", type=int, default=16, help="samples per pipeline call.")
    parser.add_argument("--num_inference_steps", type=int, default=50, help="sampler steps.")
    parser.add_argument("--guidance_scale", type=float, default=1.0, help="classifier-free guidance (1 = none).")
    parser.add_argument("--class_labels", default=None, help="comma-separated class ids to cycle through.")
    parser.add_argument(
        "--feature_extractor",
        default="facebook/dinov2-base",
        help="transformers backbone id/folder (FD) or 'inception:PATH' (FID from a local TorchScript file).",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed.")
    parser.add_argument("--output_file", required=True, help="JSON file the results are written to.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device.")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bars.")
    args = parser.parse_args(input_args)
    if args.dataset_name and args.train_data_dir:
        parser.error("pass either --dataset_name or --train_data_dir, not both.")
    if args.num_samples < 2 or args.batch_size < 1:
        parser.error("--num_samples must be at least 2 and --batch_size positive.")
    return args


def main(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    try:
        pipeline = DiffusionPipeline.from_pretrained(args.pipeline).to(args.device)
    except (OSError, ValueError) as error:
        raise ValueError(f"Could not load a pipeline from {args.pipeline!r}: {error}") from error
    pipeline.set_progress_bar_config(disable=True)
    extractor = load_feature_extractor(args.feature_extractor, args.device)
    labels = class_labels_for(pipeline, args.class_labels)

    # 1. Samples
    sample_batches = pipeline_samples(
        pipeline,
        args.num_samples,
        args.batch_size,
        labels,
        args.num_inference_steps,
        args.guidance_scale,
        args.seed,
        progress=not args.no_progress,
    )
    sample_slope, samples = mean_spectrum_slope(sample_batches)
    resolution = samples[0].shape[-1]

    # 2. Reference images at the samples' size
    data = args.dataset_name or args.train_data_dir
    reference = image_batches_from(data, args.num_samples, resolution, args.batch_size, args.image_column, args.split)
    data_slope, references = mean_spectrum_slope(
        tqdm(reference, desc="data", total=math.ceil(args.num_samples / args.batch_size), disable=args.no_progress)
    )

    # 3. Fréchet distance
    fd = sample_frechet_distance(samples, references, extractor)
    result = {
        "fd": fd,
        "feature_extractor": getattr(extractor, "name", args.feature_extractor),
        "num_samples": sum(b.shape[0] for b in samples),
        "num_reference": sum(b.shape[0] for b in references),
        "sample_spectrum_slope": sample_slope,
        "data_spectrum_slope": data_slope,
        "resolution": resolution,
        "pipeline": str(args.pipeline),
        "pipeline_class": type(pipeline).__name__,
        "class_labels": labels,
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "seed": args.seed,
        "data": data or "embedded photos",
        "elapsed_s": time.perf_counter() - start,
    }
    output = Path(args.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"{args.pipeline}: FD {fd:.3f} ({result['feature_extractor']}, {result['num_samples']} samples vs "
        f"{result['num_reference']} images) | spectrum slope samples {sample_slope:.2f}, data {data_slope:.2f}"
        f" -> {output}"
    )
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    try:
        main(parse_args())
    except ValueError as error:
        sys.exit(f"evaluate_pipeline.py: error: {error}")
