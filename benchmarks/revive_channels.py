"""Revive the dead latent channels of one of a run's transforms (by default its high pair's), as a run to train on.

    python3 benchmarks/revive_channels.py runs/revive runs/highonly --amplitude 0.3
    caecodec train --run-dir runs/revive --snapshots runs/revive-snapshots --levels 5,6,7 --threads 1 --processes 2
    python3 benchmarks/revive_channels.py runs/revive-mse runs/v21 --levels 0,1,2,3,4,5,6,7 --amplitude 0.3

Version 21 codes every mse level from q3 up with the same 73 of its 192 latent channels, and a high pair trained
on mse q6-q8 alone for 10 000 steps keeps them dead (`ceiling_probe.py`): a channel whose analysis output is flat
feeds the synthesis nothing but quantization noise, so the synthesis learns to ignore it and the analysis gets no
gradient to make it vary. `transform_finetune.py --revive` showed that restarted channels are used. This does the
same to a run's checkpoint, so that the restart trains as a run (resumable, with snapshots and validations):
RUN_DIR/checkpoint.pt is SOURCE's with the dead channels of the transform that --levels use revived (see
transform_finetune.revive) and the Adam moments of the revived entries reset, the first to zero and the second to
the median of the same parameter's living entries, so that they start with steps of the usual size. The revival is
logged in the run's events.csv. --levels must be all the levels of one analysis transform and no others: mse q6-q8
(5,6,7) when SOURCE has a high pair of its own (`caecodec train --high-rate-transforms`), all the mse levels
(0,...,7) when it has one mse transform.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from transform_finetune import dead_channels, revive  # beside this script

from caecodec.models import HIGH_RATE_LEVELS
from caecodec.training import CropSampler, append_csv, load_checkpoint_model, main_parameters, training_photos

RUN_FILES = ("config.json", "events.csv", "kodak.csv", "steps.csv")


def transform_users(model, level: int) -> list[int]:
    """The levels that share `level`'s analysis transform."""
    return [other for other in range(model.levels) if model.analysis(other) is model.analysis(level)]


def revived_entries(model, levels: list[int], dead: torch.Tensor) -> dict[str, torch.Tensor]:
    """{parameter name: boolean mask of the entries that revive() rewrote}."""
    analysis, synthesis = model.analysis(max(levels)), model.synthesis(max(levels))
    rewritten = (analysis[-1].weight, analysis[-1].bias, synthesis[0].weight)
    densities = tuple(f"entropy_bottlenecks.{level}." for level in levels)
    masks = {}
    for name, parameter in model.named_parameters():
        if any(parameter is p for p in rewritten) or name.startswith(densities):  # a row per latent channel
            masks[name] = dead.view(-1, *[1] * (parameter.dim() - 1)).expand(parameter.shape)
        elif name in ("log_gain", "log_inverse_gain"):  # a row per level
            masks[name] = torch.zeros(parameter.shape, dtype=torch.bool)
            masks[name][levels] = dead
    return masks


def reset_moments(optimizer_state: dict, names: list[str], masks: dict[str, torch.Tensor]) -> None:
    """Adam's moments of the masked entries: no momentum, and the second moment of the parameter's other entries."""
    for index, name in enumerate(names):
        if name in masks and index in optimizer_state["state"]:
            moments, mask = optimizer_state["state"][index], masks[name]
            moments["exp_avg"][mask] = 0
            moments["exp_avg_sq"][mask] = moments["exp_avg_sq"][~mask].median()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="the new run's directory")
    parser.add_argument("source", type=Path, help="run directory of the network whose transform is revived")
    parser.add_argument("--amplitude", type=float, default=1.0,
                        help="the revived analysis filters' length, in living channels' median lengths")
    parser.add_argument("--levels", default=",".join(map(str, HIGH_RATE_LEVELS)),
                        help="comma-separated indexes of the levels whose analysis transform is revived, all of them "
                             "(default: mse q6-q8, the high pair)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.run_dir.exists():
        parser.error(f"{args.run_dir} exists: revive into a new run directory")
    torch.manual_seed(args.seed)
    model, state = load_checkpoint_model(args.source)
    try:
        levels = sorted(int(level) for level in args.levels.split(","))
    except ValueError:
        parser.error(f"--levels takes comma-separated level indexes, not {args.levels!r}")
    if levels != (users := transform_users(model, levels[0])):
        parser.error(f"--levels {args.levels}: {args.source}'s analysis transform of level {levels[0]} serves levels "
                     f"{','.join(map(str, users))}; revive all of them and no others")
    config = state["config"]
    sampler = CropSampler(training_photos(config["train_dir"]), config["crop"], config["min_scale"])
    dead = dead_channels(model, levels, sampler.sample(np.random.default_rng(args.seed), 16))
    if dead.all():
        parser.error(f"no latent channel of level {max(levels)} carries anything: no living channel to take gains "
                     "and densities from")
    revive(model, levels, dead, args.amplitude)
    names = [name for name, _ in main_parameters(model)]
    reset_moments(state["optimizer"], names, revived_entries(model, levels, dead))
    args.run_dir.mkdir(parents=True)
    for name in RUN_FILES:
        if (args.source / name).exists():
            shutil.copyfile(args.source / name, args.run_dir / name)
    for name in ("checkpoint.pt", "healthy.pt"):  # healthy.pt: where a divergence goes back to
        torch.save(state | {"model": model.state_dict()}, args.run_dir / name)
    event = (f"revived {int(dead.sum())} dead latent channels of the transform of levels {','.join(map(str, levels))} "
             f"at amplitude {args.amplitude}")
    append_csv(args.run_dir / "events.csv", {"step": state["step"], "event": event, "lr_scale": state["lr_scale"]})
    print(f"{args.run_dir}: {args.source}'s step {state['step']}, {event}")


if __name__ == "__main__":
    main()
