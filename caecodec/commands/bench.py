"""Benchmark caecodec against JPEG, WebP, AVIF, JPEG XL and JPEG 2000: rate-distortion, speed, memory.

Writes into OUTPUT: results.json and measurements.csv / averages.csv (every measurement), rd-psnr.png and
rd-ms-ssim.png, summary.md (BD-rates, PSNR at fixed rates, every setting) and, with --visual, a
comparison page visual/index.html.
"""

from __future__ import annotations

import shlex
import sys

from ..cli import UsageError
from ..zoo import METRICS


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _qualities(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(q) for q in _names(text)]
    except ValueError:
        raise UsageError(f"--qualities takes integers from 1 to 8 separated by commas, found {text!r}") from None


def _refinements(text: str) -> list[int]:
    try:
        refine = [int(n) for n in _names(text)]
    except ValueError:
        refine = []
    if not refine or min(refine) < 0:
        raise UsageError(f"--refine takes iteration counts from 0 separated by commas, found {text!r}")
    return refine


def add_arguments(parser) -> None:
    parser.add_argument("folder", nargs="?", help="folder of images (default: ../shared/data/kodak when present)")
    parser.add_argument("-o", "--output", default="bench-results", help="results folder (default: bench-results)")
    parser.add_argument("--weights", default="bundled",
                        help="'bundled' (default), 'compressai' (CompressAI's published files) or a checkpoint path")
    parser.add_argument("--qualities", help="caecodec qualities, e.g. 1,4,8 (default: all)")
    parser.add_argument("--metrics", type=_names, default=list(METRICS), help="caecodec metrics (default: both)")
    parser.add_argument("--codecs", type=_names,
                        help="classical codecs, comma-separated (default: jpeg,webp,avif,jpegxl,jpeg2k; '' for none)")
    parser.add_argument("--quick", action="store_true", help="2 images, 3 qualities of caecodec and 3 settings per codec")
    parser.add_argument("--max-images", type=int, help="use only the first N images of the folder (also with --quick)")
    parser.add_argument("--visual", type=_names, default=[], help="image names for the comparison page, e.g. kodim23,kodim05")
    parser.add_argument("--visual-setting", help="caecodec configuration the page matches, e.g. mse-4 (default: middle quality)")
    parser.add_argument("--threads", type=int, default=1, help="threads per codec (default: 1)")
    parser.add_argument("--published", default="auto",
                        help="folder of CompressAI's published Kodak JSON files to plot ('none' to skip; default: ../shared's)")
    parser.add_argument("--refine", default="0",
                        help="a caecodec curve per count of encoder-side refinement iterations, e.g. 0,20 (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..bench import run_benchmark

    if args.max_images is not None and args.max_images < 1:
        raise UsageError(f"--max-images must be at least 1, found {args.max_images}")
    results = run_benchmark(
        args.folder, args.output, weights=args.weights, qualities=_qualities(args.qualities), metrics=args.metrics,
        codecs=args.codecs, quick=args.quick, max_images=args.max_images, visual=args.visual,
        visual_setting=args.visual_setting, threads=args.threads,
        published=None if args.published == "none" else args.published, progress=not args.quiet,
        command=shlex.join(["caecodec", *sys.argv[1:]]), refine=_refinements(args.refine),
    )
    if not args.quiet:
        print(f"{len(results['measurements'])} measurements in {results['environment']['seconds']:.0f} s; "
              f"summary: {args.output}/summary.md")
    return 0
