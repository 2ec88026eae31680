"""The factorized density of the latent: CompressAI's EntropyBottleneck (Ballé et al. 2018, appendix 6.1).

Each latent channel has its own non-parametric cumulative density, a small monotonic network. For
coding, the density is tabulated once into integer CDFs (`cdf_tables`); decoders only ever use those
integers, so entropy decoding cannot desynchronise between machines.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .coding import PRECISION, CdfTables, quantized_cdf
from .layers import LowerBound


class EntropyBottleneck(nn.Module):
    TABLES = ("_quantized_cdf", "_offset", "_cdf_length")  # integer coding tables, sized by `update()` or a checkpoint
    _offset: torch.Tensor
    _quantized_cdf: torch.Tensor
    _cdf_length: torch.Tensor
    target: torch.Tensor

    def __init__(self, channels: int, tail_mass: float = 1e-9, init_scale: float = 10.0, filters=(3, 3, 3, 3)):
        super().__init__()
        self.channels = int(channels)
        self.tail_mass = float(tail_mass)
        widths = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = float(np.log(np.expm1(1 / scale / widths[i + 1])))
            self.matrices.append(nn.Parameter(torch.full((channels, widths[i + 1], widths[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, widths[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))
        quantiles = torch.tensor([-init_scale, 0.0, init_scale]).repeat(channels, 1, 1)
        self.quantiles = nn.Parameter(quantiles)
        target = float(np.log(2 / self.tail_mass - 1))
        self.register_buffer("target", torch.tensor([-target, 0.0, target]))
        self.likelihood_lower_bound = LowerBound(1e-9)
        # Integer coding tables; empty until `update()` or a checkpoint fills them.
        self.register_buffer("_offset", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("_quantized_cdf", torch.zeros(0, 0, dtype=torch.int32))
        self.register_buffer("_cdf_length", torch.zeros(0, dtype=torch.int32))

    @property
    def medians(self) -> torch.Tensor:
        """Per-channel median of the density, shape (channels,): the quantization offset."""
        return self.quantiles[:, 0, 1].detach()

    def _logits_cumulative(self, inputs: torch.Tensor, stop_gradient: bool) -> torch.Tensor:
        logits = inputs
        for i, matrix in enumerate(self.matrices):
            bias = self.biases[i]
            if stop_gradient:
                matrix, bias = matrix.detach(), bias.detach()
            logits = torch.matmul(F.softplus(matrix), logits) + bias
            if i < len(self.factors):
                factor = self.factors[i].detach() if stop_gradient else self.factors[i]
                logits = logits + torch.tanh(factor) * torch.tanh(logits)
        return logits

    def _likelihood(self, values: torch.Tensor, stop_gradient: bool = False):
        lower = self._logits_cumulative(values - 0.5, stop_gradient)
        upper = self._logits_cumulative(values + 0.5, stop_gradient)
        # Evaluate on the side of the median where the sigmoids are far from 1, for precision in the tails.
        # A bin centred exactly on a symmetric density's median has lower + upper == 0, where CompressAI's
        # -sign(lower + upper) is 0 and makes the bin's likelihood 0 (its table then gives the bin the least mass
        # there is): either side is exact there.
        sign = torch.where(lower + upper > 0, -1.0, 1.0).detach()
        likelihood = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        return likelihood, lower, upper

    def loss(self) -> torch.Tensor:
        """Auxiliary loss that moves `quantiles` to the tail-mass and median points of the density."""
        logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
        return torch.abs(logits - self.target).sum()

    @torch.no_grad()
    def place_quantiles(self, medians: bool = True) -> None:
        """Set the quantiles exactly where `loss` wants them: the tails where the cumulative's logits reach
        -target and +target, and unless `medians` is False the medians where they reach 0.

        The cumulative is strictly increasing by construction (softplus matrices, |tanh(factor)| < 1), so
        bisection finds each point to float precision. Gradient descent on `loss` only approaches them: Adam at
        export left version 22's q4-q8 tails up to ten times too wide, tables that cost 0.5-2.1 % of the rate
        (docs/training.md, "Version 23").
        """
        which = [0, 1, 2] if medians else [0, 2]
        self.quantiles[:, 0, which] = self._cumulative_points(self.target[which])

    def _cumulative_points(self, logits: torch.Tensor, iterations: int = 64) -> torch.Tensor:
        """Per channel, where the cumulative's logits equal each of `logits` (k,): (channels, k)."""
        def below(points: torch.Tensor) -> torch.Tensor:
            return self._logits_cumulative(points[:, None, :], stop_gradient=True)[:, 0, :] < logits

        centre = self.quantiles[:, 0, 1:2].expand(-1, len(logits)).clone()
        width = torch.ones_like(centre)
        for _ in range(iterations):  # widen a bracket about the current median until it holds every point
            low, high = centre - width, centre + width
            open_ = ~below(low) | below(high)
            if not open_.any():
                break
            width = torch.where(open_, 2 * width, width)
        else:
            channel = int(open_.any(1).nonzero()[0])
            raise ValueError(f"density channel {channel}: its cumulative does not reach logits {logits.tolist()} "
                             f"within {float(width.max()):.3g} of its median")
        for _ in range(iterations):  # then halve it
            middle = (low + high) / 2
            rising = below(middle)
            low, high = torch.where(rising, middle, low), torch.where(rising, high, middle)
        return (low + high) / 2

    def forward(self, y: torch.Tensor, training: bool | None = None):
        """Quantize `y` (B, C, H, W), or add uniform noise when training; return it and its likelihoods."""
        training = self.training if training is None else training
        values = y.transpose(0, 1).reshape(self.channels, 1, -1)
        medians = self.quantiles[:, :, 1:2]
        if training:
            outputs = values + torch.empty_like(values).uniform_(-0.5, 0.5)
        else:
            outputs = torch.round(values - medians) + medians
        likelihood, _, _ = self._likelihood(outputs)
        likelihood = self.likelihood_lower_bound(likelihood)

        def back(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(self.channels, y.shape[0], *y.shape[2:]).transpose(0, 1)

        return back(outputs), back(likelihood)

    @torch.no_grad()
    def update(self) -> CdfTables:
        """Tabulate the density into integer CDFs (CompressAI's `update(force=True)`) and keep them as buffers."""
        medians = self.quantiles[:, 0, 1]
        minima = torch.clamp(torch.ceil(medians - self.quantiles[:, 0, 0]).int(), min=0)
        maxima = torch.clamp(torch.ceil(self.quantiles[:, 0, 2] - medians).int(), min=0)
        pmf_start = medians - minima
        pmf_length = maxima + minima + 1
        samples = torch.arange(int(pmf_length.max()), dtype=medians.dtype)[None, None, :] + pmf_start[:, None, None]
        pmf, lower, upper = self._likelihood(samples, stop_gradient=True)
        pmf = pmf[:, 0, :].double().numpy()
        tail_mass = (torch.sigmoid(lower[:, 0, 0]) + torch.sigmoid(-upper[:, 0, -1])).double().numpy()
        lengths = pmf_length.numpy()
        cdf = np.zeros((self.channels, int(lengths.max()) + 2), dtype=np.int32)
        for c in range(self.channels):
            probabilities = np.append(pmf[c, : lengths[c]], tail_mass[c])
            cdf[c, : lengths[c] + 2] = quantized_cdf(probabilities, PRECISION)
        self._offset = (-minima).to(torch.int32)
        self._quantized_cdf = torch.from_numpy(cdf)
        self._cdf_length = (pmf_length + 2).to(torch.int32)
        return self.cdf_tables()

    def cdf_tables(self) -> CdfTables:
        if self._quantized_cdf.numel() == 0:
            raise RuntimeError("the entropy bottleneck has no CDF tables: call update() or load a checkpoint with them")
        return CdfTables(
            quantized_cdf=self._quantized_cdf.numpy().astype(np.int32),
            cdf_length=self._cdf_length.numpy().astype(np.int32),
            offset=self._offset.numpy().astype(np.int32),
            medians=self.medians.numpy().astype(np.float32),
        )
