"""Cooldown branches of a training run: what annealing a copy of the run buys, on Kodak with real bitstreams.

    python3 benchmarks/cooldown.py runs/main --steps 0 600 1200           # writes docs/cooldown.json
    python3 benchmarks/cooldown.py runs/main --steps 600 --quality-weighted --output /tmp/weighted.json

Each length is a branch of the run's checkpoint (`caecodec train --cooldown-from`), trained in a temporary
folder on one thread; 0 measures the checkpoint itself. The branches are measured on the 8 validation
images of training (mse q1, q4, q8, real bitstreams) and by the PSNR of the q8 transforms without
quantization (analysis, gains, synthesis): the ceiling that no rate can pass.
`--quality-weighted` samples level q of each metric with probability proportional to q (same mse share).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from caecodec import training, zoo
from caecodec.evaluation import mean_measurement, psnr

ROOT = Path(__file__).resolve().parents[1]
MEASURED_LEVELS = (zoo.level_index(1, "mse"), zoo.level_index(4, "mse"), zoo.level_index(8, "mse"))


@torch.no_grad()
def unquantized_psnr(model, level: int, images: list[np.ndarray]) -> float:
    values = []
    for image in images:
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        scale = torch.exp(model.log_gain[level] + model.log_inverse_gain[level])[None, :, None, None]
        decoded = model.g_s(model.analysis(level)(x) * scale).clamp(0, 1)
        values.append(psnr(image, (decoded[0].permute(1, 2, 0) * 255).round().byte().numpy()))
    return float(np.mean(values))


def measure(model, step: int, images: list[np.ndarray]) -> dict:
    row = {"step": step}
    for level in MEASURED_LEVELS:
        quality, metric = zoo.level_configuration(level)
        result = mean_measurement(model.export(level), images)
        row[f"{metric}-{quality}"] = {"bpp": round(result.bpp, 4), "psnr": round(result.psnr, 3)}
    row["unquantized_psnr_q8"] = round(unquantized_psnr(model, MEASURED_LEVELS[-1], images), 3)
    return row


def branch(run_dir: Path, recipe: dict, steps: int, folder: Path) -> Path:
    """A cooldown branch of `run_dir` whose checkpoint was trained with `recipe` (its TrainingConfig as a dict)."""
    config = training.TrainingConfig(**{**recipe, "levels": tuple(recipe["levels"]), "run_dir": str(folder),
                                        "kodak_dir": None})
    training.train(config, steps, progress=False, branch_from=str(run_dir))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 600, 1200])
    parser.add_argument("--quality-weighted", action="store_true")
    parser.add_argument("--kodak", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "cooldown.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = training.kodak_images(str(args.kodak), 8)
    source = Path(tempfile.mkdtemp()) / "source"  # a snapshot: the run may go on training meanwhile
    source.mkdir()
    shutil.copy(args.run_dir / "checkpoint.pt", source / "checkpoint.pt")
    checkpoint = training.load_checkpoint_model(source)
    recipe = checkpoint[1]["config"]
    if args.quality_weighted:
        recipe = {**recipe, "level_weights": [zoo.level_configuration(level)[0] for level in recipe["levels"]]}
    rows = []
    for steps in args.steps:
        folder = branch(source, recipe, steps, source.parent / f"cooldown-{steps}") if steps else None
        model, state = training.load_checkpoint_model(folder) if folder else checkpoint
        rows.append({"cooldown_steps": steps, **measure(model, state["step"], images)})
        print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(source.parent)
    args.output.write_text(json.dumps({"run": str(args.run_dir), "quality_weighted": args.quality_weighted,
                                       "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
