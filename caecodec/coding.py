"""Entropy coding of integer latents with constriction's ANS coder and fixed integer CDF tables.

Symbols are coded per latent channel with that channel's table. Each table has one extra last bin,
the escape: a symbol outside the table codes the escape and its exact value goes to a side list
(zigzag LEB128 varints), so every latent round-trips bit for bit whatever the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

PRECISION = 16  # bits of the integer CDF tables, as in CompressAI's checkpoints
# Latent positions any chunk may claim whatever its payload (a 512 x 512 image, tens of MB to
# synthesise): bigger claims must be backed by enough ANS words, see `check_payload`.
UNCHECKED_POSITIONS = 1 << 10


def quantized_cdf(probabilities: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Integer CDF with total 2**precision and no empty bin: CompressAI's `pmf_to_quantized_cdf`.

    Ported so that tables we build match the ones CompressAI stores in its checkpoints.
    """
    total = 1 << precision
    freqs = np.round(np.asarray(probabilities, dtype=np.float64) * total).astype(np.int64)
    freqs = (total * freqs) // max(int(freqs.sum()), 1)
    cdf = np.concatenate([[0], np.cumsum(freqs)])
    cdf[-1] = total
    for i in range(len(cdf) - 1):
        if cdf[i] != cdf[i + 1]:
            continue
        widths = np.diff(cdf)
        candidates = np.flatnonzero(widths > 1)
        steal = int(candidates[np.argmin(widths[candidates])])  # the narrowest bin that can give one
        if steal < i:
            cdf[steal + 1 : i + 1] -= 1
        else:
            cdf[i + 1 : steal + 1] += 1
    return cdf.astype(np.int32)


@dataclass(frozen=True)
class CdfTables:
    """Per-channel integer CDFs, CompressAI's `_quantized_cdf`, `_cdf_length`, `_offset`, plus the medians.

    Channel c codes `index = round(y - medians[c]) - offset[c]` in `[0, cdf_length[c] - 2)`; index
    `cdf_length[c] - 2` is the escape.
    """

    quantized_cdf: np.ndarray  # (C, L) int32
    cdf_length: np.ndarray  # (C,) int32
    offset: np.ndarray  # (C,) int32
    medians: np.ndarray  # (C,) float32

    @property
    def channels(self) -> int:
        return len(self.cdf_length)

    @cached_property
    def min_bits_per_position(self) -> float:
        """A lower bound on the ANS bits of one latent position (one symbol per channel).

        Every symbol costs at least -log2 of its channel's largest probability; ANS's integer rounding
        can save a little of that, so 0.01 bit per symbol is taken off.
        """
        pmf = np.diff(self.quantized_cdf.astype(np.int64), axis=1)
        in_table = np.arange(pmf.shape[1])[None, :] < (self.cdf_length - 1)[:, None]
        largest = np.where(in_table, pmf, 0).max(axis=1) / (1 << PRECISION)
        return float(np.maximum(0.0, -np.log2(largest) - 0.01).sum())

    @cached_property
    def models(self) -> list:
        """One constriction Categorical per channel, built from the integers alone."""
        import constriction  # a native module: its submodules are attributes, not importable paths

        models = []
        for cdf, length in zip(self.quantized_cdf, self.cdf_length):
            pmf = np.diff(cdf[:length].astype(np.int64)).astype(np.float64) / (1 << PRECISION)
            models.append(constriction.stream.model.Categorical(pmf, perfect=False))
        return models


def encode(symbols: np.ndarray, tables: CdfTables) -> tuple[np.ndarray, bytes]:
    """Code `symbols` (B, C, H, W) int32; return the ANS words (uint32) and the packed escape values."""
    import constriction

    per_channel = np.ascontiguousarray(symbols.transpose(1, 0, 2, 3)).reshape(tables.channels, -1)
    indexes = per_channel - tables.offset[:, None]
    escape = (tables.cdf_length - 2)[:, None]
    out_of_range = (indexes < 0) | (indexes >= escape)
    indexes = np.where(out_of_range, escape, indexes).astype(np.int32)
    coder = constriction.stream.stack.AnsCoder()
    for channel in reversed(range(tables.channels)):  # a stack: the last channel encoded decodes first
        coder.encode_reverse(indexes[channel], tables.models[channel])
    words = coder.get_compressed()
    check_payload(len(words), per_channel.shape[1], tables)  # never write a chunk that decoders refuse
    return words, pack_varints(per_channel[out_of_range])


