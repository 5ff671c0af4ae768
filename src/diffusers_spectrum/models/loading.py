"""`load_autoencoder`, the package's one VAE loader: a folder or Hub id loaded as the class it was saved as,
strictly, with errors that name the culprit at once."""

import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from ..utils.hub import hub_offline_kwargs, looks_local
from .autoencoder_kl_spectral import SpectrumAutoencoderKL
from .latent_conventions import check_vae_config


__all__ = ["load_autoencoder"]


# ----------------------------------------------------------------------------------------------------------------
# Loading

_WEIGHTS_NAME = "diffusion_pytorch_model"
_LOADABLE_CLASSES = {"AutoencoderKL": AutoencoderKL, "SpectrumAutoencoderKL": SpectrumAutoencoderKL}


def _closest_existing(path: Path) -> Path | None:
    for parent in path.parents:
        if str(parent) not in ("", ".") and parent.exists():
            return parent
    return None


def _weights_files(variant: str | None) -> list[str]:
    stem = f"{_WEIGHTS_NAME}.{variant}" if variant else _WEIGHTS_NAME
    return [f"{stem}.safetensors", f"{stem}.bin", f"{stem}.safetensors.index.json", f"{stem}.bin.index.json"]


def _read_local_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    if not config_path.is_file():
        hint = (
            " It is a pipeline folder: pass subfolder='vae'."
            if (folder / "model_index.json").is_file()
            else " A diffusers VAE folder holds config.json and diffusion_pytorch_model.safetensors (written by "
            "save_pretrained)."
        )
        raise FileNotFoundError(f"load_autoencoder: no config.json in the folder {str(folder)!r}.{hint}")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"load_autoencoder: {str(config_path)!r} is not valid JSON ({error}); restore the file."
        ) from None
    if not isinstance(config, dict):
        raise ValueError(
            f"load_autoencoder: {str(config_path)!r} must hold a JSON object, got {type(config).__name__}."
        )
    return config


def _check_local_folder(path: Path, subfolder: str | None, variant: str | None) -> dict:
    """Existence, config and weights file of a local VAE folder; returns the parsed config."""
    if not path.exists():
        near = _closest_existing(path.absolute())
        where = f" (the closest existing folder is {str(near)!r})" if near is not None else ""
        raise FileNotFoundError(
            f"load_autoencoder: no such folder {str(path)!r}{where}; check the path (a Hub id has the form "
            "'owner/name')."
        )
    if not path.is_dir():
        raise FileNotFoundError(
            f"load_autoencoder: {str(path)!r} is a file; pass the folder that holds config.json and the weights."
        )
    folder = path / subfolder if subfolder else path
    if not folder.is_dir():
        raise FileNotFoundError(f"load_autoencoder: no such folder {str(folder)!r} (subfolder {subfolder!r}).")
    config = _read_local_config(folder)
    names = _weights_files(variant)
    if not any((folder / name).is_file() for name in names):
        present = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(
            f"load_autoencoder: the weights file {names[0]!r} is missing from {str(folder)!r} (found {present}); copy "
            f"the weights next to config.json, or load the model and save it again with save_pretrained."
        )
    return config


def _resolve_class(config: dict, source: str):
    name = config.get("_class_name", "AutoencoderKL")
    if name not in _LOADABLE_CLASSES:
        raise ValueError(
            f"load_autoencoder: {source} is a {name!r}, not an AutoencoderKL; pass a VAE folder (for a pipeline "
            "folder, its 'vae' subfolder)."
        )
    return _LOADABLE_CLASSES[name]


