"""The parts every training loop shares: the accelerator (and the GPU switches `--allow_tf32`,
`--use_torch_compile`), the optimizer + lr schedule (fused AdamW on CUDA), seeds per step, the training data loader
and its resume state, the accumulation window (gradient sync and the non-finite guard), EMA, tracker logging and the
Hub upload of the output folder. Checkpoints live in `checkpointing.py`. accelerate, diffusers and the data
streams are imported where used, so the trainers' flag parsers stay light."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..utils.images import image_grid
from ..utils.records import public_args, save_args_json, write_json
from ..utils.run_folders import claim_output_dir
from .args import Loading, Optimization, Outputs


if TYPE_CHECKING:
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel


__all__ = [
    "AccumulationWindow",
    "NonFiniteGuard",
    "adamw",
    "check_compile",
    "compile_model",
    "create_ema",
    "ema_weights",
    "learning_settings",
    "log_audio",
    "log_figure",
    "log_images",
    "make_accelerator",
    "make_optimizer",
    "optimizer_step",
    "push_output",
    "resume_data_state",
    "resume_training",
    "save_checkpoint_if_due",
    "set_tf32",
    "step_generator",
    "train_dataloader",
]

logger = logging.getLogger(__name__)


def make_accelerator(command: str, outputs: Outputs, optimization: Optimization, flags: dict) -> Accelerator:
    """An `Accelerator` writing into `outputs.output_dir` (trackers in `logging_dir`); seeds torch, saves the
    resolved flags (`flags`, secrets dropped) and starts the trackers. The folder is first claimed for `command`
    (`run_folders.claim_output_dir`): a new or empty folder, or an earlier run of the same trainer; anything else is
    refused before a file is written."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    output_dir = claim_output_dir(outputs.output_dir, command, ("training_args.json", "checkpoint-*/extra_state.json"))
    accelerator = Accelerator(
        mixed_precision=optimization.mixed_precision,
        log_with=None if outputs.report_to == "none" else outputs.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / outputs.logging_dir)
        ),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    torch.manual_seed(optimization.seed)
    if optimization.allow_tf32:
        set_tf32(True, accelerator.device)
    if optimization.use_torch_compile:
        check_compile(accelerator.device)
    if accelerator.is_main_process:
        save_args_json(public_args(flags), output_dir)
    if outputs.report_to != "none":
        accelerator.init_trackers(outputs.tracker_project_name)
    return accelerator


def make_optimizer(parameters, optimization: Optimization, accelerator, learning_rate: float | None = None):
    """AdamW with the `--adam_*` flags (fused kernels on CUDA) and the diffusers lr schedule `--lr_scheduler`
    (warm-up and length counted in optimizer steps, scaled by the number of processes as diffusers' examples do)."""
    from diffusers.optimization import get_scheduler

    learning_rate = optimization.learning_rate if learning_rate is None else learning_rate
    if optimization.scale_lr:
        scale = optimization.train_batch_size * optimization.gradient_accumulation_steps * accelerator.num_processes
        learning_rate *= scale
    optimizer = adamw(parameters, optimization, learning_rate, fused=torch.device(accelerator.device).type == "cuda")
    lr_scheduler = get_scheduler(
        optimization.lr_scheduler,
        optimizer,
        num_warmup_steps=optimization.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=optimization.max_train_steps * accelerator.num_processes,
    )
    return optimizer, lr_scheduler


def adamw(parameters, optimization: Optimization, learning_rate: float, fused: bool = False) -> torch.optim.AdamW:
    """AdamW with the `--adam_beta1/2`, `--adam_weight_decay` and `--adam_epsilon` flags; `fused` uses the fused
    kernels (one launch for all parameters: what to use on CUDA)."""
    return torch.optim.AdamW(
        parameters,
        lr=learning_rate,
        betas=(optimization.adam_beta1, optimization.adam_beta2),
        weight_decay=optimization.adam_weight_decay,
        eps=optimization.adam_epsilon,
        fused=True if fused else None,
    )


