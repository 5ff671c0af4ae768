"""The `diffusers-spectrum` console script: one entry point, one subcommand per task.

Every training subcommand uses the same parser as its example script (`examples/*.py`) and calls the same library
loop, so `diffusers-spectrum train-vae ARGS` and `python examples/train_spectrum_vae.py ARGS` are the same run.
"""

import argparse
import importlib
import os
import sys


# subcommand -> (module, its parse function, its run function, one-line help); the module is imported on use.
SUBCOMMANDS = {
    "demo": ("diffusers_spectrum.demo", None, "main", "train a tiny Spectrum VAE + DiT on the embedded photos"),
    "analyze": (
        "diffusers_spectrum.evaluation.analyze",
        None,
        "main",
        "spectra, slopes, spectral KL and a verdict for a VAE or an encoder",
    ),
    "train-vae": ("diffusers_spectrum.training.vae", "parse_args", "train_vae", "train a Spectrum VAE (ESM / DSM)"),
    "cache-latents": (
        "diffusers_spectrum.training.cache",
        "parse_args",
        "cache_latents",
        "encode a dataset into cached latents (+ REPA targets)",
    ),
    "train-dit": ("diffusers_spectrum.training.dit", "parse_args", "train_dit", "train a DiT with (DoG-)REPA"),
    "sample": ("diffusers_spectrum.pipelines.sampling", "parse_args", "sample", "sample images from a pipeline"),
    "train-unconditional": (
        "diffusers_spectrum.training.unconditional",
        "parse_args",
        "train_unconditional",
        "train a pixel-space UNet (DDPM / EDM) with the spectral regularisers",
    ),
    "train-audio": (
        "diffusers_spectrum.training.audio",
        "parse_args",
        "train_audio",
        "train a waveform UNet1DModel (Dance Diffusion) with the spectral regularisers",
    ),
    "analyze-audio": (
        "diffusers_spectrum.evaluation.audio_analysis",
        None,
        "main",
        "band power spectra, slopes and distances of an audio folder or pipeline",
    ),
    "evaluate-vae": (
        "diffusers_spectrum.evaluation.evaluate",
        "parse_vae_args",
        "evaluate_vae",
        "reconstruction metrics of a VAE (rFID / FD, PSNR, SSIM, low-pass rFID, spectral KL)",
    ),
    "evaluate-pipeline": (
        "diffusers_spectrum.evaluation.evaluate",
        "parse_pipeline_args",
        "evaluate_pipeline",
        "generation metrics of a pipeline (FD, SWD, spectrum distance)",
    ),
}

# Input flags checked before the subcommand's module (torch, diffusers, ...) is imported, so a mistyped local path
# answers at once: LOCAL_FLAGS name local files or folders only; the others take a local path or a Hub id, and are
# checked when the value looks like a local path (`utils.hub.looks_local`).
LOCAL_FLAGS = ("--train_data_dir", "--audio_dir", "--reference_dir", "--model_config_name_or_path")
PATH_OR_HUB_FLAGS = (
    "--vae",
    "--compare",
    "--data",
    "--encoder",
    "--pipeline",
    "--pretrained_vae",
    "--latent_dataset",
    "--pretrained_model_name_or_path",
    "--pretrained_transformer",
    "--pretrained_unet",
    "--repa_encoder",
    "--vf_encoder",
    "--dataset_name",
    "--reference_dataset",
)


def _flag_values(argv: list[str], flag: str) -> list[str]:
    """Values given to `flag` in `argv` (`--flag v`, `--flag=v`; every value of an `nargs="+"` flag)."""
    values = []
    for index, item in enumerate(argv):
        if item.startswith(flag + "="):
            values.append(item.split("=", 1)[1])
        elif item == flag:
            for value in argv[index + 1 :]:
                if value.startswith("--"):
                    break
                values.append(value)
                if flag != "--compare":
                    break
    return values


def missing_local_path(argv: list[str]) -> str | None:
    """The first input flag of `argv` naming a local path that does not exist, as an error message, or None."""
    from .utils.hub import looks_local

    for flag in LOCAL_FLAGS + PATH_OR_HUB_FLAGS:
        for value in _flag_values(argv, flag):
            if not value or os.path.exists(os.path.expanduser(value)):
                continue
            if flag in LOCAL_FLAGS:
                return f"{flag} {value}: no such folder or file; check the path."
            if looks_local(value):
                return f"{flag} {value}: no such folder (a local path that does not exist); check the path."
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="diffusers-spectrum", description=__doc__)
    parser.add_argument(
        "command", choices=sorted(SUBCOMMANDS), help="; ".join(f"{k}: {v[3]}" for k, v in SUBCOMMANDS.items())
    )
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv[:1] or ["--help"])
    command = argv[0]
    prog = f"diffusers-spectrum {command}"
    module_name, parse_name, run_name, _ = SUBCOMMANDS[command]
    if "-h" not in argv and "--help" not in argv:
        message = missing_local_path(argv[1:])
        if message is not None:  # as the subcommand would say it: its return value, or argparse's exit status
            if parse_name is None:
                print(f"{prog}: error: {message}", file=sys.stderr)
                return 2
            parser.exit(2, f"{prog}: error: {message}\n")
    sys.argv[0] = prog  # argparse's usage line names the subcommand
    try:
        module = importlib.import_module(module_name)
        if parse_name is None:  # the module's own main: its errors, one line each (exit status 2)
            return getattr(module, run_name)(argv[1:]) or 0
    except (OSError, ValueError, TypeError) as error:
        parser.exit(2, f"{prog}: error: {error}\n")
    return run_script(getattr(module, parse_name), getattr(module, run_name), argv[1:], prog)


def run_script(parse, run, argv: list[str] | None = None, prog: str | None = None) -> int:
    """`run(parse(argv))` for the console script and the example scripts: bad input found while parsing (a
    `ValueError` from a flag check) exits with status 2 and one line `prog: error: ...`, bad input found while
    running with status 1 and one line; never a traceback for the user's input."""
    prog = prog or os.path.basename(sys.argv[0])
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse(argv)
    except (OSError, ValueError, TypeError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        run(args)
    except (OSError, ValueError, TypeError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
