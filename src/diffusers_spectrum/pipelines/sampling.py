"""Sampling any diffusers image pipeline reproducibly: one generator per image (seed + index), so an image does not
depend on the batch size or its position in the batch; class labels checked against what the pipeline was trained
on. Used by validation during training, `sample`, the evaluation scripts and the benchmarks. Importing this module
(for the `sample` flags) loads no diffusers; the functions that need it import it."""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..utils.flags import add_flags
from ..utils.hub import hub_offline_kwargs, looks_local
from ..utils.images import image_grid
from ..utils.records import write_json
from ..utils.run_folders import claim_output_dir


logger = logging.getLogger(__name__)

# --scheduler choices; "default" keeps the pipeline's own (for flow-matching pipelines, the flow-configured one).
SCHEDULERS = {  # diffusers class names, resolved on use (the flag parser imports no diffusers)
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
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
    import diffusers

    pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(config)


__all__ = [
    "build_parser",
    "check_local_path",
    "check_pipeline_folder",
    "load_pipeline",
    "parse_args",
    "pipeline_classes",
    "pipeline_samples",
    "resolve_class_labels",
    "sample",
    "sample_images",
]


# ----------------------------------------------------------------------------------------------------------------
# Loading pipelines strictly

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".gguf")
# diffusers' / transformers' warnings for weights the config does not describe, or parameters the file lacks
_MISMATCH = re.compile(r"were not initialized from the model checkpoint|were not used when initializing")

# What each command takes: image pipelines (`sample`, `evaluate-pipeline`) or audio ones (`analyze-audio`).
PIPELINE_KINDS = {
    "image": "an image pipeline (DiTPipeline from train-dit; DDPMPipeline or the EDM folder, a "
    "ConsistencyModelPipeline, from train-unconditional)",
    "audio": "an audio pipeline (DanceDiffusionPipeline from train-audio)",
}
_KIND_COMMANDS = {"image": "sample / evaluate-pipeline", "audio": "analyze-audio --pipeline"}


def pipeline_kind(class_name: str, components: dict | None = None) -> str:
    """`"audio"` for an audio pipeline (its class names audio or music, as `DanceDiffusionPipeline`,
    `AudioLDMPipeline`, `MusicLDMPipeline`, or its `unet` is a `UNet1DModel`), else `"image"`. `components`: the
    `model_index.json` entries (`{"unet": ["diffusers", "UNet1DModel"], ...}`) or the loaded pipeline's components."""
    name = str(class_name)
    if any(word in name for word in ("Audio", "Dance", "Music")):
        return "audio"
    unet = (components or {}).get("unet")
    unet_class = unet[1] if isinstance(unet, (list, tuple)) and len(unet) == 2 else type(unet).__name__
    return "audio" if unet_class == "UNet1DModel" else "image"


def check_pipeline_kind(name: str, class_name: str, components: dict | None, kind: str, command: str) -> None:
    """A `ValueError` naming what `command` takes when the pipeline `name` is of the other kind."""
    found = pipeline_kind(class_name, components)
    if kind is not None and found != kind:
        raise ValueError(
            f"{command} takes {PIPELINE_KINDS[kind]}; {name} is {PIPELINE_KINDS[found].split(' (')[0]} "
            f"({class_name}): use `diffusers-spectrum {_KIND_COMMANDS[found]}` for it."
        )


def _pipeline_class(index: Path, class_name):
    """The class to load a folder with when `model_index.json`'s `_class_name` is not a diffusers pipeline: one of
    ours (folders exported before the EDM export named the stock class: `EDMPipeline`), else a `ValueError`
    naming the file and the fix. `None` when diffusers resolves the name itself."""

    import diffusers

    from .edm_pipeline import EDMPipeline

    if isinstance(class_name, str) and hasattr(diffusers, class_name):
        return None
    ours = {"EDMPipeline": EDMPipeline}  # the package's DiffusionPipeline classes
    if isinstance(class_name, str) and class_name in ours:
        return ours[class_name]
    raise ValueError(
        f"{index}: _class_name {class_name!r} is neither a diffusers pipeline nor a diffusers-spectrum one; set it "
        "to the class that saved the folder (e.g. DiTPipeline, DDPMPipeline, ConsistencyModelPipeline, "
        "DanceDiffusionPipeline) or re-export the pipeline."
    )


