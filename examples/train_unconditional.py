"""Train an unconditional pixel-space diffusion UNet (DDPM or EDM) with optional spectral regularisers.

Thin wrapper: the loop lives in `diffusers_spectrum.training.unconditional` (also `diffusers-spectrum
train-unconditional`). Flags follow diffusers' `examples/unconditional_image_generation/train_unconditional.py`.
"""

from diffusers_spectrum.training.unconditional import parse_args, train_unconditional


if __name__ == "__main__":
    train_unconditional(parse_args())
