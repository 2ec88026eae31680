"""Training caecodec's variable-rate factorized prior: one network for all sixteen configurations.

Run state (checkpoints, logs) lives outside git, by default in `~/.cache/caecodec/train/<run>`;
`train()` resumes exactly where the last checkpoint stopped (weights, optimizer, step, RNG, loss
statistics), and starts from the bundled weights when there is no checkpoint but bundled weights exist.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from . import zoo
from .entropy_models import EntropyBottleneck
from .evaluation import load_rgb, mean_measurement, mean_of, measure
from .models import (HIGH_RATE_LEVELS, VariableRateFactorizedPrior, check_high_rate_levels, shared_name, variable_rate_like,
                     with_own_transforms)
from .parallel import Replicas
from .refinement import Refinement


@dataclass
class TrainingConfig:
    train_dir: str
    run_dir: str
    kodak_dir: str | None = None
    snapshot_dir: str | None = None  # keeps every checkpoint on the checkpoint_every grid, for averaging
    n: int = 128
    m: int = 192
    levels: tuple[int, ...] = tuple(range(16))  # the levels trained, see zoo.level_index
    mse_share: float = 0.6  # fraction of steps spent on the mse levels; the rest on ms-ssim
    level_weights: tuple[float, ...] | None = None  # each of `levels`' steps in proportion to its weight; None: alike
    crop: int = 128
    batch: int = 8
    min_scale: float = 0.5  # random downscaling hides the JPEG blocks of the training photos
    peak_lr: float = 4e-4  # 8e-4 diverged near step 2400 (docs/training.md)
    final_lr: float = 2e-5
    warmup_steps: int = 500
    total_steps: int = 100_000
    aux_lr: float = 1e-3
    clip_norm: float = 1.0
    spike_factor: float = 4.0  # a step whose loss exceeds this multiple of the running mean is skipped
    min_psnr: float = 12.0  # after warm-up, a batch reconstructed worse than this is a divergence, skipped
    recovery_skips: int = 10  # this many skipped steps out of the last 50: back to the last healthy checkpoint
    checkpoint_every: int = 250
    eval_every: int = 2000
    eval_images: int = 8
    seed: int = 0
    msssim_window: int = 7  # 128-pixel crops are too small for 5 scales with the 11-pixel window
    density_batch: int = 2  # crops whose latent also trains the densities of the levels not sampled
    precision: str = "fp32"  # "bf16": the transforms under bfloat16 autocast (docs/training.md, "Mixed precision")
    metric_encoders: bool = False  # an analysis transform per metric (docs/training.md, "Sharing the analysis transform")
    metric_decoders: bool = False  # and a synthesis transform per metric (docs/training.md, "Sharing the synthesis")
    high_rate_transforms: bool = False  # and transforms of high mse levels' own (docs/training.md, "The high mse levels")
    high_rate_levels: tuple[int, ...] = HIGH_RATE_LEVELS  # the levels they serve (docs/training.md, session 44)

    def __post_init__(self):
        count = len(zoo.METRICS) * len(zoo.QUALITIES)
        if not self.levels or not all(0 <= level < count for level in self.levels):
            raise ValueError(f"levels must be indexes 0-{count - 1} (0-7 mse q1-8, 8-15 ms-ssim), not {self.levels}")
        if not 0 <= self.mse_share <= 1:
            raise ValueError(f"mse_share is a fraction of the steps, between 0 and 1, not {self.mse_share}")
        weights = self.level_weights
        if weights is not None and (len(weights) != len(self.levels) or not all(0 <= w < math.inf for w in weights)
                                    or not any(weights)):
            raise ValueError(f"level_weights must be {len(self.levels)} numbers of at least 0, not all 0, one for each "
                             f"of the levels {self.levels}, not {weights}")
        check_high_rate_levels(self.high_rate_levels, range(len(zoo.QUALITIES)))
        if not level_step_weights(self.levels, self.mse_share, weights).any():
            raise ValueError(f"mse_share {self.mse_share} gives none of the levels {self.levels} any steps"
                             + (f" with level_weights {weights}" if weights else ""))
        for name in ("checkpoint_every", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} is a number of steps, at least 1, not {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        smallest = (self.msssim_window - 1) * 2**4 + 1  # MS-SSIM's 5 scales: 4 halvings, then the window
        if any(zoo.level_configuration(level)[1] == "ms-ssim" for level in self.levels) and self.crop < smallest:
            raise ValueError(f"crop {self.crop} is too small for the ms-ssim levels: MS-SSIM with window "
                             f"{self.msssim_window} needs crops of at least {smallest} pixels")

    @classmethod
    def of_run(cls, run_dir: str | Path, branch_from: str | Path | None = None, **settings) -> TrainingConfig:
        """The recipe a run continues with: its checkpoint's (a new cooldown branch: its source's; a new run:
        the defaults), overridden by the `settings` given. Where things are (PLACES) comes from `settings` only."""
        recorded = Path(run_dir) / "checkpoint.pt"
        if not recorded.exists() and branch_from:
            recorded = Path(branch_from) / "checkpoint.pt"
        recipe = {}
        if recorded.exists():
            state = torch.load(recorded, map_location="cpu", weights_only=False, mmap=True)  # our own run state
            known = {f.name for f in fields(cls)} - set(PLACES)  # a setting since removed is not passed on
            recipe = {k: v for k, v in state["config"].items() if k in known}
            for name in ("levels", "level_weights", "high_rate_levels"):  # tuples: lists after a JSON round trip
                value = recipe.get(name, getattr(cls, name))
                recipe[name] = None if value is None else tuple(value)
        return cls(**{**recipe, **settings, "run_dir": str(run_dir)})

    def lr(self, step: int, start: int = 0) -> float:
        """Learning rate at `step`: the cosine schedule, ramped up linearly over the warm-up steps after `start`
        (the step a run was started or restarted at with a fresh optimizer: a restart warms up to the schedule's
        rate at that step, not to the peak)."""
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)))
        scheduled = self.final_lr + 0.5 * (self.peak_lr - self.final_lr) * (1 + math.cos(math.pi * progress))
        return scheduled * min(1.0, (step - start + 1) / self.warmup_steps)


PRECISIONS = ("fp32", "bf16")
SCHEDULE_SETTINGS = ("peak_lr", "final_lr", "warmup_steps", "total_steps")
PLACES = ("run_dir", "kodak_dir", "train_dir", "snapshot_dir")  # where things are, not how a run trains
OWN_TRANSFORM_SETTINGS = ("metric_encoders", "metric_decoders", "high_rate_transforms")  # each needs the ones before it


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX: oneDNN's own test). Without it
    bfloat16 autocast is emulated, and the transforms cost 22 times what they do in float32 (docs/training.md)."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def defaults(dataclass_type) -> dict:
    return {f.name: f.default for f in fields(dataclass_type) if f.default is not MISSING}


def initial_gains(levels) -> list[float]:
    """Quantization gains spaced like the square root of lambda (the high-rate optimum for MSE)."""
    reference = {"mse": zoo.LAMBDAS["mse"][2], "ms-ssim": zoo.LAMBDAS["ms-ssim"][2]}
    return [math.sqrt(zoo.level_lambda(level) / reference[zoo.level_configuration(level)[1]]) for level in levels]


def training_photos(folder: str | Path) -> list[torch.Tensor]:
    """Every PNG and JPEG photo in `folder`, decoded once: uint8 tensors, 3×H×W."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"training images folder not found: {folder}")
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not paths:
        raise ValueError(f"no PNG or JPEG images in {folder}")
    return [torch.from_numpy(load_rgb(p)).permute(2, 0, 1).contiguous() for p in paths]


