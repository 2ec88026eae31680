"""Is a transform held back by serving sixteen levels? Fine-tune it alone, for some levels.

    python3 benchmarks/transform_finetune.py --version 7 --levels mse-8 --steps 2000     # about 20 min, one core
    python3 benchmarks/transform_finetune.py --version 7 --levels all --steps 2000
    python3 benchmarks/transform_finetune.py --version 9 --transform synthesis --levels all
    python3 benchmarks/transform_finetune.py --version 15 --levels mse-1,…,mse-8 --widen 192 --precision fp32
    python3 benchmarks/transform_finetune.py --version 21 --transform both --levels mse-6,mse-7,mse-8 \
        --measure mse-6,mse-7,mse-8 --steps 4000
    python3 benchmarks/transform_finetune.py --version 21 --transform both --levels mse-6,mse-7,mse-8 \
        --measure mse-6,mse-7,mse-8 --steps 4000 --widen 192 --widened synthesis --threads 2
    python3 benchmarks/transform_finetune.py --version 21 --transform both --levels mse-6,mse-7,mse-8 \
        --measure mse-6,mse-7,mse-8 --steps 4000 --eval-every 500 --revive --threads 2

From bundled weights, one transform trains (or both, below), with the trained levels' rows of its gains: the analysis
transform and the gains (`--transform analysis`), or the synthesis and the inverse gains (`synthesis`).
Everything else stays frozen, the densities with their CDF tables too: training the analysis transform
leaves the decoder the bundled one, bit for bit; training the synthesis leaves every latent, and so every
rate, as it was. `--transform both` trains both transforms with the trained levels' gains, inverse gains and
densities, as a pair of transforms of those levels' own would train (their quantiles and CDF tables are refitted
before each measurement). The recipe is the main run's (128×128 crops of the training photos, batch 8,
bfloat16 autocast, each level's loss divided by its running mean, levels drawn mse 60 % / ms-ssim 40 %), with
Adam on a cosine from --lr to a tenth of it. If one latent serving sixteen levels is what holds the encoder
back, an encoder fine-tuned for a single level gains there what one fine-tuned for all sixteen, given the same
steps, does not. `--widen` asks the other question, whether the mse transforms lack capacity: the hidden layers
of those trained (or of those `--widened` names) grow to that many channels before training, the new ones
starting with no effect on the old (their outgoing weights zero), so a widened transform starts out computing
exactly the bundled one. `--revive` asks whether the latent channels that carry nothing (119 of version 21's 192)
can be brought back: they restart with fresh analysis filters and borrowed gains and densities (see `revive`).
Measured with real bitstreams on the 8 validation images; results go to docs/transform_finetune.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from caecodec import weights, zoo
from caecodec.evaluation import mean_measurement
from caecodec.layers import GDN
from caecodec.models import analysis_transform, synthesis_transform
from caecodec.training import (CropSampler, TrainingConfig, fit_quantiles, kodak_images, level_shares,
                               rate_distortion_loss, training_photos)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def level_of(name: str) -> int:
    metric, _, quality = name.rpartition("-")
    return zoo.level_index(int(quality), metric)


def parse_levels(text: str) -> list[int]:
    return list(range(len(zoo.METRICS) * len(zoo.QUALITIES))) if text == "all" else [level_of(n) for n in text.split(",")]


GAINS = {"analysis": "log_gain", "synthesis": "log_inverse_gain"}  # a transform and the gains beside it
TRANSFORMS = {"analysis": ["analysis"], "synthesis": ["synthesis"], "both": ["analysis", "synthesis"]}


def transform_parameters(model, transform: str, levels: list[int]) -> list[torch.nn.Parameter]:
    """The parameters of the transforms (of kind `transform`) that the trained levels use."""
    modules = {id(m): m for kind in TRANSFORMS[transform] for m in (getattr(model, kind)(level) for level in levels)}
    return [parameter for module in modules.values() for parameter in module.parameters()]


def trained_densities(model, transform: str, levels: list[int]) -> list[torch.nn.Parameter]:
    """The trained levels' densities when both transforms train: the latent, and so its density, moves too
    (their quantiles are refitted before each measurement)."""
    if transform != "both":
        return []
    return [p for level in levels for name, p in model.entropy_bottlenecks[level].named_parameters()
            if name != "quantiles"]


def trained_parameters(model, transform: str, levels: list[int]) -> list[torch.nn.Parameter]:
    """Freeze everything but the transform; of its gains, only the trained levels' rows move."""
    model.requires_grad_(False)
    gains = [getattr(model, GAINS[kind]) for kind in TRANSFORMS[transform]]
    parameters = [*transform_parameters(model, transform, levels), *gains, *trained_densities(model, transform, levels)]
    for parameter in parameters:
        parameter.requires_grad_(True)
    if transform == "both":  # for fit_quantiles
        for level in levels:
            model.entropy_bottlenecks[level].quantiles.requires_grad_(True)
    frozen = torch.ones(model.levels, 1)
    frozen[levels] = 0
    for gain in gains:
        gain.register_hook(lambda grad: grad.masked_fill(frozen.bool(), 0))
    return parameters


