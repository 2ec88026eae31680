"""How much the analysis transform leaves on the table: the amortization gap of bundled weights.

    python3 benchmarks/amortization_gap.py --version 13       # docs/amortization_gap.json (about 15 min)

On a 256×256 crop of each of the 8 validation images (one core):

(a) the synthesis transform's own limit: the latent optimised directly for MSE (Adam, no quantization),
    against the analysis transform's latent g_a(x) (`transform_limit.py`'s "unquantized");
(b) encoder-side refinement at a level, as `ConvolutionalAutoencoder(refine=N)` does it (caecodec.refinement:
    the latent optimised for the level's own rate–distortion loss, distortion through rounding with a
    straight-through gradient, rate under uniform noise as in training, Adam's step on a cosine), then
    rounded about the medians as coding does: bpp (ideal code length), PSNR and loss before and after.
    Session 8's figures (docs/training.md) came from this script's first form, a constant step and the
    last iterate on the variable-rate model's gained latent; the exported level is the same function.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from caecodec import weights
from caecodec.refinement import LevelLoss, Refinement, refine
from caecodec.training import TrainingConfig, kodak_images

ROOT = Path(__file__).resolve().parents[1]
CROP = 256


def psnr(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return -10 * math.log10(float(torch.mean((x_hat.clamp(0, 1) - x) ** 2)))


def centre_crop(image: np.ndarray) -> torch.Tensor:
    top, left = (image.shape[0] - CROP) // 2, (image.shape[1] - CROP) // 2
    return torch.from_numpy(image[top:top + CROP, left:left + CROP]).permute(2, 0, 1)[None].float() / 255


def synthesis_limit(model, x: torch.Tensor, iterations: int) -> tuple[float, float]:
    y = model.g_a(x).detach().requires_grad_(True)
    start = psnr(x, model.g_s(y).detach())
    optimizer = torch.optim.Adam([y], lr=0.05)
    for _ in range(iterations):
        loss = torch.mean((model.g_s(y) - x) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return start, psnr(x, model.g_s(y).detach())


def coded(level: LevelLoss, lam: float, latent: torch.Tensor, x: torch.Tensor) -> dict:
    """The latent rounded about the medians as coding does: its bpp (ideal code length), PSNR and the level's loss."""
    with torch.no_grad():
        values = level.rounded(latent)
        bpp = float(level.bits_per_pixel(values))
        x_hat = level.model.g_s(values)
        loss = lam * 255**2 * float(torch.mean((x_hat - x) ** 2)) + bpp
    return {"bpp": bpp, "psnr": psnr(x, x_hat), "loss": loss}


def refined_rows(model, quality: int, x: torch.Tensor, iterations: int, lr: float) -> tuple[dict, dict]:
    """The crop at mse `quality` as analysed and as `ConvolutionalAutoencoder(refine=iterations)` refines it
    (caecodec.refinement, first step `lr`), each measured as coding measures it."""
    refinement = Refinement(iterations, quality, "mse", lr)
    level = LevelLoss(model, x, x.shape[-2], x.shape[-1], refinement)
    with torch.no_grad():
        analysed = model.g_a(x)
    refined = refine(model, x, analysed, x.shape[-2], x.shape[-1], refinement)
    return coded(level, refinement.lam, analysed, x), coded(level, refinement.lam, refined, x)


def mean_of(rows: list[dict]) -> dict:
    return {key: round(float(np.mean([row[key] for row in rows])), 4) for key in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", type=int, required=True, help="bundled weights version")
    parser.add_argument("--qualities", default="2,5,8", help="mse levels to refine (the loss is MSE's)")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.005, help="Adam's first step on the latent (bins)")
    parser.add_argument("--kodak", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "amortization_gap.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = weights._variable_rate_model(args.version).eval().requires_grad_(False)
    crops = [centre_crop(image) for image in kodak_images(str(args.kodak), TrainingConfig.eval_images)]
    limits = [synthesis_limit(model, x, args.iterations) for x in crops]
    results = {"synthesis_limit_psnr": {"g_a": round(float(np.mean([a for a, _ in limits])), 3),
                                        "optimised": round(float(np.mean([b for _, b in limits])), 3)}}
    print(f"v{args.version}, {len(crops)} crops of {CROP}×{CROP}: unquantized PSNR g_s(g_a(x)) "
          f"{results['synthesis_limit_psnr']['g_a']:.2f} dB, latent optimised {results['synthesis_limit_psnr']['optimised']:.2f} dB")
    for quality in (int(q) for q in args.qualities.split(",")):
        name, level_model = f"mse-{quality}", weights.load(quality, "mse", "bundled", args.version).model
        pairs = [refined_rows(level_model, quality, x, args.iterations, args.lr) for x in crops]
        before, after = mean_of([b for b, _ in pairs]), mean_of([a for _, a in pairs])
        results[name] = {"analysis": before, "refined": after}
        print(f"{name}: {before['bpp']:.4f} bpp {before['psnr']:.2f} dB loss {before['loss']:.3f} -> "
              f"{after['bpp']:.4f} bpp {after['psnr']:.2f} dB loss {after['loss']:.3f}")
    existing = json.loads(args.output.read_text()) if args.output.exists() else {}
    existing[f"bundled v{args.version}, caecodec.refinement, {args.iterations} iterations, first step {args.lr}"] = results
    args.output.write_text(json.dumps(existing, indent=1) + "\n")


if __name__ == "__main__":
    main()
