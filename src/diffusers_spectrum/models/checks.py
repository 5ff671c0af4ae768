"""Checks shared across the package, one message each: whether images of a resolution fit an autoencoder (and its
DSM blocks), used by the VAE trainer, the latent cache, analyze and the evaluation scripts alike; and whether a
name is a local path rather than a Hub id (so a mistyped folder fails at once instead of after Hub retries)."""

import os


__all__ = ["check_hub_dataset_reachable", "check_resolution", "downsample_factor", "hub_offline_kwargs", "looks_local"]


def downsample_factor(vae) -> int:
    """Spatial downsampling of an `AutoencoderKL`-like model: 2^(number of encoder blocks - 1); a `DCTTransform`
    (or anything with a `downsample_factor` attribute) reports its own."""
    factor = getattr(vae, "downsample_factor", None)
    if isinstance(factor, int):
        return factor
    channels = getattr(vae.config, "block_out_channels", None)
    if not channels:
        raise ValueError(
            f"{type(vae).__name__}'s config has no block_out_channels, so its downsampling factor is unknown; is "
            "this an AutoencoderKL folder?"
        )
    return 2 ** (len(channels) - 1)


def check_resolution(vae, resolution: int, dsm_levels=(0,), block_size: int = 8, flag: str = "--resolution") -> int:
    """Raise a `ValueError` naming `flag` unless `resolution` is a positive multiple of the VAE's downsampling factor
    (and, when any DSM level > 0, of factor x `block_size`, so latents split into whole DCT blocks). Returns the
    latent side."""
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        raise ValueError(f"{flag} must be a positive integer, got {resolution!r}.")
    factor = downsample_factor(vae)
    if resolution % factor:
        lower, upper = resolution // factor * factor, (resolution // factor + 1) * factor
        raise ValueError(
            f"{flag} {resolution} is not divisible by the VAE's downsampling factor {factor} (latents would be "
            f"{resolution / factor:g} px wide); pass a multiple of {factor}, e.g. {lower or upper} or {upper}."
        )
    if any(int(level) > 0 for level in dsm_levels) and resolution % (factor * block_size):
        raise ValueError(
            f"DSM splits latents ({resolution // factor} px) into {block_size} x {block_size} blocks; pass {flag} as "
            f"a multiple of {factor * block_size}, or DSM levels 0."
        )
    return resolution // factor


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


def _hub_reachable(timeout: float = 3.0) -> bool:
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
    if _hub_reachable():
        return {}
    import logging

    logging.getLogger(__name__).warning(
        "the Hub cannot be reached from here: %r is read from the local cache only (pass a local folder, or set "
        "HF_HUB_OFFLINE=1 to say so and skip this check).",
        name,
    )
    return {"local_files_only": True}


def check_hub_dataset_reachable(dataset_name: str, flag: str = "--dataset_name") -> None:
    """Fail at once, naming the flag and the fix, when a Hub dataset id cannot be reached (instead of a minute of
    retries). With `HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE` set the check is skipped and `datasets` reads its cache."""
    import os

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes"):
        return
    if not _hub_reachable():
        raise ValueError(
            f"{flag} {dataset_name!r}: the Hub cannot be reached from here. Pass local data with --train_data_dir "
            "(a folder or parquet / arrow files), or set HF_DATASETS_OFFLINE=1 to read a copy in the datasets cache."
        )
