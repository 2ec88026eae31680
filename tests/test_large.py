"""Large images and scale-out: streaming zarr/TIFF input through the CLI, Dask on a two-worker LocalCluster,
seamless chunks (analysis and synthesis halos)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile
import zarr

from caecodec.codec import ConvolutionalAutoencoder
from caecodec.compression import dequantize
from caecodec.evaluation import border_psnr, load_rgb, psnr
from caecodec.store import open_latents, read_seamless, write_seamless
from caecodec.tiling import bands, full_tiles, grid
from caecodec.zarr3 import CAECodec
from conftest import SAMPLE, TINY_CHECKPOINT, analysis_symbols
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
    ok("to-zarr", tmp_path / "source.zarr", "-o", tmp_path / "coded.zarr", "--chunk", "128", *TINY,
       "--independent-chunks")
    coded = zarr.open_group(tmp_path / "coded.zarr", mode="r")["source"]
    assert coded.shape == image.shape and coded.chunks == (128, 128, 3)
    tiny = ConvolutionalAutoencoder(weights=str(TINY_CHECKPOINT))
    assert raw_chunk(coded, (1, 2, 0)) == tiny.encode(image[128:256, 256:384])  # zarr's own chunk, coded alone
    ok("from-zarr", tmp_path / "coded.zarr", "-o", tmp_path / "out", "-f", "tif")
    with tifffile.TiffFile(tmp_path / "out" / "source.tif") as tiff:
        assert tiff.is_bigtiff and tiff.pages[0].is_tiled
        np.testing.assert_array_equal(tiff.asarray(), read_seamless(coded))


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
    import dask

    image = strip_of(sample_image, 1024)
    serializer = CAECodec(quality=1, weights=str(TINY_CHECKPOINT))
    target = zarr.create_array(tmp_path / "dask.zarr", shape=image.shape, chunks=(128, 128, 3), dtype="uint8",
                               serializer=serializer, compressors=None)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        with dask.config.set({"array.chunk-size": f"{128 * 128 * 3}B"}):  # one task per chunk, as documented
            da.to_zarr(da.from_array(image, chunks=(128, 128, 3)), target)
        loaded = client.run(models_loaded)
    assert len(loaded) == 2
    assert all(len(models) == 1 for models in loaded.values()), loaded  # both workers coded, each loaded once
    local = zarr.create_array(tmp_path / "local.zarr", shape=image.shape, chunks=(128, 128, 3), dtype="uint8",
                              serializer=serializer, compressors=None)
    local[:] = image
    from_dask = zarr.open_array(tmp_path / "dask.zarr", mode="r")[:]
    assert abs(psnr(image, from_dask) - psnr(image, local[:])) < 0.05


# -- seamless chunks: analysis and synthesis halos -------------------------------------------------------
def caecodec_array(path, image, chunk: int, zarr_format: int = 3, **codec):
    """An empty caecodec zarr array for `image`, chunks (chunk, chunk, 3), on disk."""
    options = dict(shape=image.shape, chunks=(chunk, chunk, 3), dtype="uint8", zarr_format=zarr_format)
    if zarr_format == 2:
        return zarr.create_array(path, **options, compressors=ConvolutionalAutoencoder(**codec))
    return zarr.create_array(path, **options, serializer=CAECodec(**codec), compressors=None)


def raw_chunk(array, block) -> bytes:
    return (array.store_path / array.metadata.encode_chunk_key(block)).get_sync().to_bytes()


@pytest.mark.parametrize("zarr_format, width", [(2, 500), (3, 500), (3, 440)])
def test_context_written_chunks_decode_standalone_to_the_one_piece_symbols(sample_image, tmp_path, zarr_format,
                                                                           width):
    # 384 x 500: the last chunk column holds 116 pixels, not a multiple of 16; 384 x 440: it holds 56, so
    # its 8 latent columns reach 4 past the image's own latent
    image = sample_image[:, :width]
    array = caecodec_array(tmp_path / "a.zarr", image, 128, zarr_format, quality=1)
    write_seamless(array, lambda rows: image[rows])

    codec = ConvolutionalAutoencoder(quality=1)
    loaded = codec._model()
    one_piece = analysis_symbols(codec, image)  # padded to a multiple of 16, as at the edge
    for row, column in np.ndindex(3, 4):
        header, symbols, _ = codec.decode_symbols(raw_chunk(array, (row, column, 0)))
        assert header.shape == (128, 128, 3)  # zarr's full chunk shape, cropped back by zarr as for its own chunks
        inside = one_piece[..., 8 * row : 8 * row + 8, 8 * column : 8 * column + 8]
        np.testing.assert_array_equal(symbols[..., : inside.shape[-1]], inside)
        assert not symbols[..., inside.shape[-1] :].any()  # past the image: the median, symbol 0
    reopened = zarr.open_array(tmp_path / "a.zarr", mode="r")  # plain zarr reads every chunk on its own
    assert reopened[:].shape == image.shape and psnr(image, reopened[:]) > 15
    latents = open_latents(tmp_path / "a.zarr")[:]
    np.testing.assert_array_equal(latents, dequantize(one_piece, loaded.tables)[0].transpose(1, 2, 0))
    one_piece_pixels = codec.decode(codec.encode(image))
    assert np.abs(read_seamless(array).astype(int) - one_piece_pixels).max() <= 1


def test_seamless_read_hides_the_borders_that_a_plain_read_shows(sample_image, tmp_path):
    chunk = 128
    plain = caecodec_array(tmp_path / "plain.zarr", sample_image, chunk, quality=1)
    plain[:] = sample_image  # zarr's own writes: every chunk analysed alone
    seamless = caecodec_array(tmp_path / "seamless.zarr", sample_image, chunk, quality=1)
    write_seamless(seamless, lambda rows: sample_image[rows])

    plain_pixels, seamless_pixels = plain[:], read_seamless(seamless)
    assert seamless_pixels.shape == plain_pixels.shape == sample_image.shape

    def border_gap(decoded):
        near, interior = border_psnr(sample_image, decoded, chunk)
        return interior - near

    assert border_gap(seamless_pixels) < border_gap(plain_pixels) / 3, (border_gap(seamless_pixels),
                                                                       border_gap(plain_pixels))
    codec = ConvolutionalAutoencoder(quality=1)
    one_piece = codec.decode(codec.encode(sample_image))  # the halos cover both transforms' reach
    assert np.abs(seamless_pixels.astype(int) - one_piece).max() <= 1
    region = read_seamless(seamless, slice(100, 300), slice(50, 420))
    assert np.abs(region.astype(int) - seamless_pixels[100:300, 50:420]).max() <= 1


def test_seamless_read_fetches_each_chunk_once(sample_image, tmp_path):
    """The chunks under a region are read once from the store, for their headers and their latents alike."""
    from collections import Counter

    from zarr.storage import LocalStore

    class CountingStore(LocalStore):  # zarr's own store, counting what it is asked for
        requests = Counter()

        async def get(self, key, prototype=None, byte_range=None):
            type(self).requests[key] += 1
            return await super().get(key, prototype, byte_range)

        def get_sync(self, key, *, prototype=None, byte_range=None):
            type(self).requests[key] += 1
            return super().get_sync(key, prototype=prototype, byte_range=byte_range)

    image = sample_image[:256, :384]
    write_seamless(caecodec_array(tmp_path / "a.zarr", image, 128, quality=1), lambda rows: image[rows])
    array = zarr.open_array(CountingStore(tmp_path / "a.zarr", read_only=True), mode="r")
    region = read_seamless(array, slice(0, 256), slice(0, 240))  # latent columns 0-15, halo 16-17
    chunk_reads = {key: n for key, n in CountingStore.requests.items() if key.startswith("c/")}
    assert len(chunk_reads) == 2 * 3 and set(chunk_reads.values()) == {1}, chunk_reads  # 2 x 2 chunks and the halo's column
    assert np.abs(region.astype(int) - read_seamless(zarr.open_array(tmp_path / "a.zarr"))[:, :240]).max() <= 1


def test_seamless_read_of_chunks_it_cannot_join_is_the_plain_read(sample_image, tmp_path):
    """A region with a chunk never written (zarr's fill value has no latent) or with chunks of two weights
    versions (their latents are not interchangeable) decodes chunk by chunk, never as one wrong synthesis."""
    from caecodec.weights import bundled_versions

    image = sample_image[:256, :256]
    array = caecodec_array(tmp_path / "holes.zarr", image, 128, quality=1)
    write_seamless(array, lambda rows: image[rows])
    (array.store_path / array.metadata.encode_chunk_key((1, 1, 0))).delete_sync()
    np.testing.assert_array_equal(read_seamless(array), array[:])
    assert not array[128:, 128:].any()  # the fill value, as zarr reads it

    versions = bundled_versions()
    if len(versions) < 2:
        pytest.skip(f"needs two bundled weights versions, this installation has {versions}")
    mixed = caecodec_array(tmp_path / "mixed.zarr", image, 128, quality=1)
    write_seamless(mixed, lambda rows: image[rows])
    older = caecodec_array(tmp_path / "older.zarr", image, 128, quality=1, weights_version=versions[0])
    older[:128, :128] = image[:128, :128]
    (mixed.store_path / mixed.metadata.encode_chunk_key((0, 0, 0))).set_sync(
        (older.store_path / older.metadata.encode_chunk_key((0, 0, 0))).get_sync())
    np.testing.assert_array_equal(read_seamless(mixed), mixed[:])
    assert psnr(image, read_seamless(mixed)) > 20


def test_seamless_writes_and_reads_hold_one_band_not_the_image(sample_image, tmp_path):
    import tracemalloc

    image = strip_of(sample_image[:256], 4096)  # 3 MB; a band of 64 rows is 0.8 MB
    array = caecodec_array(tmp_path / "strip.zarr", image, 64, weights=str(TINY_CHECKPOINT))
    array[:1, :1] = image[:1, :1]  # load the model and open the store before measuring
    peaks = {}
    tracemalloc.start()
    try:
        write_seamless(array, lambda rows: image[rows])
        peaks["write"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        for rows in bands(image.shape[0], 64):
            read_seamless(array, rows)
        peaks["read"] = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert all(peak < image.nbytes / 2 for peak in peaks.values()), (peaks, image.nbytes)


def test_cae_files_are_seamless_by_default_and_tiles_still_decode_alone(tmp_path):
    tiny = ConvolutionalAutoencoder(weights=str(TINY_CHECKPOINT))
    image = load_rgb(SAMPLE)
    ok("compress", SAMPLE, "-o", tmp_path / "s.cae", *TINY, "--tile", "128")
    ok("decompress", tmp_path / "s.cae", "-o", tmp_path / "seamless.png", *TINY)
    ok("decompress", tmp_path / "s.cae", "-o", tmp_path / "alone.png", *TINY, "--independent-chunks")
    seamless, alone = load_rgb(tmp_path / "seamless.png"), load_rgb(tmp_path / "alone.png")
    assert seamless.shape == alone.shape == image.shape and not np.array_equal(seamless, alone)
    assert np.abs(seamless.astype(int) - tiny.decode(tiny.encode(image))).max() <= 1  # as if coded in one piece
    ok("compress", SAMPLE, "-o", tmp_path / "i.cae", *TINY, "--tile", "128", "--independent-chunks")
    ok("decompress", tmp_path / "i.cae", "-o", tmp_path / "independent.png", *TINY, "--independent-chunks")
    tiles = [tiny.decode(tiny.encode(image[rows, cols])) for rows, cols in grid(*image.shape[:2], 128)]
    rebuilt = np.concatenate([np.concatenate(tiles[r * 4 : r * 4 + 4], axis=1) for r in range(3)])
    np.testing.assert_array_equal(load_rgb(tmp_path / "independent.png"), rebuilt)