class CropSampler:
    """Random crops of training photos held in memory, with random downscaling and horizontal flips."""

    def __init__(self, photos: list[torch.Tensor], crop: int, min_scale: float):
        self.images = [image for image in photos if min(image.shape[1:]) >= crop]
        self.crop, self.min_scale = crop, min_scale

    def sample(self, generator: np.random.Generator, count: int) -> torch.Tensor:
        crops = []
        for _ in range(count):
            image = self.images[generator.integers(len(self.images))]
            height, width = image.shape[1:]
            lowest = max(self.min_scale, self.crop / min(height, width))
            scale = generator.uniform(lowest, 1.0) if lowest < 1.0 else 1.0
            size = min(height, width, int(math.ceil(self.crop / scale)))
            top, left = generator.integers(height - size + 1), generator.integers(width - size + 1)
            region = image[None, :, top : top + size, left : left + size].float().div_(255.0)
            if size != self.crop:
                region = F.interpolate(region, size=(self.crop, self.crop), mode="bilinear", antialias=True,
                                       align_corners=False).clamp_(0, 1)
            if generator.random() < 0.5:
                region = region.flip(-1)
            crops.append(region)
        return torch.cat(crops)


def rate_distortion_loss(output: dict, x: torch.Tensor, level: int, msssim_window: int):
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = torch.log2(output["likelihoods"]["y"]).sum() / -pixels
    mse = F.mse_loss(output["x_hat"], x)
    quality, metric = zoo.level_configuration(level)
    lam = zoo.LAMBDAS[metric][quality - 1]
    if metric == "mse":
        return lam * 255.0**2 * mse + bpp, bpp, mse
    from pytorch_msssim import ms_ssim

    distortion = 1 - ms_ssim(output["x_hat"], x, data_range=1.0, win_size=msssim_window)
    return lam * distortion + bpp, bpp, mse


