#!/usr/bin/env python
"""Train the studies' small feature network on the embedded photos and print its time and the blur check of every
generation metric (nothing downloaded; the weights are this run's).

    python scripts/train_feature_net.py --output_dir feature-net

1. `evaluation.feature_net.feature_net_for` trains `SmallFeatureNet` (denoising autoencoder) on the training photos
   (every photo whose index is not a multiple of 8, as the reproduction study splits them) and saves it in
   OUTPUT_DIR/feature_net (a second run loads it).
2. `evaluation.study_metrics.GenerationMetricSuite.blur_check` on one random 32 px crop of each embedded photo (112
   crops): each metric's distance between two halves of unblurred crops and
   between one half and the other box-blurred 5 x 5, at 32 images per set, averaged over 8 random splits. Written to
   OUTPUT_DIR/blur_check.json and printed.
"""

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="feature-net", help="Where the net and blur_check.json go.")
    parser.add_argument("--steps", type=int, default=None, help="Training steps (default: FEATURE_NET_SETTINGS).")
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    args = parser.parse_args(argv)

    import torch

    from diffusers_spectrum.evaluation.feature_net import feature_net_for, random_feature_net
    from diffusers_spectrum.evaluation.study_metrics import (
        GenerationMetricSuite,
        embedded_photos,
        natural_crops,
        relied_metrics,
    )

    torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    photos = embedded_photos()
    train = photos[[i for i in range(len(photos)) if i % 8 != 0]]
    start = time.perf_counter()
    overrides = {} if args.steps is None else {"steps": args.steps}
    net = feature_net_for(out / "feature_net", train, progress=True, **overrides)
    record = json.loads((out / "feature_net" / "feature_net.json").read_text())
    print(
        f"feature net: {time.perf_counter() - start:.0f} s (training {record['train_seconds']} s, denoising loss "
        f"{record['losses_first_last'][0]:.4f} -> {record['losses_first_last'][1]:.4f})"
    )
    suite = GenerationMetricSuite(net, random_feature_net(train))
    check = suite.blur_check(natural_crops(photos, seed=1))
    (out / "blur_check.json").write_text(json.dumps(check, indent=1))
    for name, row in check.items():
        verdict = "passes" if row["passes"] else "FAILS"
        print(f"{name:<18} |unblurred| {row['unblurred_abs']:.4g} blurred {row['blurred']:.4g} "
              f"ratio {row['ratio']:.2f} {verdict}")  # fmt: skip
    print(f"relied upon: {', '.join(relied_metrics(check))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
