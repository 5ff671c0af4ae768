"""Evaluation commands as library functions: `evaluate_vae` (reconstruction metrics of a VAE) and
`evaluate_pipeline` (generation metrics of a pipeline). `examples/evaluate_vae.py`, `examples/evaluate_pipeline.py`
and `diffusers-spectrum evaluate-vae / evaluate-pipeline` only parse flags (`parse_vae_args`, `parse_pipeline_args`)
and call them.

- `evaluate_vae`: PSNR, SSIM, spectral KL, optional LPIPS and FD / rFID (`--feature_extractor`), per DSM level (levels
  > 0 give the low-pass rFID of Spectrum Matching; their PSNR is also reported as the drop from level 0 with a paired
  t interval over images, `evaluation.statistics`, which separates low-pass fidelity from reconstruction quality).
  The resolution defaults to the data's own image size (rounded down to what the VAE accepts), so 64 px data is
  never silently upsampled; an explicit larger `--resolution` is allowed with a loud warning. One resolution check
  (`models.checks.check_resolution`) for every command.
- `evaluate_pipeline`: samples every class the pipeline was trained on (or `--class_labels`, ids or names as
  `sample` takes them) at the pipeline's guidance default (1.8 for class-conditional pipelines, as `sample`), and
  compares them with reference images at the samples' size: offline metrics that need no network (pyramid SWD as
  published and colour-aware, and the radial spectrum distance of `evaluation.generation_metrics`, the two sets'
  spectrum slopes), plus FD / FID and KID when `--feature_extractor` names a backbone. Beside them: the data floor
  (`--floor_data_dir`: real training images against the references, same count), the reconstruction ceiling of a
  latent pipeline (its VAE's decode(encode(references))), and the 5 x 5 box-blur check of the pixel metrics on the
  references (`evaluation.study_metrics`: which metrics can see a blur at this scale).

Both write a JSON file (default `<output_dir>/eval_vae.json` / `eval_pipeline.json`, output_dir defaulting to the
working directory) and return the same dict.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from pathlib import Path

import torch

from ..models.checks import check_resolution, downsample_factor
from ..pipelines.sampling import check_local_path, cli_labels, load_pipeline, pipeline_classes, pipeline_samples
from ..spectral import power_law_slope, radial_spectrum
from ..utils.flags import add_flags
from ..utils.records import write_json
from ..utils.run_folders import OutputFolderError, check_output_file
from .generation_metrics import SWD_MIN_RESOLUTION, pyramid_swd, spectrum_distance


__all__ = [
    "build_pipeline_parser",
    "build_vae_parser",
    "evaluate_pipeline",
    "evaluate_vae",
    "parse_pipeline_args",
    "parse_vae_args",
    "vae_resolution",
]

logger = logging.getLogger(__name__)

VAE_OUTPUT_NAME = "eval_vae.json"
PIPELINE_OUTPUT_NAME = "eval_pipeline.json"
# results file -> (command, a key every result of it holds): what may be overwritten
OUTPUT_KEYS = {VAE_OUTPUT_NAME: ("evaluate-vae", "vae"), PIPELINE_OUTPUT_NAME: ("evaluate-pipeline", "pipeline")}
CONDITIONAL_GUIDANCE = 1.8  # the `sample` command's default for class-conditional pipelines


# ----------------------------------------------------------------------------------------------------------------
# Shared flags


def _add_output_args(parser: argparse.ArgumentParser, default_name: str) -> None:
    add_flags(parser, "--output_dir")
    parser.add_argument(
        "--output_file",
        default=None,
        help=f"JSON file of the results (default: OUTPUT_DIR/{default_name}, OUTPUT_DIR the working directory).",
    )
    add_flags(parser, "--device", "--no_progress")


def _finish_common(parser: argparse.ArgumentParser, args: argparse.Namespace, default_name: str) -> None:
    """Checks shared by both commands: one data source, local data paths exist, positive counts, output file."""
    if args.dataset_name and args.train_data_dir:
        parser.error("pass either --dataset_name or --train_data_dir, not both.")
    if args.train_data_dir is not None and not Path(os.path.expanduser(args.train_data_dir)).exists():
        parser.error(f"--train_data_dir {args.train_data_dir}: no such folder or file; check the path.")
    check_local_path(parser, "--dataset_name", args.dataset_name)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be positive, got {args.batch_size}.")
    if args.output_file is None:
        args.output_file = str(Path(args.output_dir or ".") / default_name)
    command, key = OUTPUT_KEYS[default_name]
    try:  # an existing file is overwritten only when it is an earlier result of this command
        check_output_file(args.output_file, command, key)
    except OutputFolderError as error:
        parser.error(str(error))
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _write_result(path: str, result: dict) -> Path:
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output, result, sort_keys=False)
    logger.info("wrote %s", output)
    return output


# ----------------------------------------------------------------------------------------------------------------
# VAE


def build_vae_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Reconstruction metrics of a VAE over a dataset: PSNR, SSIM, spectral KL, optional LPIPS and "
        "FD / rFID, per DSM level (levels > 0: the low-pass rFID). Without --dataset_name / --train_data_dir the "
        "embedded photos are used."
    )
    add_flags(parser, "--vae", "--dataset_name", "--train_data_dir", "--image_column", required=("--vae",))
    add_flags(parser, "--dataset_split", "--num_samples", "--resolution", num_samples=1000, resolution=None)
    add_flags(parser, "--batch_size", "--feature_extractor", "--sample_posterior")
    parser.add_argument("--dsm_levels", default="0", help="Comma-separated DSM levels; > 0 gives the low-pass rFID.")
    parser.add_argument("--lpips", action="store_true", help="Also compute LPIPS (needs `lpips` and torchvision).")
    _add_output_args(parser, VAE_OUTPUT_NAME)
    return parser


def parse_vae_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags of `evaluate-vae`; bad values exit with the usage line and a message naming the flag."""
    parser = build_vae_parser()
    args = parser.parse_args(argv)
    check_local_path(parser, "--vae", args.vae)
    if args.num_samples < 1:
        parser.error(f"--num_samples must be positive, got {args.num_samples}.")
    if args.resolution is not None and args.resolution < 1:
        parser.error(f"--resolution must be positive, got {args.resolution}.")
    try:
        args.dsm_levels = tuple(int(v) for v in args.dsm_levels.split(",") if v.strip())
    except ValueError:
        parser.error(f"--dsm_levels must be comma-separated integers, got {args.dsm_levels!r}.")
    if not args.dsm_levels or any(level < 0 for level in args.dsm_levels):
        parser.error(f"--dsm_levels must be non-negative integers, got {args.dsm_levels}.")
    _finish_common(parser, args, VAE_OUTPUT_NAME)
    return args


