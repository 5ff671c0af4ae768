"""One worker-aware, resumable stream over a Hugging Face dataset, for every trainer and the latent cache.

`ResumableStream` turns a `datasets.Dataset` or `datasets.IterableDataset` into an endless (or single-pass) torch
`IterableDataset` of decoded examples: one share per DataLoader worker of each process (every example read once per
epoch), epoch `e` shuffled with `(seed, e)`, and an exact resume from `state_dict()` through
`diffusers_spectrum.data.make_dataloader`. `read(example, where, counts)` decodes an example and raises
`SkipExample` for one that cannot be used (the stream skips, counts and logs it).

How shares, epochs, resume and decoding work: docs/METHODS.md#data-stream
"""

import dataclasses
import inspect
import logging
from collections.abc import Callable
from typing import Any

import datasets
import pyarrow
import torch
from datasets.distributed import split_dataset_by_node


__all__ = ["Position", "ResumableStream", "SkipCounter", "SkipExample", "num_shards"]

logger = logging.getLogger(__name__)

READ_CHUNK = 64  # rows fetched from the dataset at a time (they are then decoded one by one)
KEPT_REASONS = 10  # skip reasons kept in the state (the rest are only logged)


class SkipExample(Exception):
    """Raised by a stream's `read` for an example that cannot be used: the stream skips it, counts it and logs
    `detail` with the cause (`raise SkipExample(path) from error`)."""


class SkipCounter:
    """Counts examples skipped because they could not be used (`what`: "unreadable image", "unusable audio"), and
    logs one line per skip."""

    def __init__(self, what: str = "unreadable image"):
        self.what = what
        self.count = 0
        self.reasons: list[str] = []

    def record(self, where: str, error: BaseException) -> None:
        self.count += 1
        reason = f"{where}: {type(error).__name__}: {error}"
        if len(self.reasons) < 100:
            self.reasons.append(reason)
        logger.warning("skipped %s #%d (%s)", self.what, self.count, reason)

    def __repr__(self) -> str:
        return f"SkipCounter({self.what!r}, count={self.count})"


@dataclasses.dataclass(frozen=True)
class Position:
    """Where an example sits in the streams.

    Attributes:
        epoch: the epoch being read.
        index: raw index of the example in this stream's share of the epoch (skipped examples count).
        key: the example's identity within the epoch: its index in the epoch's order where that is known (one stream,
            a map-style dataset split into blocks, or a streamed dataset split by examples), else
            `stream + num_streams * index` (a streamed dataset split by shards). Unique within an epoch; per-example
            randomness is seeded with `(seed, epoch, key)`.
        stream: this stream's rank, `process_index * max(num_workers, 1) + worker_id`.
        num_streams: number of streams, `num_processes * max(num_workers, 1)`.
    """

    epoch: int
    index: int
    key: int
    stream: int
    num_streams: int


def num_shards(dataset) -> int | None:
    """The number of shards of a streamed dataset (`None` for a map-style one)."""
    if not isinstance(dataset, datasets.IterableDataset):
        return None
    return int(getattr(dataset, "num_shards", None) or dataset.n_shards)


def _block(length: int, parts: int, index: int) -> tuple[int, int]:
    """`[start, end)` of block `index` when `length` items are cut into `parts` contiguous blocks (sizes differ by
    at most one; the same cut as `datasets.Dataset.shard(contiguous=True)`)."""
    size, extra = divmod(length, parts)
    start = size * index + min(index, extra)
    return start, start + size + (1 if index < extra else 0)


def _split_by_shards(dataset: datasets.IterableDataset, rank: int, world_size: int) -> datasets.IterableDataset:
    """Stream `rank`'s share of a streamed dataset: its own shards when there are at least `world_size` of them,
    else one example in `world_size` (every stream reads all rows and decodes only its own)."""
    shards = num_shards(dataset)
    if shards >= world_size and shards % world_size:
        # datasets >= 4 can give uneven shard counts per stream; older ones would fall back to examples
        if "strategy" in inspect.signature(split_dataset_by_node).parameters:
            return split_dataset_by_node(dataset, rank=rank, world_size=world_size, strategy="shards")
    return split_dataset_by_node(dataset, rank=rank, world_size=world_size)


def _rows(batches) -> Any:
    """Rows of `{column: [values]}` batches."""
    for batch in batches:
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            yield dict(zip(columns, values))


def _worker() -> tuple[int, int]:
    """`(worker_id, num_workers)` of the DataLoader worker running this, `(0, 1)` outside workers."""
    info = torch.utils.data.get_worker_info()
    if info is None:
        return 0, 1
    try:  # as `datasets` does in its own workers: fsspec's event loop lock does not survive a fork
        import fsspec.asyn

        fsspec.asyn.reset_lock()
    except (ImportError, AttributeError):
        pass
    return info.id, info.num_workers


