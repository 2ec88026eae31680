"""Train the variable-rate network for all sixteen configurations (resumes the run), or export it as bundled weights.

    caecodec train --steps 20000                      # train (or resume) the run in ~/.cache/caecodec/train/main
    caecodec train --steps 20000 --processes 2        # the same, on two cores (data-parallel)
    caecodec train --plot curves.png                  # learning curves of the run
    caecodec train --export 2 --kodak-dir DIR         # write the run's weights as bundled version 2, with its model card
"""

from __future__ import annotations

from pathlib import Path


def _shared(name: str) -> str | None:
    path = Path("..") / "shared" / "data" / name
    return str(path) if path.is_dir() else None


def _run_setting(run_dir: str, name: str, default):
    """A setting of the run in `run_dir` as it last trained (its config.json), or `default` for a new run."""
    import json

    recipe = Path(run_dir) / "config.json"
    return json.loads(recipe.read_text()).get(name, default) if recipe.exists() else default


def add_arguments(parser) -> None:
    from ..weights import cache_dir

    parser.add_argument("--run-dir", default=str(cache_dir() / "train" / "main"), help="run state (outside git)")
    parser.add_argument("--train-dir", default=_shared("train"), help="folder of training images")
    parser.add_argument("--kodak-dir", default=_shared("kodak"), help="validation images (Kodak)")
    parser.add_argument("--steps", type=int, default=1000, help="steps to train in this invocation")
    parser.add_argument("--n", type=int, default=128, help="channels of the transforms (N)")
    parser.add_argument("--m", type=int, default=192, help="latent channels (M)")
    parser.add_argument("--threads", type=int, help="torch threads (results are reproducible at a fixed count)")
    parser.add_argument("--processes", type=int, default=1,
                        help="data-parallel processes, each computing batch/processes crops of every step "
                             "(2 on two cores: 1.8x the steps per hour of one process, docs/training.md)")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--levels", default="all", help="comma-separated level indexes (0-7 mse q1-8, 8-15 ms-ssim)")
    parser.add_argument("--cooldown-from", metavar="RUN_DIR",
                        help="start --run-dir as a branch of this run, its learning rate decaying to the final rate")
    parser.add_argument("--cooldown-steps", type=int, help="with --cooldown-from: length of the decay (default: --steps)")
    parser.add_argument("--eval-every", type=int, default=2000)
    parser.add_argument("--total-steps", type=int,
                        help="step at which the cosine learning-rate schedule reaches its final rate "
                             "(default: the run's own, from its config.json; a new cooldown branch's source's; "
                             "else 100000)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--plot", metavar="PNG", help="only plot the run's learning curves to PNG")
    parser.add_argument("--export", type=int, metavar="VERSION", help="only export the run as bundled weights")
    parser.add_argument("--provisional", action="store_true", help="with --export: mark the weights provisional")
    parser.add_argument("--bundle-dir", help="with --export: folder of the bundle (default: the package's weights)")


def run(args) -> int:
    import sys

    from ..cli import UsageError

    if args.plot:
        from ..training import plot_curves

        plot_curves(args.run_dir, args.plot)
        return 0
    if args.export is not None:
        from ..training import export_bundle

        if not (Path(args.run_dir) / "checkpoint.pt").exists():
            raise UsageError(f"no checkpoint in {args.run_dir}")
        card = export_bundle(args.run_dir, args.export, args.provisional, args.kodak_dir, args.bundle_dir)
        print(f"wrote bundled weights version {args.export}: {card['file']} sha256 {card['sha256']}")
        return 0
    if not args.train_dir or not Path(args.train_dir).is_dir():
        raise UsageError(f"training images folder not found: {args.train_dir}")
    import torch

    from ..training import TrainingConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    levels = tuple(range(16)) if args.levels == "all" else tuple(int(v) for v in args.levels.split(","))
    run_of_record = args.run_dir if (Path(args.run_dir) / "config.json").exists() else args.cooldown_from or args.run_dir
    schedule = {"total_steps": args.total_steps or _run_setting(run_of_record, "total_steps", TrainingConfig.total_steps)}
    config = TrainingConfig(train_dir=args.train_dir, run_dir=args.run_dir, kodak_dir=args.kodak_dir,
                            n=args.n, m=args.m, crop=args.crop, batch=args.batch, levels=levels, eval_every=args.eval_every,
                            **schedule)
    if args.cooldown_from and not (Path(args.cooldown_from) / "checkpoint.pt").exists():
        raise UsageError(f"no checkpoint to branch from in {args.cooldown_from}")
    trainer = train(config, args.steps, progress=not args.quiet and sys.stderr.isatty(), branch_from=args.cooldown_from,
                    cooldown_steps=args.cooldown_steps, processes=args.processes)
    print(f"run {args.run_dir}: step {trainer.step}, {trainer.skipped} spike steps skipped")
    return 0
