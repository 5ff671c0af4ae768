"""Sampling any diffusers image pipeline reproducibly: one generator per image (seed + index), so an image does not
depend on the batch size or its position in the batch; class labels checked against what the pipeline was trained
on. Used by validation during training, `sample`, the evaluation scripts and the benchmarks."""

import inspect
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm


__all__ = ["pipeline_classes", "pipeline_samples", "resolve_class_labels", "sample_images"]


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
) -> Iterator[torch.Tensor]:
    """Yield sample batches `(B, C, H, W)` in [-1, 1] (float32, CPU) from any diffusers image pipeline.

    Image `i` uses its own generator seeded `seed + i`. Class-conditional pipelines (a `class_labels` argument, as
    `DiTPipeline`) cycle through `class_labels` (default `[0]`) with `guidance_scale`; unconditional ones (e.g.
    `DDPMPipeline`, `DDIMPipeline`) get `batch_size`.
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be positive, got {num_samples} and {batch_size}.")
    parameters = inspect.signature(pipeline.__call__).parameters
    labels = [int(label) for label in (class_labels or [0])]
    device = getattr(pipeline, "_execution_device", torch.device("cpu"))
    for start in tqdm(range(0, num_samples, batch_size), desc="sample", disable=not progress):
        count = min(batch_size, num_samples - start)
        generators = [torch.Generator(device=device).manual_seed(seed + start + i) for i in range(count)]
        kwargs = {"num_inference_steps": num_inference_steps, "generator": generators, "output_type": "np"}
        if "class_labels" in parameters:
            kwargs["class_labels"] = [labels[(start + i) % len(labels)] for i in range(count)]
            kwargs["guidance_scale"] = guidance_scale
        else:
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
        pipe, len(labels), batch_size or max(len(labels), 1), labels, num_inference_steps, guidance_scale, seed,
        progress=False,
    )  # fmt: skip
    return torch.cat(list(batches))
