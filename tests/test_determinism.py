"""Determinism: the bytes a chunk encodes to depend on nothing but the pixels and the weights.

Committed reference chunks (tests/fixtures, written once by make_fixtures.py and never regenerated)
pin the format: any change that would alter written data, or stop old data from decoding, fails here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY_CHECKPOINT

FIXTURES = ROOT / "tests" / "fixtures"


def dropped_versions() -> set[str]:
    """Provisional bundled versions dropped before the first release: their fixtures must fail, naming them."""
    from caecodec import weights

    return set(weights.manifest().get("dropped", {}))


def retabled_versions() -> dict[str, str]:
    """Bundled versions that are another version's network with exact tables (`caecodec train --retable`), each
    with its source."""
    from caecodec import weights

    return {version: str(card["retabled_from"]) for version, card in weights.manifest()["versions"].items()
            if "retabled_from" in card}


DROPPED = dropped_versions()
FIXTURE_CONFIGS = sorted(p for p in FIXTURES.glob("*/*.json") if p.parent.name[1:] not in DROPPED)
DROPPED_FIXTURE_CONFIGS = sorted(p for p in FIXTURES.glob("*/*.json") if p.parent.name[1:] in DROPPED)
RETABLED_FIXTURE_CONFIGS = [(version, path) for version, source in retabled_versions().items()
                            for path in sorted(FIXTURES.glob(f"v{source}/*.json"))]


def load_fixture_maker():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_fixtures = load_fixture_maker()


# -- pinned reference chunks -----------------------------------------------------------------------
def test_tiny_checkpoint_fixtures_are_committed():
    names = {path.parent.name for path in FIXTURE_CONFIGS}
    assert "tiny" in names and len(FIXTURE_CONFIGS) >= 2


def test_every_bundled_weights_version_has_committed_fixtures():
    from caecodec import weights

    versions = weights.bundled_versions()
    assert versions, "the package bundles no weights"
    missing = [v for v in versions if not list((FIXTURES / f"v{v}").glob("*.json"))]
    assert not missing, f"write fixtures for bundled weights {missing}: python3 tests/fixtures/make_fixtures.py bundled"


@pytest.mark.parametrize("config_path", FIXTURE_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_reference_chunk_still_decodes_and_reencodes_to_the_same_bytes(config_path):
    stem = config_path.parent / config_path.stem
    codec = make_fixtures.codec_for(json.loads(config_path.read_text()), config_path.parent.name)
    chunk = stem.with_suffix(".cae").read_bytes()
    source = np.load(f"{stem}.source.npy")

    _, symbols, _ = codec.decode_symbols(chunk)
    np.testing.assert_array_equal(symbols, np.load(f"{stem}.symbols.npy"))
    pixels, reference = codec.decode(chunk), np.load(f"{stem}.pixels.npy")
    assert pixels.shape == reference.shape == source.shape and pixels.dtype == np.uint8
    # the latent is exact everywhere; the synthesis runs in floats, so another machine may round a pixel differently
    assert np.abs(pixels.astype(int) - reference).max() <= 1
    assert codec.encode(source) == chunk, "re-encoding the reference source no longer gives the committed bytes"


@pytest.mark.parametrize("config_path", DROPPED_FIXTURE_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_chunk_of_a_dropped_version_fails_naming_that_version(config_path):
    from caecodec import ConvolutionalAutoencoder
    from caecodec.bitstream import ChunkError

    version, config = config_path.parent.name[1:], json.loads(config_path.read_text())
    chunk = config_path.with_suffix(".cae").read_bytes()
    codec = ConvolutionalAutoencoder(quality=config["quality"], metric=config["metric"], gpu=False)
    for read in (codec.decode, codec.decode_symbols):
        with pytest.raises(ChunkError, match=f"chunk needs bundled weights version {version}, which this "
                                               f"installation lacks .*: version {version} was provisional"):
            read(chunk)


@pytest.mark.parametrize("version, config_path", RETABLED_FIXTURE_CONFIGS,
                         ids=lambda p: f"{p.parent.name}/{p.stem}" if hasattr(p, "stem") else f"v{p}")
def test_a_retabled_version_codes_its_sources_fixtures_to_the_same_symbols_and_pixels(version, config_path):
    """Only the tables differ: the symbols are the source version's, the chunk no larger."""
    stem = config_path.parent / config_path.stem
    config = json.loads(config_path.read_text()) | {"weights_version": int(version)}
    codec = make_fixtures.codec_for(config)
    chunk = codec.encode(np.load(f"{stem}.source.npy"))
    _, symbols, _ = codec.decode_symbols(chunk)
    np.testing.assert_array_equal(symbols, np.load(f"{stem}.symbols.npy"))
    assert np.abs(codec.decode(chunk).astype(int) - np.load(f"{stem}.pixels.npy")).max() <= 1
    assert len(chunk) <= len(stem.with_suffix(".cae").read_bytes())


def test_bundle_is_within_40_mb():
    from caecodec import weights

    files = [weights.BUNDLE_DIR / card["file"] for card in weights.manifest()["versions"].values()]
    size = sum(path.stat().st_size for path in files) + (weights.BUNDLE_DIR / "manifest.json").stat().st_size
    assert size <= 40_000_000, f"bundled weights take {size / 1e6:.1f} MB; drop a provisional version"


def test_fixture_maker_refuses_to_overwrite(tmp_path):
    config = {"quality": 8, "metric": "mse", "weights": "tiny"}
    source = np.zeros((16, 16, 3), np.uint8)
    make_fixtures.write_fixture(tmp_path, "flat", config, source)
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        make_fixtures.write_fixture(tmp_path, "flat", config, source)


# -- torch threads ---------------------------------------------------------------------------------
ENCODE_WITH_THREADS = """
import hashlib, json, sys
import numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from caecodec import ConvolutionalAutoencoder
from caecodec.evaluation import load_rgb
image = load_rgb(sys.argv[2])
chunks = {"crop": image[37:137, 51:203], "stack": np.stack([image[:48, :64], image[200:248, 300:364]])}
digest = lambda a: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
out = {"threads": torch.get_num_threads()}
for weights, quality in ((sys.argv[3], 8), ("bundled", 1), ("bundled", 8)):
    codec = ConvolutionalAutoencoder(quality=quality, weights=weights, gpu=False)
    latents = ConvolutionalAutoencoder(quality=quality, weights=weights, gpu=False, partial_decompress=True)
    for name, chunk in chunks.items():
        data = codec.encode(chunk)
        key = f"{weights[-12:]} q{quality} {name}"
        out[key] = [digest(np.frombuffer(data, np.uint8)), digest(latents.decode(data)), digest(codec.decode(data))]
print(json.dumps(out))
"""


def encode_in_subprocess(threads: int) -> dict:
    from conftest import SAMPLE

    result = subprocess.run([sys.executable, "-c", ENCODE_WITH_THREADS, str(threads), str(SAMPLE), str(TINY_CHECKPOINT)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_one_and_two_torch_threads_give_identical_bytes_latents_and_pixels():
    one, two = encode_in_subprocess(1), encode_in_subprocess(2)
    assert (one.pop("threads"), two.pop("threads")) == (1, 2)
    assert len(one) == 6
    for key in one:
        assert one[key][0] == two[key][0], f"{key}: chunk bytes differ between 1 and 2 torch threads"
        assert one[key][1:] == two[key][1:], f"{key}: decoded latents or pixels differ between 1 and 2 threads"