def vae_resolution(vae, requested: int | None, data_side: int, dsm_levels=(0,), block_size: int = 8) -> int:
    """The evaluation resolution: `requested` checked by `check_resolution` (a warning when it upsamples data of
    shorter side `data_side`), or by default `data_side` rounded down to a multiple of the VAE's downsampling
    factor (x `block_size` with DSM levels > 0). Raises a `ValueError` when the data is too small for the VAE."""
    if requested is not None:
        check_resolution(vae, requested, dsm_levels, block_size)
        if requested > data_side:
            logger.warning(
                "UPSAMPLING: the data's images are %d px and --resolution is %d px (%.1fx): upsampled images have "
                "steeper spectra and blurrier details, so the metrics describe the resampling as much as the VAE; "
                "omit --resolution to evaluate at the data's size.",
                data_side,
                requested,
                requested / data_side,
            )
        return requested
    multiple = downsample_factor(vae) * (block_size if any(int(level) > 0 for level in dsm_levels) else 1)
    resolution = data_side // multiple * multiple
    if resolution < multiple:
        raise ValueError(
            f"the data's images are {data_side} px, smaller than the {multiple} px this VAE (and DSM levels) needs; "
            "pass --resolution to upsample them explicitly."
        )
    check_resolution(vae, resolution, dsm_levels, block_size)
    logger.info("resolution: %d px (the data's images are %d px; pass --resolution to change)", resolution, data_side)
    return resolution


def lpips_over(vae, batches) -> float | None:
    """Mean LPIPS of plain reconstructions, or None when the `lpips` package / torchvision are missing."""
    from .metrics import lpips

    total, count = 0.0, 0
    try:
        for images in batches:
            with torch.no_grad():
                latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mode()
                reconstruction = vae.decode(latents).sample.float().clamp(-1, 1)
            total += float(lpips(reconstruction, images.to(reconstruction.device).float()).sum())
            count += images.shape[0]
    except ImportError as error:
        logger.warning("LPIPS skipped: %s", error)
        return None
    return total / max(count, 1)


