"""Where a level's fidelity is lost: in the transforms, or in quantizing the latent.

    python3 benchmarks/transform_limit.py runs/main            # a training run's checkpoint
    python3 benchmarks/transform_limit.py --version 4          # bundled weights
    python3 benchmarks/transform_limit.py --version 4 --metrics mse   # its mse levels only (about 1 min each)

For each level, on the 8 validation images, PSNR of the reconstruction (a) without quantization (the
latent passes through the level's gain and inverse gain untouched: the transforms' own limit), (b) with
uniform noise (what training optimises) and (c) rounded about the medians (what coding does), with the
rate of (b) and (c) under the level's density. If (c) is close to (a), more rate cannot buy fidelity at
that level; only better transforms can. Writes docs/transform_limit.json.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from caecodec import weights, zoo
from caecodec.training import TrainingConfig, kodak_images, load_checkpoint_model

ROOT = Path(__file__).resolve().parents[1]


def psnr(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return -10 * math.log10(float(torch.mean((x_hat.clamp(0, 1) - x) ** 2)))


@torch.no_grad()
def level_limits(model, level: int, images: list[np.ndarray]) -> dict:
    rows = []
    for image in images:
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        pixels = x.shape[2] * x.shape[3]
        untouched = torch.exp(model.log_gain[level] + model.log_inverse_gain[level])[None, :, None, None]
        row = {"unquantized_psnr": psnr(x, model.g_s(model.analysis(level)(x) * untouched))}
        for name, noise in (("noise", True), ("rounded", False)):
            output = model(x, level, noise=noise)
            row[f"{name}_psnr"] = psnr(x, output["x_hat"])
            row[f"{name}_bpp"] = float(-torch.log2(output["likelihoods"]["y"]).sum()) / pixels
        rows.append(row)
    return {key: round(float(np.mean([row[key] for row in rows])), 3) for key in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", type=Path)
    parser.add_argument("--version", type=int, help="bundled weights version instead of a run")
    parser.add_argument("--metrics", default="mse,ms-ssim", help="levels of these metrics (comma-separated)")
    parser.add_argument("--kodak", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "transform_limit.json")
    args = parser.parse_args()
    if (args.run_dir is None) == (args.version is None):
        parser.error("give exactly one of a run folder and --version")
    torch.manual_seed(0)  # the noise
    if args.version is not None:
        model, source = weights._variable_rate_model(args.version), f"bundled v{args.version}"
    else:
        model, state = load_checkpoint_model(args.run_dir)
        source = f"{args.run_dir} step {state['step']}"
    model.eval()
    images = kodak_images(str(args.kodak), TrainingConfig.eval_images)
    results = {}
    print(f"{source}, {len(images)} validation images: PSNR unquantized / noise / rounded, bpp noise / rounded")
    for level in range(model.levels):
        quality, metric = zoo.level_configuration(level)
        if metric not in args.metrics.split(","):
            continue
        limits = results[f"{metric}-{quality}"] = level_limits(model, level, images)
        print(f"{metric:8s} q{quality}: {limits['unquantized_psnr']:6.2f} / {limits['noise_psnr']:6.2f} / "
              f"{limits['rounded_psnr']:6.2f} dB   {limits['noise_bpp']:.3f} / {limits['rounded_bpp']:.3f} bpp")
    existing = json.loads(args.output.read_text()) if args.output.exists() else {}
    existing[source] = results
    args.output.write_text(json.dumps(existing, indent=1) + "\n")


if __name__ == "__main__":
    main()
