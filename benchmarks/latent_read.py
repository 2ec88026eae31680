"""Reading latents through BottleneckStore vs decoding pixels, for one large caecodec array.

    nice -n 2 python3 benchmarks/latent_read.py --size 4096 --chunk 512 --quality 8

Writes a size x size RGB array (the bundled sample photo tiled) with caecodec into a temporary zarr store,
then times reading the whole array as latents (entropy decoding only) and as pixels (entropy decoding and
the synthesis transform). Results go to docs/latent_read.md and docs/latent_read.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

import caecodec
from caecodec.evaluation import load_rgb, psnr

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "caecodec" / "data" / "sample.png"


def tiled_image(size: int) -> np.ndarray:
    """A size x size RGB image made by tiling (mirroring alternate tiles, so there are no hard seams) the sample."""
    tile = load_rgb(SAMPLE)
    mirrored = np.concatenate([tile, tile[::-1]], axis=0)
    mirrored = np.concatenate([mirrored, mirrored[:, ::-1]], axis=1)
    reps = (-(-size // mirrored.shape[0]), -(-size // mirrored.shape[1]), 1)
    return np.ascontiguousarray(np.tile(mirrored, reps)[:size, :size])


def timed(read) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = read()
    return time.perf_counter() - start, result


def run(size: int, chunk: int, quality: int) -> dict:
    image = tiled_image(size)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image.zarr"
        array = zarr.create_array(path, shape=image.shape, chunks=(chunk, chunk, 3), dtype="uint8",
                                  serializer=caecodec.CAECodec(quality=quality), compressors=None)
        encode_seconds, _ = timed(lambda: array.__setitem__(Ellipsis, image))
        stored = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        latent_seconds, latents = timed(lambda: caecodec.open_latents(path)[...])
        pixel_seconds, pixels = timed(lambda: zarr.open_array(path, mode="r")[...])
    return {
        "shape": list(image.shape), "chunks": [chunk, chunk, 3], "quality": quality,
        "latent_shape": list(latents.shape), "bits_per_pixel": 8 * stored / (size * size),
        "encode_seconds": encode_seconds, "latent_read_seconds": latent_seconds, "pixel_read_seconds": pixel_seconds,
        "speedup": pixel_seconds / latent_seconds, "pixel_psnr_db": psnr(image, pixels),
    }


def environment() -> dict:
    from caecodec.weights import latest_version

    return {"python": platform.python_version(), "torch": torch.__version__, "zarr": zarr.__version__,
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
            "weights": f"bundled v{latest_version()}"}


def markdown(result: dict, env: dict, command: str) -> str:
    r = result
    return f"""# Reading latents vs decoding pixels

Command: `{command}`

A {r['shape'][0]}x{r['shape'][1]} RGB array (the bundled sample photo tiled), chunks {r['chunks'][0]}x{r['chunks'][1]},
quality {r['quality']} ({r['bits_per_pixel']:.3f} bpp, pixel PSNR {r['pixel_psnr_db']:.2f} dB), stored with the native
zarr 3 serializer. Latents are read through `caecodec.open_latents` (BottleneckStore: entropy decoding only);
pixels through plain `zarr.open_array` (entropy decoding and the synthesis transform).

| read | seconds | result |
|---|---:|---|
| latents (BottleneckStore) | {r['latent_read_seconds']:.2f} | float32 {tuple(r['latent_shape'])} |
| pixels (zarr) | {r['pixel_read_seconds']:.2f} | uint8 {tuple(r['shape'])} |
| **speed-up** | **{r['speedup']:.1f}x** | target >= 5x |

Writing (encoding) took {r['encode_seconds']:.1f} s. Environment: Python {env['python']}, torch {env['torch']},
zarr {env['zarr']}, {env['torch_threads']} torch threads on {env['cpus']} CPUs (load average {env['load_average']:.1f}
at the end: other jobs shared the machine), weights {env['weights']}.
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--quality", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "latent_read")
    args = parser.parse_args(argv)
    result = run(args.size, args.chunk, args.quality)
    env = environment()
    command = "nice -n 2 python3 benchmarks/latent_read.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"result": result, "environment": env, "command": command},
                                                        indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result, env, command.strip()))
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
