"""Graft one run's transforms of the high mse levels (q6-q8 unless it chose others) onto another run's network, as a checkpoint to export and compare.

    python3 benchmarks/checkpoint_average.py /tmp/eval/base runs/crop256-snapshots/*.pt --last 16 --every 250
    python3 benchmarks/checkpoint_average.py /tmp/eval/high runs/highonly-snapshots/*.pt --last 16 --every 250
    python3 benchmarks/high_rate_graft.py /tmp/eval/graft /tmp/eval/base /tmp/eval/high
    caecodec train --run-dir /tmp/eval/graft --export 22 --provisional --kodak-dir ../shared/data/kodak

A branch that trains only the high mse levels (`caecodec train --high-rate-transforms --levels 5,6,7`) leaves
every other level as it found them, and its learning rate is raised for the high pair's sake; the run it
branched from goes on improving the others. The levels are independent given their transforms, so the two
combine exactly: RUN_DIR/checkpoint.pt is BASE's network (split if BASE has no high pair of its own) with
DONOR's `g_a_mse_high` and `g_s_mse_high` and DONOR's gains and densities of the levels they serve. Validation and export
measure it like any run's checkpoint; its model card records the graft.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from caecodec.models import OWN_TRANSFORMS, high_rate_levels_of, with_own_transforms

HIGH_PAIR = tuple(prefix for prefix in OWN_TRANSFORMS if "_mse_high." in prefix)
GAINS = ("log_gain", "log_inverse_gain")


def load(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)


def donated(name: str, levels: tuple[int, ...]) -> bool:
    """Whether the graft takes parameter `name` from the donor: the high pair and its levels' densities."""
    return name.startswith(HIGH_PAIR) or any(name.startswith(f"entropy_bottlenecks.{level}.") for level in levels)


def grafted(base: dict, donor: dict) -> dict:
    """`base`'s state with the donor's high pair, and its gains and densities of the levels the pair serves."""
    names = donor["model"].keys()
    if not any(name.startswith(HIGH_PAIR) for name in names):
        raise SystemExit("the donor has no transforms of high mse levels' own: train it with --high-rate-transforms")
    levels = high_rate_levels_of(donor["model"])
    model = with_own_transforms(base["model"], names) | {"high_rate_levels": torch.tensor(levels)}
    names = names | {"high_rate_levels"}  # absent from donors written before the levels were a buffer
    if model.keys() != names:
        raise SystemExit(f"base and donor are different networks: {sorted(model.keys() ^ names)[:4]} ...")
    model = {name: donor["model"][name].clone() if donated(name, levels) else tensor for name, tensor in model.items()}
    rows = list(levels)
    for name in GAINS:
        model[name] = model[name].clone()
        model[name][rows] = donor["model"][name][rows]
    graft = {"levels": rows, "step": donor["step"], "averaged_steps": donor.get("averaged_steps")}
    return {key: base[key] for key in ("config", "step", "averaged_steps", "cooldown") if key in base} | {
        "config": base["config"] | {"high_rate_transforms": True, "high_rate_levels": rows}, "model": model,
        "graft": graft}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="where the grafted checkpoint.pt is written")
    parser.add_argument("base", type=Path, help="run directory of the network that keeps every other level")
    parser.add_argument("donor", type=Path, help="run directory of the network whose high mse levels are taken")
    args = parser.parse_args()
    state = grafted(load(args.base), load(args.donor))
    args.run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.run_dir / "checkpoint.pt")
    print(f"{args.run_dir / 'checkpoint.pt'}: {args.base}'s step {state['step']} with {args.donor}'s mse levels "
          f"{state['graft']['levels']} (step {state['graft']['step']})")


if __name__ == "__main__":
    main()
