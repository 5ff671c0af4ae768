"""Audio for waveform diffusion: robust decoding with `soundfile`, resampling, channel conversion, seeded crops, the
stream's reader and plain batches (datasets come from `sources.load_audio_dataset`).

`decode_audio` (-> `(channels, frames)` float32 and the sample rate), `AudioTransform` (resample, convert channels,
crop; seeded by `(seed, epoch, position)`), `read_clip` (reads only the frames a crop needs) and `AudioReader` (the
reader of `diffusers_spectrum.data.ResumableStream`). Unusable files are skipped and counted; short clips are
zero-padded (`too_short="pad"`, default) or skipped (`"skip"`).

Details and the bad-data rules: docs/METHODS.md#audio-data
"""

import collections
import io
import logging
import math
import os
import stat
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile
import torch

from .stream import Position, ResumableStream, SkipCounter, SkipExample


__all__ = [
    "AudioReader",
    "AudioSkipCounter",
    "AudioTransform",
    "audio_batches",
    "convert_channels",
    "decode_audio",
    "read_clip",
    "resample_audio",
    "source_sample_rates",
]

logger = logging.getLogger(__name__)

TOO_SHORT_POLICIES = ("pad", "skip")
MAX_POLYPHASE_FACTOR = 1000  # larger up/down factors switch to the FFT resampler
SOURCE_RATE_COUNT = "source_rate_"  # stream count key prefix: clips per source sample rate
DECODE_ERRORS = (OSError, ValueError, TypeError, RuntimeError)  # soundfile's LibsndfileError is a RuntimeError


# ----------------------------------------------------------------------------------------------------------------
# Decoding, resampling, channels


class AudioSkipCounter(SkipCounter):
    """Counts examples skipped because their audio could not be used, and logs one line per skip."""

    def __init__(self):
        super().__init__("unusable audio")


def _read_path(path: str | Path) -> tuple[np.ndarray, int]:
    mode = os.stat(path).st_mode  # FileNotFoundError for a missing file
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path} is not a regular file (a FIFO, socket or device); it was not opened.")
    return soundfile.read(path, dtype="float32", always_2d=True)


def decode_audio(value) -> tuple[np.ndarray, int]:
    """`(waveform, sample_rate)` from a dataset cell: `{"bytes", "path"}` (undecoded `datasets.Audio`), a decoded
    `{"array", "sampling_rate"}`, raw bytes or a path. `waveform` is `(channels, frames)` float32 (integer PCM
    scaled to [-1, 1)). Raises on corrupt, empty, non-finite or non-regular input."""
    if isinstance(value, dict) and value.get("array") is not None:
        array = np.asarray(value["array"], dtype=np.float32)
        data, sample_rate = (array[:, None] if array.ndim == 1 else array.T), value.get("sampling_rate")
    elif isinstance(value, dict) and value.get("bytes") is not None:
        data, sample_rate = soundfile.read(io.BytesIO(value["bytes"]), dtype="float32", always_2d=True)
    elif isinstance(value, dict) and value.get("path") is not None:
        data, sample_rate = _read_path(value["path"])
    elif isinstance(value, (bytes, bytearray)):
        data, sample_rate = soundfile.read(io.BytesIO(value), dtype="float32", always_2d=True)
    elif isinstance(value, (str, Path)):
        data, sample_rate = _read_path(value)
    else:
        raise TypeError(f"cannot read audio from a {type(value).__name__}.")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1:
        raise ValueError(f"invalid sample rate {sample_rate!r}.")
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError("the audio is empty (no samples).")
    if not np.isfinite(data).all():
        raise ValueError("the audio contains NaN or Inf samples.")
    return np.ascontiguousarray(data.T), int(sample_rate)  # (channels, frames)


