"""Where the data comes from: a Hub dataset id (streamed), a local folder (images, parquet / arrow files, audio
files) or the embedded photos and sounds, opened as a `datasets` dataset whose media columns stay undecoded (bytes +
path), so a corrupt file is skipped by the readers (`images.ImageReader`, `audio.AudioReader`) instead of crashing
the stream; and which column holds the class labels.

Non-regular files in a folder (FIFOs, sockets, devices, broken symlinks, symlink loops) are left out without being
opened, so a FIFO can never block the loader.
"""

import json
import logging
import stat
from pathlib import Path

import datasets

from ..utils.hub import check_hub_dataset_reachable, looks_local
from .stream import SkipCounter


__all__ = [
    "AUDIO_EXTENSIONS",
    "class_names_of",
    "detect_label_column",
    "embedded_audio_dir",
    "embedded_class_names",
    "embedded_dataset_dir",
    "list_audio_files",
    "load_audio_dataset",
    "load_image_dataset",
    "open_image_data",
    "scan_folder",
]

logger = logging.getLogger(__name__)

_PARQUET_SUFFIXES = (".parquet",)
_ARROW_SUFFIXES = (".arrow",)
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "class", "class_label")


# ----------------------------------------------------------------------------------------------------------------
# The embedded data


def embedded_dataset_dir() -> Path:
    """Folder of the embedded photo dataset (112 RGB 64 x 64 crops of scikit-image / scikit-learn photographs).

    A `datasets` imagefolder: PNGs plus `metadata.jsonl` with `label` (index of the source photo) and `source`.
    Built by `scripts/build_embedded_dataset.py`.
    """
    return Path(__file__).resolve().parents[1] / "assets" / "photos"


def embedded_class_names() -> list[str]:
    """Names of the embedded dataset's source photographs, indexed by `label`."""
    with open(embedded_dataset_dir() / "classes.json", encoding="utf-8") as f:
        return list(json.load(f))


def embedded_audio_dir() -> Path:
    """Folder of the embedded sounds: 16 kHz mono FLAC clips (speech synthesised with CMU Flite and desktop sounds
    of the freedesktop sound theme), with provenance and licence per file in `metadata.jsonl`. Built by
    `scripts/build_embedded_audio.py`."""
    return Path(__file__).resolve().parent.parent / "assets" / "audio"


# ----------------------------------------------------------------------------------------------------------------
# Images


