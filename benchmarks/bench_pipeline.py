"""Sampling through our pipelines against a stock `DiTPipeline` with the same architecture and weights.

Three pipelines share one small VAE + DiT (same weights, same seed, same DDIM schedule):

- stock: `DiTPipeline(DiTTransformer2DModel, AutoencoderKL)` built directly from diffusers classes;
- exported: `pipelines.export.export_pipeline(SpectrumAutoencoderKL, REPADiTTransformer2DModel)` written to
  disk and loaded back with plain `DiffusionPipeline.from_pretrained` (what users download);
- REPA in place: `DiTPipeline` driving our `REPADiTTransformer2DModel` + `SpectrumAutoencoderKL` directly.

Times are the best of a few full sampling calls (batch 4, 20 steps, CFG 1.5), interleaved across the three
pipelines, on CPU; with a GPU the same runs in bf16 too. The ratio is time / stock time (target: no overhead,
~1.0x), and the exported pipeline's samples must equal the stock one's.

Usage: python benchmarks/bench_pipeline.py [--quick]
"""

import argparse
import tempfile
import time

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, DiTPipeline, DiTTransformer2DModel

from diffusers_spectrum import REPADiTTransformer2DModel, SpectrumAutoencoderKL
from diffusers_spectrum.pipelines.export import export_pipeline


VAE_CONFIG = dict(
    block_out_channels=(32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=64,
)
DIT_CONFIG = dict(
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=4,
    num_layers=4,
    sample_size=16,
    patch_size=2,
    num_embeds_ada_norm=1000,
)


def _time_round_robin(fns: dict, repeats: int) -> dict:
    """Best wall time of each callable over `repeats` rounds, the callables interleaved within each round so that
    changing load on a shared machine hits all of them alike (one warm-up call each first)."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _pipelines(folder: str):
    torch.manual_seed(0)
    vae = SpectrumAutoencoderKL(**VAE_CONFIG).eval()
    transformer = REPADiTTransformer2DModel(**DIT_CONFIG, repa_depth=2, repa_target_dim=64, repa_projector_dim=128)
    transformer.eval()
    scheduler = DDIMScheduler()
    repa = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler)
    export_pipeline(folder, vae=vae, transformer=transformer, scheduler=scheduler)
    exported = DiffusionPipeline.from_pretrained(folder)
    stock_vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    stock_transformer = DiTTransformer2DModel.from_pretrained(folder, subfolder="transformer")
    stock = DiTPipeline(
        transformer=stock_transformer, vae=stock_vae, scheduler=DDIMScheduler.from_config(scheduler.config)
    )
    return {"stock": stock, "exported": exported, "repa_in_place": repa}


def _sample(pipeline, steps: int, device: str):
    generator = torch.Generator(device="cpu").manual_seed(0)
    return pipeline(
        class_labels=[1, 2, 3, 4], guidance_scale=1.5, num_inference_steps=steps, generator=generator, output_type="np"
    ).images


def run(quick: bool = False) -> list[dict]:
    steps, repeats = (5, 2) if quick else (20, 5)
    rows = []
    devices = [("cpu", torch.float32)] + ([("cuda", torch.bfloat16)] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as folder:
        pipelines = _pipelines(folder)
        for device, dtype in devices:
            for pipeline in pipelines.values():
                pipeline.to(device)
                if dtype != torch.float32:
                    pipeline.to(dtype=dtype)
                pipeline.set_progress_bar_config(disable=True)
            stock_images = _sample(pipelines["stock"], steps, device)
            exported_images = _sample(pipelines["exported"], steps, device)
            max_diff = float(abs(stock_images - exported_images).max())
            times = _time_round_robin(
                {name: lambda p=p, d=device: _sample(p, steps, d) for name, p in pipelines.items()}, repeats
            )
            tag = f"{device} {str(dtype).replace('torch.', '')}"
            rows.append(
                {
                    "benchmark": f"DiTPipeline stock, 4 samples x {steps} DDIM steps, CFG 1.5 ({tag})",
                    "metric": "sampling time",
                    "value": times["stock"] * 1e3,
                    "unit": "ms",
                    "ratio": None,
                    "target": "baseline",
                }
            )
            for name, label in (("exported", "exported pipeline (from_pretrained)"), ("repa_in_place", "REPA DiT")):
                rows.append(
                    {
                        "benchmark": f"  {label} ({tag})",
                        "metric": "time / stock",
                        "value": times[name] * 1e3,
                        "unit": "ms",
                        "ratio": times[name] / times["stock"],
                        "target": "<= 1.05x"
                        + (f" (max |diff| vs stock {max_diff:.1e})" if name == "exported" else ""),
                    }
                )
    return rows


if __name__ == "__main__":
    from bench_esm import print_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    print_table(run(parser.parse_args().quick))
