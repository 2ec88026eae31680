"""Images into a zarr group compressed with caecodec, and back (`to-zarr`, `from-zarr`)."""

from __future__ import annotations

from pathlib import Path

from ..cli import UsageError
from .files import add_codec_arguments, add_independent_chunks_argument, add_quiet_argument, restored_name

ATTRIBUTE = "caecodec"  # array attribute: {"sources": [input path relative to its folder, ...], "modes": [...]}
STACK_NAME = "images"


def codec_arguments(args) -> dict:
    """The create_array keywords that put caecodec on an array of either zarr format. With the bundled
    weights the array records the version it is written with, so later writes into it (from a newer
    release) stay in the same latent space."""
    from ..codec import ConvolutionalAutoencoder
    from ..weights import latest_version
    from ..zarr3 import CAECodec

    configuration = {"quality": args.quality, "metric": args.metric, "weights": args.weights,
                     "weights_version": latest_version() if args.weights == "bundled" else None,
                     "refine": args.refine}
    if args.zarr_format == 2:
        return {"compressors": ConvolutionalAutoencoder(**configuration)}
    return {"serializer": CAECodec(**configuration), "compressors": None}


def open_output_group(path: Path, zarr_format: int):
    """The group to write into: a new store, or an existing zarr group of the same format (never another folder)."""
    import zarr

    if path.exists():
        group = open_store(path, "a")
        if not isinstance(group, zarr.Group):
            raise UsageError(f"{path} is a zarr array, expected a group (or a new path) to write images into")
        if group.metadata.zarr_format != zarr_format:
            raise UsageError(f"{path} is a zarr {group.metadata.zarr_format} group; --zarr-format {zarr_format} "
                             "was asked: choose a new path or the store's format")
        return group
    return zarr.open_group(path, mode="w", zarr_format=zarr_format)


def open_store(path: Path, mode: str = "r"):
    """The zarr group or array at `path`, or a one-line error saying what the path is instead."""
    import zarr

    if not path.exists():
        raise FileNotFoundError(f"no such zarr store: {path}")
    try:
        return zarr.open(path, mode=mode)
    except Exception as error:  # zarr raises several types for "this is not zarr"; all mean the same here
        raise UsageError(f"{path} is not a zarr group or array ({type(error).__name__}: {error})") from None


class ToZarr:
    """Write images (PNG, JPEG, TIFF incl. BigTIFF/tiled/pyramidal) into a zarr group compressed with caecodec.

    One array per image, named by its path relative to the folder it was found in (without suffix), or
    with --stack one array "images" of shape (N, H, W, 3), chunks (1, c, c, 3), for images of one size.
    Images stream in bands of one chunk row, so their size is bounded by the disk, not the memory.
    """

    @staticmethod
    def add_arguments(parser) -> None:
        parser.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders")
        parser.add_argument("-o", "--output", required=True, type=Path, metavar="STORE", help="zarr store (a folder)")
        parser.add_argument("--stack", action="store_true", help="one stacked array (N, H, W, 3)")
        parser.add_argument("-c", "--chunk", type=int, default=256, help="chunk edge in pixels (default 256)")
        parser.add_argument("--zarr-format", type=int, default=3, choices=(2, 3))
        add_codec_arguments(parser)
        add_independent_chunks_argument(parser, "write")
        add_quiet_argument(parser)

    @staticmethod
    def run(args) -> int:
        from ..images import find_images, open_image
        from ..tiling import progress

        if args.chunk < 16:
            raise UsageError(f"--chunk must be at least 16 pixels, found {args.chunk}")
        found = find_images(args.inputs)
        rasters = [(open_image(source), relative) for source, relative in found]
        group = open_output_group(args.output, args.zarr_format)
        with progress("to-zarr", args.quiet, sum(r.pixels for r, _ in rasters) / 1e6) as bar:
            if args.stack:
                write_stack(group, rasters, args, bar)
            else:
                for raster, relative in rasters:
                    write_one(group, raster, relative, args, bar)
        return 0


def create_image_array(group, name: str, shape: tuple, chunks: tuple, args, sources: list, modes: list):
    parent, _, leaf = name.rpartition("/")
    if parent:
        group = group.require_group(parent)
    array = group.create_array(leaf, shape=shape, chunks=chunks, dtype="uint8", overwrite=True,
                               **codec_arguments(args))
    # readers that open the store with zarr alone should know how its chunks were coded
    coded = ("independently" if args.independent_chunks else
             "with the neighbouring pixels (analysis halo): read with caecodec.read_seamless or "
             "`caecodec from-zarr` for seamless borders")
    array.attrs[ATTRIBUTE] = {"sources": sources, "modes": modes, "chunks_coded": coded}
    return array


def write_one(group, raster, relative: Path, args, bar) -> None:
    array = create_image_array(group, relative.with_suffix("").as_posix(), (raster.height, raster.width, 3),
                               (args.chunk, args.chunk, 3), args, [relative.as_posix()], [raster.mode])
    write_into(array, (), raster, args, bar)


