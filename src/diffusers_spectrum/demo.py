"""`diffusers-spectrum demo [--output_dir DIR] [--quick]`: the whole method end to end on a CPU, in a few minutes.

On the embedded photo crops (no download), it

1. trains a tiny Spectrum VAE with ESM + DSM (`training.vae.train_vae`, as `examples/train_spectrum_vae.py`),
2. caches its latents (`training.cache.cache_latents`), with REPA targets from a tiny *randomly initialised*
   DINOv2 saved locally (the real `facebook/dinov2-base` needs a download; the demo only shows the plumbing,
   not REPA's benefit),
3. trains a tiny class-conditional DiT with flow matching and DoG-REPA (`training.dit.train_dit`), which writes
   a stock `DiTPipeline` folder,
4. loads that folder with plain `DiffusionPipeline.from_pretrained` and samples a grid (`pipelines.sampling`),
5. measures the VAE's latent spectrum against the image spectrum (`diffusers-spectrum analyze`): plot + JSON.

It calls the library's training loops with the same flags as the example scripts, so it runs from any folder on
any install (a wheel included).
"""

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .utils.flags import add_flags
from .utils.run_folders import record_run_files, restart_run_folder


__all__ = ["DEMO_SETTINGS", "main", "parse_args", "run_demo"]

# Sizes chosen for about 3 minutes on 2 CPU cores; `quick` is for tests (a few steps of everything).
DEMO_SETTINGS = {
    "full": {"resolution": 32, "vae_steps": 1200, "dit_steps": 1500, "num_images": 14, "sample_steps": 25},
    "quick": {"resolution": 32, "vae_steps": 2, "dit_steps": 2, "num_images": 2, "sample_steps": 2},
}
# ESM weight: 10x the authors' 0.01, so that ~1k steps on 112 photos visibly move the latent spectrum.
DEMO_ESM_WEIGHT = 0.1
# Tiny Spectrum VAE (f4, 4 latent channels: 32 px images -> 4 x 8 x 8 latents, one 8 x 8 DSM block).
DEMO_VAE = {
    "block_out_channels": (8, 16, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "latent_channels": 4,
    "sample_size": 32,
}
# Tiny random DINOv2 with patch 4: a 32 px image gives an 8 x 8 token grid = the DiT's grid (8 x 8 latent, patch 1).
DEMO_ENCODER = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "patch_size": 4,
    "image_size": 32,
}


def _stage(number: int, title: str) -> float:
    # Keep the console to progress bars and each script's own summary lines: checkpoint bookkeeping stays quiet.
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("accelerate", "diffusers_spectrum"):
        logging.getLogger(name).setLevel(logging.WARNING)
    print(f"\n[{number}/5] {title}", flush=True)
    return time.time()


