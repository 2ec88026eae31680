"""The chunk format: a versioned header, the ANS words, the escaped values, and a CRC32 of it all.

Layout of format version 1 (all integers little-endian):

    offset  size      field
    0       4         magic b"CAEC"
    4       1         format version (1)
    5       1         metric: 0 mse, 1 ms-ssim
    6       1         quality 1-8
    7       1         padding: 0 = replicate the last row/column up to a multiple of 16
    8       2         weights version (0: a checkpoint outside the bundle, identified by the digest)
    10      8         weights digest: first 8 bytes of the sha256 of the weights file
    18      2         latent channels M
    20      1         ndim of the chunk (>= 3)
    21      4*ndim    chunk shape (..., H, W, 3)
    .       4         number of 32-bit ANS words
    .       4         length of the escaped values in bytes
    .       ...       ANS words, then escaped values (zigzag LEB128)
    end-4   4         CRC32 of every byte before it
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"CAEC"
FORMAT_VERSION = 1
METRIC_CODES = ("mse", "ms-ssim")
PADDING_REPLICATE = 0
MAX_NDIM = 8
MAX_CHUNK_BYTES = 1 << 32  # decoded size bound checked before anything is allocated

_FIXED = struct.Struct("<4sBBBBH8sHB")
_LENGTHS = struct.Struct("<II")
_CRC = struct.Struct("<I")


class ChunkError(ValueError):
    """Bytes that are not a chunk this installation can decode; the message names the cause."""


@dataclass(frozen=True)
class Header:
    metric: str
    quality: int
    weights_version: int
    weights_digest: bytes
    channels: int
    shape: tuple[int, ...]
    format_version: int = FORMAT_VERSION

    @property
    def images(self) -> int:
        return int(np.prod(self.shape[:-3], dtype=np.int64))

    @property
    def height(self) -> int:
        return self.shape[-3]

    @property
    def width(self) -> int:
        return self.shape[-2]


def pack(header: Header, words: np.ndarray, escapes: bytes) -> bytes:
    head = _FIXED.pack(
        MAGIC, FORMAT_VERSION, METRIC_CODES.index(header.metric), header.quality, PADDING_REPLICATE,
        header.weights_version, header.weights_digest, header.channels, len(header.shape),
    )
    body = b"".join([
        head, struct.pack(f"<{len(header.shape)}I", *header.shape), _LENGTHS.pack(len(words), len(escapes)),
        np.asarray(words, dtype="<u4").tobytes(), escapes,
    ])
    return body + _CRC.pack(zlib.crc32(body))


def unpack(data) -> tuple[Header, np.ndarray, bytes]:
    """Parse and verify a chunk. Raises ChunkError naming what is wrong; allocates nothing before the CRC passes."""
    data = memoryview(data).cast("B")
    if bytes(data[:4]) != MAGIC:
        raise ChunkError(f"not a caecodec chunk: expected magic {MAGIC!r}, found {bytes(data[:4])!r} "
                         f"({len(data)} bytes)")
    if len(data) < _FIXED.size + _CRC.size:
        raise ChunkError(f"chunk is truncated: {len(data)} bytes, shorter than the smallest header")
    magic, version, metric, quality, padding, weights_version, digest, channels, ndim = _FIXED.unpack_from(data)
    if version > FORMAT_VERSION:
        raise ChunkError(f"chunk has format version {version}; this caecodec reads versions up to "
                         f"{FORMAT_VERSION}: upgrade caecodec")
    if version < 1:
        raise ChunkError(f"chunk has format version {version}, which never existed")
    (stored_crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[:-_CRC.size]) != stored_crc:
        raise ChunkError("chunk is corrupted or truncated: CRC32 mismatch")
    if metric >= len(METRIC_CODES) or not 1 <= quality <= 8 or padding != PADDING_REPLICATE:
        raise ChunkError(f"chunk header has invalid fields: metric {metric}, quality {quality}, padding {padding}")
    if not 3 <= ndim <= MAX_NDIM:
        raise ChunkError(f"chunk has {ndim} dimensions; expected 3 to {MAX_NDIM}")
    offset = _FIXED.size
    if len(data) < offset + 4 * ndim + _LENGTHS.size + _CRC.size:
        raise ChunkError("chunk is truncated inside its header")
    shape = struct.unpack_from(f"<{ndim}I", data, offset)
    offset += 4 * ndim
    n_words, n_escape_bytes = _LENGTHS.unpack_from(data, offset)
    offset += _LENGTHS.size
    if shape[-1] != 3 or min(shape) < 1:
        raise ChunkError(f"chunk shape {shape} is not (..., H, W, 3) with every dimension >= 1")
    if int(np.prod(shape, dtype=np.float64)) > MAX_CHUNK_BYTES:
        raise ChunkError(f"chunk claims shape {shape}, more than {MAX_CHUNK_BYTES} bytes decoded")
    if offset + 4 * n_words + n_escape_bytes + _CRC.size != len(data):
        raise ChunkError(f"chunk length {len(data)} does not match its header "
                         f"({n_words} ANS words, {n_escape_bytes} escape bytes)")
    words = np.frombuffer(data, dtype="<u4", count=n_words, offset=offset).astype(np.uint32)
    escapes = bytes(data[offset + 4 * n_words : len(data) - _CRC.size])
    header = Header(METRIC_CODES[metric], quality, weights_version, bytes(digest), channels, tuple(shape), version)
    return header, words, escapes