def _import_own_modules(index: dict) -> None:
    """Import the modules of this package that a `model_index.json` names as component libraries: folders exported
    before the export named the package root record a `DCTTransform` as `["diffusers_spectrum.pipelines.dct_transform",
    "DCTTransform"]`, which diffusers' loader resolves only when the module is already imported. Only modules of
    this package are imported (never one a folder names from elsewhere)."""
    import importlib

    for entry in index.values():
        library = entry[0] if isinstance(entry, list) and len(entry) == 2 else None
        if isinstance(library, str) and library.startswith("diffusers_spectrum."):
            try:
                importlib.import_module(library)
            except ImportError:
                pass  # diffusers names the library in its own error


def check_pipeline_folder(path: str | os.PathLike) -> Path:
    """Check a local pipeline folder before diffusers reads it, so each defect is one clear error naming the file:
    the folder exists (`FileNotFoundError`, "no such folder"), holds a readable `model_index.json`, and every
    model component listed there has its folder, `config.json` and a weights file. Returns the folder."""
    folder = Path(os.path.expanduser(str(path)))
    if not folder.exists():
        raise FileNotFoundError(f"no such folder: the pipeline path {str(path)!r} does not exist; check the path.")
    index = folder / "model_index.json"
    if not folder.is_dir() or not index.is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} is not a pipeline folder: it has no model_index.json (a VAE folder goes to "
            "evaluate-vae / --pretrained_vae; a pipeline is what the trainers export)."
        )
    try:
        components = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{index}: not valid JSON ({error}); re-export the pipeline.") from None
    if not isinstance(components, dict):
        raise ValueError(f"{index}: expected a JSON object of components, got {type(components).__name__}.")
    for name, entry in components.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or entry[0] is None:
            continue
        sub = folder / name
        if not sub.is_dir():
            raise FileNotFoundError(f"pipeline component {name!r} ({entry[1]}) has no folder {sub}; re-export it.")
        if (sub / "config.json").is_file() and not any(p.suffix in _WEIGHT_SUFFIXES for p in sub.iterdir()):
            raise FileNotFoundError(
                f"pipeline component {name!r}: {sub} has config.json but no weights file (expected "
                "diffusion_pytorch_model.safetensors or model.safetensors); copy the weights or re-export it."
            )
    return folder


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if _MISMATCH.search(message):
            self.messages.append(message)


