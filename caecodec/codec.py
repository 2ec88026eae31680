"""The numcodecs codec: RGB uint8 chunks (..., H, W, 3) to caecodec chunk bytes and back."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np
from numcodecs.abc import Codec
from numcodecs.compat import ndarray_copy

from . import bitstream, zoo
from .bitstream import ChunkError, Header


def check_weights_version(version, weights: str) -> None:
    if version is None:
        return
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"weights_version must be a bundled weights version (an integer from 1), found {version!r}")
    if weights != "bundled":
        raise ValueError(f"weights_version pins a version of the bundled weights; found weights={weights!r}")


def check_refine(iterations) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"refine is a number of refinement iterations, an integer from 0; found {iterations!r}")
    return iterations


def check_chunk(chunk) -> np.ndarray:
    """The chunk as a uint8 array (..., H, W, 3), or a ValueError naming what is wrong with it."""
    array = np.asarray(chunk)
    if array.dtype != np.uint8:
        raise ValueError(f"caecodec compresses uint8 RGB images; expected dtype uint8, found {array.dtype}")
    if array.ndim < 3 or array.shape[-1] != 3:
        raise ValueError(f"caecodec compresses RGB images of shape (..., H, W, 3); found shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"caecodec cannot compress an empty chunk of shape {array.shape}")
    if array.ndim > bitstream.MAX_NDIM:
        raise ValueError(f"caecodec chunks have at most {bitstream.MAX_NDIM} dimensions, found {array.ndim}")
    return array


class ConvolutionalAutoencoder(Codec):
    """Learned compression of RGB chunks with Ballé et al.'s factorized-prior autoencoder.

    quality: 1 (smallest) to 8 (best fidelity); metric: the distortion the weights were trained for,
    "mse" or "ms-ssim"; gpu: run the transforms on CUDA when present (else the CPU, silently);
    weights: "bundled" (the package's own), "compressai" (CompressAI's published files, downloaded
    once) or the path of a CompressAI FactorizedPrior checkpoint; partial_decompress: decode to the
    float32 latent (..., ceil(H/16), ceil(W/16), M) instead of pixels, skipping the synthesis transform;
    weights_version: the bundled weights version to write with (default: the newest installed). Pin it to
    keep an array written over time in one latent space: chunks of other versions still decode (each chunk
    names its version), but their latents are not comparable. refine: encoder-side refinement, the number
    of Adam iterations that optimise each chunk's latent for its level's rate-distortion loss before coding
    (default 0: the analysis transform's latent as is). Each iteration costs a synthesis forward and backward
    pass, about two plain encodes; the chunks are ordinary chunks that any caecodec decodes (docs/refinement.md).
    """

    codec_id = "caecodec.cae"

    def __init__(self, quality: int = 8, metric: str = "mse", gpu: bool = True, weights: str = "bundled",
                 partial_decompress: bool = False, weights_version: int | None = None, refine: int = 0):
        zoo.check_configuration(quality, metric)
        self.refine = check_refine(refine)
        if not isinstance(weights, str):
            weights = str(weights)
        check_weights_version(weights_version, weights)
        self.weights_version = weights_version
        self.quality = quality
        self.metric = metric
        self.gpu = bool(gpu)
        self.weights = weights
        self.partial_decompress = bool(partial_decompress)

    # -- configuration -------------------------------------------------------------------------
    def get_config(self) -> dict:
        config = {"id": self.codec_id, "quality": self.quality, "metric": self.metric, "gpu": self.gpu}
        if self.weights != "bundled":
            config["weights"] = self.weights
        if self.partial_decompress:
            config["partial_decompress"] = True
        if self.weights_version is not None:
            config["weights_version"] = self.weights_version
        if self.refine:
            config["refine"] = self.refine
        return config

    def __repr__(self) -> str:
        parts = [f"quality={self.quality}", f"metric={self.metric!r}", f"gpu={self.gpu}"]
        if self.weights != "bundled":
            parts.append(f"weights={self.weights!r}")
        else:
            parts.append(f"weights={_bundled_description()!r}")
        if self.partial_decompress:
            parts.append("partial_decompress=True")
        if self.weights_version is not None:
            parts.append(f"weights_version={self.weights_version}")
        if self.refine:
            parts.append(f"refine={self.refine}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # -- models --------------------------------------------------------------------------------
    def _model(self, version: int | None = None):
        """The model of bundled weights `version`; by default the one this codec writes with."""
        from .weights import load, resolve_device

        version = self.weights_version if version is None else version
        return load(self.quality, self.metric, self.weights, version, resolve_device(self.gpu))

    def latent_channels(self) -> int:
        return self._model().tables.channels

    def _refinement(self):
        from .refinement import Refinement

        return Refinement(self.refine, self.quality, self.metric) if self.refine else None

    # -- coding --------------------------------------------------------------------------------
    def encode(self, buf) -> bytes:
        from .compression import analyse

        if self.partial_decompress:
            raise ValueError("this codec is in latent mode (partial_decompress=True): it decodes latents and cannot "
                             "encode; write images with partial_decompress=False")
        chunk = check_chunk(buf)
        loaded = self._model()
        images = chunk.reshape(-1, *chunk.shape[-3:])
        refinement = self._refinement()
        with thread_count_independent_convolutions():
            symbols = np.concatenate([analyse(loaded.model, image[None], loaded.tables, loaded.device, refinement)
                                      for image in images])
        return self.encode_latent(symbols, chunk.shape)

    def analyse_in_context(self, region: np.ndarray, offset: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
        """The symbols of one image chunk of `shape` (..., H, W, 3) that starts `offset` = (rows, cols) pixels
        (multiples of 16) into `region` (uint8 (h, w, 3): the chunk plus real neighbouring pixels), analysed
        with that context; `encode_latent` turns them into an ordinary chunk. See docs/large-images.md."""
        from .compression import analyse_in_context, latent_size

        loaded = self._model()
        with thread_count_independent_convolutions():
            return analyse_in_context(loaded.model, check_chunk(region), loaded.tables, offset,
                                      (latent_size(shape[-3]), latent_size(shape[-2])), loaded.device,
                                      self._refinement())

    def encode_latent(self, symbols: np.ndarray, shape: tuple[int, ...]) -> bytes:
        """The chunk bytes of a chunk of `shape` (..., H, W, 3) whose latent symbols are given, int32
        (images, M, ceil(H/16), ceil(W/16)): the same format as `encode`, decoding to exactly these symbols."""
        from . import coding
        from .compression import latent_size

        shape = tuple(int(d) for d in shape)
        loaded = self._model()
        images = int(np.prod(shape[:-3], dtype=np.int64))
        expected = (images, loaded.tables.channels, latent_size(shape[-3]), latent_size(shape[-2]))
        if symbols.shape != expected or symbols.dtype != np.int32:
            raise ValueError(f"a chunk of shape {shape} has int32 symbols of shape {expected}; found "
                             f"{symbols.dtype} {symbols.shape}")
        words, escapes = coding.encode(symbols, loaded.tables)
        header = Header(self.metric, self.quality, loaded.weights_version, loaded.weights_digest,
                        loaded.tables.channels, shape)
        return bitstream.pack(header, words, escapes)

    def decode_symbols(self, buf) -> tuple[Header, np.ndarray, object]:
        """Parse and entropy-decode a chunk: its header, the int32 symbols (B, M, h, w), and the model."""
        from . import coding
        from .compression import latent_size

        header, words, escapes = bitstream.unpack(buf)
        loaded = self._model_for(header)
        latent_shape = (header.images, header.channels, latent_size(header.height), latent_size(header.width))
        try:
            symbols = coding.decode(words, escapes, latent_shape, loaded.tables)
        except ValueError as error:
            raise ChunkError(f"chunk passed its CRC but its entropy-coded data is inconsistent: {error}") from None
        return header, symbols, loaded

    def _model_for(self, header: Header):
        if (header.quality, header.metric) != (self.quality, self.metric):
            raise ChunkError(f"chunk was written at quality {header.quality}, metric {header.metric!r}; this codec "
                             f"is quality {self.quality}, metric {self.metric!r}")
        if header.weights_version and self.weights != "bundled":
            raise ChunkError(f"chunk was written with caecodec's bundled weights version {header.weights_version}; "
                             f"this codec uses weights={self.weights!r}")
        if not header.weights_version and self.weights == "bundled":
            raise ChunkError("chunk was written with weights from a checkpoint file (digest "
                             f"{header.weights_digest.hex()}); open it with weights= that checkpoint")
        from .weights import WeightsError

        try:
            loaded = self._model(header.weights_version or None)
        except WeightsError as error:
            raise ChunkError(str(error)) from None
        if loaded.weights_digest != header.weights_digest:
            raise ChunkError(f"chunk was written with weights of digest {header.weights_digest.hex()}, this codec "
                             f"has {loaded.weights_digest.hex()}")
        if loaded.tables.channels != header.channels:
            raise ChunkError(f"chunk has {header.channels} latent channels, the model {loaded.tables.channels}")
        return loaded

    def decode(self, buf, out=None):
        from .compression import dequantize, synthesise

        header, symbols, loaded = self.decode_symbols(buf)
        if self.partial_decompress:
            latent = dequantize(symbols, loaded.tables).transpose(0, 2, 3, 1)
            result = latent.reshape(*header.shape[:-3], *latent.shape[1:])
        else:
            with thread_count_independent_convolutions():
                pixels = np.concatenate([
                    synthesise(loaded.model, symbols[i : i + 1], loaded.tables, header.height, header.width, loaded.device)
                    for i in range(header.images)
                ])
            result = pixels.reshape(header.shape)
        return ndarray_copy(result, out) if out is not None else result


_onednn_lock = threading.Lock()
_onednn = {"users": 0, "enabled_before": True}


@contextmanager
def thread_count_independent_convolutions():
    """Torch's native convolutions instead of oneDNN's while the transforms run.

    oneDNN splits its sums by thread count, so the same chunk could encode to other bytes, or decode
    a few pixels off by one, with 1 or 2 torch threads. The switch is process-wide, so it is counted:
    off while any codec call is inside, restored when the last one leaves.
    """
    import torch

    with _onednn_lock:
        if _onednn["users"] == 0:
            _onednn["enabled_before"] = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False
        _onednn["users"] += 1
    try:
        yield
    finally:
        with _onednn_lock:
            _onednn["users"] -= 1
            if _onednn["users"] == 0:
                torch.backends.mkldnn.enabled = _onednn["enabled_before"]


def _bundled_description() -> str:
    from .weights import latest_version, version_card

    try:
        version = latest_version()
    except ValueError:
        return "bundled (none installed)"
    return f"bundled v{version}" + (" (provisional)" if version_card(version).get("provisional") else "")
