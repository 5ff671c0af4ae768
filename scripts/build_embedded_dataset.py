"""Build the embedded photo dataset shipped in `diffusers_spectrum/assets/photos` (deterministic, no download).

Crops of the colour photographs that ship inside scikit-image (`skimage.data`) and scikit-learn
(`sklearn.datasets.load_sample_images`), at several scales, written as 64 x 64 RGB PNGs in a `datasets`
imagefolder with a `metadata.jsonl` (`file_name`, `label` = index of the source photo, `source`).

Run from the repository root: `python scripts/build_embedded_dataset.py [--output_dir DIR]`. Re-running it gives
byte-identical files for the same scikit-image / scikit-learn / Pillow versions.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image


# Source photographs, in label order. All are natural colour photographs (the camera man is grayscale, kept as
# RGB), with the power-law spectra Spectrum Matching is about.
SOURCES = ("astronaut", "camera", "chelsea", "coffee", "rocket", "china", "flower")
DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parents[1] / "src" / "diffusers_spectrum" / "assets" / "photos"


def load_source(name: str) -> np.ndarray:
    """The photograph `name` as an (H, W, 3) uint8 array."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        image = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def crops_of(image: np.ndarray, num_crops: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`num_crops` square crops, each taken at a random scale (side 1x to 3x `size`) and resized to `size`."""
    height, width = image.shape[:2]
    crops = []
    for _ in range(num_crops):
        side = int(rng.integers(size, min(3 * size, height, width) + 1))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        crop = Image.fromarray(image[top : top + side, left : left + side])
        crops.append(np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS)))
    return crops


def build(output_dir: Path, crops_per_source: int = 16, size: int = 64, seed: int = 0) -> int:
    """Write the PNGs and `metadata.jsonl` into `output_dir`; returns the number of images."""
    output_dir.mkdir(parents=True, exist_ok=True)
    metadata = output_dir / "metadata.jsonl"  # an earlier build's images: replaced; any other file is kept
    for line in metadata.read_text(encoding="utf-8").splitlines() if metadata.is_file() else ():
        name = json.loads(line).get("file_name", "") if line.strip() else ""
        if name and "/" not in name and (output_dir / name).is_file():
            (output_dir / name).unlink()
    rng = np.random.default_rng(seed)
    rows = []
    for label, name in enumerate(SOURCES):
        for i, crop in enumerate(crops_of(load_source(name), crops_per_source, size, rng)):
            file_name = f"{name}_{i:02d}.png"
            Image.fromarray(crop).save(output_dir / file_name, optimize=True)
            rows.append({"file_name": file_name, "label": label, "source": name})
    with open(output_dir / "metadata.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    with open(output_dir / "classes.json", "w", encoding="utf-8") as f:
        json.dump(list(SOURCES), f)
    return len(rows)


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="Where to write the imagefolder.")
    parser.add_argument("--crops_per_source", type=int, default=16, help="Crops per source photograph.")
    parser.add_argument("--resolution", type=int, default=64, help="Side of the square crops in pixels.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the crop positions and scales.")
    return parser.parse_args(input_args)


if __name__ == "__main__":
    args = parse_args()
    count = build(args.output_dir, args.crops_per_source, args.resolution, args.seed)
    total = sum(p.stat().st_size for p in args.output_dir.iterdir())
    print(f"wrote {count} images ({total / 1e6:.2f} MB) to {args.output_dir}")
