"""What a DiT run shows and writes: validation grids sampled with the exported pipeline's scheduler, and the
stock pipeline folder (the transformer, the VAE or `DCTTransform`, the scheduler), metrics.json, card and push."""

from __future__ import annotations

from pathlib import Path

import torch

from ..utils.records import write_json
from .args import Outputs


__all__ = ["validate", "write_outputs"]


@torch.no_grad()
def validate(
    accelerator,
    raw_model,
    ema,
    decoder,
    scheduler,
    labels: torch.Tensor,
    inference_steps: int,
    guidance_scale: float,
    step: int,
    output_dir: Path,
) -> Path:
    """Sample a grid for `labels` `(N,)` with the (EMA) weights, decoded by `decoder` (a VAE or `DCTTransform`);
    saved as `validation/step-<step>.png` and logged. `scheduler` is copied from its config (a fresh state)."""
    from ..pipelines.sampling import sample_images
    from .loop import ema_weights, save_validation_grid

    raw_model.eval()
    with ema_weights(ema, raw_model):
        fresh = type(scheduler).from_config(scheduler.config)
        images = sample_images(raw_model, decoder, fresh, labels, inference_steps, guidance_scale, seed=0)
    raw_model.train()
    return save_validation_grid(accelerator, images, step, output_dir)


def write_outputs(
    model,
    data,
    scheduler,
    metrics: dict,
    outputs: Outputs,
    training_args: dict,
    *,
    objective: str,
    space: str,
    description: str,
    repa_target_filter: str,
    dataset_name: str | None,
    source: str,
) -> Path:
    """Export `<outputs.output_dir>/pipeline` (stock classes; DCT space: the `DCTTransform` in the `vae` slot),
    metrics.json, the card and the push. `data`: the run's `dit_data.DiTData` (decoder, latent convention, labels,
    REPA mode); `training_args`: the flags with the values resolved on the data, as the card shows them."""
    from ..pipelines.export import export_pipeline
    from ..pipelines.model_cards import pipeline_model_card
    from .loop import push_output

    output_dir = Path(outputs.output_dir)
    pipeline_dir = output_dir / "pipeline"
    id2label = data.id2label if data.conditional else None
    if id2label is None and data.conditional:
        id2label = {i: f"class_{i}" for i in range(data.num_classes)}
    components = {
        "vae": f"{type(data.decoder()).__name__} (latents {tuple(data.latent_shape)}, "
        f"scaling {data.latent_config['scaling_factor']:.4g})",
        "transformer": description,
        "scheduler": f"{type(scheduler).__name__} ({objective})",
    }
    card = pipeline_model_card(
        outputs.hub_model_id or output_dir.resolve().name,
        training_args=training_args,
        metrics=metrics,
        components=components,
        datasets=[dataset_name] if dataset_name else None,
        dataset_description=source,
        id2label=id2label,
        repa=data.repa != "none",
    )
    training_info = {
        "objective": objective,
        "space": space,
        "repa": data.repa,
        "repa_target_filter": repa_target_filter,
        "data": source,
        "metrics": metrics,
    }
    export_pipeline(
        pipeline_dir,
        vae=data.decoder().to("cpu"),
        transformer=model.to("cpu"),
        scheduler=scheduler,
        id2label=id2label,
        training_info=training_info,
        model_card=str(card),
    )
    write_json(output_dir / "metrics.json", metrics)
    push_output(outputs, pipeline_dir)
    return pipeline_dir
