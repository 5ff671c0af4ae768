"""Crash-safe, pickle-free training checkpoints on top of `accelerate.save_state` / `load_state`.

A checkpoint `output_dir/checkpoint-<step>/` holds

- one `save_pretrained` folder per model (`<name>/config.json` + safetensors; plain `nn.Module`s such as the PatchGAN
  discriminator as `<name>/model.safetensors`), written by accelerate save/load hooks as diffusers' examples do;
- `ema_<name>/ema.safetensors` + `ema_<name>/ema_state.json` for each EMA;
- accelerate's optimizer / scheduler / RNG files, which accelerate reads back with `torch.load(weights_only=True)`;
- `extra_state.json` (step, data positions, the non-finite guard), written last: it marks the checkpoint complete.

Nothing we write is unpickled on resume. Saving goes to a hidden temporary folder that is renamed into place (an
atomic rename); pruning renames an old checkpoint to a hidden name *before* deleting it, so a kill at any moment
leaves only complete `checkpoint-<step>` folders visible. `extra_state.json` lists the files the checkpoint wrote:
pruning deletes those, and a file someone else put in the folder stays. (diffusers and safetensors are imported
where used, so the trainers' flag parsers stay light.)
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..utils.records import write_json


if TYPE_CHECKING:
    from diffusers.training_utils import EMAModel


__all__ = [
    "CHECKPOINT_PREFIX",
    "Checkpointer",
    "check_resume_settings",
    "find_resume_checkpoint",
    "list_checkpoints",
    "load_ema_state",
    "save_ema_state",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
EXTRA_STATE_NAME = "extra_state.json"  # written last: its presence marks a complete checkpoint
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


# ----------------------------------------------------------------------------------------------------------------
# Finding checkpoints


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete `checkpoint-<step>` folders in `output_dir`, oldest step first (temporary, partial and
    being-deleted folders excluded)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match and path.is_dir() and (path / EXTRA_STATE_NAME).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


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


def _foreign_files(folder: Path) -> list[Path]:
    """Files in a checkpoint folder that the checkpoint did not write (its `extra_state.json` lists what it wrote;
    a checkpoint from before that list is taken to hold only its own files)."""
    try:
        written = json.loads((folder / EXTRA_STATE_NAME).read_text(encoding="utf-8")).get("files")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        written = None
    if written is None:
        return []
    written = set(written) | {EXTRA_STATE_NAME}
    return [p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() not in written]


def _delete(doomed: Path, visible: Path) -> None:
    """Delete a hidden, being-deleted checkpoint folder; files it did not write (a user's notes) are kept: the
    checkpoint's own files go and the folder is renamed back to `visible` without its completion marker."""
    keep = _foreign_files(doomed)
    if not keep:
        shutil.rmtree(doomed, ignore_errors=True)
        return
    keep_names = {p.relative_to(doomed).as_posix() for p in keep}
    for path in sorted(doomed.rglob("*"), key=lambda p: -len(p.parts)):
        if path.is_file() and path.relative_to(doomed).as_posix() not in keep_names:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if not visible.exists():
        os.replace(doomed, visible)
    logger.warning("kept %d file(s) in %s that the checkpoint did not write (%s)", len(keep), visible, keep[0].name)


def _remove(path: Path) -> None:
    """Delete a checkpoint folder so that no half-deleted folder is ever visible under a checkpoint name: rename it
    to a hidden name first (atomic), then delete what the checkpoint wrote (`_delete`)."""
    doomed = path.with_name(f".{path.name}.deleting")
    if doomed.exists():
        _delete(doomed, path.with_name(path.name + ".kept"))
    os.replace(path, doomed)
    _delete(doomed, path)


def _clean_leftovers(output_dir: Path) -> None:
    """Remove the hidden temporary / being-deleted checkpoint folders a killed run left behind (files in them that a
    checkpoint did not write are kept, `_delete`)."""
    for path in output_dir.glob(f".{CHECKPOINT_PREFIX}*"):
        if path.is_dir() and path.name.endswith((".tmp", ".old", ".deleting")):
            _delete(path, path.with_name(path.name[1:].rsplit(".", 1)[0]))


# ----------------------------------------------------------------------------------------------------------------
# Models and EMA as safetensors


def _save_module(module: torch.nn.Module, folder: Path) -> None:
    from diffusers import ModelMixin
    from safetensors.torch import save_file

    if isinstance(module, ModelMixin):
        module.save_pretrained(folder, safe_serialization=True)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, folder / "model.safetensors")


