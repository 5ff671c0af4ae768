"""Model and dataset cards for what the scripts publish, and a Hub upload helper with a dry-run mode.

The templates (`vae.md`, `pipeline.md`, `dataset.md`) ship as package data in `diffusers_spectrum/assets/model_cards`
and are filled through `huggingface_hub.ModelCard` / `DatasetCard` (Jinja2), with real metadata in the YAML header:
`library_name`, `tags`, `base_model`, `datasets`, `license`, and the measured numbers under `diffusers_spectrum`.
"""

import json
import logging
import math
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData
from huggingface_hub.utils import filter_repo_objects


__all__ = [
    "audio_pipeline_model_card",
    "DEFAULT_IGNORE_PATTERNS",
    "dataset_card",
    "latent_cache_card",
    "markdown_table",
    "model_card_template_path",
    "pipeline_model_card",
    "push_folder_to_hub",
    "regularizer_description",
    "unconditional_model_card",
    "vae_model_card",
]

logger = logging.getLogger(__name__)

TEMPLATE_KINDS = ("vae", "pipeline", "dataset")
BASE_TAGS = ("diffusers", "diffusers-spectrum", "spectrum-matching")
# Training-time files that never belong in a published repo.
DEFAULT_IGNORE_PATTERNS = ("checkpoint-*", ".*", "*/.*", "logs/*", "*.tmp", "**/__pycache__/*")


def model_card_template_path(kind: str) -> Path:
    """Path of the packaged card template `kind` (`"vae"`, `"pipeline"` or `"dataset"`)."""
    if kind not in TEMPLATE_KINDS:
        raise ValueError(f"kind must be one of {TEMPLATE_KINDS}, got {kind!r}.")
    return Path(__file__).resolve().parents[1] / "assets" / "model_cards" / f"{kind}.md"


