"""Fuzz the chunk decoder: any bytes must decode or raise one of our own clear errors, nothing else.

    nice -n 2 python3 benchmarks/fuzz_decoder.py --runs 100000            # atheris (coverage-guided)
    nice -n 2 python3 benchmarks/fuzz_decoder.py --runs 100000 --mutate   # seeded mutation loop, no atheris

Almost every mutated chunk fails its CRC32 before anything else is parsed, so half of the inputs get
their CRC recomputed after mutation: those reach the header checks, the payload bound and the
entropy decoder behind the CRC. Inputs run through the tiny checkpoint (fast) and the bundled
weights (the real tables), decoding to pixels and to latents (partial_decompress).
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "fuzz_corpus"
TINY_CHECKPOINT = ROOT / "tests" / "data" / "tiny_factorized_N8_M8.pth"
BUNDLED_QUALITY = 1


def clear_errors() -> type:
    """The one exception a reader may see from bad bytes: ours, naming the problem."""
    from caecodec.bitstream import ChunkError

    return ChunkError


def with_fixed_crc(chunk: bytes) -> bytes:
    """The chunk with its last 4 bytes replaced by the CRC32 of everything before them."""
    body = chunk[:-4] if len(chunk) >= 4 else chunk
    return body + struct.pack("<I", zlib.crc32(body))


def codecs() -> list:
    """Decoders to fuzz, by index: tiny checkpoint (pixels, latents), bundled weights (pixels, latents)."""
    from caecodec import ConvolutionalAutoencoder

    tiny = dict(quality=8, weights=str(TINY_CHECKPOINT), gpu=False)
    bundled = dict(quality=BUNDLED_QUALITY, gpu=False)
    return [ConvolutionalAutoencoder(**tiny), ConvolutionalAutoencoder(**tiny, partial_decompress=True),
            ConvolutionalAutoencoder(**bundled), ConvolutionalAutoencoder(**bundled, partial_decompress=True)]


def decode_or_clear_error(codec, data: bytes) -> bool:
    """True when `data` decodes, False when it raises a clear error; anything else propagates (a bug)."""
    try:
        codec.decode(data)
    except clear_errors():
        return False
    return True


def seed_chunks() -> list[tuple[int, bytes]]:
    """(weights family, chunk): the committed corpus (0: tiny checkpoint) plus chunks made now with the
    bundled weights (1), which change between versions and so are not committed."""
    import numpy as np

    seeds = [(0, path.read_bytes()) for path in sorted(CORPUS.glob("*.cae"))]
    bundled = codecs()[2]
    rng = np.random.default_rng(0)
    for shape in [(16, 16, 3), (20, 37, 3), (2, 8, 8, 3)]:
        seeds.append((1, bundled.encode(rng.integers(0, 256, shape, dtype=np.uint8))))
    return seeds


# -- mutations -------------------------------------------------------------------------------------
def mutate(rng: random.Random, chunk: bytes) -> bytes:
    """One random damage: flipped bits, overwritten bytes, truncation, extension, splice or pure noise."""
    data = bytearray(chunk)
    kind = rng.randrange(8)
    if kind == 0 and data:  # flip a few bits
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1 and data:  # overwrite a few bytes, favouring the header
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(min(len(data), rng.choice([32, 64, len(data)])))] = rng.choice([0, 1, 0x7F, 0xFF, rng.randrange(256)])
    elif kind == 2:  # truncate
        del data[rng.randrange(len(data) + 1):]
    elif kind == 3:  # extend
        data += rng.randbytes(rng.randint(1, 64))
    elif kind == 4 and data:  # insert or delete a run inside
        at = rng.randrange(len(data))
        if rng.random() < 0.5:
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        else:
            del data[at:at + rng.randint(1, 16)]
    elif kind == 5:  # a 32-bit field set to an extreme (dimensions, lengths)
        if len(data) >= 4:
            at = rng.randrange(len(data) - 3)
            data[at:at + 4] = struct.pack("<I", rng.choice([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.getrandbits(32)]))
    elif kind == 6 and len(data) > 8:  # damage the entropy-coded payload only, the header stays consistent
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data) // 2, len(data) - 4)] = rng.randrange(256)
    else:  # noise, sometimes behind a valid magic
        data = bytearray((b"CAEC" if rng.random() < 0.5 else b"") + rng.randbytes(rng.randint(0, 96)))
    return bytes(data)


def mutation_inputs(seeds: list[tuple[int, bytes]], count: int, seed: int = 0):
    """`count` (decoder index, bytes) pairs: mutated seeds, half of them with the CRC recomputed, mostly
    sent to a decoder with the seed's weights (so that they get past the weights checks)."""
    rng = random.Random(seed)
    for _ in range(count):
        family, data = seeds[rng.randrange(len(seeds))]
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            data = mutate(rng, data)
        family = family if rng.random() < 0.9 else 1 - family
        yield 2 * family + rng.randrange(2), (with_fixed_crc(data) if rng.random() < 0.5 else data)


def run_mutation_loop(runs: int, seed: int) -> dict:
    decoders = codecs()
    decoded = 0
    start = time.perf_counter()
    for index, data in mutation_inputs(seed_chunks(), runs, seed):
        decoded += decode_or_clear_error(decoders[index], data)
    return {"inputs": runs, "decoded": decoded, "crashes": 0, "seconds": time.perf_counter() - start}


# -- atheris ---------------------------------------------------------------------------------------
def run_atheris(runs: int, seed: int) -> None:
    """libFuzzer drives the bytes; the first byte picks the decoder and whether the CRC gets fixed."""
    import atheris

    with atheris.instrument_imports():
        from caecodec import bitstream, codec, coding  # noqa: F401  (instrumented for coverage)
    decoders = codecs()
    corpus = Path(f"/tmp/caecodec_fuzz_corpus_{seed}")
    corpus.mkdir(exist_ok=True)
    for i, (family, chunk) in enumerate(seed_chunks()):
        (corpus / f"seed{i}").write_bytes(bytes([1 | (family << 2)]) + chunk)  # CRC fixed, pixels

    def one_input(data: bytes) -> None:
        if not data:
            return
        flags, chunk = data[0], data[1:]
        decode_or_clear_error(decoders[(flags >> 1) % 4], with_fixed_crc(chunk) if flags & 1 else chunk)

    atheris.Setup([sys.argv[0], f"-runs={runs}", f"-seed={seed}", "-timeout=60", "-rss_limit_mb=4096", "-max_len=4096",
                   "-print_final_stats=1", str(corpus)], one_input)
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mutate", action="store_true", help="seeded mutation loop instead of atheris")
    args = parser.parse_args()
    if args.mutate:
        print(run_mutation_loop(args.runs, args.seed))
    else:
        run_atheris(args.runs, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
