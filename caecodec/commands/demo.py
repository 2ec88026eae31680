"""Compress the bundled sample image into a zarr store and show the array's info and storage ratio."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SAMPLE = files("caecodec") / "data" / "sample.png"


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--output", default="sample.zarr", help="zarr store to write (default: sample.zarr)")
    parser.add_argument("-q", "--quality", type=int, default=8, choices=range(1, 9), metavar="1-8")
    parser.add_argument("-m", "--metric", default="mse", choices=("mse", "ms-ssim"))
    parser.add_argument("--zarr-format", type=int, default=3, choices=(2, 3))


def run(args) -> int:
    import zarr

    from ..codec import ConvolutionalAutoencoder
    from ..evaluation import load_rgb, psnr
    from ..zarr3 import CAECodec

    image = load_rgb(SAMPLE)
    coding = {"quality": args.quality, "metric": args.metric}
    if args.zarr_format == 3:
        codecs = {"serializer": CAECodec(**coding), "compressors": None}
    else:
        codecs = {"compressors": ConvolutionalAutoencoder(**coding)}
    z = zarr.create_array(Path(args.output), shape=image.shape, chunks=(256, 256, 3), dtype="uint8",
                          zarr_format=args.zarr_format, overwrite=True, **codecs)
    z[:] = image
    print(z.info_complete())
    reconstruction = zarr.open_array(Path(args.output), mode="r")[:]
    bpp = 8 * z.nbytes_stored() / (image.shape[0] * image.shape[1])
    print(f"Bits per pixel     : {bpp:.3f}")
    print(f"PSNR               : {psnr(image, reconstruction):.2f} dB")
    return 0
