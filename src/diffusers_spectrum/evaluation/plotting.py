"""Spectrum plots (matplotlib on its Agg canvas, no pyplot state): image vs latent vs target, channels, DSM errors.

Every function returns a `matplotlib.figure.Figure` and, given ``path``, also saves it as a PNG. `figure_to_array`
turns a figure into an ``(H, W, 3)`` uint8 array for ``SummaryWriter.add_image(..., dataformats="HWC")``;
`plot_image_latent_spectra` is the one-call version for trainers (images and latents in, figure out).
"""

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..spectral import esm_spectra


__all__ = [
    "figure_to_array",
    "paired_differences",
    "plot_channel_spectra",
    "plot_compare",
    "plot_encoder_filters",
    "plot_image_latent_spectra",
    "plot_lowpass_errors",
    "plot_spectra",
    "spectrogram_figure",
]


def _new_axes(figsize=(5.5, 4)):
    """A figure on its own Agg canvas: headless, and no global pyplot backend or figure list is touched."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _rows(spectra) -> np.ndarray:
    """``(n_bins,)`` or ``(N, n_bins)`` tensor / array / list -> ``(N, n_bins)`` float64."""
    if isinstance(spectra, torch.Tensor):
        spectra = spectra.detach().cpu().double().numpy()
    array = np.asarray(spectra, dtype=np.float64)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"spectra must be (n_bins,) or (N, n_bins) with n_bins >= 2, got shape {array.shape}.")
    return array


def _mean_std(spectra) -> tuple[np.ndarray, np.ndarray, int]:
    """``(mean, std, number of rows)`` of rows, or of a report's ``{"mean": [...], "std": [...]}`` summary."""
    if isinstance(spectra, dict):
        mean, std = _rows(spectra["mean"])[0], _rows(spectra["std"])[0]
        return mean, std, 2  # a summary over several samples: draw its band
    rows = _rows(spectra)
    return rows.mean(0), rows.std(0), rows.shape[0]


def _band(ax, spectra, label: str, color=None, linestyle="-") -> None:
    """Mean curve over samples with a +-1 std band, against the band frequency k + 1 on log-log axes. ``spectra``:
    ``(N, n_bins)`` rows or a ``{"mean", "std"}`` summary (as `analyze` reports store them)."""
    mean, std, count = _mean_std(spectra)
    frequencies = np.arange(1, mean.shape[0] + 1)
    # Bands with no power (the removed DC alone in band 0 on small grids, empty bands) cannot sit on log axes: skip.
    mean = np.where(mean > 0, mean, np.nan)
    (line,) = ax.plot(frequencies, mean, label=label, color=color, linestyle=linestyle, marker="o", markersize=3)
    if count > 1:
        low = np.maximum(mean - std, mean / 5)  # keep the band visible on log axes
        ax.fill_between(frequencies, low, mean + std, color=line.get_color(), alpha=0.2)


