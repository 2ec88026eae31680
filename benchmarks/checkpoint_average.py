"""Average the weights of a run's last checkpoints into a checkpoint of their own, to export and compare.

    caecodec train --run-dir runs/main --snapshots runs/snapshots ...   # keeps a checkpoint every 250 steps
    python3 benchmarks/checkpoint_average.py runs/avg runs/snapshots/*.pt --last 6 --every 500

The training noise that a decaying learning rate removes (docs/training.md, "Cooldown branches") can also be
averaged away: the mean of the weights at several steps near the end of a run (Polyak averaging, or LAWA in
Kaddour 2022) lies nearer the valley's floor than any one of them. The snapshots are copies of a run's
`checkpoint.pt` at the steps of its checkpoint grid (`caecodec train --snapshots`); of those, the `--last`
ones `--every` steps apart are averaged, parameter by parameter (the densities' quantiles too: export refits
them), and written with the newest snapshot's state as RUN_DIR/checkpoint.pt, which `caecodec train --run-dir
RUN_DIR --export N` exports like any run's. The averaged steps are kept in the checkpoint (`averaged_steps`)
and in the exported model card.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def load(path: Path) -> dict:
    # our own run state; mapped, not read: of dozens of snapshots only the chosen ones' tensors are touched
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


def chosen(paths: list[Path], last: int, every: int) -> list[dict]:
    """The newest snapshot and those `every`, 2·`every`, ... steps before it, `last` in all (oldest first)."""
    by_step = {}
    for path in paths:
        state = load(path)
        by_step[state["step"]] = state
    newest = max(by_step)
    wanted = [newest - k * every for k in reversed(range(last))]
    missing = [step for step in wanted if step not in by_step]
    if missing:
        raise SystemExit(f"no snapshot of steps {missing}; snapshots hold steps {sorted(by_step)}")
    return [by_step[step] for step in wanted]


def averaged(states: list[dict]) -> dict:
    """The newest state with each floating-point model tensor replaced by its mean over `states`."""
    models = [state["model"] for state in states]
    shapes = [{name: tuple(t.shape) for name, t in model.items()} for model in models]
    if any(shape != shapes[-1] for shape in shapes):
        raise SystemExit("the snapshots hold networks of different shapes: they are not one run's")
    mean = {name: (torch.stack([model[name] for model in models]).mean(0) if tensor.is_floating_point() else tensor)
            for name, tensor in models[-1].items()}
    return states[-1] | {"model": mean, "averaged_steps": [state["step"] for state in states]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="where the averaged checkpoint.pt is written")
    parser.add_argument("snapshots", type=Path, nargs="+", help="copies of one run's checkpoint.pt")
    parser.add_argument("--last", type=int, default=6, help="how many snapshots to average")
    parser.add_argument("--every", type=int, default=500, help="steps between the averaged snapshots")
    args = parser.parse_args()
    state = averaged(chosen(args.snapshots, args.last, args.every))
    args.run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.run_dir / "checkpoint.pt")
    print(f"{args.run_dir / 'checkpoint.pt'}: the mean of steps {state['averaged_steps']}")


if __name__ == "__main__":
    main()
