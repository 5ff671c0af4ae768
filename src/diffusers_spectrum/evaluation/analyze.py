"""`diffusers-spectrum analyze`: a VAE's latent spectrum (or a REPA encoder's features), in numbers and plots.

    diffusers-spectrum analyze --vae PATH_OR_ID --data PATH_OR_ID --num_samples 64 --output_dir DIR
    diffusers-spectrum analyze --compare VAE_A VAE_B --data PATH_OR_ID --output_dir DIR
    diffusers-spectrum analyze --encoder facebook/dinov2-base --data PATH_OR_ID --output_dir DIR

writes ``DIR/report.json`` and PNG plots beside it. Python API: `analyze_vae`, `compare_vaes` (here) and
`encoder_analysis.analyze_encoder`. The verdict rule and its thresholds are in
`diffusers_spectrum.evaluation.diagnostics` and are repeated in every report.
"""

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.autoencoder_kl_spectral import load_autoencoder
from ..models.checks import check_resolution
from ..spectral import power_law_slope, radial_spectrum
from ..training.data import image_batches_from
from ..training.utils import write_json
from . import diagnostics, plotting


__all__ = ["analyze_vae", "compare_vaes", "main", "parse_args"]

logger = logging.getLogger(__name__)
EMBEDDED_PHOTO_SIZE = 64  # side of the embedded photo crops (`data.embedded_dataset_dir`)


# ------------------------------------------------------------------------------------------------
# Loading


# ------------------------------------------------------------------------------------------------
# VAE view


