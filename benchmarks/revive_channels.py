"""Revive the dead latent channels of one of a run's transforms (by default its high pair's), as a run to train on.

    python3 benchmarks/revive_channels.py runs/revive runs/highonly --amplitude 0.3
    caecodec train --run-dir runs/revive --snapshots runs/revive-snapshots --levels 5,6,7 --threads 1 --processes 2
    python3 benchmarks/revive_channels.py runs/revive-mse runs/v21 --levels 0,1,2,3,4,5,6,7 --amplitude 0.3
    python3 benchmarks/revive_channels.py runs/revive-q4 runs/v21 --levels 0,1,2,3,4,5,6,7 --closed 0,1,2
    python3 benchmarks/revive_channels.py runs/revive-taught runs/v21 --levels 0,1,2,3,4,5,6,7 --closed 0,1,2 \
        --distortion-steps 1000

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
(0,...,7) when it has one mse transform. --closed keeps the revived channels shut at some of those levels (see
transform_finetune.revive): reviving for all eight mse levels at once, most revived channels died again within
5 000 steps, and shut at q1-q3 they still lost half their spread within 500 steps: while their synthesis weights are
still near zero, the rate term alone moves their analysis filters, and flattens them. --synthesis-steps first
teaches the synthesis to read the revived channels (and only the synthesis trains), so that from the run's first
step the distortion term too has a say on their filters; --distortion-steps goes further and turns the revived
filters too, by the distortion term alone. Neither slowed the collapse (docs/training.md, session 32).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from transform_finetune import dead_channels, revive  # beside this script

from caecodec.models import HIGH_RATE_LEVELS
from caecodec.training import (CropSampler, SynthesisFitRecipe, append_csv, fit_synthesis, load_checkpoint_model,
                               main_parameters, rate_distortion_loss, training_photos)

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


def borrowed_moments(optimizer_state: dict, lender: Path, parameters: list[torch.Tensor]) -> dict:
    """`optimizer_state` with the second moments of `lender`'s checkpoint, a run of the same network (`parameters`,
    the main optimizer's), and no momentum: Adam then steps each entry by its gradient against the lender's gradient
    scale, not by its own."""
    lent = torch.load(lender / "checkpoint.pt", map_location="cpu", weights_only=False)["optimizer"]["state"]
    if not lent:
        raise SystemExit(f"{lender}'s checkpoint has no Adam moments to lend: it has not trained a step")
    for index, moments in lent.items():
        if index >= len(parameters) or moments["exp_avg_sq"].shape != parameters[index].shape:
            found = tuple(parameters[index].shape) if index < len(parameters) else "none"
            raise SystemExit(f"{lender} is not a run of this network: its optimizer's parameter {index} has shape "
                             f"{tuple(moments['exp_avg_sq'].shape)}, this network's {found}")
    state = {index: {"step": moments["step"].clone(), "exp_avg": torch.zeros_like(moments["exp_avg"]),
                     "exp_avg_sq": moments["exp_avg_sq"].clone()} for index, moments in lent.items()}
    return {"state": state, "param_groups": optimizer_state["param_groups"]}


def teach_revived(model, sampler: CropSampler, levels: list[int], dead: torch.Tensor, recipe: SynthesisFitRecipe,
                  seed: int) -> None:
    """Give the revived channels something worth their rate before the rate term sees them: `recipe.steps` steps
    of the distortion term alone, at `levels` (the open ones), drawn alike, on training's noisy latents. The revived
    analysis filters learn directions, their lengths held, and the synthesis learns to read them; nothing else
    trains, so no living channel's latent moves. Without this the rate term turns random filters towards flat
    directions within 500 steps, while their synthesis weights are still near zero (docs/training.md, session 31)."""
    generator = np.random.default_rng(seed)
    last, synthesis = model.analysis(max(levels))[-1], model.synthesis(max(levels))
    lengths = last.weight[dead].flatten(1).norm(dim=1)
    model.requires_grad_(False)
    parameters = [last.weight, *synthesis.parameters(), model.log_inverse_gain]
    for parameter in parameters:
        parameter.requires_grad_(True)
    only_revived = last.weight.register_hook(lambda grad: grad * dead.view(-1, 1, 1, 1))
    optimizer = torch.optim.Adam(parameters, lr=recipe.lr)
    for _ in range(recipe.steps):
        level = levels[generator.integers(len(levels))]
        x = sampler.sample(generator, recipe.batch)
        _, _, mse = rate_distortion_loss(model(x, level, noise=True), x, level, msssim_window=7)
        optimizer.zero_grad(set_to_none=True)
        mse.backward()
        optimizer.step()
        with torch.no_grad():
            last.weight[dead] *= (lengths / last.weight[dead].flatten(1).norm(dim=1))[:, None, None, None]
    only_revived.remove()
    model.requires_grad_(True)


def judging_crops(photos: list, config: dict, seed: int) -> torch.Tensor:
    """The 16 training crops on which a run's dead channels are found, the same for the revival and its probes."""
    return CropSampler(photos, config["crop"], config["min_scale"]).sample(np.random.default_rng(seed), 16)


