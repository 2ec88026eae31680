"""Streaming images of any size: work in row bands one chunk (or tile) high, never holding the whole image.

A band of a 30000-pixel-wide RGB image 256 rows high is 23 MB; zarr codes the chunks of a band
concurrently (the codec runs in threads, torch releases the GIL), so both cores are busy.

Seamless chunks (docs/large-images.md, "Tile seams"): writers that see the neighbouring pixels analyse
each chunk with ANALYSIS_HALO pixels of them around it (`encoded_bands`), and readers synthesise each
tile of the output from its latent plus SYNTHESIS_HALO latent pixels of the neighbouring chunks
(`synthesise_in_tiles`, `seamless_bands`). Both halos cover their transform's reach (its receptive field,
30 pixels on each side), so chunk borders decode as if the image had been coded in one piece; the chunks
themselves stay ordinary chunks that decode standalone.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

ANALYSIS_HALO = 32  # pixels of real neighbours analysed with each chunk: g_a reaches 30 px, rounded up to 16
SYNTHESIS_HALO = 2  # latent pixels of neighbouring chunks synthesised with each tile: g_s reaches 30 px
SYNTHESIS_TILE = 1024  # pixels: the synthesis runs on tiles this large (plus the halo), bounding its memory


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


# -- encoder side: each chunk analysed with its real neighbours -----------------------------------------
def context_span(span: slice, size: int, extent: int, halo: int) -> tuple[slice, int]:
    """The pixels to analyse with a chunk covering `span` of an axis of `size` pixels whose latent covers
    `extent` pixels from span.start: `halo` more on each side, clamped to the image; and the chunk's offset
    in them, rounded down to a multiple of 16 so that the two latent grids align."""
    from .models import DOWNSAMPLING

    before = min(halo, span.start // DOWNSAMPLING * DOWNSAMPLING)
    return slice(span.start - before, min(size, span.start + extent + halo)), before


def encoded_bands(read: Callable[[slice], np.ndarray], height: int, width: int, chunk: tuple[int, int], codec,
                  pool, halo: int | None = ANALYSIS_HALO, stored_shape: Callable[[slice, slice], tuple] | None = None
                  ) -> Iterator[tuple[slice, list[bytes]]]:
    """For each band of chunk rows (`chunk` = (rows, cols) of a chunk): its rows and the bytes of its chunks,
    left to right, coded in `pool`.

    Each chunk is analysed with `halo` pixels (a multiple of 16) of its real neighbours around it, clamped
    at the image border, and its latent cropped to the chunk's own; halo None analyses each chunk alone
    (`codec.encode`, what zarr itself writes). `stored_shape(rows, cols)` is the shape the chunk records,
    default the chunk's pixels cut short at the image edge; zarr arrays record their full chunk shape.
    `read(rows)` returns all columns of those rows; one band plus its halo rows is held at a time.
    """
    from .compression import latent_size
    from .models import DOWNSAMPLING

    if halo is not None and (halo < 0 or halo % DOWNSAMPLING):
        raise ValueError(f"the analysis halo must be a non-negative multiple of {DOWNSAMPLING} pixels, found {halo}")
    stored_shape = stored_shape or (lambda rows, cols: (rows.stop - rows.start, cols.stop - cols.start, 3))
    chunk_rows, chunk_cols = chunk
    for rows in bands(height, chunk_rows):
        if halo is None:
            pixels = read(rows)
            yield rows, list(pool.map(codec.encode, [pixels[:, cols] for cols in bands(width, chunk_cols)]))
            continue
        # the pixels under the latent of any chunk of the band (it reaches past a chunk cut short at the edge)
        extent_rows, extent_cols = DOWNSAMPLING * latent_size(chunk_rows), DOWNSAMPLING * latent_size(chunk_cols)
        context_rows, top = context_span(rows, height, extent_rows, halo)
        pixels = read(context_rows)

        def encode(cols: slice, rows=rows, pixels=pixels, top=top) -> bytes:
            context_cols, left = context_span(cols, width, extent_cols, halo)
            shape = stored_shape(rows, cols)
            return codec.encode_latent(codec.analyse_in_context(pixels[:, context_cols], (top, left), shape), shape)

        yield rows, list(pool.map(encode, bands(width, chunk_cols)))


# -- decoder side: each tile synthesised with its neighbours' latents ----------------------------------
@dataclass(frozen=True)
class LatentWindow:
    """Part of an image's dequantized latent: `latent` (1, M, h, w) holds its latent rows and columns
    from (`top`, `left`) on."""

    latent: np.ndarray
    top: int
    left: int

    @property
    def rows(self) -> slice:
        return slice(self.top, self.top + self.latent.shape[-2])

    @property
    def cols(self) -> slice:
        return slice(self.left, self.left + self.latent.shape[-1])


def latent_span(span: slice, halo: int, limit: slice) -> slice:
    """The latent pixels that pixels `span` of an axis depend on, plus `halo` on each side, within `limit`."""
    from .compression import latent_size
    from .models import DOWNSAMPLING

    return slice(max(limit.start, span.start // DOWNSAMPLING - halo), min(limit.stop, latent_size(span.stop) + halo))


def synthesise_in_tiles(window: LatentWindow, rows: slice, cols: slice, synthesise, halo: int = SYNTHESIS_HALO,
                        tile: int = SYNTHESIS_TILE) -> np.ndarray:
    """uint8 pixels `rows` x `cols` (image coordinates) of the latent in `window`, synthesised tile by tile,
    each tile from its own latent plus `halo` latent pixels around it (as far as the window reaches).

    `synthesise(latent, rows, cols)` returns pixels `rows` x `cols` of the synthesis of a latent (1, M, h, w).
    """
    from .models import DOWNSAMPLING

    out = np.empty((rows.stop - rows.start, cols.stop - cols.start, 3), np.uint8)
    for out_rows, out_cols in grid(*out.shape[:2], tile):
        tile_rows = slice(rows.start + out_rows.start, rows.start + out_rows.stop)
        tile_cols = slice(cols.start + out_cols.start, cols.start + out_cols.stop)
        need_rows, need_cols = latent_span(tile_rows, halo, window.rows), latent_span(tile_cols, halo, window.cols)
        latent = window.latent[..., need_rows.start - window.top : need_rows.stop - window.top,
                               need_cols.start - window.left : need_cols.stop - window.left]
        out[out_rows, out_cols] = synthesise(latent, shifted(tile_rows, -DOWNSAMPLING * need_rows.start),
                                             shifted(tile_cols, -DOWNSAMPLING * need_cols.start))[0]
    return out


def seamless_bands(latent_bands: Iterator[np.ndarray], height: int, width: int, band: int, synthesise,
                   halo: int = SYNTHESIS_HALO) -> Iterator[np.ndarray]:
    """Pixel bands `band` rows high (a multiple of 16) from the dequantized latents (1, M, band/16, W') of
    the same bands, given in order: each band is synthesised with the last `halo` latent rows of the band
    above and the first of the band below (and `halo` columns across its tiles), so at most three bands of
    latent are held."""
    from .models import DOWNSAMPLING

    if band % DOWNSAMPLING or halo < 0:
        raise ValueError(f"seamless bands are a multiple of {DOWNSAMPLING} rows high with a halo >= 0; found bands "
                         f"of {band} rows, a halo of {halo} latent rows")
    halo = min(halo, band // DOWNSAMPLING)  # the context comes from the next band only: bands of 16 rows get 1
    above, current = None, next(latent_bands)
    for rows in bands(height, band):
        below = next(latent_bands, None)
        nothing = current[..., :0, :]
        context_above = nothing if above is None else above[..., above.shape[-2] - halo :, :]
        context_below = nothing if below is None else below[..., :halo, :]
        window = LatentWindow(np.concatenate([context_above, current, context_below], axis=-2),
                              rows.start // DOWNSAMPLING - context_above.shape[-2], 0)
        yield synthesise_in_tiles(window, rows, slice(0, width), synthesise, halo)
        above, current = current, below


def synthesis_with(loaded) -> Callable[[np.ndarray, slice, slice], np.ndarray]:
    """`synthesise(latent, rows, cols)` with a loaded model, its convolutions independent of the thread count
    (as the codec's own decode)."""
    from .codec import thread_count_independent_convolutions
    from .compression import synthesise_latent

    def synthesise(latent: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        with thread_count_independent_convolutions():
            return synthesise_latent(loaded.model, latent, rows, cols, loaded.device)

    return synthesise


def shifted(span: slice, by: int) -> slice:
    return slice(span.start + by, span.stop + by)
