"""Streaming images of any size: work in row bands one chunk (or tile) high, never holding the whole image.

A band of a 30000-pixel-wide RGB image 256 rows high is 23 MB; zarr codes the chunks of a band
concurrently (the codec runs in threads, torch releases the GIL), so both cores are busy.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import numpy as np


def bands(height: int, band: int) -> Iterator[slice]:
    """Row slices `band` rows high covering `height` rows (the last may be shorter)."""
    for top in range(0, height, band):
        yield slice(top, min(top + band, height))


def grid(height: int, width: int, tile: int) -> list[tuple[slice, slice]]:
    """(rows, cols) of the tiles covering an image, row-major; edge tiles are cut short."""
    return [(rows, cols) for rows in bands(height, tile) for cols in bands(width, tile)]


def progress(description: str, quiet: bool, total: float | None = None):
    """A tqdm bar counting megapixels on stderr; silent with --quiet or when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="MPix", disable=quiet or not sys.stderr.isatty(),
                bar_format="{desc}: {n:.1f} MPix{postfix} [{elapsed}, {rate_fmt}]" if total is None else None)


def copy_in_bands(read: Callable[[slice], np.ndarray], write: Callable[[slice, np.ndarray], None],
                  height: int, band: int, bar=None) -> None:
    """Copy rows from `read(rows)` to `write(rows, pixels)` one band at a time."""
    for rows in bands(height, band):
        pixels = read(rows)
        write(rows, pixels)
        if bar is not None:
            bar.update(pixels.shape[0] * pixels.shape[1] / 1e6)


def full_tiles(read: Callable[[slice], np.ndarray], height: int, width: int, tile: int) -> Iterator[np.ndarray]:
    """(tile, tile, 3) tiles in row-major order, read one band of rows at a time; edge tiles are zero-filled
    to full size (the layout tifffile expects when writing a tiled TIFF from an iterator)."""
    for rows in bands(height, tile):
        band = read(rows)
        for cols in bands(width, tile):
            block = np.zeros((tile, tile, 3), np.uint8)
            part = band[:, cols]
            block[: part.shape[0], : part.shape[1]] = part
            yield block