def _format_value(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(values: dict | None, header: tuple[str, str] = ("name", "value")) -> str:
    """A two-column markdown table of `values` (or `_none_` when empty)."""
    if not values:
        return "_none_"
    rows = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    rows += [f"| `{key}` | {_format_value(value)} |" for key, value in values.items()]
    return "\n".join(rows)


def _json_safe(values: dict | None) -> dict:
    """Round-trip through JSON so the YAML header holds plain types (Paths, tuples, numpy scalars -> str/list)."""
    return json.loads(json.dumps(values or {}, default=str))


def _public(training_args) -> dict:
    """The flags for a card's table, secrets dropped by the package's one filter (`utils.records.public_args`), so a
    caller passing `vars(args)` cannot publish `--hub_token`."""
    from ..utils.records import public_args

    return _json_safe(public_args(training_args or {}))


def _as_list(value) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _describe_dataset(datasets: list[str] | None, dataset_description: str | None) -> str:
    if dataset_description:
        return dataset_description
    return ", ".join(f"`{d}`" for d in datasets) if datasets else "a local dataset"


# ----------------------------------------------------------------------------------------------------------------


def vae_model_card(
    repo_id: str,
    *,
    config: dict | None = None,
    training_args: dict | None = None,
    metrics: dict | None = None,
    base_model: str | None = None,
    datasets: list[str] | str | None = None,
    dataset_description: str | None = None,
    recipe: str | None = None,
    stock_subfolder: str = "stock",
    eval_description: str = "images of the training data",
    license: str = "apache-2.0",
    tags: list[str] | None = None,
    description: str = "",
) -> ModelCard:
    """Card of a trained Spectrum VAE.

    Args:
        repo_id: Hub id (or the local folder name) used in the loading snippet.
        config: the model config (`vae.config`): architecture and spectral settings.
        training_args: the resolved training flags.
        metrics: measured numbers (spectral KL, slopes, PSNR, latent statistics, ...); also stored in the YAML
            header under `diffusers_spectrum.metrics` (the card metadata key).
        base_model: the VAE this one was fine-tuned from (Hub id), if any.
        datasets: Hub dataset ids trained on (for the `datasets` metadata).
        recipe: recipe name (`sd-vae`, `esm-ae`, `dsm-ae`, or a free description).
        eval_description: what the metrics were measured on.
    """
    config, training_args, metrics = _json_safe(config), _public(training_args), _json_safe(metrics)
    datasets = _as_list(datasets)
    card_data = ModelCardData(
        library_name="diffusers",
        license=license,
        base_model=base_model,
        datasets=datasets,
        tags=list(BASE_TAGS) + ["autoencoder", "vae", "AutoencoderKL"] + list(tags or []),
        diffusers_spectrum={"kind": "vae", "recipe": recipe, "metrics": metrics},
    )
    recipe_parts = []
    if training_args.get("esm_weight"):
        recipe_parts.append(
            f"Encoding Spectrum Matching (ESM, weight {training_args['esm_weight']}, delta "
            f"{training_args.get('esm_delta', config.get('esm_delta'))})"
        )
    levels = training_args.get("dsm_levels", config.get("dsm_levels"))
    if levels and any(levels):
        recipe_parts.append(f"Decoding Spectrum Matching (DSM, levels {_format_value(levels)})")
    architecture = {
        key: config[key]
        for key in (
            "block_out_channels",
            "latent_channels",
            "layers_per_block",
            "sample_size",
            "scaling_factor",
            "shift_factor",
            "esm_delta",
            "dsm_block_size",
            "dsm_levels",
        )
        if key in config
    }
    return ModelCard.from_template(
        card_data,
        template_path=str(model_card_template_path("vae")),
        title=f"Spectrum VAE: {repo_id}",
        description=description,
        repo_id=repo_id,
        stock_subfolder=stock_subfolder,
        recipe_description=" and ".join(recipe_parts) if recipe_parts else "reconstruction losses only",
        recipe=recipe or "custom",
        architecture_table=markdown_table(architecture, ("setting", "value")),
        metrics_table=markdown_table(metrics, ("metric", "value")),
        eval_description=eval_description,
        dataset_description=_describe_dataset(datasets, dataset_description),
        max_train_steps=training_args.get("max_train_steps", "unknown"),
        training_args_table=markdown_table(training_args, ("flag", "value")),
    )


def pipeline_model_card(
    repo_id: str,
    *,
    training_args: dict | None = None,
    metrics: dict | None = None,
    components: dict | None = None,
    base_model: str | list[str] | None = None,
    datasets: list[str] | str | None = None,
    dataset_description: str | None = None,
    id2label: dict | None = None,
    repa: bool = False,
    license: str = "apache-2.0",
    tags: list[str] | None = None,
    description: str = "",
) -> ModelCard:
    """Card of a published `DiTPipeline` folder (spectrum VAE + DiT, optionally REPA-trained).

    Args:
        components: name -> short description (class, size) of each pipeline component.
        id2label: class names; the sampling snippet uses the first one.
        repa: whether the transformer was trained with REPA / DoG-REPA.
    """
    training_args, metrics = _public(training_args), _json_safe(metrics)
    datasets = _as_list(datasets)
    card_data = ModelCardData(
        library_name="diffusers",
        license=license,
        base_model=base_model,
        datasets=datasets,
        pipeline_tag="unconditional-image-generation" if not id2label else None,
        tags=list(BASE_TAGS) + ["DiTPipeline", "image-generation"] + (["repa"] if repa else []) + list(tags or []),
        diffusers_spectrum={"kind": "pipeline", "num_classes": len(id2label or {}), "metrics": metrics},
    )
    if id2label:
        first = next(iter(id2label.values()))
        sample_code = (
            f'class_ids = pipe.get_label_ids(["{first}"])\n'
            "images = pipe(class_labels=class_ids, num_inference_steps=50, guidance_scale=1.8,\n"
            "              generator=torch.manual_seed(0)).images\n"
            'images[0].save("sample.png")'
        )
    else:
        sample_code = (
            "images = pipe(class_labels=[0], num_inference_steps=50, guidance_scale=1.0,\n"
            "              generator=torch.manual_seed(0)).images\n"
            'images[0].save("sample.png")'
        )
    return ModelCard.from_template(
        card_data,
        template_path=str(model_card_template_path("pipeline")),
        title=f"Spectrum latent diffusion: {repo_id}",
        description=description,
        repo_id=repo_id,
        repa_description=" aligned with a frozen vision encoder (REPA)" if repa else "",
        sample_code=sample_code,
        components_table=markdown_table(components, ("component", "what")),
        metrics_table=markdown_table(metrics, ("metric", "value")),
        dataset_description=_describe_dataset(datasets, dataset_description),
        max_train_steps=training_args.get("max_train_steps", "unknown"),
        training_args_table=markdown_table(training_args, ("flag", "value")),
    )


def latent_cache_card(
    repo_id: str, info: dict, *, training_args: dict | None = None, source_datasets=None, vae: str | None = None
) -> DatasetCard:
    """Card of a latent cache folder from its `cache_info.json` (`info`): counts, shapes, columns, scaling, REPA
    targets and the resolved flags."""
    settings, repa_shape = info["settings"], info["repa_feature_shape"]
    columns = ["latents"] + (["latents_std"] if settings["mode"] == "mean_std" else [])
    columns += ["label", "source_index"] + (["repa_features"] if repa_shape else [])
    contents = {
        "num_examples": info["num_examples"],
        "shards": len(info["shards"]),
        "latents": f"{settings['dtype']} {tuple(info['latent_shape'])} ({settings['mode']})",
        "columns": ", ".join(columns),
        "scaling_factor": settings["scaling_factor"],
        "repa_features": f"{tuple(repa_shape)} from {settings.get('repa_encoder')}" if repa_shape else "none",
        "resolution": settings["resolution"],
        "skipped_images": info["skipped_images"],
    }
    return dataset_card(
        repo_id,
        contents=contents,
        training_args=training_args,
        source_datasets=source_datasets,
        dataset_description=settings["source"],
        vae=vae,
        tags=["repa"] if repa_shape else None,
    )


def dataset_card(
    repo_id: str,
    *,
    contents: dict | None = None,
    training_args: dict | None = None,
    source_datasets: list[str] | str | None = None,
    dataset_description: str | None = None,
    vae: str | None = None,
    license: str = "apache-2.0",
    tags: list[str] | None = None,
    description: str = "",
) -> DatasetCard:
    """Card of a cached-latent dataset.

    Args:
        contents: column / shape / dtype / count facts, e.g.
            `{"num_examples": 1000, "latents": "float16 (4, 32, 32)"}`.
        source_datasets: Hub ids of the images the latents were computed from.
        vae: path or Hub id of the encoder.
    """
    contents, training_args = _json_safe(contents), _public(training_args)
    source_datasets = _as_list(source_datasets)
    card_data = DatasetCardData(
        license=license,
        source_datasets=source_datasets,
        tags=list(BASE_TAGS) + ["latents"] + list(tags or []),
        diffusers_spectrum={"kind": "latents", "vae": vae, "contents": contents},
    )
    return DatasetCard.from_template(
        card_data,
        template_path=str(model_card_template_path("dataset")),
        title=f"Cached latents: {repo_id}",
        description=description,
        repo_id=repo_id,
        contents_table=markdown_table(contents, ("field", "value")),
        dataset_description=_describe_dataset(source_datasets, dataset_description),
        vae_description=f"`{vae}`" if vae else "unknown",
        training_args_table=markdown_table(training_args, ("flag", "value")),
    )


# ----------------------------------------------------------------------------------------------------------------


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    repo_type: str = "model",
    dry_run: bool = False,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload with diffusers-spectrum",
    ignore_patterns: tuple[str, ...] | list[str] | None = DEFAULT_IGNORE_PATTERNS,
) -> list[str]:
    """Upload `folder` to the Hub repo `repo_id` (created if missing); returns the relative paths of the files
    uploaded, or with `dry_run` the files that *would* be uploaded, without touching the network. Checkpoints,
    hidden files and logs are left out (`ignore_patterns`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"push_folder_to_hub: folder {str(folder)!r} does not exist.")
    if repo_type not in ("model", "dataset", "space"):
        raise ValueError(f"repo_type must be 'model', 'dataset' or 'space', got {repo_type!r}.")
    if not repo_id or repo_id.count("/") > 1:
        raise ValueError(f"repo_id must be 'name' or 'user/name', got {repo_id!r}.")
    ignore = list(ignore_patterns or [])
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    files = list(filter_repo_objects(paths, ignore_patterns=ignore))
    if dry_run:
        logger.info("dry run: would upload %d files to %s (%s)", len(files), repo_id, repo_type)
        return files
    from huggingface_hub import create_repo, upload_folder

    create_repo(repo_id, repo_type=repo_type, private=private, token=token, exist_ok=True)
    upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type=repo_type,
        token=token,
        commit_message=commit_message,
        ignore_patterns=ignore,
    )
    return files


def audio_pipeline_model_card(
    repo_id: str,
    *,
    training_args: dict | None = None,
    metrics: dict | None = None,
    components: dict | None = None,
    datasets: list[str] | None = None,
    dataset_description: str = "a local dataset",
    sample_rate: int = 16000,
    license: str = "apache-2.0",
) -> ModelCard:
    """Card of a published `DanceDiffusionPipeline` folder: YAML metadata (library, tags, metrics under
    `diffusers_spectrum`), a loading snippet, components, metrics and all training flags ."""
    import json

    training_args = json.loads(json.dumps(training_args or {}, default=str))
    metrics = json.loads(json.dumps(metrics or {}, default=str))
    card_data = ModelCardData(
        library_name="diffusers",
        license=license,
        datasets=datasets,
        tags=list(BASE_TAGS) + ["DanceDiffusionPipeline", "audio-generation", "unconditional-audio-generation"],
        diffusers_spectrum={"kind": "audio_pipeline", "metrics": metrics},
    )
    text = f"""---
{card_data.to_yaml()}
---