class Trainer:
    """One replica of a run: the leader's run state, or another data-parallel process's (see parallel.py)."""

    def __init__(self, config: TrainingConfig, replicas: Replicas | None = None):
        self.config = config
        self.replicas = replicas or Replicas()
        self.run_dir = Path(config.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        self._make_model()
        # the leader's generator draws levels and its crops; each other replica draws its own crops and noise
        self.generator = np.random.default_rng(config.seed if self.replicas.leader else [config.seed, self.replicas.rank])
        if not self.replicas.leader:
            torch.manual_seed(config.seed + self.replicas.rank)
        self.step = 0
        self.loss_mean = {}  # running mean of each level's loss: normalises levels and detects spikes
        self.skipped = 0
        self.lr_scale = 1.0  # halved at every recovery from a divergence
        self.warmup_start = 0  # step of the last (re)start from weights without optimizer state
        self.cooldown = None  # {"start", "steps", "lr"} in a cooldown branch, see branch_from
        self.resumed_recipe = asdict(config)  # the config of the checkpoint resumed from

    def _make_model(self) -> None:
        all_levels = range(len(zoo.METRICS) * len(zoo.QUALITIES))
        self.model = VariableRateFactorizedPrior(self.config.n, self.config.m, initial_gains(all_levels),
                                                 self.config.metric_encoders, self.config.metric_decoders,
                                                 self.config.high_rate_transforms, self.config.high_rate_levels)
        self._make_optimizers()

    def _make_optimizers(self) -> None:
        main = main_parameters(self.model)
        self.main_names, self.main_parameters = [name for name, _ in main], [p for _, p in main]
        aux = [p for name, p in self.model.named_parameters() if name.endswith("quantiles")]
        self.optimizer = torch.optim.Adam(self.main_parameters, lr=self.config.peak_lr)
        self.aux_optimizer = torch.optim.Adam(aux, lr=self.config.aux_lr)

    # -- state -----------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    @property
    def healthy_path(self) -> Path:
        """The last checkpoint saved with no skipped step shortly before it: where recoveries go back to."""
        return self.run_dir / "healthy.pt"

    def random_state(self) -> dict:
        return {"generator": self.generator.bit_generator.state, "torch_rng": torch.get_rng_state()}

    def state(self, replica_random_states: list[dict]) -> dict:
        return {
            "config": asdict(self.config), "step": self.step, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "aux_optimizer": self.aux_optimizer.state_dict(),
            **self.random_state(), "replicas": replica_random_states,
            "loss_mean": self.loss_mean, "skipped": self.skipped, "lr_scale": self.lr_scale,
            "warmup_start": self.warmup_start, "cooldown": self.cooldown,
        }

    def save(self, healthy: bool) -> None:
        """Checkpoint (a collective: every replica calls it; the leader writes, with all replicas' RNG states)."""
        self.replicas.check_in_sync(self.model)
        random_states = self.replicas.gather(self.random_state())[1:]
        if not self.replicas.leader:
            return
        paths = [self.checkpoint_path] + ([self.healthy_path] if healthy else [])
        for path in paths:
            temporary = path.with_suffix(".tmp")
            torch.save(self.state(random_states), temporary)
            os.replace(temporary, path)  # atomic: a killed run never leaves half a checkpoint
        if self.config.snapshot_dir and self.step % self.config.checkpoint_every == 0:
            self.snapshot(Path(self.config.snapshot_dir))

    def snapshot(self, directory: Path) -> None:
        """Keep the checkpoint just written as directory/step-NNNNNNN.pt (benchmarks/checkpoint_average.py's input).

        Only steps on the checkpoint grid: a stop between them writes a checkpoint the average must not count.
        """
        directory.mkdir(parents=True, exist_ok=True)
        kept = directory / f"step-{self.step:07d}.pt"
        if kept.exists():  # a run stopped on the grid saves its step twice
            return
        try:  # a checkpoint is replaced, never rewritten in place: a hard link is a copy that costs nothing
            os.link(self.checkpoint_path, kept)
        except OSError:  # another file system
            shutil.copyfile(self.checkpoint_path, kept)

    def resume(self, path: Path | None = None) -> bool:
        path = path or self.checkpoint_path
        if not path.exists():
            return False
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own run state
        recorded = {k: state["config"][k] for k in ("n", "m")}
        if recorded != {"n": self.config.n, "m": self.config.m}:
            raise ValueError(f"{path} holds a network with {recorded}, not the n={self.config.n}, "
                             f"m={self.config.m} this run was given")
        names = self.model.state_dict().keys()
        if extra := sorted({k.split(".")[0] for k in state["model"].keys() - names if shared_name(k)}):
            raise ValueError(f"{path} holds {' and '.join(extra)}, transforms of some levels' own, which this run "
                             "was not given: a run cannot merge them again")
        split = bool(names - state["model"].keys() - {"high_rate_levels"})
        self.model.load_state_dict(with_own_transforms(state["model"], names) | self.routing())
        self.optimizer.load_state_dict(split_optimizer_state(state["optimizer"], self.main_names) if split else state["optimizer"])
        self.aux_optimizer.load_state_dict(state["aux_optimizer"])
        self.step, self.loss_mean, self.skipped = state["step"], state["loss_mean"], state["skipped"]
        self._resume_random_state(state)
        self.lr_scale, self.warmup_start = state["lr_scale"], state["warmup_start"]
        self.cooldown = state.get("cooldown")  # absent from checkpoints written before cooldown branches
        # a setting added since the checkpoint was written had its default then
        self.resumed_recipe = {**defaults(TrainingConfig), **state["config"]}
        return True

    def routing(self) -> dict:
        """The model's high-rate levels: the run's setting, which a checkpoint loaded into it does not override."""
        return {"high_rate_levels": self.model.high_rate_levels} if self.model.high_rate_transforms else {}

    def recipe_changes(self) -> dict:
        """The settings this run continues with that differ from its checkpoint's: {name: [was, now]}."""
        now = asdict(self.config)

        def comparable(value):
            return list(value) if isinstance(value, (list, tuple)) else value  # levels: a tuple, or a list from JSON

        return {k: [was, now[k]] for k, was in self.resumed_recipe.items()
                if k not in PLACES and k in now and comparable(was) != comparable(now[k])}

    def _resume_random_state(self, state: dict) -> None:
        rank, replicas = self.replicas.rank, state.get("replicas", [])  # absent before data-parallel runs
        if rank == 0:
            random_state = state
        elif rank <= len(replicas):
            random_state = replicas[rank - 1]
        else:  # a run continued with more processes than it had: fresh streams for the new replica
            self.generator = np.random.default_rng([self.config.seed, rank, self.step])
            torch.manual_seed(self.config.seed + rank + self.step)
            return
        self.generator.bit_generator.state = random_state["generator"]
        torch.set_rng_state(random_state["torch_rng"])

    def recover(self) -> None:
        """Go back to the last healthy checkpoint with half the learning rate (keeping the RNG moving on)."""
        generator_state = self.generator.bit_generator.state
        scale = self.lr_scale
        if not self.resume(self.healthy_path):
            raise RuntimeError(f"training diverged before any healthy checkpoint in {self.run_dir}")
        self.generator.bit_generator.state = generator_state  # new batches, not a replay of the diverging ones
        self.lr_scale = scale / 2

    def start_from_bundle(self, version: int) -> None:
        """Initialise from bundled weights (run state lost): their weights and step, a fresh optimizer."""
        from . import weights

        self.start_from(weights._variable_rate_model(version), int(weights.version_card(version)["steps"]))

    def start_from(self, bundled, step: int) -> None:
        """Initialise from an exported variable-rate network trained for `step` steps, with a fresh optimizer."""
        kept = {k: getattr(self.config, k) or getattr(bundled, k) for k in OWN_TRANSFORM_SETTINGS}
        if bundled.high_rate_transforms and not self.config.high_rate_transforms:  # and the levels they serve
            kept["high_rate_levels"] = tuple(bundled.high_rate_levels.tolist())
        if kept != {k: getattr(self.config, k) for k in kept}:  # the bundle's transforms per metric are kept
            self.config = replace(self.config, **kept)
            self._make_model()
        # the tables are rebuilt at export from the trained densities
        state = {k: v for k, v in bundled.state_dict().items() if not k.endswith(EntropyBottleneck.TABLES)}
        # a run asking for more transforms per metric than the bundle has starts each from the bundle's shared one
        self.model.load_state_dict(with_own_transforms(state, self.model.state_dict().keys()) | self.routing(),
                                   strict=False)
        self.step = self.warmup_start = step

    def branch_from(self, run_dir: str | Path, steps: int) -> None:
        """Start a cooldown branch of another run: its exact state, then `steps` steps of decaying learning rate.

        The main run keeps its high learning rate, where long-term progress is made; a branch anneals a copy
        for export, which the high rate's noise keeps 0.3-0.9 dB below what its weights can do
        (measured in docs/training.md).
        """
        source = Path(run_dir) / "checkpoint.pt"
        if not self.resume(source):
            raise FileNotFoundError(f"no checkpoint to branch from: {source}")
        # the rate the source was at: by its own schedule, which may differ from this branch's settings
        schedule = replace(self.config, **{k: self.resumed_recipe[k] for k in SCHEDULE_SETTINGS})
        self.cooldown = {"start": self.step, "steps": steps, "lr": schedule.lr(self.step, self.warmup_start)}

    @property
    def cooldown_end(self) -> int | None:
        return self.cooldown["start"] + self.cooldown["steps"] if self.cooldown else None

    # -- one step --------------------------------------------------------------------------------
    def choose_level(self) -> int:
        levels = self.config.levels
        shares = level_shares(levels, self.config.mse_share, self.config.level_weights)
        return int(levels[self.generator.choice(len(levels), p=shares)])

    def train_step(self, sampler: CropSampler) -> dict:
        config = self.config
        world = self.replicas.world
        level = self.replicas.broadcast(self.choose_level() if self.replicas.leader else -1)
        x = sampler.sample(self.generator, config.batch // world)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr()
        self.model.train()
        # the loss (MS-SSIM's variances above all) stays in float32, outside the autocast
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.precision == "bf16"):
            output = self.model(x, level)
        loss, bpp, mse = rate_distortion_loss(output, x, level, config.msssim_window)
        sample = output["y"][: max(1, config.density_batch // world)]
        pixels = sample.shape[0] * x.shape[2] * x.shape[3]
        encoder = self.model.analysis(level)  # the latent only trains the densities of levels that share it
        density_bpp = sum(self.model.density_bits(sample, other) for other in config.levels
                          if other != level and self.model.analysis(other) is encoder) / pixels
        # statistics of the whole batch, the same in every replica: so are the skip decisions below
        value, batch_bpp, batch_mse = self.replicas.mean([float(t.detach()) for t in (loss, bpp, mse)])
        mean = self.loss_mean.get(level, value)
        psnr = -10 * math.log10(batch_mse) if batch_mse > 0 else float("inf")
        warm = self.step - self.warmup_start > config.warmup_steps
        spike = not math.isfinite(value) or (warm and (value > config.spike_factor * mean or psnr < config.min_psnr))
        self.optimizer.zero_grad(set_to_none=True)
        if spike:
            self.skipped += 1
        else:
            (loss / mean + density_bpp).backward()
            self.replicas.average_gradients(self.main_parameters)
            # main parameters only: the quantiles still hold the previous step's aux gradients, which a resumed
            # run does not have, and which would change the clipping scale (and break exact resume)
            torch.nn.utils.clip_grad_norm_(self.main_parameters, config.clip_norm)
            self.optimizer.step()
            self.loss_mean[level] = 0.99 * mean + 0.01 * value
        aux = sum(self.model.aux_loss(trained) for trained in config.levels)
        self.aux_optimizer.zero_grad(set_to_none=True)
        aux.backward()
        self.aux_optimizer.step()
        self.step += 1
        return {"step": self.step, "level": level, "loss": value, "bpp": batch_bpp, "psnr": psnr,
                "aux": float(aux.detach()), "lr": group["lr"], "skipped": int(spike)}

    def lr(self) -> float:
        if self.cooldown:
            progress = min(1.0, (self.step + 1 - self.cooldown["start"]) / self.cooldown["steps"])
            final = min(self.config.final_lr, self.cooldown["lr"])  # a branch taken during warm-up only holds
            return self.lr_scale * (final + 0.5 * (self.cooldown["lr"] - final) * (1 + math.cos(math.pi * progress)))
        return self.lr_scale * self.config.lr(self.step, self.warmup_start)

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, images: list[np.ndarray]) -> list[dict]:
        """Each level on `images`, real bitstreams (a collective: every replica measures its share of the images)."""
        return validation_rows(self.model, self.config.levels, images, self.step, self.replicas)


def validation_rows(model: VariableRateFactorizedPrior, levels, images: list[np.ndarray], step: int,
                    replicas: Replicas | None = None, refine: int = 0) -> list[dict]:
    """The rows of `kodak.csv`: each of `levels` exported and measured on `images`, real bitstreams; with
    `replicas`, a collective in which each replica measures its share of the images; with `refine`, each latent
    refined for that many iterations as `ConvolutionalAutoencoder(refine=...)` refines it."""
    mine = images[replicas.rank :: replicas.world] if replicas else images
    rows = []
    for level in levels:
        quality, metric = zoo.level_configuration(level)
        exported = model.export(level)
        refinement = Refinement(refine, quality, metric) if refine else None
        measurements = [measure(exported, image, refinement) for image in mine]
        result = mean_of(sum(replicas.gather(measurements), []) if replicas else measurements).as_dict()
        rows.append({"step": step, "quality": quality, "metric": metric, "images": len(images), **result})
    return rows


def main_parameters(model: VariableRateFactorizedPrior) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of what the main optimizer trains, in its order: all but the density quantiles, which the
    auxiliary loss moves."""
    return [(name, p) for name, p in model.named_parameters() if not name.endswith("quantiles")]


def level_shares(levels, mse_share: float, level_weights=None) -> np.ndarray:
    """How often each of `levels` is trained: the mse levels share `mse_share` of the steps, the ms-ssim levels the
    rest (as many of each), each level's share times its own of `level_weights` (one for each of `levels`; None: 1)."""
    weights = level_step_weights(levels, mse_share, level_weights)
    return weights / weights.sum()


def level_step_weights(levels, mse_share: float, level_weights=None) -> np.ndarray:
    # the metric's share times the level's own weight; with all weights 1 exactly the shares runs have always drawn
    # from, so that runs from before `level_weights` resume exactly
    own = np.ones(len(levels)) if level_weights is None else np.asarray(level_weights, dtype=float)
    return np.array([mse_share if level < 8 else 1 - mse_share for level in levels]) * own


def split_optimizer_state(state: dict, names: list[str]) -> dict:
    """A run's Adam state for the same network with more transforms split per metric (`names`: its main
    parameters in the optimizer's order). The new transforms' parameters come last (see VariableRateFactorizedPrior),
    so every other parameter keeps its index, and they start with the moments of the shared transform they copy."""
    index = {name: i for i, name in enumerate(names)}
    copies = {index[name]: index[shared_name(name)] for name in names if shared_name(name)}
    moments = {new: {k: v.clone() for k, v in state["state"][old].items()}
               for new, old in copies.items() if old in state["state"] and new not in state["state"]}
    group = {**state["param_groups"][0], "params": list(range(len(names)))}
    return {"state": {**state["state"], **moments}, "param_groups": [group]}


def kodak_images(folder: str | None, count: int) -> list[np.ndarray]:
    if not folder or not Path(folder).is_dir():
        return []
    paths = sorted(Path(folder).glob("*.png"))
    chosen = paths[:: max(1, len(paths) // count)][:count] if count < len(paths) else paths
    return [load_rgb(p) for p in chosen]


def append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def train(config: TrainingConfig, steps: int, progress: bool = True, branch_from: str | None = None,
          cooldown_steps: int | None = None, processes: int = 1) -> Trainer:
    """Train for `steps` more steps, checkpointing as it goes.

    Resumes the run in `config.run_dir`; without one, starts as a cooldown branch of the run in `branch_from`
    (`cooldown_steps` decaying steps, by default `steps`; see Trainer.branch_from), or else from the newest
    bundled weights if any. A cooldown branch stops at the end of its cooldown and is then evaluated on Kodak.
    With `processes` > 1 every step's batch is split over that many data-parallel processes (parallel.py);
    a run resumes exactly when continued with the same number of processes.
    """
    if processes < 1 or config.batch % processes:
        raise ValueError(f"batch {config.batch} does not split evenly over {processes} processes")
    arguments = (config, steps, progress, branch_from, cooldown_steps)
    if processes > 1:
        from . import parallel

        return parallel.run(_train, processes, *arguments)
    return _train(Replicas(), *arguments)


def _train(replicas: Replicas, config: TrainingConfig, steps: int, progress: bool, branch_from: str | None,
           cooldown_steps: int | None) -> Trainer:
    from collections import deque

    from tqdm import tqdm

    from . import weights

    trainer = Trainer(config, replicas)
    log = (lambda name, row: append_csv(trainer.run_dir / name, row)) if replicas.leader else (lambda name, row: None)
    resumed = trainer.resume()
    if resumed and (changes := trainer.recipe_changes()):
        log("events.csv", {"step": trainer.step, "event": f"resumed with changed settings {changes}",
                           "lr_scale": trainer.lr_scale})
    if not resumed and branch_from:
        trainer.branch_from(branch_from, cooldown_steps or steps)
        log("events.csv", {"step": trainer.step, "event": f"cooldown branch of {branch_from}", "lr_scale": trainer.lr_scale})
    elif not resumed and weights.bundled_versions():
        card = weights.version_card(weights.latest_version())
        if (card["n"], card["m"]) == (config.n, config.m):
            trainer.start_from_bundle(weights.latest_version())
    if replicas.leader:
        (trainer.run_dir / "config.json").write_text(json.dumps(asdict(config), indent=1))
    sampler = CropSampler(training_photos(config.train_dir), config.crop, config.min_scale)
    evaluation_images = kodak_images(config.kodak_dir, config.eval_images)
    target = trainer.step + steps if trainer.cooldown is None else min(trainer.step + steps, trainer.cooldown_end)
    bar = tqdm(total=steps, disable=not (progress and replicas.leader),
               desc=f"train from step {trainer.step}" + (" (resumed)" if resumed else ""))
    started = time.perf_counter()
    recent_skips = deque(maxlen=50)
    stop = _StopRequest()
    while trainer.step < target and not replicas.any(stop.requested):
        row = trainer.train_step(sampler)
        row["seconds"] = round(time.perf_counter() - started, 2)
        log("steps.csv", row)
        bar.update(1)
        bar.set_postfix(level=row["level"], bpp=f"{row['bpp']:.3f}", psnr=f"{row['psnr']:.2f}")
        recent_skips.append(row["skipped"])
        if sum(recent_skips) >= config.recovery_skips:
            trainer.recover()
            recent_skips.clear()
            log("events.csv", {"step": trainer.step, "event": "recovered", "lr_scale": trainer.lr_scale})
            continue
        if trainer.step % config.checkpoint_every == 0 or trainer.step == target:
            trainer.save(healthy=sum(recent_skips) == 0)
        if evaluation_images and (trainer.step % config.eval_every == 0 or trainer.step == trainer.cooldown_end):
            for result in trainer.evaluate(evaluation_images):
                log("kodak.csv", result)
    bar.close()
    trainer.save(healthy=sum(recent_skips) == 0)
    stop.restore()
    return trainer


class _StopRequest:
    """SIGTERM/SIGINT end the loop after the current step, so the run stops with a fresh checkpoint."""

    def __init__(self):
        import signal
        import threading

        self.requested = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._request)

    def _request(self, *_):
        self.requested = True

    def restore(self):
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def quality_span(mse_levels) -> str:
    """mse levels as the qualities they are: "q6-q8" for levels 5, 6, 7; "q2, q5" for 1, 4."""
    qualities = [int(level) + 1 for level in mse_levels]
    if qualities == list(range(qualities[0], qualities[-1] + 1)) and len(qualities) > 1:
        return f"q{qualities[0]}-q{qualities[-1]}"
    return ", ".join(f"q{quality}" for quality in qualities)


def load_checkpoint_model(run_dir: str | Path) -> tuple[VariableRateFactorizedPrior, dict]:
    """The network of a training run's checkpoint, and the checkpoint (step, cooldown, ...)."""
    state = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)
    model = variable_rate_like(state["model"], state["config"]["n"], state["config"]["m"])
    model.load_state_dict(state["model"])
    return model.eval(), state


def fit_quantiles(model: VariableRateFactorizedPrior, medians: bool = True) -> float:
    """Place every density's quantiles, the CDF tables' ranges and unless `medians` is False the quantization
    medians, where the aux loss wants them (`EntropyBottleneck.place_quantiles`). Returns the aux loss after,
    about 0.

    During training the aux loss moves them at 1e-3 per step, far behind the densities (at step 4750 the sum
    over the 16 levels was still 79 000); up to version 22 the export ran 4000 Adam steps of it, which left
    version 21 at 378 and version 22 at 448 879.
    """
    for bottleneck in model.entropy_bottlenecks:
        bottleneck.place_quantiles(medians)
    return float(sum(bottleneck.loss() for bottleneck in model.entropy_bottlenecks).detach())


@torch.no_grad()
def photo_latents(model: VariableRateFactorizedPrior, images: list[torch.Tensor]) -> dict[torch.nn.Module, torch.Tensor]:
    """The latent of whole `images` (uint8, 3×H×W, cut to multiples of 16) under each of the model's analysis
    transforms (one, or one per metric), as {transform: (channels, positions)}."""
    def latent(analysis: torch.nn.Module) -> torch.Tensor:
        rows = []
        for image in images:
            height, width = (side // 16 * 16 for side in image.shape[1:])
            rows.append(analysis(image[None, :, :height, :width].float() / 255).flatten(2)[0])
        return torch.cat(rows, 1)

    return {analysis: latent(analysis) for analysis in {model.analysis(level) for level in range(model.levels)}}


def symbol_counts(values: torch.Tensor, medians: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How often each channel of `values` (channels, positions) rounds to each symbol about `medians`: the
    symbols (those that occur in some channel) and the counts, (channels, symbols)."""
    symbols = torch.round(values - medians[:, None]).long()
    low, span = int(symbols.min()), int(symbols.max() - symbols.min()) + 1
    channels = torch.arange(len(symbols))[:, None] * span
    counts = torch.bincount((symbols - low + channels).flatten(), minlength=len(symbols) * span).reshape(-1, span)
    occurring = counts.sum(0) > 0
    return torch.arange(counts.shape[1])[occurring] + low, counts[:, occurring].float()


def fit_densities(model: VariableRateFactorizedPrior, images: list[torch.Tensor], iterations: int = 2000,
                  lr: float = 1e-3) -> list[dict]:
    """Fit every level's density to the code length of the rounded latents of whole training photos.

    Training fits each density to latents with uniform noise in place of rounding, of 128- or 256-pixel crops
    whose small latent is mostly border; coding rounds the latent of a whole image, mostly interior. For fixed
    transforms and gains the real code length is a sum over each channel's symbol histogram, so the fit costs
    one analysis pass over the photos and a few thousand small steps; it changes the rate only (docs/training.md,
    "Densities refitted at export"). The quantiles are left to `fit_quantiles`. Returns, per level, the mean
    bits per latent element on the photos before and after.
    """
    latents = photo_latents(model, images)
    problems = []
    for level, bottleneck in enumerate(model.entropy_bottlenecks):
        values = latents[model.analysis(level)] * torch.exp(model.log_gain[level].detach())[:, None]
        symbols, counts = symbol_counts(values, bottleneck.medians)
        points = (bottleneck.medians[:, None] + symbols[None, :].float())[:, None, :]
        problems.append((bottleneck, points, counts / counts.sum()))

    def bits(bottleneck, points, shares) -> torch.Tensor:
        likelihood = bottleneck.likelihood_lower_bound(bottleneck._likelihood(points)[0][:, 0, :])
        return -(shares * torch.log2(likelihood)).sum()

    before = [float(bits(*problem).detach()) for problem in problems]
    densities = [p for name, p in model.entropy_bottlenecks.named_parameters() if not name.endswith("quantiles")]
    optimizer = torch.optim.Adam(densities, lr=lr)
    for _ in range(iterations):
        loss = sum(bits(*problem) for problem in problems)  # the levels are independent: Adam steps each alike
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    after = [float(bits(*problem).detach()) for problem in problems]
    return [{"level": level, "bits_before": round(b, 5), "bits_after": round(a, 5)}
            for level, (b, a) in enumerate(zip(before, after))]


@dataclass(frozen=True)
class SynthesisFitRecipe:
    """How `fit_synthesis` trains: the recipe measured in docs/training.md, recorded on the model card."""

    steps: int = 2000  # per synthesis transform
    lr: float = 1e-4  # Adam's peak; a cosine takes it to a tenth
    crop: int = 128
    batch: int = 8


def fit_synthesis(model: VariableRateFactorizedPrior, sampler: CropSampler, recipe: SynthesisFitRecipe,
                  precision: str = "fp32", msssim_window: int = 7, seed: int = 0,
                  levels_of: list[int] | None = None) -> list[str]:
    """Fine-tune each synthesis transform, with its levels' inverse gains, to the rounded latents it decodes.

    Training feeds the synthesis latents with uniform noise in place of rounding, so it never sees the integer
    grid that coding hands it; the low levels, whose latents mostly round to the median, lose the most to that.
    The analysis transforms, gains and densities stay frozen, so every latent and every rate stays as it was and
    only the reconstruction moves (docs/training.md, "Synthesis refitted to rounded latents"). Each synthesis
    trains `recipe.steps` steps on its own levels, drawn alike, batches of `sampler`'s crops, each level's loss
    divided by its running mean as in training; `levels_of`: only the transforms of these levels. Returns the
    transforms fitted.
    """
    generator = np.random.default_rng(seed)
    names = {id(module): name for name, module in model.named_children()}
    fitted = []
    model.requires_grad_(False)
    for synthesis in {model.synthesis(level): None for level in levels_of or range(model.levels)}:
        levels = [level for level in range(model.levels) if model.synthesis(level) is synthesis]
        parameters = [*synthesis.parameters(), model.log_inverse_gain]
        for parameter in parameters:
            parameter.requires_grad_(True)
        optimizer = torch.optim.Adam(parameters, lr=recipe.lr)
        loss_mean = {}
        for step in range(recipe.steps):
            level = levels[generator.integers(len(levels))]
            x = sampler.sample(generator, recipe.batch)
            optimizer.param_groups[0]["lr"] = recipe.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * step / recipe.steps)))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                output = model(x, level, noise=False)
            loss, _, _ = rate_distortion_loss(output, x, level, msssim_window)  # the rate is a constant here
            mean = loss_mean.get(level, float(loss.detach()))
            optimizer.zero_grad(set_to_none=True)
            (loss / mean).backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            loss_mean[level] = 0.99 * mean + 0.01 * float(loss.detach())
        for parameter in parameters:
            parameter.requires_grad_(False)
        fitted.append(names[id(synthesis)])
    model.requires_grad_(True)
    return fitted


def export_bundle(run_dir: str | Path, version: int, provisional: bool, kodak_dir: str | None = None,
                  bundle_dir: Path | None = None, train_dir: str | Path | None = None,
                  density_iterations: int = 2000, synthesis_steps: int = SynthesisFitRecipe.steps) -> dict:
    """Write a training run's weights as bundled version `version`, with its model card in the manifest.

    The densities are first refitted to the whole photos of `train_dir` (by default the run's own), see
    `fit_densities`, then the synthesis transforms to the rounded latents of crops of them, see `fit_synthesis`;
    `density_iterations` or `synthesis_steps` 0 exports those as trained."""
    from . import weights

    bundle_dir = Path(bundle_dir or weights.BUNDLE_DIR)
    model, state = load_checkpoint_model(run_dir)
    step, config = state["step"], state["config"]  # the checkpoint's own recipe, not a config.json beside it
    density_fit = synthesis_fit = None
    photos = training_photos(train_dir or config["train_dir"]) if density_iterations or synthesis_steps else None
    if density_iterations:
        density_fit = {"photos": len(photos), "iterations": density_iterations,
                       "levels": fit_densities(model, photos, density_iterations)}
    aux_loss = fit_quantiles(model)  # the medians that rounding, and so the synthesis fit, uses
    if synthesis_steps:
        recipe = SynthesisFitRecipe(steps=synthesis_steps)
        sampler = CropSampler(photos, recipe.crop, config["min_scale"])
        synthesis_fit = asdict(recipe) | {"transforms": fit_synthesis(model, sampler, recipe, config.get("precision", "fp32"),
                                                                     config["msssim_window"])}
    card = {
        "n": model.n, "m": model.m, "provisional": provisional, "steps": step,
        "architecture": "variable-rate factorized prior ("
        + (f"an analysis and a synthesis transform per metric and for mse {quality_span(model.high_rate_levels)}"
           if model.high_rate_transforms else
           "an analysis and a synthesis transform per metric" if model.metric_decoders else
           "an analysis transform per metric, a shared synthesis" if model.metric_encoders else "shared transforms")
        + ", per-level channel gains and densities), transforms stored in fp16",
        "training_data": "shared/data/train (775 photos: BSDS500, ImageNet samples, Sun-Hays80)",
        "recipe": {k: config[k] for k in ("crop", "batch", "min_scale", "peak_lr", "final_lr", "warmup_steps",
                                          "total_steps", "mse_share", "msssim_window")}
        | {"precision": config.get("precision", TrainingConfig.precision), "cooldown": state.get("cooldown"),
           "averaged_steps": state.get("averaged_steps")}  # benchmarks/checkpoint_average.py
        | ({"graft": state["graft"]} if "graft" in state else {}),  # benchmarks/high_rate_graft.py
        "lambdas": zoo.LAMBDAS,
        "aux_loss_after_quantile_fit": round(aux_loss, 1),
        "density_fit": density_fit,
        "synthesis_fit": synthesis_fit,
    }
    return _bundle_version(model, version, card, bundle_dir, kodak_dir)


def retable_bundle(source: int, version: int, provisional: bool, kodak_dir: str | None = None,
                   bundle_dir: Path | None = None) -> dict:
    """Write bundled version `source`'s network again as version `version`, its densities' tails placed exactly
    and its medians kept (`fit_quantiles`): the same latents and pixels, CDF tables no longer than the densities
    need. Its card is `source`'s, with the new quantile fit and, given `kodak_dir`, the new Kodak measurement."""
    import copy

    from . import weights

    model = copy.deepcopy(weights._variable_rate_model(source))  # the loaded one is cached for decoding
    card = {key: value for key, value in weights.version_card(source).items() if key not in ("file", "sha256", "kodak")}
    card |= {"provisional": provisional, "aux_loss_after_quantile_fit": round(fit_quantiles(model, medians=False), 1),
             "retabled_from": source}
    return _bundle_version(model, version, card, Path(bundle_dir or weights.BUNDLE_DIR), kodak_dir)


def _bundle_version(model: VariableRateFactorizedPrior, version: int, card: dict, bundle_dir: Path,
                    kodak_dir: str | None) -> dict:
    """Write `model` as bundled version `version` into `bundle_dir`, and its card, measured on `kodak_dir`'s 24
    images when given, into the manifest there."""
    from . import weights

    bundle_dir.mkdir(parents=True, exist_ok=True)
    path = bundle_dir / f"v{version}.safetensors"
    weights.write_bundle(model, path, {"version": str(version), "steps": str(card["steps"])})
    card = {"file": path.name, "sha256": weights.sha256_file(path)} | card
    if kodak_dir:
        bundled = weights.variable_rate_from_tensors(_load_tensors(path), model.n, model.m)
        images = kodak_images(kodak_dir, 24)
        card["kodak"] = {f"{m}-{q}": mean_measurement(bundled.export(zoo.level_index(q, m)), images).as_dict()
                         for m in zoo.METRICS for q in zoo.QUALITIES}
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"versions": {}}
    manifest["versions"][str(version)] = card
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return card


def _load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def plot_curves(run_dir: str | Path, output: str | Path) -> None:
    """Training loss terms (smoothed, mse levels) and Kodak RD per evaluation, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    with (run_dir / "steps.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if int(r["level"]) < len(zoo.QUALITIES)]
    steps = np.array([int(r["step"]) for r in rows])
    window = max(1, len(rows) // 100)

    def smooth(key):
        values = np.array([float(r[key]) for r in rows])
        return np.convolve(values, np.ones(window) / window, mode="valid")

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps[window - 1 :], smooth("bpp"))
    axes[0].set(title="training bpp (mse levels, noisy latent)", xlabel="step", ylabel="bpp")
    axes[1].plot(steps[window - 1 :], smooth("psnr"))
    axes[1].set(title="training PSNR (mse levels)", xlabel="step", ylabel="dB")
    kodak = run_dir / "kodak.csv"
    if kodak.exists():
        with kodak.open() as handle:
            evaluations = [r for r in csv.DictReader(handle) if r["metric"] == "mse"]
        for step in sorted({int(r["step"]) for r in evaluations}):
            points = sorted((float(r["bpp"]), float(r["psnr"])) for r in evaluations if int(r["step"]) == step)
            axes[2].plot(*zip(*points), marker="o", label=f"step {step}")
        axes[2].legend(fontsize=7)
    axes[2].set(title="Kodak, real bitstreams (mse levels)", xlabel="bpp", ylabel="PSNR dB")
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)
