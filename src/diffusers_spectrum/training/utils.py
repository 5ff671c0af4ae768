"""Small shared pieces of the training loops: seeds per step, the non-finite guard, EMA, JSON and argument
helpers, and tracker logging. Checkpoints live in `checkpointing.py`."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch


if TYPE_CHECKING:
    from diffusers.training_utils import EMAModel


__all__ = [
    "NonFiniteGuard",
    "SECRET_ARGS",
    "create_ema",
    "ema_weights",
    "image_grid",
    "log_figure",
    "log_images",
    "parse_float_list",
    "parse_int_list",
    "public_args",
    "save_args_json",
    "step_generator",
    "write_json",
]

logger = logging.getLogger(__name__)


def write_json(path: str | Path, data, sort_keys: bool = True) -> Path:
    """Write `data` as indented JSON atomically (temporary file + rename), secrets filtered by the caller; the one
    JSON writer of the package (training args, metrics, reports, cache info)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=sort_keys, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    return path


def _json_default(value):
    if isinstance(value, (Path, torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def step_generator(seed: int, global_step: int, micro_step: int, process_index: int, device) -> torch.Generator:
    """The generator of one micro-step (noise, timesteps, posterior sample, DSM level): a function of the step and
    process only, so a resumed run draws exactly what the uninterrupted run drew."""
    state = np.random.SeedSequence([seed, global_step, micro_step, process_index]).generate_state(1)[0]
    return torch.Generator(device=device).manual_seed(int(state))


SECRET_ARGS = ("hub_token",)  # never written to JSON, model cards or logs


def public_args(args) -> dict:
    """The resolved flags (an `argparse.Namespace` or dict) without secrets such as the Hub token."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return {key: value for key, value in values.items() if key not in SECRET_ARGS}


def save_args_json(args, output_dir: str | Path, file_name: str = "training_args.json") -> Path:
    """Write the resolved arguments (an `argparse.Namespace` or dict), secrets dropped, as JSON into `output_dir`;
    returns the path."""
    values = public_args(args)
    values = {
        k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in values.items()
    }
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / file_name
    return write_json(path, values)


# ----------------------------------------------------------------------------------------------------------------
# Argument parsing


class ListArgumentError(argparse.ArgumentTypeError, ValueError):
    """A comma-separated list flag that does not parse (argparse shows the message)."""


def _parse_list(value, cast, kind: str) -> tuple:
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [item.strip() for item in str(value).split(",") if item.strip()]
    if not items:
        raise ListArgumentError(f"expected a comma-separated list of {kind}s such as '0,8,10,12', got {value!r}.")
    try:
        return tuple(cast(item) for item in items)
    except (TypeError, ValueError):
        raise ListArgumentError(f"expected a comma-separated list of {kind}s, got {value!r}.") from None


def parse_int_list(value) -> tuple[int, ...]:
    """`"0,8,10,12"` -> `(0, 8, 10, 12)`; use as an argparse `type`."""
    return _parse_list(value, int, "integer")


def parse_float_list(value) -> tuple[float, ...]:
    """`"0.5,1e-3"` -> `(0.5, 0.001)`; use as an argparse `type`."""
    return _parse_list(value, float, "number")


# ----------------------------------------------------------------------------------------------------------------
# Non-finite losses


class NonFiniteGuard:
    """Skip optimizer steps whose accumulation window saw a NaN / inf loss, and stop after `max_consecutive`
    skipped steps in a row.

    The training loops always run backward on every micro-step (so the last micro-step's gradient all-reduce
    happens on every process, also when its loss is not finite), accumulate `finite &= isfinite(loss)` on the
    device without a host sync, and ask `step_ok` once per optimizer step with that flag's minimum over processes
    (`training.loop.AccumulationWindow` does all of this). Every process then takes the same decision: either all step
    on all-reduced gradients, or all drop the window's gradients. Replicas never drift apart.
    """

    def __init__(self, max_consecutive: int = 10):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}.")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def step_ok(self, finite) -> bool:
        """`finite`: a tensor (or number) that is 1 / True when every loss of the window on every process was
        finite. Returns whether to take the optimizer step; one host sync per optimizer step."""
        ok = bool(finite) if not isinstance(finite, torch.Tensor) else bool(finite.detach().float().min() > 0.5)
        if ok:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        logger.warning(
            "non-finite loss: skipping the optimizer step (%d in a row, %d in total)", self.consecutive, self.total
        )
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(
                f"the loss was non-finite for {self.consecutive} steps in a row; stopping. Lower the learning rate, "
                "use bf16 instead of fp16, check the data, or raise --max_nonfinite_steps."
            )
        return False

    def check(self, loss) -> bool:
        """Convenience for a single loss: `True` when the step must be skipped (`not step_ok(isfinite(loss))`)."""
        value = loss.detach().float() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
        return not self.step_ok(torch.isfinite(value).all())

    def state_dict(self) -> dict:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive, self.total = int(state["consecutive"]), int(state["total"])


# ----------------------------------------------------------------------------------------------------------------
# EMA


def create_ema(model: torch.nn.Module, decay: float = 0.9999, **kwargs) -> EMAModel:
    """An `EMAModel` of `model`'s parameters that can `save_pretrained` the averaged model. Pass it to the
    `Checkpointer` (`emas={"name": ema}`), which saves it as safetensors (never pickled)."""
    from diffusers.training_utils import EMAModel  # here: the flag parsers import this module without diffusers

    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}.")
    return EMAModel(model.parameters(), decay=decay, model_cls=type(model), model_config=model.config, **kwargs)


@contextlib.contextmanager
def ema_weights(ema: EMAModel | None, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Temporarily load the EMA weights into `model` (no-op when `ema` is None); restores the trained weights."""
    if ema is None:
        yield model
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield model
    finally:
        ema.restore(model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Logging


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """`(B, 3, H, W)` in [-1, 1] -> one `(rows*(H+p)+p, nrow*(W+p)+p, 3)` uint8 grid (white padding)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"image_grid: images must be (B, 1 or 3, H, W), got {tuple(images.shape)}.")
    batch, _, height, width = images.shape
    nrow = nrow or math.ceil(math.sqrt(batch))
    rows = math.ceil(batch / nrow)
    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    array = np.repeat(array, 3 // array.shape[1], axis=1).transpose(0, 2, 3, 1)  # (B, H, W, 3)
    grid = np.full((rows * (height + padding) + padding, nrow * (width + padding) + padding, 3), 255, np.uint8)
    for i, image in enumerate(array):
        top, left = padding + (i // nrow) * (height + padding), padding + (i % nrow) * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid


def log_images(accelerator, tag: str, images: torch.Tensor, step: int, nrow: int | None = None) -> np.ndarray:
    """Log a grid of `(B, 3, H, W)` images in [-1, 1] to the tensorboard / wandb trackers; returns the grid."""
    grid = image_grid(images, nrow)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, grid, step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Image(grid)}, step=step)
    return grid


def log_figure(accelerator, tag: str, figure, step: int) -> None:
    """Log a matplotlib figure to the tensorboard / wandb trackers."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_figure(tag, figure, step, close=False)
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Image(figure)}, step=step)
