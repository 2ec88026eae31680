"""Train the variable-rate network for all sixteen configurations (resumes the run), or export it as bundled weights.

    caecodec train --steps 20000                      # train (or resume) the run in ~/.cache/caecodec/train/main
    caecodec train --steps 20000 --processes 2        # the same, on two cores (data-parallel)
    caecodec train --plot curves.png                  # learning curves of the run
    caecodec train --export 2 --kodak-dir DIR         # write the run's weights as bundled version 2, with its model card
    caecodec train --export 3 --retable 2             # bundled version 2 again as version 3, its tables' ranges exact
"""

from __future__ import annotations

from pathlib import Path


def _shared(name: str) -> str | None:
    path = Path("..") / "shared" / "data" / name
    return str(path) if path.is_dir() else None


def add_arguments(parser) -> None:
    from ..weights import cache_dir

    parser.add_argument("--run-dir", default=str(cache_dir() / "train" / "main"), help="run state (outside git)")
    parser.add_argument("--train-dir", default=_shared("train"), help="folder of training images")
    parser.add_argument("--snapshots", metavar="DIR", help="keep a copy of every checkpoint on the --checkpoint-every "
                                                           "grid in DIR (for benchmarks/checkpoint_average.py)")
    parser.add_argument("--kodak-dir", default=_shared("kodak"), help="validation images (Kodak)")
    parser.add_argument("--steps", type=int, default=1000, help="steps to train in this invocation")
    # recipe settings default to the run's own (its checkpoint's), so a resume need not repeat them
    parser.add_argument("--n", type=int, help="channels of the transforms (N; default: the run's, else 128)")
    parser.add_argument("--m", type=int, help="latent channels (M; default: the run's, else 192)")
    parser.add_argument("--threads", type=int, help="torch threads (results are reproducible at a fixed count)")
    parser.add_argument("--processes", type=int, default=1,
                        help="data-parallel processes, each computing batch/processes crops of every step "
                             "(2 on two cores: 1.8x the steps per hour of one process, docs/training.md)")
    parser.add_argument("--crop", type=int, help="training crop size (default: the run's, else 128)")
    parser.add_argument("--batch", type=int, help="crops per step (default: the run's, else 8)")
    parser.add_argument("--levels", help="comma-separated level indexes (0-7 mse q1-8, 8-15 ms-ssim) or 'all' "
                                         "(default: the run's, else all)")
    parser.add_argument("--level-weights", help="comma-separated relative weights, one per level of --levels, of how "
                                                "often each is trained (default: the run's, else alike; --levels "
                                                "without it: alike)")
    parser.add_argument("--mse-share", type=float, help="fraction of steps spent on the mse levels, the rest on "
                                                         "ms-ssim (default: the run's, else 0.6)")
    parser.add_argument("--precision", help="fp32, or bf16: the transforms under bfloat16 autocast, weights, densities "
                                            "and loss in float32; faster on some CPUs (1.37x on an AMD EPYC with AVX512-BF16), "
                                            "slower on others (0.7x on an Intel Xeon, 1/22 on an AMD EPYC with no "
                                            "bfloat16 arithmetic, where train warns): benchmarks/step_cost.py tells "
                                            "(default: the run's, else fp32; docs/training.md)")
    parser.add_argument("--metric-encoders", action="store_true", default=None,
                        help="an analysis transform per metric (a shared-encoder run splits its own in two on resume)")
    parser.add_argument("--metric-decoders", action="store_true", default=None,
                        help="and a synthesis transform per metric (split the same way; implies --metric-encoders)")
    parser.add_argument("--high-rate-transforms", action="store_true", default=None,
                        help="and an analysis and a synthesis transform for the high mse levels (split from the mse "
                             "ones; implies --metric-decoders)")
    parser.add_argument("--high-rate-levels", help="comma-separated mse level indexes (0-7: q1-q8) that the high-rate "
                                                   "transforms serve (default: the run's, else 5,6,7; implies "
                                                   "--high-rate-transforms)")
    parser.add_argument("--cooldown-from", metavar="RUN_DIR",
                        help="start --run-dir as a branch of this run, its learning rate decaying to the final rate")
    parser.add_argument("--cooldown-steps", type=int, help="with --cooldown-from: length of the decay (default: --steps)")
    parser.add_argument("--checkpoint-every", type=int,
                        help="steps between checkpoints (default: the run's, else 250)")
    parser.add_argument("--eval-every", type=int, help="steps between Kodak validations (default: the run's, else 2000)")
    parser.add_argument("--total-steps", type=int,
                        help="step at which the cosine learning-rate schedule reaches its final rate "
                             "(default: the run's; a new cooldown branch's source's; else 100000)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--plot", metavar="PNG", help="only plot the run's learning curves to PNG")
    parser.add_argument("--export", type=int, metavar="VERSION", help="only export the run as bundled weights")
    parser.add_argument("--provisional", action="store_true", help="with --export: mark the weights provisional")
    parser.add_argument("--bundle-dir", help="with --export: folder of the bundle (default: the package's weights)")
    parser.add_argument("--retable", type=int, metavar="SOURCE",
                        help="with --export: write bundled version SOURCE's network, not a run's, its densities' "
                             "tails placed exactly and its medians kept: the same latents and pixels, shorter CDF "
                             "tables")
    parser.add_argument("--density-iterations", type=int, default=2000,
                        help="with --export: steps refitting the densities to the whole training photos "
                             "(--train-dir, else the run's own folder); 0 exports them as trained")
    parser.add_argument("--synthesis-steps", type=int, default=2000,
                        help="with --export: steps refitting each synthesis transform to the rounded latents of "
                             "crops of those photos; 0 exports them as trained")


