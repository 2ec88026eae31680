"""How encoder-side refinement's gain grows with its iterations and depends on its step size.

    python3 benchmarks/refinement_iterations.py       # docs/refinement_iterations.json (about 25 min, one core)

The first --images Kodak images at the mse --qualities of the bundled weights, each refined with every
--settings entry (iterations:first step in bins) as `ConvolutionalAutoencoder(refine=N)` refines (real chunk
bytes, real decoding): mean bpp, PSNR, the level's loss λ·255²·MSE + bpp and its change against the
analysis transform's latent, and the encode seconds per image.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from caecodec import ConvolutionalAutoencoder, zoo
from caecodec.codec import thread_count_independent_convolutions
from caecodec.compression import analyse
from caecodec.evaluation import psnr
from caecodec.refinement import Refinement
from caecodec.training import kodak_images

ROOT = Path(__file__).resolve().parents[1]


def coded(codec: ConvolutionalAutoencoder, image: np.ndarray, refinement: Refinement | None) -> dict:
    loaded = codec._model()
    started = time.perf_counter()
    with thread_count_independent_convolutions():
        symbols = analyse(loaded.model, image[None], loaded.tables, loaded.device, refinement)
    chunk = codec.encode_latent(symbols, image.shape)
    seconds = time.perf_counter() - started
    bpp = 8 * len(chunk) / (image.shape[0] * image.shape[1])
    decoded = codec.decode(chunk)
    mse = float(np.mean((decoded.astype(np.float64) - image) ** 2))
    return {"bpp": bpp, "psnr": psnr(image, decoded), "loss": zoo.LAMBDAS["mse"][codec.quality - 1] * mse + bpp,
            "seconds": seconds}


def mean_of(rows: list[dict]) -> dict:
    return {key: round(float(np.mean([row[key] for row in rows])), 4) for key in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--qualities", default="2,5,8")
    parser.add_argument("--settings", default="5:0.02,10:0.01,10:0.02,10:0.04,20:0.02,40:0.02")
    parser.add_argument("--kodak", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "refinement_iterations.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = kodak_images(str(args.kodak), args.images)
    settings = [(int(n), float(lr)) for n, lr in (s.split(":") for s in args.settings.split(","))]
    results = {}
    for quality in (int(q) for q in args.qualities.split(",")):
        codec = ConvolutionalAutoencoder(quality, "mse")
        analysed = mean_of([coded(codec, image, None) for image in images])
        results[f"mse-{quality}"] = {"analysis": analysed}
        print(f"mse-{quality} analysis: {analysed}", flush=True)
        for iterations, step in settings:
            refinement = Refinement(iterations, quality, "mse", step)
            row = mean_of([coded(codec, image, refinement) for image in images])
            row["loss_change_percent"] = round(100 * (row["loss"] / analysed["loss"] - 1), 2)
            results[f"mse-{quality}"][f"{iterations} iterations, step {step}"] = row
            print(f"mse-{quality} {iterations} iterations, step {step}: {row}", flush=True)
    args.output.write_text(json.dumps({"images": args.images, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
