"""The stock `DanceDiffusionPipeline` of a waveform UNet: built around it with the scheduler it was trained for,
sampled reproducibly (one generator per clip) and written as WAV files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch


if TYPE_CHECKING:
    from diffusers import DanceDiffusionPipeline, UNet1DModel


__all__ = ["audio_pipeline", "generate_audio", "write_wavs"]


def audio_pipeline(unet: UNet1DModel) -> DanceDiffusionPipeline:
    """The stock pipeline around `unet` with the scheduler it was trained for (`IPNDMScheduler`), progress bar off."""
    from diffusers import DanceDiffusionPipeline, IPNDMScheduler

    pipe = DanceDiffusionPipeline(unet=unet, scheduler=IPNDMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate_audio(
    pipe: DanceDiffusionPipeline,
    num_clips: int,
    num_inference_steps: int,
    seed: int = 0,
    batch_size: int = 8,
    sample_size: int | None = None,
) -> np.ndarray:
    """`(num_clips, C, sample_size)` float32 clips in [-1, 1] from a `DanceDiffusionPipeline`, clip `i` drawn with
    its own generator seeded `seed + i` (so the clips do not depend on `batch_size`). `sample_size` defaults to the
    UNet's."""
    sample_rate = pipe.unet.config.sample_rate
    sample_size = sample_size or pipe.unet.config.sample_size
    clips = []
    for start in range(0, num_clips, batch_size):
        count = min(batch_size, num_clips - start)
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(count)]
        clips.append(
            pipe(
                batch_size=count,
                num_inference_steps=num_inference_steps,
                generator=generators,
                audio_length_in_s=sample_size / sample_rate,
            ).audios
        )
    audio = np.concatenate(clips)[..., :sample_size]
    if audio.shape[-1] != sample_size:
        raise RuntimeError(f"the pipeline returned {audio.shape[-1]} samples instead of {sample_size}.")
    return audio


def write_wavs(clips: np.ndarray, sample_rate: int, folder: str | Path, prefix: str = "sample") -> list[Path]:
    """`(N, C, T)` clips in [-1, 1] -> `folder/<prefix>_<i>.wav` (16-bit PCM); returns the paths."""
    import soundfile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, clip in enumerate(clips):
        path = folder / f"{prefix}_{i:02d}.wav"
        soundfile.write(path, np.clip(clip.T, -1, 1), sample_rate, subtype="PCM_16")
        paths.append(path)
    return paths
