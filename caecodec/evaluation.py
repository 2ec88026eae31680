"""Rate-distortion of a model on real bitstreams: bpp from coded bytes, PSNR and MS-SSIM on 8-bit RGB."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import coding
from .compression import analyse, synthesise
from .refinement import Refinement


@dataclass(frozen=True)
class Measurement:
    bpp: float
    theoretical_bpp: float
    psnr: float
    ms_ssim: float

    def as_dict(self) -> dict:
        return asdict(self)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def border_psnr(original: np.ndarray, decoded: np.ndarray, chunk: int, band: int = 8) -> tuple[float, float]:
    """PSNR within `band` pixels of the internal chunk borders of (H, W, 3) images cut into `chunk`-pixel
    chunks, and PSNR of all other pixels: how much the seams cost (docs/large-images.md, "Tile seams")."""
    height, width = original.shape[:2]
    near = np.zeros((height, width), bool)
    for border in range(chunk, height, chunk):
        near[border - band : border + band] = True
    for border in range(chunk, width, chunk):
        near[:, border - band : border + band] = True
    return psnr(original[near], decoded[near]), psnr(original[~near], decoded[~near])


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM on RGB uint8 (H, W, 3) images, the standard 11x11 window, 5 scales (pytorch-msssim).

    In float32: five times faster than float64 on CPU, and within 1e-6 of it on Kodak.
    """
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    def tensor(image):
        return torch.from_numpy(image).permute(2, 0, 1)[None].float()

    return float(_ms_ssim(tensor(a), tensor(b), data_range=255.0))


def theoretical_bits(symbols: np.ndarray, tables: coding.CdfTables) -> float:
    """Ideal code length of the symbols under the integer tables, escapes counted as their varint bytes."""
    return float(channel_bits(symbols, tables).sum())


def channel_bits(symbols: np.ndarray, tables: coding.CdfTables) -> np.ndarray:
    """Ideal code length of each latent channel's symbols (float64, M): -log2 pmf summed, plus escape bytes."""
    pmf = np.diff(tables.quantized_cdf.astype(np.int64), axis=1) / float(1 << coding.PRECISION)
    per_channel = symbols.transpose(1, 0, 2, 3).reshape(tables.channels, -1) - tables.offset[:, None]
    escape = (tables.cdf_length - 2)[:, None]
    outside = (per_channel < 0) | (per_channel >= escape)
    indexes = np.where(outside, escape, per_channel)
    bits = -np.log2(np.take_along_axis(pmf, indexes, axis=1)).sum(axis=1)
    escaped = [8 * len(coding.pack_varints(values[mask])) for values, mask in zip(per_channel, outside)]
    return bits + np.asarray(escaped, dtype=np.float64)


def measure(model, image: np.ndarray, refinement: Refinement | None = None) -> Measurement:
    """Encode one uint8 (H, W, 3) image to real ANS bytes (its latent refined when `refinement` asks for it),
    decode them, and compare."""
    tables = model.entropy_bottleneck.cdf_tables()
    symbols = analyse(model, image[None], tables, refinement=refinement)
    words, escapes = coding.encode(symbols, tables)
    decoded = coding.decode(words, escapes, symbols.shape, tables)
    reconstruction = synthesise(model, decoded, tables, *image.shape[:2])[0]
    pixels = image.shape[0] * image.shape[1]
    return Measurement(
        bpp=8 * (words.nbytes + len(escapes)) / pixels,
        theoretical_bpp=theoretical_bits(symbols, tables) / pixels,
        psnr=psnr(image, reconstruction),
        ms_ssim=ms_ssim(image, reconstruction),
    )


def load_rgb(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def mean_measurement(model, images: list[np.ndarray]) -> Measurement:
    return mean_of([measure(model, image) for image in images])


def mean_of(results: list[Measurement]) -> Measurement:
    return Measurement(**{k: float(np.mean([getattr(r, k) for r in results])) for k in Measurement.__dataclass_fields__})
