"""Large images and scale-out: streaming zarr/TIFF input through the CLI, Dask on a two-worker LocalCluster."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile
import zarr

from caecodec.codec import ConvolutionalAutoencoder
from caecodec.evaluation import psnr
from caecodec.tiling import bands, full_tiles, grid
from caecodec.zarr3 import CAECodec
from conftest import TINY_CHECKPOINT
from test_cli import TINY, ok


def strip_of(image: np.ndarray, width: int) -> np.ndarray:
    """A wide strip made by repeating a real photo side by side (mirrored every other time: no hard seams)."""
    tiles = [image if i % 2 == 0 else image[:, ::-1] for i in range(-(-width // image.shape[1]))]
    return np.ascontiguousarray(np.concatenate(tiles, axis=1)[:, :width])


def test_bands_and_grid_cover_the_image_once():
    covered = np.zeros((70, 45), int)
    for rows, cols in grid(70, 45, 16):
        covered[rows, cols] += 1
    assert (covered == 1).all()
    assert [s.stop - s.start for s in bands(70, 32)] == [32, 32, 6]


def test_full_tiles_reassemble_to_the_image(sample_image):
    image = sample_image[:200, :300]
    tiles = list(full_tiles(lambda rows: image[rows], 200, 300, 128))
    assert len(tiles) == 2 * 3 and all(t.shape == (128, 128, 3) for t in tiles)
    rebuilt = np.concatenate([np.concatenate(tiles[r * 3 : r * 3 + 3], axis=1) for r in range(2)])
    np.testing.assert_array_equal(rebuilt[:200, :300], image)


def test_zarr_input_streams_to_zarr_and_back_to_tiled_tiff(sample_image, tmp_path):
    image = strip_of(sample_image[:300], 2000)
    source = zarr.create_array(tmp_path / "source.zarr", shape=image.shape, chunks=(100, 500, 3), dtype="uint8")
    source[:] = image
    ok("to-zarr", tmp_path / "source.zarr", "-o", tmp_path / "coded.zarr", "--chunk", "128", *TINY)
    coded = zarr.open_group(tmp_path / "coded.zarr", mode="r")["source"]
    assert coded.shape == image.shape and coded.chunks == (128, 128, 3)
    ok("from-zarr", tmp_path / "coded.zarr", "-o", tmp_path / "out", "-f", "tif")
    with tifffile.TiffFile(tmp_path / "out" / "source.tif") as tiff:
        assert tiff.is_bigtiff and tiff.pages[0].is_tiled
        np.testing.assert_array_equal(tiff.asarray(), coded[:])


def test_codec_pickles_as_configuration_only(sample_image):
    codec = ConvolutionalAutoencoder(quality=1, weights=str(TINY_CHECKPOINT))
    serializer = CAECodec(quality=1, weights=str(TINY_CHECKPOINT))
    chunk = codec.encode(sample_image[:64, :64])  # the model is now loaded in this process
    for instance in (codec, serializer):
        data = pickle.dumps(instance)
        assert len(data) < 1000 and b"torch" not in data and b"Tensor" not in data
    assert pickle.loads(pickle.dumps(codec)).encode(sample_image[:64, :64]) == chunk


def models_loaded() -> list[str]:
    from caecodec import weights

    return [str(key) for key in weights._loaded]


@pytest.mark.filterwarnings("ignore")
def test_dask_to_zarr_on_a_two_worker_cluster(sample_image, tmp_path):
    da = pytest.importorskip("dask.array", reason="needs dask (pip install 'caecodec[dask]')")
    distributed = pytest.importorskip("dask.distributed", reason="needs dask.distributed")
    image = strip_of(sample_image, 1024)
    serializer = CAECodec(quality=1, weights=str(TINY_CHECKPOINT))
    target = zarr.create_array(tmp_path / "dask.zarr", shape=image.shape, chunks=(128, 128, 3), dtype="uint8",
                               serializer=serializer, compressors=None)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        da.to_zarr(da.from_array(image, chunks=(128, 128, 3)), target)
        loaded = client.run(models_loaded)
    assert len(loaded) == 2
    assert all(len(models) <= 1 for models in loaded.values()), loaded  # once per worker process
    assert any(models for models in loaded.values())
    local = zarr.create_array(tmp_path / "local.zarr", shape=image.shape, chunks=(128, 128, 3), dtype="uint8",
                              serializer=serializer, compressors=None)
    local[:] = image
    from_dask = zarr.open_array(tmp_path / "dask.zarr", mode="r")[:]
    assert abs(psnr(image, from_dask) - psnr(image, local[:])) < 0.05
