"""Train a waveform diffusion UNet1DModel (Dance Diffusion) with the spectral regularisers and export a stock
`DanceDiffusionPipeline`. Same flags as `diffusers-spectrum train-audio`; see `diffusers_spectrum.training.audio`.

    python examples/train_audio_diffusion.py --train_data_dir my_wavs --sample_rate 16000 --sample_size 65536 \
        --stft_weight 0.1 --use_ema --output_dir audio-run
"""

import sys

from diffusers_spectrum.cli import run_script
from diffusers_spectrum.training.audio import parse_args, train_audio


if (
    __name__ == "__main__"
):  # bad flags or data: one line "train_audio_diffusion.py: error: ..." (exit 2 / 1), no traceback
    sys.exit(run_script(parse_args, train_audio))
