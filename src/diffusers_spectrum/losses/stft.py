"""Multi-resolution STFT loss for waveforms (Yamamoto et al., "Parallel WaveGAN", ICASSP 2020, eqs. 1-4; the
standard spectral loss of neural audio synthesis, also in auraloss, Steinmetz & Reiss 2020).

Per resolution, spectral convergence ``||S - S_hat||_F / ||S||_F`` plus log-magnitude ``mean |log S - log S_hat|``
of the short-time magnitudes, averaged over the resolutions; defaults are Parallel WaveGAN's three (FFT sizes 1024,
2048, 512; hops 120, 240, 50; windows 600, 1200, 240; Hann), framed as ``torch.stft(center=True)``. It sees only
magnitudes (blind to ``x -> -x``): pair it with :func:`~diffusers_spectrum.losses.fourier_loss` or
:func:`~diffusers_spectrum.losses.wavelet_loss` when phase matters.

Conventions (padding, window, magnitude floor, reduction): docs/METHODS.md#stft-loss
"""

import torch

from ..spectral._checks import compute_dtype
from ..spectral.audio import require_waveforms


# Parallel WaveGAN (Yamamoto et al. 2020), Sec. 4.1: three STFT resolutions.
DEFAULT_FFT_SIZES = (1024, 2048, 512)
DEFAULT_HOP_LENGTHS = (120, 240, 50)
DEFAULT_WIN_LENGTHS = (600, 1200, 240)
STFT_WINDOWS = ("hann", "hamming", "blackman", "rectangular")
REDUCTIONS = ("mean", "none")


def _window(name: str, win_length: int, device, dtype: torch.dtype) -> torch.Tensor:
    if name == "hann":
        return torch.hann_window(win_length, periodic=True, device=device, dtype=dtype)
    if name == "hamming":
        return torch.hamming_window(win_length, periodic=True, device=device, dtype=dtype)
    if name == "blackman":
        return torch.blackman_window(win_length, periodic=True, device=device, dtype=dtype)
    return torch.ones(win_length, device=device, dtype=dtype)


def _check_resolutions(fft_sizes, hop_lengths, win_lengths, window: str, length: int) -> None:
    if not (len(fft_sizes) == len(hop_lengths) == len(win_lengths)) or len(fft_sizes) == 0:
        raise ValueError(
            "multi_resolution_stft_loss: `fft_sizes`, `hop_lengths` and `win_lengths` need the same non-zero number "
            f"of entries, got {len(fft_sizes)}, {len(hop_lengths)} and {len(win_lengths)}."
        )
    if window not in STFT_WINDOWS:
        raise ValueError(f"multi_resolution_stft_loss: unknown window {window!r}; choose one of {STFT_WINDOWS}.")
    for fft_size, hop, win in zip(fft_sizes, hop_lengths, win_lengths, strict=True):
        if not (isinstance(fft_size, int) and isinstance(hop, int) and isinstance(win, int)):
            raise ValueError(
                f"multi_resolution_stft_loss: FFT size, hop and window length must be integers, got "
                f"({fft_size!r}, {hop!r}, {win!r})."
            )
        if not (hop >= 1 and 1 <= win <= fft_size):
            raise ValueError(
                f"multi_resolution_stft_loss: need hop >= 1 and 1 <= win_length <= fft_size, got fft_size={fft_size}, "
                f"hop={hop}, win_length={win}."
            )
        if length <= fft_size // 2:
            raise ValueError(
                f"multi_resolution_stft_loss: clips of {length} samples are too short for fft_size={fft_size} "
                f"(centred reflect padding needs more than {fft_size // 2} samples); pass smaller `fft_sizes` "
                "or longer clips."
            )


def stft_magnitude(
    x: torch.Tensor, fft_size: int, hop_length: int, win_length: int, window: str = "hann", eps: float = 1e-7
) -> torch.Tensor:
    """Floored short-time magnitudes ``sqrt(max(|STFT(x)|^2, eps))`` with the module's conventions.

    Args:
        x: ``(N, T)`` float32/float64 signals.

    Returns:
        ``(N, fft_size // 2 + 1, 1 + T // hop_length)`` magnitudes.
    """
    taper = _window(window, win_length, x.device, x.dtype)
    spectrum = torch.stft(
        x, fft_size, hop_length, win_length, window=taper, center=True, pad_mode="reflect", return_complex=True
    )  # (N, F, frames)
    return (spectrum.real.square() + spectrum.imag.square()).clamp(min=eps).sqrt()