def _from_pretrained_strict(cls, name_or_path: str, source: str, **kwargs) -> AutoencoderKL:
    try:
        model, info = cls.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    except ValueError as error:
        if "expected shape" not in str(error):
            raise
        raise ValueError(
            f"load_autoencoder: the config of {source} does not match its weights ({error}); fix config.json or "
            "save the model again."
        ) from None
    problems = {k: info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        listed = "; ".join(f"{k}: {list(v)[:4]}{' ...' if len(v) > 4 else ''}" for k, v in problems.items())
        raise ValueError(
            f"load_autoencoder: the config of {source} does not match its weights ({listed}); a layer would be left "
            "randomly initialised. Fix config.json (e.g. layers_per_block, block_out_channels) or save the model "
            "again."
        )
    return model


def load_autoencoder(
    pretrained_model_name_or_path,
    subfolder: str | None = None,
    revision: str | None = None,
    torch_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    **kwargs,
) -> AutoencoderKL:
    """The package's one VAE loader: a folder or Hub id loaded as the class it was saved as, strictly, in eval mode.

    A `SpectrumAutoencoderKL` folder loads as one (no warnings about its extra keys), any other `AutoencoderKL`
    folder (SD, SDXL, SD3, FLUX VAEs) as a stock `AutoencoderKL`. A local pipeline folder (`model_index.json`
    beside a `vae/` folder) is read from `vae/`; a Hub id without a root `config.json` is tried once more in its
    `vae` subfolder. A model instance is returned as is (moved to `device` / `torch_dtype` when given).

    Errors come at once and name the culprit: a path that looks local and does not exist (`FileNotFoundError`,
    "no such folder", no Hub retries), a missing config.json or weights file, a config that cannot describe the
    weights (missing `block_out_channels`, `scaling_factor="abc"`, other layer counts: `ValueError`).

    Args:
        pretrained_model_name_or_path: folder, Hub id (`owner/name`) or model instance.
        subfolder: folder inside it (`"vae"` for pipeline repositories).
        revision: Hub revision.
        torch_dtype: dtype of the loaded weights (e.g. `torch.float16`).
        device: where to put the model.
        **kwargs: passed to `from_pretrained` (`variant`, `cache_dir`, `token`, `local_files_only`, ...).
    """
    if torch_dtype is not None and not isinstance(torch_dtype, torch.dtype):
        raise TypeError(f"load_autoencoder: `torch_dtype` must be a torch.dtype, got {torch_dtype!r}.")
    if isinstance(pretrained_model_name_or_path, torch.nn.Module):
        model = pretrained_model_name_or_path
        return model.to(device=device, dtype=torch_dtype).eval() if (device or torch_dtype) else model.eval()
    if not isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
        raise TypeError(
            "load_autoencoder: pass a folder, a Hub id or a model, got "
            f"{type(pretrained_model_name_or_path).__name__}."
        )
    text = os.fspath(pretrained_model_name_or_path)
    load_kwargs = dict(kwargs, revision=revision)
    if torch_dtype is not None:
        load_kwargs["torch_dtype"] = torch_dtype
    if looks_local(text) or os.path.exists(text):
        path = Path(os.path.expanduser(text))
        if subfolder is None and (path / "model_index.json").is_file() and (path / "vae").is_dir():
            subfolder = "vae"
        config = _check_local_folder(path, subfolder, kwargs.get("variant"))
        folder = path / subfolder if subfolder else path
        source = repr(str(folder / "config.json"))
        name = str(path)
    else:
        name = text
        offline = hub_offline_kwargs(text)  # no network: the local cache at once, not a minute of retries
        kwargs, load_kwargs = {**kwargs, **offline}, {**load_kwargs, **offline}
        config, subfolder = _load_hub_config(text, subfolder, revision, kwargs)
        source = f"{text!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
    check_vae_config(config, source=source)
    cls = _resolve_class(config, source)
    model = _from_pretrained_strict(cls, name, source, subfolder=subfolder, **load_kwargs)
    return model.to(device).eval() if device is not None else model.eval()


def _load_hub_config(name: str, subfolder: str | None, revision: str | None, kwargs: dict) -> tuple[dict, str | None]:
    """The config of a Hub id: its root (or `subfolder`), else its `vae` subfolder."""
    extra = {k: kwargs[k] for k in ("cache_dir", "token", "local_files_only") if k in kwargs}
    tries = [subfolder] if subfolder is not None else [None, "vae"]
    errors = []
    for folder in tries:
        try:
            return dict(AutoencoderKL.load_config(name, subfolder=folder, revision=revision, **extra)), folder
        except OSError as error:
            errors.append(f"{'subfolder ' + repr(folder) if folder else 'root'}: {error}")
    hint = (
        " The Hub cannot be reached and it is not in the local cache: pass a local folder."
        if kwargs.get("local_files_only")
        else ""
    )
    raise OSError(
        f"load_autoencoder: could not read a VAE config from the Hub id {name!r}: " + " | ".join(errors) + hint
    )
