"""Image files to single `.cae` files and back (`compress`, `decompress`, `info`)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..cli import UsageError


# -- options shared with the zarr commands -----------------------------------------------------------
def add_codec_arguments(parser) -> None:
    parser.add_argument("-q", "--quality", type=int, default=8, choices=range(1, 9), metavar="1-8",
                        help="1 (smallest) to 8 (best fidelity); default 8")
    parser.add_argument("-m", "--metric", default="mse", choices=("mse", "ms-ssim"))
    parser.add_argument("--refine", type=int, default=0, metavar="N",
                        help="encoder-side refinement: N iterations that optimise each chunk's latent for its "
                             "quality's rate-distortion loss; each costs about two plain encodes "
                             "(default 0: off; docs/refinement.md)")
    add_weights_argument(parser)


def add_weights_argument(parser) -> None:
    parser.add_argument("--weights", default="bundled",
                        help='"bundled" (default), "compressai", or a CompressAI FactorizedPrior checkpoint file')


def add_quiet_argument(parser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_independent_chunks_argument(parser, direction: str) -> None:
    help_text = {"write": "analyse every chunk alone, as zarr itself does (default: with the real pixels "
                          "around it, for seamless reads; the chunks decode standalone either way)",
                 "read": "synthesise every chunk alone, as zarr itself does (default: with the latents of its "
                         "neighbours, so chunk borders do not show)"}[direction]
    parser.add_argument("--independent-chunks", action="store_true", help=help_text)


def codec_from(args):
    from ..codec import ConvolutionalAutoencoder

    return ConvolutionalAutoencoder(args.quality, args.metric, weights=args.weights, refine=args.refine)


def for_each_file(work, items: list) -> None:
    """Run `work(item)` for every item, files in parallel threads (tiles within a file are parallel too)."""
    with ThreadPoolExecutor(max_workers=min(len(items), os.cpu_count() or 1) or 1) as pool:
        for _ in pool.map(work, items):
            pass


def output_paths(found: list[tuple[Path, Path]], output: Path, suffix_of) -> list[tuple[Path, Path]]:
    """(input, output file) pairs: a single input may name its output file, otherwise `output` is a folder
    in which each input keeps its path relative to the folder it was found in."""
    if len(found) == 1 and output.suffix and not output.is_dir():
        return [(found[0][0], output)]
    if output.exists() and not output.is_dir():
        raise UsageError(f"output {output} is a file; with several inputs it must be a folder")
    return [(source, output / suffix_of(relative)) for source, relative in found]


# -- compress ---------------------------------------------------------------------------------------
class Compress:
    """Compress images (files or folders, recursively) into .cae files.

    A single input with -o NAME.cae writes that file; otherwise -o is a folder and every image keeps its
    path relative to the folder it was found in, with ".cae" appended (photo.jpg -> photo.jpg.cae).
    Large images are coded in tiles of --tile pixels, one band of tiles at a time.
    """

    @staticmethod
    def add_arguments(parser) -> None:
        parser.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders")
        parser.add_argument("-o", "--output", required=True, type=Path, help="output .cae file or folder")
        add_codec_arguments(parser)
        parser.add_argument("--tile", type=int, default=None,
                            help="tile edge in pixels, a multiple of 16 (default 1024)")
        add_independent_chunks_argument(parser, "write")
        add_quiet_argument(parser)

    @staticmethod
    def run(args) -> int:
        from .. import container
        from ..images import find_images, open_image
        from ..tiling import ANALYSIS_HALO, progress

        tile = args.tile or container.DEFAULT_TILE
        if tile < 16 or tile % 16:
            raise UsageError(f"--tile must be a positive multiple of 16, found {tile}")
        pairs = output_paths(find_images(args.inputs), args.output, lambda rel: rel.with_name(rel.name + ".cae"))
        codec = codec_from(args)
        halo = None if args.independent_chunks else ANALYSIS_HALO
        bar = progress("compress", args.quiet)

        def compress(pair):
            source, target = pair
            raster = open_image(source)
            info = container.FileInfo(source.name, source.stat().st_size, raster.mode, raster.height,
                                      raster.width, tile)
            target.parent.mkdir(parents=True, exist_ok=True)
            container.write(target, info, raster.region, codec, on_band=lambda pixels: bar.update(pixels / 1e6),
                            halo=halo)

        with bar:
            for_each_file(compress, pairs)
        return 0


# -- decompress -------------------------------------------------------------------------------------
def find_containers(inputs: list[str]) -> list[tuple[Path, Path]]:
    from ..images import find_inputs

    return find_inputs(inputs, lambda path: path.suffix == ".cae", ".cae files")


def restored_name(relative: Path, image_format: str) -> Path:
    """photo.jpg.cae -> photo.png (for --format png)."""
    original = relative.with_suffix("") if relative.suffix == ".cae" else relative
    return original.with_suffix(f".{image_format}")


def codec_for_file(path: Path, weights: str):
    """The codec that reads a .cae file: quality and metric from its first tile, weights as given."""
    from ..codec import ConvolutionalAutoencoder
    from ..container import first_chunk_header

    _, header = first_chunk_header(path)
    return ConvolutionalAutoencoder(header.quality, header.metric, weights=weights)


class Decompress:
    """Decompress .cae files (or folders of them) back to image files (PNG unless --format says otherwise).

    TIFF output is written tile by tile, so images of any size stream; other formats hold the image.
    """

    @staticmethod
    def add_arguments(parser) -> None:
        parser.add_argument("inputs", nargs="+", metavar="IN", help=".cae files or folders")
        parser.add_argument("-o", "--output", required=True, type=Path, help="output image file or folder")
        parser.add_argument("-f", "--format", default="png", help="png (default), tiff, jpeg, webp, bmp, ...")
        add_weights_argument(parser)
        add_independent_chunks_argument(parser, "read")
        add_quiet_argument(parser)

    @staticmethod
    def run(args) -> int:
        from ..tiling import SYNTHESIS_HALO, progress

        image_format = args.format.lower().lstrip(".")
        pairs = output_paths(find_containers(args.inputs), args.output, lambda rel: restored_name(rel, image_format))
        halo = None if args.independent_chunks else SYNTHESIS_HALO
        bar = progress("decompress", args.quiet)
        with bar:
            for_each_file(lambda pair: decompress_file(*pair, args.weights, bar, halo), pairs)
        return 0


def decompress_file(source: Path, target: Path, weights: str, bar, halo: int | None) -> None:
    from .. import container
    from ..images import TIFF_SUFFIXES, check_whole_image_size, write_image, write_tiff_tiles
    from ..tiling import full_tiles

    info, band_iterator = container.decoded_bands(source, codec_for_file(source, weights), halo)

    def counted(band):
        bar.update(band[..., 0].size / 1e6)
        return band

    if target.suffix.lower() in TIFF_SUFFIXES:
        write_tiff_tiles(full_tiles(lambda rows: counted(next(band_iterator)), info.height, info.width, info.tile),
                         target, (info.height, info.width), info.tile)
        return
    check_whole_image_size(info.height, info.width, target)
    import numpy as np

    write_image(np.concatenate([counted(band) for band in band_iterator]), target, info.mode)


# -- info -------------------------------------------------------------------------------------------
class Info:
    """Print what a .cae file holds: model, quality, metric, image size, original and compressed bytes, bpp."""

    @staticmethod
    def add_arguments(parser) -> None:
        parser.add_argument("files", nargs="+", metavar="FILE", type=Path, help=".cae files")

    @staticmethod
    def run(args) -> int:
        from ..container import first_chunk_header

        for path in args.files:
            if not path.is_file():
                raise FileNotFoundError(f"no such .cae file: {path}")
            info, header = first_chunk_header(path)
            model = (f"bundled weights v{header.weights_version}" if header.weights_version
                     else f"checkpoint file, digest {header.weights_digest.hex()}")
            size = path.stat().st_size
            tiles = -(-info.height // info.tile) * info.tiles_per_row
            print(f"{path}:")
            print(f"  original : {info.name} ({info.size} bytes, mode {info.mode})")
            print(f"  image    : {info.width}x{info.height} pixels, {tiles} tile(s) of {info.tile}")
            print(f"  model    : {model}, {header.channels} latent channels")
            print(f"  quality  : {header.quality}")
            print(f"  metric   : {header.metric}")
            print(f"  size     : {size} bytes ({info.size / size:.1f}:1 vs the original file)")
            print(f"  bpp      : {8 * size / (info.height * info.width):.4f}")
        return 0
