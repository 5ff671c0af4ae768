#!/usr/bin/env python
"""Make the README's pictures and comparison table from real runs (nothing typed by hand).

    python scripts/readme_figures.py --output_dir readme-run

1. `diffusers-spectrum demo` (full size, into `spectrum-demo` in the current folder, as a user runs it); its sample
   grid and spectrum plot are copied to
   docs/demo_sample_grid.png and docs/demo_spectrum.png, its printed summary to docs/demo_output.txt.
2. The same tiny VAE trained the same steps without ESM / DSM (`--esm_weight 0 --dsm_levels 0`), then
   `diffusers-spectrum analyze --compare` of the two on the 112 embedded photos at 32 px; the plot is copied to
   docs/compare_spectra.png and the table to docs/compare_spectra.md.
"""

import argparse
import contextlib
import io
import shutil
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--output_dir",
        default="readme-run",
        help="Scratch folder for the runs: new, empty or an earlier run of this script (its own files are replaced).",
    )
    args = parser.parse_args(argv)
    docs = REPO / "docs"
    from diffusers_spectrum.utils.run_folders import record_run_files, restart_run_folder

    out, before = restart_run_folder(args.output_dir, "readme-figures")

    import torch

    from diffusers_spectrum import cli
    from diffusers_spectrum.demo import DEMO_ESM_WEIGHT, DEMO_SETTINGS, DEMO_VAE
    from diffusers_spectrum.models import SpectrumAutoencoderKL
    from diffusers_spectrum.training import vae as vae_loop

    # 1. The demo, its printed summary kept verbatim
    start = time.time()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        cli.main(["demo"])  # the default output folder, spectrum-demo
    summary_text = printed.getvalue()
    sys.stdout.write(summary_text)
    (docs / "demo_output.txt").write_text(summary_text[summary_text.index("=" * 20) :], encoding="utf-8")
    demo = Path("spectrum-demo")
    shutil.copyfile(demo / "sample_grid.png", docs / "demo_sample_grid.png")
    shutil.copyfile(demo / "spectrum.png", docs / "demo_spectrum.png")
    print(f"demo: {time.time() - start:.0f} s")

    # 2. The plain VAE (no ESM / DSM), same architecture, data, steps and seed as the demo's
    settings = DEMO_SETTINGS["full"]
    torch.manual_seed(0)
    SpectrumAutoencoderKL(**DEMO_VAE).save_pretrained(out / "plain_init")
    vae_loop.train_vae(
        vae_loop.parse_args(
            [
                "--pretrained_vae",
                str(out / "plain_init"),
                "--output_dir",
                str(out / "plain_vae"),
                "--resolution",
                str(settings["resolution"]),
                "--center_crop",
                "--random_flip",
                "--train_batch_size",
                "8",
                "--max_train_steps",
                str(settings["vae_steps"]),
                "--learning_rate",
                "1e-3",
                "--esm_weight",
                "0",
                "--dsm_levels",
                "0",
                "--perceptual_weight",
                "0",
                "--disc_weight",
                "0",
                "--checkpointing_steps",
                str(settings["vae_steps"]),
                "--validation_steps",
                str(settings["vae_steps"]),
                "--latent_stats_samples",
                "112",
                "--report_to",
                "none",
                "--seed",
                "0",
            ]
        )
    )
    print(f"(the demo VAE used ESM weight {DEMO_ESM_WEIGHT} and DSM levels 0,8,10,12)")
    compare = out / "compare"
    code = cli.main(
        [
            "analyze",
            "--compare",
            str(demo / "vae"),
            str(out / "plain_vae"),
            "--num_samples",
            "112",
            "--resolution",
            str(settings["resolution"]),
            "--output_dir",
            str(compare),
            "--no_progress",
        ]
    )
    if code:
        return code
    for name in ("compare_spectra.png", "spectra.png", "compare.png"):
        if (compare / name).is_file():
            shutil.copyfile(compare / name, docs / "compare_spectra.png")
            break
    for name in ("compare.md", "table.md"):
        if (compare / name).is_file():
            shutil.copyfile(compare / name, docs / "compare_spectra.md")
            break
    record_run_files(out, before)
    print(f"total: {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