def run_demo(
    output_dir: str | Path = "spectrum-demo", quick: bool = False, seed: int = 0, num_threads: int | None = 1
) -> dict:
    """Run the five stages into `output_dir`; returns the summary (also written to `demo_summary.json`).

    `output_dir` must be new, empty or an earlier demo run (whose own files are replaced; nothing else is deleted).
    `num_threads` sets torch's intra-op threads (None keeps torch's default). The demo's models are tiny, so extra
    threads gain little, while OpenMP threads that wait on a core another process is using slow down by 10-30x.
    """
    output_dir, before = restart_run_folder(output_dir, "demo")
    import torch

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    from PIL import Image
    from transformers import Dinov2Config, Dinov2Model
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from .evaluation.analyze import analyze_vae
    from .models import SpectrumAutoencoderKL
    from .pipelines import sampling
    from .pipelines.sampling import load_pipeline
    from .training import cache as cache_loop
    from .training import dit as dit_loop
    from .training import vae as vae_loop
    from .utils.records import write_json

    settings = DEMO_SETTINGS["quick" if quick else "full"]
    start, timings = time.time(), {}
    res = str(settings["resolution"])
    torch.manual_seed(seed)

    # 1. Tiny Spectrum VAE with ESM + DSM
    t0 = _stage(1, "Spectrum VAE (ESM + DSM) on the embedded photos")
    scratch = tempfile.TemporaryDirectory(prefix="spectrum-demo-")  # the initial weights; removed when done
    init_dir = Path(scratch.name) / "vae_init"
    SpectrumAutoencoderKL(**DEMO_VAE).save_pretrained(init_dir)
    vae_dir = output_dir / "vae"
    vae_loop.train_vae(
        vae_loop.parse_args(
            [
                "--pretrained_vae",
                str(init_dir),
                "--output_dir",
                str(vae_dir),
                "--resolution",
                res,
                "--center_crop",
                "--random_flip",
                "--train_batch_size",
                "8",
                "--max_train_steps",
                str(settings["vae_steps"]),
                "--learning_rate",
                "1e-3",
                "--esm_weight",
                str(DEMO_ESM_WEIGHT),
                "--esm_delta",
                "1.0",
                "--dsm_levels",
                "0,8,10,12",
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
                "--seed",
                str(seed),
            ]
        )
    )
    scratch.cleanup()
    record_run_files(output_dir, before)
    timings["vae"] = time.time() - t0

    # 2. Latent cache with REPA targets from a tiny random DINOv2
    t0 = _stage(2, "cache latents + REPA targets (tiny random DINOv2, saved locally)")
    encoder_dir = output_dir / "encoder_tiny_random_dinov2"
    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(**DEMO_ENCODER)).save_pretrained(encoder_dir)
    try:  # DINOv2's processor; the PIL backend needs no torchvision (transformers >= 5)
        from transformers import BitImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import BitImageProcessor as ImageProcessor
    ImageProcessor(image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD).save_pretrained(encoder_dir)
    cache_dir = output_dir / "latents"
    cache_loop.cache_latents(
        cache_loop.parse_args(
            [
                "--pretrained_vae",
                str(vae_dir),
                "--output_dir",
                str(cache_dir),
                "--resolution",
                res,
                "--repa_encoder",
                str(encoder_dir),
                "--repa_grid_size",
                "8",
                "--batch_size",
                "16",
                "--seed",
                str(seed),
            ]
        )
    )
    record_run_files(output_dir, before)
    timings["cache"] = time.time() - t0

    # 3. DiT with flow matching and DoG-REPA, exported as a stock DiTPipeline
    t0 = _stage(3, "DiT (flow matching + DoG-REPA) on the cached latents")
    dit_dir = output_dir / "dit"
    steps = settings["dit_steps"]
    pipeline_dir = dit_loop.train_dit(
        dit_loop.parse_args(
            [
                "--latent_dataset",
                str(cache_dir),
                "--output_dir",
                str(dit_dir),
                "--dit_config",
                "mini",
                "--patch_size",
                "1",
                "--objective",
                "flow",
                "--repa_target_filter",
                "dog",
                "--repa_coeff",
                "0.5",
                "--repa_depth",
                "2",
                "--repa_projector_dim",
                "256",
                "--train_batch_size",
                "16",
                "--max_train_steps",
                str(steps),
                "--learning_rate",
                "5e-4",
                "--use_ema",
                "--ema_decay",
                "0.995",
                "--checkpointing_steps",
                str(steps),
                "--validation_steps",
                str(steps),
                "--num_validation_images",
                "7",
                "--validation_inference_steps",
                str(settings["sample_steps"]),
                "--seed",
                str(seed),
            ]
        )
    )
    record_run_files(output_dir, before)
    timings["dit"] = time.time() - t0

    # 4. Load with plain diffusers and sample a grid
    t0 = _stage(4, "sample from the pipeline folder with DiffusionPipeline.from_pretrained")
    pipe = load_pipeline(pipeline_dir)  # DiffusionPipeline.from_pretrained, strictly
    print(f"loaded {type(pipe).__name__}: {', '.join(f'{k}={type(v).__name__}' for k, v in pipe.components.items())}")
    samples_dir = sampling.sample(
        sampling.parse_args(
            [
                "--pretrained_model_name_or_path",
                str(pipeline_dir),
                "--num_images",
                str(settings["num_images"]),
                "--num_inference_steps",
                str(settings["sample_steps"]),
                "--guidance_scale",
                "1.8",
                "--grid_columns",
                str(min(7, settings["num_images"])),
                "--output_dir",
                str(output_dir / "samples"),
                "--seed",
                str(seed),
            ]
        )
    )
    grid = Image.open(samples_dir / "grid.png")  # 32 px images: shown 4x larger (nearest) for viewing
    grid.resize((grid.width * 4, grid.height * 4), Image.Resampling.NEAREST).save(output_dir / "sample_grid.png")
    timings["sample"] = time.time() - t0

    # 5. Spectrum report of the VAE: image vs latent spectra, slopes, spectral KL, verdict
    t0 = _stage(5, "spectrum report (diffusers-spectrum analyze)")
    report = analyze_vae(
        SpectrumAutoencoderKL.from_pretrained(vae_dir).eval(),
        num_samples=112,
        resolution=settings["resolution"],
        batch_size=16,
        output_dir=output_dir / "spectrum",
        progress=True,
        name="demo Spectrum VAE",
    )
    shutil.copyfile(output_dir / "spectrum" / "spectra.png", output_dir / "spectrum.png")
    timings["analyze"] = time.time() - t0

    # Summary
    vae_metrics = json.loads((vae_dir / "metrics.json").read_text())
    dit_metrics = json.loads((dit_dir / "metrics.json").read_text())
    summary = {
        "wall_seconds": round(time.time() - start, 1),
        "stage_seconds": {k: round(v, 1) for k, v in timings.items()},
        "settings": settings,
        # One source per number: PSNR and the latent statistics from the VAE trainer's final evaluation, every
        # spectral number (slopes, spectral KL, verdict) from the analyze report over all 112 photos.
        "vae": {k: vae_metrics.get(k) for k in ("psnr", "scaling_factor", "latent_convention")},
        "dit": {k: dit_metrics.get(k) for k in ("diffusion", "repa_cosine", "loss", "global_step")},
        "spectrum": {
            k: report.get(k)
            for k in (
                "verdict",
                "image_slope",
                "latent_slope",
                "target_slope",
                "spectral_kl_delta0",
                "spectral_kl_delta1",
                "mean_spectrum_kl_delta1",
                "posterior_std",
                "convention",
                "verdicts",
            )
        },
        "outputs": {
            "pipeline": str(pipeline_dir),
            "sample_grid": str(output_dir / "sample_grid.png"),
            "spectrum_plot": str(output_dir / "spectrum.png"),
            "spectrum_report": str(output_dir / "spectrum" / "report.json"),
            "vae": str(vae_dir),
            "latents": str(cache_dir),
        },
    }
    write_json(output_dir / "demo_summary.json", summary)
    record_run_files(output_dir, before)
    return summary


