"""The codec on real images and real zarr stores on disk, both zarr formats."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numcodecs
import numpy as np
import pytest
import zarr

import caecodec
from caecodec import bitstream, weights
from caecodec.evaluation import load_rgb, psnr, theoretical_bits

from conftest import TINY_CHECKPOINT, analysis_symbols

TINY = str(TINY_CHECKPOINT)


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- zarr --------------------------------------------------------------------------------------------
def test_seed_snippet_as_format_2_array(tmp_path, sample_image):
    numcodecs.register_codec(caecodec.ConvolutionalAutoencoder)
    cae = caecodec.ConvolutionalAutoencoder(quality=8, metric="mse", gpu=True)
    path = tmp_path / "seed.zarr"
    z = zarr.array(sample_image, chunks=(256, 256, 3), compressor=cae, zarr_format=2, store=str(path))
    info = repr(z.info_complete())
    assert "quality=8" in info and "metric='mse'" in info and "gpu=True" in info
    assert "Storage ratio" in info
    assert z.nbytes_stored() < z.nbytes / 2
    back = zarr.open_array(str(path), mode="r")[:]
    assert back.shape == sample_image.shape and back.dtype == np.uint8
    assert psnr(sample_image, back) > 20


def test_seed_snippet_refused_for_format_3():
    cae = caecodec.ConvolutionalAutoencoder(quality=8)
    with pytest.raises(ValueError, match="compressor"):
        zarr.array(np.zeros((32, 32, 3), np.uint8), chunks=(16, 16, 3), compressor=cae)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_array_round_trip_and_reopen_in_fresh_process(tmp_path, sample_image, zarr_format):
    """Opening an existing array needs no register call: the entry points find the codec."""
    path = tmp_path / f"v{zarr_format}.zarr"
    if zarr_format == 3:
        codecs = {"serializer": caecodec.CAECodec(quality=4, metric="ms-ssim"), "compressors": None}
    else:
        codecs = {"compressors": caecodec.ConvolutionalAutoencoder(quality=4, metric="ms-ssim")}
    z = zarr.create_array(str(path), shape=sample_image.shape, chunks=(160, 200, 3), dtype="uint8",
                          zarr_format=zarr_format, **codecs)
    z[:] = sample_image
    here = zarr.open_array(str(path), mode="r")[:]
    np.save(tmp_path / "here.npy", here)
    out = run_python(
        "import numpy as np, zarr\n"
        f"a = zarr.open_array({str(path)!r}, mode='r')\n"
        f"assert np.array_equal(a[:], np.load({str(tmp_path / 'here.npy')!r}))\n"
        "print(a.metadata.to_dict())\n"
    )
    assert "caecodec.cae" in out and "'quality': 4" in out and "ms-ssim" in out
    assert psnr(sample_image, here) > 18


def test_format_3_rejects_wrong_arrays_at_creation(tmp_path):
    codec = caecodec.CAECodec()
    for shape, chunks, dtype, message in [
        ((64, 64, 3), (32, 32, 3), "uint16", "expected dtype uint8, found uint16"),
        ((64, 64, 4), (32, 32, 4), "uint8", r"\(\.\.\., H, W, 3\); found shape \(64, 64, 4\)"),
        ((64, 64), (32, 32), "uint8", "found shape"),
        ((64, 64, 3), (32, 32, 1), "uint8", "chunks must hold all 3 channels"),
    ]:
        with pytest.raises(ValueError, match=message):
            zarr.create_array(str(tmp_path / "bad.zarr"), shape=shape, chunks=chunks, dtype=dtype, serializer=codec,
                              compressors=None, overwrite=True)


def test_format_2_rejects_wrong_chunks_at_encode(tmp_path):
    z = zarr.create_array(str(tmp_path / "bad.zarr"), shape=(8, 8, 4), chunks=(8, 8, 4), dtype="uint8",
                          zarr_format=2, compressors=caecodec.ConvolutionalAutoencoder(weights=TINY))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., H, W, 3\); found shape \(8, 8, 4\)"):
        z[:] = 1


def test_stack_of_images_in_one_array(tmp_path, sample_image):
    stack = np.stack([sample_image[:100, :120], sample_image[100:200, 200:320]])
    z = zarr.create_array(str(tmp_path / "stack.zarr"), shape=stack.shape, chunks=(1, 64, 64, 3), dtype="uint8",
                          serializer=caecodec.CAECodec(quality=6), compressors=None)
    z[:] = stack
    back = z[:]
    assert back.shape == stack.shape
    assert all(psnr(a, b) > 18 for a, b in zip(stack, back))


# -- configuration -----------------------------------------------------------------------------------
def test_config_round_trip_and_repr():
    codec = caecodec.ConvolutionalAutoencoder(quality=3, metric="ms-ssim", gpu=False, weights=TINY)
    config = codec.get_config()
    assert config == {"id": "caecodec.cae", "quality": 3, "metric": "ms-ssim", "gpu": False, "weights": TINY}
    again = numcodecs.get_codec(dict(config))
    assert again.get_config() == config
    text = repr(caecodec.ConvolutionalAutoencoder(quality=2))
    assert "quality=2" in text and "metric='mse'" in text and "gpu=True" in text and "bundled v" in text
    native = caecodec.CAECodec(quality=5, metric="ms-ssim")
    assert caecodec.CAECodec.from_dict(native.to_dict()) == native


@pytest.mark.parametrize("arguments, message", [
    ({"quality": 0}, "quality must be an integer from 1 to 8, found 0"),
    ({"quality": 9}, "found 9"),
    ({"quality": 2.0}, "found 2.0"),
    ({"metric": "ssim"}, "metric must be one of"),
])
def test_bad_configuration_is_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        caecodec.ConvolutionalAutoencoder(**arguments)
    with pytest.raises(ValueError, match=message):
        caecodec.CAECodec(**arguments)


def test_import_is_cheap():
    out = run_python("import sys, caecodec; caecodec.ConvolutionalAutoencoder(quality=1);"
                     "print(sorted(m for m in ('torch', 'zarr', 'constriction') if m in sys.modules))")
    assert out.strip() == "[]"


def test_gpu_request_falls_back_to_cpu_silently():
    import torch

    loaded = caecodec.ConvolutionalAutoencoder(quality=1, gpu=True)._model()
    assert loaded.device == ("cuda" if torch.cuda.is_available() else "cpu")


# -- chunks ------------------------------------------------------------------------------------------
def pathological_chunks():
    rng = np.random.default_rng(7)
    return {
        "noise": rng.integers(0, 256, (96, 80, 3), dtype=np.uint8),
        "flat": np.full((40, 40, 3), (12, 200, 90), dtype=np.uint8),
        "black": np.zeros((33, 17, 3), np.uint8),
        "white": np.full((16, 16, 3), 255, np.uint8),
        "checker": (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)[..., None].repeat(3, -1),
        "pixel": np.array([[[255, 0, 0]]], np.uint8),
        "row": rng.integers(0, 256, (1, 300, 3), dtype=np.uint8),
        "stack": rng.integers(0, 256, (2, 3, 20, 18, 3), dtype=np.uint8),
    }


@pytest.mark.parametrize("name", sorted(pathological_chunks()))
@pytest.mark.parametrize("quality", [1, 8])
def test_latent_round_trips_bit_for_bit(name, quality):
    chunk = pathological_chunks()[name]
    codec = caecodec.ConvolutionalAutoencoder(quality=quality)
    encoded = codec.encode(chunk)
    header, symbols, _ = codec.decode_symbols(encoded)
    np.testing.assert_array_equal(symbols, analysis_symbols(codec, chunk))
    assert header.shape == chunk.shape
    decoded = codec.decode(encoded)
    assert decoded.shape == chunk.shape and decoded.dtype == np.uint8
    assert codec.encode(chunk) == encoded


def test_escapes_keep_extreme_latents_exact(sample_image):
    """A chunk far outside the training distribution codes some symbols as escapes and still round-trips."""
    codec = caecodec.ConvolutionalAutoencoder(quality=8, weights=TINY)
    chunk = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    encoded = codec.encode(chunk)
    _, _, escapes = bitstream.unpack(encoded)
    _, symbols, _ = codec.decode_symbols(encoded)
    np.testing.assert_array_equal(symbols, analysis_symbols(codec, chunk))


def test_encode_latent_writes_the_chunk_encode_writes(sample_image):
    """Given the symbols `encode` would compute (a chunk analysed with no context), the bytes are the same."""
    codec = caecodec.ConvolutionalAutoencoder(quality=8, weights=TINY)
    chunk = sample_image[:100, :75]  # not multiples of 16: padded, cropped back
    alone = codec.analyse_in_context(chunk, (0, 0), chunk.shape)
    assert codec.encode_latent(alone, chunk.shape) == codec.encode(chunk)


def test_context_symbols_decode_standalone_bit_for_bit(sample_image):
    codec = caecodec.ConvolutionalAutoencoder(quality=1)  # real weights: the context changes the symbols
    region = sample_image[:192, :200]  # a 128 x 120 chunk at (32, 48) with real pixels around it
    symbols = codec.analyse_in_context(region, (32, 48), (128, 120, 3))
    alone = codec.analyse_in_context(region[32:160, 48:168], (0, 0), (128, 120, 3))
    assert symbols.shape == alone.shape == (1, codec.latent_channels(), 8, 8)
    assert not np.array_equal(symbols, alone)
    encoded = codec.encode_latent(symbols, (128, 120, 3))
    header, decoded, _ = codec.decode_symbols(encoded)
    np.testing.assert_array_equal(decoded, symbols)
    assert header.shape == (128, 120, 3) and codec.decode(encoded).shape == (128, 120, 3)


def test_encode_latent_and_context_refuse_mismatches(sample_image):
    codec = caecodec.ConvolutionalAutoencoder(quality=8, weights=TINY)
    with pytest.raises(ValueError, match=r"int32 symbols of shape \(1, 8, 2, 2\); found int32 \(1, 8, 2, 3\)"):
        codec.encode_latent(np.zeros((1, 8, 2, 3), np.int32), (32, 32, 3))
    with pytest.raises(ValueError, match=r"multiple of 16 on both axes; found \(8, 0\)"):
        codec.analyse_in_context(sample_image[:64, :64], (8, 0), (32, 32, 3))


def test_partial_decompress_returns_the_latent(sample_image):
    chunk = sample_image[:100, :75]
    codec = caecodec.ConvolutionalAutoencoder(quality=2)
    latent = caecodec.ConvolutionalAutoencoder(quality=2, partial_decompress=True).decode(codec.encode(chunk))
    m = codec.latent_channels()
    assert latent.shape == (7, 5, m) and latent.dtype == np.float32
    tables = codec._model().tables
    expected = analysis_symbols(codec, chunk)[0].transpose(1, 2, 0) + tables.medians
    np.testing.assert_array_equal(latent, expected.astype(np.float32))


def test_decode_into_out_buffer(sample_image):
    codec = caecodec.ConvolutionalAutoencoder(quality=3)
    chunk = sample_image[:48, :64]
    out = np.empty_like(chunk)
    codec.decode(codec.encode(chunk), out=out)
    np.testing.assert_array_equal(out, codec.decode(codec.encode(chunk)))


# -- errors ------------------------------------------------------------------------------------------
def reheader(encoded: bytes, **changes) -> bytes:
    header, words, escapes = bitstream.unpack(encoded)
    fields = {**header.__dict__, **changes}
    fields.pop("format_version")
    return bitstream.pack(bitstream.Header(**fields), words, escapes)


def test_bad_bytes_raise_errors_naming_the_cause(sample_image):
    codec = caecodec.ConvolutionalAutoencoder(quality=5)
    encoded = codec.encode(sample_image[:64, :64])
    cases = {
        b"garbage" * 10: "not a caecodec chunk",
        encoded[:-7]: "CRC32 mismatch",
        encoded[:30] + bytes([encoded[30] ^ 1]) + encoded[31:]: "CRC32 mismatch",
        encoded[:4] + bytes([9]) + encoded[5:]: "format version 9; this caecodec reads versions up to 1",
        reheader(encoded, weights_version=99): "weights version 99, which this installation lacks",
        reheader(encoded, weights_digest=b"\0" * 8): "weights of digest 0000000000000000",
        reheader(encoded, quality=4): "written at quality 4",
        b"": "not a caecodec chunk",
    }
    for data, message in cases.items():
        with pytest.raises(caecodec.ChunkError, match=message):
            codec.decode(data)
    with pytest.raises(caecodec.ChunkError, match="checkpoint file"):
        codec.decode(caecodec.ConvolutionalAutoencoder(quality=5, weights=TINY).encode(sample_image[:32, :32]))
    with pytest.raises(caecodec.ChunkError, match="bundled weights version"):
        caecodec.ConvolutionalAutoencoder(quality=5, weights=TINY).decode(encoded)


def test_chunk_of_another_shape_in_a_format_3_array_names_both_shapes(tmp_path, sample_image):
    def array(name, chunk):
        z = zarr.create_array(str(tmp_path / name), shape=(64, 64, 3), chunks=(chunk, chunk, 3), dtype="uint8",
                              serializer=caecodec.CAECodec(quality=2, weights=TINY), compressors=None)
        z[:] = sample_image[:64, :64]
        return z

    array("small.zarr", 16)
    large = array("large.zarr", 32)
    shutil.copy(tmp_path / "small.zarr" / "c" / "0" / "0" / "0", tmp_path / "large.zarr" / "c" / "0" / "0" / "0")
    with pytest.raises(caecodec.ChunkError, match=r"decodes to shape \(16, 16, 3\), the array expects \(32, 32, 3\)"):
        large[:32, :32]


def test_bad_chunks_raise_errors_naming_the_problem():
    codec = caecodec.ConvolutionalAutoencoder(weights=TINY)
    for chunk, message in [
        (np.zeros((8, 8, 3), np.float32), "expected dtype uint8, found float32"),
        (np.zeros((8, 8), np.uint8), r"found shape \(8, 8\)"),
        (np.zeros((0, 8, 3), np.uint8), "empty chunk"),
    ]:
        with pytest.raises(ValueError, match=message):
            codec.encode(chunk)


# -- weights -----------------------------------------------------------------------------------------
def test_local_checkpoint_weights(tmp_path, sample_image):
    codec = caecodec.ConvolutionalAutoencoder(quality=1, weights=TINY)
    encoded = codec.encode(sample_image[:40, :40])
    header, _, _ = bitstream.unpack(encoded)
    assert header.weights_version == 0
    assert header.weights_digest == bytes.fromhex(weights.sha256_file(TINY_CHECKPOINT))[:8]
    assert codec.decode(encoded).shape == (40, 40, 3)
    with pytest.raises(ValueError, match="weights must be 'bundled', 'compressai' or a checkpoint file"):
        caecodec.ConvolutionalAutoencoder(weights=str(tmp_path / "missing.pth")).encode(sample_image[:16, :16])


def test_compressai_weights_download_into_cache_with_sha256_check(tmp_path, monkeypatch, sample_image):
    """The download path, served from a local directory instead of CompressAI's site."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    prefix = hashlib.sha256(TINY_CHECKPOINT.read_bytes()).hexdigest()[:8]
    monkeypatch.setitem(weights.COMPRESSAI_HASHES, "mse", (prefix,) * 8)
    shutil.copy(TINY_CHECKPOINT, mirror / weights.compressai_filename(3, "mse"))
    monkeypatch.setenv("CAECODEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CAECODEC_COMPRESSAI_URL", mirror.as_uri())
    codec = caecodec.ConvolutionalAutoencoder(quality=3, weights="compressai")
    assert codec.decode(codec.encode(sample_image[:32, :32])).shape == (32, 32, 3)
    cached = tmp_path / "cache" / "compressai" / weights.compressai_filename(3, "mse")
    assert cached.exists()
    cached.write_bytes(cached.read_bytes()[:-1] + b"x")  # a corrupted cache is refused, not used
    with pytest.raises(weights.WeightsError, match="sha256 expected to start with"):
        weights.fetch_compressai(3, "mse")
    monkeypatch.setenv("CAECODEC_COMPRESSAI_URL", (tmp_path / "nowhere").as_uri())
    with pytest.raises(weights.WeightsError, match="cannot download CompressAI weights"):
        weights.fetch_compressai(4, "mse")