class ResumableStream(torch.utils.data.IterableDataset):
    """Worker-aware, resumable stream of decoded examples (docs/METHODS.md#data-stream).

    Args:
        dataset: a `datasets.Dataset` or `datasets.IterableDataset`.
        read: `read(example, where: Position, counts: dict) -> sample`; raises `SkipExample` to skip an example.
            `None` yields the raw rows.
        shuffle: shuffle each epoch with `(seed, epoch)`.
        seed: seed of the shuffles (and, through `Position.key`, of the readers' per-example randomness).
        shuffle_buffer_size: shuffle buffer of a streamed dataset.
        infinite: cycle through epochs forever (training); `False` reads one epoch (caching, statistics).
        num_processes, process_index: this process's place among the (accelerate) processes.
        skip_counter: logs and records each skipped example (a `SkipCounter`; in DataLoader workers it is a copy,
            so read totals from `counts` in the state, or `ResumableLoader.counts()`).
        describe_read_error: `describe(error) -> Exception`: a failure to read the dataset itself (`OSError`, an
            Arrow error, `DatasetGenerationError`: a corrupt shard) is raised as the exception it returns (one line
            naming the file and the fix) instead of the library's traceback. `None` re-raises as is.
    """

    def __init__(
        self,
        dataset,
        read: Callable[[dict, Position, dict], Any] | None = None,
        *,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_buffer_size: int = 1000,
        infinite: bool = True,
        num_processes: int = 1,
        process_index: int = 0,
        skip_counter=None,
        describe_read_error: Callable[[Exception], Exception] | None = None,
    ):
        super().__init__()
        if not isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)):
            raise TypeError(f"dataset must be a datasets.Dataset or IterableDataset, got {type(dataset).__name__}.")
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index must be in [0, {num_processes}), got {process_index}.")
        self.dataset = dataset
        self.read = read
        self.shuffle = shuffle
        self.seed = int(seed)
        self.shuffle_buffer_size = shuffle_buffer_size
        self.infinite = infinite
        self.num_processes = num_processes
        self.process_index = process_index
        self.skip_counter = skip_counter
        self.describe_read_error = describe_read_error
        self._start = self._fresh_state()
        self._state = self._fresh_state()

    # ------------------------------------------------------------------------------------------------------------
    # Layout

    def check_layout(self, num_workers: int) -> None:
        """A clear `ValueError` when the data cannot give each of the `num_processes x num_workers` streams a
        share of its own: a streamed dataset with fewer shards than streams (with 2+ workers), or a map-style one
        with fewer examples than streams."""
        workers = max(int(num_workers), 1)
        streams = self.num_processes * workers
        shards = num_shards(self.dataset)
        if shards is None:
            if len(self.dataset) < streams:
                raise ValueError(
                    f"the dataset has {len(self.dataset)} examples, fewer than the {streams} decoding streams "
                    f"({self.num_processes} process(es) x {workers} dataloader worker(s)); use fewer workers or "
                    "processes, or more data."
                )
            return
        if workers > 1 and shards < streams:
            most = max(shards // self.num_processes, 0)
            raise ValueError(
                f"the streamed dataset has {shards} shard(s) (files), fewer than the {streams} decoding streams "
                f"({self.num_processes} process(es) x {workers} dataloader workers) that each read shards of their "
                f"own. Pass --dataloader_num_workers {most if most > 1 else 0}"
                f"{' or fewer' if most > 1 else ''}; or load local data without streaming (--no_streaming: it "
                f"is then split by example); or save the data as at least {streams} parquet files "
                "(`dataset.to_parquet` per shard, or `push_to_hub(num_shards=...)`)."
            )
        if workers > 1 and shards % streams:
            logger.info(
                "%d shards over %d decoding streams: some streams read one shard more than others", shards, streams
            )

    # ------------------------------------------------------------------------------------------------------------
    # State

    @staticmethod
    def _fresh_state(epoch: int = 0, position: int = 0, counts=None, reasons=None) -> dict:
        return {
            "epoch": int(epoch),
            "position": int(position),
            "counts": dict(counts or {}),
            "reasons": list(reasons or [])[:KEPT_REASONS],
        }

    def state_dict(self) -> dict:
        """`{"epoch", "position", "counts", "reasons"}` after the last example this stream yielded (JSON-ready)."""
        state = self._state
        return {**state, "counts": dict(state["counts"]), "reasons": list(state["reasons"])}

    def load_state_dict(self, state: dict) -> None:
        """Start the next iteration at `state` (from `state_dict`; `counts` / `reasons` optional)."""
        if int(state["epoch"]) < 0 or int(state["position"]) < 0:
            raise ValueError(f"a stream state needs epoch >= 0 and position >= 0, got {state}.")
        self._start = self._fresh_state(state["epoch"], state["position"], state.get("counts"), state.get("reasons"))
        self._state = self._fresh_state(**self._start)

    # ------------------------------------------------------------------------------------------------------------
    # Iteration

    def _share(self, epoch: int, stream: int, streams: int):
        """`(rows, length)`: `rows(skip)` yields `(index, key, example)` of this stream's share of epoch `epoch`
        from raw index `skip` on (a streamed share yields from 0: the caller skips by reading), `length` is the
        share's size (`None` for a streamed share)."""
        dataset = self.dataset
        if isinstance(dataset, datasets.IterableDataset):
            if self.shuffle:
                dataset = dataset.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer_size)
                dataset.set_epoch(epoch)
            if streams > 1:
                dataset = _split_by_shards(dataset, stream, streams)

            def rows(skip):
                # `.iter()` reads this exact share: it does not split again by DataLoader worker as `__iter__` does
                for index, example in enumerate(_rows(dataset.iter(batch_size=READ_CHUNK))):
                    yield index, (index if streams == 1 else stream + streams * index), example

            return rows, None
        if self.shuffle:
            dataset = dataset.shuffle(seed=self.seed + epoch, keep_in_memory=True)  # no indices file per worker
        start, end = _block(len(dataset), streams, stream)

        def rows(skip):
            for chunk_start in range(start + skip, end, READ_CHUNK):
                chunk = dataset[chunk_start : min(chunk_start + READ_CHUNK, end)]
                for offset, example in enumerate(_rows([chunk])):
                    index = chunk_start - start + offset
                    yield index, start + index, example

        return rows, end - start

    def __iter__(self):
        worker, workers = _worker()
        streams, stream = self.num_processes * workers, self.process_index * workers + worker
        state = self._fresh_state(**self._start)
        self._state = state
        counts, reasons = state["counts"], state["reasons"]
        epoch, skip = state["epoch"], state["position"]
        while True:
            rows, length = self._share(epoch, stream, streams)
            if length is not None and 0 < length <= skip:  # a map-style share resumed past its end
                skip -= length
                epoch += 1
                continue
            read = used = 0
            for index, key, example in self._guarded(rows(skip if length is not None else 0)):
                read = index + 1
                if index < skip:
                    continue  # read, not decoded
                self._state = state = {"epoch": epoch, "position": index + 1, "counts": counts, "reasons": reasons}
                if self.read is None:
                    used += 1
                    yield example
                    continue
                where = Position(epoch, index, key, stream, streams)
                try:
                    sample = self.read(example, where, counts)
                except SkipExample as skip_error:
                    self._record_skip(key, skip_error, counts, reasons)
                    continue
                used += 1
                yield sample
            if not self.infinite:
                return
            if read == 0:
                raise ValueError(
                    f"decoding stream {stream} of {streams} got no example of the data; use fewer dataloader "
                    "workers or processes, or more data."
                )
            if used == 0 and skip == 0:
                raise ValueError(
                    f"none of the {read} examples of decoding stream {stream} of {streams} could be used "
                    f"({counts.get('skipped', 0)} skipped: {reasons[:3]}); check the data."
                )
            skip = max(skip - read, 0)
            epoch += 1
            self._state = state = {"epoch": epoch, "position": 0, "counts": counts, "reasons": reasons}

    def _guarded(self, rows):
        """`rows`, with a failure to read the dataset raised as `describe_read_error` describes it."""
        if self.describe_read_error is None:
            yield from rows
            return
        iterator = iter(rows)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except (OSError, pyarrow.ArrowException, datasets.exceptions.DatasetGenerationError) as error:
                raise self.describe_read_error(error) from None
            yield item

    def _record_skip(self, key: int, skip_error: SkipExample, counts: dict, reasons: list) -> None:
        cause = skip_error.__cause__ or skip_error
        detail = f"example {key}" + (f", {skip_error}" if str(skip_error) and skip_error is not cause else "")
        counts["skipped"] = counts.get("skipped", 0) + 1
        if len(reasons) < KEPT_REASONS:
            reasons.append(f"{detail}: {type(cause).__name__}: {cause}")
        if self.skip_counter is not None:
            self.skip_counter.record(detail, cause)
        else:
            logger.warning("skipped example #%d (%s: %s: %s)", counts["skipped"], detail, type(cause).__name__, cause)

    def __repr__(self) -> str:
        return (
            f"ResumableStream({type(self.dataset).__name__}, read={self.read!r}, shuffle={self.shuffle}, "
            f"seed={self.seed}, infinite={self.infinite}, process {self.process_index} of {self.num_processes})"
        )