def _load_module(module: torch.nn.Module, folder: Path) -> None:
    from diffusers import ModelMixin
    from safetensors.torch import load_file

    if not folder.is_dir():
        raise FileNotFoundError(
            f"checkpoint is missing the model folder {folder}; it was not written by this trainer."
        )
    if isinstance(module, ModelMixin):
        shards = sorted(folder.glob("*.safetensors"))  # one file, or the shards of a large model
        if not shards:
            raise FileNotFoundError(f"no safetensors weights in {folder}.")
        state = {key: value for shard in shards for key, value in load_file(shard).items()}
    else:
        state = load_file(folder / "model.safetensors")
    module.load_state_dict(state, strict=True)


def save_ema_state(ema: EMAModel, folder: str | Path) -> None:
    """EMA shadow parameters as `ema.safetensors`, its counters and settings as `ema_state.json`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    save_file({f"shadow.{i}": p.detach().contiguous().cpu() for i, p in enumerate(shadow)}, folder / "ema.safetensors")
    write_json(folder / "ema_state.json", {k: v for k, v in state.items() if k != "collected_params"})


def load_ema_state(ema: EMAModel, folder: str | Path) -> None:
    """Inverse of `save_ema_state` (no unpickling)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    with open(folder / "ema_state.json", encoding="utf-8") as f:
        state = json.load(f)
    tensors = load_file(folder / "ema.safetensors")
    state["shadow_params"] = [tensors[f"shadow.{i}"] for i in range(len(tensors))]
    ema.load_state_dict(state)


# ----------------------------------------------------------------------------------------------------------------
# The checkpointer


