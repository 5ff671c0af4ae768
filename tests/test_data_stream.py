"""The generic stream and loader (`diffusers_spectrum.data`): every example once per epoch across processes x
workers, exact resume of every worker (state through JSON), clear errors for too few shards, counts carried through
a resume, and a changed worker count restarting at an epoch boundary."""

import json
import logging

import datasets
import pytest
import torch

from diffusers_spectrum.data import ResumableStream, SkipExample, make_dataloader, num_shards, stream_states


N = 24


@pytest.fixture(autouse=True)
def _no_sleep_after_streams(monkeypatch):
    """`datasets` sleeps 5 s each time a shuffled multi-file parquet stream ends (its workaround for arrow#45214,
    a crash of reader threads at interpreter exit); these tests end dozens of such short streams."""
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture(scope="module")
def parquet_files(tmp_path_factory):
    """24 rows `{"id": i, "bad": i % 7 == 3}` in 4 parquet files (4 shards when streamed)."""
    folder = tmp_path_factory.mktemp("rows")
    table = datasets.Dataset.from_dict({"id": list(range(N)), "bad": [i % 7 == 3 for i in range(N)]})
    for k in range(4):
        table.shard(4, k, contiguous=True).to_parquet(str(folder / f"part-{k}.parquet"))
    return sorted(str(p) for p in folder.glob("*.parquet"))


def open_rows(files, streaming: bool):
    return datasets.load_dataset("parquet", data_files={"train": files}, split="train", streaming=streaming)


class Tagged:
    """A reader that keeps what the stream knows about each example (and skips the `bad` ones)."""

    def __call__(self, example, where, counts):
        if example["bad"]:
            raise SkipExample(f"row {example['id']}") from ValueError("bad row")
        counts["read"] = counts.get("read", 0) + 1
        return {"id": example["id"], "epoch": where.epoch, "key": where.key, "stream": where.stream}


def take(loader, count):
    iterator = iter(loader)
    return [next(iterator) for _ in range(count)]


def ids(batches):
    return [i for batch in batches for i in batch["id"].tolist()]


# ----------------------------------------------------------------------------------------------------------------
# Coverage


