"""The unconditional pixel-space trainer (training.unconditional): x0 recovery against closed forms, the regularisers
wired to x0_hat / D(x; sigma), every formulation and prediction type trains with every regulariser, the loss goes down
on a fixed batch, the exported folders sample with stock diffusers (DDPM, DDIM) and with the EDM scheduler, exact
resume, clear errors, and the ablation's quick mode."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusers_spectrum.diffusion.edm import edm_noisy_inputs, edm_sample_sigmas
from diffusers_spectrum.diffusion.loss import SpectralRegularizers, diffusion_loss_terms, total_loss
from diffusers_spectrum.diffusion.objectives import DiffusionObjective
from diffusers_spectrum.models.presets import build_unet
from diffusers_spectrum.training import unconditional


KINDS = ("epsilon", "v_prediction", "sample", "edm")
REGULARIZERS = {"fourier": ({}, None), "wavelet": (None, {"levels": 2}), "both": ({}, {"levels": 2})}


def _closed_form_abar(num_steps: int = 1000) -> np.ndarray:
    """DDPM's linear betas 1e-4 .. 0.02 (Ho et al. 2020) -> cumulative product of 1 - beta, in float64."""
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, num_steps, dtype=np.float64))


@pytest.mark.parametrize("kind", ("epsilon", "v_prediction", "sample"))
def test_x0_recovery_matches_the_closed_forms(kind):
    objective = DiffusionObjective(kind, unconditional.ddpm_noise_scheduler(1000, "linear", kind))
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=generator, dtype=torch.float64) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=generator, dtype=torch.float64)
    output = torch.randn(4, 3, 8, 8, generator=generator, dtype=torch.float64)  # an arbitrary network output
    timesteps = torch.tensor([0, 10, 500, 999])
    x_t, _ = objective.noisy_inputs(x0, noise, timesteps)

    # the schedule is DDPM's (diffusers keeps it in float32: relative error <= 1000 steps x 6e-8 = 6e-5) ...
    assert np.allclose(objective.alphas_cumprod.numpy(), _closed_form_abar(), rtol=1e-4, atol=0)
    # ... and given that table, the forward process and the recoveries are the closed forms to float64 rounding
    abar = objective.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
    assert torch.allclose(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * noise, rtol=0, atol=1e-12)
    expected = {
        "epsilon": (x_t - (1 - abar).sqrt() * output) / abar.sqrt(),  # Ho et al. 2020, Eq. 15
        "v_prediction": abar.sqrt() * x_t - (1 - abar).sqrt() * output,  # Salimans & Ho 2022
        "sample": output,
    }[kind]
    assert torch.allclose(objective.predict_x0(output, x_t, timesteps), expected, rtol=1e-12, atol=1e-12)
    # the exact target gives back x0 exactly (up to float64 rounding)
    target = objective.target(x0, noise, timesteps)
    assert torch.allclose(objective.predict_x0(target, x_t, timesteps), x0, atol=1e-10)


