"""Very large images: peak memory and throughput of `caecodec to-zarr` / `from-zarr`, and tile-seam PSNR.

    python3 benchmarks/large_image.py stream --height 512 --width 30000 -q 1   # a full-width band strip
    python3 benchmarks/large_image.py seams -q 1 --chunk 256                    # Kodak photos, seam vs interior

`stream` synthesises a tiled BigTIFF by tiling the Kodak photos (written tile by tile, never whole), runs
the real CLI in a subprocess for each direction and records its peak RSS (getrusage of the child) and
MPix/s. Memory depends on the width (one band of chunk rows is held), not the height, so a full-width
strip measures the memory of a 30000x30000 image; its time scales with the pixel count.
`seams` codes Kodak photos in independent chunks and compares the PSNR in 8-pixel bands on either side of
each internal chunk border with the PSNR of the rest, with whole-image coding as the control.
Results are appended to docs/large_image.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
RESULTS = ROOT / "docs" / "large_image.json"


def kodak_photos() -> np.ndarray:
    """The 24 Kodak photos as one (24, 512, 768, 3) array, portrait ones turned to landscape."""
    from caecodec.evaluation import load_rgb

    photos = [load_rgb(path) for path in sorted(KODAK.glob("*.png"))]
    return np.stack([np.rot90(photo) if photo.shape[0] > photo.shape[1] else photo for photo in photos])


def mosaic_region(photos, rows: slice, cols: slice) -> np.ndarray:
    """Pixels of an endless mosaic of the photos (each 512x768, row-major, cycling through the set)."""
    ys, xs = np.arange(rows.start, rows.stop), np.arange(cols.start, cols.stop)
    per_row = 7  # photos per mosaic row: neighbouring rows start with different photos
    index = ((ys[:, None] // 512) * per_row + xs[None, :] // 768) % len(photos)
    return photos[index, (ys % 512)[:, None], (xs % 768)[None, :]]


def write_bigtiff(path: Path, height: int, width: int, tile: int = 256) -> None:
    from caecodec.images import write_tiff_tiles
    from caecodec.tiling import full_tiles

    photos = kodak_photos()
    write_tiff_tiles(full_tiles(lambda rows: mosaic_region(photos, rows, slice(0, width)), height, width, tile),
                     path, (height, width), tile)


def timed_cli(*args) -> dict:
    """Run the CLI in a fresh process; its wall time and its own peak RSS (getrusage of that process)."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
        code = ("import resource, sys; from caecodec.cli import main; code = main(sys.argv[1:]); "
                f"open({report.name!r}, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); "
                "sys.exit(code)")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True)
        seconds = time.perf_counter() - start
        peak_kib = int(Path(report.name).read_text())
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak_kib / 1024, 1)}


def stream(args) -> dict:
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        folder = Path(folder)
        tiff = folder / "large.tif"
        write_bigtiff(tiff, args.height, args.width)
        mpix = args.height * args.width / 1e6
        encode = timed_cli("to-zarr", tiff, "-o", folder / "large.zarr", "-q", args.quality, "--chunk", args.chunk,
                           "--quiet")
        decode = timed_cli("from-zarr", folder / "large.zarr", "-o", folder / "out", "-f", "tiff", "--quiet")
        stored = sum(p.stat().st_size for p in (folder / "large.zarr").rglob("*") if p.is_file())
    for result in (encode, decode):
        result["mpix_per_s"] = round(mpix / result["seconds"], 3)
    return {"kind": "stream", "height": args.height, "width": args.width, "quality": args.quality,
            "chunk": args.chunk, "bpp": round(8 * stored / (mpix * 1e6), 4), "to_zarr": encode, "from_zarr": decode,
            "extrapolated_30000x30000_hours": {
                "to_zarr": round(900 / encode["mpix_per_s"] / 3600, 2),
                "from_zarr": round(900 / decode["mpix_per_s"] / 3600, 2)}}


def seam_psnr(original: np.ndarray, decoded: np.ndarray, chunk: int, band: int = 8) -> tuple[float, float]:
    """PSNR within `band` pixels of internal chunk borders, and PSNR of all other pixels."""
    from caecodec.evaluation import psnr

    height, width = original.shape[:2]
    near = np.zeros((height, width), bool)
    for border in range(chunk, height, chunk):
        near[border - band : border + band] = True
    for border in range(chunk, width, chunk):
        near[:, border - band : border + band] = True
    return psnr(original[near], decoded[near]), psnr(original[~near], decoded[~near])


def seams(args) -> dict:
    """Seam vs interior PSNR on Kodak photos for three ways of coding them (entropy coding is lossless, so the
    pixels come straight from the transforms): the whole image at once (control: what content alone does),
    independent chunks (what a zarr array stores), and independent chunks whose latents are stitched and
    synthesised together (a decoder-side option that needs no format change)."""
    from caecodec.compression import analyse, synthesise
    from caecodec.tiling import grid
    from caecodec.weights import load

    loaded = load(args.quality, "mse")

    def encode(pixels):
        return analyse(loaded.model, pixels[None], loaded.tables)

    def decode(symbols, height, width):
        return synthesise(loaded.model, symbols, loaded.tables, height, width)[0]

    latent_chunk = args.chunk // 16
    totals = {}
    names = [f"kodim{i:02d}" for i in range(1, args.images + 1)]
    for photo in kodak_photos()[: args.images]:
        height, width = photo.shape[:2]
        tiles = grid(height, width, args.chunk)
        chunked, stitched = np.empty_like(photo), np.zeros(encode(photo).shape, np.int32)
        for rows, cols in tiles:
            symbols = encode(photo[rows, cols])
            chunked[rows, cols] = decode(symbols, rows.stop - rows.start, cols.stop - cols.start)
            stitched[..., rows.start // 16 : rows.start // 16 + symbols.shape[2],
                     cols.start // 16 : cols.start // 16 + symbols.shape[3]] = symbols
        assert latent_chunk * 16 == args.chunk, "--chunk must be a multiple of 16"
        variants = {"whole_image": decode(encode(photo), height, width), "independent_chunks": chunked,
                    "chunks_joint_synthesis": decode(stitched, height, width)}
        for label, decoded in variants.items():
            totals.setdefault(label, []).append(seam_psnr(photo, decoded, args.chunk))
    results = {label: {"near_borders_db": round(float(np.mean([n for n, _ in values])), 2),
                       "interior_db": round(float(np.mean([i for _, i in values])), 2),
                       "difference_db": round(float(np.mean([i - n for n, i in values])), 2)}
               for label, values in totals.items()}
    return {"kind": "seams", "images": f"{', '.join(names)} (768x512, mean over images)", "quality": args.quality,
            "chunk": args.chunk, "band_px": 8, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("stream", "seams"))
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=30000)
    parser.add_argument("-q", "--quality", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--images", type=int, default=6, help="seams: how many Kodak photos")
    args = parser.parse_args()
    from caecodec.weights import latest_version, version_card

    result = stream(args) if args.what == "stream" else seams(args)
    version = latest_version()
    result.update(weights=f"bundled v{version}" + (" (provisional)" if version_card(version).get("provisional") else ""),
                  command=" ".join(["python3", "benchmarks/large_image.py", *sys.argv[1:]]),
                  date=time.strftime("%Y-%m-%d %H:%M"))
    print(json.dumps(result, indent=1))
    history = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps(history + [result], indent=1) + "\n")


if __name__ == "__main__":
    main()
