"""Checkpoints that survive crashes, resume lookup, the non-finite guard, EMA round trips, list flags, image grids."""

import argparse
import json
import math
import pathlib
import pickle

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from diffusers_spectrum.training import checkpointing
from diffusers_spectrum.training.checkpointing import Checkpointer, find_resume_checkpoint, list_checkpoints
from diffusers_spectrum.training.loop import NonFiniteGuard, create_ema, ema_weights
from diffusers_spectrum.utils.flags import parse_float_list, parse_int_list
from diffusers_spectrum.utils.images import image_grid
from diffusers_spectrum.utils.records import save_args_json


class TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.config = {"in": 3}

    def forward(self, x):
        return self.linear(x)


def _prepared(tmp_path, seed: int = 0, limit=None, ema: bool = False):
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = TinyModel()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    emas = {"model": create_ema(accelerator.unwrap_model(model), decay=0.5)} if ema else None
    checkpointer = Checkpointer(accelerator, tmp_path, {"model": model}, emas, limit)
    return checkpointer, model, optimizer


def _train_step(model, optimizer):
    loss = model(torch.ones(4, 3)).square().mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_checkpoints_round_trip_and_are_pruned_to_the_limit(tmp_path):
    checkpointer, model, optimizer = _prepared(tmp_path, limit=2)
    for step in (1, 2, 3, 4):
        _train_step(model, optimizer)
        path = checkpointer.save(step, {"data_position": step})
        assert path.name == f"checkpoint-{step}"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-3", "checkpoint-4"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    # weights are safetensors in a folder per model; nothing pickled is written for them
    assert (tmp_path / "checkpoint-4" / "model" / "model.safetensors").is_file()
    assert not list((tmp_path / "checkpoint-4").glob("custom_checkpoint*"))
    assert not list((tmp_path / "checkpoint-4").rglob("*model*.bin"))  # optimizer.bin: accelerate, weights_only
    weights = model.linear.weight.detach().clone()

    _train_step(model, optimizer)  # move away, then restore
    assert not torch.equal(model.linear.weight, weights)
    state = checkpointer.resume("latest")
    assert state["data_position"] == 4 and state["global_step"] == 4
    assert torch.equal(model.linear.weight, weights)


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    checkpointer, model, optimizer = _prepared(tmp_path, limit=1)
    accelerator = checkpointer.accelerator
    checkpointer.save(10)
    saved = model.linear.weight.detach().clone()
    _train_step(model, optimizer)

    real_save_state = accelerator.save_state

    def crash_midway(output_dir, **kwargs):
        real_save_state(output_dir, **kwargs)  # the files are written ...
        raise KeyboardInterrupt("killed while saving")  # ... but the process dies before completing

    monkeypatch.setattr(accelerator, "save_state", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save(20)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10"]
    assert find_resume_checkpoint(tmp_path, "latest").name == "checkpoint-10"
    monkeypatch.undo()

    checkpointer.resume("latest")  # also clears the partial folder
    assert torch.equal(model.linear.weight, saved)
    checkpointer.save(20)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-20"]


def test_a_kill_while_pruning_never_leaves_a_half_deleted_checkpoint_listed(tmp_path, monkeypatch):
    checkpointer, model, optimizer = _prepared(tmp_path, limit=1)
    checkpointer.save(1)
    _train_step(model, optimizer)
    real_rmtree = checkpointing.shutil.rmtree

    def die_after_one_file(path, *args, **kwargs):
        path = pathlib.Path(path)
        if path.name.endswith(".deleting") and path.exists():
            next(p for p in path.rglob("*") if p.is_file()).unlink()  # part of the folder is gone ...
            raise KeyboardInterrupt("killed while pruning")  # ... when the process dies
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(checkpointing.shutil, "rmtree", die_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save(2)  # prunes checkpoint-1
    monkeypatch.undo()
    # only the complete new checkpoint is visible; the half-deleted one is hidden and never offered for resuming
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]
    assert find_resume_checkpoint(tmp_path, "latest").name == "checkpoint-2"
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        find_resume_checkpoint(tmp_path, "checkpoint-1")
    assert checkpointer.resume("latest")["global_step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-2"]  # leftovers cleaned on resume


class _Payload:
    """Unpickling this touches a file: the marker of code run from a checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_resuming_never_unpickles_a_planted_payload(tmp_path):
    checkpointer, model, optimizer = _prepared(tmp_path / "run", ema=True)
    _train_step(model, optimizer)
    path = checkpointer.save(1)
    marker = tmp_path / "pwned"
    # accelerate's own RNG file is read with torch.load(weights_only=True); model files are never opened
    for name in ("pytorch_model.bin", "model/pytorch_model.bin", "random_states_0.pkl"):
        with open(path / name, "wb") as f:
            pickle.dump(_Payload(marker), f)
    checkpointer.resume("latest")
    assert not marker.exists()
    # a planted custom_checkpoint_*.pkl (accelerate fully unpickles those for objects registered for
    # checkpointing; we register none) is refused before it is read
    with open(path / "custom_checkpoint_0.pkl", "wb") as f:
        pickle.dump(_Payload(marker), f)
    with pytest.raises(RuntimeError, match="custom checkpoints"):
        checkpointer.resume("latest")
    assert not marker.exists()


def test_a_planted_pickle_in_the_optimizer_state_is_one_error_naming_the_file(tmp_path):
    checkpointer, model, optimizer = _prepared(tmp_path / "run")
    _train_step(model, optimizer)
    path = checkpointer.save(1)
    marker = tmp_path / "pwned"
    with open(path / "optimizer.bin", "wb") as f:
        pickle.dump(_Payload(marker), f)
    with pytest.raises(ValueError) as caught:
        checkpointer.resume("latest")
    message = str(caught.value)
    assert "\n" not in message and str(path / "optimizer.bin") in message and "Delete" in message
    assert not marker.exists()


def test_resume_refuses_settings_that_change_what_the_model_learns(tmp_path):
    def checkpointer_with(settings):
        checkpointer, _, _ = _prepared(tmp_path)
        checkpointer.settings = settings
        return checkpointer

    settings = {"formulation": "edm", "resolution": 32, "fourier_on": True}
    checkpointer_with(settings).save(1)
    with pytest.raises(ValueError) as caught:
        checkpointer_with({"formulation": "ddpm", "resolution": 32, "fourier_on": False}).resume("latest")
    message = str(caught.value)
    assert "--formulation 'edm' -> 'ddpm'" in message and "--fourier_on True -> False" in message
    assert "resolution" not in message and "\n" not in message
    state = checkpointer_with(dict(settings)).resume("latest")
    assert state["global_step"] == 1 and state["settings"] == settings


def test_pruning_deletes_what_the_checkpoint_wrote_and_keeps_a_users_file(tmp_path):
    checkpointer, model, optimizer = _prepared(tmp_path, limit=1)
    first = checkpointer.save(1)
    written = json.loads((first / "extra_state.json").read_text())["files"]
    assert "optimizer.bin" in written and all((first / name).is_file() for name in written)
    (first / "notes.txt").write_text("mine")
    _train_step(model, optimizer)
    checkpointer.save(2)  # prunes checkpoint-1
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]
    assert [p.relative_to(first).as_posix() for p in first.rglob("*")] == ["notes.txt"]
    assert (first / "notes.txt").read_text() == "mine"


def test_saving_the_same_step_twice_replaces_it(tmp_path):
    checkpointer, _, _ = _prepared(tmp_path)
    checkpointer.save(5, {"v": 1})
    checkpointer.save(5, {"v": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-5"]
    assert json.loads((tmp_path / "checkpoint-5" / "extra_state.json").read_text())["v"] == 2


def test_find_resume_checkpoint_cases(tmp_path):
    assert find_resume_checkpoint(tmp_path, None) is None
    assert find_resume_checkpoint(tmp_path, "latest") is None  # nothing yet: start fresh
    checkpointer, _, _ = _prepared(tmp_path)
    for step in (9, 10, 100):
        checkpointer.save(step)
    assert find_resume_checkpoint(tmp_path, "latest").name == "checkpoint-100"  # numeric, not lexical order
    assert find_resume_checkpoint(tmp_path, "checkpoint-9") == tmp_path / "checkpoint-9"
    assert find_resume_checkpoint(tmp_path, tmp_path / "checkpoint-10") == tmp_path / "checkpoint-10"
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        find_resume_checkpoint(tmp_path, "checkpoint-7")
    with pytest.raises(ValueError, match="checkpoints_total_limit"):
        Checkpointer(checkpointer.accelerator, tmp_path, {}, total_limit=0)


def test_ema_state_travels_with_checkpoints_as_safetensors(tmp_path):
    checkpointer, model, optimizer = _prepared(tmp_path, ema=True)
    raw = checkpointer.accelerator.unwrap_model(model)
    ema = checkpointer.emas["model"]
    for _ in range(3):
        _train_step(model, optimizer)
        ema.step(raw.parameters())
    shadow = [p.clone() for p in ema.shadow_params]
    path = checkpointer.save(3)
    assert (path / "ema_model" / "ema.safetensors").is_file() and not list(path.glob("custom_checkpoint*"))
    ema.step(raw.parameters())
    assert not torch.equal(ema.shadow_params[0], shadow[0])
    checkpointer.resume("latest")
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow_params, shadow, strict=True))
    assert ema.optimization_step == 3

    trained = raw.linear.weight.detach().clone()
    with ema_weights(ema, raw):
        assert torch.equal(raw.linear.weight, shadow[0])
    assert torch.equal(raw.linear.weight, trained)
    with pytest.raises(ValueError, match="decay"):
        create_ema(raw, decay=1.0)


def test_nonfinite_guard_skips_and_stops_after_n_in_a_row():
    guard = NonFiniteGuard(max_consecutive=3)
    assert guard.check(torch.tensor(1.0)) is False
    assert guard.check(torch.tensor(float("nan"))) is True
    assert guard.check(float("inf")) is True
    assert guard.check(torch.tensor(0.5)) is False  # a finite loss resets the run
    assert guard.consecutive == 0 and guard.total == 2
    guard.check(torch.tensor(float("nan")))
    guard.check(torch.tensor(float("-inf")))
    with pytest.raises(RuntimeError, match="3 steps in a row"):
        guard.check(torch.tensor([1.0, float("nan")]))
    restored = NonFiniteGuard(3)
    restored.load_state_dict(guard.state_dict())
    assert restored.total == 5


def test_list_flags_parse_and_report_bad_values():
    assert parse_int_list("0,8,10,12") == (0, 8, 10, 12)
    assert parse_int_list(" 3 ") == (3,)
    assert parse_float_list("0.5, 1e-3") == (0.5, 0.001)
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsm_levels", type=parse_int_list)
    assert parser.parse_args(["--dsm_levels", "0,8"]).dsm_levels == (0, 8)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_int_list("0,eight")
    with pytest.raises(ValueError, match="comma-separated"):
        parse_float_list(",")


def test_save_args_json_writes_plain_json(tmp_path):
    from pathlib import Path

    path = save_args_json(argparse.Namespace(output_dir=Path("/x"), levels=(0, 8), lr=1e-4), tmp_path)
    assert json.loads(path.read_text()) == {"output_dir": "/x", "levels": [0, 8], "lr": 1e-4}


def test_image_grid_places_images_row_major_with_padding():
    images = torch.stack([torch.full((3, 2, 3), v) for v in (-1.0, 0.0, 1.0)])  # (3, 3, H=2, W=3)
    grid = image_grid(images, nrow=2, padding=1)
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 3) and grid.dtype == np.uint8
    assert (grid[1:3, 1:4] == 0).all() and (grid[1:3, 5:8] == 128).all() and (grid[4:6, 1:4] == 255).all()
    assert (grid[0] == 255).all() and (grid[4:6, 5:8] == 255).all()  # padding and the empty cell are white
    assert image_grid(torch.zeros(5, 1, 4, 4)).shape[1] == math.ceil(math.sqrt(5)) * 6 + 2


def test_save_args_json_never_writes_the_hub_token(tmp_path):
    args = argparse.Namespace(hub_token="hf_secret", hub_model_id="me/vae", seed=0)
    text = save_args_json(args, tmp_path, "cache_args.json").read_text()
    assert "hf_secret" not in text and "hub_token" not in text and "me/vae" in text