def check_payload(n_words: int, positions: int, tables: CdfTables) -> None:
    """Refuse more latent positions than `n_words` ANS words can hold, before anything is allocated for them.

    An exhausted ANS stack decodes each table's first symbol for free, so without this a few bytes
    could claim billions of symbols. Half the lower bound is required (a margin for ANS's start-up),
    and only for claims above UNCHECKED_POSITIONS, so no chunk of a real image is ever refused.
    """
    if positions <= UNCHECKED_POSITIONS:
        return
    needed_bits = positions * tables.min_bits_per_position / 2
    if needed_bits > 32 * n_words + 64:
        raise ValueError(f"{positions} latent positions need at least {needed_bits:.0f} bits of ANS words, "
                         f"the chunk has {32 * n_words}")


def decode(words: np.ndarray, escapes: bytes, shape: tuple[int, int, int, int], tables: CdfTables) -> np.ndarray:
    """Inverse of `encode`: the symbols (B, C, H, W) int32. Raises ValueError on inconsistent input."""
    import constriction

    batch, channels, height, width = shape
    if channels != tables.channels:
        raise ValueError(f"latent has {channels} channels, the model's tables {tables.channels}")
    count = batch * height * width
    check_payload(len(words), count, tables)
    coder = constriction.stream.stack.AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))
    indexes = np.empty((channels, count), dtype=np.int32)
    for channel in range(channels):
        indexes[channel] = coder.decode(tables.models[channel], count)
    if not coder.is_empty():
        raise ValueError("entropy-coded data has bytes left over after the last symbol")
    escape = (tables.cdf_length - 2)[:, None]
    out_of_range = indexes == escape
    values = unpack_varints(escapes)
    if len(values) != int(out_of_range.sum()):
        raise ValueError(f"expected {int(out_of_range.sum())} escaped values, found {len(values)}")
    per_channel = indexes + tables.offset[:, None]
    per_channel[out_of_range] = values
    return np.ascontiguousarray(per_channel.reshape(channels, batch, height, width).transpose(1, 0, 2, 3))


_VARINT_MAX_BYTES = 5  # a zigzagged int32 needs at most 32 bits = 5 groups of 7


def pack_varints(values: np.ndarray) -> bytes:
    """Zigzag LEB128: small magnitudes of either sign take one byte."""
    v = values.astype(np.int64)
    zigzag = ((v << 1) ^ (v >> 63)).astype(np.uint64)
    shifts = np.arange(_VARINT_MAX_BYTES, dtype=np.uint64) * np.uint64(7)
    groups = ((zigzag[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    lengths = 1 + (zigzag[:, None] >= (np.uint64(1) << shifts[1:])).sum(axis=1)
    used = np.arange(_VARINT_MAX_BYTES)[None, :] < lengths[:, None]
    more = np.arange(_VARINT_MAX_BYTES)[None, :] < (lengths[:, None] - 1)
    groups |= (more * 0x80).astype(np.uint8)
    return groups[used].tobytes()


def unpack_varints(data: bytes) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    if len(raw) == 0:
        return np.zeros(0, dtype=np.int32)
    ends = np.flatnonzero(raw < 0x80)
    if len(ends) == 0 or ends[-1] != len(raw) - 1:
        raise ValueError("escape values end in the middle of a number")
    starts = np.concatenate([[0], ends[:-1] + 1])
    if np.any(ends - starts >= _VARINT_MAX_BYTES):
        raise ValueError("an escape value is longer than 32 bits")
    position = np.arange(len(raw)) - np.repeat(starts, ends - starts + 1)
    parts = (raw & 0x7F).astype(np.uint64) << (position.astype(np.uint64) * np.uint64(7))
    zigzag = np.add.reduceat(parts, starts)
    if np.any(zigzag > 0xFFFFFFFF):
        raise ValueError("an escape value is outside the int32 range")
    values = (zigzag >> np.uint64(1)).astype(np.int64) ^ -(zigzag & np.uint64(1)).astype(np.int64)
    return values.astype(np.int32)
