"""Output folders that never cost a user a file: every command writes only into a folder that is new, empty, or
its own earlier run, and deletes only files a run of ours recorded as its own.

A command claims its `--output_dir` with `claim_output_dir(path, command)` before writing anything:

- a missing or empty folder is created and marked with a small hidden file, `.diffusers-spectrum-run.json`
  (`{"command": ...}`; hidden files are left out of Hub uploads);
- a folder with that marker from the same command is the command's own earlier run: it is reused (resumed,
  overwritten file by file, as the command documents), and files it did not write are left alone;
- a folder written before markers existed is recognised by the file the command always writes (its `signature`,
  e.g. `cache_info.json`) and marked;
- anything else (a project folder, another command's run, `.`) is refused with one line naming the folder, what it
  holds and the fix. Nothing is written or deleted.

Runs that replace their earlier output (the demo) record the files they wrote (`record_run_files`) and remove
exactly those (`remove_recorded_files`), so a file the user put beside them survives. Standard library only: the
command line imports this before anything heavy.
"""

import json
import os
from pathlib import Path


__all__ = [
    "RUN_MARKER",
    "OutputFolderError",
    "check_output_file",
    "claim_output_dir",
    "list_files",
    "record_run_files",
    "remove_recorded_files",
    "restart_run_folder",
]

RUN_MARKER = ".diffusers-spectrum-run.json"


class OutputFolderError(ValueError):
    """An output folder (or file) a command refuses to write into, because a run of it did not create it."""


def _read_marker(folder: Path) -> dict | None:
    path = folder / RUN_MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) else None


def _write_marker(folder: Path, marker: dict) -> None:
    temporary = folder / f"{RUN_MARKER}.{os.getpid()}.tmp"  # one per process: several may claim at once
    temporary.write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, folder / RUN_MARKER)


def _describe(folder: Path, limit: int = 3) -> str:
    names = sorted(p.name for p in folder.iterdir() if p.name != RUN_MARKER)
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    return shown or "nothing"


def claim_output_dir(
    path: str | os.PathLike,
    command: str,
    signature: str | tuple[str, ...] | None = None,
    flag: str = "--output_dir",
    create: bool = True,
) -> Path:
    """Make `path` the output folder of `command` (e.g. `"train-vae"`), or raise `OutputFolderError` (one line)
    when it holds something a run of `command` did not write. Returns the folder, created and marked if needed
    (`create=False` only checks: call it again with `create=True` when the first file is about to be written).

    Args:
        path: the folder.
        command: the command's name, recorded in the marker; another command's run folder is refused.
        signature: file name(s) or glob patterns only this command writes (e.g. `"cache_info.json"`,
            `"checkpoint-*/extra_state.json"`): a folder holding one but no marker is this command's run from before
            markers existed (or a copy of its checkpoints), and is adopted.
        flag: the flag named in the message.
    """
    folder = Path(os.path.expanduser(str(path)))
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{flag} {str(path)!r} is a file, not a folder; pass a folder name.")
    if folder.is_dir():
        marker = _read_marker(folder)
        if marker is not None:
            if marker.get("command") == command:
                return folder
            raise OutputFolderError(
                f"{flag} {str(path)!r} holds a `{marker.get('command')}` run, not a `{command}` run; nothing was "
                "written or deleted. Pass a new or empty folder."
            )
        entries = [p for p in folder.iterdir() if not p.name.startswith(RUN_MARKER)]
        signatures = (signature,) if isinstance(signature, str) else tuple(signature or ())
        if entries and not any(next(folder.glob(pattern), None) is not None for pattern in signatures):
            raise OutputFolderError(
                f"{flag} {str(path)!r} is not empty and is not a `{command}` run (it holds {_describe(folder)}); "
                "nothing was written or deleted. Pass a new or empty folder."
            )
    if create:
        folder.mkdir(parents=True, exist_ok=True)
        _write_marker(folder, {"command": command})
    return folder


