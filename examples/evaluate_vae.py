#!/usr/bin/env python
"""Evaluate a VAE's reconstructions over a dataset: rFID / FD, PSNR, SSIM, LPIPS, spectral KL and the low-pass rFID.

    python examples/evaluate_vae.py --vae out/vae --train_data_dir photos --num_samples 1000 --resolution 256 \
        --feature_extractor facebook/dinov2-base --dsm_levels 0,8,10,12 --output_file out/vae_eval.json

`--feature_extractor` picks what the Fréchet distance is measured on: a transformers vision backbone (Hub id or
folder, e.g. `facebook/dinov2-base` for FD-DINOv2; append `:mean` for mean-pooled patch tokens) or
`inception:PATH` for FID with a local TorchScript Inception file (`inception-2015-12-05.pt`). `none` skips it.
Levels > 0 of `--dsm_levels` decode DSM-low-passed latents and compare them with low-passed images (the low-pass
rFID of Spectrum Matching). Without `--dataset_name` / `--train_data_dir` the embedded photos are used.
"""

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
from diffusers.utils import check_min_version

from diffusers_spectrum.evaluation.metrics import load_feature_extractor, lpips, reconstruction_metrics
from diffusers_spectrum.models import load_autoencoder
from diffusers_spectrum.training.data import image_batches_from


check_min_version("0.32.0")
logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def lpips_over(vae, batches) -> float | None:
    """Mean LPIPS of plain reconstructions, or None when the `lpips` package / torchvision are missing."""
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


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", required=True, help="VAE folder or Hub id (any AutoencoderKL; pipeline folders too).")
    parser.add_argument("--dataset_name", default=None, help="Hub dataset id (streamed).")
    parser.add_argument("--train_data_dir", default=None, help="local image folder or parquet / arrow files.")
    parser.add_argument("--image_column", default="image", help="dataset column holding the images.")
    parser.add_argument("--split", default="train", help="dataset split.")
    parser.add_argument("--num_samples", type=int, default=1000, help="images to evaluate.")
    parser.add_argument("--resolution", type=int, default=256, help="resize + centre crop side (256 = the paper).")
    parser.add_argument("--batch_size", type=int, default=16, help="images per forward pass.")
    parser.add_argument(
        "--feature_extractor",
        default="none",
        help="transformers backbone id/folder (FD), 'inception:PATH' (FID from a local TorchScript file) or 'none'.",
    )
    parser.add_argument("--dsm_levels", default="0", help="comma-separated DSM levels; > 0 gives the low-pass rFID.")
    parser.add_argument("--lpips", action="store_true", help="also compute LPIPS (needs `lpips` and torchvision).")
    parser.add_argument("--sample_posterior", action="store_true", help="decode posterior samples, not the mean.")
    parser.add_argument("--output_file", required=True, help="JSON file the results are written to.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device.")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar.")
    args = parser.parse_args(input_args)
    if args.dataset_name and args.train_data_dir:
        parser.error("pass either --dataset_name or --train_data_dir, not both.")
    if args.num_samples < 1 or args.batch_size < 1:
        parser.error("--num_samples and --batch_size must be positive.")
    try:
        args.dsm_levels = tuple(int(v) for v in args.dsm_levels.split(",") if v.strip())
    except ValueError:
        parser.error(f"--dsm_levels must be comma-separated integers, got {args.dsm_levels!r}.")
    return args


def main(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    vae = load_autoencoder(args.vae, device=args.device)
    extractor = (
        None if args.feature_extractor == "none" else load_feature_extractor(args.feature_extractor, args.device)
    )
    data = args.dataset_name or args.train_data_dir

    def batches():
        return image_batches_from(
            data, args.num_samples, args.resolution, args.batch_size, args.image_column, args.split
        )

    result = reconstruction_metrics(
        vae,
        batches(),
        extractor=extractor,
        dsm_levels=args.dsm_levels,
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
        resolution=args.resolution,
        feature_extractor=getattr(extractor, "name", None),
        elapsed_s=time.perf_counter() - start,
    )
    output = Path(args.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    level0 = result["levels"].get("0", {})
    logger.info("wrote %s", output)
    print(
        f"{args.vae}: {result['num_samples']} images | PSNR {level0.get('psnr', float('nan')):.2f} dB | SSIM "
        f"{level0.get('ssim', float('nan')):.4f} | FD {level0.get('fd', float('nan')):.3f} | spectral KL d1 "
        f"{result['spectral_kl_delta1']:.4f} -> {output}"
    )
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    try:
        main(parse_args())
    except ValueError as error:
        sys.exit(f"evaluate_vae.py: error: {error}")
