"""The factorized-prior autoencoder (Ballé et al. 2018; CompressAI's `bmshj2018-factorized`).

`FactorizedPrior` is CompressAI's model, module for module, so its checkpoints load unchanged.
`VariableRateFactorizedPrior` is what caecodec trains: one pair of transforms shared by many
rate-distortion trade-offs ("levels"), each with its own channel gains (Cui et al. 2021) and its own
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


def holds_metric_encoders(state: dict) -> bool:
    """Whether a VariableRateFactorizedPrior's state dict (or bundle) has an analysis transform per metric."""
    return "g_a_ms_ssim.0.weight" in state


def with_metric_encoders(state: dict) -> dict:
    """A one-encoder VariableRateFactorizedPrior state dict as one with an analysis transform per metric:
    the ms-ssim levels' encoder starts as a copy of the shared one."""
    return state | {f"g_a_ms_ssim.{k[len('g_a.'):]}": v.clone() for k, v in state.items() if k.startswith("g_a.")}


class VariableRateFactorizedPrior(nn.Module):
    """With `metric_encoders`, the ms-ssim levels (the second half) have an analysis transform of their own,
    `g_a_ms_ssim`; the synthesis stays shared. Registered last, so that a network split from a shared-encoder
    one keeps the order, and the optimizer state, of every parameter it had."""

    def __init__(self, n: int = 128, m: int = 192, initial_gains: list[float] = (1.0,), metric_encoders: bool = False):
        super().__init__()
        self.n, self.m = n, m
        self.g_a = analysis_transform(n, m)
        self.g_s = synthesis_transform(n, m)
        log_gains = torch.log(torch.tensor(list(initial_gains), dtype=torch.float32))[:, None].repeat(1, m)
        self.log_gain = nn.Parameter(log_gains.clone())
        self.log_inverse_gain = nn.Parameter(-log_gains.clone())
        self.entropy_bottlenecks = nn.ModuleList(EntropyBottleneck(m) for _ in initial_gains)
        if metric_encoders:
            if len(initial_gains) % 2:
                raise ValueError(f"metric encoders need an mse and an ms-ssim half of the levels, not {len(initial_gains)}")
            self.g_a_ms_ssim = analysis_transform(n, m)

    @property
    def levels(self) -> int:
        return len(self.entropy_bottlenecks)

    @property
    def metric_encoders(self) -> bool:
        return hasattr(self, "g_a_ms_ssim")

    def analysis(self, level: int) -> nn.Module:
        """The analysis transform of `level`: the ms-ssim levels' own, with metric encoders."""
        return self.g_a_ms_ssim if self.metric_encoders and level >= self.levels // 2 else self.g_a

    @torch.no_grad()
    def split_encoders(self) -> None:
        """Give the ms-ssim levels their own analysis transform, starting as a copy of the shared one."""
        if not self.metric_encoders:
            self.g_a_ms_ssim = copy.deepcopy(self.g_a)

    def forward(self, x: torch.Tensor, level: int, noise: bool | None = None) -> dict:
        """Reconstruction and likelihoods at `level`; "y" is the analysis output before the gain.

        The latent gets uniform noise (`noise`, by default in training mode) or is rounded about the medians."""
        y = self.analysis(level)(x).float()  # float32 again when the transforms run under bfloat16 autocast (training)
        gained = y * torch.exp(self.log_gain[level])[None, :, None, None]
        with torch.autocast(x.device.type, enabled=False):  # the density in float32 always: its likelihoods are the rate
            y_hat, likelihoods = self.entropy_bottlenecks[level](gained, training=noise)
        x_hat = self.g_s(y_hat * torch.exp(self.log_inverse_gain[level])[None, :, None, None]).float()
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
        model.g_s = copy.deepcopy(self.g_s)
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