# Waveform diffusion: {repo_id}

An unconditional waveform diffusion pipeline trained with `diffusers-spectrum` (`train-audio`): diffusers'
`UNet1DModel` in the Dance Diffusion layout, trained on the v-objective that `IPNDMScheduler` samples with, optionally
with spectral regularisers (Fourier, wavelet, multi-resolution STFT) on the predicted clean waveform. It is saved in
diffusers' stock format (`DanceDiffusionPipeline`), so plain diffusers loads it.

## How to load and sample

```python
import soundfile
import torch
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{repo_id}")
audio = pipe(batch_size=1, num_inference_steps=100, generator=torch.manual_seed(0)).audios  # (1, C, T) in [-1, 1]
soundfile.write("sample.wav", audio[0].T, {sample_rate})
```

## Components

{markdown_table(components, ("component", "what"))}

## Metrics

{markdown_table(metrics, ("metric", "value"))}

## Training

- Data: {dataset_description}
- Steps: {training_args.get("max_train_steps", "unknown")}

All resolved training flags:

{markdown_table(training_args, ("flag", "value"))}
"""
    return ModelCard(text)


def regularizer_description(regularizers, what: str = "the predicted clean image") -> str:
    """One phrase for the spectral regularisers a run trained with (a `diffusion.loss.SpectralRegularizers`)."""
    weights, parts = regularizers.weights, []
    if regularizers.fourier is not None:
        parts.append(f"Fourier amplitude/phase loss (weight {weights['fourier']:g})")
    if regularizers.wavelet is not None:
        wavelet = regularizers.wavelet
        parts.append(f"{wavelet['levels']}-level {wavelet['wavelet']} wavelet loss (weight {weights['wavelet']:g})")
    if regularizers.stft is not None:
        parts.append(f"multi-resolution STFT loss (weight {weights['stft']:g})")
    if not parts:
        return "no spectral regulariser"
    return " and ".join(parts) + f" on {what} ({regularizers.weighting} weighting)"


DDPM_SAMPLE_CODE = """import torch
from diffusers import DDIMPipeline, DDIMScheduler, DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{repo_id}")  # a stock DDPMPipeline
images = pipe(batch_size=4, num_inference_steps={steps}, generator=torch.manual_seed(0)).images

