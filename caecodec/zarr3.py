"""The native zarr 3 codec: an ArrayBytesCodec (the array's serializer) around the numcodecs codec's core.

    zarr.create_array(store, shape=(512, 768, 3), chunks=(256, 256, 3), dtype="uint8",
                      serializer=caecodec.CAECodec(quality=8), compressors=None)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration

from . import zoo
from .bitstream import ChunkError
from .codec import ConvolutionalAutoencoder

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

CODEC_NAME = "caecodec.cae"


@dataclass(frozen=True)
class CAECodec(ArrayBytesCodec):
    """zarr 3 serializer for uint8 RGB arrays (..., H, W, 3) whose chunks span all three channels."""

    is_fixed_size = False

    quality: int = 8
    metric: str = "mse"
    gpu: bool = True
    weights: str = "bundled"
    partial_decompress: bool = False
    weights_version: int | None = None
    refine: int = 0
    _core: ConvolutionalAutoencoder = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        zoo.check_configuration(self.quality, self.metric)
        core = ConvolutionalAutoencoder(self.quality, self.metric, self.gpu, self.weights, self.partial_decompress,
                                        self.weights_version, self.refine)
        object.__setattr__(self, "_core", core)

    @classmethod
    def from_dict(cls, data: dict) -> CAECodec:
        _, configuration = parse_named_configuration(data, CODEC_NAME, require_configuration=False)
        return cls(**(configuration or {}))

    def to_dict(self) -> dict:
        configuration = {key: value for key, value in self._core.get_config().items() if key != "id"}
        return {"name": CODEC_NAME, "configuration": configuration}

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        native = dtype.to_native_dtype()
        if self.partial_decompress:
            if native != np.float32:
                raise ValueError(f"caecodec latent arrays are float32, found {native}")
            return
        if native != np.uint8:
            raise ValueError(f"caecodec compresses uint8 RGB images; expected dtype uint8, found {native}")
        if len(shape) < 3 or shape[-1] != 3:
            raise ValueError(f"caecodec compresses RGB arrays of shape (..., H, W, 3); found shape {shape}")
        chunk_shape = getattr(chunk_grid, "chunk_shape", None)
        if chunk_shape is not None and chunk_shape[-1] != 3:
            raise ValueError(f"caecodec chunks must hold all 3 channels; expected chunk shape (..., 3), "
                             f"found {chunk_shape}")

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError  # variable size

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        encoded = self._core.encode(chunk_array.as_numpy_array())  # the core checks the chunk
        return chunk_spec.prototype.buffer.from_bytes(encoded)

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        decoded = self._core.decode(chunk_bytes.as_numpy_array())
        if decoded.shape != tuple(chunk_spec.shape):
            raise ChunkError(f"chunk decodes to shape {decoded.shape}, the array expects {tuple(chunk_spec.shape)}")
        return chunk_spec.prototype.nd_buffer.from_numpy_array(decoded)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)
