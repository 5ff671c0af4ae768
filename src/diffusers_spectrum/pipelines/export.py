"""Publish a Spectrum VAE + DiT pair as a plain diffusers `DiTPipeline` folder (schedulers: `schedulers.py`).

The folder names stock classes only (`DiTPipeline`, `AutoencoderKL`, `DiTTransformer2DModel`, a diffusers
scheduler), so `DiffusionPipeline.from_pretrained("<user>/<repo>")` loads it from the Hub with plain diffusers and no
remote code. The REPA projector and our config keys are dropped (our training checkpoints keep them); the spectral
settings and training facts go to `spectrum_info.json` and the model card.
"""

import inspect
import json
import os
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiTPipeline, DiTTransformer2DModel
from diffusers.schedulers import KarrasDiffusionSchedulers

from .._version import __version__
from ..models.latent_conventions import fold_latent_shift, latent_convention
from ..utils.records import write_json
from .model_cards import pipeline_model_card, vae_model_card


__all__ = [
    "SPECTRUM_INFO_NAME",
    "export_pipeline",
    "export_vae",
    "stock_transformer",
    "stock_vae",
]

SPECTRUM_INFO_NAME = "spectrum_info.json"
# DiTPipeline uses class 1000 as the null label, so the label table must have 1000 classes + null.
DIT_PIPELINE_NULL_CLASS = 1000


# ------------------------------------------------------------------------------------------------
# Stock copies of our models