def check_output_file(path: str | os.PathLike, command: str, required_key: str, flag: str = "--output_file") -> Path:
    """A results file a command may (over)write: absent, or a JSON object holding `required_key` (what the command
    always writes); anything else is an `OutputFolderError` naming the file. Returns the path."""
    file = Path(os.path.expanduser(str(path)))
    if file.is_dir():
        raise OutputFolderError(f"{flag} {path} is a folder; name a .json file.")
    if file.exists():
        try:
            content = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            content = None
        if not isinstance(content, dict) or required_key not in content:
            raise OutputFolderError(
                f"{flag} {str(path)!r} exists and is not a `{command}` result; it was left as it is. Pass another "
                "file name (or --output_dir)."
            )
    return file


def list_files(folder: str | os.PathLike) -> set[str]:
    """Relative POSIX paths of every file under `folder`, run markers excluded (a marker goes with its folder: it
    is removed when nothing else is left there)."""
    folder = Path(folder)
    if not folder.is_dir():
        return set()
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and RUN_MARKER not in p.name}


def record_run_files(folder: str | os.PathLike, before: set[str]) -> list[str]:
    """Record in the folder's marker every file that appeared since `before` (`list_files` at the run's start) as
    written by this run, with its size and modification time; returns them."""
    folder = Path(folder)
    marker = _read_marker(folder) or {}
    recorded = dict(marker.get("files") or {})
    for name in sorted(list_files(folder) - set(before)):
        stat = (folder / name).stat()
        recorded[name] = [stat.st_size, stat.st_mtime_ns]
    marker["files"] = recorded
    _write_marker(folder, marker)
    return sorted(recorded)


def remove_recorded_files(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Delete the files an earlier run recorded (`record_run_files`) and still unchanged (same size and modification
    time), then the folders that leaves empty; every other file, and every file changed since, stays. Returns
    `(removed, kept)`: relative paths removed, and the files still in the folder."""
    folder = Path(folder)
    marker = _read_marker(folder) or {}
    root = folder.resolve()
    removed, emptied = [], set()
    for name, (size, mtime_ns) in sorted((marker.get("files") or {}).items()):
        path = folder / name
        if path.is_symlink() or not path.is_file() or not path.parent.resolve().is_relative_to(root):
            continue
        stat = path.stat()
        if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
            continue  # changed since the run wrote it: the user's now
        path.unlink()
        removed.append(name)
        emptied.update(parent for parent in path.parents if parent != folder and folder in parent.parents)
    for directory in sorted(emptied, key=lambda p: -len(p.parts)):
        if directory.is_dir() and {p.name for p in directory.iterdir()} <= {RUN_MARKER}:
            (directory / RUN_MARKER).unlink(missing_ok=True)  # the marker of a run folder left empty
            directory.rmdir()
    marker["files"] = {}
    _write_marker(folder, marker)
    return removed, sorted(list_files(folder))


def restart_run_folder(
    output_dir: str | os.PathLike, command: str, signature: str | None = None
) -> tuple[Path, set[str]]:
    """Claim `output_dir` for a run that replaces its earlier output (the demos): `claim_output_dir` (a new or empty
    folder, or an earlier run of the same command; anything else, a folder from before run records included, is
    refused), then remove the files the earlier run recorded as its own, so every stage starts fresh while a file the
    user put there stays (one line says which were kept). Returns the folder and the files present before this run
    (for `record_run_files`)."""
    folder = claim_output_dir(output_dir, command, signature)
    removed, kept = remove_recorded_files(folder)
    if kept:
        shown = ", ".join(kept[:3]) + (f" and {len(kept) - 3} more" if len(kept) > 3 else "")
        print(
            f"{folder}: replaced the previous run's {len(removed)} files; kept {len(kept)} it did not write ({shown})",
            flush=True,
        )
    return folder, list_files(folder)
