"""Coded chunk size against the model's own ideal code length on Kodak, for every bundled configuration.

    python3 benchmarks/coded_size.py ../shared/data/kodak            # writes docs/coded_size.json

"Ideal" is CompressAI's theoretical size: the sum of -log2 of the density model's likelihoods of the
quantized latent (continuous CDFs, no tables, no header). The coded size is the whole chunk that zarr
stores: header, ANS words and escaped values. Their ratio is what entropy coding with integer tables,
escapes and the chunk format cost.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from caecodec import weights, zoo
from caecodec.codec import ConvolutionalAutoencoder
from caecodec.evaluation import load_rgb

ROOT = Path(__file__).resolve().parents[1]


def ideal_bits(model, image: np.ndarray) -> float:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        _, likelihoods = model.entropy_bottleneck(model.g_a(x), training=False)
    return float(-torch.log2(likelihoods).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "coded_size.json")
    args = parser.parse_args()
    paths = sorted(args.folder.glob("*.png"))
    images = [load_rgb(path) for path in paths]
    if any(image.shape[0] % 16 or image.shape[1] % 16 for image in images):
        raise SystemExit("images must be multiples of 16 pixels (padding would add latent the ideal does not count)")
    rows = []
    for metric in zoo.METRICS:
        for quality in zoo.QUALITIES:
            codec = ConvolutionalAutoencoder(quality=quality, metric=metric, gpu=False)
            model = weights.load(quality, metric).model
            coded = sum(8 * len(codec.encode(image)) for image in images)
            ideal = sum(ideal_bits(model, image) for image in images)
            rows.append({"metric": metric, "quality": quality, "coded_bits": coded, "ideal_bits": round(ideal),
                         "ratio": round(coded / ideal, 5)})
            print(f"{metric} q{quality}: coded/ideal {coded / ideal:.4f}")
    ratios = [row["ratio"] for row in rows]
    result = {"command": f"python3 benchmarks/coded_size.py {args.folder}", "images": len(images),
              "weights": repr(ConvolutionalAutoencoder()), "date": time.strftime("%Y-%m-%d %H:%M"),
              "worst_ratio": max(ratios), "mean_ratio": round(float(np.mean(ratios)), 5), "rows": rows}
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"worst {max(ratios):.4f}, mean {np.mean(ratios):.4f} -> {args.output}")


if __name__ == "__main__":
    main()