@torch.no_grad()
def analyze_vae(
    vae,
    data=None,
    num_samples: int = 64,
    resolution: int = 256,
    batch_size: int = 8,
    output_dir: str | Path | None = None,
    dsm_levels=(0, 8, 10, 12),
    n_bins: int = 16,
    slope_tolerance: float = diagnostics.VERDICT_SLOPE_TOLERANCE,
    sample_posterior: bool = False,
    device="cpu",
    image_column: str = "image",
    split: str = "train",
    progress: bool = True,
    name: str | None = None,
) -> dict:
    """Latent spectra, slopes, spectral KL, RMSC, per-channel spectra, DSM low-pass errors and a verdict for a VAE.

    Args:
        vae: a VAE instance, or a folder / Hub id for `models.load_autoencoder`.
        data: local image folder / parquet files, a Hub dataset id, or ``None`` for the embedded photos.
        num_samples: images read (streamed; unreadable ones are skipped and counted).
        resolution: images are resized and centre-cropped to this side (256 = the authors' CelebA setting).
        dsm_levels: DSM mask levels of the low-pass view (0 = plain reconstruction); ``()`` skips decoding.
        sample_posterior: analyse posterior samples (what ESM trains) instead of the posterior mean.
        output_dir: if given, write ``report.json`` and ``spectra.png``, ``channel_spectra.png``, ``dsm_lowpass.png``.

    Returns:
        The report dict (see the module docstring of `diffusers_spectrum.evaluation.diagnostics` for the verdict rule).
    """
    start = time.perf_counter()
    name = name or (str(vae) if isinstance(vae, (str, Path)) else type(vae).__name__)
    vae = load_autoencoder(vae, device=device, torch_dtype=torch.float32)
    dsm_levels = tuple(int(k) for k in dsm_levels)
    check_resolution(vae, resolution, dsm_levels)
    if data is None and resolution > EMBEDDED_PHOTO_SIZE:
        logger.warning(
            "The embedded photos are %d px: upsampling them to %d px steepens the image spectrum; pass --data for "
            "a real evaluation or --resolution %d.",
            EMBEDDED_PHOTO_SIZE,
            resolution,
            EMBEDDED_PHOTO_SIZE,
        )
    from ..training.data import SkipCounter

    skips = SkipCounter()
    batches = image_batches_from(data, num_samples, resolution, batch_size, image_column, split, skip_counter=skips)
    collected = {
        key: []
        for key in ("image", "target", "latent", "kl0", "kl1", "rmsc", "channels", "image_power", "latent_power")
    }
    lowpass = {level: [] for level in dsm_levels}
    latent_shape = None
    for images in tqdm(
        batches, desc=f"analyze {name}", total=math.ceil(num_samples / batch_size), disable=not progress
    ):
        images = images.to(device=device, dtype=vae.dtype)
        posterior = vae.encode(images).latent_dist
        latents = (posterior.sample() if sample_posterior else posterior.mode()).float()
        latent_shape = list(latents.shape[1:])
        summary = diagnostics.spectrum_summary(images.float(), latents, n_bins=n_bins)
        for key in ("image", "target", "latent"):
            collected[key].append(summary[key].cpu())
        collected["kl0"].append(summary["spectral_kl_delta0"].cpu())
        collected["kl1"].append(summary["spectral_kl_delta1"].cpu())
        collected["rmsc"].append(diagnostics.rms_spatial_contrast(latents).cpu())
        collected["channels"].append(diagnostics.channel_spectra(latents, n_bins).cpu())
        collected["image_power"].append(radial_spectrum(images.float(), n_bins).cpu())
        collected["latent_power"].append(radial_spectrum(latents, n_bins).cpu())
        if dsm_levels:
            errors = diagnostics.lowpass_reconstruction_errors(
                lambda z: vae.decode(z.to(vae.dtype)).sample.clamp(-1, 1), images.float(), latents, dsm_levels
            )
            for level, value in errors.items():
                lowpass[level].append(value.cpu())
    if latent_shape is None:
        raise ValueError(f"The dataset {data!r} gave no readable images ({skips.count} skipped).")
    spectra = {key: torch.cat(value) for key, value in collected.items()}
    slopes = {key: float(power_law_slope(spectra[key].mean(0))) for key in ("image", "target", "latent")}
    mean_kl1 = float(spectra["kl1"].mean())
    verdict = diagnostics.spectrum_verdict(slopes["latent"], slopes["target"], slope_tolerance, mean_kl1)
    channel_mean = spectra["channels"].mean(0)  # (C, n_bins)
    lowpass_mse = {level: float(torch.cat(values).mean()) for level, values in lowpass.items()}
    report = {
        "kind": "vae",
        "name": name,
        "verdict": verdict,
        "verdict_thresholds": {
            "rule": (
                "latent_slope - target_slope > tol: over-noisy; < -tol: over-smoothed; else matched if "
                "spectral_kl_delta1 <= kl_threshold, otherwise the sign of the slope gap"
            ),
            "slope_tolerance": slope_tolerance,
            "kl_threshold": diagnostics.VERDICT_KL_THRESHOLD,
            "target_slope": slopes["target"],
            "over_noisy_above": slopes["target"] + slope_tolerance,
            "over_smoothed_below": slopes["target"] - slope_tolerance,
            "slopes": "log-log slopes of the sample-mean normalised log spectra, f_k = k + 1",
        },
        "image_slope": slopes["image"],
        "target_slope": slopes["target"],
        "latent_slope": slopes["latent"],
        "image_power_slope": float(power_law_slope(spectra["image_power"].mean(0), "center")),
        "latent_power_slope": float(power_law_slope(spectra["latent_power"].mean(0), "center")),
        "spectral_kl_delta0": float(spectra["kl0"].mean()),
        "spectral_kl_delta1": float(spectra["kl1"].mean()),
        "spectral_kl_delta1_std": float(spectra["kl1"].std(unbiased=False)),
        "rmsc": float(spectra["rmsc"].mean()),
        "rmsc_std": float(spectra["rmsc"].std(unbiased=False)),
        "num_samples": int(spectra["latent"].shape[0]),
        "skipped_images": skips.count,
        "resolution": resolution,
        "latent_shape": latent_shape,
        "sample_posterior": sample_posterior,
        "n_bins": n_bins,
        "spectra": {key: diagnostics.mean_std(spectra[key]) for key in ("image", "target", "latent")},
        "channel_spectra": channel_mean.tolist(),
        "channel_slopes": [float(s) for s in power_law_slope(channel_mean)],
        "dsm_lowpass_mse": {str(level): value for level, value in lowpass_mse.items()},
        "dsm_lowpass_psnr": {str(level): 10 * math.log10(4.0 / max(mse, 1e-12)) for level, mse in lowpass_mse.items()},
        "vae_config": {
            k: vae.config.get(k) for k in ("latent_channels", "block_out_channels", "scaling_factor", "shift_factor")
        },
        "reference_spectra": diagnostics.REFERENCE_SPECTRA,
        "elapsed_s": time.perf_counter() - start,
    }
    report["vae_config"]["block_out_channels"] = list(report["vae_config"]["block_out_channels"] or [])
    if output_dir is not None:
        _write_vae_outputs(report, spectra, Path(output_dir))
    return report


