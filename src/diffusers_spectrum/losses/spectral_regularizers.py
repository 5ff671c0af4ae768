"""Frequency-domain regularisers for the diffusion objective (after "Spectral Regularization for Diffusion Models"):
a Fourier amplitude/phase loss and a multi-level wavelet subband loss between the predicted clean
sample ``x0_hat`` (see :mod:`diffusers_spectrum.diffusion.objectives`) and the clean sample ``x0``.

Both work on ``(B, C, H, W)`` tensors (pixels or latents: 2-D FFT / DWT over ``(H, W)``) and on ``(B, C, T)``
waveforms (1-D rFFT / DWT over time), are differentiable, compute in float32 (float16 and bfloat16 inputs are safe)
and return the input's dtype. ``reduction="none"`` gives one value per sample so a trainer
can apply timestep weights (:func:`diffusers_spectrum.diffusion.objectives.regularizer_weights`) before averaging.

Decomposition used by :func:`fourier_loss` with ``loss_type="l2"`` (orthonormal FFT F = F(x0_hat), G = F(x0)):

    |F - G|^2 = (|F| - |G|)^2  +  2 |F| |G| (1 - cos(angle F - angle G))
                amplitude term     phase term (amplitude-weighted)

so amplitude + phase with unit weights equals the pixel MSE (Parseval), and each term can be weighted on its own.
The phase term is smooth and well defined where an amplitude is zero (no ``atan2`` gradient singularity).
"""

import math

import torch

from ..spectral._checks import compute_dtype, require_tensor
from ..spectral.audio import dwt_1d
from ..spectral.wavelets import dwt_2d


LOSS_TYPES = ("l1", "l2")
REDUCTIONS = ("mean", "none")


def _check_inputs(x0_hat: torch.Tensor, x0: torch.Tensor, func: str, loss_type: str, reduction: str) -> None:
    for name, value in (("x0_hat", x0_hat), ("x0", x0)):
        require_tensor(value, func, name)
        if value.ndim not in (3, 4):
            raise ValueError(
                f"{func}: `{name}` must be (B, C, H, W) images/latents or (B, C, T) waveforms, got shape "
                f"{tuple(value.shape)}; add the batch/channel axes with `x[None]`."
            )
    if x0_hat.shape != x0.shape:
        raise ValueError(
            f"{func}: `x0_hat` {tuple(x0_hat.shape)} and `x0` {tuple(x0.shape)} must have the same shape."
        )
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"{func}: unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}.")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{func}: unknown reduction {reduction!r}; choose one of {REDUCTIONS}.")


def _reduce(per_sample: torch.Tensor, reduction: str, dtype: torch.dtype) -> torch.Tensor:
    return (per_sample.mean() if reduction == "mean" else per_sample).to(dtype)


