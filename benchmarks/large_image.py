"""Very large images: peak memory and throughput of `caecodec to-zarr` / `from-zarr`, and tile-seam PSNR.

    python3 benchmarks/large_image.py stream --height 512 --width 30000 -q 1   # a full-width band strip
    python3 benchmarks/large_image.py seams -q 1 --chunk 256                    # Kodak photos, seam vs interior

`stream` synthesises a tiled BigTIFF by tiling the Kodak photos (written tile by tile, never whole), runs
the real CLI in a subprocess for each direction and records its peak RSS (getrusage of the child) and
MPix/s. Memory depends on the width (one band of chunk rows is held), not the height, so a full-width
strip measures the memory of a 30000x30000 image; its time scales with the pixel count.
`seams` codes Kodak photos in chunks (independently, and with the analysis / synthesis halos of
caecodec.store.write_seamless / read_seamless) and compares the PSNR in 8-pixel bands on either side of
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

from caecodec.tiling import ANALYSIS_HALO, SYNTHESIS_HALO

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


def coded_array(path: Path, photo: np.ndarray, args, halo: int | None):
    """A zarr array of the photo in --chunk chunks: written by zarr (each chunk alone) when halo is None,
    else by caecodec.write_seamless (each chunk analysed with `halo` pixels of its neighbours)."""
    import zarr
    from caecodec import CAECodec, write_seamless

    array = zarr.create_array(path, shape=photo.shape, chunks=(args.chunk, args.chunk, 3), dtype="uint8",
                              serializer=CAECodec(args.quality), compressors=None)
    if halo is None:
        array[:] = photo
    else:
        write_seamless(array, lambda rows: photo[rows], halo=halo)
    return array


SEAM_VARIANTS = ("whole_image", "independent_chunks", "chunks_joint_synthesis", "analysis_halo_only",
                 "synthesis_halo_only", "analysis_and_synthesis_halo")


def seam_variants(photo: np.ndarray, folder: Path, loaded, args) -> dict:
    """How each way of coding decodes the photo, computed lazily (only the variants asked for run)."""
    from caecodec import open_latents, read_seamless
    from caecodec.compression import analyse, synthesise, synthesise_latent

    height, width = photo.shape[:2]
    arrays = {}

    def array(halo):
        if halo not in arrays:
            arrays[halo] = coded_array(folder / f"{halo}.zarr", photo, args, halo)
        return arrays[halo]

    def joint_synthesis():
        stitched = np.moveaxis(open_latents(array(None).store)[:], -1, 0)[None]
        return synthesise_latent(loaded.model, stitched, slice(0, height), slice(0, width))[0]

    return {
        "whole_image": lambda: synthesise(loaded.model, analyse(loaded.model, photo[None], loaded.tables),
                                          loaded.tables, height, width)[0],
        "independent_chunks": lambda: array(None)[:],
        "chunks_joint_synthesis": joint_synthesis,
        "analysis_halo_only": lambda: array(args.analysis_halo)[:],
        "synthesis_halo_only": lambda: read_seamless(array(None), halo=args.synthesis_halo),
        "analysis_and_synthesis_halo": lambda: read_seamless(array(args.analysis_halo), halo=args.synthesis_halo),
    }, arrays


def seams(args) -> dict:
    """Seam vs interior PSNR on Kodak photos for the ways of coding them: the whole image at once (control:
    what content alone does), independent chunks (what zarr stores and reads by itself), independent chunks
    whose whole latents are stitched and synthesised at once, and the streaming paths of caecodec.store:
    chunks analysed with an analysis halo (write_seamless), regions read with a synthesis halo (read_seamless),
    and both. Every chunked variant goes through a real zarr store.

    With --offsets the chunk grid is moved over the content: each photo is also coded without its first
    `offset` rows and columns, so the borders fall on other lines of the scene; the mean over offsets is
    free of what a fixed set of border lines happens to contain."""
    from caecodec.evaluation import border_psnr
    from caecodec.weights import load

    if args.chunk % 16 or any(offset % 16 for offset in args.offsets):
        raise SystemExit(f"--chunk and --offsets must be multiples of 16, found {args.chunk} and {args.offsets}")
    loaded = load(args.quality, "mse")
    totals, rates = {}, {}
    names = [f"kodim{i:02d}" for i in range(1, args.images + 1)]
    for photo in kodak_photos()[: args.images]:
        for offset in args.offsets:
            cropped = np.ascontiguousarray(photo[offset:, offset:])
            with tempfile.TemporaryDirectory(dir="/tmp") as folder:
                variants, arrays = seam_variants(cropped, Path(folder), loaded, args)
                for label in args.variants:
                    totals.setdefault(label, []).append(border_psnr(cropped, variants[label](), args.chunk))
                for halo, array in arrays.items():
                    label = "independent_chunks" if halo is None else "analysis_halo"
                    rates.setdefault(label, []).append(8 * array.nbytes_stored() / cropped[..., 0].size)
    results = {label: {"near_borders_db": round(float(np.mean([n for n, _ in values])), 2),
                       "interior_db": round(float(np.mean([i for _, i in values])), 2),
                       "difference_db": round(float(np.mean([i - n for n, i in values])), 2)}
               for label, values in totals.items()}
    return {"kind": "seams", "images": f"{', '.join(names)} (768x512, mean over images)", "quality": args.quality,
            "chunk": args.chunk, "grid_offsets_px": args.offsets, "band_px": 8,
            "analysis_halo_px": args.analysis_halo, "synthesis_halo_latent_px": args.synthesis_halo,
            "bpp": {label: round(float(np.mean(values)), 4) for label, values in rates.items()}, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("stream", "seams"))
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=30000)
    parser.add_argument("-q", "--quality", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--images", type=int, default=6, help="seams: how many Kodak photos")
    parser.add_argument("--offsets", type=int, nargs="+", default=[0],
                        help="seams: move the chunk grid by these pixels (both axes) and average (default 0)")
    parser.add_argument("--variants", nargs="+", choices=SEAM_VARIANTS, default=list(SEAM_VARIANTS),
                        help="seams: which ways of coding to measure (default all)")
    parser.add_argument("--analysis-halo", type=int, default=ANALYSIS_HALO,
                        help=f"seams: pixels of neighbours analysed with each chunk (default {ANALYSIS_HALO})")
    parser.add_argument("--synthesis-halo", type=int, default=SYNTHESIS_HALO,
                        help=f"seams: latent pixels of neighbours synthesised with each tile (default {SYNTHESIS_HALO})")
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
