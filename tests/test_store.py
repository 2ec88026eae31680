"""BottleneckStore / open_latents: caecodec arrays read as their latents, through real zarr stores."""

from __future__ import annotations

import asyncio
import math
import uuid

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

import caecodec
from caecodec import BottleneckStore, CAECodec, ConvolutionalAutoencoder, open_latents
from caecodec.store import ReadOnlyError

from conftest import TINY_CHECKPOINT

TINY = str(TINY_CHECKPOINT)


def write_array(store, image, chunks, zarr_format, name=None, **codec):
    """Write `image` with caecodec (format 2: numcodecs compressor; format 3: native serializer)."""
    options = dict(store=store, name=name, shape=image.shape, chunks=chunks, dtype="uint8", zarr_format=zarr_format)
    if zarr_format == 2:
        array = zarr.create_array(**options, compressors=ConvolutionalAutoencoder(**codec))
    else:
        array = zarr.create_array(**options, serializer=CAECodec(**codec), compressors=None)
    array[...] = image
    return array


def expected_latent_extent(size: int, chunk: int) -> int:
    """Latent rows along one axis: each chunk, cropped to the array, covers ceil(its real pixels / 16) rows."""
    return sum(math.ceil(min(chunk, size - start) / 16) for start in range(0, size, chunk))


def raw_chunk(array, block) -> bytes:
    key = array.metadata.encode_chunk_key(block)
    return asyncio.run(array.store.get(key, default_buffer_prototype())).to_bytes()


def assert_blocks_are_decoded_latents(pixels, latents, codec):
    """Every latent block equals the codec's partial decode of the stored chunk, cropped to the latent extent."""
    latent_decoder = ConvolutionalAutoencoder(**codec, partial_decompress=True)
    for block in np.ndindex(*pixels.cdata_shape):
        decoded = latent_decoder.decode(raw_chunk(pixels, block))
        shown = latents.get_block_selection(block)
        assert decoded.shape == latents.chunks
        np.testing.assert_array_equal(shown, decoded[tuple(slice(0, n) for n in shown.shape)])


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("chunks", [(128, 256), (200, 200), (100, 176)])
def test_latent_geometry_uses_ceil_per_chunk(tmp_path, sample_image, zarr_format, chunks):
    image = sample_image[:, :500]  # 384 x 500: partial edge chunks on both axes for most chunk sizes
    codec = {"weights": TINY}
    pixels = write_array(tmp_path / "a.zarr", image, (*chunks, 3), zarr_format, **codec)

    latents = open_latents(tmp_path / "a.zarr")

    assert latents.dtype == np.float32
    assert latents.shape == (expected_latent_extent(384, chunks[0]), expected_latent_extent(500, chunks[1]), 8)
    assert latents.chunks == (math.ceil(chunks[0] / 16), math.ceil(chunks[1] / 16), 8)
    assert latents.fill_value == 0
    assert_blocks_are_decoded_latents(pixels, latents, codec)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_bundled_weights_latents_match_partial_decompress(tmp_path, sample_image, zarr_format):
    pixels = write_array(tmp_path / "a.zarr", sample_image, (256, 256, 3), zarr_format, quality=8)

    latents = zarr.open(store=BottleneckStore(str(tmp_path / "a.zarr")), mode="r")

    channels = ConvolutionalAutoencoder(quality=8).latent_channels()
    assert latents.shape == (24, 32, channels)
    assert_blocks_are_decoded_latents(pixels, latents, {"quality": 8})
    # the whole image encoded as one chunk has the same latent grid
    whole = ConvolutionalAutoencoder(quality=8, partial_decompress=True)
    assert whole.decode(ConvolutionalAutoencoder(quality=8).encode(sample_image)).shape == latents.shape


def test_info_shows_codec_in_latent_mode(tmp_path, sample_image):
    write_array(tmp_path / "a.zarr", sample_image[:128, :128], (128, 128, 3), 2, weights=TINY)
    info = repr(open_latents(tmp_path / "a.zarr").info)
    assert "Float32" in info and "partial_decompress=True" in info and "BottleneckStore" in info


