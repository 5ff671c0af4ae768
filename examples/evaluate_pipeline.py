#!/usr/bin/env python
"""Generation metrics of a pipeline against a dataset: pyramid SWD, radial spectrum distance and slopes (offline),
and FD / FID with `--feature_extractor`.

    python examples/evaluate_pipeline.py --pipeline out/pipeline --train_data_dir photos --num_samples 1000 \
        --feature_extractor facebook/dinov2-base --num_inference_steps 50 --output_dir out

Every class the pipeline was trained on is sampled (cycled; `--class_labels` takes ids or names as `sample.py`) at
the pipeline's guidance default (1.8 for class-conditional pipelines; `--guidance_scale` to change). Results go to
`--output_file` (default `OUTPUT_DIR/eval_pipeline.json`). The code lives in `diffusers_spectrum.evaluation.evaluate`
(also `diffusers-spectrum evaluate-pipeline`).
"""

import sys

from diffusers_spectrum.cli import run_script
from diffusers_spectrum.evaluation.evaluate import evaluate_pipeline, parse_pipeline_args


if __name__ == "__main__":  # bad flags or data: one line "evaluate_pipeline.py: error: ..." (exit 2 / 1), no traceback
    sys.exit(run_script(parse_pipeline_args, evaluate_pipeline))