def stft_loss_terms(
    x0_hat: torch.Tensor,
    x0: torch.Tensor,
    fft_sizes: tuple[int, ...] = DEFAULT_FFT_SIZES,
    hop_lengths: tuple[int, ...] = DEFAULT_HOP_LENGTHS,
    win_lengths: tuple[int, ...] = DEFAULT_WIN_LENGTHS,
    window: str = "hann",
    eps: float = 1e-7,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample spectral convergence and log-magnitude L1, each averaged over the resolutions.

    Args:
        x0_hat: ``(B, C, T)`` predicted waveforms.
        x0: ``(B, C, T)`` reference waveforms.

    Returns:
        ``(spectral_convergence, log_magnitude)``, each ``(B,)`` in float32 (float64 for float64 input).
    """
    require_waveforms(x0_hat, "multi_resolution_stft_loss", "x0_hat")
    require_waveforms(x0, "multi_resolution_stft_loss", "x0")
    if x0_hat.shape != x0.shape:
        raise ValueError(
            f"multi_resolution_stft_loss: `x0_hat` {tuple(x0_hat.shape)} and `x0` {tuple(x0.shape)} must have the "
            "same shape."
        )
    _check_resolutions(fft_sizes, hop_lengths, win_lengths, window, x0.shape[-1])
    batch, channels, length = x0.shape
    work_dtype = compute_dtype(x0_hat.dtype)
    prediction = x0_hat.to(work_dtype).reshape(batch * channels, length)  # (B * C, T)
    target = x0.to(work_dtype).reshape(batch * channels, length)
    convergence = torch.zeros(batch, device=x0.device, dtype=work_dtype)
    log_magnitude = torch.zeros(batch, device=x0.device, dtype=work_dtype)
    for fft_size, hop, win in zip(fft_sizes, hop_lengths, win_lengths, strict=True):
        magnitude_hat = stft_magnitude(prediction, fft_size, hop, win, window, eps)  # (B * C, F, frames)
        magnitude = stft_magnitude(target, fft_size, hop, win, window, eps)
        magnitude_hat = magnitude_hat.reshape(batch, -1)  # (B, C * F * frames)
        magnitude = magnitude.reshape(batch, -1)
        convergence = convergence + (magnitude - magnitude_hat).norm(dim=1) / magnitude.norm(dim=1)
        log_magnitude = log_magnitude + (magnitude.log() - magnitude_hat.log()).abs().mean(dim=1)
    return convergence / len(fft_sizes), log_magnitude / len(fft_sizes)


def multi_resolution_stft_loss(
    x0_hat: torch.Tensor,
    x0: torch.Tensor,
    fft_sizes: tuple[int, ...] = DEFAULT_FFT_SIZES,
    hop_lengths: tuple[int, ...] = DEFAULT_HOP_LENGTHS,
    win_lengths: tuple[int, ...] = DEFAULT_WIN_LENGTHS,
    window: str = "hann",
    convergence_weight: float = 1.0,
    magnitude_weight: float = 1.0,
    eps: float = 1e-7,
    reduction: str = "mean",
) -> torch.Tensor:
    """``convergence_weight * L_sc + magnitude_weight * L_mag`` averaged over the STFT resolutions (module doc).

    Args:
        x0_hat: ``(B, C, T)`` predicted waveforms; ``T`` must exceed ``max(fft_sizes) // 2``.
        x0: ``(B, C, T)`` reference waveforms (pass ``x0.detach()`` for a fixed target).
        fft_sizes, hop_lengths, win_lengths: one entry per resolution (Parallel WaveGAN's by default).
        window: ``"hann"`` (default), ``"hamming"``, ``"blackman"`` or ``"rectangular"``, periodic, of
            ``win_length`` samples centred in the FFT frame.
        eps: floor of the squared magnitude.
        reduction: ``"mean"`` -> scalar; ``"none"`` -> ``(B,)``.

    Returns:
        Scalar or ``(B,)`` loss in ``x0_hat``'s dtype (computed in float32 for float16/bfloat16 inputs).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"multi_resolution_stft_loss: unknown reduction {reduction!r}; choose one of {REDUCTIONS}.")
    convergence, log_magnitude = stft_loss_terms(x0_hat, x0, fft_sizes, hop_lengths, win_lengths, window, eps)
    total = convergence_weight * convergence + magnitude_weight * log_magnitude  # (B,)
    return (total.mean() if reduction == "mean" else total).to(x0_hat.dtype)


def fit_stft_resolutions(
    length: int,
    fft_sizes: tuple[int, ...] = DEFAULT_FFT_SIZES,
    hop_lengths: tuple[int, ...] = DEFAULT_HOP_LENGTHS,
    win_lengths: tuple[int, ...] = DEFAULT_WIN_LENGTHS,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Resolutions for clips of ``length`` samples: the given ones (Parallel WaveGAN's by default) halved together,
    FFT sizes, hops and windows alike (so each keeps its time/frequency trade-off), until the largest FFT size is at
    most ``length``; unchanged when they already fit.

    Returns:
        ``(fft_sizes, hop_lengths, win_lengths)``; raises ``ValueError`` when ``length`` is too short for any STFT
        (fewer than 16 samples).
    """
    if not isinstance(length, int) or length < 16:
        raise ValueError(f"fit_stft_resolutions: `length` must be an integer >= 16 samples, got {length!r}.")
    fft, hop, win = list(fft_sizes), list(hop_lengths), list(win_lengths)
    _check_resolutions(fft, hop, win, "hann", 10**12)
    while max(fft) > length:
        if min(fft) < 16:
            raise ValueError(f"fit_stft_resolutions: cannot fit FFT sizes {tuple(fft_sizes)} into {length} samples.")
        fft = [size // 2 for size in fft]
        hop = [max(1, h // 2) for h in hop]
        win = [max(1, min(w // 2, f)) for w, f in zip(win, fft, strict=True)]
    return tuple(fft), tuple(hop), tuple(win)
