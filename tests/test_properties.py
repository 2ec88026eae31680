"""Properties of the encoder on arbitrary images: shape and dtype survive, the latent survives bit for bit.

Any uint8 array (..., H, W, 3) with H, W in 1..300 and up to two leading dimensions must round-trip;
the symbols read back from the chunk must be exactly the analysis transform's, and encoding is a
pure function of the pixels. Most examples use the tiny checkpoint (fast); a few the bundled weights.
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from caecodec import ConvolutionalAutoencoder
from caecodec.compression import dequantize, latent_size

from conftest import TINY_CHECKPOINT, analysis_symbols

# CI runs a few dozen examples; CAECODEC_PROPERTY_SCALE=10 multiplies them for the long run (docs/RELIABILITY.md)
SCALE = int(os.environ.get("CAECODEC_PROPERTY_SCALE", "1"))
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def rgb_chunks(draw, max_side: int = 300, max_pixels: int = 90_000) -> np.ndarray:
    """uint8 (..., H, W, 3) with 0-2 leading dimensions; smooth, noisy or flat content."""
    leading = draw(st.lists(st.integers(1, 2), max_size=2))
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    images = int(np.prod(leading, dtype=int))
    height = max(1, min(height, max_pixels // (images * width)))  # keep CI time bounded
    shape = (*leading, height, width, 3)
    kind = draw(st.sampled_from(["noise", "gradient", "flat", "elements"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if kind == "gradient":
        ramp = np.add.outer(np.arange(height), np.arange(width))[..., None] * rng.integers(1, 5, 3)
        return np.broadcast_to(ramp % 256, shape).astype(np.uint8)
    if kind == "flat":
        return np.full(shape, draw(st.integers(0, 255)), dtype=np.uint8)
    return draw(arrays(np.uint8, shape, elements=st.sampled_from([0, 1, 127, 128, 254, 255])))


def check_round_trip(pixels_codec, latent_codec, chunk: np.ndarray) -> None:
    data = pixels_codec.encode(chunk)
    assert pixels_codec.encode(chunk.copy()) == data, "encoding is not a pure function of the pixels"

    decoded = pixels_codec.decode(data)
    assert decoded.shape == chunk.shape and decoded.dtype == np.uint8

    header, symbols, loaded = pixels_codec.decode_symbols(data)
    assert header.shape == chunk.shape
    np.testing.assert_array_equal(symbols, analysis_symbols(pixels_codec, chunk))

    latent = latent_codec.decode(data)
    height, width = latent_size(chunk.shape[-3]), latent_size(chunk.shape[-2])
    assert latent.shape == (*chunk.shape[:-3], height, width, loaded.tables.channels) and latent.dtype == np.float32
    expected = dequantize(symbols, loaded.tables).transpose(0, 2, 3, 1).reshape(latent.shape)
    assert np.array_equal(latent, expected)  # bit for bit


TINY_PIXELS = ConvolutionalAutoencoder(weights=str(TINY_CHECKPOINT), gpu=False)
TINY_LATENTS = ConvolutionalAutoencoder(weights=str(TINY_CHECKPOINT), gpu=False, partial_decompress=True)


@settings(max_examples=40 * SCALE, **SETTINGS)
@given(rgb_chunks())
def test_tiny_checkpoint_round_trips_any_rgb_chunk(chunk):
    check_round_trip(TINY_PIXELS, TINY_LATENTS, chunk)


@settings(max_examples=6 * SCALE, **SETTINGS)
@given(rgb_chunks(max_side=300, max_pixels=40_000), st.sampled_from([(1, "mse"), (8, "mse"), (3, "ms-ssim")]))
def test_bundled_weights_round_trip_any_rgb_chunk(chunk, configuration):
    quality, metric = configuration
    check_round_trip(ConvolutionalAutoencoder(quality=quality, metric=metric, gpu=False),
                     ConvolutionalAutoencoder(quality=quality, metric=metric, gpu=False, partial_decompress=True), chunk)


@settings(max_examples=20 * SCALE, **SETTINGS)
@given(st.integers(1, 300), st.integers(1, 300))
def test_every_height_and_width_from_1_to_300_keeps_its_shape(height, width):
    chunk = np.random.default_rng(height * 301 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    assert TINY_PIXELS.decode(TINY_PIXELS.encode(chunk)).shape == (height, width, 3)
