"""Names that may be a local path or a Hub id, and the Hub's reachability, decided at once: a mistyped folder fails
immediately and an unreachable Hub is never a minute of retries. Standard library at import (the command line
checks paths before anything heavy loads)."""

import logging
import os


__all__ = ["check_hub_dataset_reachable", "hub_offline_kwargs", "hub_reachable", "looks_local"]

logger = logging.getLogger(__name__)


def looks_local(text) -> bool:
    """A name that cannot be, or is not meant as, a Hub id: absolute, `.`/`~`-prefixed, a backslash, more than one
    `/` or characters a Hub id cannot hold, or a path whose first part exists here (`spectrum-demo/vea`)."""
    text = str(text)
    if os.path.isabs(text) or text.startswith((".", "~")) or "\\" in text or os.sep != "/" and os.sep in text:
        return True
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(text)
    except Exception:  # HFValidationError: not a Hub id, so a path
        return True
    return os.path.exists(text.split("/")[0]) if "/" in text else False


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint accepts a TCP connection within `timeout` seconds (False when offline mode is set)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_offline_kwargs(name: str) -> dict:
    """`{"local_files_only": True}` when the Hub cannot be reached (so a Hub id loads from the local cache at once
    instead of spending a minute on retries), else `{}`; logs which. Call only for names that are Hub ids."""
    if hub_reachable():
        return {}
    logger.warning(
        "the Hub cannot be reached from here: %r is read from the local cache only (pass a local folder, or set "
        "HF_HUB_OFFLINE=1 to say so and skip this check).",
        name,
    )
    return {"local_files_only": True}


def check_hub_dataset_reachable(dataset_name: str, flag: str = "--dataset_name") -> None:
    """Fail at once, naming the flag and the fix, when a Hub dataset id cannot be reached (instead of a minute of
    retries). With `HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE` set the check is skipped and `datasets` reads its cache."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes"):
        return
    if not hub_reachable():
        raise ValueError(
            f"{flag} {dataset_name!r}: the Hub cannot be reached from here. Pass local data with --train_data_dir "
            "(a folder or parquet / arrow files), or set HF_DATASETS_OFFLINE=1 to read a copy in the datasets cache."
        )
