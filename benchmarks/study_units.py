"""Shared plumbing of the sharded, resumable studies (`ablate_spectral_regularization.py`,
`ablate_audio_regularization.py`): one unit of work (a training run and its measurements) is merged into the study's
JSON as soon as it finishes, under an exclusive lock, so several processes (`--shard i/n`) can fill one JSON and an
interrupted study resumes where it stopped.
"""

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def json_lock(path: Path):
    """An exclusive lock on the JSON's folder (``flock`` on the directory), held while a process reads, merges and
    writes the JSON, so concurrent shards never lose each other's units."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


def merge(path: Path, read: Callable[[Path], dict], update: Callable[[dict], None]) -> dict:
    """Under the lock: ``result = read(path)`` (the stored JSON when it belongs to this study and budget, else a
    fresh one), ``update(result)``, write it back atomically; returns the merged result."""
    from diffusers_spectrum.utils.records import write_json

    with json_lock(path):
        result = read(Path(path))
        update(result)
        write_json(path, result, sort_keys=False)
    return result


def load_matching(path: Path, key: str, value, fresh: Callable[[], dict]) -> dict:
    """The JSON at ``path`` when its ``key`` equals ``value`` (compared as JSON) and it holds ``units``, else
    ``fresh()``."""
    path = Path(path)
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get(key) == json.loads(json.dumps(value)) and "units" in stored:
            return stored
    return fresh()


def shard_units(units: list, shard: tuple[int, int], costs: list[float] | None = None) -> list:
    """The units of shard ``i`` of ``n`` (``shard = (i, n)``), in their order. Without ``costs``: every ``n``-th unit
    from the ``i``-th. With ``costs`` (an estimate per unit): each unit in turn goes to the shard with the least
    estimated work so far (ties to the lower index), so shards of unequal units finish together. Deterministic: every
    process computes the same plan."""
    index, count = shard
    if costs is None:
        return units[index::count]
    if len(costs) != len(units):
        raise ValueError(f"shard_units: {len(costs)} costs for {len(units)} units.")
    loads, mine = [0.0] * count, []
    for unit, cost in zip(units, costs):
        target = min(range(count), key=lambda k: (loads[k], k))
        loads[target] += float(cost)
        if target == index:
            mine.append(unit)
    return mine


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n`` (an argparse type)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n (e.g. 0/2), got {text!r}.") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < n (e.g. 0/2 and 1/2).")
    return index, count


def git_commit() -> str:
    """The repository's short commit, or ``"unknown"``."""
    try:
        command = ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command_line() -> str:
    return " ".join(["python", *sys.argv])


def replace_between(path: Path, start: str, end: str, text: str) -> bool:
    """Replace what lies between the markers ``start`` and ``end`` in the file ``path`` (both kept); False (and
    nothing written) when the file or a marker is missing."""
    path = Path(path)
    if not path.is_file():
        return False
    content = path.read_text(encoding="utf-8")
    if start not in content or end not in content:
        return False
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{text}\n{end}{tail}", encoding="utf-8")
    return True


class Stopwatch:
    """Wall seconds and this process's CPU seconds since construction (on a shared machine the CPU seconds are the
    cost that carries over to idle cores; the wall seconds include waiting for a core)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def wall_seconds(self) -> float:
        return round(time.perf_counter() - self.wall, 2)

    def cpu_seconds(self) -> float:
        return round(time.process_time() - self.cpu, 2)

    def record(self, prefix: str) -> dict:
        """``{f"{prefix}_seconds": wall, f"{prefix}_cpu_seconds": cpu}``."""
        return {f"{prefix}_seconds": self.wall_seconds(), f"{prefix}_cpu_seconds": self.cpu_seconds()}


def study_cost(units, processes) -> dict:
    """The cost of a study from its units' and processes' seconds: ``cpu_seconds`` (every unit and every process's
    set-up, CPU time: what the study costs on idle cores), ``wall_seconds`` (the same in wall time, longer on a
    loaded machine) and ``longest_process_wall_seconds`` (the slowest shard, start to end)."""
    units, processes = list(units), list(processes)
    return {
        "cpu_seconds": sum(u.get("unit_cpu_seconds", u["unit_seconds"]) for u in units)
        + sum(p.get("setup_cpu_seconds", p.get("setup_seconds", 0.0)) for p in processes),
        "wall_seconds": sum(u["unit_seconds"] for u in units) + sum(p.get("setup_seconds", 0.0) for p in processes),
        "longest_process_wall_seconds": max((p.get("wall_seconds", 0.0) for p in processes), default=0.0),
    }


def wrap_bullet(text: str, width: int = 119) -> str:
    """A Markdown bullet (``"- ..."``) wrapped to the README's width, continuation lines indented by two spaces."""
    return textwrap.fill(
        " ".join(text.split()), width=width, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False
    )


_THREAD_LIMITS = []  # keeps threadpoolctl's limiter alive for the process


def limit_threads(count: int) -> str:
    """Use ``count`` threads for torch and, when threadpoolctl is installed, for numpy / scipy's BLAS too (scipy's
    eigh in the Frechet distance would otherwise start one thread per core), so that concurrent study processes
    with one thread each share the cores without oversubscribing them. Returns what was limited."""
    import torch

    torch.set_num_threads(count)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return f"torch {count} thread(s); BLAS threads not limited (threadpoolctl is not installed)"
    _THREAD_LIMITS.append(threadpool_limits(limits=count))
    return f"torch and BLAS {count} thread(s)"