def test_bundled_weights_cover_sixteen_configurations(sample_image):
    sizes = {}
    for metric in ("mse", "ms-ssim"):
        for quality in range(1, 9):
            codec = caecodec.ConvolutionalAutoencoder(quality=quality, metric=metric)
            encoded = codec.encode(sample_image)
            assert codec.decode(encoded).shape == sample_image.shape
            sizes[metric, quality] = len(encoded)
    for metric in ("mse", "ms-ssim"):
        assert sizes[metric, 1] < sizes[metric, 8]  # quality 1 smallest files, 8 the largest


# -- concurrency ---------------------------------------------------------------------------------------
def test_one_codec_from_many_threads_gives_sequential_bytes(sample_image):
    codec = caecodec.ConvolutionalAutoencoder(quality=6)
    tiles = [sample_image[r : r + 96, c : c + 128] for r in range(0, 384, 96) for c in range(0, 512, 128)]
    sequential = [codec.encode(tile) for tile in tiles]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(codec.encode, tiles))
        decoded = list(pool.map(codec.decode, concurrent))
    assert concurrent == sequential
    for tile, pixels in zip(sequential, decoded):
        np.testing.assert_array_equal(pixels, codec.decode(tile))
    assert codec._model() is caecodec.ConvolutionalAutoencoder(quality=6)._model()  # loaded once, shared