def resample_audio(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """`(channels, frames)` at `source_rate` -> `(channels, ceil(frames * target / source))` at `target_rate`.

    Polyphase filtering (`scipy.signal.resample_poly`, Kaiser-windowed sinc) with the reduced ratio `up / down`;
    when `up` or `down` exceeds `MAX_POLYPHASE_FACTOR` (coprime rates such as 7999 Hz) the FFT resampler
    `scipy.signal.resample` is used instead (band-limited, treats the clip as periodic)."""
    if source_rate == target_rate:
        return waveform
    divisor = math.gcd(source_rate, target_rate)
    up, down = target_rate // divisor, source_rate // divisor
    if max(up, down) <= MAX_POLYPHASE_FACTOR:
        resampled = scipy.signal.resample_poly(waveform, up, down, axis=-1)
    else:
        resampled = scipy.signal.resample(waveform, math.ceil(waveform.shape[-1] * up / down), axis=-1)
    return resampled.astype(np.float32)


def _ratio(source_rate: int, target_rate: int) -> tuple[int, int]:
    divisor = math.gcd(source_rate, target_rate)
    return target_rate // divisor, source_rate // divisor


def resampled_length(frames: int, source_rate: int, target_rate: int) -> int:
    """Samples `resample_audio` returns for `frames` samples: `ceil(frames * target / source)`."""
    up, down = _ratio(source_rate, target_rate)
    return -(-frames * up // down)


def source_window(offset: int, size: int, frames: int, source_rate: int, target_rate: int) -> tuple[int, int] | None:
    """The source frames `[start, stop)` whose polyphase resampling reproduces output samples
    `[offset, offset + size)` of the whole file's: the span plus the filter's reach (`resample_poly`'s Kaiser
    window reaches `10 * max(up, down)` upsampled samples each side), `start` a multiple of `down` so the segment's
    output grid is the file's. `None` when the FFT resampler would be used (it sees the whole clip)."""
    up, down = _ratio(source_rate, target_rate)
    if source_rate != target_rate and max(up, down) > MAX_POLYPHASE_FACTOR:
        return None
    margin = -(-10 * max(up, down) // up) + 2 if source_rate != target_rate else 0
    start = max(offset * down // up - margin, 0) // down * down
    stop = min(-(-(offset + size) * down // up) + margin, frames)
    return start, stop


def convert_channels(waveform: np.ndarray, channels: int) -> np.ndarray:
    """`(C, frames)` -> `(channels, frames)`: mono is the mean of all channels, stereo from mono duplicates it, and
    stereo from more than two channels raises (a surround layout has no single right downmix)."""
    if waveform.shape[0] == channels:
        return waveform
    if channels == 1:
        return waveform.mean(axis=0, keepdims=True)
    if waveform.shape[0] == 1:
        return np.repeat(waveform, channels, axis=0)
    raise ValueError(
        f"the audio has {waveform.shape[0]} channels and {channels} were requested; pass channels=1 to downmix "
        "to mono, or convert the files first."
    )


def _checked(data: np.ndarray) -> np.ndarray:
    """`(frames, channels)` from soundfile -> `(channels, frames)`, refusing empty or non-finite audio."""
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError("the audio is empty (no samples).")
    if not np.isfinite(data).all():
        raise ValueError("the audio contains NaN or Inf samples.")
    return np.ascontiguousarray(data.T)


def _reread(file: soundfile.SoundFile) -> np.ndarray:
    file.seek(0)
    return file.read(dtype="float32", always_2d=True)


def _open_sound(value) -> soundfile.SoundFile | None:
    """An open `soundfile.SoundFile` for a path or bytes cell (`None` for decoded arrays)."""
    if isinstance(value, dict) and value.get("array") is not None:
        return None
    if isinstance(value, dict) and value.get("bytes") is not None:
        return soundfile.SoundFile(io.BytesIO(value["bytes"]))
    if isinstance(value, dict) and value.get("path") is not None:
        value = value["path"]
    if isinstance(value, (bytes, bytearray)):
        return soundfile.SoundFile(io.BytesIO(value))
    if isinstance(value, (str, Path)):
        if not stat.S_ISREG(os.stat(value).st_mode):  # FileNotFoundError for a missing file
            raise ValueError(f"{value} is not a regular file (a FIFO, socket or device); it was not opened.")
        return soundfile.SoundFile(value)
    return None


def read_clip(value, transform: "AudioTransform", position: int = 0, epoch: int = 0) -> tuple[torch.Tensor, bool]:
    """`transform.crop` of a dataset cell (path, bytes or decoded array; see `decode_audio`), reading from a file
    only the frames the crop needs. Returns the clip and whether it was zero-padded."""
    file = _open_sound(value)
    if file is None:
        waveform, source_rate = decode_audio(value)
        return transform.crop(waveform, source_rate, position, epoch)
    with file:
        return transform.crop_file(file, position, epoch)


class AudioTransform:
    """`(C, frames)` waveform at any rate -> `(channels, sample_size)` float32 at `sample_rate`.

    Args:
        sample_rate: output samples per second (`--sample_rate`).
        sample_size: output length in samples (`--sample_size`).
        channels: 1 (mono) or 2 (stereo).
        random_crop: a random crop (`True`) or the centred one (`False`, for validation sets).
        too_short: `"pad"` zero-pads clips shorter than `sample_size` at the end; `"skip"` raises so the stream skips
            and counts them.
        seed: seed of the random crops; the offset for one example depends only on `(seed, epoch, position)`.
    """

    def __init__(
        self,
        sample_rate: int,
        sample_size: int,
        channels: int = 1,
        random_crop: bool = True,
        too_short: str = "pad",
        seed: int | None = None,
    ):
        for name, value in (("sample_rate", sample_rate), ("sample_size", sample_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 (mono) or 2 (stereo), got {channels!r}.")
        if too_short not in TOO_SHORT_POLICIES:
            raise ValueError(f"too_short must be one of {TOO_SHORT_POLICIES}, got {too_short!r}.")
        self.sample_rate = sample_rate
        self.sample_size = sample_size
        self.channels = channels
        self.random_crop = random_crop
        self.too_short = too_short
        self.seed = 0 if seed is None else int(seed)
        self.source_rates = collections.Counter()  # clips seen per source sample rate (resampled unless = rate)

    def offset(self, length: int, position: int = 0, epoch: int = 0) -> int:
        """Where the crop of a clip of `length` samples (at `sample_rate`) starts: seeded by `(seed, epoch,
        position)` when random, else centred."""
        if self.random_crop:
            rng = np.random.default_rng([self.seed, int(epoch), int(position)])
            return int(rng.integers(0, length - self.sample_size + 1))
        return (length - self.sample_size) // 2

    def count_source_rate(self, source_rate: int) -> None:
        """Count a clip of `source_rate`; the first clip below `sample_rate` logs a warning (upsampling leaves the
        bands above its Nyquist frequency empty)."""
        self.source_rates[int(source_rate)] += 1
        if source_rate < self.sample_rate and self.source_rates[int(source_rate)] == 1:
            logger.warning(
                "upsampling %d Hz audio to %d Hz: its bands above %d Hz are empty (no content, only the resampler's "
                "roll-off), so spectra and slopes over them describe silence; pass --sample_rate %d or lower to keep "
                "to the recorded band.",
                source_rate,
                self.sample_rate,
                source_rate // 2,
                source_rate,
            )

    def resampling_summary(self) -> str:
        """One line: clips per source rate, and how many were resampled to `sample_rate`."""
        resampled = sum(n for rate, n in self.source_rates.items() if rate != self.sample_rate)
        rates = ", ".join(f"{n} at {rate} Hz" for rate, n in sorted(self.source_rates.items()))
        total = sum(self.source_rates.values())
        return f"{total} clips ({rates or 'none'}); {resampled} resampled to {self.sample_rate} Hz"

    def _pad(self, audio: np.ndarray) -> tuple[torch.Tensor, bool]:
        length = audio.shape[-1]
        if self.too_short == "skip":
            raise ValueError(
                f"the clip has {length} samples at {self.sample_rate} Hz, fewer than sample_size="
                f"{self.sample_size} (too_short='skip')."
            )
        padded = np.zeros((self.channels, self.sample_size), dtype=np.float32)
        padded[:, :length] = audio
        return torch.from_numpy(padded), True

    def crop(
        self, waveform: np.ndarray, source_rate: int, position: int = 0, epoch: int = 0
    ) -> tuple[torch.Tensor, bool]:
        """The transformed clip `(channels, sample_size)` and whether it was zero-padded."""
        self.count_source_rate(source_rate)
        # 1. Channels, then rate (fewer channels to resample)
        audio = resample_audio(convert_channels(waveform, self.channels), source_rate, self.sample_rate)
        # 2. Crop or pad
        if audio.shape[-1] < self.sample_size:
            return self._pad(audio)
        offset = self.offset(audio.shape[-1], position, epoch)
        clip = audio[:, offset : offset + self.sample_size]  # (channels, sample_size)
        return torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32)), False

    def crop_file(self, file: soundfile.SoundFile, position: int = 0, epoch: int = 0) -> tuple[torch.Tensor, bool]:
        """`crop` of an open sound file, reading only the frames the crop needs (plus the resampler's reach): a
        10-minute file costs what its crop costs. The crop is the one `crop` cuts from the whole decoded file."""
        frames, source_rate = file.frames, file.samplerate
        if not isinstance(source_rate, int) or source_rate < 1:
            raise ValueError(f"invalid sample rate {source_rate!r}.")
        if frames <= 0:
            raise ValueError("the audio is empty (no samples).")
        length = resampled_length(frames, source_rate, self.sample_rate)
        window = None
        if length >= self.sample_size:
            offset = self.offset(length, position, epoch)
            window = source_window(offset, self.sample_size, frames, source_rate, self.sample_rate)
        if window is None or window == (0, frames):
            return self.crop(_checked(file.read(dtype="float32", always_2d=True)), source_rate, position, epoch)
        start, stop = window
        file.seek(start)
        segment = _checked(file.read(stop - start, dtype="float32", always_2d=True))  # (channels, frames)
        self.count_source_rate(source_rate)
        audio = resample_audio(convert_channels(segment, self.channels), source_rate, self.sample_rate)
        first = offset - start * self.sample_rate // source_rate  # the segment's output grid is the file's
        clip = audio[:, first : first + self.sample_size]
        if clip.shape[-1] != self.sample_size:  # a short read (a truncated file): decode it whole instead
            return self.crop(_checked(_reread(file)), source_rate, position, epoch)
        return torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32)), False

    def __call__(self, waveform: np.ndarray, source_rate: int, position: int = 0, epoch: int = 0) -> torch.Tensor:
        return self.crop(waveform, source_rate, position, epoch)[0]

    def __repr__(self) -> str:
        return (
            f"AudioTransform(sample_rate={self.sample_rate}, sample_size={self.sample_size}, "
            f"channels={self.channels}, random_crop={self.random_crop}, too_short={self.too_short!r}, "
            f"seed={self.seed})"
        )


# ----------------------------------------------------------------------------------------------------------------
# Streams


class AudioReader:
    """The audio decoder of a `diffusers_spectrum.data.ResumableStream`: a dataset row -> `{"waveforms": (channels,
    sample_size)}` through `transform` (crops seeded by the example's epoch and key). Unusable audio raises
    `SkipExample` (skipped and counted); zero-padded clips are counted as `"padded"` and every clip under
    `"source_rate_<Hz>"` of its file's sample rate, in the stream's counts (summed over workers, kept through a
    resume: `source_sample_rates(loader.counts())`)."""

    def __init__(self, transform: AudioTransform, audio_column: str = "audio"):
        self.transform = transform
        self.audio_column = audio_column

    def __call__(self, example: dict, where: Position, counts: dict) -> dict:
        cell = example[self.audio_column]
        try:
            rates_before = dict(self.transform.source_rates)
            clip, was_padded = read_clip(cell, self.transform, position=where.key, epoch=where.epoch)
        except DECODE_ERRORS as error:
            raise SkipExample((cell.get("path") if isinstance(cell, dict) else None) or "") from error
        for rate, seen in self.transform.source_rates.items():
            if seen != rates_before.get(rate, 0):
                key = f"{SOURCE_RATE_COUNT}{rate}"
                counts[key] = counts.get(key, 0) + seen - rates_before.get(rate, 0)
        if was_padded:
            counts["padded"] = counts.get("padded", 0) + 1
        return {"waveforms": clip}

    def __repr__(self) -> str:
        return f"AudioReader({self.transform!r}, {self.audio_column!r})"


def source_sample_rates(counts: dict) -> dict[str, int]:
    """`{"<Hz>": clips}` per source sample rate from a stream's counts (`AudioReader`), in rising rate order."""
    rates = {int(k[len(SOURCE_RATE_COUNT) :]): n for k, n in counts.items() if k.startswith(SOURCE_RATE_COUNT)}
    return {str(rate): rates[rate] for rate in sorted(rates)}


def audio_batches(
    dataset,
    batch_size: int,
    transform: AudioTransform,
    audio_column: str = "audio",
    max_samples: int | None = None,
    skip_counter: AudioSkipCounter | None = None,
):
    """One pass over `dataset` in `(B, channels, sample_size)` float32 batches (the last may be smaller); unusable
    examples are skipped and counted. Stops after `max_samples` clips. For held-out sets and spectra."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    skip_counter = AudioSkipCounter() if skip_counter is None else skip_counter
    stream = ResumableStream(
        dataset, AudioReader(transform, audio_column), shuffle=False, infinite=False, skip_counter=skip_counter
    )
    clips = []
    for seen, sample in enumerate(stream):
        if max_samples is not None and seen >= max_samples:
            break
        clips.append(sample["waveforms"])
        if len(clips) == batch_size:
            yield torch.stack(clips)
            clips = []
    if clips:
        yield torch.stack(clips)