def widened(transform: torch.nn.Sequential, width: int, build) -> torch.nn.Sequential:
    """`transform` (an analysis or a synthesis transform, made by `build(n, m)`) with `width` channels in its hidden
    layers, computing the same function: the new channels get fresh weights in, zero weights out (in the
    convolutions and in the GDNs' normalisation pools)."""
    old_width = transform[1].beta.numel()  # the first GDN's channels
    if width < old_width:
        raise ValueError(f"--widen {width} is narrower than the transform's {old_width} channels")
    m = transform[0].in_channels if isinstance(transform[0], torch.nn.ConvTranspose2d) else transform[-1].out_channels
    wide = build(width, m)
    with torch.no_grad():
        for old, new in zip(transform, wide):
            if isinstance(old, GDN):
                new.beta[:old_width] = old.beta
                new.gamma[:, :old_width] = new.gamma_reparam.init(torch.zeros(width, old_width))
                new.gamma[:old_width, :old_width] = old.gamma
                new.gamma[:old_width, old_width:] = new.gamma_reparam.init(torch.zeros(old_width, width - old_width))
            else:  # a weight as (outputs, inputs, k, k): a transposed convolution stores it as (inputs, outputs, ...)
                transposed = isinstance(old, torch.nn.ConvTranspose2d)
                old_weight, new_weight = (w.transpose(0, 1) if transposed else w for w in (old.weight, new.weight))
                outputs, inputs = old_weight.shape[:2]
                new_weight[:outputs, :inputs] = old_weight
                new_weight[:outputs, inputs:] = 0
                new.bias[:outputs] = old.bias
    return wide


def dead_channels(model, levels: list[int], crops: torch.Tensor) -> torch.Tensor:
    """The latent channels of the mse transforms of `levels` that carry nothing at the highest of `levels`: on
    `crops`, the analysis output's spread, times that level's gain, is under a tenth of a quantization bin
    (version 21: 119 of 192, at every mse level)."""
    with torch.no_grad():
        y = model.analysis(max(levels))(crops).transpose(0, 1).flatten(1)
        return y.std(1) * torch.exp(model.log_gain[max(levels)]) < 0.1


CLOSED_LOG_GAIN = -12.0  # e^-12: the latent rounds to its median, and training's noise reaches the synthesis ×6e-6
CLOSED_NARROWING = 1000.0  # a density this much narrower than a living channel's gives the median bin all its mass


