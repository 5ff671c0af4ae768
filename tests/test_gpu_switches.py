"""The GPU switches, as far as a CPU can check them: `--allow_tf32`, `--use_torch_compile` (a real compile through
inductor's CPU path, and a clear message where the backend cannot compile) and fused AdamW on CUDA; every trainer
parses them and they reach the backend flags, the model and the optimizer."""

import json
import types

import pytest
import torch

from diffusers_spectrum.training import audio, dit, loop, unconditional, vae
from diffusers_spectrum.training.args import Optimization, Outputs


PARSERS = {
    "vae": (vae.parse_args, []),
    "dit": (dit.parse_args, ["--space", "dct"]),
    "unconditional": (unconditional.parse_args, []),
    "audio": (audio.parse_args, []),
}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_trainer_parses_the_switches(name):
    parse, base = PARSERS[name]
    args = parse([*base, "--allow_tf32", "--use_torch_compile", "--dataloader_num_workers", "3"])
    assert args.allow_tf32 and args.use_torch_compile and args.dataloader_num_workers == 3
    plain = parse(base)
    assert not plain.allow_tf32 and not plain.use_torch_compile and plain.dataloader_num_workers == 0
    with pytest.raises(ValueError, match="--dataloader_num_workers must be >= 0"):
        parse([*base, "--dataloader_num_workers", "-1"])


@pytest.fixture()
def restore_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_allow_tf32_sets_the_cuda_matmul_and_cudnn_flags(tmp_path, restore_tf32):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    args = vae.parse_args(["--output_dir", str(tmp_path), "--report_to", "none"])
    loop.make_accelerator("train-vae", Outputs.of(args), Optimization.of(args), vars(args))
    assert not torch.backends.cuda.matmul.allow_tf32  # off unless asked
    args = vae.parse_args(["--output_dir", str(tmp_path), "--report_to", "none", "--allow_tf32"])
    loop.make_accelerator("train-vae", Outputs.of(args), Optimization.of(args), vars(args))
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert json.loads((tmp_path / "training_args.json").read_text())["allow_tf32"] is True


def _adam_args(**overrides):
    values = dict(learning_rate=1e-2, train_batch_size=1, adam_weight_decay=0.01, max_train_steps=10)
    return Optimization(**{**values, **overrides})


def test_adamw_is_fused_on_cuda_only_and_the_fused_step_matches():
    model = torch.nn.Linear(4, 3)
    on = lambda device: types.SimpleNamespace(device=torch.device(device), num_processes=1)  # noqa: E731
    cuda_optimizer, _ = loop.make_optimizer(model.parameters(), _adam_args(), on("cuda"))
    cpu_optimizer, _ = loop.make_optimizer(model.parameters(), _adam_args(), on("cpu"))
    assert cuda_optimizer.defaults["fused"] is True and not cpu_optimizer.defaults["fused"]

    # the fused kernel (torch has a CPU one too) takes the same step as the default implementation
    torch.manual_seed(0)
    models = [torch.nn.Linear(4, 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [loop.adamw(m.parameters(), _adam_args(), 1e-2, fused=fused) for m, fused in zip(models, (0, 1))]
    x = torch.randn(8, 4)
    for _ in range(3):
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


class Block(torch.nn.Module):
    """A transformer block in miniature (norm, attention, MLP): the ops a DiT step compiles."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width, 2 * width), torch.nn.GELU(), torch.nn.Linear(2 * width, width)
        )

    def forward(self, x):
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        x = x + torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return x + self.mlp(self.norm(x))


@pytest.mark.slow
def test_torch_compile_runs_on_the_cpu_backend_and_matches_eager():
    torch.manual_seed(0)
    model, eager = Block(), Block()
    eager.load_state_dict(model.state_dict())
    loop.check_compile("cpu")  # inductor's CPU path (a C++ compiler) works here
    assert loop.compile_model(model, True) is model and model._compiled_call_impl is not None
    assert loop.compile_model(eager, False)._compiled_call_impl is None
    x = torch.randn(2, 8, 16)
    out, ref = model(x), eager(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    out.square().mean().backward()
    ref.square().mean().backward()
    for (name, a), b in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-6, msg=name)
    assert list(model.state_dict()) == list(eager.state_dict())  # same names: checkpoints are unchanged


def test_a_backend_that_cannot_compile_is_a_clear_error_at_start_up(monkeypatch):
    def broken_compile(function, *args, **kwargs):
        def run(*inputs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found in cpp_extension.get_cxx_compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.raises(RuntimeError, match=r"cannot compile on cpu here .*Run without --use_torch_compile"):
        loop.check_compile("cpu")


@pytest.mark.slow
def test_use_torch_compile_reaches_the_trainers_model(tmp_path, monkeypatch):
    """The trainer compiles the network it trains (the compiled forward is exercised above; here the wiring)."""
    compiled = []
    monkeypatch.setattr(loop, "compile_model", lambda model, enabled: compiled.append((type(model), enabled)) or model)
    monkeypatch.setattr(loop, "check_compile", lambda device: compiled.append(("checked", device)))
    args = dit.parse_args(
        [
            "--dit_config",
            "tiny",
            "--resolution",
            "32",
            "--train_batch_size",
            "2",
            "--max_train_steps",
            "1",
            "--checkpointing_steps",
            "1",
            "--validation_steps",
            "100",
            "--report_to",
            "none",
            "--output_dir",
            str(tmp_path / "out"),
            "--space",
            "dct",
            "--use_torch_compile",
            "--allow_tf32",
        ]
    )
    dit.train_dit(args)
    assert ("checked", torch.device("cpu")) in compiled
    assert any(enabled and kind.__name__.endswith("DiTTransformer2DModel") for kind, enabled in compiled[1:])


# ----------------------------------------------------------------------------------------------------------------
# benchmarks/gpu_check.py: fails fast without CUDA; its dry run writes the JSON every real run writes


def _gpu_check():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_without_cuda_stops_at_once_with_a_message(tmp_path, capsys, monkeypatch):
    gpu_check = _gpu_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    assert gpu_check.main(["--output", str(tmp_path / "check.json")]) == 2
    assert "no CUDA GPU here" in capsys.readouterr().err and not (tmp_path / "check.json").exists()
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--sections", "data,speed"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--budget_minutes", "0"])


@pytest.mark.slow
def test_gpu_check_dry_run_writes_device_versions_and_every_number(tmp_path):
    output = tmp_path / "check.json"
    assert _gpu_check().main(["--dry_run", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["dry_run"] and report["device"]["device"] == "cpu"
    assert {"torch", "diffusers", "datasets", "torchdata", "cuda"} <= set(report["versions"])
    stream = report["sections"]["data"]["stream"]
    assert set(stream) == {"500x375", "1024x768"}
    assert all(rate > 0 for rates in stream.values() for rate in rates.values())
    config = report["sections"]["real_configs"]["configs"]["dit-tiny-dry-run"]
    assert config["step_seconds"] > 0 and config["examples_per_second"] > 0 and config["headroom"] > 0
    assert config["peak_memory_mb"] > 0 and config["steps_timed"] == 2
    assert report["total_seconds"] > 0
