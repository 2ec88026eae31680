"""The factorized-prior autoencoder (Ballé et al. 2018; CompressAI's `bmshj2018-factorized`).

`FactorizedPrior` is CompressAI's model, module for module, so its checkpoints load unchanged.
`VariableRateFactorizedPrior` is what caecodec trains: one pair of transforms (or one per metric) shared
by many rate-distortion trade-offs ("levels"), each with its own channel gains (Cui et al. 2021) and its own
density. A level is exported as a plain `FactorizedPrior` by folding its gains into the last analysis
and first synthesis convolution, so coding has a single code path.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .entropy_models import EntropyBottleneck
from .layers import GDN, conv, deconv

DOWNSAMPLING = 16  # four stride-2 convolutions


def analysis_transform(n: int, m: int) -> nn.Sequential:
    return nn.Sequential(conv(3, n), GDN(n), conv(n, n), GDN(n), conv(n, n), GDN(n), conv(n, m))


def synthesis_transform(n: int, m: int) -> nn.Sequential:
    return nn.Sequential(
        deconv(m, n), GDN(n, inverse=True), deconv(n, n), GDN(n, inverse=True), deconv(n, n), GDN(n, inverse=True),
        deconv(n, 3),
    )


class FactorizedPrior(nn.Module):
    def __init__(self, n: int = 128, m: int = 192):
        super().__init__()
        self.n, self.m = n, m
        self.entropy_bottleneck = EntropyBottleneck(m)
        self.g_a = analysis_transform(n, m)
        self.g_s = synthesis_transform(n, m)

    def forward(self, x: torch.Tensor) -> dict:
        y = self.g_a(x)
        y_hat, likelihoods = self.entropy_bottleneck(y)
        return {"x_hat": self.g_s(y_hat), "likelihoods": {"y": likelihoods}}


# Transforms of some levels' own, in the order they are registered, each with the shared transform it splits from:
# the ms-ssim levels' (levels 8-15), then the high mse levels' (HIGH_RATE_LEVELS).
OWN_TRANSFORMS = {"g_a_ms_ssim.": "g_a.", "g_s_ms_ssim.": "g_s.", "g_a_mse_high.": "g_a.", "g_s_mse_high.": "g_s."}
# The mse levels the high-rate transforms serve unless a run chooses others: q6-q8, the levels the shared mse transforms
# serve worst (docs/training.md). Weights written before the choice existed served these.
HIGH_RATE_LEVELS = (5, 6, 7)


def holds_metric_encoders(state: dict) -> bool:
    """Whether a VariableRateFactorizedPrior's state dict (or bundle) has an analysis transform per metric."""
    return "g_a_ms_ssim.0.weight" in state


def holds_metric_decoders(state: dict) -> bool:
    """Whether a VariableRateFactorizedPrior's state dict (or bundle) has a synthesis transform per metric."""
    return "g_s_ms_ssim.0.weight" in state


def holds_high_rate_transforms(state: dict) -> bool:
    """Whether a VariableRateFactorizedPrior's state dict (or bundle) has transforms of the high mse levels' own."""
    return "g_a_mse_high.0.weight" in state


def shared_name(name: str) -> str | None:
    """The shared transform's parameter that an own transform's parameter `name` splits from (else None)."""
    own = next((prefix for prefix in OWN_TRANSFORMS if name.startswith(prefix)), None)
    return OWN_TRANSFORMS[own] + name[len(own):] if own else None


def with_own_transforms(state: dict, names) -> dict:
    """`state` given each own transform parameter of `names` (a network's state dict keys) that it lacks, as a
    copy of the shared transform's: how a network splits a transform."""
    return state | {name: state[shared_name(name)].clone() for name in names if name not in state and shared_name(name)}


def check_high_rate_levels(levels, mse_levels: range) -> None:
    """Refuse high-rate levels that are not distinct levels of `mse_levels`, naming them."""
    if not levels or len(set(levels)) != len(levels) or not all(level in mse_levels for level in levels):
        raise ValueError(f"high_rate_levels must be distinct mse level indexes {mse_levels.start}-"
                         f"{mse_levels.stop - 1}, not {tuple(levels)}")


def high_rate_levels_of(state: dict) -> tuple[int, ...]:
    """The mse levels a state dict's (or bundle's) high-rate transforms serve."""
    return tuple(state["high_rate_levels"].tolist()) if "high_rate_levels" in state else HIGH_RATE_LEVELS


def variable_rate_like(state: dict, n: int, m: int) -> VariableRateFactorizedPrior:
    """A network of the shape of `state` (its levels and own transforms), to load it into."""
    return VariableRateFactorizedPrior(n, m, [1.0] * state["log_gain"].shape[0], holds_metric_encoders(state),
                                       holds_metric_decoders(state), holds_high_rate_transforms(state),
                                       high_rate_levels_of(state))