def revive(model, levels: list[int], dead: torch.Tensor, amplitude: float = 1.0, closed: tuple[int, ...] = (),
           widening: float = 1.0) -> None:
    """Give the `dead` latent channels of the mse transforms of `levels` a fresh start: random analysis filters
    `amplitude` times as long as the living channels' (median norm), the living channels' median gains at each
    level, the density of a living channel drawn at random, and zero synthesis weights. The revived channels first
    cost rate and must earn it; the constant that the dead ones fed the synthesis is lost (0.57 dB at q8 before
    training). At the `closed` levels the revived channels stay shut: gain and inverse gain e^-12, and the borrowed
    density narrowed about zero, so that they cost no bits there and the synthesis gets nothing from them; those
    levels then neither pay for the revival nor, training, push the revived channels back to death. `widening`
    makes the borrowed densities of the open levels that many times wider, about zero, so that the rate term pulls
    the revived latents towards zero 1/widening² as hard while the synthesis learns to read them."""
    alive = ~dead
    with torch.no_grad():
        last, first = model.analysis(max(levels))[-1], model.synthesis(max(levels))[0]
        fresh = torch.randn_like(last.weight[dead])
        norm = last.weight[alive].flatten(1).norm(dim=1).median()
        last.weight[dead] = fresh * (amplitude * norm / fresh.flatten(1).norm(dim=1))[:, None, None, None]
        last.bias[dead] = 0
        first.weight[dead] = 0  # a transposed convolution's weight: (inputs, outputs, k, k)
        donors = alive.nonzero()[torch.randint(int(alive.sum()), (int(dead.sum()),))].squeeze(1)
        for level in levels:
            for gains in (model.log_gain, model.log_inverse_gain):
                gains[level, dead] = CLOSED_LOG_GAIN if level in closed else gains[level, alive].median()
            for parameter in model.entropy_bottlenecks[level].parameters():
                parameter[dead] = parameter[donors]
            if level in closed or widening != 1.0:
                narrowing = CLOSED_NARROWING if level in closed else 1 / widening
                narrow_density(model.entropy_bottlenecks[level], dead, narrowing)


def narrow_density(bottleneck, channels: torch.Tensor, factor: float) -> None:
    """Make the densities of `channels` `factor` times narrower (wider, under 1) and move their medians to zero:
    p(x) becomes p(factor·x + median), exactly, since the first layer of the cumulative's network is affine in x."""
    with torch.no_grad():
        median = bottleneck.quantiles[channels, :, 1:2]
        slope = torch.nn.functional.softplus(bottleneck.matrices[0][channels])
        bottleneck.biases[0][channels] += slope * median
        scaled = slope * factor
        bottleneck.matrices[0][channels] = scaled + torch.log(-torch.expm1(-scaled))  # softplus⁻¹
        bottleneck.quantiles[channels] = (bottleneck.quantiles[channels] - median) / factor


def measure_levels(model, levels: list[int], images: list[np.ndarray], retabulate: bool = False) -> dict:
    """Real bitstreams of `levels`; `retabulate`: the densities trained, so refit the quantiles and rebuild the
    CDF tables first."""
    if retabulate:
        fit_quantiles(model)
        for level in levels:
            model.entropy_bottlenecks[level].update()
    results = {}
    for level in levels:
        quality, metric = zoo.level_configuration(level)
        result = mean_measurement(model.export(level), images).as_dict()
        results[f"{metric}-{quality}"] = {key: round(value, 4) for key, value in result.items()}
    return results