def run(args) -> int:
    import sys

    from ..cli import UsageError

    if args.plot:
        from ..training import plot_curves

        plot_curves(args.run_dir, args.plot)
        return 0
    if args.export is not None:
        card = _export(args)
        print(f"wrote bundled weights version {args.export}: {card['file']} sha256 {card['sha256']}")
        return 0
    if not args.train_dir or not Path(args.train_dir).is_dir():
        raise UsageError(f"training images folder not found: {args.train_dir}")
    import torch

    from ..training import TrainingConfig, native_bfloat16, train

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cooldown_from and not (Path(args.cooldown_from) / "checkpoint.pt").exists():
        raise UsageError(f"no checkpoint to branch from in {args.cooldown_from}")
    high_rate_levels = _comma_separated(args.high_rate_levels, int, "--high-rate-levels",
                                        "comma-separated mse level indexes 0-7")
    high_rate = args.high_rate_transforms or (high_rate_levels is not None) or None
    given = {"n": args.n, "m": args.m, "crop": args.crop, "batch": args.batch, "levels": _levels(args.levels),
             "mse_share": args.mse_share, "checkpoint_every": args.checkpoint_every,
             "eval_every": args.eval_every, "total_steps": args.total_steps, "precision": args.precision,
             "metric_encoders": args.metric_encoders or args.metric_decoders or high_rate,
             "metric_decoders": args.metric_decoders or high_rate, "high_rate_transforms": high_rate,
             "high_rate_levels": high_rate_levels, "level_weights": _level_weights(args.level_weights)}
    settings = {name: value for name, value in given.items() if value is not None}
    if args.levels is not None and args.level_weights is None:
        settings["level_weights"] = None  # the run's weights were for its own levels
    config = TrainingConfig.of_run(args.run_dir, args.cooldown_from, train_dir=args.train_dir, kodak_dir=args.kodak_dir,
                                   snapshot_dir=args.snapshots, **settings)
    if config.precision == "bf16" and not native_bfloat16():  # a run keeps its precision when it moves machine
        print(f"caecodec train: warning: {args.run_dir} trains in bf16, which this CPU has no arithmetic for "
              "(no AVX512-BF16 or AMX): its transforms cost 22 times float32's here; --precision fp32 switches it",
              file=sys.stderr)
    trainer = train(config, args.steps, progress=not args.quiet and sys.stderr.isatty(), branch_from=args.cooldown_from,
                    cooldown_steps=args.cooldown_steps, processes=args.processes)
    print(f"run {args.run_dir}: step {trainer.step}, {trainer.skipped} spike steps skipped")
    return 0


def _export(args) -> dict:
    from ..cli import UsageError

    if args.retable is not None:
        from ..training import retable_bundle
        from ..weights import bundled_versions

        if args.retable not in bundled_versions():
            raise UsageError(f"--retable {args.retable}: this installation bundles weights versions "
                             f"{bundled_versions()}, not {args.retable}")
        if args.retable == args.export:
            raise UsageError(f"--export {args.export} would overwrite its source, bundled version {args.retable}: "
                             "bundled versions are immutable")
        return retable_bundle(args.retable, args.export, args.provisional, args.kodak_dir, args.bundle_dir)
    from ..training import export_bundle

    if not (Path(args.run_dir) / "checkpoint.pt").exists():
        raise UsageError(f"no checkpoint in {args.run_dir}")
    for option in ("density_iterations", "synthesis_steps"):
        if getattr(args, option) < 0:
            raise UsageError(f"--{option.replace('_', '-')} must be at least 0, not {getattr(args, option)}")
    return export_bundle(args.run_dir, args.export, args.provisional, args.kodak_dir, args.bundle_dir,
                         args.train_dir, args.density_iterations, args.synthesis_steps)


def _levels(text: str | None) -> tuple[int, ...] | None:
    from ..training import TrainingConfig

    if text == "all":
        return TrainingConfig.levels
    return _comma_separated(text, int, "--levels", "'all' or comma-separated level indexes 0-15")


def _level_weights(text: str | None) -> tuple[float, ...] | None:
    return _comma_separated(text, float, "--level-weights", "comma-separated numbers, one per level")


def _comma_separated(text: str | None, kind, option: str, expected: str) -> tuple | None:
    from ..cli import UsageError

    if text is None:
        return None
    try:
        return tuple(kind(value) for value in text.split(","))
    except ValueError:
        raise UsageError(f"{option} takes {expected}, not {text!r}") from None