@contextmanager
def _weight_mismatch_warnings() -> Iterator[list[str]]:
    """Collect diffusers' / transformers' warnings about weights missing from, or unused in, a checkpoint (raised
    to WARNING level meanwhile, so a quiet logging setting cannot hide them)."""
    handler = _Collect()
    loggers = [logging.getLogger("diffusers"), logging.getLogger("transformers")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.addHandler(handler)
        if log.level > logging.WARNING or log.level == logging.NOTSET:
            log.setLevel(logging.WARNING)
    try:
        yield handler.messages
    finally:
        for log, level in zip(loggers, levels):
            log.removeHandler(handler)
            log.setLevel(level)


def _mismatch_error(name: str, messages: list[str], components: dict) -> ValueError:
    """One error naming the component and its weights folder from diffusers' mismatch warning(s)."""
    first = messages[0]
    where = re.search(r"checkpoint at (\S+?)(?: and| were|:|$)", first)
    folder = where.group(1) if where else name
    component = next((c for c in components if folder.rstrip("/").endswith(f"/{c}") or folder == c), None)
    keys = re.findall(r"'([^']+)'", first)
    example = f" (e.g. {', '.join(keys[:3])})" if keys else ""
    files = (
        sorted(p.name for p in Path(folder).glob("*") if p.suffix in _WEIGHT_SUFFIXES) if os.path.isdir(folder) else []
    )
    weights = os.path.join(folder, files[0]) if len(files) == 1 else folder
    return ValueError(
        f"pipeline {name!r}: component {component or '?'!r} does not match its weights {weights}{example}: "
        "its config.json describes other layers than the weights file holds, so some weights would be random. "
        "Fix config.json (e.g. num_layers) or re-export the pipeline."
    )


def load_pipeline(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    device: str | torch.device | None = None,
    torch_dtype: torch.dtype | None = None,
    kind: str | None = None,
    command: str = "this command",
):
    """`DiffusionPipeline.from_pretrained`, strictly: a path that looks local and does not exist fails at once with
    "no such folder" (no Hub retries), a local folder is checked first (`check_pipeline_folder`), and a component
    whose config does not match its weights (weights missing from or unused by the file, which diffusers only
    warns about before initialising them randomly) is a `ValueError` naming the component and its folder.

    `kind` (`"image"` / `"audio"`): what `command` takes; a pipeline of the other kind is a `ValueError` saying so
    (checked from `model_index.json` before any weight is read). A folder whose `_class_name` is one of our
    pipelines (`EDMPipeline`, as older EDM exports name it) loads with that class; an unknown `_class_name` is a
    `ValueError` naming `model_index.json` and the fix."""
    from diffusers import DiffusionPipeline

    text = os.fspath(name_or_path)
    pipeline_class = DiffusionPipeline
    if looks_local(text) or os.path.exists(text):
        folder = check_pipeline_folder(text)
        text = os.path.expanduser(text)
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        class_name = index.get("_class_name")
        check_pipeline_kind(text, class_name, index, kind, command)
        pipeline_class = _pipeline_class(folder / "model_index.json", class_name) or DiffusionPipeline
        _import_own_modules(index)
    kwargs = {"revision": revision} if revision is not None else {}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    if not os.path.exists(text):
        kwargs.update(hub_offline_kwargs(text))  # no network: the local cache at once, not a minute of retries
    with _weight_mismatch_warnings() as messages:
        try:
            pipe = pipeline_class.from_pretrained(text, **kwargs)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EnvironmentError) as error:
            raise ValueError(f"could not load a pipeline from {text!r}: {type(error).__name__}: {error}") from error
    if messages:
        raise _mismatch_error(text, messages, pipe.components)
    check_pipeline_kind(text, type(pipe).__name__, pipe.components, kind, command)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if device is not None else pipe


# ----------------------------------------------------------------------------------------------------------------
# Labels and samples


def pipeline_classes(pipe) -> dict[int, str] | None:
    """`{class id: name}` of a class-conditional pipeline (from `id2label` in its transformer's / pipeline's
    config, as `DiTPipeline.labels` reads it), or `None` when it has no label table."""
    labels = getattr(pipe, "labels", None)
    if isinstance(labels, dict) and labels:  # DiTPipeline: {name: id}
        return {int(v): str(k).split(",")[0] for k, v in labels.items()}
    return None


def resolve_class_labels(pipe, class_labels: Sequence) -> list[int]:
    """Class ids from ids or names (`"3"`, `3`, `"astronaut"`), checked against the pipeline's label table: an id
    the pipeline was not trained on is an error naming the valid range, never a silent sample of an untrained
    class. Pipelines without a table accept ids in [0, num_class_embeds - 1] or the transformer's class range."""
    classes = pipeline_classes(pipe)
    names = {name: idx for idx, name in (classes or {}).items()}
    resolved = []
    for label in class_labels:
        text = str(label).strip()
        if text.lstrip("-").isdigit():
            value = int(text)
        elif text in names:
            value = names[text]
        else:
            known = ", ".join(sorted(names)) if names else "none (pass integer ids)"
            raise ValueError(f"unknown class label {text!r}; this pipeline's class names: {known}.")
        resolved.append(value)
    if classes is not None:
        valid = sorted(classes)
        bad = [v for v in resolved if v not in classes]
        if bad:
            raise ValueError(
                f"class label(s) {bad} are not classes this pipeline was trained on; valid ids: {valid[0]}.."
                f"{valid[-1]} ({len(valid)} classes, names: {', '.join(classes[v] for v in valid[:10])}"
                f"{', ...' if len(valid) > 10 else ''})."
            )
    else:
        transformer = getattr(pipe, "transformer", None)
        num_classes = getattr(getattr(transformer, "config", None), "num_embeds_ada_norm", None)
        bad = [v for v in resolved if v < 0 or (num_classes is not None and v >= num_classes)]
        if bad:
            raise ValueError(f"class label(s) {bad} are outside [0, {num_classes}) of this pipeline's transformer.")
    return resolved