# Short words for the analyze report's convention block (the report itself holds the full descriptions).
LATENT_WORDS = {"sample": "posterior samples", "mean": "posterior means"}
SPECTRUM_WORDS = {"authors": "the authors' convention, DC kept", "dc_free": "DC removed"}


def _print_summary(summary: dict) -> None:
    from .evaluation.diagnostics import verdicts_phrase

    spectrum, vae, dit = summary["spectrum"], summary["vae"], summary["dit"]
    print("\n" + "=" * 78)
    print(
        f"diffusers-spectrum demo finished in {summary['wall_seconds']:.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in summary['stage_seconds'].items())})"
    )
    # Each number is printed once, from one source: PSNR (decoded from the posterior mean) from the trainer's final
    # evaluation, every spectral number from the analyze report.
    print(f"VAE (trainer's evaluation):  PSNR {vae['psnr']:.2f} dB (posterior mean decoded)")
    convention = spectrum["convention"]
    print(
        f"VAE spectrum (analyze: {LATENT_WORDS.get(convention['latents'], convention['latents'])}, "
        f"{SPECTRUM_WORDS.get(convention['spectrum'], convention['spectrum'])}):\n"
        f"      verdict, where the power lies against the delta=1 target (centroid gap in ln frequency, 95% "
        f"bootstrap interval over the images):\n"
        f"      {verdicts_phrase(spectrum['verdicts'])}\n"
        f"      latent slope {spectrum['latent_slope']:.2f} vs target {spectrum['target_slope']:.2f} (images "
        f"{spectrum['image_slope']:.2f}), spectral KL of the mean curves to the delta=1 target "
        f"{spectrum['mean_spectrum_kl_delta1']:.4f} (numbers beside the verdict, not deciders)"
    )
    print(f"DiT:  {dit['global_step']} steps, final loss {dit['loss']:.4f}, REPA cosine {dit['repa_cosine']:.3f}")
    for name, path in summary["outputs"].items():
        print(f"  {name:<16} {path}")
    print(f'Load it: DiffusionPipeline.from_pretrained("{summary["outputs"]["pipeline"]}")')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="diffusers-spectrum demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_flags(parser, "--output_dir", output_dir="spectrum-demo")
    parser.add_argument("--quick", action="store_true", help="A few steps of every stage (for tests).")
    parser.add_argument(
        "--modality",
        choices=("image", "audio"),
        default="image",
        help="image: Spectrum VAE + DiT on the embedded photos; audio: a waveform UNet1DModel (Dance Diffusion) with "
        "the spectral regularisers on the embedded sounds.",
    )
    add_flags(parser, "--seed")
    parser.add_argument(
        "--num_threads",
        type=int,
        default=1,
        help="torch CPU threads (0 = torch's default). 1 is fastest for these tiny models on a busy machine.",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, force=True)
    if args.modality == "audio":
        from . import demo_audio

        output_dir = args.output_dir if args.output_dir != "spectrum-demo" else "spectrum-demo-audio"
        summary = demo_audio.run_audio_demo(
            output_dir, quick=args.quick, seed=args.seed, num_threads=args.num_threads or None
        )
        demo_audio.print_summary(summary)
        return 0
    summary = run_demo(args.output_dir, quick=args.quick, seed=args.seed, num_threads=args.num_threads or None)
    _print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
