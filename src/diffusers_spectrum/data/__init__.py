"""Data streams shared by every trainer and the latent cache: one worker-aware, resumable stream over a Hugging Face
dataset (`ResumableStream`) and one loader factory (`make_dataloader`) whose state resumes every worker exactly."""

from .loader import ResumableLoader, make_dataloader, stream_states
from .stream import Position, ResumableStream, SkipExample, num_shards


__all__ = [
    "Position",
    "ResumableLoader",
    "ResumableStream",
    "SkipExample",
    "make_dataloader",
    "num_shards",
    "stream_states",
]
