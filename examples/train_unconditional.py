"""Train an unconditional pixel-space diffusion UNet (DDPM or EDM) with optional spectral regularisers.

Thin wrapper: the loop lives in `diffusers_spectrum.training.unconditional` (also `diffusers-spectrum
train-unconditional`). Flags follow diffusers' `examples/unconditional_image_generation/train_unconditional.py`.
"""

import sys

from diffusers_spectrum.cli import run_script
from diffusers_spectrum.training.unconditional import parse_args, train_unconditional


if (
    __name__ == "__main__"
):  # bad flags or data: one line "train_unconditional.py: error: ..." (exit 2 / 1), no traceback
    sys.exit(run_script(parse_args, train_unconditional))
