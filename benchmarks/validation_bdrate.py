"""BD-rate against JPEG of every validation a training run logged, on its own validation images.

    python3 benchmarks/validation_bdrate.py runs/main runs/cool        # prints one line per validation
    python3 benchmarks/validation_bdrate.py --checkpoint runs/avg8     # measures the run's checkpoint now
    python3 benchmarks/validation_bdrate.py --checkpoint --metrics mse --refine 10 runs/high5   # refined as refine=10 encodes

Training validates on 8 Kodak images (`kodak.csv`); this encodes the same 8 images with libjpeg-turbo at the
benchmark's JPEG settings and gives, for each validated step, the BD-rate of the mse levels against JPEG on
PSNR and of the ms-ssim levels against JPEG on MS-SSIM (dB), and the curves: the trajectory of the figure the
targets are stated in, between full benchmarks. On 8 images it differs from the 24-image figure by a few points. Under each step,
every mse level's own training objective λ·D + R (D = 255²·MSE taken from the mean PSNR, R in bpp) beside the least
JPEG reaches at that λ over its measured points: a level below JPEG's least lies above JPEG's curve at its own rate,
whatever that rate (docs/training.md, session 33). Then each mse level's PSNR minus JPEG's at the level's own rate
(interpolated over log rate; n/a below JPEG's lowest rate): the target "better than JPEG at the same bpp at every
quality", level by level.
With `--checkpoint`, each run's `checkpoint.pt` is measured now, as the run's validation measures it (every
level exported, real bitstreams): for the averages of `checkpoint_average.py`, which have no validations of
their own, and for steps between validations; one core, about 2 minutes per metric and checkpoint, where an
export with its 24-image model card takes 8. `--refine N` encodes as `ConvolutionalAutoencoder(refine=N)` does
(each latent refined for its level's loss, docs/refinement.md): N = 10 takes about 12 times the time, N = 40 about
35 (docs/training.md, session 54); `--metrics mse` leaves the ms-ssim levels out.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from caecodec import zoo
from caecodec.bdrate import bd_rate, ms_ssim_db, quality_at_rate
from caecodec.bench import average, classical_settings, curves, measure
from caecodec.training import TrainingConfig, kodak_images, load_checkpoint_model, validation_rows

ROOT = Path(__file__).resolve().parents[1]


def jpeg_curve(images: list[np.ndarray]) -> dict[str, list[float]]:
    """JPEG's averaged curve on `images`, measured as the benchmark measures it."""
    averages = [average([measure(setting, str(i), image) for i, image in enumerate(images)], setting)
                for setting in classical_settings(["jpeg"], quick=False, threads=1)]
    return curves(averages)["jpeg"]


