"""Pixels to integer latents and back: pad, analysis transform, quantize; dequantize, synthesis, crop.

Torch is imported here and only here on the coding path, so importing the codec stays cheap.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from .coding import CdfTables
from .models import DOWNSAMPLING, FactorizedPrior


def latent_size(pixels: int) -> int:
    return -(-pixels // DOWNSAMPLING)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) to float (B, 3, H, W) in [0, 1], padded at the bottom and right to a multiple of 16.

    Replicate padding, as CompressAI's reference outputs use: it continues edges instead of adding
    the hard border that zero padding would cost bits for.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    height, width = x.shape[-2:]
    return F.pad(x, (0, (-width) % DOWNSAMPLING, 0, (-height) % DOWNSAMPLING), mode="replicate")


@torch.no_grad()
def analyse(model: FactorizedPrior, images: np.ndarray, tables: CdfTables, device: str = "cpu") -> np.ndarray:
    """The quantized latent symbols round(g_a(x) - median), int32 (B, M, ceil(H/16), ceil(W/16))."""
    y = model.g_a(to_tensor(images).to(device)).cpu().numpy()
    centred = y - tables.medians[None, :, None, None]
    if not np.all(np.isfinite(centred)) or np.abs(centred).max(initial=0) > 2**30:
        raise ValueError("the analysis transform produced a non-finite or huge latent: the weights are broken")
    return np.round(centred).astype(np.int32)


def dequantize(symbols: np.ndarray, tables: CdfTables) -> np.ndarray:
    """The latent y_hat = symbol + median as float32 (B, M, h, w): what the synthesis transform sees."""
    return (symbols.astype(np.float32) + tables.medians[None, :, None, None]).astype(np.float32)


@torch.no_grad()
def synthesise(model: FactorizedPrior, symbols: np.ndarray, tables: CdfTables, height: int, width: int,
               device: str = "cpu") -> np.ndarray:
    """uint8 (B, height, width, 3) reconstruction of the latent symbols."""
    y_hat = torch.from_numpy(dequantize(symbols, tables)).to(device)
    x_hat = model.g_s(y_hat)[:, :, :height, :width]
    pixels = x_hat.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()