def level_list(parser: argparse.ArgumentParser, option: str, text: str) -> list[int]:
    """The sorted level indexes of a comma-separated `option` (empty: none)."""
    try:
        return sorted(int(level) for level in text.split(",")) if text else []
    except ValueError:
        parser.error(f"{option} takes comma-separated level indexes, not {text!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="the new run's directory")
    parser.add_argument("source", type=Path, help="run directory of the network whose transform is revived")
    parser.add_argument("--amplitude", type=float, default=1.0,
                        help="the revived analysis filters' length, in living channels' median lengths")
    parser.add_argument("--levels", default=",".join(map(str, HIGH_RATE_LEVELS)),
                        help="comma-separated indexes of the levels whose analysis transform is revived, all of them "
                             "(default: mse q6-q8, the high pair)")
    parser.add_argument("--closed", default="",
                        help="comma-separated indexes of levels among --levels at which the revived channels stay "
                             "shut: no bits, nothing for the synthesis (default: none)")
    parser.add_argument("--widen", type=float, default=1.0,
                        help="the borrowed densities of the open levels this many times wider, about zero, so that "
                             "the rate term first pulls the revived latents towards zero less (default 1: as borrowed)")
    parser.add_argument("--synthesis-steps", type=int, default=0,
                        help="steps in which the synthesis learns to read the revived channels before the run "
                             "trains, everything else frozen (training.fit_synthesis; default 0: none)")
    parser.add_argument("--distortion-steps", type=int, default=0,
                        help="steps in which the revived filters (their lengths held) and the synthesis learn from the "
                             "distortion term alone, at the open levels, before the run trains (default 0: none)")
    parser.add_argument("--moments-from", type=Path,
                        help="run directory of the same network whose Adam second moments the revived run starts with, "
                             "for a SOURCE that has none (a run started from bundled weights)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.run_dir.exists():
        parser.error(f"{args.run_dir} exists: revive into a new run directory")
    torch.manual_seed(args.seed)
    model, state = load_checkpoint_model(args.source)
    levels, closed = level_list(parser, "--levels", args.levels), level_list(parser, "--closed", args.closed)
    if levels != (users := transform_users(model, levels[0])):
        parser.error(f"--levels {args.levels}: {args.source}'s analysis transform of level {levels[0]} serves levels "
                     f"{','.join(map(str, users))}; revive all of them and no others")
    if not set(closed) < set(levels):
        parser.error(f"--closed {args.closed}: the closed levels must be some of --levels {args.levels}, not all")
    config = state["config"]
    photos = training_photos(config["train_dir"])
    dead = dead_channels(model, levels, judging_crops(photos, config, args.seed))
    if dead.all():
        parser.error(f"no latent channel of level {max(levels)} carries anything: no living channel to take gains "
                     "and densities from")
    revive(model, levels, dead, args.amplitude, tuple(closed), args.widen)
    fit_sampler = CropSampler(photos, SynthesisFitRecipe.crop, config["min_scale"])
    if args.synthesis_steps:
        fit_synthesis(model, fit_sampler, SynthesisFitRecipe(steps=args.synthesis_steps), seed=args.seed,
                      levels_of=levels)
    if args.distortion_steps:
        teach_revived(model, fit_sampler, sorted(set(levels) - set(closed)), dead,
                      SynthesisFitRecipe(steps=args.distortion_steps), seed=args.seed)
    names, parameters = zip(*main_parameters(model))
    if args.moments_from:
        state["optimizer"] = borrowed_moments(state["optimizer"], args.moments_from, list(parameters))
    reset_moments(state["optimizer"], list(names), revived_entries(model, levels, dead))
    args.run_dir.mkdir(parents=True)
    for name in RUN_FILES:
        if (args.source / name).exists():
            shutil.copyfile(args.source / name, args.run_dir / name)
    for name in ("checkpoint.pt", "healthy.pt"):  # healthy.pt: where a divergence goes back to
        torch.save(state | {"model": model.state_dict()}, args.run_dir / name)
    event = (f"revived {int(dead.sum())} dead latent channels of the transform of levels {','.join(map(str, levels))} "
             f"at amplitude {args.amplitude}" + (f", shut at levels {','.join(map(str, closed))}" if closed else "")
             + (f", their densities widened {args.widen:g} times" if args.widen != 1.0 else "")
             + (f", the synthesis fitted to them in {args.synthesis_steps} steps" if args.synthesis_steps else "")
             + (f", taught by the distortion term alone in {args.distortion_steps} steps" if args.distortion_steps
                else "")
             + (f", Adam's second moments from {args.moments_from}" if args.moments_from else ""))
    append_csv(args.run_dir / "events.csv", {"step": state["step"], "event": event, "lr_scale": state["lr_scale"]})
    print(f"{args.run_dir}: {args.source}'s step {state['step']}, {event}")


if __name__ == "__main__":
    main()
