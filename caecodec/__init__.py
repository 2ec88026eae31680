"""caecodec: learned image compression as a Zarr chunk codec.

Importing is cheap: torch, zarr and the models load on first use.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "run_benchmark": "caecodec.bench",
    "ConvolutionalAutoencoder": "caecodec.codec",
    "CAECodec": "caecodec.zarr3",
    "ChunkError": "caecodec.bitstream",
    "WeightsError": "caecodec.weights",
    "BottleneckStore": "caecodec.store",
    "open_latents": "caecodec.store",
    "read_seamless": "caecodec.store",
    "write_seamless": "caecodec.store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'caecodec' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