def write_stack(group, rasters: list, args, bar) -> None:
    first = rasters[0][0]
    for raster, relative in rasters:
        if (raster.height, raster.width) != (first.height, first.width):
            raise UsageError(f"--stack needs images of one size: {rasters[0][1]} is {first.width}x{first.height}, "
                             f"{relative} is {raster.width}x{raster.height}")
    array = create_image_array(group, STACK_NAME, (len(rasters), first.height, first.width, 3),
                               (1, args.chunk, args.chunk, 3), args, [r.as_posix() for _, r in rasters],
                               [raster.mode for raster, _ in rasters])
    for index, (raster, _) in enumerate(rasters):
        write_into(array, (index,), raster, args, bar)


def write_into(array, index: tuple, raster, args, bar) -> None:
    """One image into array[*index], one band of chunk rows at a time: each chunk analysed with its neighbours
    (caecodec.store.write_seamless), or with --independent-chunks by zarr alone."""
    from ..store import write_seamless
    from ..tiling import copy_in_bands

    if not args.independent_chunks:
        write_seamless(array, raster.region, index, on_band=lambda pixels: bar.update(pixels / 1e6))
        return

    def write(rows, pixels):
        array[(*index, rows)] = pixels
        bar.update(pixels[..., 0].size / 1e6)

    copy_in_bands(raster.region, write, raster.height, args.chunk)


class FromZarr:
    """Write the RGB images of a zarr store (arrays (H, W, 3) or stacks (N, H, W, 3)) back to image files.

    Names come from the sources recorded by to-zarr, else from the array paths. TIFF output streams
    tile by tile (any size); PNG/JPEG hold one image in memory.
    """

    @staticmethod
    def add_arguments(parser) -> None:
        parser.add_argument("store", type=Path, metavar="STORE", help="zarr store written by to-zarr (or any "
                                                                      "uint8 RGB arrays)")
        parser.add_argument("-o", "--output", required=True, type=Path, help="output folder")
        parser.add_argument("-f", "--format", default="png", help="png (default), tiff, jpeg, webp, ...")
        add_independent_chunks_argument(parser, "read")
        add_quiet_argument(parser)

    @staticmethod
    def run(args) -> int:
        from ..tiling import progress

        image_format = args.format.lower().lstrip(".")
        images = list(stored_images(open_store(args.store), args.store))
        if not images:
            raise UsageError(f"{args.store} holds no uint8 RGB arrays of shape (H, W, 3) or (N, H, W, 3)")
        if args.output.exists() and not args.output.is_dir():
            raise UsageError(f"output {args.output} is a file; expected a folder")
        with progress("from-zarr", args.quiet, sum(a.shape[-3] * a.shape[-2] for a, *_ in images) / 1e6) as bar:
            for array, index, name, mode in images:
                export(array, index, args.output / restored_name(Path(name), image_format), mode, bar,
                       seamless=not args.independent_chunks)
        return 0


def stored_images(node, path: Path):
    """(array, index in a stack or None, source name, colour mode) for every RGB image in the group or array."""
    import zarr

    arrays = [(node.path or path.stem, node)] if isinstance(node, zarr.Array) else \
        [(name, member) for name, member in node.members(max_depth=None) if isinstance(member, zarr.Array)]
    for name, array in sorted(arrays, key=lambda item: item[0]):
        if array.dtype != "uint8" or array.ndim not in (3, 4) or array.shape[-1] != 3:
            continue
        recorded = dict(array.attrs).get(ATTRIBUTE, {})
        count = 1 if array.ndim == 3 else array.shape[0]
        sources = recorded.get("sources") or ([f"{name}.png"] if array.ndim == 3 else
                                              [f"{name}/{i}.png" for i in range(count)])
        modes = recorded.get("modes") or ["RGB"] * count
        for index in range(count):
            yield array, (None if array.ndim == 3 else index), sources[index], modes[index]


def export(array, index, target: Path, mode: str, bar, seamless: bool = True) -> None:
    from ..images import TIFF_SUFFIXES, check_whole_image_size, write_image, write_tiff_tiles
    from ..store import read_seamless
    from ..tiling import full_tiles

    height, width = array.shape[-3:-1]
    leading = () if index is None else (index,)

    def read(rows):
        pixels = read_seamless(array, rows, index=leading) if seamless else array[(*leading, rows)]
        bar.update(pixels[..., 0].size / 1e6)
        return pixels

    if target.suffix.lower() in TIFF_SUFFIXES:
        chunk = array.chunks[-3]
        tile = chunk if chunk % 16 == 0 else 256  # TIFF tiles are multiples of 16; then bands match chunk rows
        write_tiff_tiles(full_tiles(read, height, width, tile), target, (height, width), tile)
        return
    check_whole_image_size(height, width, target)
    write_image(read(slice(None)), target, mode)
