"""What refitting the densities to whole training photos (`fit_densities`, done at export) does on Kodak.

    python3 benchmarks/density_fit.py runs/avg                  # a run's checkpoint.pt, e.g. an average's
    python3 benchmarks/density_fit.py runs/avg --iterations 4000 --lr 3e-3

Measures the checkpoint on the 8 validation images (real bitstreams, every level, quantiles fitted as export
fits them) as trained and with its densities refitted to the photos of the run's training folder, and prints
the bits per latent element on the photos before and after, and the BD-rate against JPEG of both. One core:
about 6 minutes for the photos' latents, 5 for the fit, 8 for the two measurements.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from validation_bdrate import jpeg_curve, report  # beside this script

from caecodec.training import (TrainingConfig, fit_densities, fit_quantiles, kodak_images, load_checkpoint_model,
                               training_photos, validation_rows)

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--train-dir", type=Path, help="the photos to fit to (default: the run's training folder)")
    parser.add_argument("--kodak", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    if not (args.run_dir / "checkpoint.pt").is_file():
        parser.error(f"{args.run_dir} has no checkpoint.pt to measure")
    trained, state = load_checkpoint_model(args.run_dir)
    refitted = copy.deepcopy(trained)
    photos = training_photos(args.train_dir or state["config"]["train_dir"])
    for row in fit_densities(refitted, photos, args.iterations, args.lr):
        change = 100 * (row["bits_after"] / row["bits_before"] - 1)
        print(f"level {row['level']}: {row['bits_before']:.5f} -> {row['bits_after']:.5f} bits per latent element "
              f"on {len(photos)} photos ({change:+.2f} %)", flush=True)
    images = kodak_images(str(args.kodak), TrainingConfig.eval_images)
    curve = jpeg_curve(images)
    for name, model in (("as trained", trained), ("refitted", refitted)):
        fit_quantiles(model)
        rows = validation_rows(model, range(model.levels), images, state["step"])
        print(report(name, curve, rows), flush=True)


if __name__ == "__main__":
    main()