def _feature_extractor(spec: str, device):
    from .metrics import load_feature_extractor

    return None if spec in (None, "none") else load_feature_extractor(spec, device)


def evaluate_vae(args: argparse.Namespace) -> dict:
    """Evaluate as `args` (from `parse_vae_args`) says; writes and returns the results dict."""
    from ..data.images import ImageTransform, data_image_size, image_batches_from
    from ..data.stream import SkipCounter
    from ..models.loading import load_autoencoder
    from .metrics import reconstruction_metrics

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    start = time.perf_counter()
    vae = load_autoencoder(args.vae, device=args.device)
    data = args.dataset_name or args.train_data_dir
    data_side = data_image_size(data, args.image_column, args.dataset_split)
    resolution = vae_resolution(vae, args.resolution, data_side, args.dsm_levels)
    extractor = _feature_extractor(args.feature_extractor, args.device)
    skips, transform = SkipCounter(), ImageTransform(resolution, center_crop=True)

    def batches():
        count, size, column = args.num_samples, args.batch_size, args.image_column
        return image_batches_from(data, count, resolution, size, column, args.dataset_split, skips, transform)

    result = reconstruction_metrics(
        vae,
        batches(),
        extractor=extractor,
        dsm_levels=args.dsm_levels,
        # level 0 filters nothing; block size 1 keeps dsm_lowpass from demanding 8-px blocks at that level
        block_size=8 if any(level > 0 for level in args.dsm_levels) else 1,
        sample_posterior=args.sample_posterior,
        progress=not args.no_progress,
        total=math.ceil(args.num_samples / args.batch_size),
    )
    if args.lpips:
        result["lpips"] = lpips_over(vae, batches())
    result["levels"] = {str(level): values for level, values in result["levels"].items()}
    result.update(
        vae=str(args.vae),
        data=data or "embedded photos",
        resolution=resolution,
        data_resolution=data_side,
        upsampled_images=transform.num_upsampled,
        skipped_images=skips.count,
        feature_extractor=getattr(extractor, "name", None),
        elapsed_s=time.perf_counter() - start,
    )
    output = _write_result(args.output_file, result)
    level0 = result["levels"].get("0", {})
    drops = [
        f"k={k} {v['psnr']:.2f} dB (drop {v['psnr_drop']:+.2f} [{v['psnr_drop_lo']:+.2f}, {v['psnr_drop_hi']:+.2f}])"
        for k, v in result["levels"].items()
        if "psnr_drop" in v
    ]
    print(
        f"{args.vae}: {result['num_samples']} images at {resolution} px | PSNR {level0.get('psnr', float('nan')):.2f}"
        f" dB | SSIM {level0.get('ssim', float('nan')):.4f} | FD {level0.get('fd', float('nan')):.3f} | spectral "
        f"KL d1 {result['spectral_kl_delta1']:.4f} | {result['verdict']} -> {output}"
        + (
            f"\n  DSM low-pass PSNR, drop from level 0 with a 95% t interval over images: {'; '.join(drops)}"
            if drops
            else ""
        )
    )
    return result


# ----------------------------------------------------------------------------------------------------------------
# Pipeline


def build_pipeline_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Generation metrics of a pipeline against reference images: pyramid SWD and the radial spectrum "
        "distance (offline, no network), the spectrum slopes, and FD / FID with --feature_extractor. Every class "
        "the pipeline was trained on is sampled (cycled) at the pipeline's guidance default."
    )
    add_flags(parser, "--pipeline", "--revision", "--dataset_name", "--train_data_dir", required=("--pipeline",))
    add_flags(parser, "--image_column", "--dataset_split")
    parser.add_argument(
        "--floor_data_dir",
        default=None,
        help="Real images the model was trained on (folder / parquet), for the data floor: the same metrics between "
        "them and the references at the same count (what real data scores).",
    )
    parser.add_argument("--floor_dataset_name", default=None, help="Hub dataset id for the data floor (streamed).")
    add_flags(parser, "--num_samples", "--batch_size", "--num_inference_steps", "--guidance_scale", num_samples=1000)
    add_flags(parser, "--class_labels", "--unconditional", "--feature_extractor", "--seed")
    _add_output_args(parser, PIPELINE_OUTPUT_NAME)
    return parser


