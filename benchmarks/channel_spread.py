"""Are revived latent channels coming to life or dying again? Their spread, level by level, along a run.

    python3 benchmarks/channel_spread.py runs/v21 runs/revive-snapshots/step-0240000.pt runs/revive/checkpoint.pt

SOURCE is the run that `revive_channels.py` revived; its dead channels (found as revive_channels.py finds them,
on the same 16 training crops) are the revived ones. For each checkpoint this prints, at each level of the
revived transform, the median and largest spread of the revived channels' latent (analysis output times the
level's gain, in quantization bins) and how many exceed half a bin, against the living channels' median; and
the length of the synthesis weights that read the revived channels. A channel under a tenth of a bin is dead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from revive_channels import judging_crops, transform_users  # beside this script
from transform_finetune import dead_channels

from caecodec.models import variable_rate_like
from caecodec.training import load_checkpoint_model, training_photos


def spread_rows(model, levels: list[int], dead: torch.Tensor, crops: torch.Tensor) -> list[str]:
    with torch.no_grad():
        y = model.analysis(max(levels))(crops).transpose(0, 1).flatten(1).std(1)
        rows = []
        for level in levels:
            spread = y * torch.exp(model.log_gain[level])
            revived, living = spread[dead], spread[~dead]
            rows.append(f"level {level}: revived {revived.median():.3f} median, {revived.max():.3f} largest, "
                        f"{int((revived > 0.5).sum())} over half a bin; living {living.median():.3f}")
        length = model.synthesis(max(levels))[0].weight.flatten(1).norm(dim=1)
        rows.append(f"synthesis weights: revived {length[dead].median():.4f} median, {length[dead].max():.4f} largest; "
                    f"living {length[~dead].median():.4f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="run directory that was revived")
    parser.add_argument("checkpoints", type=Path, nargs="+", help="checkpoints of the revived run (snapshots)")
    parser.add_argument("--levels", default="7", help="comma-separated level indexes whose transform was revived")
    parser.add_argument("--seed", type=int, default=0, help="revive_channels.py's --seed")
    args = parser.parse_args()
    if missing := [str(path) for path in args.checkpoints if not path.is_file()]:
        parser.error(f"no such checkpoint: {', '.join(missing)}")
    source, state = load_checkpoint_model(args.source)
    levels = transform_users(source, int(args.levels.split(",")[0]))
    config = state["config"]
    crops = judging_crops(training_photos(config["train_dir"]), config, args.seed)
    dead = dead_channels(source, levels, crops)
    print(f"{args.source}: {int(dead.sum())} of {len(dead)} channels dead")
    for path in args.checkpoints:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        model = variable_rate_like(checkpoint["model"], config["n"], config["m"])
        model.load_state_dict(checkpoint["model"])
        print(f"{path} (step {checkpoint['step']}):", *spread_rows(model.eval(), levels, dead, crops), sep="\n  ")


if __name__ == "__main__":
    main()