@torch.no_grad()
def pipeline_samples(
    pipeline,
    num_samples: int,
    batch_size: int = 16,
    class_labels: Sequence[int] | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    seeds: Sequence[int] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield sample batches `(B, C, H, W)` in [-1, 1] (float32, CPU) from any diffusers image pipeline.

    Image `i` uses its own generator seeded `seed + i` (or `seeds[i]`). Class-conditional pipelines (a
    `class_labels` argument, as `DiTPipeline`) cycle through `class_labels` (default `[0]`) with
    `guidance_scale`; unconditional ones (e.g. `DDPMPipeline`, `DDIMPipeline`, the EDM export's
    `ConsistencyModelPipeline`) get `batch_size`.
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be positive, got {num_samples} and {batch_size}.")
    if seeds is not None and len(seeds) != num_samples:
        raise ValueError(f"got {len(seeds)} seeds for {num_samples} samples.")
    seeds = [seed + i for i in range(num_samples)] if seeds is None else [int(s) for s in seeds]
    parameters = inspect.signature(pipeline.__call__).parameters
    labels = [int(label) for label in (class_labels or [0])]
    device = getattr(pipeline, "_execution_device", torch.device("cpu"))
    for start in tqdm(range(0, num_samples, batch_size), desc="sample", disable=not progress):
        count = min(batch_size, num_samples - start)
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds[start : start + count]]
        kwargs = {"num_inference_steps": num_inference_steps, "generator": generators, "output_type": "np"}
        if "class_labels" in parameters:  # DiTPipeline; ConsistencyModelPipeline ignores them when unconditional
            kwargs["class_labels"] = [labels[(start + i) % len(labels)] for i in range(count)]
        if "guidance_scale" in parameters:
            kwargs["guidance_scale"] = guidance_scale
        if "batch_size" in parameters:  # DDPMPipeline, DDIMPipeline, ConsistencyModelPipeline, EDMPipeline
            kwargs["batch_size"] = count
        images = np.asarray(pipeline(**kwargs).images, dtype=np.float32)  # (B, H, W, C) in [0, 1]
        if images.ndim == 3:
            images = images[..., None]
        yield torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1  # (B, C, H, W) in [-1, 1]


@torch.no_grad()
def sample_images(
    transformer,
    vae,
    scheduler,
    class_labels: Sequence[int],
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    seed: int = 0,
    batch_size: int | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """Sample with diffusers' `DiTPipeline` built from in-memory components (validation during training); image
    `i` has class `class_labels[i]` and seed `seed + i`. Returns `(N, 3, H, W)` in [-1, 1] on the CPU."""
    from diffusers import DiTPipeline

    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=type(scheduler).from_config(scheduler.config))
    pipe.set_progress_bar_config(disable=not show_progress)
    labels = [int(label) for label in class_labels]
    batches = pipeline_samples(
        pipe,
        len(labels),
        batch_size or max(len(labels), 1),
        labels,
        num_inference_steps,
        guidance_scale,
        seed,
        progress=False,
    )
    return torch.cat(list(batches))


# ----------------------------------------------------------------------------------------------------------------
# The sample command


def cli_labels(pipe, class_labels: str | None, num_images: int | None, unconditional: bool) -> list[int]:
    """Class ids for every image from `--class_labels` (ids or names, checked by `resolve_class_labels`), cycled to
    `num_images`; every trained class once by default; 0 when unconditional (the trainer's label for
    unconditional data)."""
    if unconditional:
        labels = [0]
    elif class_labels is None:
        classes = pipeline_classes(pipe)
        labels = sorted(classes) if classes else [0]
    else:
        labels = resolve_class_labels(pipe, [part for part in class_labels.split(",") if part.strip()])
    if not labels:
        raise ValueError("--class_labels named no class.")
    count = num_images or len(labels)
    return [labels[i % len(labels)] for i in range(count)]


