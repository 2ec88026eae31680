"""Show where an image's bits go: per-channel bit cost, the costliest latent channels, and the coding error.

Writes three PNG figures into -o DIR: channel_bits.png (ideal code length of each latent channel under
the integer CDF tables: -log2 pmf summed over the channel's symbols), top_channels.png (the --top-k most
expensive channels of the decoded latent as images) and reconstruction.png (original, reconstruction
from the real bitstream, and the absolute difference x8).
"""

from __future__ import annotations

from pathlib import Path

from .files import add_codec_arguments, codec_from

MAX_PIXELS = 1 << 24  # the figures show the whole image: refuse what would not fit on a screen anyway


def add_arguments(parser) -> None:
    parser.add_argument("image", type=Path, metavar="IMAGE")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="folder for the figures")
    parser.add_argument("-k", "--top-k", type=int, default=8, help="how many channels to show (default 8)")
    add_codec_arguments(parser)


def run(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from ..cli import UsageError
    from ..evaluation import channel_bits, psnr
    from ..images import open_image

    raster = open_image(args.image)
    if raster.pixels > MAX_PIXELS:
        raise UsageError(f"{args.image}: {raster.width}x{raster.height} is too large to inspect (limit "
                         f"{MAX_PIXELS} pixels); crop it first")
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, found {args.top_k}")
    image = raster.read()
    codec = codec_from(args)
    chunk = codec.encode(image)
    reconstruction = codec.decode(chunk)
    _, symbols, loaded = codec.decode_symbols(chunk)
    bits = channel_bits(symbols, loaded.tables)
    top = bits.argsort()[::-1][: args.top_k]

    args.output.mkdir(parents=True, exist_ok=True)
    pixels = raster.pixels
    plot_channel_bits(bits, top, pixels, args.output / "channel_bits.png")
    latent = (symbols[0] + loaded.tables.medians[:, None, None])
    plot_top_channels(latent, bits, top, args.output / "top_channels.png")
    quality = psnr(image, reconstruction)
    bpp = 8 * len(chunk) / pixels
    plot_reconstruction(image, reconstruction, f"{bpp:.3f} bpp, PSNR {quality:.2f} dB",
                        args.output / "reconstruction.png")
    print(f"{args.image}: {bpp:.4f} bpp ({len(chunk)} bytes), PSNR {quality:.2f} dB, "
          f"{symbols.shape[1]} latent channels")
    print("most expensive channels: " + ", ".join(f"{c} ({bits[c] / pixels:.4f} bpp)" for c in top))
    print(f"figures in {args.output}")
    return 0


def plot_channel_bits(bits, top, pixels: int, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(12, 4))
    colours = ["tab:red" if c in set(top.tolist()) else "tab:blue" for c in range(len(bits))]
    axes.bar(range(len(bits)), bits / pixels, color=colours, width=1.0)
    axes.set_xlabel("latent channel")
    axes.set_ylabel("bits per pixel")
    axes.set_title(f"bit cost per latent channel (total {bits.sum() / pixels:.3f} bpp; red: the {len(top)} costliest)")
    _save(figure, path)


def plot_top_channels(latent, bits, top, path: Path) -> None:
    import matplotlib.pyplot as plt

    columns = min(4, len(top))
    rows = -(-len(top) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, channel in zip(axes.flat, top):
        shown = axis.imshow(latent[channel], cmap="RdBu_r")
        axis.set_title(f"channel {channel}: {bits[channel] / bits.sum():.1%} of bits")
        figure.colorbar(shown, ax=axis, fraction=0.046)
    _save(figure, path)


def plot_reconstruction(image, reconstruction, summary: str, path: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    difference = np.clip(8 * np.abs(image.astype(np.int16) - reconstruction.astype(np.int16)), 0, 255).astype(np.uint8)
    figure, axes = plt.subplots(1, 3, figsize=(18, 6 * image.shape[0] / image.shape[1] + 0.6))
    for axis, picture, title in zip(axes, (image, reconstruction, difference),
                                    ("original", f"reconstruction ({summary})", "|difference| x8")):
        axis.imshow(picture)
        axis.set_title(title)
        axis.axis("off")
    _save(figure, path)


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
