#!/usr/bin/env python
"""Encode an image dataset once with a trained VAE into a Hugging Face dataset of latents ("pretrained latents").

The DiT trainer (`examples/train_dit_repa.py --latent_dataset DIR_OR_ID`) then trains without the VAE in memory.

    python examples/cache_latents.py --pretrained_vae out/vae --train_data_dir photos --output_dir out/latents \
        --resolution 256 --repa_encoder facebook/dinov2-base --repa_grid_size 16

Re-running the same command after an interruption continues after the last complete shard. The loop lives in
`diffusers_spectrum.training.cache` (also `diffusers-spectrum cache-latents`).
"""

import sys

from diffusers_spectrum.cli import run_script
from diffusers_spectrum.training.cache import cache_latents, parse_args


if __name__ == "__main__":  # bad flags or data: one line "cache_latents.py: error: ..." (exit 2 / 1), no traceback
    sys.exit(run_script(parse_args, cache_latents))