def radial_frequency_weights(
    height: int, width: int, power: float, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Weights ``(r / r_max)^power`` on the ``rfft2`` grid ``(H, W // 2 + 1)``, normalised to mean 1.

    ``r`` is the frequency radius in cycles per sample (``r_max = sqrt(0.5)`` at the Nyquist corner). ``power = 0``
    is uniform; ``power > 0`` emphasises high frequencies (and gives DC weight 0).
    """
    freq_y = torch.fft.fftfreq(height, device=device, dtype=torch.float64)[:, None]
    freq_x = torch.fft.rfftfreq(width, device=device, dtype=torch.float64)[None, :]
    radius = (freq_y**2 + freq_x**2).sqrt() / math.sqrt(0.5)
    weights = radius**power if power != 0 else torch.ones_like(radius)
    return (weights / weights.mean()).to(dtype)


def rfft_frequency_weights(length: int, power: float, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 1-D counterpart of :func:`radial_frequency_weights`: ``(f / 0.5)^power`` on the ``rfft`` bins
    ``(T // 2 + 1,)`` (``f`` in cycles per sample, 0.5 = Nyquist), normalised to mean 1."""
    frequency = torch.fft.rfftfreq(length, device=device, dtype=torch.float64) / 0.5
    weights = frequency**power if power != 0 else torch.ones_like(frequency)
    return (weights / weights.mean()).to(dtype)


# ------------------------------------------------------------------------------------------------
# Fourier amplitude / phase loss.


def fourier_loss(
    x0_hat: torch.Tensor,
    x0: torch.Tensor,
    amplitude_weight: float = 1.0,
    phase_weight: float = 1.0,
    log_amplitude: bool = False,
    frequency_power: float = 0.0,
    loss_type: str = "l1",
    reduction: str = "mean",
) -> torch.Tensor:
    """Amplitude and phase distance of the orthonormal FFTs of ``x0_hat`` and ``x0``: 2-D over ``(H, W)`` for
    images/latents, 1-D over time for waveforms.

    Per frequency (``rfft2`` half-plane or ``rfft`` bins, per channel), with F = FFT(x0_hat), G = FFT(x0):

    - amplitude: ``|A(F) - A(G)|`` (l1) or ``(A(F) - A(G))^2`` (l2), with ``A = |.|`` or ``A = log(1 + |.|)`` when
      ``log_amplitude``;
    - phase: ``2 |F| |G| (1 - cos(angle F - angle G))`` (the phase part of ``|F - G|^2``, see the module doc;
      in power units for both loss types). Zero iff the phases agree wherever both amplitudes are non-zero.

    Both are averaged over frequencies (weighted by :func:`radial_frequency_weights`, or
    :func:`rfft_frequency_weights` for waveforms, with ``frequency_power``) and channels, then
    ``amplitude_weight * amplitude + phase_weight * phase``. A pure phase change (a circular shift, a sign flip, a
    Hilbert rotation) leaves the amplitude term at 0 and shows in the phase term.

    Args:
        x0_hat: ``(B, C, H, W)`` or ``(B, C, T)`` prediction.
        x0: same shape reference (gradients are not blocked; pass ``x0.detach()`` for a fixed target).
        reduction: ``"mean"`` -> scalar; ``"none"`` -> ``(B,)``.

    Returns:
        Scalar or ``(B,)`` loss in ``x0_hat``'s dtype.
    """
    _check_inputs(x0_hat, x0, "fourier_loss", loss_type, reduction)
    work_dtype = compute_dtype(x0_hat.dtype)
    if x0.ndim == 4:
        spectrum_hat = torch.fft.rfft2(x0_hat.to(work_dtype), norm="ortho")  # (B, C, H, W // 2 + 1) complex
        spectrum = torch.fft.rfft2(x0.to(work_dtype), norm="ortho")
        weights = radial_frequency_weights(x0.shape[-2], x0.shape[-1], frequency_power, x0.device, work_dtype)
    else:
        spectrum_hat = torch.fft.rfft(x0_hat.to(work_dtype), norm="ortho")  # (B, C, T // 2 + 1) complex
        spectrum = torch.fft.rfft(x0.to(work_dtype), norm="ortho")
        weights = rfft_frequency_weights(x0.shape[-1], frequency_power, x0.device, work_dtype)
    magnitude_hat, magnitude = spectrum_hat.abs(), spectrum.abs()

    total = torch.zeros(x0.shape[0], device=x0.device, dtype=work_dtype)
    if amplitude_weight != 0:
        if log_amplitude:
            difference = torch.log1p(magnitude_hat) - torch.log1p(magnitude)
        else:
            difference = magnitude_hat - magnitude
        amplitude = difference.abs() if loss_type == "l1" else difference**2
        total = total + amplitude_weight * (amplitude * weights).flatten(1).mean(dim=1)
    if phase_weight != 0:
        # 2 |F||G| (1 - cos dphi) = |F||G| |u_F - u_G|^2 with unit phasors u = F / |F|: exactly 0 for equal
        # phases, >= 0 by construction; the tiny floor only guards 0 / 0 where the amplitude weight is 0 anyway.
        tiny = torch.finfo(work_dtype).tiny
        phasor_hat = spectrum_hat / magnitude_hat.clamp(min=tiny)
        phasor = spectrum / magnitude.clamp(min=tiny)
        phase = magnitude_hat * magnitude * (phasor_hat - phasor).abs() ** 2
        total = total + phase_weight * (phase * weights).flatten(1).mean(dim=1)
    return _reduce(total, reduction, x0_hat.dtype)


# ------------------------------------------------------------------------------------------------
# Wavelet subband loss.


def wavelet_loss(
    x0_hat: torch.Tensor,
    x0: torch.Tensor,
    levels: int = 3,
    level_weights: list[float] | tuple[float, ...] | None = None,
    approximation_weight: float = 1.0,
    wavelet: str = "haar",
    loss_type: str = "l1",
    reduction: str = "mean",
    mode: str = "reflect",
) -> torch.Tensor:
    """L1/L2 distance over the subbands of a multi-level DWT (2-D over ``(H, W)``, or 1-D over time for waveforms),
    with per-level weights.

    The DWT is linear, so the subbands of ``x0_hat - x0`` are transformed once. Per level ``l`` (1 = finest) the
    mean absolute (l1) or squared (l2) detail coefficient over the orientations (three in 2-D, one in 1-D), channels
    and positions is weighted by ``level_weights[l - 1]``; the coarsest approximation band adds
    ``approximation_weight`` times its mean. With Haar, l2 and unit weights on a ``2**levels``-divisible size this is
    a per-band re-weighting of the squared error (Parseval). Being a distance between coefficients (not magnitudes),
    it sees any change of phase.

    Args:
        x0_hat: ``(B, C, H, W)`` or ``(B, C, T)`` prediction.
        x0: same shape reference.
        levels: decomposition levels (``min(H, W)`` or ``T`` should be at least ``2**levels``).
        level_weights: ``levels`` weights, finest first; None = all 1.
        approximation_weight: weight of the low-pass band (0 ignores it).
        wavelet: PyWavelets wavelet name (``"haar"`` by default).
        reduction: ``"mean"`` -> scalar; ``"none"`` -> ``(B,)``.
        mode: boundary mode for odd sizes / longer wavelets (see :func:`~diffusers_spectrum.spectral.dwt_2d`,
            :func:`~diffusers_spectrum.spectral.audio.dwt_1d`).

    Returns:
        Scalar or ``(B,)`` loss in ``x0_hat``'s dtype.
    """
    _check_inputs(x0_hat, x0, "wavelet_loss", loss_type, reduction)
    if level_weights is None:
        level_weights = (1.0,) * levels
    if len(level_weights) != levels:
        raise ValueError(
            f"wavelet_loss: `level_weights` needs {levels} entries (finest first), got {len(level_weights)}."
        )
    spatial = x0.shape[2:]  # (H, W) or (T,)
    if min(spatial) < 2**levels:
        size = "x".join(str(s) for s in spatial)
        raise ValueError(
            f"wavelet_loss: a size of {size} is too small for {levels} levels; "
            f"use levels <= {int(math.log2(max(min(spatial), 1)))}."
        )
    work_dtype = compute_dtype(x0_hat.dtype)
    difference = x0_hat.to(work_dtype) - x0.to(work_dtype)  # (B, C, H, W) or (B, C, T)
    transform = dwt_2d if x0.ndim == 4 else dwt_1d
    approximation, details = transform(difference, levels=levels, wavelet=wavelet, mode=mode)

    def distance(coefficients: torch.Tensor) -> torch.Tensor:
        values = coefficients.abs() if loss_type == "l1" else coefficients**2
        return values.flatten(1).mean(dim=1)  # (B,)

    total = torch.zeros(x0.shape[0], device=x0.device, dtype=work_dtype)
    for weight, level in zip(level_weights, details, strict=True):  # (B, C, 3, h, w) or (B, C, t), finest first
        if weight != 0:
            total = total + weight * distance(level)
    if approximation_weight != 0:
        total = total + approximation_weight * distance(approximation)
    return _reduce(total, reduction, x0_hat.dtype)


def spectral_regularizer_terms(
    x0_hat: torch.Tensor,
    x0: torch.Tensor,
    weights: torch.Tensor,
    fourier: dict | None = None,
    wavelet: dict | None = None,
    stft: dict | None = None,
) -> dict[str, torch.Tensor]:
    """The enabled spectral regularisers between the predicted and the true clean samples, each a per-sample loss
    times `weights` (the timestep weighting) averaged over the batch, unweighted by the flag weights: what every
    diffusion trainer adds (DiT latents, pixel-space UNets, waveforms).

    Args:
        x0_hat, x0: `(B, C, H, W)` images / latents or `(B, C, T)` waveforms.
        weights: `(B,)` per-sample weights (`diffusion.objectives.regularizer_weights`).
        fourier, wavelet, stft: keyword arguments of `fourier_loss`, `wavelet_loss`,
            `losses.stft.multi_resolution_stft_loss` (waveforms only); None = term off.

    Returns:
        `{"fourier": scalar, "wavelet": scalar, "stft": scalar}` for the enabled terms.
    """
    from .stft import multi_resolution_stft_loss

    terms = {}
    weights = weights.to(x0.device, torch.float32)
    for name, function, options in (
        ("fourier", fourier_loss, fourier),
        ("wavelet", wavelet_loss, wavelet),
        ("stft", multi_resolution_stft_loss, stft),
    ):
        if options is not None:
            terms[name] = (function(x0_hat, x0, reduction="none", **options).float() * weights).mean()
    return terms
