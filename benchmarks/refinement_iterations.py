"""How encoder-side refinement's gain grows with its iterations and depends on its step size.

    python3 benchmarks/refinement_iterations.py       # docs/refinement_iterations.json (about 25 min, one core)

The first --images Kodak images at the --metric's --qualities of the bundled weights, each refined with
every --settings entry (iterations:first step in bins, or "auto": the level's own step in
refinement.FIRST_STEPS, the codec's default) as `ConvolutionalAutoencoder(refine=N)` refines (real chunk
bytes, real decoding): mean bpp, PSNR, MS-SSIM, the level's loss (λ·255²·MSE or λ·(1 − MS-SSIM), + bpp)
and its change against the analysis transform's latent, and the encode seconds per image.
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
from caecodec.evaluation import ms_ssim, psnr
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
    similarity = ms_ssim(image, decoded)
    # D of the level's training loss: 255²·MSE (mse) or 1 − MS-SSIM (ms-ssim)
    mse = float(np.mean((decoded.astype(np.float64) - image) ** 2))
    distortion = 1 - similarity if codec.metric == "ms-ssim" else mse
    return {"bpp": bpp, "psnr": psnr(image, decoded), "ms_ssim": similarity,
            "loss": zoo.LAMBDAS[codec.metric][codec.quality - 1] * distortion + bpp, "seconds": seconds}


def mean_of(rows: list[dict]) -> dict:
    return {key: round(float(np.mean([row[key] for row in rows])), 4) for key in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--metric", choices=("mse", "ms-ssim"), default="mse")
    parser.add_argument("--qualities", default="2,5,8")
    parser.add_argument("--settings", default="5:0.02,10:0.01,10:0.02,10:0.04,20:0.02,40:0.02")
    parser.add_argument("--kodak", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "refinement_iterations.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = kodak_images(str(args.kodak), args.images)
    settings = [(int(n), None if step == "auto" else float(step))
                for n, step in (setting.split(":") for setting in args.settings.split(","))]
    results = {}
    for quality in (int(q) for q in args.qualities.split(",")):
        codec = ConvolutionalAutoencoder(quality, args.metric)
        analysed = mean_of([coded(codec, image, None) for image in images])
        results[f"{args.metric}-{quality}"] = {"analysis": analysed}
        print(f"{args.metric}-{quality} analysis: {analysed}", flush=True)
        for iterations, step in settings:
            refinement = Refinement(iterations, quality, args.metric, step)
            row = mean_of([coded(codec, image, refinement) for image in images])
            row["loss_change_percent"] = round(100 * (row["loss"] / analysed["loss"] - 1), 2)
            name = f"{iterations} iterations, step {'auto' if step is None else step}"
            results[f"{args.metric}-{quality}"][name] = row
            print(f"{args.metric}-{quality} {name}: {row}", flush=True)
    args.output.write_text(json.dumps({"images": args.images, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