def test_leading_dimensions_are_kept(tmp_path, sample_image):
    stack = np.stack([sample_image[:160, :160], sample_image[-160:, -160:]])
    pixels = write_array(tmp_path / "s.zarr", stack, (1, 96, 160, 3), 3, weights=TINY)

    latents = open_latents(tmp_path / "s.zarr")

    assert latents.shape == (2, 6 + 4, 10, 8) and latents.chunks == (1, 6, 10, 8)
    assert_blocks_are_decoded_latents(pixels, latents, {"weights": TINY})


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("consolidated", [False, True])
@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part:UserWarning")
def test_group_arrays_each_get_their_own_metadata(tmp_path, sample_image, zarr_format, consolidated):
    root = zarr.open_group(tmp_path / "g.zarr", mode="w", zarr_format=zarr_format)
    write_array(root.store, sample_image[:64, :96], (64, 96, 3), zarr_format, name="small", weights=TINY)
    write_array(root.store, sample_image[:200, :300], (128, 128, 3), zarr_format, name="bundled", quality=2)
    labels = root.create_array("labels", data=np.arange(12, dtype="int16").reshape(3, 4), chunks=(2, 2))
    labels.attrs["kind"] = "plain"
    if consolidated:
        zarr.consolidate_metadata(tmp_path / "g.zarr", zarr_format=zarr_format)

    group = zarr.open_group(BottleneckStore(tmp_path / "g.zarr"), mode="r")

    # read in reverse order of writing too: a per-store cache of the first array's metadata would show here
    assert group["bundled"].shape == (8 + 5, 16 + 3, ConvolutionalAutoencoder(quality=2).latent_channels())
    assert group["small"].shape == (4, 6, 8)
    assert group["bundled"].dtype == group["small"].dtype == np.float32
    np.testing.assert_array_equal(group["labels"][:], labels[:])
    assert group["labels"].dtype == np.int16 and group["labels"].attrs["kind"] == "plain"
    if consolidated:
        members = group.metadata.consolidated_metadata.metadata
        assert members["small"].shape == (4, 6, 8) and members["labels"].shape == (3, 4)


def test_other_keys_pass_through_without_recursion(tmp_path, sample_image):
    pixels = write_array(tmp_path / "a.zarr", sample_image[:64, :64], (64, 64, 3), 2, weights=TINY)
    pixels.attrs["source"] = "kodim23"
    store = BottleneckStore(tmp_path / "a.zarr")
    prototype = default_buffer_prototype()

    chunk = asyncio.run(store.get("0.0.0", prototype)).to_bytes()
    attributes = asyncio.run(store.get(".zattrs", prototype)).to_bytes()

    assert chunk == (tmp_path / "a.zarr" / "0.0.0").read_bytes()
    assert attributes == (tmp_path / "a.zarr" / ".zattrs").read_bytes()
    assert asyncio.run(store.get("9.9.0", prototype)) is None
    assert asyncio.run(store.get("missing/.zarray", prototype)) is None
    assert open_latents(store).attrs["source"] == "kodim23"


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_fsspec_urls(tmp_path, sample_image, scheme):
    url = (tmp_path / "u.zarr").as_uri() if scheme == "file" else f"memory://caecodec-{uuid.uuid4().hex}/u.zarr"
    # fsspec's local filesystem does not create parent folders when writing, so write file:// as a path
    write_array(tmp_path / "u.zarr" if scheme == "file" else url, sample_image[:96, :80], (64, 64, 3), 3, weights=TINY)

    latents = open_latents(url)

    assert latents.shape == (4 + 2, 4 + 1, 8)
    assert latents[:].dtype == np.float32


def test_wrapped_store_stays_writable_and_view_is_read_only(sample_image):
    memory = MemoryStore()
    write_array(memory, sample_image[:64, :64], (64, 64, 3), 3, name="img", weights=TINY)
    view = BottleneckStore(memory)

    latents = open_latents(view, path="img")

    with pytest.raises(ReadOnlyError, match="read-only"):
        asyncio.run(view.set("img/zarr.json", default_buffer_prototype().buffer.from_bytes(b"{}")))
    with pytest.raises(ReadOnlyError, match="read-only"):
        asyncio.run(view.delete("img/c/0/0/0"))
    with pytest.raises(ValueError, match="latent mode"):
        latents[...] = 1.0
    with pytest.raises(Exception, match="read.only"):
        zarr.open_group(view, mode="w")
    with pytest.raises(ReadOnlyError):
        view.with_read_only(False)
    zarr.open_array(memory, path="img")[:, :, :] = 0  # the wrapped store is untouched by the view
    assert not memory.read_only


@pytest.mark.parametrize("mode", ["w", "a", "r+"])
def test_modes_other_than_r_are_refused(tmp_path, mode):
    with pytest.raises(ValueError, match="expected mode 'r'"):
        BottleneckStore(tmp_path, mode=mode)


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no zarr store"):
        BottleneckStore(tmp_path / "absent.zarr")
    with pytest.raises(TypeError, match="path, an fsspec URL or a zarr Store"):
        BottleneckStore(42)
    zarr.create_array(tmp_path / "plain.zarr", shape=(4, 4), dtype="uint8")
    with pytest.raises(ValueError, match="not a caecodec-compressed array"):
        open_latents(tmp_path / "plain.zarr")


def test_public_names_are_exported():
    assert caecodec.BottleneckStore is BottleneckStore and caecodec.open_latents is open_latents