# -- rate ----------------------------------------------------------------------------------------------
def test_coded_size_within_one_percent_of_theoretical_on_kodak(kodak_dir):
    image = load_rgb(kodak_dir / "kodim05.png")
    for quality in (1, 8):
        codec = caecodec.ConvolutionalAutoencoder(quality=quality)
        loaded = codec._model()
        bits = theoretical_bits(analysis_symbols(codec, image), loaded.tables)
        assert 8 * len(codec.encode(image)) <= 1.01 * bits


# -- weights versions --------------------------------------------------------------------------------
def test_pinned_weights_version_writes_that_version_and_every_version_reads(sample_image, tmp_path):
    versions = weights.bundled_versions()
    if len(versions) < 2:
        pytest.skip(f"needs two bundled weights versions, this installation has {versions}")
    oldest, newest = versions[0], versions[-1]
    chunk = sample_image[:64, :80]
    pinned = caecodec.ConvolutionalAutoencoder(quality=3, weights_version=oldest)
    default = caecodec.ConvolutionalAutoencoder(quality=3)
    pinned_bytes, default_bytes = pinned.encode(chunk), default.encode(chunk)
    assert bitstream.unpack(pinned_bytes)[0].weights_version == oldest
    assert bitstream.unpack(default_bytes)[0].weights_version == newest
    assert pinned_bytes != default_bytes
    for data in (pinned_bytes, default_bytes):  # each chunk decodes with the weights its header names
        np.testing.assert_array_equal(default.decode(data), pinned.decode(data))

    assert numcodecs.get_codec(pinned.get_config()).get_config() == pinned.get_config()
    assert "weights_version" not in default.get_config()
    array = zarr.create_array(tmp_path / "pinned.zarr", shape=(64, 80, 3), chunks=(64, 80, 3), dtype="uint8",
                              serializer=caecodec.CAECodec(quality=3, weights_version=oldest), compressors=None)
    array[:] = chunk
    reopened = zarr.open_array(tmp_path / "pinned.zarr", mode="r")
    assert reopened.serializer.weights_version == oldest  # the pin is part of the array's metadata
    raw = (reopened.store_path / reopened.metadata.encode_chunk_key((0, 0, 0))).get_sync().to_bytes()
    assert raw == pinned_bytes


def test_bad_weights_versions_are_refused_with_the_value(sample_image):
    for bad in (0, -1, 1.5, "1", True):
        with pytest.raises(ValueError, match=f"weights_version must be .* found {bad!r}"):
            caecodec.ConvolutionalAutoencoder(quality=3, weights_version=bad)
    with pytest.raises(ValueError, match="pins a version of the bundled weights; found weights="):
        caecodec.ConvolutionalAutoencoder(quality=3, weights=TINY, weights_version=1)
    missing = max(weights.bundled_versions()) + 1
    with pytest.raises(weights.WeightsError, match=f"version {missing}, which this installation lacks"):
        caecodec.ConvolutionalAutoencoder(quality=3, weights_version=missing).encode(sample_image[:32, :32])
