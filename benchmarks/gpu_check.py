"""One prepared GPU check: on any machine with a CUDA GPU, one call runs the data-stream benchmark
(`bench_data.py`) and the trainers at their real configurations (`bench_real_configs.py`) in bfloat16, within about
10 minutes, and writes one JSON file: the device, the library versions and every number.

    python benchmarks/gpu_check.py                      # -> benchmarks/gpu_check.json
    python benchmarks/gpu_check.py --output /tmp/check.json --budget_minutes 10

Without CUDA it stops at once with a message (exit status 2). `--dry_run` runs the same plumbing on the CPU with
tiny settings (a few small JPEGs, one tiny trainer) to check the script itself; it is not a measurement. The JSON is
rewritten after each section, so an interrupted check keeps what finished; a section that would start after the
budget is recorded as skipped. Never part of CI.
"""

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path


BENCHMARK_DIR = Path(__file__).resolve().parent
SECTIONS = ("data", "real_configs")


def describe_device(device: str) -> dict:
    import torch

    info = {"device": device, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gb=round(properties.total_memory / 2**30, 1),
            capability=list(torch.cuda.get_device_capability(0)),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    return info


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in (
        "torch",
        "diffusers",
        "transformers",
        "accelerate",
        "datasets",
        "torchdata",
        "PIL",
        "numpy",
        "diffusers_spectrum",
    ):
        try:
            found[package] = importlib.import_module(package).__version__
        except (ImportError, AttributeError):
            found[package] = None
    import torch

    found["cuda"] = torch.version.cuda
    return found


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(BENCHMARK_DIR / "gpu_check.json"), help="the JSON file to write")
    parser.add_argument("--budget_minutes", type=float, default=10.0, help="skip sections that would start later")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--dry_run", action="store_true", help="check the script on CPU with tiny settings")
    args = parser.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}.")
    if args.budget_minutes <= 0:
        parser.error(f"--budget_minutes must be positive, got {args.budget_minutes}.")
    return args


def run_section(name: str, device: str, dry_run: bool) -> dict:
    sys.path.insert(0, str(BENCHMARK_DIR))
    if name == "data":
        import bench_data

        if dry_run:
            return bench_data.measure(device=device, workers=(0, 1), count=8, cache_stages=False)
        return bench_data.measure(device=device, workers=(0, 1, 2, 4, 8))
    import bench_real_configs

    if dry_run:
        return bench_real_configs.measure(quick=True, device=device, only=["dit-tiny-dry-run"], workers=1)
    return bench_real_configs.measure(quick=False, device=device)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA GPU here (torch {torch.__version__}, torch.cuda.is_available() is False). Run it on "
            "a machine with a CUDA GPU, or pass --dry_run to check the script on this CPU.",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    device = "cpu" if args.dry_run else "cuda"
    start = time.perf_counter()
    report = {
        "check": "diffusers-spectrum gpu_check",
        "dry_run": args.dry_run,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": describe_device(device),
        "versions": versions(),
        "budget_minutes": args.budget_minutes,
        "sections": {},
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    for name in args.sections:
        elapsed = (time.perf_counter() - start) / 60
        if elapsed >= args.budget_minutes:
            report["sections"][name] = {"skipped": f"budget of {args.budget_minutes} min spent ({elapsed:.1f} min)"}
        else:
            section_start = time.perf_counter()
            try:
                report["sections"][name] = run_section(name, device, args.dry_run)
            except Exception as error:  # one failing section must not lose the other's numbers
                report["sections"][name] = {"error": f"{type(error).__name__}: {error}"}
            report["sections"][name]["seconds"] = round(time.perf_counter() - section_start, 1)
        report["total_seconds"] = round(time.perf_counter() - start, 1)
        output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"gpu_check: wrote {output} in {report['total_seconds']:.0f} s")
    return 1 if any("error" in section for section in report["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
