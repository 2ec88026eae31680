"""Concurrency and interrupted writes: threads and processes writing one array, and a writer killed mid-array."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr

from caecodec import CAECodec, ChunkError, ConvolutionalAutoencoder, bitstream

from conftest import SAMPLE, TINY_CHECKPOINT

TINY = str(TINY_CHECKPOINT)
CHUNK = 32
ROW_BANDS = 4  # one writer per band of chunk rows


def make_image(sample: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(sample[: ROW_BANDS * CHUNK * 2 : 2, : 3 * CHUNK])  # 128 x 96: 4 x 3 chunks


def create_array(path: Path, zarr_format: int, shape) -> zarr.Array:
    common = dict(store=str(path), shape=shape, chunks=(CHUNK, CHUNK, 3), dtype="uint8", zarr_format=zarr_format)
    if zarr_format == 2:
        return zarr.create_array(**common, compressors=ConvolutionalAutoencoder(weights=TINY, gpu=False))
    return zarr.create_array(**common, serializer=CAECodec(weights=TINY, gpu=False), compressors=None)


def write_band(path: str, band: int, pixels: np.ndarray) -> None:
    """Write one band of chunk rows into an existing array (run in threads and in spawned processes)."""
    array = zarr.open_array(path, mode="r+")
    array[band * CHUNK : (band + 1) * CHUNK] = pixels


def chunk_files(path: Path) -> dict[str, bytes]:
    metadata = {".zarray", ".zattrs", ".zgroup", "zarr.json"}
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file() and f.name not in metadata}


@pytest.fixture(scope="module")
def image():
    from caecodec.evaluation import load_rgb

    return make_image(load_rgb(SAMPLE))


@pytest.fixture(scope="module", params=[2, 3], ids=["zarr2", "zarr3"])
def sequential(request, tmp_path_factory, image):
    """The reference: the array written by one writer, band after band."""
    path = tmp_path_factory.mktemp("sequential") / "a.zarr"
    create_array(path, request.param, image.shape)
    for band in range(ROW_BANDS):
        write_band(str(path), band, image[band * CHUNK : (band + 1) * CHUNK])
    return request.param, path


def assert_same_array(path: Path, reference: Path) -> None:
    assert chunk_files(path) == chunk_files(reference)
    assert len(chunk_files(reference)) == ROW_BANDS * 3
    np.testing.assert_array_equal(zarr.open_array(str(path), mode="r")[:], zarr.open_array(str(reference), mode="r")[:])


# -- one codec, many threads -------------------------------------------------------------------------
def test_one_codec_from_many_threads_gives_the_bytes_of_sequential_use(image):
    codec = ConvolutionalAutoencoder(weights=TINY, gpu=False)
    tiles = [image[i : i + 40, j : j + 24] for i in range(0, 88, 11) for j in range(0, 72, 18)]
    expected = [codec.encode(tile) for tile in tiles]
    with ThreadPoolExecutor(max_workers=6) as pool:
        encoded = list(pool.map(codec.encode, tiles))
        decoded = list(pool.map(codec.decode, encoded))
    assert encoded == expected
    for tile, pixels, data in zip(tiles, decoded, expected):
        assert pixels.shape == tile.shape
        np.testing.assert_array_equal(pixels, codec.decode(data))


def test_codec_calls_leave_torch_settings_as_they_found_them(image):
    import torch

    codec = ConvolutionalAutoencoder(weights=TINY, gpu=False)
    for enabled in (True, False):
        torch.backends.mkldnn.enabled = enabled
        codec.decode(codec.encode(image[:32, :32]))
        assert torch.backends.mkldnn.enabled is enabled
    torch.backends.mkldnn.enabled = True


# -- one array, many writers ---------------------------------------------------------------------------
def test_array_written_by_several_threads_equals_the_sequential_one(tmp_path, sequential, image):
    zarr_format, reference = sequential
    path = tmp_path / "threads.zarr"
    create_array(path, zarr_format, image.shape)
    with ThreadPoolExecutor(max_workers=ROW_BANDS) as pool:
        list(pool.map(lambda band: write_band(str(path), band, image[band * CHUNK : (band + 1) * CHUNK]),
                      range(ROW_BANDS)))
    assert_same_array(path, reference)


def test_array_written_by_several_processes_equals_the_sequential_one(tmp_path, sequential, image):
    zarr_format, reference = sequential
    path = tmp_path / "processes.zarr"
    create_array(path, zarr_format, image.shape)
    bands = [(str(path), band, image[band * CHUNK : (band + 1) * CHUNK]) for band in range(ROW_BANDS)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.starmap(write_band, bands)
    assert_same_array(path, reference)


# -- interrupted writes --------------------------------------------------------------------------------
SLOW_WRITER = """
import sys
import numpy as np, zarr
from caecodec import CAECodec
path, weights = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
array = zarr.create_array(store=path, shape=(64 * 32, 64, 3), chunks=(32, 64, 3), dtype="uint8",
                          serializer=CAECodec(weights=weights, gpu=False), compressors=None)
for row in range(64):
    array[row * 32 : (row + 1) * 32] = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
    print(row, flush=True)
"""


def test_killed_writer_leaves_every_chunk_absent_or_valid(tmp_path):
    path = tmp_path / "killed.zarr"
    writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(path), TINY], stdout=subprocess.PIPE, text=True)
    try:
        for line in writer.stdout:
            if int(line) >= 5:
                break
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.wait(timeout=60)
        writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL
    chunks = sorted((path / "c").rglob("*"))
    files = [f for f in chunks if f.is_file()]
    assert 6 <= len(files) < 64, "the writer was not stopped mid-array"
    codec = ConvolutionalAutoencoder(weights=TINY, gpu=False)
    rng = np.random.default_rng(0)
    expected = [rng.integers(0, 256, (32, 64, 3), dtype=np.uint8) for _ in range(64)]
    for file in files:
        if file.name.endswith(".partial"):  # zarr's temporary file, renamed into place only once complete
            continue
        row = int(file.relative_to(path / "c").parts[0])
        bitstream.unpack(file.read_bytes())  # CRC and structure intact
        np.testing.assert_array_equal(codec.decode(file.read_bytes()), codec.decode(codec.encode(expected[row])))
    array = zarr.open_array(str(path), mode="r")
    written = {int(f.relative_to(path / "c").parts[0]) for f in files if not f.name.endswith(".partial")}
    for row in range(64):
        band = array[row * 32 : (row + 1) * 32]
        assert band.any() == (row in written)  # absent chunks read as the fill value, never as half data


def test_zarr_local_store_writes_chunks_atomically():
    """The guarantee above rests on LocalStore writing to a temporary file and renaming it into place."""
    import inspect

    from zarr.storage import _local

    source = inspect.getsource(_local._put)
    assert "_atomic_write" in source and ".partial" in inspect.getsource(_local._atomic_write)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_truncated_chunk_file_raises_chunk_error_never_pixels(tmp_path, image, zarr_format):
    """A store without atomic writes (or a bad copy) can hold a truncated chunk: reading it must fail loudly."""
    path = tmp_path / "truncated.zarr"
    create_array(path, zarr_format, image.shape)[:] = image
    victim = next(f for f in sorted(path.rglob("*")) if f.is_file() and f.read_bytes()[:4] == bitstream.MAGIC)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(ChunkError, match="CRC32|truncated"):
        zarr.open_array(str(path), mode="r")[:]