# ----------------------------------------------------------------------------------------------------------------
# GPU switches


def set_tf32(enabled: bool, device=None) -> None:
    """`--allow_tf32`: let float32 matmuls and convolutions use TF32 tensor cores on Ampere and newer GPUs (as
    diffusers' examples do; about 10 bits of mantissa in the products, several times the float32 speed). The flags
    are CUDA's, so a CPU run is unchanged (logged)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    if enabled and device is not None and torch.device(device).type != "cuda":
        logger.info("--allow_tf32 only affects CUDA devices; this run is on %s.", device)


def check_compile(device) -> None:
    """`--use_torch_compile`: compile a one-line function on `device` with torch.compile's default backend
    (inductor), so a machine where it cannot compile (no C++ compiler for the CPU backend, no Triton for GPUs)
    says so at start-up with the cause, rather than deep inside the first training step."""
    try:
        compiled = torch.compile(lambda x: torch.nn.functional.gelu(x) * 2 + 1)
        compiled(torch.ones(4, device=device))
    except Exception as error:  # BackendCompilerFailed, InvalidCxxCompiler, missing Triton, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RuntimeError(
            f"--use_torch_compile: torch.compile cannot compile on {device} here ({type(error).__name__}: "
            f"{reason[:300]}). Run without --use_torch_compile, or install what the backend needs (a C++ "
            "compiler for CPU, Triton for CUDA)."
        ) from error


def compile_model(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """`--use_torch_compile`: compile `model`'s forward in place (`nn.Module.compile`: same object, same parameter
    names, so checkpoints, EMA and `save_pretrained` are unchanged). The first steps are slow while it compiles."""
    if enabled:
        model.compile()
        logger.info("torch.compile: %s compiles on its first forward passes", type(model).__name__)
    return model


# ----------------------------------------------------------------------------------------------------------------
# Seeds, EMA, the non-finite guard


def step_generator(seed: int, global_step: int, micro_step: int, process_index: int, device) -> torch.Generator:
    """The generator of one micro-step (noise, timesteps, posterior sample, DSM level): a function of the step and
    process only, so a resumed run draws exactly what the uninterrupted run drew."""
    state = np.random.SeedSequence([seed, global_step, micro_step, process_index]).generate_state(1)[0]
    return torch.Generator(device=device).manual_seed(int(state))


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


def create_ema(model: torch.nn.Module, decay: float = 0.9999, **kwargs) -> EMAModel:
    """An `EMAModel` of `model`'s parameters that can `save_pretrained` the averaged model. Pass it to the
    `Checkpointer` (`emas={"name": ema}`), which saves it as safetensors (never pickled)."""
    from diffusers.training_utils import EMAModel

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
# Data and resume


def train_dataloader(
    dataset, read, accelerator, loading: Loading, state: dict | None = None, collate_fn=None, describe_read_error=None
):
    """The training loader every trainer uses: an endless, shuffled `ResumableStream` of this process's share of
    `dataset` (decoded by `read`) in `--train_batch_size` batches from `--dataloader_num_workers` workers, resumed
    from `state` (`resume_training`'s data state). Do not `accelerator.prepare` it: it is split already.
    `describe_read_error`: turns a failure to read the dataset itself (a corrupt shard) into the error to raise."""
    from ..data import ResumableStream, make_dataloader

    stream = ResumableStream(
        dataset,
        read,
        seed=loading.seed,
        shuffle_buffer_size=loading.shuffle_buffer_size,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
        describe_read_error=describe_read_error,
    )
    return make_dataloader(
        stream,
        loading.train_batch_size,
        num_workers=loading.dataloader_num_workers,
        collate_fn=collate_fn,
        state=state,
        pin_memory=torch.device(accelerator.device).type == "cuda",
        seed=loading.seed,
    )


def resume_data_state(state: dict, accelerator) -> dict | None:
    """This process's data-loader state from a checkpoint's extra state: `data_states` holds one loader state per
    process (every worker's position). A checkpoint written by another number of processes restarts every stream at
    the beginning of the earliest epoch reached (logged). Checkpoints from before per-worker states hold one
    position per process (`data_positions`), read as a single stream's position."""
    from ..data import stream_states

    states = state.get("data_states")
    if states is not None:
        if len(states) == accelerator.num_processes:
            return states[accelerator.process_index]
        epoch = min((s["epoch"] for loader in states for s in stream_states(loader)), default=0)
        logger.warning(
            "the checkpoint was written by %d processes, this run has %d: the data streams restart at the beginning "
            "of epoch %d.",
            len(states),
            accelerator.num_processes,
            epoch,
        )
        return {"epoch": epoch, "position": 0}
    positions = state.get("data_positions")
    if positions is None:
        return {"epoch": 0, "position": int(state.get("data_position", 0))}
    if len(positions) == accelerator.num_processes:
        return {"epoch": 0, "position": int(positions[accelerator.process_index])}
    logger.warning(
        "the checkpoint was written by %d processes, this run has %d: the data stream restarts at an approximate "
        "position.",
        len(positions),
        accelerator.num_processes,
    )
    return {"epoch": 0, "position": sum(positions) // accelerator.num_processes}


class AccumulationWindow:
    """One optimizer step = `accumulation` micro-steps, with DDP gradient sync on the last one only.

        window = AccumulationWindow(accelerator, [module, discriminator], accumulation)
        for micro_step in range(accumulation):
            with window.micro_step(micro_step):
                loss = ...
                window.backward(loss)          # always runs backward, records isfinite(loss) on the device
        if window.step_ok(guard):              # one gather + host sync per optimizer step
            optimizer.step()

    Backward runs on every micro-step, also for a non-finite loss, so the gradient all-reduce of the last
    micro-step happens on every process; the guard's decision uses the flag's minimum over processes, so every
    process either steps on the same all-reduced gradients or drops them. (Skipping backward on a non-finite last
    micro-step would leave the earlier `no_sync` gradients un-reduced while `optimizer.step()` still ran: replicas
    would drift apart.)
    """

    def __init__(self, accelerator, modules, accumulation: int):
        self.accelerator = accelerator
        self.modules = [m for m in modules if m is not None]
        self.accumulation = accumulation
        self.finite = torch.ones((), device=accelerator.device)

    @contextlib.contextmanager
    def micro_step(self, index: int):
        if index == 0:
            self.finite = torch.ones((), device=self.accelerator.device)
        with contextlib.ExitStack() as stack:
            if index < self.accumulation - 1:
                for module in self.modules:
                    stack.enter_context(self.accelerator.no_sync(module))
            yield

    def backward(self, loss: torch.Tensor) -> None:
        """Record whether `loss` is finite (no sync) and backpropagate `loss / accumulation`."""
        self.finite = self.finite * torch.isfinite(loss.detach()).all().float()
        self.accelerator.backward(loss / self.accumulation)

    def step_ok(self, guard) -> bool:
        return guard.step_ok(self.accelerator.gather(self.finite.reshape(1)).min())


def push_output(outputs: Outputs, folder: Path, repo_type: str = "model") -> list[str] | None:
    """Upload `folder` to `outputs.hub_model_id` when `--push_to_hub` (a dry run lists the files); the list of files
    is written to `hub_upload.json` in the output folder."""
    if not outputs.push_to_hub:
        return None
    from ..pipelines.model_cards import push_folder_to_hub

    files = push_folder_to_hub(
        folder,
        outputs.hub_model_id,
        repo_type,
        dry_run=outputs.hub_dry_run,
        private=outputs.hub_private_repo,
        token=outputs.hub_token,
    )
    upload = {"repo_id": outputs.hub_model_id, "dry_run": outputs.hub_dry_run, "files": files}
    write_json(Path(outputs.output_dir) / "hub_upload.json", upload)
    return files


def optimizer_step(window, guard, model, optimizer, lr_scheduler, ema=None, max_grad_norm: float = 0.0) -> dict:
    """The end of one optimizer step of a single-model trainer: when every loss of the accumulation window was
    finite on every process, clip (`max_grad_norm` > 0), step the optimizer and the EMA; then step the lr schedule
    and clear the gradients (a skipped window's gradients are dropped). Returns `{"grad_norm": ...}` when clipped
    (a device tensor: the caller converts its logs once per step)."""
    logs = {}
    if window.step_ok(guard):
        if max_grad_norm > 0:
            logs["grad_norm"] = window.accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        if ema is not None:
            ema.step(window.accelerator.unwrap_model(model).parameters())
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return logs


def save_checkpoint_if_due(checkpointer, global_step: int, dataloader, guard, every: int, last: int) -> None:
    """Every `every` steps and at step `last`: a checkpoint with each process's data-loader state (every worker's
    position) and the non-finite guard (call on every process)."""
    from accelerate.utils import gather_object

    if global_step % every == 0 or global_step == last:
        states = gather_object([dataloader.state_dict()])  # one per process, in process order
        checkpointer.save(global_step, {"data_states": states, "nonfinite": guard.state_dict()})


def learning_settings(flags: Mapping, keys) -> dict:
    """The flags among `keys` that change what a model learns, for `Checkpointer(settings=...)`: a checkpoint stores
    them and a resume under other values is refused. Regulariser weights count only as on / off (`<name>_on`), so a
    weight may be changed on resume but a term cannot appear or disappear."""
    settings = {}
    for key in keys:
        value = flags.get(key)
        if key.endswith("_weight") and isinstance(value, (int, float)):
            settings[key.removesuffix("_weight") + "_on"] = value > 0
        else:
            settings[key] = list(value) if isinstance(value, tuple) else value
    return settings


def resume_training(checkpointer, resume_from_checkpoint, max_nonfinite_steps: int):
    """Restore a run (`None`, `"latest"` or a checkpoint folder) and return `(global_step, data_state, guard)`:
    the step to continue from, this process's data-loader state (for `train_dataloader`) and the non-finite guard
    with its counts (a fresh start gives `(0, None, NonFiniteGuard(max_nonfinite_steps))`)."""
    from ..data import stream_states

    guard = NonFiniteGuard(max_nonfinite_steps)
    state = checkpointer.resume(resume_from_checkpoint)
    if state is None:
        return 0, None, guard
    global_step, data_state = state["global_step"], resume_data_state(state, checkpointer.accelerator)
    guard.load_state_dict(state["nonfinite"])
    positions = [(s["epoch"], s["position"]) for s in stream_states(data_state)]
    logger.info(
        "resumed from %s at step %d, data (epoch, position) per stream %s", state["checkpoint"], global_step, positions
    )
    return global_step, data_state, guard


# ----------------------------------------------------------------------------------------------------------------
# Tracker logging


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


def save_validation_grid(accelerator, images: torch.Tensor, step: int, output_dir: Path) -> Path:
    """`(B, 3, H, W)` samples in [-1, 1] as `<output_dir>/validation/step-<step>.png`, and logged to the trackers."""
    from PIL import Image

    path = Path(output_dir) / "validation" / f"step-{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(log_images(accelerator, "validation/samples", images, step)).save(path)
    return path


def log_figure(accelerator, tag: str, figure, step: int) -> None:
    """Log a matplotlib figure to the tensorboard / wandb trackers."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_figure(tag, figure, step, close=False)
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Image(figure)}, step=step)


def log_audio(accelerator, tag: str, clips: np.ndarray, sample_rate: int, step: int) -> None:
    """Log `(N, C, T)` clips (first channel) to tensorboard with `add_audio`."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for i, clip in enumerate(clips):
                tracker.writer.add_audio(f"{tag}/{i}", torch.from_numpy(clip[:1]), step, sample_rate=sample_rate)