# DDIM, 50 steps, with the same training schedule. eta=1.0 keeps DDPM's fresh noise per step; the deterministic
# eta=0.0 suits a well-trained model only (early in training it turns samples into grey noise)
ddim = DDIMPipeline(unet=pipe.unet, scheduler=DDIMScheduler.from_config(pipe.scheduler.config))
images = ddim(batch_size=4, num_inference_steps=50, eta=1.0, generator=torch.manual_seed(0)).images"""

EDM_SAMPLE_CODE = """import torch
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{repo_id}")  # a stock ConsistencyModelPipeline
images = pipe(batch_size=4, num_inference_steps={steps}, generator=torch.manual_seed(0)).images

# the same images with diffusers-spectrum's EDMPipeline (pip install diffusers-spectrum)
from diffusers_spectrum.pipelines.edm_pipeline import EDMPipeline

pipe = EDMPipeline.from_pretrained("{repo_id}")"""

EDM_LOADING = (
    "`unet/` is a stock `UNet2DModel` and `scheduler/` a stock diffusers EDM scheduler; `model_index.json` names the "
    "stock `ConsistencyModelPipeline`, whose loop feeds the network EDM's scaled inputs (`DDPMPipeline` / "
    "`DDIMPipeline` do not call `scale_model_input`), so plain diffusers loads and samples it. diffusers-spectrum's "
    "`EDMPipeline.from_pretrained` loads the same folder and gives the same images."
)


def unconditional_model_card(
    repo_id: str,
    *,
    unet: str,
    formulation: str,
    formulation_description: str,
    regularizers,
    sample_steps: int,
    config: dict | None = None,
    metrics: dict | None = None,
    training_args: dict | None = None,
    datasets: list[str] | None = None,
    dataset_description: str = "a local dataset",
    license: str = "apache-2.0",
) -> ModelCard:
    """Card of an unconditional pixel-space pipeline folder (a stock `DDPMPipeline`, or an EDM folder that
    `ConsistencyModelPipeline` and `EDMPipeline` load): YAML metadata (library, tags, metrics under
    `diffusers_spectrum`), what was trained, how to load and sample it, the model settings, metrics and all training
    flags (secrets dropped).

    Args:
        unet: the UNet's preset name and resolution, e.g. `"ddpm-32, 32 px"`.
        formulation: `"ddpm"` or `"edm"`; `formulation_description` says its settings in words.
        regularizers: the `diffusion.loss.SpectralRegularizers` of the run.
        sample_steps: the sampler steps of the loading snippet.
    """
    training_args = _json_safe(_public(training_args))
    metrics = _json_safe(metrics)
    stock = formulation == "ddpm"
    pipeline_class = "DDPMPipeline" if stock else "EDMPipeline"
    card_data = ModelCardData(
        library_name="diffusers",
        license=license,
        datasets=datasets,
        pipeline_tag="unconditional-image-generation",
        tags=list(BASE_TAGS) + [pipeline_class, "unconditional-image-generation", "spectral-regularization"],
        diffusers_spectrum={"kind": "unconditional", "formulation": formulation, "metrics": metrics},
    )
    loading = "It is a stock `DDPMPipeline` folder: plain diffusers loads it." if stock else EDM_LOADING
    description = (
        f"A `UNet2DModel` ({unet}) trained with `diffusers-spectrum` in pixel space: {formulation_description}; "
        f"{regularizer_description(regularizers)}. {loading}"
    )
    sample_code = (DDPM_SAMPLE_CODE if stock else EDM_SAMPLE_CODE).format(repo_id=repo_id, steps=sample_steps)
    steps = training_args.get("max_train_steps", "?")
    lines = [
        *("---", card_data.to_yaml(), "---", ""),
        *(f"# Unconditional pixel-space diffusion: {repo_id}", "", description, ""),
        *("## How to load and sample", "", "```python", sample_code, "```", ""),
        *("## Model", "", markdown_table(config, ("setting", "value")), ""),
        *("## Metrics (last training step)", "", markdown_table(metrics, ("metric", "value")), ""),
        *("## Training", "", f"- Data: {dataset_description}", f"- Steps: {steps}", ""),
        *("All resolved training flags:", "", markdown_table(training_args, ("flag", "value")), ""),
    ]
    return ModelCard("\n".join(lines))