def parse_pipeline_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags of `evaluate-pipeline`; bad values exit with the usage line and a message naming the flag."""
    parser = build_pipeline_parser()
    args = parser.parse_args(argv)
    check_local_path(parser, "--pipeline", args.pipeline)
    if args.num_samples < 2:
        parser.error(f"--num_samples must be at least 2, got {args.num_samples}.")
    if args.num_inference_steps < 1:
        parser.error(f"--num_inference_steps must be positive, got {args.num_inference_steps}.")
    if args.guidance_scale is not None and not args.guidance_scale >= 1.0:
        parser.error(f"--guidance_scale must be >= 1 (1 = no guidance), got {args.guidance_scale}.")
    if args.unconditional and args.class_labels is not None:
        parser.error("pass either --unconditional or --class_labels, not both.")
    _finish_common(parser, args, PIPELINE_OUTPUT_NAME)
    return args


def default_guidance(pipe, unconditional: bool = False) -> float:
    """`sample`'s guidance default: 1.8 for a class-conditional pipeline (one with a label table), else 1."""
    return 1.0 if unconditional or pipeline_classes(pipe) is None else CONDITIONAL_GUIDANCE


def _spectrum_slope(images: torch.Tensor) -> float:
    """Slope of the set's mean DC-free radial power spectrum (band-centre frequencies)."""
    return float(power_law_slope(radial_spectrum(images).mean(0), "center"))


def _offline_metrics(samples: torch.Tensor, references: torch.Tensor, seed: int) -> dict:
    """Pyramid SWD as published and colour-aware (x 1e3, per level and mean; equal counts) and the radial spectrum
    distance of two sets."""
    count, side = min(samples.shape[0], references.shape[0]), min(samples.shape[-2:])
    result = {"spectrum_distance": float(spectrum_distance(samples, references))}
    for key, normalization in (("swd_x1e3", "per_set"), ("swd_pooled_x1e3", "pooled")):
        if side >= 8:  # a 7 x 7 neighbourhood must fit; below 16 px one level at the full size
            swd = pyramid_swd(
                samples[:count],
                references[:count],
                min_resolution=min(SWD_MIN_RESOLUTION, side),
                seed=seed,
                normalization=normalization,
            )
            result[key] = [float(v) * 1e3 for v in swd]
            result[f"{key}_avg"] = float(swd.mean()) * 1e3
        else:
            result[key] = result[f"{key}_avg"] = None
    if side < 8:
        logger.warning("pyramid SWD skipped: samples of %d px are smaller than its 7 x 7 neighbourhoods.", side)
    return result


def _feature_metrics(samples: torch.Tensor, references: torch.Tensor, extractor) -> dict:
    """FD and (unbiased) KID of two sets in the extractor's features."""
    from .generation_metrics import kid
    from .metrics import collect_features, frechet_distance

    a, b = collect_features(extractor, [samples]), collect_features(extractor, [references])
    return {"fd": frechet_distance(a, b), "kid": kid(a, b)}


@torch.no_grad()
def _reconstructions(vae, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``decode(encode(images))`` with the posterior mean, in [-1, 1] (the reconstruction ceiling's set)."""
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    parts = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device, dtype)
        parts.append(vae.decode(vae.encode(batch).latent_dist.mean).sample.float().clamp(-1, 1).cpu())
    return torch.cat(parts)


def _anchors(
    pipe, references: torch.Tensor, extractor, floor_source, batch_size: int, image_column: str, split: str, seed: int
) -> dict:
    """The data floor (``floor_source`` images against the references, same count) and, for a latent pipeline, the
    reconstruction ceiling (its VAE's ``decode(encode(references))`` against them), each with the same metrics as the
    samples; the blur check of the pixel metrics on the references (>= 64)."""
    from ..data.images import image_batches_from

    anchors = {"floor": None, "ceiling": None, "blur_check": None}
    if floor_source:
        count, side = references.shape[0], references.shape[-1]
        floor = torch.cat(list(image_batches_from(floor_source, count, side, batch_size, image_column, split)))
        if floor.shape[0] < references.shape[0]:
            raise ValueError(
                f"{floor_source!r} gave {floor.shape[0]} images for the data floor; the references are "
                f"{references.shape[0]}: pass a larger floor set or fewer --num_samples."
            )
        anchors["floor"] = _offline_metrics(floor, references, seed)
        if extractor is not None:
            anchors["floor"].update(_feature_metrics(floor, references, extractor))
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "encode"):
        reconstructed = _reconstructions(vae, references, batch_size)
        anchors["ceiling"] = _offline_metrics(reconstructed, references, seed)
        if extractor is not None:
            anchors["ceiling"].update(_feature_metrics(reconstructed, references, extractor))
    if references.shape[0] >= 64 and min(references.shape[-2:]) >= 16:
        from .study_metrics import GenerationMetricSuite, relied_metrics

        check = GenerationMetricSuite(seed=seed).blur_check(references)
        anchors["blur_check"] = check
        anchors["relied_metrics"] = relied_metrics(check)
    return anchors