def _finish(fig: Figure, ax, title: str | None, path: str | Path | None, ylabel: str) -> Figure:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("radial frequency band k + 1")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_spectra(
    image_spectra,
    latent_spectra,
    delta: float = 1.0,
    target_spectra=None,
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Image, latent and delta-target normalised log spectra (mean +- std over samples) on log-log axes.

    Args:
        image_spectra: ``(N, n_bins)`` or ``(n_bins,)`` normalised log spectra of the images (delta 0), or a
            ``{"mean", "std"}`` summary (the same for the other two).
        latent_spectra: the same for the latents.
        delta: the flattening exponent of ``target_spectra`` (for the legend).
        target_spectra: the delta-flattened image target (`esm_spectra` with ``delta``); omitted if ``None``.
        path: save a PNG there too.
    """
    fig, ax = _new_axes()
    _band(ax, image_spectra, "image (delta = 0)", color="tab:gray")
    if target_spectra is not None:
        _band(ax, target_spectra, f"target (delta = {delta:g})", color="tab:green", linestyle="--")
    _band(ax, latent_spectra, "latent", color="tab:blue")
    return _finish(fig, ax, title, path, "normalised log power")


@torch.no_grad()
def plot_image_latent_spectra(
    images: torch.Tensor,
    latents: torch.Tensor,
    delta: float = 1.0,
    path: str | Path | None = None,
    title=None,
    convention: str = "authors",
) -> Figure:
    """`plot_spectra` straight from images ``(B, 3, H, W)`` in [-1, 1] and latents ``(B, C, h, w)`` (for trainers),
    in the spectrum ``convention`` of `evaluation.diagnostics` (``"authors"``: DC kept; ``"dc_free"``)."""
    from .diagnostics import SPECTRUM_CONVENTIONS, check_convention

    check_convention(spectrum=convention)
    remove_dc = SPECTRUM_CONVENTIONS[convention]["remove_dc"]
    image, latent = esm_spectra(images.float(), latents.float(), delta=0.0, remove_dc=remove_dc)
    target, _ = esm_spectra(images.float(), latents.float(), delta=delta, remove_dc=remove_dc)
    return plot_spectra(image, latent, delta=delta, target_spectra=target, path=path, title=title)


def plot_channel_spectra(channel_spectra, path: str | Path | None = None, title: str | None = None) -> Figure:
    """One curve per latent channel: ``(N, C, n_bins)`` or ``(C, n_bins)`` (mean over N)."""
    array = (
        channel_spectra.detach().cpu().double().numpy()
        if isinstance(channel_spectra, torch.Tensor)
        else np.asarray(channel_spectra, dtype=np.float64)
    )
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"channel_spectra must be (C, n_bins) or (N, C, n_bins), got shape {array.shape}.")
    fig, ax = _new_axes()
    for channel in range(array.shape[1]):
        _band(ax, array[:, channel], f"channel {channel}")
    return _finish(fig, ax, title or "per-channel latent spectra", path, "normalised log power")


def plot_compare(
    latent_spectra_by_name: dict, target_spectra=None, delta: float = 1.0, path: str | Path | None = None, title=None
) -> Figure:
    """Latent spectra of several models on one plot (``{name: (N, n_bins)}``), with the delta target if given."""
    if not latent_spectra_by_name:
        raise ValueError("plot_compare needs at least one named spectrum.")
    fig, ax = _new_axes()
    if target_spectra is not None:
        _band(ax, target_spectra, f"target (delta = {delta:g})", color="black", linestyle="--")
    for name, spectra in latent_spectra_by_name.items():
        _band(ax, spectra, str(name))
    return _finish(fig, ax, title or "latent spectra", path, "normalised log power")


def plot_encoder_filters(
    spectra_by_filter: dict, rmsc_by_filter: dict | None = None, path: str | Path | None = None, title=None
) -> Figure:
    """Feature-map spectra of a REPA target before / after each target filter (``{filter: (N, n_bins)}``)."""
    if not spectra_by_filter:
        raise ValueError("plot_encoder_filters needs at least one filter's spectra.")
    fig, ax = _new_axes()
    for name, spectra in spectra_by_filter.items():
        label = name if rmsc_by_filter is None else f"{name} (RMSC {float(rmsc_by_filter[name]):.3f})"
        _band(ax, spectra, label)
    return _finish(fig, ax, title or "encoder feature spectra by target filter", path, "normalised log power")


def plot_lowpass_errors(errors_by_name: dict, path: str | Path | None = None, title: str | None = None) -> Figure:
    """Low-pass reconstruction MSE against DSM level: ``{name: {level: mse}}``, one line per model."""
    if not errors_by_name:
        raise ValueError("plot_lowpass_errors needs at least one model's errors.")
    fig, ax = _new_axes()
    for name, errors in errors_by_name.items():
        levels = sorted(int(k) for k in errors)
        ax.plot(
            levels, [float(errors[k] if k in errors else errors[str(k)]) for k in levels], marker="o", label=str(name)
        )
    ax.set_xlabel("DSM mask level (highest anti-diagonals dropped)")
    ax.set_ylabel("MSE of decode(lowpass z) vs lowpass x")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "DSM low-pass reconstruction error", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def paired_differences(ax, rows: list[dict], marker_size: float = 3) -> None:
    """Draw `evaluation.statistics.compare_arms` rows on ``ax``: each comparison's per-seed differences (grey dots),
    the 95% t interval of their mean (blue) and its Holm-corrected interval (red), and the zero line."""
    for index, row in enumerate(rows):
        ax.plot([index] * len(row["differences"]), row["differences"], "o", color="0.4", ms=marker_size)
        if row["outcome"] == "one run":
            continue
        for offset, lo, hi, style in (
            (0.15, "lo", "hi", dict(fmt="s", color="C0")),
            (0.3, "holm_lo", "holm_hi", dict(fmt="none", color="C3")),
        ):
            yerr = [[row["mean"] - row[lo]], [row[hi] - row["mean"]]]
            ax.errorbar(index + offset, row["mean"], yerr=yerr, capsize=3, **style)
    ax.axhline(0, color="k", lw=0.8)


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an ``(H, W, 3)`` uint8 RGB array (for tensorboard ``add_image(..., dataformats="HWC")``)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def spectrogram_figure(clips: np.ndarray, sample_rate: int, title: str = "") -> Figure:
    """Log-magnitude spectrograms (dB) of up to four `(C, T)` clips (first channel), one panel each."""
    count = min(4, len(clips))
    fig = Figure(figsize=(3.2 * count, 2.6))
    FigureCanvasAgg(fig)
    for i in range(count):
        ax = fig.add_subplot(1, count, i + 1)
        signal = clips[i][0]
        fft_size = min(512, 2 ** int(math.log2(len(signal))) // 2)
        ax.specgram(signal, NFFT=fft_size, Fs=sample_rate, noverlap=fft_size * 3 // 4, scale="dB", cmap="magma")
        ax.set_xlabel("s")
        ax.set_ylabel("Hz" if i == 0 else "")
        ax.set_title(f"{title} {i}".strip(), fontsize=8)
    fig.tight_layout()
    return fig