class Checkpointer:
    """Save and restore a training run: the prepared models (by name), EMAs, optimizers, schedulers and RNGs.

    Create it *after* `accelerator.prepare`, with the prepared models in the order they were prepared:

        checkpointer = Checkpointer(accelerator, output_dir, {"vae": module, "discriminator": disc}, {"vae": ema})
        extra = checkpointer.resume("latest")          # dict (extra_state) or None
        checkpointer.save(global_step, {"data_states": [loader.state_dict()]})

    Wrappers that are not `ModelMixin`s but hold one as `.wrapped_model` (e.g. the VAE trainer's loss module) are
    saved as that model's `save_pretrained` folder.
    """

    def __init__(
        self,
        accelerator,
        output_dir: str | Path,
        models: dict[str, torch.nn.Module],
        emas: dict[str, EMAModel] | None = None,
        total_limit: int | None = None,
        settings: dict | None = None,
    ):
        if total_limit is not None and total_limit < 1:
            raise ValueError(f"checkpoints_total_limit must be >= 1 or None, got {total_limit}.")
        self.accelerator = accelerator
        self.output_dir = Path(output_dir)
        self.names = list(models)
        self.emas = dict(emas or {})
        self.total_limit = total_limit
        # what the model learns (formulation, objective, resolution, model, regularisers): stored in every checkpoint,
        # and a resume under other values is refused (`check_resume_settings`)
        self.settings = json.loads(json.dumps(settings, default=str)) if settings is not None else None
        accelerator.register_save_state_pre_hook(self._save_hook)
        accelerator.register_load_state_pre_hook(self._load_hook)

    def _inner(self, model: torch.nn.Module) -> torch.nn.Module:
        model = self.accelerator.unwrap_model(model)
        return getattr(model, "wrapped_model", model)

    def _save_hook(self, models, weights, output_dir) -> None:
        if len(models) != len(self.names):
            raise RuntimeError(f"Checkpointer knows models {self.names} but accelerate prepared {len(models)}.")
        if self.accelerator.is_main_process:
            for name, model in zip(self.names, models, strict=True):
                _save_module(self._inner(model), Path(output_dir) / name)
            for name, ema in self.emas.items():
                save_ema_state(ema, Path(output_dir) / f"ema_{name}")
        weights.clear()  # accelerate then writes no pickled model files

    def _load_hook(self, models, input_dir) -> None:
        for name in self.names:
            _load_module(self._inner(models.pop(0)), Path(input_dir) / name)
        for name, ema in self.emas.items():
            load_ema_state(ema, Path(input_dir) / f"ema_{name}")

    def save(self, global_step: int, extra_state: dict | None = None) -> Path:
        """Write `checkpoint-<global_step>` crash-safely, then prune to `total_limit`. Call on every process."""
        accelerator, output_dir = self.accelerator, self.output_dir
        final = output_dir / f"{CHECKPOINT_PREFIX}{global_step}"
        temporary = output_dir / f".{final.name}.tmp"
        state = {**(extra_state or {}), "global_step": int(global_step)}
        if self.settings is not None:
            state["settings"] = self.settings
        json.dumps(state)  # fail before writing anything if it is not serialisable

        if accelerator.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(temporary, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            # what this checkpoint wrote (pruning deletes these and nothing else), then the completion marker
            state["files"] = sorted(p.relative_to(temporary).as_posix() for p in temporary.rglob("*") if p.is_file())
            write_json(temporary / EXTRA_STATE_NAME, state)  # completion marker, written last
            if final.exists():  # a same-step checkpoint (a re-run) is replaced
                _remove(final)
            os.replace(temporary, final)
            if self.total_limit is not None:
                checkpoints = list_checkpoints(output_dir)
                for old in checkpoints[: max(len(checkpoints) - self.total_limit, 0)]:
                    logger.info("removing old checkpoint %s", old)
                    _remove(old)
        accelerator.wait_for_everyone()
        logger.info("saved checkpoint %s", final)
        return final

    def resume(self, resume_from_checkpoint: str | Path | None) -> dict | None:
        """Restore the state of `resume_from_checkpoint` (`None`, `"latest"` or a path); returns its extra state
        (with `global_step`) or `None` when there is nothing to resume."""
        if self.accelerator.is_main_process and self.output_dir.is_dir():
            _clean_leftovers(self.output_dir)
        path = find_resume_checkpoint(self.output_dir, resume_from_checkpoint)
        if path is None:
            return None
        try:
            with open(path / EXTRA_STATE_NAME, encoding="utf-8") as f:
                state = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(
                f"{path / EXTRA_STATE_NAME} is not valid JSON ({error}); resume from another checkpoint-<step>."
            ) from None
        if self.settings is not None and state.get("settings") is not None:
            check_resume_settings(state["settings"], self.settings, path)
        try:
            self.accelerator.load_state(str(path))
        except pickle.UnpicklingError as error:  # torch.load(weights_only=True) refused a file: not plain tensors
            raise ValueError(
                f"checkpoint {path}: {_refused_file(path)} holds pickled objects other than tensors, which are never "
                f"loaded (torch: {str(error).splitlines()[0]}); this trainer did not write it. Delete {path} and "
                "resume from an earlier checkpoint (or start fresh)."
            ) from None
        state["checkpoint"] = str(path)
        return state


def _refused_file(folder: Path) -> str:
    """The first file of a checkpoint that `torch.load(weights_only=True)` refuses (for the error message)."""
    for file in sorted(folder.rglob("*")):
        if file.is_file() and file.suffix in (".bin", ".pkl", ".pt", ".pth"):
            try:
                torch.load(file, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                return str(file)
            except Exception:  # noqa: BLE001 - another defect; only the refused file is named here
                continue
    return "a file"


def check_resume_settings(saved: dict, current: dict, checkpoint: str | Path) -> None:
    """A `ValueError` naming every setting that differs between a checkpoint (`saved`) and this run (`current`):
    resuming under another formulation, objective, resolution, model or regulariser would train (and export)
    something else than the checkpoint learned."""
    changed = [
        f"--{key} {saved.get(key)!r} -> {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
    if changed:
        raise ValueError(
            f"cannot resume from {checkpoint}: it was trained with other settings ({'; '.join(changed)}). Pass the "
            "checkpoint's values (see training_args.json beside it), or a new --output_dir to start a new run."
        )