def report(step: int, results: dict) -> None:
    print(f"step {step}: " + ", ".join(f"{name} {r['bpp']:.4f} bpp {r['psnr']:.2f} dB {r['ms_ssim']:.4f}"
                                       for name, r in results.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", type=int, required=True, help="bundled weights version to start from")
    parser.add_argument("--transform", choices=list(TRANSFORMS), default="analysis", help="the transform trained")
    parser.add_argument("--levels", default="mse-8", help="levels trained: 'all' or e.g. mse-5,mse-8")
    parser.add_argument("--measure", default="mse-2,mse-5,mse-8", help="levels measured on the validation images")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam's peak; a cosine takes it to a tenth")
    parser.add_argument("--widen", type=int, help="channels of the hidden layers of the mse transforms trained")
    parser.add_argument("--widened", choices=list(TRANSFORMS), help="which of them to widen (default: all trained)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--revive", action="store_true",
                        help="restart the mse latent channels dead at the highest trained level (needs --transform both)")
    parser.add_argument("--revive-amplitude", type=float, default=1.0,
                        help="the revived analysis filters' length, in living channels' median lengths")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="of the transforms")
    parser.add_argument("--rounded", action="store_true",
                        help="train on the rounded latent that coding decodes, not on the noisy one (synthesis only)")
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--train-dir", type=Path, default=SHARED / "train")
    parser.add_argument("--kodak", type=Path, default=SHARED / "kodak")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "transform_finetune.json")
    args = parser.parse_args()
    widened_kinds = TRANSFORMS[args.widened or args.transform]
    if args.widen and not set(widened_kinds) <= set(TRANSFORMS[args.transform]):
        parser.error(f"--widened {args.widened} widens a transform that --transform {args.transform} does not train")
    if args.revive and args.transform != "both":
        parser.error("--revive restarts channels of both transforms and their densities: it needs --transform both")
    if args.rounded and args.transform != "synthesis":
        parser.error("--rounded has no gradient to give the analysis transform: it needs --transform synthesis")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    config = TrainingConfig(train_dir=str(args.train_dir), run_dir="", levels=tuple(parse_levels(args.levels)))
    generator = np.random.default_rng(config.seed)
    model = weights._variable_rate_model(args.version)
    if args.widen:  # the mse transforms: the ones the mse levels of a bundle without a high pair use
        if "analysis" in widened_kinds:
            model.g_a = widened(model.g_a, args.widen, analysis_transform)
        if "synthesis" in widened_kinds:
            model.g_s = widened(model.g_s, args.widen, synthesis_transform)
    optimizer = torch.optim.Adam(trained_parameters(model, args.transform, list(config.levels)), lr=args.lr)
    sampler = CropSampler(training_photos(config.train_dir), config.crop, config.min_scale)
    if args.revive:
        dead = dead_channels(model, list(config.levels), sampler.sample(np.random.default_rng(1), 16))
        revive(model, list(config.levels), dead, args.revive_amplitude)
        print(f"revived {int(dead.sum())} of {model.m} latent channels", flush=True)
    images = kodak_images(str(args.kodak), config.eval_images)
    measured = [level_of(name) for name in args.measure.split(",")]
    history = {0: measure_levels(model.eval(), measured, images, retabulate=args.revive)}
    report(0, history[0])
    shares = level_shares(config.levels, config.mse_share, config.level_weights)
    loss_mean, started = {}, time.perf_counter()
    for step in range(1, args.steps + 1):
        level = int(config.levels[generator.choice(len(config.levels), p=shares)])
        x = sampler.sample(generator, config.batch)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - 1) / args.steps)))
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            output = model(x, level, noise=False if args.rounded else None)
        loss, _, _ = rate_distortion_loss(output, x, level, config.msssim_window)
        mean = loss_mean.get(level, float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        (loss / mean).backward()
        torch.nn.utils.clip_grad_norm_(transform_parameters(model, args.transform, list(config.levels)), config.clip_norm)
        optimizer.step()
        loss_mean[level] = 0.99 * mean + 0.01 * float(loss.detach())
        if step % args.eval_every == 0 or step == args.steps:
            history[step] = measure_levels(model.eval(), measured, images, retabulate=args.transform == "both")
            report(step, history[step])
    seconds = time.perf_counter() - started
    existing = json.loads(args.output.read_text()) if args.output.exists() else {}
    kind = {"analysis": "encoder", "synthesis": "decoder", "both": "encoder and decoder"}[args.transform]
    which = "" if widened_kinds == TRANSFORMS[args.transform] else f" {' and '.join(widened_kinds)}"
    widening = f",{which} widened to {args.widen}" if args.widen else ""
    precision = f", {args.precision}" if args.precision != "bf16" else ""
    rounded = ", on rounded latents" if args.rounded else ""
    amplitude = f" at amplitude {args.revive_amplitude}" if args.revive_amplitude != 1.0 else ""
    revived = f", dead channels revived{amplitude}" if args.revive else ""
    existing[f"v{args.version}, {kind}{widening}{revived} trained on {args.levels}{rounded}, {args.steps} steps, lr {args.lr}{precision}"] = {
        "seconds": round(seconds), "validation": history}
    args.output.write_text(json.dumps(existing, indent=1) + "\n")


if __name__ == "__main__":
    main()
