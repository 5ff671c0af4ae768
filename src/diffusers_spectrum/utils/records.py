"""The package's one JSON writer and the records of resolved flags (secrets dropped) that runs write beside their
outputs."""

import argparse
import json
import os
import sys
from pathlib import Path


__all__ = ["SECRET_ARGS", "public_args", "save_args_json", "write_json"]

SECRET_ARGS = ("hub_token",)  # never written to JSON, model cards or logs


def write_json(path: str | Path, data, sort_keys: bool = True) -> Path:
    """Write `data` as indented JSON atomically (temporary file + rename), secrets filtered by the caller."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=sort_keys, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    return path


def _json_default(value):
    """Tuples and sets as lists, numpy scalars and one-element tensors as numbers, anything else (paths, dtypes,
    devices) as its string."""
    if isinstance(value, (tuple, set)):
        return list(value)
    numpy, torch = sys.modules.get("numpy"), sys.modules.get("torch")  # a value of theirs means they are loaded
    if numpy is not None and isinstance(value, numpy.generic):
        return value.item()
    if torch is not None and isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def public_args(args) -> dict:
    """The resolved flags (an `argparse.Namespace` or dict) without secrets such as the Hub token."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return {key: value for key, value in values.items() if key not in SECRET_ARGS}


def save_args_json(args, output_dir: str | Path, file_name: str = "training_args.json") -> Path:
    """Write the resolved flags (an `argparse.Namespace` or dict), secrets dropped, as JSON into `output_dir`."""
    values = public_args(args)
    values = {
        key: str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
        for key, value in values.items()
    }
    return write_json(Path(output_dir) / file_name, values)
