"""BD-rate against JPEG of the Kodak results in model cards, on the committed benchmark's JPEG curve.

    python3 benchmarks/card_bdrate.py caecodec/weights/manifest.json /tmp/candidate/manifest.json

An export with `--kodak-dir` measures every level on all 24 Kodak images for its model card; this puts each
card's mse curve against JPEG on PSNR and its ms-ssim curve against JPEG on MS-SSIM (dB), JPEG as measured by
the committed benchmark (docs/benchmarks/kodak/averages.csv, the same 24 images): candidate weights compared
before one of them is bundled and benchmarked in full. Prints a line per version per manifest.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from validation_bdrate import bd_text

ROOT = Path(__file__).resolve().parents[1]


def jpeg_curve(averages: Path) -> dict[str, list[float]]:
    with averages.open() as handle:
        rows = sorted((r for r in csv.DictReader(handle) if r["codec"] == "jpeg"), key=lambda r: float(r["bpp"]))
    return {key: [float(r[key]) for r in rows] for key in ("bpp", "psnr", "ms_ssim")}


def card_rows(card: dict) -> list[dict]:
    """The card's Kodak results as the validation log's rows, so that validation_bdrate measures them alike."""
    return [{"metric": name.rpartition("-")[0], **point} for name, point in card["kodak"].items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifests", type=Path, nargs="+", help="manifest.json files holding model cards")
    parser.add_argument("--averages", type=Path, default=ROOT / "docs" / "benchmarks" / "kodak" / "averages.csv",
                        help="a benchmark's averages.csv, for its JPEG curve")
    args = parser.parse_args()
    jpeg = jpeg_curve(args.averages)
    for manifest in args.manifests:
        for version, card in json.loads(manifest.read_text())["versions"].items():
            if "kodak" in card:
                print(f"{manifest} version {version} (step {card['steps']}): BD-rate vs JPEG "
                      f"{bd_text(jpeg, card_rows(card))}")


if __name__ == "__main__":
    main()
