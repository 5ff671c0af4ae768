"""Data for every trainer, the latent cache and the evaluation: where it comes from (`sources`), how images and
audio are decoded and transformed (`images`, `audio`), the latent cache read back (`latents`), and one worker-aware,
resumable stream over a Hugging Face dataset (`ResumableStream`) with one loader factory (`make_dataloader`) whose
state resumes every worker exactly."""

from .loader import ResumableLoader, make_dataloader, stream_states
from .stream import Position, ResumableStream, SkipCounter, SkipExample, num_shards


__all__ = [
    "Position",
    "ResumableLoader",
    "ResumableStream",
    "SkipCounter",
    "SkipExample",
    "make_dataloader",
    "num_shards",
    "stream_states",
]
