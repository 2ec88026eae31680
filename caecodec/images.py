"""Image files in and out: PNG/JPEG/… through Pillow, TIFF (BigTIFF, tiled, pyramidal) through tifffile, zarr arrays.

Readers return a `Raster`: an (H, W, 3) uint8 view that reads regions on demand, so a tiled TIFF or a
zarr array of any size is never loaded whole. Pillow formats have no region access and are read whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".tf8"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".pnm"} | TIFF_SUFFIXES
# Output formats that need the whole image in memory are refused above this many pixels (use TIFF instead).
MAX_WHOLE_IMAGE_PIXELS = 1 << 26


class ImageError(ValueError):
    """An image that cannot be read or written: the message names the file and what was expected."""


@dataclass
class Raster:
    """An RGB image readable by regions. `source` is anything sliceable as (H, W[, C]): numpy, zarr, tifffile."""

    source: object
    name: str
    mode: str  # the original colour mode ("RGB", "L", "RGBA", ...): decoders restore "L", others come back RGB

    @property
    def height(self) -> int:
        return int(self.source.shape[0])

    @property
    def width(self) -> int:
        return int(self.source.shape[1])

    @property
    def pixels(self) -> int:
        return self.height * self.width

    def region(self, rows: slice, cols: slice = slice(None)) -> np.ndarray:
        """uint8 (h, w, 3) pixels of the region: grey is repeated over three channels, alpha is dropped."""
        block = np.asarray(self.source[rows, cols])
        if block.ndim == 2:
            block = block[..., None]
        return np.ascontiguousarray(np.broadcast_to(block[..., :3], (*block.shape[:2], 3)) if block.shape[-1] == 1
                                    else block[..., :3])

    def read(self) -> np.ndarray:
        return self.region(slice(None))


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_zarr_array(path: Path) -> bool:
    """A folder holding a zarr array (format 2 or 3), read as one image."""
    import json

    if (path / ".zarray").is_file():
        return True
    metadata = path / "zarr.json"
    return metadata.is_file() and json.loads(metadata.read_text()).get("node_type") == "array"


def open_image(path: str | Path) -> Raster:
    """The image at `path` as a Raster; ImageError (one line) when it is missing, unreadable or not 8-bit."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such image: {path}")
    if is_zarr_array(path):
        import zarr

        return from_array(zarr.open_array(path, mode="r"), path.name)
    if path.is_dir():
        raise ImageError(f"{path} is a directory, expected an image file or a zarr array")
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _open_tiff(path)
    return _open_pillow(path)


def _open_pillow(path: Path) -> Raster:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode not in ("RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr", "1"):
                raise ImageError(f"{path}: unsupported image mode {mode!r}; expected 8-bit RGB or greyscale")
            pixels = np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise ImageError(f"{path}: not a readable image ({error})") from None
    return Raster(pixels, path.name, mode)


def _open_tiff(path: Path) -> Raster:
    import tifffile
    import zarr

    try:
        tiff = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError) as error:
        raise ImageError(f"{path}: not a readable TIFF ({error})") from None
    series = tiff.series[0]  # the full-resolution level of a pyramidal TIFF is level 0
    shape, dtype = series.levels[0].shape, series.dtype
    if dtype != np.uint8:
        raise ImageError(f"{path}: expected 8-bit samples (uint8), found {dtype}")
    if not (len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3, 4))):
        raise ImageError(f"{path}: expected a (H, W), (H, W, 3) or (H, W, 4) image, found shape {shape} "
                         f"(axes {series.axes})")
    mode = "L" if len(shape) == 2 or shape[-1] == 1 else "RGB"
    return Raster(zarr.open_array(series.aszarr(level=0), mode="r"), path.name, mode)


def from_array(array, name: str) -> Raster:
    """A zarr (or numpy) uint8 (H, W, 3) array as a Raster."""
    if array.dtype != np.uint8 or len(array.shape) != 3 or array.shape[-1] != 3:
        raise ImageError(f"{name}: expected a uint8 (H, W, 3) array, found {array.dtype} {tuple(array.shape)}")
    return Raster(array, name, "RGB")


def find_images(inputs: list[str | Path]) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for each input file and each image under each input folder."""
    return find_inputs(inputs, is_image_file, f"images ({', '.join(sorted(IMAGE_SUFFIXES))})")


def find_inputs(inputs: list[str | Path], matches, what: str) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for each input given, and for each file under an input folder
    that `matches`; a zarr array (a folder) counts as one input."""
    found = []
    for entry in map(Path, inputs):
        if entry.is_dir() and not is_zarr_array(entry):
            files = sorted(p for p in entry.rglob("*") if p.is_file() and matches(p))
            if not files:
                raise ImageError(f"{entry}: folder holds no {what}")
            found += [(p, p.relative_to(entry)) for p in files]
        elif entry.exists():
            found.append((entry, Path(entry.name)))
        else:
            raise FileNotFoundError(f"no such file or folder: {entry}")
    return found


def write_image(pixels: np.ndarray, path: Path, mode: str = "RGB") -> None:
    """Save uint8 (H, W, 3) pixels; the format follows the suffix. Greyscale originals are restored as greyscale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in TIFF_SUFFIXES:
        write_tiff_tiles(_tiles_of(pixels, 256), path, pixels.shape[:2], 256)
        return
    from PIL import Image

    image = Image.fromarray(pixels, "RGB")
    if mode in ("L", "LA", "1"):
        image = image.convert("L")
    try:
        image.save(path)
    except (KeyError, ValueError) as error:
        raise ImageError(f"{path}: cannot write this format ({error})") from None


def check_whole_image_size(height: int, width: int, path: Path) -> None:
    if height * width > MAX_WHOLE_IMAGE_PIXELS and path.suffix.lower() not in TIFF_SUFFIXES:
        raise ImageError(f"{path}: a {height}x{width} image is too large to write as {path.suffix} (it needs the "
                         f"whole image in memory, limit {MAX_WHOLE_IMAGE_PIXELS} pixels); write TIFF instead")


def write_tiff_tiles(tiles: Iterator[np.ndarray], path: Path, size: tuple[int, int], tile: int) -> None:
    """A tiled BigTIFF from full-size (tile, tile, 3) tiles given in row-major order, streamed to disk."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, tiles, shape=(*size, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                     bigtiff=True)


def _tiles_of(pixels: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    from .tiling import full_tiles

    return full_tiles(lambda rows: pixels[rows], pixels.shape[0], pixels.shape[1], tile)
