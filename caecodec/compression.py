"""Pixels to integer latents and back: pad, analysis transform, quantize; dequantize, synthesis, crop.

Torch is imported here and only here on the coding path, so importing the codec stays cheap.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from .coding import CdfTables
from .models import DOWNSAMPLING, FactorizedPrior
from .refinement import Refinement, refine


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
def analyse(model: FactorizedPrior, images: np.ndarray, tables: CdfTables, device: str = "cpu",
            refinement: Refinement | None = None) -> np.ndarray:
    """The quantized latent symbols round(y - median), int32 (B, M, ceil(H/16), ceil(W/16)), where y is
    g_a(x), refined image by image for the level's loss when `refinement` asks for it (refinement.py)."""
    x = to_tensor(images).to(device)
    y = model.g_a(x)
    if refinement is not None:
        height, width = images.shape[1:3]
        y = torch.cat([refine(model, x[i : i + 1], y[i : i + 1], height, width, refinement) for i in range(len(y))])
    centred = y.cpu().numpy() - tables.medians[None, :, None, None]
    if not np.all(np.isfinite(centred)) or np.abs(centred).max(initial=0) > 2**30:
        raise ValueError("the analysis transform produced a non-finite or huge latent: the weights are broken")
    return np.round(centred).astype(np.int32)


def analyse_in_context(model: FactorizedPrior, region: np.ndarray, tables: CdfTables, offset: tuple[int, int],
                       latent_shape: tuple[int, int], device: str = "cpu",
                       refinement: Refinement | None = None) -> np.ndarray:
    """The symbols (1, M, *latent_shape) of the chunk that starts `offset` = (rows, cols) pixels into `region`
    (uint8 (h, w, 3): the chunk and the real pixels around it), analysed together with its neighbours.

    The offsets are multiples of 16, so the region's latent grid is the chunk's, shifted by whole latent
    pixels. A region shorter than the chunk's latent extent ends at the image's edge: it is analysed as the
    whole image would be there (padded to a multiple of 16 by `to_tensor`), and the chunk's latent pixels
    past the image (zarr's edge chunks have the full chunk shape) get symbol 0, the median: they cost next to
    nothing, and a seamless read, which stops at the image's latent edge, never synthesises them.
    """
    top, left = offset
    if top % DOWNSAMPLING or left % DOWNSAMPLING:
        raise ValueError(f"the chunk's offset in its region must be a multiple of {DOWNSAMPLING} on both axes; "
                         f"found {offset}")
    first_row, first_col = top // DOWNSAMPLING, left // DOWNSAMPLING
    symbols = analyse(model, region[None], tables, device, refinement)
    symbols = symbols[..., first_row : first_row + latent_shape[0], first_col : first_col + latent_shape[1]]
    missing_rows, missing_cols = latent_shape[0] - symbols.shape[-2], latent_shape[1] - symbols.shape[-1]
    return np.pad(symbols, ((0, 0), (0, 0), (0, missing_rows), (0, missing_cols)))


def dequantize(symbols: np.ndarray, tables: CdfTables) -> np.ndarray:
    """The latent y_hat = symbol + median as float32 (B, M, h, w): what the synthesis transform sees."""
    return (symbols.astype(np.float32) + tables.medians[None, :, None, None]).astype(np.float32)


@torch.no_grad()
def synthesise_latent(model: FactorizedPrior, latent: np.ndarray, rows: slice, cols: slice,
                      device: str = "cpu") -> np.ndarray:
    """uint8 (B, h, w, 3): the pixels `rows` x `cols` of the synthesis of the dequantized latent (B, M, h', w')."""
    x_hat = model.g_s(torch.from_numpy(np.ascontiguousarray(latent)).to(device))[:, :, rows, cols]
    pixels = x_hat.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def synthesise(model: FactorizedPrior, symbols: np.ndarray, tables: CdfTables, height: int, width: int,
               device: str = "cpu") -> np.ndarray:
    """uint8 (B, height, width, 3) reconstruction of the latent symbols."""
    return synthesise_latent(model, dequantize(symbols, tables), slice(0, height), slice(0, width), device)
