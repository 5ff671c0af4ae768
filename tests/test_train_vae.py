"""The VAE training loop (`diffusers_spectrum.training.vae`, CLI `examples/train_spectrum_vae.py`): every loss term
trains what it should, end-to-end outputs, exact resume, DDP with accumulation and the non-finite guard."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from diffusers import AutoencoderKL
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from diffusers_spectrum import SpectrumAutoencoderKL
from diffusers_spectrum.losses import FeaturePerceptualLoss, NLayerDiscriminator
from diffusers_spectrum.losses.autoencoder_objective import autoencoder_loss, discriminator_loss


REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "train_spectrum_vae.py"


@pytest.fixture(scope="module")
def script():
    from diffusers_spectrum.training import vae

    return vae


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    config = transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8
    )
    transformers.Dinov2Model(config).save_pretrained(path)
    return str(path)


def _image_folder(folder: Path, count: int = 10, corrupt: int = 1) -> Path:
    """Photo crops (the embedded dataset's first images, some as grayscale / RGBA) plus unreadable files."""
    from diffusers_spectrum.data.sources import embedded_dataset_dir

    folder.mkdir(parents=True)
    sources = sorted(embedded_dataset_dir().glob("*.png"))[::7][:count]
    for i, source in enumerate(sources):
        image = Image.open(source)
        image = image.convert("L") if i % 3 == 1 else image.convert("RGBA") if i % 3 == 2 else image
        image.save(folder / f"{i:02d}.png")
    for i in range(corrupt):
        (folder / f"corrupt_{i}.png").write_bytes(b"not an image at all")
    return folder


def _grad_norm(parameters) -> float:
    return float(sum(p.grad.abs().sum() for p in parameters if p.grad is not None))


# ----------------------------------------------------------------------------------------------------------------


def test_every_enabled_loss_moves_the_weights_it_should(script, tiny_dinov2):
    args = script.parse_args(
        ["--vae_config", "tiny", "--resolution", "32", "--dsm_levels", "0,8", "--esm_weight", "0"]
    )
    torch.manual_seed(0)
    vae = script.AutoencoderModel.of(args).build()
    module = script.VAETrainingModule(vae)
    discriminator = NLayerDiscriminator(base_channels=8, num_layers=2)
    perceptual = FeaturePerceptualLoss(tiny_dinov2)
    last_layer = vae.decoder.conv_out.weight
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    encoder, decoder = list(vae.encoder.parameters()), list(vae.decoder.parameters())

    def grads(disc=None, use_perceptual=False, **weights):
        for name, value in {"reconstruction_weight": 0.0, "kl_weight": 0.0, "esm_weight": 0.0, **weights}.items():
            setattr(args, name, value)
        for p in [*vae.parameters(), *discriminator.parameters()]:
            p.grad = None
        out = module(images, generator=torch.Generator().manual_seed(0))
        weights = script.loss_weights(args)
        loss, terms = autoencoder_loss(out, weights, perceptual if use_perceptual else None, disc, last_layer)
        loss.backward()
        return _grad_norm(encoder), _grad_norm(decoder), _grad_norm(discriminator.parameters()), terms

    # pixel and perceptual terms train encoder and decoder; the backbone never
    for kwargs in ({"reconstruction_weight": 1.0}, {"use_perceptual": True, "perceptual_weight": 1.0}):
        enc, dec, disc, _ = grads(**kwargs)
        assert enc > 0 and dec > 0 and disc == 0, kwargs
    assert all(p.grad is None for p in perceptual.parameters())
    # KL and ESM act on the posterior: encoder only
    for kwargs in ({"kl_weight": 1.0}, {"esm_weight": 1.0}):
        enc, dec, disc, _ = grads(**kwargs)
        assert enc > 0 and dec == 0 and disc == 0, kwargs
    # the generator's adversarial term trains the autoencoder, not the discriminator
    args.adaptive_disc_weight, args.disc_weight = False, 1.0
    enc, dec, disc, terms = grads(disc=discriminator)
    assert enc > 0 and dec > 0 and disc == 0 and terms["adaptive_weight"].item() == 1.0
    assert all(p.requires_grad for p in discriminator.parameters())  # unfrozen again
    args.adaptive_disc_weight = True
    _, _, _, terms = grads(disc=discriminator, reconstruction_weight=1.0)
    assert terms["adaptive_weight"].item() > 0
    # the discriminator step sees detached images: it trains the discriminator only
    for p in [*vae.parameters(), *discriminator.parameters()]:
        p.grad = None
    out = module(images, generator=torch.Generator().manual_seed(0))
    discriminator_loss(discriminator, out).backward()
    assert _grad_norm(discriminator.parameters()) > 0 and _grad_norm(vae.parameters()) == 0


def test_recipes_fill_unset_flags_and_explicit_flags_win(script):
    args = script.parse_args(["--recipe", "esm-ae", "--perceptual_weight", "0", "--esm_weight", "0.02"])
    assert (args.esm_weight, args.kl_weight, args.dsm_levels) == (0.02, 0.0, (0,))
    assert (args.learning_rate, args.lr_warmup_steps, args.disc_start, args.disc_weight) == (5e-5, 2000, 50001, 0.5)
    assert args.adam_weight_decay == 0.005 and args.random_flip is True and args.max_grad_norm == 1.0
    assert script.parse_args(["--recipe", "sd-vae", "--perceptual_weight", "0"]).kl_weight == 1e-6
    assert script.parse_args(["--recipe", "dsm-ae", "--perceptual_weight", "0"]).dsm_levels == (0, 8, 10, 12)
    assert script.parse_args([]).dsm_levels == (0, 8, 10, 12)  # default: ESM + DSM, pixel losses
    with pytest.raises(ValueError, match="perceptual_backbone"):
        script.parse_args(["--perceptual_loss", "features", "--perceptual_weight", "1"])
    with pytest.raises(ValueError, match="not both"):
        script.parse_args(["--dataset_name", "a/b", "--train_data_dir", "c"])
    from diffusers_spectrum.losses import lpips_available

    if not lpips_available():  # a fresh CPU install: the recipe says up front what to add, and that runs
        with pytest.raises(ValueError, match="--perceptual_loss none") as error:
            script.parse_args(["--recipe", "esm-ae"])
        assert "pip install torchvision" not in str(error.value).replace("Do not `pip install torchvision`", "")
        assert script.parse_args(["--recipe", "esm-ae", "--perceptual_loss", "none"]).esm_weight == 0.01


@pytest.mark.slow
def test_training_run_writes_model_stock_export_card_and_counts_corrupt_images(script, tiny_dinov2, tmp_path):
    data = _image_folder(tmp_path / "data")
    out = tmp_path / "out"
    args = script.parse_args(
        [
            "--train_data_dir",
            str(data),
            "--output_dir",
            str(out),
            "--vae_config",
            "tiny",
            "--resolution",
            "32",
            "--train_batch_size",
            "2",
            "--gradient_accumulation_steps",
            "2",
            "--max_train_steps",
            "3",
            "--checkpointing_steps",
            "1",
            "--validation_steps",
            "2",
            "--latent_stats_samples",
            "6",
            "--perceptual_loss",
            "features",
            "--perceptual_backbone",
            tiny_dinov2,
            "--perceptual_weight",
            "0.5",
            "--disc_weight",
            "0.5",
            "--disc_start",
            "0",
            "--disc_channels",
            "8",
            "--kl_weight",
            "1e-6",
            "--use_ema",
            "--ema_decay",
            "0.5",
            "--use_shift",
            "--random_flip",
            "--push_to_hub",
            "--hub_model_id",
            "user/tiny-spectrum-vae",
            "--hub_dry_run",
            "--hub_token",
            "secret",
        ]
    )
    script.train_vae(args)

    # the model, its stock export (the latent convention kept, shift included: export_vae; the DiT export is the one
    # that folds it), metrics and the tensorboard log
    vae = SpectrumAutoencoderKL.from_pretrained(out)
    stock = AutoencoderKL.from_pretrained(out / "stock")
    assert vae.config.shift_factor is not None and stock.config.shift_factor == vae.config.shift_factor
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = vae.encode(images).latent_dist.mode()
        z_stock = stock.encode(images).latent_dist.mode()
        torch.testing.assert_close(z_stock, z, atol=1e-5, rtol=1e-5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_images"] >= 1 and metrics["global_step"] == 3
    assert metrics["scaling_factor"] == pytest.approx(vae.config.scaling_factor)
    assert np.isfinite([metrics["psnr"], metrics["spectral_kl_delta1"], metrics["latent_slope"]]).all()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "logs").rglob("events.out.tfevents*"))))
    events.Reload()
    assert {"val/reconstructions", "val/spectrum"} <= set(events.Tags()["images"])
    assert {"reconstruction", "perceptual", "generator", "discriminator", "kl", "esm", "lr", "val/psnr"} <= set(
        events.Tags()["scalars"]
    )

    # every optimizer step moved both the autoencoder (encoder and decoder) and the discriminator
    first, last = out / "checkpoint-1", out / "checkpoint-3"
    for name in ("vae/diffusion_pytorch_model.safetensors", "discriminator/diffusion_pytorch_model.safetensors"):
        before, after = load_file(first / name), load_file(last / name)
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert changed, name
        if name.startswith("vae"):
            assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("decoder.") for k in changed)

    # the card and the hub dry run; no secret is written anywhere
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "diffusers" and "diffusers-spectrum" in card.data.tags
    assert card.data.to_dict()["diffusers_spectrum"]["metrics"]["global_step"] == 3
    upload = json.loads((out / "hub_upload.json").read_text())
    assert upload["repo_id"] == "user/tiny-spectrum-vae" and upload["dry_run"] is True
    assert {"README.md", "config.json", "diffusion_pytorch_model.safetensors", "stock/config.json"} <= set(
        upload["files"]
    )
    assert not any(f.startswith(("checkpoint-", "logs/")) for f in upload["files"])
    assert not any("secret" in p.read_text(errors="ignore") for p in out.rglob("*.json"))
    assert "secret" not in (out / "README.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_run_killed_after_a_checkpoint_resumes_to_the_same_weights(script, tmp_path, monkeypatch, workers):
    data = _image_folder(tmp_path / "data", count=7, corrupt=1)
    # two workers need a share each: the local folder is loaded without streaming and split by example
    parallel = ["--dataloader_num_workers", str(workers), "--no_streaming"] if workers else []

    def args_for(out, *extra):
        return script.parse_args(
            [
                "--train_data_dir",
                str(data),
                "--output_dir",
                str(out),
                "--vae_config",
                "tiny",
                "--resolution",
                "32",
                "--train_batch_size",
                "2",
                "--max_train_steps",
                "4",
                "--checkpointing_steps",
                "2",
                "--validation_steps",
                "100",
                "--latent_stats_samples",
                "4",
                "--report_to",
                "none",
                "--random_flip",
                "--disc_weight",
                "0.5",
                "--disc_start",
                "1",
                "--disc_channels",
                "8",
                "--kl_weight",
                "1e-6",
                "--use_ema",
                "--ema_decay",
                "0.9",
                "--lr_warmup_steps",
                "2",
                "--lr_scheduler",
                "linear",
                *parallel,
                *extra,
            ]
        )

    script.train_vae(args_for(tmp_path / "full"))

    real_save = script.Checkpointer.save

    def save_then_die(self, global_step, *args, **kwargs):
        path = real_save(self, global_step, *args, **kwargs)
        if global_step == 2:
            raise KeyboardInterrupt("killed after the checkpoint")
        return path

    monkeypatch.setattr(script.Checkpointer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        script.train_vae(args_for(tmp_path / "resumed"))
    monkeypatch.undo()
    assert not (tmp_path / "resumed" / "diffusion_pytorch_model.safetensors").exists()
    script.train_vae(args_for(tmp_path / "resumed", "--resume_from_checkpoint", "latest"))

    checkpoint = tmp_path / "resumed" / "checkpoint-4"
    assert (checkpoint / "vae" / "config.json").is_file()  # a save_pretrained folder
    # models and EMA as safetensors; accelerate's optimizer / RNG files are read back with weights_only=True
    assert not list(checkpoint.rglob("custom_checkpoint*")) and not list(checkpoint.rglob("*model*.bin"))
    assert (checkpoint / "ema_vae" / "ema.safetensors").is_file()
    for name in (
        "diffusion_pytorch_model.safetensors",
        "checkpoint-4/discriminator/diffusion_pytorch_model.safetensors",
        "checkpoint-4/ema_vae/ema.safetensors",
    ):
        full, resumed = load_file(tmp_path / "full" / name), load_file(tmp_path / "resumed" / name)
        assert full.keys() == resumed.keys()
        for key in full:
            assert torch.equal(full[key], resumed[key]), (name, key)
    full_metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text()) == full_metrics
    assert full_metrics["skipped_images"] >= 1  # the corrupt file, counted in whichever worker read it


@pytest.mark.slow
def test_nonfinite_losses_are_skipped_reported_and_stop_the_run(script, tmp_path, monkeypatch):
    data = _image_folder(tmp_path / "data", count=4, corrupt=0)
    from diffusers_spectrum.losses import autoencoder as losses  # the trainer imports its losses from here on use

    real_loss = losses.reconstruction_loss
    calls = {"n": 0}

    def nan_on_second_call(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 2 else loss

    def args_for(out, steps):
        return script.parse_args(
            [
                "--train_data_dir",
                str(data),
                "--output_dir",
                str(out),
                "--vae_config",
                "tiny",
                "--resolution",
                "32",
                "--train_batch_size",
                "2",
                "--max_train_steps",
                str(steps),
                "--checkpointing_steps",
                "1",
                "--validation_steps",
                "100",
                "--latent_stats_samples",
                "2",
                "--report_to",
                "none",
                "--max_nonfinite_steps",
                "2",
            ]
        )

    monkeypatch.setattr(losses, "reconstruction_loss", nan_on_second_call)
    script.train_vae(args_for(tmp_path / "one_nan", 3))
    out = tmp_path / "one_nan"
    assert json.loads((out / "metrics.json").read_text())["nonfinite_steps"] == 1
    # the skipped step (step 2) left the weights as they were after step 1
    before, after = (
        load_file(out / "checkpoint-1" / "vae" / "diffusion_pytorch_model.safetensors"),
        load_file(out / "checkpoint-2" / "vae" / "diffusion_pytorch_model.safetensors"),
    )
    assert all(torch.equal(before[k], after[k]) for k in before)
    after_three = load_file(out / "checkpoint-3" / "vae" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(after[k], after_three[k]) for k in after)

    monkeypatch.setattr(losses, "reconstruction_loss", lambda *a, **k: real_loss(*a, **k) * float("nan"))
    with pytest.raises(RuntimeError, match="2 steps in a row"):
        script.train_vae(args_for(tmp_path / "all_nan", 5))


DDP_PROBE = """
import json, sys, torch
from diffusers_spectrum.losses import autoencoder as losses
from diffusers_spectrum.training import vae as script

nan_call = int(sys.argv[1])  # 1-based call of reconstruction_loss on process 1 that returns NaN (0: none)
real_loss, calls = losses.reconstruction_loss, {"n": 0}
real_save = script.Checkpointer.save


def loss_with_injected_nan(*args, **kwargs):
    calls["n"] += 1
    loss = real_loss(*args, **kwargs)
    rank = int(__import__("os").environ.get("RANK", "0"))
    return loss * float("nan") if rank == 1 and calls["n"] == nan_call else loss


def save_and_probe(self, global_step, *args, **kwargs):
    accelerator = self.accelerator
    model = accelerator.unwrap_model(accelerator._models[0])
    checksum = torch.tensor([sum(p.double().sum().item() for p in model.parameters())], dtype=torch.float64)
    gathered = accelerator.gather(checksum).tolist()
    if accelerator.is_main_process:
        with open(f"{self.output_dir}/probe-{global_step}.json", "w") as f:
            json.dump({"num_processes": accelerator.num_processes, "checksums": gathered}, f)
    return real_save(self, global_step, *args, **kwargs)


losses.reconstruction_loss = loss_with_injected_nan
script.Checkpointer.save = save_and_probe
script.train_vae(script.parse_args(sys.argv[2:]))
"""


def _run_ddp(tmp_path, nan_call: int, *extra) -> Path:
    (tmp_path / "probe.py").write_text(DDP_PROBE)
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        str(tmp_path / "probe.py"),
        str(nan_call),
        "--output_dir",
        str(out),
        "--vae_config",
        "tiny",
        "--resolution",
        "32",
        "--train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "2",
        "--max_train_steps",
        "2",
        "--checkpointing_steps",
        "1",
        "--validation_steps",
        "100",
        "--latent_stats_samples",
        "2",
        "--report_to",
        "none",
        *extra,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_process_ddp_training_keeps_the_replicas_identical(tmp_path):
    out = _run_ddp(
        tmp_path,
        0,
        "--disc_weight",
        "0.5",
        "--disc_start",
        "0",
        "--disc_channels",
        "8",
        "--disc_norm",
        "group",
        "--kl_weight",
        "1e-6",
    )
    for step in (1, 2):
        probe = json.loads((out / f"probe-{step}.json").read_text())
        assert probe["num_processes"] == 2
        assert probe["checksums"][0] == probe["checksums"][1]  # gradients were all-reduced through the wrapper
    states = json.loads((out / "checkpoint-2" / "extra_state.json").read_text())["data_states"]
    assert len(states) == 2  # one data-loader state per process
    assert (out / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.slow
def test_ddp_accumulation_with_a_nonfinite_last_micro_step_keeps_replicas_identical(tmp_path):
    # Process 1's second loss (the last micro-step of the first accumulation window) is NaN. Its earlier
    # micro-step ran under no_sync; the window must be dropped on *both* processes (or stepped on all-reduced
    # gradients), never stepped on un-reduced local gradients.
    out = _run_ddp(tmp_path, 2)
    for step in (1, 2):
        probe = json.loads((out / f"probe-{step}.json").read_text())
        assert probe["checksums"][0] == probe["checksums"][1], step
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nonfinite_steps"] == 1  # the window was skipped, and only that one


def _launch(script_path: Path, *args: str) -> None:
    """Run an example script as 2 CPU processes (accelerate's multi-process launch, as `accelerate launch` does)."""
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        str(script_path),
        *args,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_with_two_workers_each_resume_to_the_same_weights(tmp_path):
    data = _image_folder(tmp_path / "data", count=9, corrupt=1)
    common = [
        "--train_data_dir",
        str(data),
        "--no_streaming",
        "--dataloader_num_workers",
        "2",
        "--vae_config",
        "tiny",
        "--resolution",
        "32",
        "--train_batch_size",
        "2",
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--validation_steps",
        "100",
        "--latent_stats_samples",
        "2",
        "--report_to",
        "none",
        "--random_flip",
        "--kl_weight",
        "1e-6",
    ]
    _launch(SCRIPT, "--output_dir", str(tmp_path / "full"), *common)
    states = json.loads((tmp_path / "full" / "checkpoint-2" / "extra_state.json").read_text())["data_states"]
    assert len(states) == 2 and all(state["num_workers"] == 2 for state in states)  # 2 processes x 2 workers
    # resume from the uninterrupted run's step-2 checkpoint in a new folder: steps 3-4 again, from the data states
    _launch(
        SCRIPT,
        "--output_dir",
        str(tmp_path / "resumed"),
        "--resume_from_checkpoint",
        str(tmp_path / "full" / "checkpoint-2"),
        *common,
    )
    name = "diffusion_pytorch_model.safetensors"
    full, resumed = load_file(tmp_path / "full" / name), load_file(tmp_path / "resumed" / name)
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_script_help_lists_the_diffusers_flags(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in (
        "--output_dir",
        "--train_batch_size",
        "--max_train_steps",
        "--checkpointing_steps",
        "--checkpoints_total_limit",
        "--resume_from_checkpoint",
        "--mixed_precision",
        "--gradient_accumulation_steps",
        "--learning_rate",
        "--seed",
        "--resolution",
        "--report_to",
        "--push_to_hub",
        "--hub_model_id",
        "--esm_weight",
        "--dsm_levels",
        "--recipe",
        "--allow_tf32",
        "--use_torch_compile",
        "--dataloader_num_workers",
        "--reduced_jpeg_decode",
    ):
        assert flag in help_text
