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

Tiles are coded independently, so a file is written and read one band of tiles at a time, never holding
more than a band of pixels. Model, quality and metric live in the chunks, not in the container header.
"""

from __future__ import annotations

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
from .tiling import bands

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


def write(path: Path, info: FileInfo, read_band, codec, on_band=None) -> None:
    """Code the image band by band (`read_band(rows) -> uint8 (h, W, 3)`), its tiles in parallel, into `path`."""
    header = json.dumps(asdict(info), sort_keys=True).encode()
    partial = path.with_name(path.name + ".part")
    with open(partial, "wb") as out, _tile_pool() as pool:
        out.write(_PREFIX.pack(MAGIC, VERSION, len(header)) + header + _U32.pack(zlib.crc32(header)))
        for rows in bands(info.height, info.tile):
            band = read_band(rows)
            for chunk in pool.map(codec.encode, [band[:, cols] for cols in bands(info.width, info.tile)]):
                out.write(_U32.pack(len(chunk)) + chunk)
            if on_band is not None:
                on_band(band)
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


def decoded_bands(path: Path, codec) -> tuple[FileInfo, Iterator[np.ndarray]]:
    """The file's info and its pixels as successive bands of `tile` rows, tiles decoded in parallel."""
    handle = open(path, "rb")
    info = read_info(handle, str(path))

    def generate():
        with handle, _tile_pool() as pool:
            for _ in bands(info.height, info.tile):
                tiles = list(pool.map(codec.decode, read_chunks(handle, str(path), info.tiles_per_row)))
                yield np.concatenate(tiles, axis=1)

    return info, generate()


def read_image(path: Path, codec) -> tuple[FileInfo, np.ndarray]:
    """The whole decoded image."""
    info, band_iterator = decoded_bands(path, codec)
    return info, np.concatenate(list(band_iterator), axis=0)
