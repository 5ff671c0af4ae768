"""The `diffusers-spectrum` console script: one entry point, one subcommand per task."""

import argparse
import importlib
import sys


# subcommand -> (module with a `main(argv)` function, one-line help)
SUBCOMMANDS = {
    "demo": ("diffusers_spectrum.demo", "train a tiny Spectrum VAE + DiT on the embedded photos and sample from it"),
    "analyze": ("diffusers_spectrum.analyze", "spectra, slopes, spectral KL and a verdict for a VAE or an encoder"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="diffusers-spectrum", description=__doc__)
    parser.add_argument(
        "command", choices=sorted(SUBCOMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in SUBCOMMANDS.items())
    )
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv[:1] or ["--help"])
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