def scan_folder(path: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Every regular file under `path` (symlinks to regular files included), and the entries that are skipped
    because they are not: FIFOs, sockets, devices, broken symlinks and symlink loops (`(path, reason)` pairs).
    Nothing is opened, so a FIFO can never block the loader."""
    files, skipped = [], []
    for entry in sorted(path.rglob("*")):
        try:
            mode = entry.stat().st_mode  # follows symlinks: ELOOP / ENOENT for loops and dangling links
        except OSError as error:
            skipped.append((str(entry), f"{type(error).__name__}: {error.strerror or error}"))
            continue
        if stat.S_ISREG(mode):
            files.append(entry)
        elif not stat.S_ISDIR(mode):
            kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device or special file"
            skipped.append((str(entry), f"not a regular file ({kind})"))
    return files, skipped


def _data_files(path: Path, files: list[Path]) -> tuple[str, list[str]] | None:
    """`(builder, files)` when `path` is, or directly holds, parquet / arrow files; `None` for an image folder."""
    files = [path] if path.is_file() else files
    for builder, suffixes in (("parquet", _PARQUET_SUFFIXES), ("arrow", _ARROW_SUFFIXES)):
        matches = [str(p) for p in files if p.suffix in suffixes]
        if matches:
            return builder, matches
    if path.is_file():
        raise ValueError(f"train_data_dir={str(path)!r} is a file but not .parquet or .arrow; pass a folder instead.")
    return None


def load_image_dataset(
    dataset_name: str | None = None,
    train_data_dir: str | Path | None = None,
    split: str = "train",
    image_column: str = "image",
    streaming: bool = True,
    label_column: str | None = None,
    skip_counter: "SkipCounter | None" = None,
) -> datasets.IterableDataset | datasets.Dataset:
    """Open an image dataset, checked to be non-empty and to hold the named columns.

    Args:
        dataset_name: a Hub dataset id (or anything `datasets.load_dataset` accepts); streamed when `streaming`.
        train_data_dir: a local image folder (optionally with `metadata.jsonl`), or parquet / arrow file(s).
        split: the split to read.
        image_column: the column holding the images.
        streaming: return a `datasets.IterableDataset` (no full download or conversion) instead of a `Dataset`.
        label_column: if given, must exist in the dataset.
        skip_counter: receives the entries of a local folder that are skipped because they are not regular files
            (FIFOs, sockets, broken symlinks, symlink loops); they are logged either way.

    With both `dataset_name` and `train_data_dir` unset, the embedded photos (`embedded_dataset_dir()`) are used.
    The image column is cast to `datasets.Image(decode=False)`: readers decode with `decode_image` and skip failures.
    """
    if dataset_name is not None and train_data_dir is not None:
        raise ValueError("Pass either dataset_name or train_data_dir, not both.")
    # 1. Open
    if dataset_name is not None:
        check_hub_dataset_reachable(dataset_name)
        dataset = datasets.load_dataset(dataset_name, split=split, streaming=streaming)
        source = f"dataset_name={dataset_name!r}"
    else:
        path = Path(train_data_dir) if train_data_dir is not None else embedded_dataset_dir()
        source = f"train_data_dir={str(path)!r}"
        if not path.exists():
            raise FileNotFoundError(f"{source}: no such file or folder; check the path.")
        regular, skipped = scan_folder(path) if path.is_dir() else ([path], [])
        for where, reason in skipped:
            (skip_counter or SkipCounter()).record(where, ValueError(reason))
        files = _data_files(path, regular)
        if files is None:
            if not any(p.name != "metadata.jsonl" for p in regular):
                raise ValueError(f"{source} is empty: it holds no image files.")
            data_files = {split: [str(p) for p in regular]}
            dataset = datasets.load_dataset("imagefolder", data_files=data_files, split=split, streaming=streaming)
        else:
            builder, data_files = files
            dataset = datasets.load_dataset(builder, data_files={split: data_files}, split=split, streaming=streaming)

    # 2. Check the columns and that there is data
    features = dataset.features
    if features is not None and image_column not in features:
        raise ValueError(
            f"image_column={image_column!r} is not a column of {source}; its columns are {list(features)}. "
            "Pass --image_column."
        )
    if features is not None and label_column is not None and label_column not in features:
        raise ValueError(
            f"label_column={label_column!r} is not a column of {source}; its columns are {list(features)}."
        )
    if features is not None and isinstance(features[image_column], datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    empty = len(dataset) == 0 if isinstance(dataset, datasets.Dataset) else next(iter(dataset.take(1)), None) is None
    if empty:
        raise ValueError(f"{source} (split {split!r}) is empty: it holds no examples.")
    return dataset


def open_image_data(data=None, image_column: str = "image", split: str = "train"):
    """A streamed image dataset from a local folder / files, a Hub id or (``None``) the embedded photos; a path that
    looks local and does not exist is a `FileNotFoundError` at once, anything else unreadable one `ValueError`
    naming `data`."""
    if data is not None and looks_local(data) and not Path(str(data)).exists():
        raise FileNotFoundError(f"no such folder or file: the dataset path {str(data)!r} does not exist.")
    if data is None or Path(str(data)).exists():
        kwargs = {"train_data_dir": data}
    else:
        kwargs = {"dataset_name": str(data)}
    try:
        return load_image_dataset(**kwargs, split=split, image_column=image_column, streaming=True)
    except Exception as error:  # datasets raises many kinds (missing repo, offline, bad files); one clear message
        raise ValueError(f"Could not read the dataset {data!r}: {type(error).__name__}: {error}") from error


# ----------------------------------------------------------------------------------------------------------------
# Labels


def detect_label_column(dataset, label_column: str | None = None, unconditional: bool = False) -> str | None:
    """The column of integer class labels to use: `label_column` when given (checked by `load_image_dataset`),
    `None` when `unconditional`, else the first of `label`, `labels`, `class`, `class_label` that the dataset has
    (a `datasets.ClassLabel` column first). Logs what it found, so an unconditional run is never an accident."""
    if unconditional:
        logger.info("labels: none (unconditional)")
        return None
    if label_column is not None:
        logger.info("labels: column %r (as requested)", label_column)
        return label_column
    features = dataset.features
    if features is None:  # a streamed dataset without declared features: look at its first example
        columns = list(next(iter(dataset.take(1)), {}))
        class_label_columns = []
    else:
        columns = list(features)
        class_label_columns = [name for name in columns if isinstance(features[name], datasets.ClassLabel)]
    for name in [*class_label_columns, *[c for c in LABEL_COLUMN_CANDIDATES if c in columns]]:
        logger.info("labels: found column %r; class-conditional (pass --unconditional to ignore it)", name)
        return name
    logger.info("labels: none found (columns %s); every label is 0 (unconditional)", columns)
    return None


def class_names_of(dataset, label_column: str | None) -> dict[int, str] | None:
    """`{id: name}` from a `datasets.ClassLabel` column, else `None`."""
    features = getattr(dataset, "features", None)
    feature = None if features is None or label_column is None else features.get(label_column)
    if isinstance(feature, datasets.ClassLabel):
        return dict(enumerate(feature.names))
    return None


# ----------------------------------------------------------------------------------------------------------------
# Audio


def list_audio_files(folder: str | Path) -> list[Path]:
    """Sorted regular files under `folder` (recursively) with an audio extension; FIFOs and other non-regular files
    are left out with a warning (they are never opened, so a FIFO cannot block)."""
    files, irregular = [], []
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix.lower() not in AUDIO_EXTENSIONS:
            continue
        (files if path.is_file() else irregular).append(path)  # is_file(): a regular file (after symlinks)
    for path in irregular:
        if not path.is_dir():
            logger.warning("skipped %s: not a regular file", path)
    return files


def load_audio_dataset(
    dataset_name: str | None = None,
    train_data_dir: str | Path | None = None,
    split: str = "train",
    audio_column: str = "audio",
    streaming: bool = True,
) -> datasets.IterableDataset | datasets.Dataset:
    """Open an audio dataset whose `audio_column` holds undecoded `{"bytes", "path"}` cells, checked to be non-empty.

    Args:
        dataset_name: a Hub dataset id (or anything `datasets.load_dataset` accepts); streamed when `streaming`.
        train_data_dir: a local folder of audio files (`AUDIO_EXTENSIONS`, searched recursively).
        split: the split to read from `dataset_name`.
        audio_column: the column holding the audio (`--audio_column`); a local folder gets this column name.
        streaming: for `dataset_name`, return a `datasets.IterableDataset` instead of downloading everything.

    With both unset, the embedded sounds (`embedded_audio_dir()`) are used. A local folder becomes an in-memory
    `datasets.Dataset` of file paths (cheap; shuffled by permutation).
    """
    if dataset_name is not None and train_data_dir is not None:
        raise ValueError("Pass either dataset_name or train_data_dir, not both.")
    if dataset_name is None:
        path = Path(train_data_dir) if train_data_dir is not None else embedded_audio_dir()
        source = f"train_data_dir={str(path)!r}"
        if not path.is_dir():
            raise ValueError(f"{source} is not a folder; pass a folder of {'/'.join(AUDIO_EXTENSIONS)} files.")
        files = list_audio_files(path)
        if not files:
            raise ValueError(f"{source} holds no audio files (looked for {', '.join(AUDIO_EXTENSIONS)}).")
        cells = [{"bytes": None, "path": str(file)} for file in files]
        return datasets.Dataset.from_dict({audio_column: cells}).cast_column(
            audio_column, datasets.Audio(decode=False)
        )

    check_hub_dataset_reachable(dataset_name)
    dataset = datasets.load_dataset(dataset_name, split=split, streaming=streaming)
    source = f"dataset_name={dataset_name!r}"
    features = dataset.features
    if features is not None and audio_column not in features:
        raise ValueError(
            f"audio_column={audio_column!r} is not a column of {source}; its columns are {list(features)}. "
            "Pass --audio_column."
        )
    if features is not None and isinstance(features[audio_column], datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))  # no torchcodec / ffmpeg needed
    empty = len(dataset) == 0 if isinstance(dataset, datasets.Dataset) else next(iter(dataset.take(1)), None) is None
    if empty:
        raise ValueError(f"{source} (split {split!r}) is empty: it holds no examples.")
    return dataset
