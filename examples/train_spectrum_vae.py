#!/usr/bin/env python
"""Train or fine-tune a Spectrum VAE (`SpectrumAutoencoderKL`) with ESM / DSM, perceptual and adversarial losses.

Single process: `python examples/train_spectrum_vae.py --output_dir out --vae_config tiny --max_train_steps 100`.
Multi-GPU / multi-node: `accelerate launch examples/train_spectrum_vae.py ...`. With no data flag it trains on the
embedded photo crops. `--recipe esm-ae` (or `sd-vae`, `dsm-ae`, `eq-vae`, `va-vae`) sets the published recipes;
flags given explicitly win. See `--help`. The loop lives in `diffusers_spectrum.training.vae` (also
`diffusers-spectrum train-vae`).
"""

import sys

from diffusers_spectrum.cli import run_script
from diffusers_spectrum.training.vae import parse_args, train_vae


if (
    __name__ == "__main__"
):  # bad flags or data: one line "train_spectrum_vae.py: error: ..." (exit 2 / 1), no traceback
    sys.exit(run_script(parse_args, train_vae))
