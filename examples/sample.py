#!/usr/bin/env python
"""Sample images from a DiT pipeline folder or Hub id (what `train_dit_repa.py` exports, or any `DiTPipeline`).

    python examples/sample.py --pretrained_model_name_or_path out/dit/pipeline --class_labels chelsea,coffee \
        --num_images 8 --guidance_scale 1.8 --num_inference_steps 50 --output_dir samples

Image i is drawn with its own generator seeded `--seed + i` (or `--seeds`), so it is the same whatever the batch
size. Writes one PNG per image (`00000_class-2_seed-0.png`), `grid.png` and `samples.json` (labels, seeds and
settings) to `--output_dir`.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.utils import check_min_version
from PIL import Image

from diffusers_spectrum.training.dit import pipeline_samples
from diffusers_spectrum.training.utils import image_grid


check_min_version("0.32.0")
logger = logging.getLogger(__name__)

# --scheduler choices; "default" keeps the pipeline's own (for flow-matching pipelines, the flow-configured one).
SCHEDULERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpmsolver": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
}
# Schedulers that can keep a flow-matching configuration (`use_flow_sigmas`, `prediction_type="flow_prediction"`).
FLOW_SCHEDULERS = ("dpmsolver", "unipc")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def set_scheduler(pipe, name: str) -> None:
    """Swap the pipeline's scheduler, keeping its training schedule (betas, prediction type, flow settings)."""
    if name == "default":
        return
    config = pipe.scheduler.config
    is_flow = config.get("prediction_type") == "flow_prediction" or config.get("use_flow_sigmas", False)
    if is_flow and name not in FLOW_SCHEDULERS:
        raise ValueError(
            f"--scheduler {name} cannot sample this flow-matching pipeline; use one of default, "
            f"{', '.join(FLOW_SCHEDULERS)}."
        )
    pipe.scheduler = SCHEDULERS[name].from_config(config)


def resolve_labels(pipe, class_labels: str | None, num_images: int | None, unconditional: bool) -> list[int]:
    """Class ids for every image: names (through `pipe.labels`) or ids, cycled to `num_images`; 0 when
    unconditional (the label the trainer uses for unconditional data)."""
    if unconditional or class_labels is None:
        labels = [0] if unconditional or not getattr(pipe, "labels", None) else sorted(set(pipe.labels.values()))
    else:
        labels = []
        for item in (part.strip() for part in class_labels.split(",") if part.strip()):
            if item.lstrip("-").isdigit():
                labels.append(int(item))
            elif getattr(pipe, "labels", None) and item in pipe.labels:
                labels.append(int(pipe.labels[item]))
            else:
                known = sorted(pipe.labels)[:20] if getattr(pipe, "labels", None) else []
                raise ValueError(f"unknown class {item!r}; the pipeline knows {known} (or pass integer ids).")
    if not labels:
        raise ValueError("--class_labels named no class.")
    bad = [label for label in labels if not 0 <= label < 1000]
    if bad:
        raise ValueError(f"class ids must lie in [0, 1000) (1000 is DiTPipeline's null class), got {bad}.")
    count = num_images or len(labels)
    return [labels[i % len(labels)] for i in range(count)]


# ----------------------------------------------------------------------------------------------------------------
# Arguments


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="Pipeline folder or Hub id (loaded with DiffusionPipeline.from_pretrained).",
    )
    parser.add_argument("--revision", type=str, default=None, help="Hub revision.")
    parser.add_argument(
        "--class_labels",
        type=str,
        default=None,
        help="Comma-separated class ids or names (pipe.labels). Default: every class once.",
    )
    parser.add_argument("--unconditional", action="store_true", help="Sample an unconditional model (label 0).")
    parser.add_argument(
        "--num_images",
        type=int,
        default=None,
        help="Number of images; the class list is cycled. Default: one per listed class.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Image i uses seed + i.")
    parser.add_argument("--seeds", type=str, default=None, help="Comma-separated seeds, one per image (overrides).")
    parser.add_argument(
        "--scheduler",
        type=str,
        default="default",
        choices=["default", *SCHEDULERS],
        help="Sampler; 'default' keeps the pipeline's (required settings of flow models are kept).",
    )
    parser.add_argument("--num_inference_steps", type=int, default=50, help="Sampler steps.")
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="Classifier-free guidance scale (> 1 enables CFG). Default: 1.8, or 1 if unconditional.",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="Images per pipeline call.")
    parser.add_argument("--output_dir", type=str, default="samples", help="Folder for the PNGs and the grid.")
    parser.add_argument("--grid_columns", type=int, default=None, help="Grid columns (default: near square).")
    parser.add_argument("--device", type=str, default=None, help="Device (default: cuda if available).")
    parser.add_argument("--dtype", type=str, default="float32", choices=sorted(DTYPES), help="Weights dtype.")
    args = parser.parse_args(input_args)
    if args.num_images is not None and args.num_images < 1:
        parser.error("--num_images must be positive.")
    if args.batch_size < 1 or args.num_inference_steps < 1:
        parser.error("--batch_size and --num_inference_steps must be positive.")
    if args.guidance_scale is None:
        args.guidance_scale = 1.0 if args.unconditional else 1.8
    return args


# ----------------------------------------------------------------------------------------------------------------
# Main


def main(args: argparse.Namespace) -> Path:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    # 1. Pipeline and scheduler
    pipe = DiffusionPipeline.from_pretrained(args.pretrained_model_name_or_path, revision=args.revision).to(device)
    if args.dtype != "float32":
        pipe = pipe.to(dtype=DTYPES[args.dtype])
    set_scheduler(pipe, args.scheduler)

    # 2. Labels and seeds
    labels = resolve_labels(pipe, args.class_labels, args.num_images, args.unconditional)
    if args.seeds is not None:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if len(seeds) != len(labels):
            raise ValueError(f"--seeds gives {len(seeds)} seeds for {len(labels)} images.")
    else:
        seeds = [args.seed + i for i in range(len(labels))]

    # 3. Sample and write
    images = pipeline_samples(pipe, labels, args.num_inference_steps, args.guidance_scale, seeds, args.batch_size)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (image, label, seed) in enumerate(zip(images, labels, seeds)):
        name = f"{i:05d}_class-{label}_seed-{seed}.png"
        Image.fromarray(image_grid(image[None], nrow=1, padding=0)).save(output_dir / name)
        names.append(name)
    Image.fromarray(image_grid(images, nrow=args.grid_columns)).save(output_dir / "grid.png")
    id2label = {int(v): k for k, v in (getattr(pipe, "labels", None) or {}).items()}
    record = {
        "pipeline": args.pretrained_model_name_or_path,
        "scheduler": type(pipe.scheduler).__name__,
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "images": [
            {"file": n, "class_id": label, "class_name": id2label.get(label), "seed": seed}
            for n, label, seed in zip(names, labels, seeds)
        ],
    }
    with open(output_dir / "samples.json", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    logger.info("wrote %d images and grid.png to %s", len(names), output_dir)
    return output_dir


if __name__ == "__main__":
    main(parse_args())
    sys.exit(0)
