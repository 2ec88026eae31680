"""Shared fixtures. Tests that need ../shared (Kodak, CompressAI references) skip with the reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
KODAK = SHARED / "data" / "kodak"
REFERENCE = SHARED / "reference" / "compressai"
TEST_DATA = Path(__file__).parent / "data"
# A tiny FactorizedPrior (N=8, M=8, random weights, tables built): fast, and independent of the bundled weights.
TINY_CHECKPOINT = TEST_DATA / "tiny_factorized_N8_M8.pth"
SAMPLE = ROOT / "caecodec" / "data" / "sample.png"


def analysis_symbols(codec, images: np.ndarray) -> np.ndarray:
    """The latent symbols of each image of `images` (..., H, W, 3) analysed on its own, computed as the codec
    computes them: with torch's native convolutions (oneDNN's sums differ in the last bits, enough to round a
    latent value near a half the other way: once in 40 noise images at bundled q8)."""
    from caecodec.codec import thread_count_independent_convolutions
    from caecodec.compression import analyse

    loaded = codec._model()
    with thread_count_independent_convolutions():
        return np.concatenate([analyse(loaded.model, image[None], loaded.tables)
                               for image in images.reshape(-1, *images.shape[-3:])])


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the project's ../shared folder), which is absent")
    return path


@pytest.fixture(scope="session")
def sample_image() -> np.ndarray:
    """The bundled sample photo (a 384x512 crop of Kodak kodim23), uint8 (H, W, 3)."""
    from caecodec.evaluation import load_rgb

    return load_rgb(SAMPLE)


@pytest.fixture(scope="session")
def kodak_dir() -> Path:
    return require(KODAK)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return require(REFERENCE)