def evaluate_pipeline(args: argparse.Namespace) -> dict:
    """Evaluate as `args` (from `parse_pipeline_args`) says; writes and returns the results dict."""
    from ..data.images import image_batches_from
    from ..data.stream import SkipCounter

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    start = time.perf_counter()
    pipe = load_pipeline(
        args.pipeline, revision=args.revision, device=args.device, kind="image", command="evaluate-pipeline"
    )
    labels = cli_labels(pipe, args.class_labels, args.num_samples, args.unconditional)
    guidance = default_guidance(pipe, args.unconditional) if args.guidance_scale is None else args.guidance_scale
    classes = sorted(set(labels))
    logger.info("sampling %d images of %d class(es) %s at guidance %g", len(labels), len(classes), classes, guidance)

    # 1. Samples, then reference images at the samples' size
    samples = torch.cat(
        list(
            pipeline_samples(
                pipe,
                args.num_samples,
                args.batch_size,
                labels,
                args.num_inference_steps,
                guidance,
                args.seed,
                progress=not args.no_progress,
            )
        )
    )
    resolution = samples.shape[-1]
    data = args.dataset_name or args.train_data_dir
    skips = SkipCounter()
    batches = image_batches_from(
        data, args.num_samples, resolution, args.batch_size, args.image_column, args.dataset_split, skips
    )
    references = torch.cat(list(batches))
    if references.shape[0] < 2:
        raise ValueError(f"only {references.shape[0]} reference image(s) could be read from {data!r}; need >= 2.")

    # 2. Metrics
    result = {"num_samples": samples.shape[0], "num_reference": references.shape[0]}
    result.update(_offline_metrics(samples, references, args.seed))
    result["sample_spectrum_slope"] = _spectrum_slope(samples)
    result["data_spectrum_slope"] = _spectrum_slope(references)
    extractor = _feature_extractor(args.feature_extractor, args.device)
    result["fd"] = result["kid"] = None
    if extractor is not None:
        result.update(_feature_metrics(samples, references, extractor))
    floor_source = args.floor_dataset_name or args.floor_data_dir
    split = args.dataset_split
    result.update(
        _anchors(pipe, references, extractor, floor_source, args.batch_size, args.image_column, split, args.seed)
    )
    id2label = pipeline_classes(pipe) or {}
    result.update(
        feature_extractor=getattr(extractor, "name", None),
        resolution=resolution,
        pipeline=str(args.pipeline),
        pipeline_class=type(pipe).__name__,
        class_labels=classes,
        class_names=[id2label.get(label) for label in classes] if id2label else None,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=guidance,
        seed=args.seed,
        data=data or "embedded photos",
        skipped_images=skips.count,
        elapsed_s=time.perf_counter() - start,
    )
    output = _write_result(args.output_file, result)
    fd = f"FD {result['fd']:.3f} | " if result["fd"] is not None else ""
    swd = result["swd_x1e3_avg"]
    print(
        f"{args.pipeline}: {result['num_samples']} samples ({len(classes)} classes, guidance {guidance:g}) vs "
        f"{result['num_reference']} images | {fd}SWDx1e3 {swd if swd is None else round(swd, 3)} | spectrum distance "
        f"{result['spectrum_distance']:.3f} | slope samples {result['sample_spectrum_slope']:.2f}, data "
        f"{result['data_spectrum_slope']:.2f} -> {output}"
    )
    for name in ("floor", "ceiling"):
        if result[name] is not None:
            print(
                f"  {'data floor' if name == 'floor' else 'reconstruction ceiling'}: spectrum distance "
                f"{result[name]['spectrum_distance']:.3f}, SWDx1e3 {result[name]['swd_x1e3_avg']}"
            )
    if result["blur_check"] is not None:
        print(f"  metrics that see a 5x5 blur at 32 images per set: {', '.join(result['relied_metrics']) or 'none'}")
    return result
