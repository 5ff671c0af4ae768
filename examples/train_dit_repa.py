#!/usr/bin/env python
"""Train a diffusion transformer (`REPADiTTransformer2DModel`) with optional REPA / DoG-REPA alignment.

Data, one of:
- `--latent_dataset DIR_OR_ID`: latents cached by `examples/cache_latents.py` (local folder or Hub dataset id,
  streamed); REPA targets come from the cache when it stores them, else online from `--repa_encoder`.
- images (`--dataset_name`, `--train_data_dir`, default the embedded photos) encoded on the fly with
  `--pretrained_vae`, or with `--space dct` transformed into DCT space (DCTdiff) with no VAE at all, or with
  `--space pixel` diffused as pixels in [-1, 1] (patch size p: (resolution / p)^2 tokens).

Single process: `python examples/train_dit_repa.py --latent_dataset out/latents --output_dir out/dit`.
Multi-GPU / multi-node: `accelerate launch examples/train_dit_repa.py ...`. The loop lives in
`diffusers_spectrum.training.dit` (also `diffusers-spectrum train-dit`).
"""

import sys

from diffusers_spectrum.cli import run_script
from diffusers_spectrum.training.dit import parse_args, train_dit


if __name__ == "__main__":  # bad flags or data: one line "train_dit_repa.py: error: ..." (exit 2 / 1), no traceback
    sys.exit(run_script(parse_args, train_dit))