class VariableRateFactorizedPrior(nn.Module):
    """With `metric_encoders`, the ms-ssim levels (the second half) have an analysis transform of their own,
    `g_a_ms_ssim`; with `metric_decoders` also a synthesis transform, `g_s_ms_ssim`; with `high_rate_transforms`
    the mse levels of `high_rate_levels` have an analysis and a synthesis transform of their own, `g_a_mse_high` and
    `g_s_mse_high`, and the levels are a buffer of the state (so a bundle routes them). They are registered last, in OWN_TRANSFORMS' order, so that a network split from one with
    fewer transforms keeps the order, and the optimizer state, of every parameter it had; for that order each
    needs the ones before it."""

    def __init__(self, n: int = 128, m: int = 192, initial_gains: list[float] = (1.0,), metric_encoders: bool = False,
                 metric_decoders: bool = False, high_rate_transforms: bool = False,
                 high_rate_levels: tuple[int, ...] = HIGH_RATE_LEVELS):
        super().__init__()
        self.n, self.m = n, m
        self.g_a = analysis_transform(n, m)
        self.g_s = synthesis_transform(n, m)
        log_gains = torch.log(torch.tensor(list(initial_gains), dtype=torch.float32))[:, None].repeat(1, m)
        self.log_gain = nn.Parameter(log_gains.clone())
        self.log_inverse_gain = nn.Parameter(-log_gains.clone())
        self.entropy_bottlenecks = nn.ModuleList(EntropyBottleneck(m) for _ in initial_gains)
        if metric_decoders and not metric_encoders:
            raise ValueError("a synthesis transform per metric needs an analysis transform per metric")
        if high_rate_transforms and not metric_decoders:
            raise ValueError("transforms of the high mse levels' own need a synthesis transform per metric")
        if metric_encoders and len(initial_gains) % 2:
            raise ValueError(f"transforms per metric need an mse and an ms-ssim half of the levels, not {len(initial_gains)}")
        if metric_encoders:
            self.g_a_ms_ssim = analysis_transform(n, m)
        if metric_decoders:
            self.g_s_ms_ssim = synthesis_transform(n, m)
        if high_rate_transforms:
            check_high_rate_levels(high_rate_levels, range(len(initial_gains) // 2))
            self.g_a_mse_high = analysis_transform(n, m)
            self.g_s_mse_high = synthesis_transform(n, m)
            self.register_buffer("high_rate_levels", torch.tensor(sorted(high_rate_levels)))

    @property
    def levels(self) -> int:
        return len(self.entropy_bottlenecks)

    @property
    def metric_encoders(self) -> bool:
        return hasattr(self, "g_a_ms_ssim")

    @property
    def metric_decoders(self) -> bool:
        return hasattr(self, "g_s_ms_ssim")

    @property
    def high_rate_transforms(self) -> bool:
        return hasattr(self, "g_a_mse_high")

    def is_ms_ssim(self, level: int) -> bool:
        return level >= self.levels // 2

    def is_high_rate(self, level: int) -> bool:
        return self.high_rate_transforms and level in self.high_rate_levels.tolist()

    def _load_from_state_dict(self, state_dict, prefix, *args):
        # a state written before the levels were a buffer served HIGH_RATE_LEVELS
        if self.high_rate_transforms and f"{prefix}g_a_mse_high.0.weight" in state_dict:
            state_dict.setdefault(f"{prefix}high_rate_levels", torch.tensor(HIGH_RATE_LEVELS))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def analysis(self, level: int) -> nn.Module:
        """The analysis transform of `level`: the ms-ssim levels' own, with metric encoders; the high mse levels'
        own, with high-rate transforms."""
        if self.is_high_rate(level):
            return self.g_a_mse_high
        return self.g_a_ms_ssim if self.metric_encoders and self.is_ms_ssim(level) else self.g_a

    def synthesis(self, level: int) -> nn.Module:
        """The synthesis transform of `level`, chosen as its analysis transform is."""
        if self.is_high_rate(level):
            return self.g_s_mse_high
        return self.g_s_ms_ssim if self.metric_decoders and self.is_ms_ssim(level) else self.g_s

    def forward(self, x: torch.Tensor, level: int, noise: bool | None = None) -> dict:
        """Reconstruction and likelihoods at `level`; "y" is the analysis output before the gain.

        The latent gets uniform noise (`noise`, by default in training mode) or is rounded about the medians."""
        y = self.analysis(level)(x).float()  # float32 again when the transforms run under bfloat16 autocast (training)
        gained = y * torch.exp(self.log_gain[level])[None, :, None, None]
        with torch.autocast(x.device.type, enabled=False):  # the density in float32 always: its likelihoods are the rate
            y_hat, likelihoods = self.entropy_bottlenecks[level](gained, training=noise)
        x_hat = self.synthesis(level)(y_hat * torch.exp(self.log_inverse_gain[level])[None, :, None, None]).float()
        return {"x_hat": x_hat, "likelihoods": {"y": likelihoods}, "y": y}

    def density_bits(self, y: torch.Tensor, level: int) -> torch.Tensor:
        """Bits of the analysis output `y` under `level`'s density, training only that density.

        Lets every level's density learn from each step's latent, not just the sampled level's.
        """
        gained = y.detach() * torch.exp(self.log_gain[level].detach())[None, :, None, None]
        _, likelihoods = self.entropy_bottlenecks[level](gained)
        return -torch.log2(likelihoods).sum()

    def aux_loss(self, level: int) -> torch.Tensor:
        return self.entropy_bottlenecks[level].loss()

    @torch.no_grad()
    def export(self, level: int) -> FactorizedPrior:
        """The plain FactorizedPrior computing exactly this level, with its CDF tables."""
        model = FactorizedPrior(self.n, self.m)
        model.g_a = copy.deepcopy(self.analysis(level))
        model.g_s = copy.deepcopy(self.synthesis(level))
        gain = torch.exp(self.log_gain[level])
        inverse_gain = torch.exp(self.log_inverse_gain[level])
        last = model.g_a[-1]
        last.weight.mul_(gain[:, None, None, None])
        last.bias.mul_(gain)
        model.g_s[0].weight.mul_(inverse_gain[:, None, None, None])  # ConvTranspose2d weight: (in, out, k, k)
        model.entropy_bottleneck = copy.deepcopy(self.entropy_bottlenecks[level])
        if model.entropy_bottleneck._quantized_cdf.numel() == 0:  # bundled weights carry their tables
            model.entropy_bottleneck.update()
        return model.eval()
