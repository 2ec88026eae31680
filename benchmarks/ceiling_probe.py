"""What caps the high mse levels? Probes of bundled weights, about a minute on one core.

    python3 benchmarks/ceiling_probe.py --version 21          # prints; figures in docs/training.md (session 26)

(a) On 8 random 256×256 crops of the first 60 training photos: PSNR at mse q1, q5 and q8 with the latent rounded
    as coding rounds it, the transforms in float32 and under bfloat16 autocast (as the run trains); at q8 also
    unquantized, and with q8's gain doubled and quadrupled (the latent rounded twice and four times finer).
    If precision or quantization capped q8, these would differ.
(b) JPEG (imagecodecs, headers included) on the 256×256 centre crops of the 8 validation images that
    `amortization_gap.py` measures, to set its figures against JPEG at the same rate.
(c) On the 8 validation images: how many latent channels carry any bits at each level (more than a thousandth of
    a bit per pixel, rounded as coding rounds, under the level's density). A channel whose analysis output does
    not vary is dead to every level whatever its gain.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import imagecodecs
import numpy as np
import torch
from amortization_gap import psnr  # beside this script

from caecodec import weights, zoo
from caecodec.compression import to_tensor
from caecodec.training import CropSampler, TrainingConfig, kodak_images, training_photos

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def scaled(model, level: int, gains: str) -> torch.Tensor:
    return torch.exp(getattr(model, gains)[level])[None, :, None, None]


@torch.no_grad()
def precision_and_quantization(model, x: torch.Tensor) -> None:
    for level in (0, 4, 7):
        fp32 = psnr(x, model(x, level, noise=False)["x_hat"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = psnr(x, model(x, level, noise=False)["x_hat"])
        print(f"mse q{level + 1}, rounded: float32 {fp32:.2f} dB, bfloat16 {bf16:.2f} dB")
    y = model.analysis(7)(x) * scaled(model, 7, "log_gain")
    for finer in (None, 1, 2, 4):
        values = y if finer is None else torch.round(y * finer) / finer
        label = "unquantized" if finer is None else f"gain x{finer}, rounded"
        print(f"mse q8, {label}: {psnr(x, model.synthesis(7)(values * scaled(model, 7, 'log_inverse_gain'))):.2f} dB")


def jpeg_on_validation_crops(kodak: Path, size: int = 256) -> None:
    crops = []
    for image in kodak_images(str(kodak), TrainingConfig.eval_images):
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        crops.append(image[top:top + size, left:left + size])
    for quality in range(30, 62, 4):
        rows = []
        for crop in crops:
            data = imagecodecs.jpeg_encode(crop, level=quality)
            error = np.mean((imagecodecs.jpeg_decode(data).astype(float) - crop) ** 2)
            rows.append((len(data) * 8 / size**2, 10 * math.log10(255**2 / error)))
        bpp, db = np.mean(rows, axis=0)
        print(f"JPEG q{quality} on the validation crops: {bpp:.4f} bpp {db:.2f} dB")


@torch.no_grad()
def living_channels(model, images: list[np.ndarray]) -> None:
    xs = [to_tensor(image[None]) for image in images]
    latents = {}  # each image's latent, once per analysis transform: levels share them
    for level in range(model.levels):
        analysis = model.analysis(level)
        if analysis not in latents:
            latents[analysis] = [analysis(x) for x in xs]
        bits = 0
        for y in latents[analysis]:
            gained = y * torch.exp(model.log_gain[level])[None, :, None, None]
            _, likelihoods = model.entropy_bottlenecks[level](gained, training=False)  # rounded as coding rounds
            bits = bits - torch.log2(likelihoods).sum(dim=(0, 2, 3))
        bpp = bits / sum(image.shape[0] * image.shape[1] for image in images)
        quality, metric = zoo.level_configuration(level)
        print(f"{metric} q{quality}: {int((bpp > 1e-3).sum())} of {model.m} latent channels carry bits, "
              f"{float(bpp.sum()):.4f} bpp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", type=int, required=True, help="bundled weights version")
    parser.add_argument("--train-dir", type=Path, default=SHARED / "train")
    parser.add_argument("--kodak", type=Path, default=SHARED / "kodak")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = weights._variable_rate_model(args.version)
    sampler = CropSampler(training_photos(args.train_dir)[:60], 256, TrainingConfig.min_scale)
    precision_and_quantization(model, sampler.sample(np.random.default_rng(1), 8))
    jpeg_on_validation_crops(args.kodak)
    living_channels(model, kodak_images(str(args.kodak), TrainingConfig.eval_images))


if __name__ == "__main__":
    main()
