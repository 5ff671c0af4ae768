"""Run every `benchmarks/bench_*.py` and write one table: `benchmarks/results.md` and `benchmarks/results.json`.

Each module exposes `run(quick: bool = False) -> list[dict]` whose rows have the keys `benchmark`, `metric`,
`value`, `unit`, `ratio` (or None) and `target`. The table records the machine it came from (CPU, cores, memory,
GPU, library versions) so the README can quote it with its provenance. Each module runs in its own subprocess and
the tables are rewritten after each one; a benchmark that fails (an exception, a crash, an OOM kill) is reported as
a failed row (and a non-zero exit status) instead of hiding the others.

Usage: python benchmarks/run_all.py [--quick] [--only esm,pipeline [--update]] [--output_dir benchmarks]
"""

import argparse
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


BENCHMARK_DIR = Path(__file__).resolve().parent
ROW_KEYS = ("benchmark", "metric", "value", "unit", "ratio", "target")


def discover(only: list[str] | None = None) -> list[str]:
    """Names of the `bench_*.py` modules (sorted), optionally restricted to `only` (names without `bench_`)."""
    names = sorted(p.stem for p in BENCHMARK_DIR.glob("bench_*.py"))
    if only:
        wanted = {f"bench_{name.removeprefix('bench_')}" for name in only}
        unknown = wanted - set(names)
        if unknown:
            raise ValueError(f"Unknown benchmark(s) {sorted(unknown)}; available: {names}.")
        names = [n for n in names if n in wanted]
    return names


def machine_description() -> dict:
    """CPU, cores, memory, GPU and library versions of this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    memory_gb = None
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("diffusers", "transformers", "datasets", "diffusers_spectrum"):
        try:
            versions[package] = importlib.import_module(package).__version__
        except ImportError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": memory_gb,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "versions": versions,
    }


def check_rows(name: str, rows) -> list[dict]:
    """The protocol: a list of dicts with exactly the row keys (extra keys are an error, so tables stay uniform)."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise TypeError(f"{name}.run() must return a list of dicts, got {type(rows).__name__}.")
    for row in rows:
        if set(row) != set(ROW_KEYS):
            raise ValueError(f"{name}.run() row keys must be {ROW_KEYS}, got {sorted(row)}.")
    return rows


def _child(name: str, quick: bool, benchmark_dir: str) -> None:
    """In the subprocess: import and run one module, print its rows as the last stdout line (JSON)."""
    sys.path.insert(0, benchmark_dir)  # modules import their siblings (e.g. `from bench_esm import ...`)
    rows = check_rows(name, importlib.import_module(name).run(quick=quick))
    print("\n" + json.dumps(rows), flush=True)


def run_benchmarks(names: list[str], quick: bool) -> tuple[list[dict], list[dict]]:
    """Run each module in its own subprocess (a crash, an OOM kill or a leak stays there); returns (rows with a
    `module` key added, per-module status)."""
    rows, status = [], []
    for name in names:
        start = time.perf_counter()
        print(f"== {name} ({'quick' if quick else 'full'})", flush=True)
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--_child",
            name,
            "--benchmark_dir",
            str(BENCHMARK_DIR),
        ]
        result = subprocess.run(command + (["--quick"] if quick else []), stdout=subprocess.PIPE, text=True)
        lines = result.stdout.strip().splitlines()
        print("\n".join(lines[:-1]), flush=True)
        error = None
        if result.returncode != 0:
            error = f"exit status {result.returncode} (negative = killed by that signal; see the log above)"
        else:
            try:
                module_rows = json.loads(lines[-1])
            except (IndexError, json.JSONDecodeError) as decode_error:
                error = f"no result rows: {decode_error}"
        seconds = time.perf_counter() - start
        if error is None:
            rows.extend({"module": name, **row} for row in module_rows)
            status.append({"module": name, "ok": True, "seconds": seconds})
            continue
        failed = {"benchmark": f"{name} FAILED", "metric": error[:200], "value": None, "unit": "", "ratio": None}
        rows.append({"module": name, **failed, "target": ""})  # one broken benchmark must not hide the others
        status.append({"module": name, "ok": False, "seconds": seconds, "error": error})
    return rows, status


def _format(value, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(rows: list[dict], machine: dict, quick: bool, date: str) -> str:
    gpu = machine["gpu"] or "none"
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    lines = [
        "# Benchmark results",
        "",
        f"Run {date} with `python benchmarks/run_all.py{' --quick' if quick else ''}` on: {machine['cpu']}, "
        f"{machine['cores']} cores ({machine['torch_threads']} torch threads), {machine['memory_gb']} GB RAM, "
        f"GPU: {gpu}.",
        f"Versions: {versions}.",
        "",
        "| benchmark | metric | value | unit | ratio | target |",
        "|---|---|---:|---|---:|---|",
    ]
    for row in rows:
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        cells = [row["benchmark"].strip(), row["metric"], _format(row["value"]), row["unit"], ratio, row["target"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(output_dir: Path, rows: list[dict], status: list[dict], machine: dict, quick: bool) -> str:
    """Write `results.md` and `results.json`; returns the markdown."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = markdown_table(rows, machine, quick, date)
    (output_dir / "results.md").write_text(table, encoding="utf-8")
    payload = {"date": date, "quick": quick, "machine": machine, "status": status, "rows": rows}
    (output_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's quick mode (fewer repeats / sizes)")
    parser.add_argument("--only", default=None, help="comma-separated subset, e.g. 'esm,pipeline'")
    parser.add_argument("--output_dir", default=str(BENCHMARK_DIR), help="where results.md / results.json go")
    parser.add_argument(
        "--update", action="store_true", help="keep the other modules' rows of an existing results.json (with --only)"
    )
    parser.add_argument("--benchmark_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        _child(args._child, args.quick, args.benchmark_dir)
        return 0
    names = discover(args.only.split(",") if args.only else None)
    machine = machine_description()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows, status = [], []
    previous = output_dir / "results.json"
    if args.update and previous.is_file():
        old = json.loads(previous.read_text(encoding="utf-8"))
        rows = [r for r in old["rows"] if r["module"] not in names]
        status = [s for s in old["status"] if s["module"] not in names]
    table = write_results(output_dir, rows, status, machine, args.quick)
    for name in names:  # tables are rewritten after each module, so a crash keeps what finished
        module_rows, module_status = run_benchmarks([name], args.quick)
        rows = sorted(rows + module_rows, key=lambda r: r["module"])  # stable: a module's rows keep their order
        status = sorted(status + module_status, key=lambda s: s["module"])
        table = write_results(output_dir, rows, status, machine, args.quick)
    print(table)
    return 0 if all(s["ok"] for s in status) else 1


if __name__ == "__main__":
    sys.exit(main())
