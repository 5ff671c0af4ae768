"""The `diffusers-spectrum` console script: one entry point, one subcommand per task.

Every training subcommand uses the same parser as its example script (`examples/*.py`) and calls the same library
loop, so `diffusers-spectrum train-vae ARGS` and `python examples/train_spectrum_vae.py ARGS` are the same run.
"""

import argparse
import importlib
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="diffusers-spectrum", description=__doc__)
    parser.add_argument(
        "command", choices=sorted(SUBCOMMANDS), help="; ".join(f"{k}: {v[3]}" for k, v in SUBCOMMANDS.items())
    )
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv[:1] or ["--help"])
    module_name, parse_name, run_name, _ = SUBCOMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    if parse_name is None:
        return getattr(module, run_name)(argv[1:]) or 0
    sys.argv[0] = f"diffusers-spectrum {argv[0]}"  # argparse's usage line names the subcommand
    args = getattr(module, parse_name)(argv[1:])
    try:
        getattr(module, run_name)(args)
    except (OSError, ValueError, TypeError) as error:  # bad input found while running: a message, not a traceback
        parser.exit(1, f"diffusers-spectrum {argv[0]}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
