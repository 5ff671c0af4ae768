#!/usr/bin/env python
"""Sample images from a pipeline folder or Hub id (what the trainers export, or any DiTPipeline / DDPMPipeline).

    python examples/sample.py --pretrained_model_name_or_path out/dit/pipeline --class_labels chelsea,coffee \
        --num_images 8 --guidance_scale 1.8 --num_inference_steps 50 --output_dir samples

Image i is drawn with its own generator seeded `--seed + i` (or `--seeds`), so it is the same whatever the batch
size. Writes one PNG per image, `grid.png` and `samples.json`. The code lives in
`diffusers_spectrum.pipelines.sampling` (also `diffusers-spectrum sample`).
"""

import sys

from diffusers_spectrum.cli import run_script
from diffusers_spectrum.pipelines.sampling import parse_args, sample


if __name__ == "__main__":  # bad flags or data: one line "sample.py: error: ..." (exit 2 / 1), no traceback
    sys.exit(run_script(parse_args, sample))
