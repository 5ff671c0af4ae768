"""Input that used to train something wrong silently, or fail in a traceback: the cache's latent scale checked
against its VAE and its latents, resumes under other settings refused, regulariser flags validated, audio
resampling counted and upsampling warned about, parse-time errors and damaged files in one line; and what used to be
slow: the package import, a mistyped path, a crop of a long audio file."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from diffusers_spectrum import cli
from diffusers_spectrum.data.audio import AudioTransform, decode_audio, read_clip
from diffusers_spectrum.data.images import ImageTransform
from diffusers_spectrum.data.latents import load_latent_dataset
from diffusers_spectrum.data.sources import load_image_dataset
from diffusers_spectrum.models import SpectrumAutoencoderKL
from diffusers_spectrum.training import audio, dit, unconditional
from diffusers_spectrum.training.latent_cache import latent_statistics, warn_if_badly_scaled, write_latent_cache


def run(argv, capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def tiny_vae(scaling_factor: float = 1.0) -> SpectrumAutoencoderKL:
    torch.manual_seed(0)
    return SpectrumAutoencoderKL(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=16,
        dsm_levels=(0,),
        scaling_factor=scaling_factor,
    ).eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def raw_latent_std(vae, images) -> float:
    batch = torch.stack([ImageTransform(16)(Image.open(p).convert("RGB")) for p in sorted(images.glob("*.png"))])
    with torch.no_grad():
        return float(vae.encode(batch).latent_dist.mean.std())


# ----------------------------------------------------------------------------------------------------------------
# Silent and wrong


@pytest.fixture(scope="module")
def scaled_cache(images, tmp_path_factory):
    """A cache of a VAE whose scaling factor standardises its latents (1 / std), saved with the VAE."""
    root = tmp_path_factory.mktemp("scaled")
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=1.0 / raw_latent_std(vae, images))
    vae.save_pretrained(root / "vae")
    write_latent_cache(
        root / "cache",
        load_image_dataset(train_data_dir=images),
        vae,
        ImageTransform(16),
        mode="mean",
        batch_size=4,
        shard_size=4,
        show_progress=False,
        metadata={"pretrained_vae": str(root / "vae")},
    )
    return root


def test_a_cache_scale_10x_off_its_vae_is_refused_naming_the_key_and_the_fix(scaled_cache, tmp_path):
    import shutil

    cache = shutil.copytree(scaled_cache / "cache", tmp_path / "cache")
    info = json.loads((cache / "cache_info.json").read_text())
    info["settings"]["scaling_factor"] *= 10
    (cache / "cache_info.json").write_text(json.dumps(info))
    args = dit.parse_args(
        [
            "--latent_dataset",
            str(cache),
            "--dit_config",
            "tiny",
            "--max_train_steps",
            "1",
            "--report_to",
            "none",
            "--output_dir",
            str(tmp_path / "dit"),
        ]
    )
    with pytest.raises(ValueError) as caught:
        dit.train_dit(args)
    message = str(caught.value)
    assert "records scaling_factor" in message and "cache_info.json" in message and "Re-cache" in message
    assert not (tmp_path / "dit" / "transformer").exists()


def test_latent_statistics_of_a_well_scaled_cache_are_near_one_and_a_10x_scale_warns(scaled_cache, caplog):
    settings = json.loads((scaled_cache / "cache" / "cache_info.json").read_text())["settings"]
    dataset = load_latent_dataset(scaled_cache / "cache")
    good = latent_statistics(dataset, settings)
    # independent: numpy over the parquet rows, times the recorded factor
    raw = np.stack([np.asarray(row["latents"], dtype=np.float64) for row in dataset])
    assert good["rows"] == 8 and good["std"] == pytest.approx(float((raw * settings["scaling_factor"]).std()), 1e-3)
    assert 0.9 < good["std"] < 1.1 and not warn_if_badly_scaled(good, settings, "cache")
    wrong = {**settings, "scaling_factor": settings["scaling_factor"] * 10}
    bad = latent_statistics(dataset, wrong)
    with caplog.at_level(logging.WARNING):
        assert warn_if_badly_scaled(bad, wrong, "cache")
    assert "THE LATENT SCALE LOOKS WRONG" in caplog.text
    suggested = float(caplog.text.split("scaling_factor ~ ")[1].split()[0])
    assert suggested == pytest.approx(settings["scaling_factor"], rel=0.05)


def test_a_cache_is_not_reused_after_its_vae_was_retrained_in_place(images, tmp_path, capsys):
    vae_dir = tmp_path / "vae"
    tiny_vae().save_pretrained(vae_dir)
    argv = [
        "cache-latents",
        "--pretrained_vae",
        str(vae_dir),
        "--train_data_dir",
        str(images),
        "--resolution",
        "16",
        "--output_dir",
        str(tmp_path / "cache"),
    ]
    assert run(argv, capsys)[0] == 0
    assert run(argv, capsys)[0] == 0  # the same VAE: the complete cache is reused
    vae = tiny_vae()
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.1)  # "retrained" in place
    vae.save_pretrained(vae_dir)
    code, err = run(argv, capsys)
    assert code == 1 and "different settings (vae_weights_sha256; the VAE weights changed since)" in err


@pytest.mark.slow
def test_resuming_an_edm_run_as_ddpm_is_refused_naming_the_flag(tmp_path):
    common = [
        "--unet_config",
        "tiny",
        "--resolution",
        "16",
        "--train_batch_size",
        "2",
        "--checkpointing_steps",
        "1",
        "--validation_steps",
        "100",
        "--report_to",
        "none",
        "--output_dir",
        str(tmp_path / "run"),
    ]
    unconditional.train_unconditional(
        unconditional.parse_args([*common, "--formulation", "edm", "--max_train_steps", "1"])
    )
    before = (tmp_path / "run" / "model_index.json").read_text()
    resumed = unconditional.parse_args(
        [
            *common,
            "--formulation",
            "ddpm",
            "--max_train_steps",
            "2",
            "--fourier_weight",
            "0.1",
            "--resume_from_checkpoint",
            "latest",
        ]
    )
    with pytest.raises(ValueError) as caught:
        unconditional.train_unconditional(resumed)
    message = str(caught.value)
    assert "--formulation 'edm' -> 'ddpm'" in message and "--fourier_on False -> True" in message
    assert (tmp_path / "run" / "model_index.json").read_text() == before  # the EDM export is not replaced


REGULARIZER_CASES = [
    (unconditional, ["--fourier_weight", "0.1", "--fourier_amplitude_weight", "-5"], "--fourier_amplitude_weight"),
    (unconditional, ["--wavelet_weight", "0.1", "--wavelet_level_weights=-1,-1,-1"], "--wavelet_level_weights"),
    (unconditional, ["--wavelet_level_weights", "1,1"], "has 2 entries but --wavelet_levels is 3"),
    (unconditional, ["--fourier_weight", "nan"], "--fourier_weight must be a finite number"),
    (unconditional, ["--spectral_snr_gamma", "nan"], "--spectral_snr_gamma must be a finite number"),
    (unconditional, ["--spectral_snr_gamma", "0"], "--spectral_snr_gamma must be positive"),
    (unconditional, ["--learning_rate", "inf"], "--learning_rate must be a finite number"),
    (audio, ["--stft_weight", "nan"], "--stft_weight must be a finite number"),
    (dit, ["--fourier_weight", "-1", "--pretrained_vae", "x/y"], "--fourier_weight must be >= 0"),
]


@pytest.mark.parametrize("module, flags, message", REGULARIZER_CASES, ids=[c[2][:40] for c in REGULARIZER_CASES])
def test_regularizer_flags_are_validated_at_parse_time(module, flags, message):
    base = ["--unet_config", "tiny", "--resolution", "16"] if module is unconditional else []
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        module.parse_args([*base, *flags])


def sine_file(path, rate: int, seconds: float = 0.5, channels: int = 1, amplitude: float = 0.3):
    t = np.arange(int(rate * seconds)) / rate
    wave = amplitude * np.sin(2 * np.pi * 440 * t)
    soundfile.write(path, np.repeat(wave[:, None], channels, axis=1).astype(np.float32), rate, subtype="FLOAT")
    return path


def test_audio_resampling_is_counted_per_rate_and_upsampling_warned(tmp_path, capsys, caplog):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(3):
        sine_file(folder / f"low_{i}.wav", 8000)
    for i in range(2):
        sine_file(folder / f"high_{i}.wav", 192000)
    with caplog.at_level(logging.WARNING):
        code, err = run(
            [
                "analyze-audio",
                "--audio_dir",
                str(folder),
                "--sample_rate",
                "16000",
                "--sample_size",
                "4000",
                "--num_bands",
                "8",
                "--output_dir",
                str(tmp_path / "report"),
            ],
            capsys,
        )
    assert code == 0, err
    report = json.loads((tmp_path / "report" / "audio_report.json").read_text())
    assert report["source_sample_rates"] == {f"folder:{folder}": {"8000": 3, "192000": 2}}
    assert "upsampling 8000 Hz audio to 16000 Hz: its bands above 4000 Hz are empty" in caplog.text
    assert "192000 Hz audio to" not in caplog.text  # downsampling loses nothing recorded: no warning
    transform = AudioTransform(16000, 1024)
    for path in sorted(folder.glob("*.wav")):
        read_clip(str(path), transform)
    assert transform.resampling_summary() == "5 clips (3 at 8000 Hz, 2 at 192000 Hz); 5 resampled to 16000 Hz"


def test_an_all_silent_folder_is_one_line_naming_it(tmp_path, capsys):
    folder = tmp_path / "silence"
    folder.mkdir()
    for i in range(2):
        sine_file(folder / f"{i}.wav", 16000, amplitude=0.0)
    code, err = run(
        [
            "analyze-audio",
            "--audio_dir",
            str(folder),
            "--sample_size",
            "4000",
            "--output_dir",
            str(tmp_path / "report"),
        ],
        capsys,
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"folder {folder}: all 2 clips are silent" in lines[0], err


# ----------------------------------------------------------------------------------------------------------------
# Obscure: parse-time errors and damaged files, one line each


PARSE_CASES = [
    (["train-dit", "--space", "dct", "--latent_dataset", "x/y"], "--space dct trains on images"),
    (["train-unconditional", "--formulation", "edm", "--prediction_type", "sample"], "applies to --formulation ddpm"),
    (["train-vae", "--fourier_weight", "1"], "unrecognized arguments"),
    (["train-audio", "--stft_fft_sizes", "64"], "pass all three of --stft_fft_sizes"),
]


@pytest.mark.parametrize("argv, message", PARSE_CASES, ids=[c[0][0] for c in PARSE_CASES])
def test_parse_time_errors_are_one_line_without_a_traceback(argv, message, capsys):
    code, err = run(argv, capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1


@pytest.fixture(scope="module")
def two_caches(images, tmp_path_factory):
    root = tmp_path_factory.mktemp("caches")
    for channels in (4, 8):
        torch.manual_seed(0)
        vae = SpectrumAutoencoderKL(
            block_out_channels=(8, 8),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=4,
            latent_channels=channels,
            sample_size=16,
            dsm_levels=(0,),
        ).eval()
        vae.save_pretrained(root / f"vae{channels}")
        write_latent_cache(
            root / f"cache{channels}",
            load_image_dataset(train_data_dir=images),
            vae,
            ImageTransform(16),
            batch_size=4,
            shard_size=4,
            show_progress=False,
            metadata={"pretrained_vae": str(root / f"vae{channels}")},
        )
    return root


def train_dit_cli(cache, out) -> list[str]:
    argv = [
        "train-dit",
        "--latent_dataset",
        str(cache),
        "--dit_config",
        "tiny",
        "--patch_size",
        "2",
        "--train_batch_size",
        "2",
        "--max_train_steps",
        "1",
        "--report_to",
        "none",
    ]
    return [*argv, "--output_dir", str(out)]


def test_a_shard_from_an_8_channel_vae_is_one_line_naming_it(two_caches, tmp_path, capsys):
    import shutil

    cache = shutil.copytree(two_caches / "cache4", tmp_path / "cache")
    shutil.copyfile(two_caches / "cache8" / "data" / "train-00001.parquet", cache / "data" / "train-00001.parquet")
    code, err = run(train_dit_cli(cache, tmp_path / "out"), capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "train-00001.parquet holds latents of shape (8, 8, 8) but cache_info.json says (4, 8, 8)" in lines[0]
    assert "delete" in lines[0] and "re-run the cache command" in lines[0]


def test_a_corrupt_shard_body_is_one_line_naming_it(two_caches, tmp_path, capsys):
    import shutil

    cache = shutil.copytree(two_caches / "cache4", tmp_path / "cache")
    shard = cache / "data" / "train-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[100 : len(data) // 2] = b"\x55" * (len(data) // 2 - 100)  # data pages; the footer stays readable
    shard.write_bytes(bytes(data))
    code, err = run(train_dit_cli(cache, tmp_path / "out"), capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert f"latent cache shard {shard} is corrupt" in lines[0] and "re-run the cache command" in lines[0]


# ----------------------------------------------------------------------------------------------------------------
# Slow: imports, mistyped paths, long audio files


HEAVY = ("diffusers", "transformers", "datasets", "accelerate", "scipy", "matplotlib", "torch")


def modules_after(code: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", code + "; import sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(result.stdout.split())


def test_the_package_root_is_lazy_and_every_public_name_resolves():
    assert not modules_after("import diffusers_spectrum") & set(HEAVY)
    loaded = modules_after("from diffusers_spectrum import esm_loss")
    assert "torch" in loaded and not loaded & {"diffusers", "transformers", "datasets", "accelerate", "scipy"}
    import diffusers_spectrum

    assert all(getattr(diffusers_spectrum, name, None) is not None for name in diffusers_spectrum.__all__)
    # what diffusers' loader looks up on the library named in model_index.json
    from diffusers import DiffusionPipeline, ModelMixin

    assert diffusers_spectrum.DiffusionPipeline is DiffusionPipeline and diffusers_spectrum.ModelMixin is ModelMixin
    assert issubclass(diffusers_spectrum.SpectrumAutoencoderKL, ModelMixin)
    assert getattr(diffusers_spectrum, "PreTrainedModel", None) is None
    with pytest.raises(AttributeError):
        diffusers_spectrum.no_such_name  # noqa: B018


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["analyze", "--vae", "/no/such/folder", "--output_dir", "o"],
        ["train-vae", "--train_data_dir", "/no/such", "--output_dir", "o"],
        ["analyze-audio", "--audio_dir", "/no/such", "--output_dir", "o"],
        ["sample", "--pretrained_model_name_or_path", "./no/pipeline"],
    ],
    ids=["help", "analyze", "train-vae", "analyze-audio", "sample"],
)
def test_help_and_a_mistyped_local_path_answer_before_any_heavy_import(argv):
    code = (
        "import sys; from diffusers_spectrum import cli\n"
        f"try:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('LOADED', ' '.join(m for m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    loaded = set(result.stdout.split("LOADED", 1)[1].split())
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    if argv[0] != "--help":
        assert "no such folder" in result.stderr and "Traceback" not in result.stderr


SUBCOMMAND_FLAG_ERRORS = {
    "train-vae": ["--kl_weight", "nan"],
    "cache-latents": ["--pretrained_vae", "x/y", "--output_dir", "o", "--resolution", "0"],
    "train-dit": ["--pretrained_vae", "x/y", "--fourier_weight", "-1"],
    "sample": ["--pretrained_model_name_or_path", "x/y", "--num_images", "0"],
    "train-unconditional": ["--resolution", "32", "--fourier_weight", "nan"],
    "train-audio": ["--stft_weight", "nan"],
    "analyze": ["--vae", "x/y", "--output_dir", "o", "--num_samples", "0"],
    "analyze-audio": ["--audio_dir", ".", "--output_dir", "o", "--num_bands", "0"],
    "evaluate-vae": ["--vae", "x/y", "--num_samples", "0"],
    "evaluate-pipeline": ["--pipeline", "x/y", "--num_samples", "1"],
}


def test_every_subcommands_help_and_flag_errors_import_no_diffusers():
    """The flag parsers live with their loops but import diffusers, transformers, datasets, accelerate, scipy and
    matplotlib only inside the functions that run (torch, for the modules' tensor helpers, is allowed). One process
    runs every command's `--help` and a bad flag, then lists what was imported."""
    runs = [[command, "--help"] for command in SUBCOMMAND_FLAG_ERRORS]
    runs += [[command, *flags] for command, flags in SUBCOMMAND_FLAG_ERRORS.items()]
    code = (
        "import sys; from diffusers_spectrum import cli\n"
        f"for argv in {runs!r}:\n"
        "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
        "print('LOADED', ' '.join(m for m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    loaded = set(result.stdout.split("LOADED", 1)[1].split())
    assert not loaded & (set(HEAVY) - {"torch"}), loaded & set(HEAVY)
    errors = [line for line in result.stderr.splitlines() if ": error:" in line]
    assert len(errors) == len(SUBCOMMAND_FLAG_ERRORS) and "Traceback" not in result.stderr, result.stderr


def test_the_parsers_copies_of_library_constants_match_them():
    from diffusers_spectrum.models.dit_repa import REPA_DEFAULTS
    from diffusers_spectrum.pipelines.edm_pipeline import EDM_SCHEDULERS

    assert unconditional.EDM_SCHEDULER_KINDS == EDM_SCHEDULERS
    assert dit.REPA_LOSS_WEIGHTS == {name: value["loss_weight"] for name, value in REPA_DEFAULTS.items()}


def test_a_crop_of_a_long_file_reads_only_its_frames_and_equals_the_full_decode(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    path = tmp_path / "long.flac"
    soundfile.write(path, (0.1 * rng.standard_normal((48000 * 60, 2))).astype(np.float32), 48000)
    transform = AudioTransform(16000, 4096, channels=1, random_crop=True, seed=3)
    frames_read = []
    real_read = soundfile.SoundFile.read

    def counting_read(self, frames=-1, *args, **kwargs):
        out = real_read(self, frames, *args, **kwargs)
        frames_read.append(out.shape[0])
        return out

    monkeypatch.setattr(soundfile.SoundFile, "read", counting_read)
    clips = [read_clip(str(path), transform, position=i, epoch=2)[0] for i in range(4)]
    assert max(frames_read) < 4096 * 3 + 200  # the crop at 48 kHz plus the resampler's reach, not 2.88 M frames
    monkeypatch.setattr(soundfile.SoundFile, "read", real_read)
    waveform, rate = decode_audio(str(path))
    for i, clip in enumerate(clips):
        torch.testing.assert_close(clip, transform.crop(waveform, rate, position=i, epoch=2)[0], rtol=0, atol=1e-6)
