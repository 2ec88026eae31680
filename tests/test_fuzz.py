"""Hostile and damaged input: chunks that are mutated, truncated, extended or random, and hostile weights files.

A reader must only ever see our own clear error (ChunkError, naming the problem), never a crash, a hang, a foreign exception or an allocation out of proportion
to the bytes. The long coverage-guided run is `benchmarks/fuzz_decoder.py` (figures in docs/RELIABILITY.md).
"""

from __future__ import annotations

import importlib.util
import shutil
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caecodec import ChunkError, ConvolutionalAutoencoder, WeightsError, bitstream, coding, weights

from conftest import ROOT, TINY_CHECKPOINT

TINY = str(TINY_CHECKPOINT)
CORPUS = sorted((ROOT / "tests" / "fuzz_corpus").glob("*.cae"))


def load_fuzzer():
    spec = importlib.util.spec_from_file_location("fuzz_decoder", ROOT / "benchmarks" / "fuzz_decoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzzer = load_fuzzer()


@pytest.fixture(scope="module")
def tiny_codec():
    return ConvolutionalAutoencoder(weights=TINY, gpu=False)


def chunk_with_header(shape, n_words=0, payload=b"", channels=8, weights_version=0, digest=None) -> bytes:
    """A well-formed, CRC-valid chunk whose header says whatever the test wants."""
    digest = digest if digest is not None else weights.sha256_file(TINY_CHECKPOINT)[:16]
    header = bitstream.Header("mse", 8, weights_version, bytes.fromhex(digest), channels, tuple(shape))
    chunk = bitstream.pack(header, np.zeros(0, np.uint32), b"")
    body = chunk[:-12] + struct.pack("<II", n_words, len(payload) - 4 * n_words) + payload
    return body + struct.pack("<I", zlib.crc32(body))


# -- the corpus and a short fuzz run ----------------------------------------------------------------
def test_corpus_chunks_decode(tiny_codec):
    assert len(CORPUS) >= 5
    for path in CORPUS:
        header, _, _ = bitstream.unpack(path.read_bytes())
        assert tiny_codec.decode(path.read_bytes()).shape == header.shape


def test_short_fuzz_run_gives_only_clear_errors():
    """3,000 mutated corpus chunks, half with a recomputed CRC, through four decoders: no foreign exception."""
    decoders = fuzzer.codecs()
    seeds = fuzzer.seed_chunks()
    outcomes = {"decoded": 0, "crc": 0, "entropy decoder": 0, "header": 0}
    for index, data in fuzzer.mutation_inputs(seeds, 3000, seed=11):
        try:
            decoders[index].decode(data)
            outcomes["decoded"] += 1
        except fuzzer.clear_errors() as error:
            message = str(error)
            outcomes["crc" if "CRC32" in message else "entropy decoder" if "entropy" in message else "header"] += 1
    # the run must have exercised the parser and the entropy decoder behind the CRC, not only the checksum
    assert outcomes["header"] > 500 and outcomes["entropy decoder"] > 50 and outcomes["decoded"] > 0, outcomes


def test_every_single_bit_flip_and_truncation_is_detected(tiny_codec):
    """CRC32 catches every 1-bit error and every truncation: damaged bytes never come back as pixels."""
    chunk = CORPUS[0].read_bytes()
    for position in range(len(chunk) * 8):
        damaged = bytearray(chunk)
        damaged[position // 8] ^= 1 << (position % 8)
        with pytest.raises(ChunkError):
            tiny_codec.decode(bytes(damaged))
    for length in range(len(chunk)):
        with pytest.raises(ChunkError):
            tiny_codec.decode(chunk[:length])
    with pytest.raises(ChunkError):
        tiny_codec.decode(chunk + b"\0")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.booleans(), st.booleans())
def test_random_bytes_give_clear_errors(data, with_magic, fix_crc):
    data = (b"CAEC\x01" + data) if with_magic else data
    data = fuzzer.with_fixed_crc(data) if fix_crc else data
    try:
        bitstream.unpack(data)
    except ChunkError:
        pass
    fuzzer.decode_or_clear_error(ConvolutionalAutoencoder(weights=TINY, gpu=False), data)


# -- huge claims are refused before allocating -----------------------------------------------------
@pytest.mark.parametrize("shape, reason", [
    ((70000, 70000, 3), "more than"),  # beyond MAX_CHUNK_BYTES: refused by the header check
    ((8, 30000, 9000, 3), "more than"),
    ((30000, 30000, 3), "latent positions need"),  # within the bound but not backed by the payload
    ((1, 1, 2**16, 2**12, 3), "latent positions need"),
    ((640, 640, 3), "latent positions need"),  # just above the size any chunk may claim
])
def test_valid_crc_header_claiming_huge_dimensions_is_refused_without_allocating(tiny_codec, shape, reason):
    chunk = chunk_with_header(shape, n_words=2, payload=b"\x01\0\0\0\x02\0\0\0")
    tracemalloc.start()
    try:
        with pytest.raises(ChunkError, match=reason):
            tiny_codec.decode(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"refusing a {shape} claim allocated {peak} bytes"


def test_small_claims_without_payload_decode_to_the_lowest_symbols(tiny_codec):
    """Below the checked size an empty ANS stack is a valid (degenerate) chunk: it decodes, fast and bounded."""
    pixels = tiny_codec.decode(chunk_with_header((48, 64, 3)))
    assert pixels.shape == (48, 64, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize("configuration", [dict(weights=TINY), dict(quality=1), dict(quality=8)],
                         ids=["tiny", "bundled-q1", "bundled-q8"])
def test_payload_bound_accepts_real_chunks_above_the_unchecked_size(sample_image, configuration):
    codec = ConvolutionalAutoencoder(gpu=False, **configuration)
    stack = np.stack([sample_image[:272], sample_image[-272:]])
    assert 2 * (272 // 16) * (512 // 16) > coding.UNCHECKED_POSITIONS
    assert codec.decode(codec.encode(stack)).shape == stack.shape


def test_wrong_channel_count_and_foreign_weights_are_named(tiny_codec):
    with pytest.raises(ChunkError, match="latent channels"):
        tiny_codec.decode(chunk_with_header((16, 16, 3), channels=9))
    with pytest.raises(ChunkError, match="digest"):
        tiny_codec.decode(chunk_with_header((16, 16, 3), digest="00" * 8))
    unreleased = weights.latest_version() + 1
    with pytest.raises(ChunkError, match="bundled weights version"):
        tiny_codec.decode(chunk_with_header((16, 16, 3), weights_version=unreleased))
    with pytest.raises(ChunkError, match=f"version {unreleased}.*lacks"):
        ConvolutionalAutoencoder(quality=8, gpu=False).decode(chunk_with_header((16, 16, 3), weights_version=unreleased))


# -- hostile weights ---------------------------------------------------------------------------------
class ArbitraryCode:
    """Unpickling this object would create `marker`: the proof that a checkpoint ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_checkpoint_with_pickled_code_is_refused_and_never_runs(tmp_path, sample_image):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pth"
    state = torch.load(TINY_CHECKPOINT, weights_only=True)
    torch.save({"state_dict": state, "extra": ArbitraryCode(marker)}, evil)
    codec = ConvolutionalAutoencoder(weights=str(evil), gpu=False)
    with pytest.raises(ValueError, match=r"refused: the checkpoint holds a Python object \(io.open\)"):
        codec.encode(sample_image[:16, :16])
    assert not marker.exists()


def test_python_file_given_as_weights_is_never_executed(tmp_path, sample_image):
    marker = tmp_path / "module_ran"
    script = tmp_path / "weights.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    for name in (str(script), "os.system", "weights"):
        with pytest.raises(ValueError):
            ConvolutionalAutoencoder(weights=name, gpu=False).encode(sample_image[:16, :16])
    assert not marker.exists()


def test_compressai_cache_refuses_a_file_whose_sha256_does_not_match(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    name = weights.compressai_filename(1, "mse")
    shutil.copy(TINY_CHECKPOINT, mirror / name)  # right name, wrong content
    monkeypatch.setenv("CAECODEC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsError, match="sha256 expected to start with 446d5c7f"):
        weights.fetch_compressai(1, "mse", base_url=mirror.as_uri())
    cached = tmp_path / "cache" / "compressai" / name
    assert cached.exists()  # kept for inspection, and refused again on every later use
    with pytest.raises(WeightsError, match="delete the file"):
        weights.fetch_compressai(1, "mse", base_url=mirror.as_uri())


def test_bundled_weights_are_safetensors_not_pickles():
    from safetensors import safe_open

    card = weights.version_card(weights.latest_version())
    with safe_open(weights.BUNDLE_DIR / card["file"], framework="pt") as tensors:  # raises on a pickle
        assert any(key.startswith("g_a.") for key in tensors.keys())
