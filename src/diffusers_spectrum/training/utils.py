"""Reusable pieces of the training scripts: crash-safe checkpoints, resume, non-finite guard, EMA, argument parsing
and logging helpers. Built on `accelerate` (state saving, trackers) and `diffusers.training_utils.EMAModel`."""

import argparse
import contextlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from diffusers.training_utils import EMAModel


__all__ = [
    "CHECKPOINT_PREFIX",
    "NonFiniteGuard",
    "SECRET_ARGS",
    "create_ema",
    "ema_weights",
    "find_resume_checkpoint",
    "image_grid",
    "list_checkpoints",
    "load_checkpoint",
    "log_figure",
    "log_images",
    "parse_float_list",
    "parse_int_list",
    "public_args",
    "save_args_json",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
EXTRA_STATE_NAME = "extra_state.json"  # written last: its presence marks a complete checkpoint
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete `checkpoint-<step>` folders in `output_dir`, oldest step first (temporary / partial ones excluded)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match and path.is_dir() and (path / EXTRA_STATE_NAME).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    global_step: int,
    checkpoints_total_limit: int | None = None,
    extra_state: dict | None = None,
) -> Path:
    """Save the accelerate state (models, optimizers, schedulers, RNGs, registered objects such as EMA) as
    `output_dir/checkpoint-<global_step>`, crash-safely.

    The state goes to a hidden temporary folder first; `extra_state` (JSON-serialisable, plus `global_step`) is
    written last and marks it complete; only then is it renamed into place (an atomic rename), and only after that
    are old checkpoints pruned to `checkpoints_total_limit`. A crash at any point leaves the previous checkpoints
    intact, and `find_resume_checkpoint` ignores partial folders. Call on every process.
    """
    if checkpoints_total_limit is not None and checkpoints_total_limit < 1:
        raise ValueError(f"checkpoints_total_limit must be >= 1 or None, got {checkpoints_total_limit}.")
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{global_step}"
    temporary = output_dir / f".{final.name}.tmp"
    state = {**(extra_state or {}), "global_step": int(global_step)}
    json.dumps(state)  # fail before writing anything if it is not serialisable

    # 1. Fresh temporary folder
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()

    # 2. Write the state, then the completion marker
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json_atomic(temporary / EXTRA_STATE_NAME, state)

        # 3. Swap into place; a same-step checkpoint is moved aside first and removed after the rename
        previous = output_dir / f".{final.name}.old"
        if final.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(final, previous)
        os.replace(temporary, final)
        shutil.rmtree(previous, ignore_errors=True)

        # 4. Prune the oldest
        if checkpoints_total_limit is not None:
            checkpoints = list_checkpoints(output_dir)
            for old in checkpoints[: max(len(checkpoints) - checkpoints_total_limit, 0)]:
                logger.info("removing old checkpoint %s", old)
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    logger.info("saved checkpoint %s", final)
    return final


def find_resume_checkpoint(output_dir: str | Path, resume_from_checkpoint: str | Path | None) -> Path | None:
    """The checkpoint to resume from: `None` -> `None`; `"latest"` -> the newest complete checkpoint in
    `output_dir` (or `None`, with a log line, when there is none yet); otherwise a path, absolute or relative to
    `output_dir`, which must be a complete checkpoint."""
    if resume_from_checkpoint is None:
        return None
    if str(resume_from_checkpoint) == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            logger.info("resume_from_checkpoint='latest' but %s holds no checkpoint; starting fresh.", output_dir)
            return None
        return checkpoints[-1]
    path = Path(resume_from_checkpoint)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / path
    if not (path / EXTRA_STATE_NAME).is_file():
        raise ValueError(
            f"resume_from_checkpoint={str(resume_from_checkpoint)!r} is not a complete checkpoint (no "
            f"{EXTRA_STATE_NAME} in {path}); pass 'latest' or a checkpoint-<step> folder."
        )
    return path


def load_checkpoint(accelerator, path: str | Path) -> dict:
    """Restore the accelerate state saved by `save_checkpoint`; returns its `extra_state` (with `global_step`)."""
    path = Path(path)
    if not (path / EXTRA_STATE_NAME).is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {EXTRA_STATE_NAME}).")
    accelerator.load_state(str(path))
    with open(path / EXTRA_STATE_NAME, encoding="utf-8") as f:
        return json.load(f)


def _write_json_atomic(path: Path, data) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


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
    _write_json_atomic(path, values)
    return path


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
    """Skip optimisation steps whose loss is NaN / inf, and stop after `max_consecutive` of them in a row.

    `check(loss)` returns `True` when the step must be skipped (no backward / optimizer step). Pass a loss that is
    identical on every process (e.g. `accelerator.reduce(loss.detach(), "mean")`) so all processes skip together.
    """

    def __init__(self, max_consecutive: int = 10):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}.")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def check(self, loss) -> bool:
        value = loss.detach().float() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
        if bool(torch.isfinite(value).all()):
            self.consecutive = 0
            return False
        self.consecutive += 1
        self.total += 1
        logger.warning(
            "non-finite loss (%s): skipping the step (%d in a row, %d in total)",
            value.flatten()[:4].tolist(),
            self.consecutive,
            self.total,
        )
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(
                f"the loss was non-finite for {self.consecutive} steps in a row; stopping. Lower the learning rate, "
                "use bf16 instead of fp16, check the data, or raise --max_nonfinite_steps."
            )
        return True

    def state_dict(self) -> dict:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive, self.total = int(state["consecutive"]), int(state["total"])


# ----------------------------------------------------------------------------------------------------------------
# EMA


def create_ema(model: torch.nn.Module, decay: float = 0.9999, **kwargs) -> EMAModel:
    """An `EMAModel` of `model`'s parameters that can `save_pretrained` the averaged model. Register it with
    `accelerator.register_for_checkpointing(ema)` so `save_checkpoint` / `load_checkpoint` carry it."""
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
