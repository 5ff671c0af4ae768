"""`diffusers-spectrum analyze`: a VAE's latent spectrum (or a REPA encoder's features), in numbers and plots.

    diffusers-spectrum analyze --vae PATH_OR_ID --data PATH_OR_ID --num_samples 64 --output_dir DIR
    diffusers-spectrum analyze --compare VAE_A VAE_B --data PATH_OR_ID --output_dir DIR
    diffusers-spectrum analyze --encoder facebook/dinov2-base --data PATH_OR_ID --output_dir DIR

writes ``DIR/report.json`` and PNG plots beside it. Python API: `analyze_vae`, `compare_vaes` (here) and
`encoder_analysis.analyze_encoder`. The verdict rule (where the latents' spectral power lies against the delta = 1
target, with a bootstrap interval over images) and its tolerance are in `diffusers_spectrum.evaluation.diagnostics`
and are repeated in every report; the DC-kept and the DC-free verdicts are reported side by side. The DSM low-pass
view reports each level's PSNR and its drop from level 0 (the drop separates low-pass fidelity from plain
reconstruction quality), with a t interval over images.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..utils.flags import add_flags
from ..utils.records import write_json
from ..utils.run_folders import claim_output_dir
from . import diagnostics


__all__ = ["analyze_vae", "compare_vaes", "main", "parse_args"]

logger = logging.getLogger(__name__)
VIEW_WORDS = {"authors": "DC kept", "dc_free": "DC free"}


# ------------------------------------------------------------------------------------------------
# VAE view


def analysis_resolution(vae, data, resolution: int | None, dsm_levels, image_column: str, split: str) -> tuple:
    """``(resolution, data_side)``: the data's own image size (its first readable image's shorter side, rounded down
    to what the VAE and DSM blocks accept) unless ``resolution`` is given; an explicit ``resolution`` above the data's
    size is allowed with a loud warning (upsampling steepens the image spectrum and changes the verdict).
    The same rule and messages as `evaluation.evaluate` (`vae_resolution`)."""
    from ..data.images import data_image_size
    from .evaluate import vae_resolution

    data_side = data_image_size(data, image_column, split)
    return vae_resolution(vae, resolution, data_side, dsm_levels), data_side


@torch.no_grad()
def analyze_vae(
    vae,
    data=None,
    num_samples: int = 64,
    resolution: int | None = None,
    batch_size: int = 8,
    output_dir: str | Path | None = None,
    dsm_levels=(0, 8, 10, 12),
    n_bins: int = 16,
    tolerance: float = diagnostics.VERDICT_TOLERANCE,
    latents: str = "sample",
    spectrum_convention: str = "authors",
    seed: int = 0,
    device="cpu",
    image_column: str = "image",
    split: str = "train",
    progress: bool = True,
    name: str | None = None,
    sample_posterior: bool | None = None,
) -> dict:
    """Latent spectra, slopes, spectral KL, RMSC, per-channel spectra, the posterior std, DSM low-pass errors and the
    verdicts (DC kept and DC free) for a VAE, in memory flat in ``num_samples`` (running sums and fixed-size bootstrap
    replicates; nothing kept per image).

    Args:
        vae: a VAE instance, or a folder / Hub id for `models.load_autoencoder`.
        data: local image folder / parquet files, a Hub dataset id, or ``None`` for the embedded photos.
        num_samples: images read (streamed; unreadable ones are skipped and counted).
        resolution: resize + centre-crop side; ``None`` (default) uses the data's own image size (see
            `analysis_resolution`; a larger explicit value warns that it upsamples).
        dsm_levels: DSM mask levels of the low-pass view (0 = plain reconstruction); ``()`` skips decoding.
        latents: ``"sample"`` (default: posterior samples ``mu + sigma * noise`` from a generator seeded with
            ``seed``, the authors' convention) or ``"mean"`` (the posterior mean); the low-pass view decodes the same.
        spectrum_convention: ``"authors"`` (default: DC kept, no centring) or ``"dc_free"``: the view of the headline
            numbers and ``verdict``; ``verdicts`` holds both views.
        tolerance: the verdict's tolerance (`diagnostics.VERDICT_TOLERANCE`, derived there).
        output_dir: if given, write ``report.json`` and ``spectra.png``, ``channel_spectra.png``, ``dsm_lowpass.png``.
        sample_posterior: deprecated alias (``True`` -> ``latents="sample"``, ``False`` -> ``"mean"``).

    Returns:
        The report dict; ``report["convention"]`` states the latents and spectrum convention (verdict rule:
        `diffusers_spectrum.evaluation.diagnostics`).
    """
    from ..data.images import image_batches_from
    from ..models.loading import load_autoencoder

    start = time.perf_counter()
    if sample_posterior is not None:
        latents = "sample" if sample_posterior else "mean"
    diagnostics.check_convention(latents, spectrum_convention)
    name = name or (str(vae) if isinstance(vae, (str, Path)) else type(vae).__name__)
    vae = load_autoencoder(vae, device=device, torch_dtype=torch.float32)
    dsm_levels = tuple(int(k) for k in dsm_levels)
    resolution, data_side = analysis_resolution(vae, data, resolution, dsm_levels, image_column, split)
    from ..data.stream import SkipCounter

    skips = SkipCounter()
    batches = image_batches_from(data, num_samples, resolution, batch_size, image_column, split, skip_counter=skips)
    stats = diagnostics.SpectrumStatistics(n_bins, convention=spectrum_convention, seed=seed)
    lowpass_sums = {level: 0.0 for level in dsm_levels}  # running sums of per-image MSE (nothing kept per image)
    drops = {level: diagnostics.RunningMoments() for level in dsm_levels if level != dsm_levels[0]}
    generator = torch.Generator(device=device).manual_seed(seed)
    latent_shape = None
    for images in tqdm(
        batches, desc=f"analyze {name}", total=math.ceil(num_samples / batch_size), disable=not progress
    ):
        images = images.to(device=device, dtype=vae.dtype)
        z, std = diagnostics.posterior_latents(vae.encode(images).latent_dist, latents, generator)
        latent_shape = list(z.shape[1:])
        stats.update(images.float(), z, std)
        if dsm_levels:
            errors = diagnostics.lowpass_reconstruction_errors(
                lambda w: vae.decode(w.to(vae.dtype)).sample.clamp(-1, 1), images.float(), z, dsm_levels
            )
            for level, value in errors.items():
                lowpass_sums[level] += float(value.double().sum())
            psnr = {level: 10 * torch.log10(4.0 / value.double().clamp_min(1e-12)) for level, value in errors.items()}
            for level, moments in drops.items():
                moments.update(psnr[level] - psnr[dsm_levels[0]])  # (B,) per-image PSNR drop from the first level
        del images, z, std  # free the batch's buffers before the next one
    if latent_shape is None:
        raise ValueError(f"The dataset {data!r} gave no readable images ({skips.count} skipped).")
    summary = stats.result(tolerance)
    lowpass_mse = {level: total / stats.count for level, total in lowpass_sums.items()}
    lowpass_psnr = {level: 10 * math.log10(4.0 / max(mse, 1e-12)) for level, mse in lowpass_mse.items()}
    convention = {
        "latents": latents,
        "latents_description": diagnostics.LATENT_KINDS[latents] + (f", seed {seed}" if latents == "sample" else ""),
        "spectrum": spectrum_convention,
        "spectrum_description": diagnostics.SPECTRUM_CONVENTIONS[spectrum_convention]["description"],
        "seed": seed,
    }
    report = {
        "kind": "vae",
        "name": name,
        "verdict": summary.pop("verdict"),
        "convention": convention,
        **summary,
        "skipped_images": skips.count,
        "resolution": resolution,
        "data_resolution": data_side,
        "upsampled": resolution > data_side,
        "latent_shape": latent_shape,
        "n_bins": n_bins,
        "dsm_lowpass_mse": {str(level): value for level, value in lowpass_mse.items()},
        "dsm_lowpass_psnr": {str(level): value for level, value in lowpass_psnr.items()},
        "dsm_lowpass_drop_db": lowpass_drops(lowpass_psnr, drops),
        "vae_config": {
            k: vae.config.get(k) for k in ("latent_channels", "block_out_channels", "scaling_factor", "shift_factor")
        },
        "reference_spectra": diagnostics.REFERENCE_SPECTRA,
        "elapsed_s": time.perf_counter() - start,
    }
    report["vae_config"]["block_out_channels"] = list(report["vae_config"]["block_out_channels"] or [])
    if output_dir is not None:
        _write_vae_outputs(report, Path(output_dir))
    return report


def lowpass_drops(lowpass_psnr: dict, per_image: dict) -> dict:
    """Each DSM level's PSNR drop from the first level (level 0: plain reconstruction), ``{str(level): {...}}``:
    ``drop_db`` the difference of the levels' PSNRs (of the mean MSE, as ``dsm_lowpass_psnr``) and the mean per-image
    drop with its 95% t interval over images (`statistics.t_interval_from_summary`). A drop near 0 is low-pass
    fidelity whatever the plain reconstruction quality."""
    from .statistics import t_interval_from_summary

    if not lowpass_psnr:
        return {}
    first = next(iter(lowpass_psnr))
    result = {}
    for level, moments in per_image.items():
        interval = t_interval_from_summary(float(moments.mean()), float(moments.std()), moments.count)
        result[str(level)] = {
            "from_level": str(first),
            "drop_db": lowpass_psnr[level] - lowpass_psnr[first],
            "per_image_mean_db": interval["mean"],
            "per_image_lo_db": interval["lo"],
            "per_image_hi_db": interval["hi"],
            "per_image_sd_db": interval["sd"],
            "num_images": moments.count,
        }
    return result


def _write_vae_outputs(report: dict, output_dir: Path) -> None:
    from . import plotting

    output_dir.mkdir(parents=True, exist_ok=True)
    verdicts = report["verdicts"]
    words = ", ".join(f"{VIEW_WORDS[name]} {view['verdict']}" for name, view in verdicts.items())
    gap = verdicts[report["convention"]["spectrum"]]["centroid_gap"]
    convention = f"{report['convention']['latents']}, {report['convention']['spectrum']}"
    interval = f"{gap['estimate']:+.3f} [{gap['lo']:+.3f}, {gap['hi']:+.3f}]"
    title = f"{report['name']}: {words}\n(centroid gap {interval}; {convention})"
    plots = {"spectra": "spectra.png", "channel_spectra": "channel_spectra.png"}
    spectra = report["spectra"]
    plotting.plot_spectra(
        spectra["image"], spectra["latent"], 1.0, spectra["target"], output_dir / plots["spectra"], title
    )
    plotting.plot_channel_spectra(torch.tensor(report["channel_spectra"])[None], output_dir / plots["channel_spectra"])
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
    from . import plotting

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
    table = [compare_row(name, report) for name, report in reports.items()]
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
        convention = next(iter(reports.values()))["convention"]
        write_json(output_dir / "compare.json", {"convention": convention, "table": table}, sort_keys=False)
        rule = next(iter(reports.values()))["verdict_rule"]
        (output_dir / "compare.md").write_text(compare_markdown(table, convention, rule), encoding="utf-8")
    return result


def compare_row(name: str, report: dict) -> dict:
    """One row of the comparison table: both views' verdicts and centroid gaps (with intervals), the slopes and
    KLs (numbers, not deciders), RMSC and the DSM low-pass PSNR drops."""
    row = {"name": name}
    for view, words in (("authors", "dc_kept"), ("dc_free", "dc_free")):
        verdict = report["verdicts"][view]
        row[f"verdict_{words}"] = verdict["verdict"]
        row[f"centroid_gap_{words}"] = verdict["centroid_gap"]
    for key in ("latent_slope", "target_slope", "mean_spectrum_kl_delta1", "spectral_kl_delta1", "rmsc"):
        row[key] = report[key]
    row["dsm_lowpass_mse"] = report["dsm_lowpass_mse"]
    row["dsm_lowpass_drop_db"] = {level: d["drop_db"] for level, d in report["dsm_lowpass_drop_db"].items()}
    return row


def _gap(gap: dict) -> str:
    return f"{gap['estimate']:+.3f} [{gap['lo']:+.3f}, {gap['hi']:+.3f}]"


def compare_markdown(table: list[dict], convention: dict, rule: dict) -> str:
    """The comparison table as Markdown, with the conventions and the verdict rule under it."""
    head = (
        "name",
        "verdict, DC kept",
        "centroid gap, DC kept",
        "verdict, DC free",
        "centroid gap, DC free",
        "latent slope",
        "target slope",
        "mean-curve KL d1",
        "per-sample KL d1",
        "RMSC",
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [
            row["name"],
            row["verdict_dc_kept"],
            _gap(row["centroid_gap_dc_kept"]),
            row["verdict_dc_free"],
            _gap(row["centroid_gap_dc_free"]),
        ]
        cells += [f"{row[k]:.4g}" for k in ("latent_slope", "target_slope", "mean_spectrum_kl_delta1")]
        cells += [f"{row[k]:.4g}" for k in ("spectral_kl_delta1", "rmsc")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Latents: {convention['latents_description']}. Spectra: {SPECTRUM_WORDS['authors']} (the DC-kept view); "
        f"{SPECTRUM_WORDS['dc_free']} (the DC-free view). Centroid gap: latents minus the delta = 1 target, in ln "
        f"frequency, with its {100 * rule['confidence']:.0f}% bootstrap interval over images (> 0: power at higher "
        f"frequencies). Verdict: {rule['rule']} (tolerance {rule['tolerance']}). Slopes and KLs are reported, not "
        "decisive.",
    ]
    return "\n".join(lines) + "\n"


SPECTRUM_WORDS = {name: spec["description"] for name, spec in diagnostics.SPECTRUM_CONVENTIONS.items()}


# ------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusers-spectrum analyze", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    add_flags(source, "--vae")
    source.add_argument("--compare", nargs="+", metavar="VAE", help="several VAEs: one plot and one table.")
    source.add_argument("--encoder", help="transformers vision backbone (REPA target), e.g. facebook/dinov2-base.")
    parser.add_argument(
        "--data",
        default=None,
        help="image folder / parquet files or Hub dataset id (streamed). Default: the embedded photos.",
    )
    add_flags(parser, "--num_samples", "--output_dir", "--batch_size", batch_size=8, required=("--output_dir",))
    add_flags(parser, "--resolution", resolution=None)
    parser.add_argument(
        "--dsm_levels", default="0,8,10,12", help="DSM low-pass levels, comma-separated ('' to skip decoding)."
    )
    parser.add_argument("--n_bins", type=int, default=16, help="radial frequency bands.")
    parser.add_argument(
        "--verdict_tolerance",
        type=float,
        default=diagnostics.VERDICT_TOLERANCE,
        help="verdict tolerance on where the spectral power lies (centroid gap / Wasserstein-1 distance in ln "
        "frequency; derived in docs/METHODS.md#spectral-verdict).",
    )
    parser.add_argument(
        "--latents",
        choices=sorted(diagnostics.LATENT_KINDS),
        default="sample",
        help="analyse posterior samples mu + sigma * noise (default, the authors' convention; seeded by --seed) or "
        "the posterior mean. The posterior std is reported either way.",
    )
    parser.add_argument(
        "--spectrum_convention",
        choices=sorted(diagnostics.SPECTRUM_CONVENTIONS),
        default="authors",
        help="'authors' (default): DC kept, no mean removal, as the authors' analysis and their published "
        "reference curves; 'dc_free': DC power set to 0 (the ESM loss's convention).",
    )
    add_flags(parser, "--seed", "--sample_posterior")
    parser.add_argument("--grid_size", type=int, default=16, help="encoder token grid side (--encoder).")
    add_flags(parser, "--image_column", "--dataset_split", "--device", "--no_progress")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_samples < 1 or args.batch_size < 1:
        parser.error("--num_samples and --batch_size must be positive.")
    if args.resolution is not None and args.resolution < 1:
        parser.error(f"--resolution must be positive, got {args.resolution}.")
    if args.sample_posterior and args.latents != "sample":
        parser.error("--sample_posterior contradicts --latents mean; pass one of them.")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
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
        split=args.dataset_split,
        progress=not args.no_progress,
        n_bins=args.n_bins,
    )
    vae_options = dict(
        resolution=args.resolution,
        dsm_levels=args.dsm_levels,
        tolerance=args.verdict_tolerance,
        latents=args.latents,
        spectrum_convention=args.spectrum_convention,
        seed=args.seed,
    )
    try:
        claim_output_dir(args.output_dir, "analyze", ("report.json", "compare.json"))
        if args.encoder:
            from .encoder_analysis import analyze_encoder

            report = analyze_encoder(
                args.encoder,
                output_dir=args.output_dir,
                grid_size=args.grid_size,
                resolution=args.resolution,
                spectrum_convention=args.spectrum_convention,
                **common,
            )
            print(f"{args.encoder}: RMSC " + ", ".join(f"{k} {v['rmsc']:.3f}" for k, v in report["filters"].items()))
        elif args.compare:
            result = compare_vaes(args.compare, output_dir=args.output_dir, **common, **vae_options)
            for name, report in result["reports"].items():
                slope, kl = report["latent_slope"], report["mean_spectrum_kl_delta1"]
                print(
                    f"{name}: {diagnostics.verdicts_phrase(report['verdicts'])} | latent slope {slope:.3f}, "
                    f"mean-curve KL d1 {kl:.4f}"
                )
            convention = next(iter(result["reports"].values()))["convention"]
            print(f"latents: {convention['latents_description']}; spectra: {convention['spectrum_description']}")
        else:
            report = analyze_vae(args.vae, output_dir=args.output_dir, **common, **vae_options)
            convention = report["convention"]
            print(
                f"{args.vae}: {diagnostics.verdicts_phrase(report['verdicts'])}\n"
                f"  latent slope {report['latent_slope']:.3f} vs target "
                f"{report['target_slope']:.3f} (image {report['image_slope']:.3f}) | spectral KL d0 "
                f"{report['spectral_kl_delta0']:.4f} d1 {report['spectral_kl_delta1']:.4f} (mean curves "
                f"{report['mean_spectrum_kl_delta1']:.4f}) | RMSC {report['rmsc']:.3f} | posterior std "
                f"{report['posterior_std']['mean']:.4f}\n  {report['num_samples']} images at "
                f"{report['resolution']} px; latents: {convention['latents_description']}; spectra: "
                f"{convention['spectrum_description']}"
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
