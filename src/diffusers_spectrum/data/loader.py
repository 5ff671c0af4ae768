"""The one loader factory: batches of a `ResumableStream` decoded by any number of DataLoader workers, with a
JSON-ready state that resumes every worker at its own position.

The loader is torchdata's `StatefulDataLoader` (the stateful drop-in for `torch.utils.data.DataLoader` that the
PyTorch team maintains and accelerate supports): after each batch it snapshots the state of the worker that made it
(`ResumableStream.state_dict`) and which worker is next, so `load_state_dict` restarts each worker at its own
position and the batches continue in the same order as an uninterrupted run.

    stream = ResumableStream(dataset, ImageReader(transform), seed=0, num_processes=2, process_index=rank)
    loader = make_dataloader(stream, batch_size=32, num_workers=4)
    ...
    state = loader.state_dict()                   # JSON: store it in the checkpoint
    loader = make_dataloader(stream, 32, num_workers=4, state=state)   # continues exactly
"""

import logging
import warnings

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from .stream import ResumableStream


__all__ = ["ResumableLoader", "make_dataloader", "stream_states"]

logger = logging.getLogger(__name__)


def stream_states(state: dict | None) -> list[dict]:
    """The per-stream states (`ResumableStream.state_dict`) inside a loader state (`ResumableLoader.state_dict`) or a
    bare stream state: one per worker (one for a loader without workers)."""
    if not state:
        return []
    if "position" in state:  # a stream state
        return [state]
    loader = state.get("loader") or {}
    if "_snapshot" in loader:  # workers: torchdata keeps each worker's last snapshot
        workers = loader["_snapshot"]["_worker_snapshots"]
        return [workers[key]["dataset_state"] for key in sorted(workers, key=lambda k: int(k.split("_")[-1]))]
    return [loader["dataset_state"]] if loader.get("dataset_state") else []


def _restart_state(state: dict) -> dict:
    """A stream state that restarts at the beginning of the earliest epoch any stream of `state` had reached (used
    when the number of workers or processes changed, so positions cannot be carried over)."""
    states = stream_states(state)
    counts = {}
    for stream in states:
        for name, value in stream.get("counts", {}).items():
            counts[name] = counts.get(name, 0) + value
    return {"epoch": min((s["epoch"] for s in states), default=0), "position": 0, "counts": counts}


class ResumableLoader(StatefulDataLoader):
    """A `StatefulDataLoader` over a `ResumableStream` whose state is plain JSON and says how many workers wrote it.
    Build it with `make_dataloader`."""

    def state_dict(self) -> dict:
        """`{"num_workers", "loader"}`: torchdata's state, holding every worker's stream state (JSON-ready)."""
        return {"num_workers": self.num_workers, "loader": super().state_dict()}

    def load_state_dict(self, state: dict | None) -> None:
        """Resume from `state_dict()` (same number of workers: exact), from a stream state (`{"epoch", "position"}`,
        exact with at most one worker), or `None` / `{}` (start). A state written with another number of workers
        restarts at the beginning of its earliest epoch, with a warning."""
        if not state:
            return
        if "loader" in state:
            if int(state.get("num_workers", -1)) == self.num_workers:
                super().load_state_dict(state["loader"])
                return
            restart = _restart_state(state)
            logger.warning(
                "the data state was written with %s dataloader worker(s), this run has %d: positions cannot be "
                "carried over, so every stream restarts at the beginning of epoch %d (examples of that epoch may be "
                "seen twice). Resume with --dataloader_num_workers %s for an exact resume.",
                state.get("num_workers"),
                self.num_workers,
                restart["epoch"],
                state.get("num_workers"),
            )
            self.dataset.load_state_dict(restart)
            return
        if self.num_workers > 1 and int(state["position"]) > 0:
            restart = _restart_state(state)
            logger.warning(
                "a single data position cannot be split over %d dataloader workers: every stream restarts at the "
                "beginning of epoch %d.",
                self.num_workers,
                restart["epoch"],
            )
            self.dataset.load_state_dict(restart)
            return
        self.dataset.load_state_dict(state)  # the workers get copies of the stream with this start

    def stream_states(self) -> list[dict]:
        """The state of every stream of this loader (one per worker), as of the last batch it returned; once a
        single pass has ended, as of the end of each worker's share (so skips after the last batch count too)."""
        iterator = self._iterator
        if iterator is not None and getattr(iterator, "_finished", False) and hasattr(iterator, "_worker_snapshots"):
            # torchdata applies each worker's final state (sent with its end-of-data signal) here, not to the
            # snapshot that `state_dict` returns (which describes the last batch)
            workers = iterator._worker_snapshots
            keys = sorted(workers, key=lambda k: int(k.split("_")[-1]))
            return [workers[key].get_state()["dataset_state"] for key in keys]
        return stream_states(self.state_dict())

    def counts(self) -> dict[str, int]:
        """Events counted by the streams so far (`"skipped"`, and whatever the reader counts), summed over
        workers; carried through checkpoints, so a resumed run keeps counting."""
        totals = {}
        for state in self.stream_states():
            for name, value in state.get("counts", {}).items():
                totals[name] = totals.get(name, 0) + value
        return totals

    def skip_reasons(self) -> list[str]:
        """The first reasons for skipped examples, over all workers."""
        return [reason for state in self.stream_states() for reason in state.get("reasons", [])]


def make_dataloader(
    stream: ResumableStream,
    batch_size: int | None,
    *,
    num_workers: int = 0,
    collate_fn=None,
    drop_last: bool = True,
    state: dict | None = None,
    pin_memory: bool = False,
    seed: int = 0,
) -> ResumableLoader:
    """Batches of `stream`, decoded in `num_workers` background processes (0: in this process), resumable.

    Args:
        stream: the `ResumableStream` (already split across processes: do not `accelerator.prepare` the loader).
        batch_size: examples per batch (`None`: one example at a time, not collated).
        num_workers: DataLoader workers; each reads its own share of the data (checked here: a streamed dataset
            needs at least `num_processes x num_workers` shards).
        collate_fn: batch collation (default: torch's `default_collate`).
        drop_last: drop a last incomplete batch of each worker (for a single-pass stream).
        state: a `state_dict()` of an earlier loader over the same data (or a stream state) to resume from.
        pin_memory: pin batches for faster host-to-GPU copies.
        seed: seeds the workers' base seed (so no global RNG is drawn when iteration starts).
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
    stream.check_layout(num_workers)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*set_vital.*")  # torchdata 0.11 on torch >= 2.9
        warnings.filterwarnings("ignore", message=".*suggested max number of worker.*")
        loader = ResumableLoader(
            stream,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate_fn,
            drop_last=drop_last if batch_size is not None else False,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(seed),
            snapshot_every_n_steps=1,
        )
    loader.load_state_dict(state)
    return loader