def validations(run_dir: Path) -> dict[int, list[dict]]:
    with (run_dir / "kodak.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    steps = {}
    for row in rows:
        steps.setdefault(int(row["step"]), []).append(row)
    return steps


def measured_now(run_dir: Path, images: list[np.ndarray], metrics: list[str], refine: int) -> dict[int, list[dict]]:
    """The run's checkpoint measured on `images` as its validation would, at the levels of `metrics`, each latent
    refined for `refine` iterations: {step: rows like kodak.csv's}."""
    model, state = load_checkpoint_model(run_dir)
    levels = [level for level in range(model.levels) if zoo.level_configuration(level)[1] in metrics]
    return {state["step"]: validation_rows(model, levels, images, state["step"], refine=refine)}


def curve_text(rows: list[dict], metric: str) -> str:
    distortion = "psnr" if metric == "mse" else "ms_ssim"
    return " ".join(f"{float(r['bpp']):.4f}/{float(r[distortion]):.4f}" for r in rows if r["metric"] == metric)


def bd_against(curve: dict, rows: list[dict], metric: str) -> float | None:
    points = [r for r in rows if r["metric"] == metric]
    rates = [float(r["bpp"]) for r in points]
    if metric == "mse":
        return bd_rate(curve["bpp"], curve["psnr"], rates, [float(r["psnr"]) for r in points])
    return bd_rate(curve["bpp"], ms_ssim_db(curve["ms_ssim"]), rates, ms_ssim_db([float(r["ms_ssim"]) for r in points]))


def bd_text(curve: dict, rows: list[dict]) -> str:
    """The mse levels' BD-rate against `curve` on PSNR and the ms-ssim levels' on MS-SSIM, as one line's text."""
    figures = {metric: bd_against(curve, rows, metric) for metric in ("mse", "ms-ssim")}
    return ", ".join(f"{metric} {'n/a (no overlap)' if bd is None else f'{bd:+.2f} %'}" for metric, bd in figures.items())


def objective(lam: float, bpp, psnr) -> np.ndarray:
    """λ·D + R with D = 255²·MSE, the mse levels' training objective, of points given as bpp and PSNR (dB)."""
    return lam * 255**2 * 10 ** (-np.asarray(psnr, dtype=float) / 10) + np.asarray(bpp, dtype=float)


def per_mse_level(rows: list[dict], figure) -> str:
    """`figure(row)` of each mse level as one line's text: "q1 … q2 …"."""
    return " ".join(f"q{row['quality']} {figure(row)}" for row in rows if row["metric"] == "mse")


def objective_text(curve: dict, rows: list[dict]) -> str:
    """Each mse level's objective / the least JPEG's points reach at the level's λ, as one line's text."""
    def figure(row):
        lam = zoo.LAMBDAS["mse"][int(row["quality"]) - 1]
        jpeg_least = objective(lam, curve["bpp"], curve["psnr"]).min()
        return f"{float(objective(lam, row['bpp'], row['psnr'])):.3f}/{jpeg_least:.3f}"
    return per_mse_level(rows, figure)


def against_jpeg_text(curve: dict, rows: list[dict]) -> str:
    """Each mse level's PSNR minus JPEG's at the level's rate (dB), as one line's text."""
    def figure(row):
        jpeg = quality_at_rate(curve["bpp"], curve["psnr"], float(row["bpp"]))
        return "n/a" if jpeg is None else f"{float(row['psnr']) - jpeg:+.2f}"
    return per_mse_level(rows, figure)


def report(label: str, curve: dict, rows: list[dict]) -> str:
    """A measurement's BD-rates and curves on one line, the mse levels' objectives and their PSNR against JPEG's below."""
    return (f"{label}: BD-rate vs JPEG {bd_text(curve, rows)}; bpp/PSNR {curve_text(rows, 'mse')}; "
            f"bpp/MS-SSIM {curve_text(rows, 'ms-ssim')}\n  mse objective λ·D+R / JPEG's least: {objective_text(curve, rows)}"
            f"\n  mse PSNR − JPEG's at the same rate (dB): {against_jpeg_text(curve, rows)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--kodak", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    parser.add_argument("--checkpoint", action="store_true", help="measure each run's checkpoint.pt now")
    parser.add_argument("--metrics", default="mse,ms-ssim", help="with --checkpoint: the levels to measure")
    parser.add_argument("--refine", type=int, default=0,
                        help="with --checkpoint: refine each latent for N iterations, as refine=N encodes")
    args = parser.parse_args()
    metrics = args.metrics.split(",")
    if not set(metrics) <= {"mse", "ms-ssim"}:
        parser.error(f"--metrics must name mse and/or ms-ssim, not {args.metrics!r}")
    if args.refine < 0:
        parser.error(f"--refine takes a count of iterations, 0 or more, not {args.refine}")
    if (args.refine or set(metrics) != {"mse", "ms-ssim"}) and not args.checkpoint:
        parser.error("--refine and --metrics measure a checkpoint now: they need --checkpoint")
    needed = "checkpoint.pt" if args.checkpoint else "kodak.csv"
    for run_dir in args.run_dirs:
        if not (run_dir / needed).is_file():
            parser.error(f"{run_dir} has no {needed} to measure")
    images = kodak_images(str(args.kodak), TrainingConfig.eval_images)
    curve = jpeg_curve(images)
    print("JPEG on the validation images, bpp / PSNR:",
          ", ".join(f"{b:.3f} / {p:.2f}" for b, p in zip(curve["bpp"], curve["psnr"])))
    for run_dir in args.run_dirs:
        steps = measured_now(run_dir, images, metrics, args.refine) if args.checkpoint else validations(run_dir)
        refined = f" refine={args.refine}" if args.refine else ""
        for step, rows in sorted(steps.items()):
            print(report(f"{run_dir.name} step {step}{refined}", curve, rows), flush=True)


if __name__ == "__main__":
    main()