def _write_vae_outputs(report: dict, spectra: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    slopes = f"latent slope {report['latent_slope']:.2f}, target {report['target_slope']:.2f}"
    title = f"{report['name']}: {report['verdict']} ({slopes})"
    plots = {"spectra": "spectra.png", "channel_spectra": "channel_spectra.png"}
    plotting.plot_spectra(
        spectra["image"], spectra["latent"], 1.0, spectra["target"], output_dir / plots["spectra"], title
    )
    plotting.plot_channel_spectra(spectra["channels"], output_dir / plots["channel_spectra"])
    if report["dsm_lowpass_mse"]:
        plots["dsm_lowpass"] = "dsm_lowpass.png"
        plotting.plot_lowpass_errors({report["name"]: report["dsm_lowpass_mse"]}, output_dir / plots["dsm_lowpass"])
    report["plots"] = plots
    write_json(output_dir / "report.json", report, sort_keys=False)


def compare_vaes(vaes, names=None, output_dir: str | Path | None = None, **kwargs) -> dict:
    """`analyze_vae` for several VAEs on the same images, plus one plot and one table.

    Writes ``output_dir/<name>/report.json`` per VAE and ``compare.json``, ``compare.md``, ``compare.png``,
    ``compare_dsm_lowpass.png``. Returns ``{"reports": {name: report}, "table": [rows]}``.
    """
    vaes = list(vaes)
    if not vaes:
        raise ValueError("compare_vaes needs at least one VAE.")
    if names is None:
        names = [Path(str(v)).name or str(v) if isinstance(v, (str, Path)) else f"vae{i}" for i, v in enumerate(vaes)]
    names = [f"{n}_{i}" if list(names).count(n) > 1 else n for i, n in enumerate(names)]
    reports = {}
    for vae, name in zip(vaes, names):
        subdir = None if output_dir is None else Path(output_dir) / name
        reports[name] = analyze_vae(vae, output_dir=subdir, name=name, **kwargs)
    columns = ("verdict", "latent_slope", "target_slope", "spectral_kl_delta0", "spectral_kl_delta1", "rmsc")
    table = [
        {"name": name, **{c: report[c] for c in columns}, "dsm_lowpass_mse": report["dsm_lowpass_mse"]}
        for name, report in reports.items()
    ]
    result = {"reports": reports, "table": table}
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        latent = {name: np.asarray([r["spectra"]["latent"]["mean"]]) for name, r in reports.items()}
        target = np.asarray([next(iter(reports.values()))["spectra"]["target"]["mean"]])
        plotting.plot_compare(latent, target, path=output_dir / "compare.png")
        lowpass = {name: r["dsm_lowpass_mse"] for name, r in reports.items() if r["dsm_lowpass_mse"]}
        if lowpass:
            plotting.plot_lowpass_errors(lowpass, output_dir / "compare_dsm_lowpass.png")
        write_json(output_dir / "compare.json", {"table": table}, sort_keys=False)
        lines = ["| " + " | ".join(("name",) + columns) + " |", "|" + "---|" * (len(columns) + 1)]
        for row in table:
            cells = [row["name"]] + [row[c] if isinstance(row[c], str) else f"{row[c]:.4g}" for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
        (output_dir / "compare.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return result


# ------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="diffusers-spectrum analyze", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--vae", help="VAE folder or Hub id (any AutoencoderKL; a pipeline folder uses its vae/).")
    source.add_argument("--compare", nargs="+", metavar="VAE", help="several VAEs: one plot and one table.")
    source.add_argument("--encoder", help="transformers vision backbone (REPA target), e.g. facebook/dinov2-base.")
    parser.add_argument(
        "--data",
        default=None,
        help="image folder / parquet files or Hub dataset id (streamed). Default: the embedded photos.",
    )
    parser.add_argument("--num_samples", type=int, default=64, help="images to analyse.")
    parser.add_argument("--output_dir", required=True, help="where report.json and the PNG plots are written.")
    parser.add_argument(
        "--resolution", type=int, default=256, help="image side after resize + centre crop (VAE input)."
    )
    parser.add_argument("--batch_size", type=int, default=8, help="images per forward pass.")
    parser.add_argument(
        "--dsm_levels", default="0,8,10,12", help="DSM low-pass levels, comma-separated ('' to skip decoding)."
    )
    parser.add_argument("--n_bins", type=int, default=16, help="radial frequency bands.")
    parser.add_argument(
        "--slope_tolerance",
        type=float,
        default=diagnostics.VERDICT_SLOPE_TOLERANCE,
        help="verdict tolerance on the slope gap.",
    )
    parser.add_argument(
        "--sample_posterior", action="store_true", help="analyse posterior samples instead of the mean."
    )
    parser.add_argument("--grid_size", type=int, default=16, help="encoder token grid side (--encoder).")
    parser.add_argument("--image_column", default="image", help="dataset column holding the images.")
    parser.add_argument("--split", default="train", help="dataset split.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device.")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar.")
    args = parser.parse_args(argv)
    if args.num_samples < 1 or args.batch_size < 1:
        parser.error("--num_samples and --batch_size must be positive.")
    try:
        args.dsm_levels = tuple(int(v) for v in args.dsm_levels.split(",") if v.strip())
    except ValueError:
        parser.error(f"--dsm_levels must be comma-separated integers, got {args.dsm_levels!r}.")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    common = dict(
        data=args.data,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        device=args.device,
        image_column=args.image_column,
        split=args.split,
        progress=not args.no_progress,
        n_bins=args.n_bins,
    )
    vae_options = dict(
        resolution=args.resolution,
        dsm_levels=args.dsm_levels,
        slope_tolerance=args.slope_tolerance,
        sample_posterior=args.sample_posterior,
    )
    try:
        if args.encoder:
            from .encoder_analysis import analyze_encoder

            report = analyze_encoder(args.encoder, output_dir=args.output_dir, grid_size=args.grid_size, **common)
            print(f"{args.encoder}: RMSC " + ", ".join(f"{k} {v['rmsc']:.3f}" for k, v in report["filters"].items()))
        elif args.compare:
            result = compare_vaes(args.compare, output_dir=args.output_dir, **common, **vae_options)
            for row in result["table"]:
                slope, kl = row["latent_slope"], row["spectral_kl_delta1"]
                print(f"{row['name']}: {row['verdict']} (latent slope {slope:.3f}, spectral KL d1 {kl:.4f})")
        else:
            report = analyze_vae(args.vae, output_dir=args.output_dir, **common, **vae_options)
            print(
                f"{args.vae}: {report['verdict']} | latent slope {report['latent_slope']:.3f} vs target "
                f"{report['target_slope']:.3f} (image {report['image_slope']:.3f}) | spectral KL d0 "
                f"{report['spectral_kl_delta0']:.4f} d1 {report['spectral_kl_delta1']:.4f} | RMSC {report['rmsc']:.3f}"
            )
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"diffusers-spectrum analyze: error: {error}", file=sys.stderr)
        return 2
    print(
        f"report written to {Path(args.output_dir) / 'report.json'}"
        if not args.compare
        else f"tables written to {args.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