@pytest.mark.parametrize("streaming", [True, False])
@pytest.mark.parametrize(("processes", "workers"), [(1, 0), (1, 2), (2, 2), (1, 3), (1, 4)])
def test_every_example_is_read_once_per_epoch_across_processes_and_workers(
    parquet_files, streaming, processes, workers
):
    dataset = open_rows(parquet_files, streaming)
    good = sorted(i for i in range(N) if i % 7 != 3)
    seen = {0: [], 1: []}
    for rank in range(processes):
        stream = ResumableStream(
            dataset, Tagged(), seed=3, shuffle_buffer_size=5, num_processes=processes, process_index=rank
        )
        # enough batches for every stream to finish two epochs (streams run through epochs independently)
        batches = take(make_dataloader(stream, 2, num_workers=workers), 2 * N // processes)
        for batch in batches:
            for i, epoch in zip(batch["id"].tolist(), batch["epoch"].tolist()):
                if epoch in seen:
                    seen[epoch].append(i)
        streams = {s for b in batches for s in b["stream"].tolist()}
        assert len(streams) == max(workers, 1)  # every worker contributed
    for epoch in (0, 1):
        assert sorted(seen[epoch]) == good, epoch  # no duplicate, no gap
    assert seen[0] != seen[1]  # reshuffled


def test_a_single_pass_with_workers_reads_each_example_once_with_unique_keys(parquet_files):
    for streaming in (True, False):
        stream = ResumableStream(open_rows(parquet_files, streaming), Tagged(), shuffle=False, infinite=False)
        loader = make_dataloader(stream, 3, num_workers=2, drop_last=False)
        batches = list(loader)
        assert sorted(ids(batches)) == [i for i in range(N) if i % 7 != 3]
        keys = [k for b in batches for k in b["key"].tolist()]
        assert len(set(keys)) == len(keys)
        assert loader.counts() == {"skipped": 3, "read": N - 3}


# ----------------------------------------------------------------------------------------------------------------
# Exact resume


@pytest.mark.parametrize(("streaming", "workers"), [(True, 0), (True, 2), (False, 1), (False, 3)])
def test_resume_restarts_every_worker_at_its_own_position(parquet_files, streaming, workers):
    dataset = open_rows(parquet_files, streaming)

    def loader(state=None):
        stream = ResumableStream(dataset, Tagged(), seed=1, shuffle_buffer_size=6)
        return make_dataloader(stream, 2, num_workers=workers, state=state)

    full = take(loader(), 30)  # 60 examples: into a third epoch of every stream
    for stop in (5, 13):
        first = loader()
        head = take(first, stop)
        state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
        assert len(stream_states(state)) == max(workers, 1)
        tail = take(loader(state), 30 - stop)
        assert ids(head + tail) == ids(full)
        for expected, got in zip(full, head + tail):
            assert torch.equal(got["key"], expected["key"]) and torch.equal(got["epoch"], expected["epoch"])


def test_counts_are_carried_through_a_resume(parquet_files):
    dataset = open_rows(parquet_files, streaming=False)
    first = make_dataloader(ResumableStream(dataset, Tagged(), seed=2), 3, num_workers=2)
    take(first, 6)
    state = first.state_dict()
    before = first.counts()
    resumed = make_dataloader(ResumableStream(dataset, Tagged(), seed=2), 3, num_workers=2, state=state)
    take(resumed, 4)
    after = resumed.counts()
    assert after["read"] == before["read"] + 12
    assert after["skipped"] >= before["skipped"] and len(resumed.skip_reasons()) == after["skipped"]


def test_a_different_worker_count_restarts_at_the_beginning_of_the_epoch(parquet_files, caplog):
    dataset = open_rows(parquet_files, streaming=False)
    first = make_dataloader(ResumableStream(dataset, Tagged(), seed=2), 2, num_workers=2)
    batches = take(first, 14)  # 28 examples: every stream is in its second epoch
    state = first.state_dict()
    with caplog.at_level(logging.WARNING):
        resumed = make_dataloader(ResumableStream(dataset, Tagged(), seed=2), 2, num_workers=0, state=state)
        head = take(resumed, 3)
    assert "--dataloader_num_workers 2" in caplog.text
    assert all(epoch == 1 for b in head for epoch in b["epoch"].tolist())
    assert {i for b in batches for i in b["id"].tolist()} >= set(ids(head))


def test_a_stream_state_resumes_one_stream_exactly(parquet_files):
    """A bare `{"epoch", "position"}` (what checkpoints from before per-worker states hold) resumes one stream."""
    dataset = open_rows(parquet_files, streaming=True)
    full = take(make_dataloader(ResumableStream(dataset, Tagged(), seed=4), 2), 20)
    stream = ResumableStream(dataset, Tagged(), seed=4)
    first = make_dataloader(stream, 2)
    take(first, 7)
    state = stream_states(first.state_dict())[0]
    legacy = {"epoch": 0, "position": state["position"] + N * state["epoch"]}  # one position counted over epochs
    tail = take(make_dataloader(ResumableStream(dataset, Tagged(), seed=4), 2, state=legacy), 13)
    assert ids(tail) == ids(full[7:])


# ----------------------------------------------------------------------------------------------------------------
# Layout errors


def test_too_few_shards_or_examples_for_the_streams_is_a_clear_error(parquet_files):
    streamed = open_rows(parquet_files, streaming=True)
    assert num_shards(streamed) == 4
    make_dataloader(ResumableStream(streamed, Tagged(), num_processes=2, process_index=1), 2, num_workers=2)
    with pytest.raises(ValueError, match=r"4 shard\(s\).*8 decoding streams.*--dataloader_num_workers 2 or fewer"):
        make_dataloader(ResumableStream(streamed, Tagged(), num_processes=2), 2, num_workers=4)
    one_shard = open_rows(parquet_files[:1], streaming=True)
    with pytest.raises(ValueError, match="--no_streaming"):
        make_dataloader(ResumableStream(one_shard, Tagged()), 2, num_workers=2)
    make_dataloader(ResumableStream(one_shard, Tagged(), num_processes=2), 2)  # processes alone: split by example
    small = open_rows(parquet_files[:1], streaming=False)  # 6 rows
    with pytest.raises(ValueError, match="6 examples, fewer than the 8 decoding streams"):
        make_dataloader(ResumableStream(small, Tagged(), num_processes=2), 2, num_workers=4)
    with pytest.raises(ValueError, match="process_index"):
        ResumableStream(small, Tagged(), num_processes=2, process_index=2)


def test_an_all_bad_share_is_an_error_instead_of_an_endless_loop(tmp_path):
    table = datasets.Dataset.from_dict({"id": [3, 10, 17], "bad": [True, True, True]})
    stream = ResumableStream(table, Tagged())
    with pytest.raises(ValueError, match="none of the 3 examples"):
        next(iter(make_dataloader(stream, 1)))
