#!/usr/bin/env python
"""Train the studies' small feature networks on the embedded photos and print their cost and the blur check of every
generation metric, at 32 images per set and at the larger counts studies compare (nothing downloaded; the weights
are this run's).

    python scripts/train_feature_net.py --output_dir feature-net

For each crop size (``--crop_sizes``, default 32 and 64 px):

1. `evaluation.feature_net.feature_net_for` trains `SmallFeatureNet` (whitened autoencoder; see its module) on the
   training photos (every photo whose index is not a multiple of 8, as the reproduction study splits them) and saves
   it in OUTPUT_DIR/feature_net_<size>px (a second run loads it); wall and CPU seconds and the machine's load are
   printed. `random_feature_net` is the random-init sanity row.
2. The issue's blur check (`GenerationMetricSuite.blur_check`): one random crop of each of the 112 embedded photos,
   two sets of 32 (disjoint photos), one set box-blurred 5 x 5, every metric, 8 random splits.
3. The learned-feature metrics (KID, FD; trained and random nets) at more images per set (``--set_sizes``): many
   random crops per photo, and two ways of splitting them: ``iid`` (each set a random draw of crops, the sampling
   noise a study's n samples carry) and ``disjoint photos`` (no photo in both sets: at most 56 photos per side, so
   the noise stops shrinking there; the conservative reading). At 64 px a crop is a whole photo, so 56 images per
   set is the most the embedded photos give. The smallest count from which each passes is printed.

Everything goes to OUTPUT_DIR/blur_check.json.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="feature-net", help="Where the nets and blur_check.json go.")
    parser.add_argument("--crop_sizes", type=int, nargs="+", default=[32, 64], help="Crop sizes in px.")
    parser.add_argument(
        "--set_sizes",
        type=int,
        nargs="+",
        default=[32, 64, 128, 256, 512],
        help="Images per set of the learned-feature metrics' check (capped by the photos).",
    )
    parser.add_argument("--num_splits", type=int, default=8, help="Random splits per check.")
    parser.add_argument("--steps", type=int, default=None, help="Training steps (default: FEATURE_NET_SETTINGS).")
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    args = parser.parse_args(argv)

    import torch

    from diffusers_spectrum.evaluation.feature_net import feature_net_for, random_feature_net
    from diffusers_spectrum.evaluation.study_metrics import (
        GenerationMetricSuite,
        blur_check_by_count,
        embedded_photos,
        natural_crops,
        passing_count,
        relied_metrics,
    )

    torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    photos = embedded_photos()
    train = photos[[i for i in range(len(photos)) if i % 8 != 0]]
    learned = ["kid_trained", "fd_trained", "kid_random", "fd_random"]
    report = {"photos": len(photos), "training_photos": len(train), "threads": args.threads, "sizes": {}}
    for size in args.crop_sizes:
        print(f"\n== {size} px crops ==")
        overrides = {"crop_size": size} if args.steps is None else {"crop_size": size, "steps": args.steps}
        load_before, cpu_before, start = os.getloadavg()[0], time.process_time(), time.perf_counter()
        net = feature_net_for(out / f"feature_net_{size}px", train, progress=True, **overrides)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_before
        record = json.loads((out / f"feature_net_{size}px" / "feature_net.json").read_text())
        load_after = os.getloadavg()[0]
        print(
            f"feature net: {wall:.0f} s wall, {cpu:.0f} s CPU in this process (training {record['train_seconds']} "
            f"s; 0 when loaded), load average {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} cores; "
            f"loss {record['losses_first_last'][0]:.4f} -> {record['losses_first_last'][1]:.4f}; readout "
            f"components keep {record['readout_explained_variance']:.1%} of its variance"
        )
        suite = GenerationMetricSuite(net, random_feature_net(train, crop_size=size))
        entry = {
            "feature_net": record,
            "wall_seconds": round(wall, 1),
            "cpu_seconds": round(cpu, 1),
            "load_average_before_after": [load_before, load_after],
        }

        crops = natural_crops(photos, size=size, seed=1)  # one crop per photo: disjoint photos
        check = suite.blur_check(crops, num_splits=args.num_splits)
        entry["issue_check_32"] = check
        print(f"blur check, 32 images per set, one crop per photo, {args.num_splits} splits:")
        for name, row in check.items():
            print(
                f"  {name:<18} |unblurred| {row['unblurred_abs']:.4g} blurred {row['blurred']:.4g} "
                f"ratio {row['ratio']:.2f} {'passes' if row['passes'] else 'FAILS'}"
            )
        print(f"  relied upon at 32 images per set: {', '.join(relied_metrics(check)) or 'none'}")

        per_photo = 1 if size >= min(photos.shape[-2:]) else 16
        crops, sources = natural_crops(photos, size=size, per_photo=per_photo, seed=2, return_sources=True)
        half = len(photos) // 2
        entry["by_count"] = {}
        for split, groups, cap in (("iid", None, len(crops) // 2), ("disjoint photos", sources, half * per_photo)):
            counts = [n for n in args.set_sizes if n <= cap] or [cap]
            if per_photo == 1 and max(counts) < cap:
                counts.append(cap)

            def show(n, rows, split=split):
                cells = "  ".join(f"{m} {rows[m]['ratio']:.2f}" for m in learned)
                print(f"  {split:<15} n={n:<4} {cells}", flush=True)

            print(f"learned-feature metrics by images per set ({per_photo} crops per photo), split {split}:")
            by_count = blur_check_by_count(
                suite, crops, counts, groups=groups, num_splits=args.num_splits, metrics=learned, progress=show
            )
            passing = passing_count(by_count)
            print(f"  passes from n = {passing}")
            entry["by_count"][split] = {"checks": {str(n): c for n, c in by_count.items()}, "passes_from": passing}
        report["sizes"][str(size)] = entry
        (out / "blur_check.json").write_text(json.dumps(report, indent=1))
    print(f"\nwritten: {out / 'blur_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
