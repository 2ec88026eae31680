"""Compressed-domain access: a read-only zarr store in which caecodec arrays read as their latents.

    latents = zarr.open(caecodec.BottleneckStore("images.zarr"), mode="r")
    z = caecodec.open_latents("images.zarr", path="kodim23")   # float32 (..., H', W', M)

Only metadata documents are rewritten (dtype float32, latent shape and chunks, the codec switched to
``partial_decompress``); chunk keys and chunk bytes pass through unchanged, so reading a latent chunk
entropy-decodes it and skips the synthesis transform.

Edge semantics. zarr pads an edge chunk to the full chunk shape before encoding, so every chunk decodes
to ceil(chunk/16) latent rows (and columns). Along a spatial axis of `size` pixels cut into chunks of
`chunk`, the latent axis therefore has ceil(chunk/16) rows per full chunk plus ceil(rest/16) for a last
partial chunk of `rest` pixels: every latent row that covers a real pixel is visible, rows that cover
only padding are cropped. Latent chunk i is exactly pixel chunk i (same grid, same chunk keys), also when
the chunk size is not a multiple of 16: a latent row then covers pixels of one chunk only, never two.

Seamless pixels. `write_seamless` writes an image into a caecodec array with every chunk analysed together
with the real pixels around it; `read_seamless` reads a region by synthesising the latents of its chunks and
of a halo of their neighbours together. Both keep the chunks ordinary chunks (plain zarr reads them) and make
chunk borders decode as if the image had been coded in one piece (docs/large-images.md, "Tile seams").
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from .compression import latent_size
from .models import DOWNSAMPLING
from .tiling import ANALYSIS_HALO, SYNTHESIS_HALO, LatentWindow, encoded_bands, latent_span, synthesis_with
from .tiling import synthesise_in_tiles
from .zarr3 import CODEC_NAME

METADATA_V2 = ".zarray"
CONSOLIDATED_V2 = ".zmetadata"
METADATA_V3 = "zarr.json"


class ReadOnlyError(PermissionError):
    """Raised on any attempt to modify a BottleneckStore."""


class BottleneckStore(WrapperStore):
    """Read-only view of a zarr store (a path, an fsspec URL such as ``file://`` or ``memory://``, or any
    zarr Store) in which every caecodec-compressed array reads as its float32 latent (..., H', W', M).
    Other arrays and groups read unchanged."""

    def __init__(self, path_or_store, mode: str = "r"):
        if mode != "r":
            raise ValueError(f"BottleneckStore is read-only: expected mode 'r', found {mode!r}")
        super().__init__(_read_only_store(path_or_store))

    def _with_store(self, store: Store) -> BottleneckStore:
        return type(self)(store)

    def with_read_only(self, read_only: bool = False) -> BottleneckStore:
        if not read_only:
            _refuse("open it writable")
        return self

    def __repr__(self) -> str:
        return f"BottleneckStore({self._store!r})"

    def __str__(self) -> str:
        return f"bottleneck-{self._store}"

    # -- reading ---------------------------------------------------------------------------------
    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        rewrite = _METADATA_REWRITES.get(key.rsplit("/", 1)[-1])
        if rewrite is None:
            return await self._store.get(key, prototype, byte_range)
        stored = await self._store.get(key, prototype)
        if stored is None:
            return None
        document = rewrite(json.loads(stored.to_bytes()), key)
        return prototype.buffer.from_bytes(_byte_slice(json.dumps(document, indent=2).encode(), byte_range))

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        # through self.get, so that metadata read this way is rewritten too
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def _get_many(self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
                        ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)

    # -- writing: refused ------------------------------------------------------------------------
    @property
    def read_only(self) -> bool:
        return True

    @property
    def supports_writes(self) -> bool:
        return False

    @property
    def supports_deletes(self) -> bool:
        return False

    def _check_writable(self) -> None:
        _refuse("write to it")

    async def set(self, key: str, value: Buffer) -> None:
        _refuse(f"write {key!r}")

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        _refuse(f"write {key!r}")

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        _refuse("write to it")

    async def delete(self, key: str) -> None:
        _refuse(f"delete {key!r}")

    async def delete_dir(self, prefix: str) -> None:
        _refuse(f"delete {prefix!r}")

    async def clear(self) -> None:
        _refuse("clear it")


def open_latents(path_or_store, path: str | None = None):
    """The latent zarr array (float32, (..., H', W', M)) of the caecodec-compressed array at `path`."""
    import zarr

    array = zarr.open_array(BottleneckStore(path_or_store), path=path or "", mode="r")
    if caecodec_configuration(array.metadata.to_dict()) is None:
        raise ValueError(f"{path or 'the root'} of {path_or_store} is not a caecodec-compressed array: expected "
                         f"the codec {CODEC_NAME!r}, found a {array.dtype} array with serializer {array.serializer} "
                         f"and compressors {array.compressors}")
    return array


# -- seamless pixels -----------------------------------------------------------------------------
def write_seamless(array, read: Callable[[slice], np.ndarray], index: tuple[int, ...] = (),
                   halo: int = ANALYSIS_HALO, on_band: Callable[[int], None] | None = None) -> None:
    """Write an image into `array[*index]` (a caecodec zarr array (..., H, W, 3)), every chunk analysed with
    `halo` pixels (a multiple of 16) of the real pixels around it, and store the chunks' bytes directly.

    `read(rows)` returns those rows of the image, all columns; it is called one band of chunk rows (plus the
    halo) at a time, so the image is never held whole. The chunks are ordinary chunks of the array's codec:
    plain zarr reads them. `on_band(pixels)` is told how many pixels each band wrote.
    """
    configuration = _raw_chunk_configuration(array)
    chunks = array.chunks
    if any(size != 1 for size in chunks[:-3]) or len(index) != array.ndim - 3:
        raise ValueError(f"write_seamless writes one image (H, W, 3) of an array whose leading chunk sizes are 1; "
                         f"found chunks {chunks} and index {index} for shape {array.shape}")
    height, width = array.shape[-3:-1]
    stored_shape = tuple(chunks)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="caecodec-chunk") as pool:
        for rows, band in encoded_bands(read, height, width, chunks[-3:-1], _codec(configuration), pool, halo,
                                        lambda rows, cols: stored_shape):
            band_index = rows.start // chunks[-3]
            for column, data in enumerate(band):
                _chunk_path(array, (*index, band_index, column, 0)).set_sync(
                    default_buffer_prototype().buffer.from_bytes(data))
            if on_band is not None:
                on_band((rows.stop - rows.start) * width)


def read_seamless(array, rows: slice = slice(None), cols: slice = slice(None), index: tuple[int, ...] = (),
                  halo: int = SYNTHESIS_HALO) -> np.ndarray:
    """The pixels `array[*index, rows, cols]` of a caecodec zarr array (..., H, W, 3), synthesised across
    chunk borders: the region's latent plus `halo` latent pixels of the neighbouring chunks is read through
    a BottleneckStore (entropy decoding only) and synthesised tile by tile (bounded memory), so that chunk
    borders do not show. Same shape as the plain read. Arrays whose chunks are not multiples of 16 pixels
    (their latent grids do not line up), or that hold other codecs, are read plainly.
    """
    rows, cols = _span(rows, array.shape[-3]), _span(cols, array.shape[-2])
    plain = (*index, rows, cols)
    if rows.start == rows.stop or cols.start == cols.stop or not _seamless_readable(array):
        return np.asarray(array[plain])
    fetched = _FetchedChunks(array.store)  # the region's chunks are read once, for their headers and latents
    latents = open_latents(fetched, path=array.path)
    need_rows = latent_span(rows, halo, slice(0, latents.shape[-3]))
    need_cols = latent_span(cols, halo, slice(0, latents.shape[-2]))
    headers = _region_headers(array, index, need_rows, need_cols, fetched.chunks)
    if not _one_latent_space(headers):
        return np.asarray(array[plain])
    loaded = _codec(caecodec_configuration(array.metadata.to_dict()))._model_for(headers[0])
    latent = np.moveaxis(np.asarray(latents[(*index, need_rows, need_cols)]), -1, 0)[None]
    window = LatentWindow(latent, need_rows.start, need_cols.start)
    return synthesise_in_tiles(window, rows, cols, synthesis_with(loaded), halo)


def _region_headers(array, index: tuple[int, ...], latent_rows: slice, latent_cols: slice,
                    fetched: dict[str, Buffer]) -> list:
    """The chunk headers (None: never written) of the chunks under latent rows x cols of image `index`;
    the chunks' bytes are kept in `fetched` (by store key)."""
    from .bitstream import unpack

    per_chunk = [latent_size(size) for size in array.chunks[-3:-1]]
    blocks = [range(span.start // size, -(-span.stop // size)) for span, size in zip((latent_rows, latent_cols),
                                                                                      per_chunk)]
    first = tuple(at // size for at, size in zip(index, array.chunks))
    headers = []
    for path in (_chunk_path(array, (*first, row, col, 0)) for row in blocks[0] for col in blocks[1]):
        chunk = path.get_sync(prototype=default_buffer_prototype())
        if chunk is not None:
            fetched[path.path] = chunk
        headers.append(None if chunk is None else unpack(chunk.to_bytes())[0])
    return headers


class _FetchedChunks(WrapperStore):
    """A read-only view of a store that serves the chunks already fetched (`chunks`, by key) from memory."""

    def __init__(self, store: Store):
        super().__init__(store if store.read_only else store.with_read_only(True))
        self.chunks: dict[str, Buffer] = {}

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        held = self.chunks.get(key)
        if held is None:
            return await self._store.get(key, prototype, byte_range)
        return prototype.buffer.from_bytes(_byte_slice(held.to_bytes(), byte_range))


def _one_latent_space(headers: list) -> bool:
    """Whether one synthesis can decode the latents of these chunks together: all written (a chunk never
    written reads as zarr's fill value, which has no latent) and by the same weights (an array written over
    time may hold chunks of several weights versions, whose latents are not interchangeable). Otherwise the
    region is read plainly: every chunk decodes with its own weights, and only its seams show."""
    if any(header is None for header in headers):
        return False
    return len({(header.weights_version, header.weights_digest) for header in headers}) == 1


def _seamless_readable(array) -> bool:
    try:
        _raw_chunk_configuration(array)
    except ValueError:
        return False
    return all(size % DOWNSAMPLING == 0 for size in array.chunks[-3:-1])


def _raw_chunk_configuration(array) -> dict:
    """The caecodec configuration of an array whose stored chunks are the codec's own bytes (no other codec)."""
    metadata = array.metadata.to_dict()
    configuration = caecodec_configuration(metadata)
    other_codecs = metadata.get("filters") if metadata.get("zarr_format") == 2 else metadata.get("codecs", ())[1:]
    if configuration is None or other_codecs:
        raise ValueError(f"expected an array whose only codec is {CODEC_NAME!r}; found the metadata "
                         f"{ {k: metadata.get(k) for k in ('compressor', 'filters', 'codecs') if k in metadata} }")
    return configuration


def _codec(configuration: dict):
    from .codec import ConvolutionalAutoencoder

    return ConvolutionalAutoencoder(**{k: v for k, v in configuration.items() if k not in ("id", "partial_decompress")})


def _chunk_path(array, block: tuple[int, ...]):
    return array.store_path / array.metadata.encode_chunk_key(block)


def _span(span: slice, size: int) -> slice:
    start, stop, step = span.indices(size)
    if step != 1:
        raise ValueError(f"seamless reads take contiguous regions; expected a step of 1, found {step}")
    return slice(start, max(start, stop))


# -- metadata ------------------------------------------------------------------------------------
def caecodec_configuration(metadata: dict) -> dict | None:
    """The caecodec codec configuration of an array's metadata (format 2 or 3), or None for other nodes."""
    if metadata.get("zarr_format") == 2:
        compressor = metadata.get("compressor") or {}
        return compressor if compressor.get("id") == CODEC_NAME else None
    if metadata.get("node_type") != "array":
        return None
    for codec in metadata.get("codecs", ()):
        if _codec_name(codec) == CODEC_NAME:
            return codec.get("configuration", {}) if isinstance(codec, dict) else {}
    return None


def latent_geometry(shape, chunks, channels: int) -> tuple[list[int], list[int]]:
    """Latent shape and chunk shape of a pixel array (..., H, W, 3) chunked (..., cH, cW, 3): see the module doc."""
    shape, chunks = list(shape), list(chunks)
    latent_shape, latent_chunks = shape[:-3], chunks[:-3]
    for size, chunk in zip(shape[-3:-1], chunks[-3:-1]):
        full_chunks, rest = divmod(size, chunk)
        latent_shape.append(full_chunks * latent_size(chunk) + latent_size(rest))
        latent_chunks.append(latent_size(chunk))
    return latent_shape + [channels], latent_chunks + [channels]


def _latent_channels(configuration: dict) -> int:
    return _codec(configuration).latent_channels()


def _latent_array_v2(metadata: dict, key: str) -> dict:
    configuration = caecodec_configuration(metadata)
    if configuration is None:
        return metadata
    if metadata.get("filters"):
        raise ValueError(f"{key}: cannot read latents of an array with filters before the caecodec codec "
                         f"(found {metadata['filters']})")
    shape, chunks = latent_geometry(metadata["shape"], metadata["chunks"], _latent_channels(configuration))
    return {**metadata, "shape": shape, "chunks": chunks, "dtype": "<f4", "fill_value": 0.0,
            "compressor": {**configuration, "partial_decompress": True}}


def _latent_node_v3(metadata: dict, key: str) -> dict:
    consolidated = metadata.get("consolidated_metadata")
    if consolidated and consolidated.get("metadata"):
        members = {name: _latent_node_v3(member, f"{key}[{name}]") for name, member in consolidated["metadata"].items()}
        metadata = {**metadata, "consolidated_metadata": {**consolidated, "metadata": members}}
    configuration = caecodec_configuration(metadata)
    if configuration is None:
        return metadata
    codecs = metadata["codecs"]
    if _codec_name(codecs[0]) != CODEC_NAME:
        raise ValueError(f"{key}: cannot read latents of an array whose codecs transform the pixels before the "
                         f"caecodec serializer (found {[_codec_name(c) for c in codecs]})")
    chunk_grid = metadata["chunk_grid"]
    shape, chunks = latent_geometry(metadata["shape"], chunk_grid["configuration"]["chunk_shape"],
                                    _latent_channels(configuration))
    serializer = {"name": CODEC_NAME, "configuration": {**configuration, "partial_decompress": True}}
    return {**metadata, "shape": shape, "data_type": "float32", "fill_value": 0.0,
            "chunk_grid": {**chunk_grid, "configuration": {**chunk_grid["configuration"], "chunk_shape": chunks}},
            "codecs": [serializer, *codecs[1:]]}


def _latent_consolidated_v2(document: dict, key: str) -> dict:
    members = {name: _latent_array_v2(member, f"{key}[{name}]") if name.rsplit("/", 1)[-1] == METADATA_V2 else member
               for name, member in document.get("metadata", {}).items()}
    return {**document, "metadata": members}


_METADATA_REWRITES = {METADATA_V2: _latent_array_v2, CONSOLIDATED_V2: _latent_consolidated_v2,
                      METADATA_V3: _latent_node_v3}


def _codec_name(codec) -> str:
    return codec if isinstance(codec, str) else codec.get("name", "")


# -- helpers -------------------------------------------------------------------------------------
def _read_only_store(path_or_store) -> Store:
    if isinstance(path_or_store, Store):
        return path_or_store if path_or_store.read_only else path_or_store.with_read_only(True)
    if not isinstance(path_or_store, (str, os.PathLike)):
        raise TypeError(f"BottleneckStore opens a path, an fsspec URL or a zarr Store; found {type(path_or_store).__name__}")
    location = os.fspath(path_or_store)
    if "://" in location:
        return FsspecStore.from_url(location, read_only=True)
    if not Path(location).is_dir():
        raise FileNotFoundError(f"no zarr store at {location}: expected a directory")
    return LocalStore(location, read_only=True)


def _byte_slice(data: bytes, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset :]
    return data[-byte_range.suffix :]


def _refuse(action: str):
    raise ReadOnlyError(f"BottleneckStore is a read-only view of latents; cannot {action}. "
                        "Write to the original store instead.")