class _Oracle(torch.nn.Module):
    """A 'UNet' that returns a fixed tensor (set per call), to test the loss wiring with known outputs."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.output = None
        self.config = {"time_embedding_type": "positional"}

    def forward(self, sample, timestep):
        class Out:
            pass

        out = Out()
        out.sample = self.output(sample, timestep) + 0 * self.anchor
        return out


def _terms(model, objective, x0, generator, fourier, wavelet):
    regularizers = SpectralRegularizers(fourier, wavelet)
    return diffusion_loss_terms(model, objective, x0, generator, regularizers=regularizers)[0]


@pytest.mark.parametrize("kind", ("epsilon", "v_prediction", "sample"))
def test_ddpm_regularizers_compare_x0_hat_with_x0(kind):
    """The exact target gives zero loss and zero regularisers (x0_hat = x0, up to float32 recovery rounding, which
    1 / sqrt(abar) amplifies near t = T); a perturbed target gives clearly positive regularisers."""
    objective = DiffusionObjective(kind, unconditional.ddpm_noise_scheduler(1000, "linear", kind))
    x0 = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    oracle = _Oracle()
    seed = 5

    def exact(sample, timestep):  # recompute the step's draws with the same generator seed
        g = torch.Generator().manual_seed(seed)
        t = objective.sample_timesteps(x0.shape[0], generator=g)
        noise = torch.randn(x0.shape, generator=g)
        return objective.target(x0, noise, t)

    oracle.output = exact
    fourier, wavelet = REGULARIZERS["both"]
    terms = _terms(oracle, objective, x0, torch.Generator().manual_seed(seed), fourier, wavelet)
    assert float(terms["diffusion"]) == 0.0
    for name in ("fourier", "wavelet"):
        assert float(terms[name]) < 1e-4, (name, float(terms[name]))
    perturbation = 0.3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))
    oracle.output = lambda sample, timestep: exact(sample, timestep) + perturbation
    terms = _terms(oracle, objective, x0, torch.Generator().manual_seed(seed), fourier, wavelet)
    for name in ("fourier", "wavelet"):
        assert float(terms[name]) > 1e-3, (name, float(terms[name]))


def test_edm_regularizers_compare_the_denoiser_output_with_x0():
    """F* = (x0 - c_skip x) / c_out makes D(x; sigma) = x0: zero loss and zero regularisers."""
    x0 = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    seed, sigma_data = 7, 0.5
    g = torch.Generator().manual_seed(seed)
    sigma = edm_sample_sigmas(x0.shape[0], generator=g)
    x_noisy = edm_noisy_inputs(x0, torch.randn(x0.shape, generator=g), sigma)
    s = sigma.reshape(-1, 1, 1, 1).double()
    c_skip = sigma_data**2 / (s**2 + sigma_data**2)  # Karras et al. 2022, Table 1
    c_out = s * sigma_data / (s**2 + sigma_data**2).sqrt()
    ideal = ((x0.double() - c_skip * x_noisy.double()) / c_out).float()
    oracle = _Oracle()
    oracle.output = lambda sample, timestep: ideal
    fourier, wavelet = REGULARIZERS["both"]
    terms = _terms(oracle, DiffusionObjective("edm"), x0, torch.Generator().manual_seed(seed), fourier, wavelet)
    for name in ("diffusion", "fourier", "wavelet"):
        assert float(terms[name]) < 1e-6, (name, float(terms[name]))


def _objective(kind):
    if kind == "edm":
        return DiffusionObjective("edm")
    return DiffusionObjective(kind, unconditional.ddpm_noise_scheduler(1000, "linear", kind))


@pytest.mark.slow
@pytest.mark.parametrize("regularizer", sorted(REGULARIZERS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_formulation_trains_with_every_regularizer(kind, regularizer):
    torch.manual_seed(0)
    unet = build_unet("tiny", 16)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    fourier, wavelet = REGULARIZERS[regularizer]
    before = [p.detach().clone() for p in unet.parameters()]
    for step in range(2):
        terms = _terms(unet, _objective(kind), x0, torch.Generator().manual_seed(step), fourier, wavelet)
        assert ("fourier" in terms) == (fourier is not None) and ("wavelet" in terms) == (wavelet is not None)
        loss = total_loss(terms, {"fourier": 0.1, "wavelet": 0.1})
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, unet.parameters()))


@pytest.mark.parametrize("kind", KINDS)
def test_loss_goes_down_on_a_fixed_batch(kind):
    torch.manual_seed(0)
    unet = build_unet("tiny", 16)
    optimizer = torch.optim.Adam(unet.parameters(), lr=2e-3)
    x0 = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    objective = _objective(kind)
    fourier, wavelet = REGULARIZERS["both"]
    losses = []
    for _ in range(12):
        terms = _terms(unet, objective, x0, torch.Generator().manual_seed(0), fourier, wavelet)  # same draws
        loss = total_loss(terms, {"fourier": 0.1, "wavelet": 0.1})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses


# ------------------------------------------------------------------------------------------------
# Flags


def test_flags_are_diffusers_names_and_defaults_resolve():
    args = unconditional.parse_args([])
    assert (args.resolution, args.unet_config, args.formulation, args.prediction_type) == (
        64,
        "ddpm-64",
        "ddpm",
        "epsilon",
    )
    help_text = unconditional.build_parser().format_help()
    for flag in (
        "--dataset_name",
        "--train_data_dir",
        "--resolution",
        "--center_crop",
        "--random_flip",
        "--train_batch_size",
        "--max_train_steps",
        "--gradient_accumulation_steps",
        "--learning_rate",
        "--lr_scheduler",
        "--lr_warmup_steps",
        "--use_ema",
        "--prediction_type",
        "--ddpm_num_steps",
        "--ddpm_beta_schedule",
        "--ddpm_num_inference_steps",
        "--mixed_precision",
        "--checkpointing_steps",
        "--checkpoints_total_limit",
        "--resume_from_checkpoint",
        "--output_dir",
        "--push_to_hub",
        "--hub_model_id",
        "--seed",
        "--formulation",
        "--unet_config",
        "--fourier_weight",
        "--wavelet_weight",
        "--spectral_timestep_weighting",
        "--validation_steps",
    ):
        assert flag in help_text, flag


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--formulation", "edm", "--prediction_type", "sample"], "--prediction_type"),
        (["--resolution", "48"], "--unet_config"),
        (["--unet_config", "ddpm-32", "--resolution", "36"], "multiple of 8"),
        (["--ddpm_num_steps", "10", "--ddpm_num_inference_steps", "20"], "--ddpm_num_inference_steps"),
        (["--fourier_weight", "-1"], "--fourier_weight"),
        (["--edm_p_std", "0"], "--edm_p_std"),
        (["--dataset_name", "a/b", "--train_data_dir", "x"], "--dataset_name"),
        (["--unet_config", "tiny", "--model_config_name_or_path", "x"], "--model_config_name_or_path"),
    ],
)
def test_bad_flags_raise_clear_errors(argv, message):
    with pytest.raises(ValueError, match=message):
        unconditional.parse_args(argv)


def test_unknown_choices_are_refused_by_argparse(capsys):
    for argv in (["--formulation", "flow"], ["--unet_config", "huge"], ["--prediction_type", "flow"]):
        with pytest.raises(SystemExit):
            unconditional.parse_args(argv)
    assert "invalid choice" in capsys.readouterr().err


def test_missing_data_folder_is_a_file_not_found_error(tmp_path):
    args = unconditional.parse_args(
        [
            "--train_data_dir",
            str(tmp_path / "nope"),
            "--output_dir",
            str(tmp_path / "o"),
            "--unet_config",
            "tiny",
            "--report_to",
            "none",
        ]
    )
    with pytest.raises(FileNotFoundError, match="nope"):
        unconditional.train_unconditional(args)


# ------------------------------------------------------------------------------------------------
# End to end


def _argv(out: Path, *extra) -> list[str]:
    return [
        "--output_dir",
        str(out),
        "--unet_config",
        "tiny",
        "--resolution",
        "16",
        "--train_batch_size",
        "2",
        "--max_train_steps",
        "2",
        "--checkpointing_steps",
        "1",
        "--validation_steps",
        "2",
        "--eval_batch_size",
        "2",
        "--ddpm_num_inference_steps",
        "3",
        "--edm_num_inference_steps",
        "3",
        "--report_to",
        "none",
        "--lr_warmup_steps",
        "0",
        "--fourier_weight",
        "0.1",
        "--wavelet_weight",
        "0.1",
        "--wavelet_levels",
        "2",
        *extra,
    ]


@pytest.mark.slow
def test_ddpm_folder_loads_with_plain_diffusers_and_samples_with_ddpm_and_ddim(tmp_path):
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DiffusionPipeline

    out = unconditional.train_unconditional(
        unconditional.parse_args(
            _argv(
                tmp_path / "ddpm", "--prediction_type", "v_prediction", "--use_ema", "--push_to_hub", "--hub_dry_run"
            )
        )
    )
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe) is DDPMPipeline and pipe.scheduler.config.prediction_type == "v_prediction"
    images = pipe(batch_size=2, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
    ddim = DDIMPipeline(unet=pipe.unet, scheduler=DDIMScheduler.from_config(pipe.scheduler.config))
    images = ddim(batch_size=2, num_inference_steps=4, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
    card = (out / "README.md").read_text()
    assert "DDIMScheduler.from_config(pipe.scheduler.config)" in card and "DiffusionPipeline.from_pretrained" in card
    assert "eta=1.0" in card and "eta=0.0, generator" not in card  # eta 0 turns early models into grey noise
    assert (out / "validation" / "step-0000002.png").is_file()
    uploaded = json.loads((out / "hub_upload.json").read_text())["files"]
    assert "unet/diffusion_pytorch_model.safetensors" in uploaded and not any("checkpoint" in f for f in uploaded)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"diffusion", "fourier", "wavelet", "loss"} <= set(metrics)


@pytest.mark.slow
def test_edm_folder_samples_with_the_edm_scheduler_and_stock_consistency_pipeline(tmp_path):
    from diffusers import ConsistencyModelPipeline, DiffusionPipeline, EDMEulerScheduler, UNet2DModel

    from diffusers_spectrum.pipelines.edm_pipeline import EDMPipeline

    out = unconditional.train_unconditional(unconditional.parse_args(_argv(tmp_path / "edm", "--formulation", "edm")))
    pipe = EDMPipeline.from_pretrained(out)
    assert type(pipe.unet) is UNet2DModel and type(pipe.scheduler) is EDMEulerScheduler
    images = pipe(batch_size=2, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
    stock = ConsistencyModelPipeline.from_pretrained(out)
    stock_images = stock(batch_size=2, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images
    assert np.allclose(images, stock_images, atol=1e-5)
    card = (out / "README.md").read_text()
    assert "EDMPipeline.from_pretrained" in card and "DiffusionPipeline.from_pretrained" in card
    # plain diffusers: model_index.json names the stock ConsistencyModelPipeline (same loop, same images)
    plain = DiffusionPipeline.from_pretrained(out)
    assert type(plain) is ConsistencyModelPipeline
    plain_images = plain(batch_size=2, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images
    np.testing.assert_array_equal(plain_images, stock_images)


@pytest.mark.slow
def test_run_killed_after_a_checkpoint_resumes_to_the_same_weights(tmp_path, monkeypatch):
    def args_for(out, *extra):
        return unconditional.parse_args(
            _argv(
                out,
                "--max_train_steps",
                "4",
                "--checkpointing_steps",
                "2",
                "--validation_steps",
                "100",
                "--use_ema",
                "--ema_decay",
                "0.9",
                "--lr_scheduler",
                "linear",
                "--lr_warmup_steps",
                "1",
                "--random_flip",
                *extra,
            )
        )

    unconditional.train_unconditional(args_for(tmp_path / "full"))
    real_save = unconditional.Checkpointer.save

    def save_then_die(self, global_step, *args, **kwargs):
        path = real_save(self, global_step, *args, **kwargs)
        if global_step == 2:
            raise KeyboardInterrupt("killed after the checkpoint")
        return path

    monkeypatch.setattr(unconditional.Checkpointer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        unconditional.train_unconditional(args_for(tmp_path / "resumed"))
    monkeypatch.undo()
    assert not (tmp_path / "resumed" / "unet").exists()
    unconditional.train_unconditional(args_for(tmp_path / "resumed", "--resume_from_checkpoint", "latest"))
    for name in (
        "unet/diffusion_pytorch_model.safetensors",
        "checkpoint-4/ema_unet/ema.safetensors",
        "checkpoint-4/unet/diffusion_pytorch_model.safetensors",
    ):
        full, resumed = load_file(tmp_path / "full" / name), load_file(tmp_path / "resumed" / name)
        assert full.keys() == resumed.keys()
        for key in full:
            assert torch.equal(full[key], resumed[key]), (name, key)


@pytest.mark.slow
def test_ablation_quick_mode_gate_shards_and_page(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import ablate_spectral_regularization as ablation

    budget = ablation.BUDGETS["quick"]
    baselines = {ablation.run_key(f, "none", s) for f in ablation.FORMULATIONS for s in budget["seeds"]}
    # 1. a failed gate stops the study after the unregularised baselines (the quick models are noise, but the
    # verdict is forced here so the test does not hang on chance)
    real_gate = ablation.gate

    def failed_gate(result, relied):
        verdict = real_gate(result, relied)
        verdict["passed"] = {f: False for f in ablation.FORMULATIONS}
        return verdict

    monkeypatch.setattr(ablation, "gate", failed_gate)
    stopped = ablation.run_ablation(quick=True, output_dir=tmp_path, work_dir=tmp_path / "w0", ignore_gate=False)
    assert set(stopped["units"]) == baselines and "gate failed" in stopped["stopped_by_gate"]
    assert "The run stopped before the regularised arms" in (tmp_path / ablation.PAGE_NAME).read_text()
    monkeypatch.undo()
    # 2. two shards (separate processes' work folders) fill the same JSON, skipping the stored baselines (resume);
    # the last one writes the page
    half = ablation.run_ablation(quick=True, output_dir=tmp_path, work_dir=tmp_path / "w1", shard=(0, 2))
    assert len(half["units"]) < len(ablation.all_units(budget))
    result = ablation.run_ablation(quick=True, output_dir=tmp_path, work_dir=tmp_path / "w2", shard=(1, 2))
    saved = json.loads((tmp_path / ablation.JSON_NAME).read_text())
    assert set(saved["units"]) == {ablation.run_key(*u) for u in ablation.all_units(budget)} == set(result["units"])
    assert "stopped_by_gate" not in saved and len(saved["processes"]) == 3
    assert {u["shard"] for k, u in saved["units"].items() if k in baselines} == {"0/1"}  # resumed, not retrained
    for unit in saved["units"].values():
        assert unit["train_seconds"] > 0 and unit["unit_cpu_seconds"] > 0
        samplers = set(ablation.SAMPLERS[unit["formulation"]]) | (
            {"ancestral_extra_n"} if unit["formulation"] == "ddpm" else set()
        )
        assert set(unit["samplers"]) == samplers
        for name, row in unit["samplers"].items():
            assert np.isfinite(row["spectrum_distance"]) and np.isfinite(row["kid_trained"])
            expected = budget["num_samples"] if name in ablation.PRIMARY.values() else budget["extra_num_samples"]
            assert row["num_samples"] == expected
    setup = saved["setup"]
    assert set(setup["floor"]) == set(setup["noise"]) == {str(budget["num_samples"]), str(budget["extra_num_samples"])}
    assert set(setup["noise"][str(budget["num_samples"])]) == {str(s) for s in budget["seeds"]}
    analysis = saved["analysis"]
    relied = analysis["relied_metrics"]
    assert {r["metric"] for r in analysis["family"]} == set(relied)
    assert len(analysis["family"]) == 6 * len(relied)  # 2 formulations x 3 regularisers
    assert all(r["outcome"] != "one run" for r in analysis["family"])  # two seeds: paired intervals
    assert {r["baseline"] for r in analysis["gate"]["family"]} == {"noise"}
    assert len(analysis["extra"]) == 6 * len(relied)  # DDIM eta 0 / 1 x 3 regularisers
    assert len(saved["overhead"]) == 6 and all(row["ratio"] > 0 for row in saved["overhead"])
    for name in (ablation.FIGURE_NAME, ablation.PAIRED_FIGURE_NAME):
        assert (tmp_path / name).stat().st_size > 0
    assert len(list((tmp_path / ablation.SAMPLES_DIR).glob("*.png"))) == 4 * 3 + 4  # the first seed's grids
    page = (tmp_path / ablation.PAGE_NAME).read_text()
    for text in (
        "## The gate",
        "| DDPM | none | DDPM ancestral |",
        "| EDM | both | EDM Euler |",
        "**pure noise**",
        "## Every claim, for and against",
        "Incomplete",
    ):
        assert (text in page) == (text != "Incomplete"), text
    # the page regenerates from the JSON alone
    (tmp_path / ablation.PAGE_NAME).unlink()
    ablation.reanalyse(tmp_path / ablation.JSON_NAME, tmp_path)
    assert "Re-analysed from the stored units" in (tmp_path / ablation.PAGE_NAME).read_text()