def check_local_path(parser: argparse.ArgumentParser, flag: str, value) -> None:
    """`parser.error` (exit 2 with the usage line, no traceback) when `value` looks like a local path (see
    `utils.hub.looks_local`) that does not exist: "no such folder" at once instead of Hub retries."""
    if value is not None and looks_local(value) and not os.path.exists(os.path.expanduser(str(value))):
        parser.error(f"{flag} {value}: no such folder (a local path that does not exist); check the path.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Sample images from a pipeline folder or Hub id (what the trainers export, or any DiTPipeline "
        "/ DDPMPipeline). Image i uses its own generator seeded --seed + i, so it is the same whatever the batch "
        "size. Writes one PNG per image, grid.png and samples.json."
    )
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="Pipeline folder or Hub id (loaded with DiffusionPipeline.from_pretrained).",
    )
    add_flags(parser, "--revision", "--class_labels", "--unconditional")
    parser.add_argument(
        "--num_images",
        type=int,
        default=None,
        help="Number of images; the class list is cycled. Default: one per listed class.",
    )
    add_flags(parser, "--seed")
    parser.add_argument("--seeds", type=str, default=None, help="Comma-separated seeds, one per image (overrides).")
    parser.add_argument(
        "--scheduler",
        type=str,
        default="default",
        choices=["default", *SCHEDULERS],
        help="Sampler; 'default' keeps the pipeline's (required settings of flow models are kept).",
    )
    add_flags(parser, "--num_inference_steps", "--guidance_scale", "--batch_size", batch_size=8)
    add_flags(parser, "--output_dir", output_dir="samples")
    parser.add_argument("--grid_columns", type=int, default=None, help="Grid columns (default: near square).")
    add_flags(parser, "--device")
    parser.add_argument("--dtype", type=str, default="float32", choices=sorted(DTYPES), help="Weights dtype.")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_local_path(parser, "--pretrained_model_name_or_path", args.pretrained_model_name_or_path)
    if args.num_images is not None and args.num_images < 1:
        parser.error("--num_images must be positive.")
    if args.batch_size < 1 or args.num_inference_steps < 1:
        parser.error("--batch_size and --num_inference_steps must be positive.")
    if args.guidance_scale is None:
        args.guidance_scale = 1.0 if args.unconditional else 1.8
    return args


def sample(args: argparse.Namespace) -> Path:
    """Sample as `args` (from `parse_args`) says; returns the output folder."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    claim_output_dir(args.output_dir, "sample", "samples.json", create=False)  # new, empty or earlier samples
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    # 1. Pipeline and scheduler
    pipe = load_pipeline(
        args.pretrained_model_name_or_path, revision=args.revision, device=device, kind="image", command="sample"
    )
    if args.dtype != "float32":
        pipe = pipe.to(dtype=DTYPES[args.dtype])
    set_scheduler(pipe, args.scheduler)

    # 2. Labels and seeds
    labels = cli_labels(pipe, args.class_labels, args.num_images, args.unconditional)
    if args.seeds is not None:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if len(seeds) != len(labels):
            raise ValueError(f"--seeds gives {len(seeds)} seeds for {len(labels)} images.")
    else:
        seeds = [args.seed + i for i in range(len(labels))]

    # 3. Sample and write
    batches = pipeline_samples(
        pipe,
        len(labels),
        args.batch_size,
        labels,
        args.num_inference_steps,
        args.guidance_scale,
        seeds=seeds,
    )
    images = torch.cat(list(batches))
    output_dir = claim_output_dir(args.output_dir, "sample", "samples.json")
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
    write_json(output_dir / "samples.json", record)
    logger.info("wrote %d images and grid.png to %s", len(names), output_dir)
    return output_dir