def _stock_keys(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def stock_vae(vae: AutoencoderKL, fold_shift: bool = True) -> AutoencoderKL:
    """A stock `AutoencoderKL` copy of `vae` (a `SpectrumAutoencoderKL`'s extra config keys dropped).

    `fold_shift=True` (the DiT export: `DiTPipeline` decodes with `latents / scaling_factor` and no shift) moves a
    `shift_factor` into the 1x1 (post-)quant conv biases exactly (`models.fold_latent_shift`, identity convs added
    for 16-channel VAEs without quant convs). `fold_shift=False` (a VAE for its own family's pipelines, e.g. SD3 /
    FLUX, which decode with `latents / scaling_factor + shift_factor`) keeps the family's keys as they are. A
    per-channel (`latents_mean` / `latents_std`) VAE cannot be folded: DiTPipeline has no per-channel step.

    A `DCTTransform` (DCT-space diffusion) or a `PixelTransform` (pixel-space DiT) has no stock counterpart and is
    returned as is: such a pipeline folder names `diffusers_spectrum` for its `vae` and loads where the package is
    installed.
    """
    from ..models.dct_transform import DCTTransform
    from ..models.pixel_transform import PixelTransform

    if isinstance(vae, (DCTTransform, PixelTransform)):
        return vae
    if not isinstance(vae, AutoencoderKL):
        raise TypeError(f"vae must be an AutoencoderKL (or SpectrumAutoencoderKL), got {type(vae).__name__}.")
    stock = vae.to_autoencoder_kl() if hasattr(vae, "to_autoencoder_kl") else vae
    if fold_shift:
        if latent_convention(stock.config) == "per_channel":
            raise ValueError(
                "this VAE standardises latents per channel (latents_mean / latents_std in its config), which "
                "DiTPipeline cannot undo; export it for its own family's pipeline instead (export_vae)."
            )
        return fold_latent_shift(stock)
    if stock is vae:
        keys = _stock_keys(AutoencoderKL)
        stock = AutoencoderKL.from_config({k: v for k, v in vae.config.items() if k in keys})
        stock.load_state_dict(vae.state_dict())
    return stock


def stock_transformer(transformer: DiTTransformer2DModel) -> DiTTransformer2DModel:
    """A stock `DiTTransformer2DModel` with the same weights: REPA projector and extra config keys dropped,
    `out_channels` written explicitly (`DiTPipeline` reads it to detect learned sigma)."""
    if not isinstance(transformer, DiTTransformer2DModel):
        raise TypeError(f"transformer must be a DiTTransformer2DModel subclass, got {type(transformer).__name__}.")
    if transformer.config.num_embeds_ada_norm != DIT_PIPELINE_NULL_CLASS:
        raise ValueError(
            f"DiTPipeline uses {DIT_PIPELINE_NULL_CLASS} as the null class, so the transformer needs "
            f"num_embeds_ada_norm={DIT_PIPELINE_NULL_CLASS} (got {transformer.config.num_embeds_ada_norm}); "
            "train with labels 0..K-1 in the 1000-class table."
        )
    keys = _stock_keys(DiTTransformer2DModel)
    config = {k: v for k, v in transformer.config.items() if k in keys}
    if config.get("out_channels") is None:
        config["out_channels"] = config["in_channels"]
    stock = DiTTransformer2DModel.from_config(config)
    state = {k: v for k, v in transformer.state_dict().items() if not k.startswith("projector.")}
    stock.load_state_dict(state, strict=True)  # float32 CPU copy: users pick `torch_dtype` when loading
    return stock


def _stock_scheduler(scheduler):
    names = {member.name for member in KarrasDiffusionSchedulers}
    if type(scheduler).__name__ not in names or not type(scheduler).__module__.startswith("diffusers."):
        raise TypeError(
            f"scheduler must be a stock diffusers scheduler that DiTPipeline accepts ({sorted(names)}), "
            f"got {type(scheduler).__name__}; see flow_matching_scheduler() and default_scheduler()."
        )
    return type(scheduler).from_config(scheduler.config)


# ------------------------------------------------------------------------------------------------
# Sidecar and model card


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def _spectrum_info(vae=None, transformer=None, scheduler=None, training_info: dict | None = None) -> dict:
    info = {"diffusers_spectrum_version": __version__}
    if vae is not None:
        info["vae"] = {
            "class": type(vae).__name__,
            "spectral_config": {k: v for k, v in vae.config.items() if k not in _stock_keys(AutoencoderKL)},
            "scaling_factor": vae.config.scaling_factor,
            "shift_factor": getattr(vae.config, "shift_factor", None),
            "latent_convention": latent_convention(vae.config) if isinstance(vae, AutoencoderKL) else None,
        }
    if transformer is not None:
        extra = {k: v for k, v in transformer.config.items() if k not in _stock_keys(DiTTransformer2DModel)}
        info["transformer"] = {"class": type(transformer).__name__, "repa_config": extra}
    if scheduler is not None:
        info["scheduler"] = {"class": type(scheduler).__name__, "prediction_type": scheduler.config.prediction_type}
    info["training"] = training_info or {}
    return _jsonable({k: v for k, v in info.items() if not str(k).startswith("_")})


def _write_sidecars(output_dir: Path, info: dict, kind: str, model_card: str | None) -> None:
    """`spectrum_info.json` and the model card (`README.md`; the default card comes from `model_cards`)."""
    write_json(output_dir / SPECTRUM_INFO_NAME, info)
    if model_card is None:
        metrics = info.get("training", {}).get("metrics")
        if kind == "pipeline":
            card = pipeline_model_card("<this repo>", metrics=metrics, repa=bool(info.get("transformer")))
        else:
            card = vae_model_card("<this repo>", config=info.get("vae", {}).get("spectral_config"), metrics=metrics)
        model_card = str(card)
    (output_dir / "README.md").write_text(model_card, encoding="utf-8")


def _name_package_root(index_path: Path) -> None:
    """Name `diffusers_spectrum` itself, not the defining module, for our components in `model_index.json`.

    `save_pretrained` records a component from outside diffusers under its module path
    (`["diffusers_spectrum.pipelines.dct_transform", "DCTTransform"]`), and diffusers' loader only resolves a library
    that the calling process has already imported: that path would need an import of a private module first. The
    package root exports the same classes (and the base classes the loader looks up on it), so the folder loads after
    `import diffusers_spectrum`."""
    root = sys.modules[__name__.split(".")[0]]  # the package root, loaded before any of its modules

    index = json.loads(index_path.read_text(encoding="utf-8"))
    changed = False
    for name, entry in index.items():
        if isinstance(entry, list) and len(entry) == 2 and str(entry[0]).startswith("diffusers_spectrum."):
            if getattr(root, str(entry[1]), None) is not None:
                index[name] = ["diffusers_spectrum", entry[1]]
                changed = True
    if changed:
        write_json(index_path, index)


# ------------------------------------------------------------------------------------------------
# Export


def export_pipeline(
    output_dir: str | os.PathLike,
    *,
    vae: AutoencoderKL,
    transformer: DiTTransformer2DModel,
    scheduler,
    id2label: dict[int, str] | None = None,
    training_info: dict | None = None,
    model_card: str | None = None,
) -> Path:
    """Write a plain `DiTPipeline` folder (stock classes only) for a VAE + DiT pair.

    Args:
        output_dir: folder to write (created if needed).
        vae: `SpectrumAutoencoderKL` or `AutoencoderKL` (its shift is folded into the conv biases), or a
            `DCTTransform` for DCT-space diffusion, or a `PixelTransform` for a pixel-space DiT.
        transformer: `REPADiTTransformer2DModel` or `DiTTransformer2DModel` (1000-class table + null class).
        scheduler: a stock diffusers scheduler matching the training objective (`flow_matching_scheduler()` for
            flow matching, `default_scheduler("epsilon")` ...).
        id2label: `{class_id: "name[, synonym]"}` written into `model_index.json` so `pipe.labels` works.
        training_info: facts to keep in `spectrum_info.json` and the model card (dataset, steps, objective ...).
        model_card: README.md text; default: a generated card.

    Returns:
        The output folder as a `Path`.
    """
    stock_t = stock_transformer(transformer)
    stock_v = stock_vae(vae)
    if stock_t.config.in_channels != stock_v.config.latent_channels:
        raise ValueError(
            f"transformer in_channels={stock_t.config.in_channels} must equal the VAE's latent_channels="
            f"{stock_v.config.latent_channels}."
        )
    pipe = DiTPipeline(transformer=stock_t, vae=stock_v, scheduler=_stock_scheduler(scheduler))
    if id2label:
        labels = {str(int(k)): str(v) for k, v in id2label.items()}
        bad = [k for k in labels if not 0 <= int(k) < DIT_PIPELINE_NULL_CLASS]
        if bad:
            raise ValueError(f"id2label keys must be class ids in [0, {DIT_PIPELINE_NULL_CLASS}), got {bad[:5]}.")
        pipe.register_to_config(id2label=labels)
    output_dir = Path(output_dir)
    pipe.save_pretrained(output_dir, safe_serialization=True)
    _name_package_root(output_dir / "model_index.json")
    info = _spectrum_info(vae, transformer, scheduler, training_info)
    _write_sidecars(output_dir, info, "pipeline", model_card)
    return output_dir


def export_vae(
    output_dir: str | os.PathLike,
    vae: AutoencoderKL,
    training_info: dict | None = None,
    model_card: str | None = None,
) -> Path:
    """Write a stock `AutoencoderKL` folder that keeps the family's latent convention (`scaling_factor`,
    `shift_factor`, `latents_mean` / `latents_std`, `force_upcast`), so it drops back into its own pipeline (SD,
    SDXL, SD3, FLUX), plus `spectrum_info.json` and a model card."""
    output_dir = Path(output_dir)
    stock_vae(vae, fold_shift=False).save_pretrained(output_dir, safe_serialization=True)
    _write_sidecars(output_dir, _spectrum_info(vae=vae, training_info=training_info), "vae", model_card)
    return output_dir
