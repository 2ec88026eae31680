"""The `.cae` file: one image, compressed, with what is needed to restore the file.

Layout of container version 1 (integers little-endian):

    offset  size   field
    0       4      magic b"CAEF"
    4       1      container version (1)
    5       4      header length L
    9       L      header, UTF-8 JSON: {"name": original file name, "size": original file size in bytes,
                   "mode": original colour mode ("RGB", "L", ...), "height", "width", "tile": tile edge T}
    9+L     4      CRC32 of the header bytes
    then, for each tile in row-major order (ceil(height/T) rows of ceil(width/T) tiles, edge tiles cut short):
            4      length n of the tile's chunk
            n      a caecodec chunk (the codec's own bitstream, see caecodec/bitstream.py: model, quality,
                   metric, shape, entropy-coded latent, CRC32), written by ConvolutionalAutoencoder.encode

Every tile is an ordinary chunk that decodes on its own, so a file is written and read one band of tiles at a
time, never holding more than a band of pixels (plus halos). By default the writer analyses each tile with
the real pixels around it and the reader synthesises each band with the latent rows of its neighbours, so
tile borders do not show (docs/large-images.md, "Tile seams"); neither changes the tile's bytes format.
Model, quality and metric live in the chunks, not in the container header.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from . import bitstream
from .tiling import ANALYSIS_HALO, SYNTHESIS_HALO, bands, encoded_bands, seamless_bands, synthesis_with

MAGIC = b"CAEF"
VERSION = 1
DEFAULT_TILE = 1024  # a multiple of 16, so only the image's own bottom/right edge is padded
_PREFIX = struct.Struct("<4sBI")
_U32 = struct.Struct("<I")


class ContainerError(ValueError):
    """A file that is not a readable .cae file; the message names the cause."""


@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int
    mode: str
    height: int
    width: int
    tile: int

    @property
    def tiles_per_row(self) -> int:
        return -(-self.width // self.tile)


def _tile_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="caecodec-tile")


def write(path: Path, info: FileInfo, read_band, codec, on_band=None, halo: int | None = ANALYSIS_HALO) -> None:
    """Code the image band by band (`read_band(rows) -> uint8 (h, W, 3)`), its tiles in parallel, into `path`.

    Each tile is analysed with `halo` pixels of its neighbours (None: alone); `on_band(pixels)` counts progress.
    """
    header = json.dumps(asdict(info), sort_keys=True).encode()
    partial = path.with_name(path.name + ".part")
    with open(partial, "wb") as out, _tile_pool() as pool:
        out.write(_PREFIX.pack(MAGIC, VERSION, len(header)) + header + _U32.pack(zlib.crc32(header)))
        for rows, chunks in encoded_bands(read_band, info.height, info.width, (info.tile, info.tile), codec,
                                          pool, halo):
            for chunk in chunks:
                out.write(_U32.pack(len(chunk)) + chunk)
            if on_band is not None:
                on_band((rows.stop - rows.start) * info.width)
    os.replace(partial, path)


def read_info(handle: BinaryIO, name: str) -> FileInfo:
    prefix = handle.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size or prefix[:4] != MAGIC:
        raise ContainerError(f"{name}: not a .cae file (expected magic {MAGIC!r}, found {prefix[:4]!r})")
    _, version, length = _PREFIX.unpack(prefix)
    if version != VERSION:
        raise ContainerError(f"{name}: .cae container version {version}; this caecodec reads version {VERSION}")
    header = handle.read(length)
    crc = handle.read(_U32.size)
    if len(crc) < _U32.size or _U32.unpack(crc)[0] != zlib.crc32(header):
        raise ContainerError(f"{name}: .cae header is corrupted or truncated (CRC32 mismatch)")
    try:
        return FileInfo(**json.loads(header))
    except (ValueError, TypeError) as error:
        raise ContainerError(f"{name}: .cae header is not valid ({error})") from None


def read_chunks(handle: BinaryIO, name: str, count: int) -> list[bytes]:
    chunks = []
    for _ in range(count):
        length = handle.read(_U32.size)
        chunk = handle.read(_U32.unpack(length)[0]) if len(length) == _U32.size else b""
        if not chunk:
            raise ContainerError(f"{name}: .cae file is truncated (a tile is missing)")
        chunks.append(chunk)
    return chunks


def first_chunk_header(path: Path) -> tuple[FileInfo, bitstream.Header]:
    """The file's info and the codec header of its first tile (model, quality, metric)."""
    with open(path, "rb") as handle:
        info = read_info(handle, str(path))
        (chunk,) = read_chunks(handle, str(path), 1)
    return info, bitstream.unpack(chunk)[0]


def decoded_bands(path: Path, codec, halo: int | None = SYNTHESIS_HALO) -> tuple[FileInfo, Iterator[np.ndarray]]:
    """The file's info and its pixels as successive bands of `tile` rows, tiles entropy-decoded in parallel.

    Each band is synthesised with `halo` latent rows and columns of its neighbouring tiles; halo None decodes
    every tile alone (`codec.decode`).
    """
    handle = open(path, "rb")
    info = read_info(handle, str(path))

    def tile_rows() -> Iterator[list[bytes]]:
        for _ in bands(info.height, info.tile):
            yield read_chunks(handle, str(path), info.tiles_per_row)

    def independent():
        with handle, _tile_pool() as pool:
            for chunks in tile_rows():
                yield np.concatenate(list(pool.map(codec.decode, chunks)), axis=1)

    def seamless():
        with handle, _tile_pool() as pool:
            latents = latent_bands((list(pool.map(codec.decode_symbols, chunks)) for chunks in tile_rows()), path)
            first_band, loaded = next(latents)
            bands_of_latent = itertools.chain([first_band], (latent for latent, _ in latents))
            yield from seamless_bands(bands_of_latent, info.height, info.width, info.tile, synthesis_with(loaded), halo)

    return info, independent() if halo is None else seamless()


def latent_bands(decoded_tile_rows: Iterator[list], path: Path) -> Iterator[tuple[np.ndarray, object]]:
    """Each band's dequantized latent (1, M, h', W') from its decoded tiles ((header, symbols, model) each), with
    the model; a file whose tiles name different weights cannot be synthesised across them."""
    from .compression import dequantize

    first = None
    for decoded in decoded_tile_rows:
        for _, _, loaded in decoded:
            first = loaded if first is None else first
            if loaded is not first:
                raise ContainerError(f"{path}: its tiles were written with different weights (versions "
                                     f"{first.weights_version} and {loaded.weights_version}); decompress it with "
                                     "--independent-chunks")
        yield np.concatenate([dequantize(symbols, loaded.tables) for _, symbols, loaded in decoded], axis=-1), first


def read_image(path: Path, codec) -> tuple[FileInfo, np.ndarray]:
    """The whole decoded image."""
    info, band_iterator = decoded_bands(path, codec)
    return info, np.concatenate(list(band_iterator), axis=0)
