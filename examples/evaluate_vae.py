#!/usr/bin/env python
"""Evaluate a VAE's reconstructions over a dataset: rFID / FD, PSNR, SSIM, LPIPS, spectral KL and the low-pass rFID.

    python examples/evaluate_vae.py --vae out/vae --train_data_dir photos --num_samples 1000 \
        --feature_extractor facebook/dinov2-base --dsm_levels 0,8,10,12 --output_dir out

The resolution defaults to the data's own image size (no silent upsampling); the results go to
`--output_file` (default `OUTPUT_DIR/eval_vae.json`, OUTPUT_DIR defaulting to the working directory). The code lives
in `diffusers_spectrum.evaluation.evaluate` (also `diffusers-spectrum evaluate-vae`).
"""

import sys

from diffusers_spectrum.cli import run_script
from diffusers_spectrum.evaluation.evaluate import evaluate_vae, parse_vae_args


if __name__ == "__main__":  # bad flags or data: one line "evaluate_vae.py: error: ..." (exit 2 / 1), no traceback
    sys.exit(run_script(parse_vae_args, evaluate_vae))
