"""Encoder-side refinement: one chunk's latent optimised for its level's own rate-distortion loss.

The analysis transform is amortised: one network maps every image to a latent, and for any one image a
better latent exists (docs/training.md, "The analysis transform is where the ceiling sits"). Refinement
starts from g_a(x) and runs Adam on the latent itself, the weights frozen, for the level's training loss
λ·D + R: the distortion of the synthesis of the rounded latent (straight-through gradient) over the
chunk's real pixels, the rate of the latent under uniform noise as in training. The bitstream and the
decoder do not change; the encoder pays one synthesis forward and backward pass per iteration.

The latent kept is the best one met, by the level's loss of the rounded latent with its ideal code length,
so refinement never leaves a chunk worse by that measure than the analysis transform did. The noise comes
from a generator seeded per chunk, so a chunk refines to the same bytes every time with the same torch thread
count on a machine; across thread counts or machines the gradients' float sums may round a latent value the
other way (a valid chunk either way, decoded bit for bit anywhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import zoo

# Adam's first step in quantization bins per quality 1-8, decayed to 0 on a cosine. The step that pays in ten
# iterations grows with the level, steeply at the top, where the analysis transform's latent lies farthest
# from the synthesis's best (measured on version 14, docs/refinement.md, "The step"; the levels between the
# measured ones interpolated).
FIRST_STEPS = {"mse": (0.01, 0.015, 0.015, 0.02, 0.02, 0.04, 0.06, 0.09),
               "ms-ssim": (0.01, 0.01, 0.01, 0.01, 0.015, 0.02, 0.03, 0.05)}
MSSSIM_WINDOWS = (11, 9, 7, 5, 3)  # the largest whose five scales fit the chunk is used


@dataclass(frozen=True)
class Refinement:
    """`iterations` Adam steps on the latent of a chunk coded at `quality`/`metric`, the first `first_step`
    quantization bins long (by default the level's own, FIRST_STEPS)."""

    iterations: int
    quality: int
    metric: str
    first_step: float | None = None

    @property
    def lam(self) -> float:
        return zoo.LAMBDAS[self.metric][self.quality - 1]

    @property
    def step(self) -> float:
        return FIRST_STEPS[self.metric][self.quality - 1] if self.first_step is None else self.first_step


def msssim_window(height: int, width: int) -> int | None:
    """The largest Gaussian window MS-SSIM's five scales (four halvings) allow on this image, or None."""
    for window in MSSSIM_WINDOWS:
        if min(height, width) > (window - 1) * 2**4:
            return window
    return None


class LevelLoss:
    """λ·D + bits per pixel of one chunk's latent at a level; D over the chunk's real pixels only."""

    def __init__(self, model, x: torch.Tensor, height: int, width: int, refinement: Refinement):
        self.model = model
        self.target = x[..., :height, :width]
        self.pixels = height * width * x.shape[0]
        self.medians = model.entropy_bottleneck.medians.to(x.device)[None, :, None, None]
        self.window = msssim_window(height, width) if refinement.metric == "ms-ssim" else None

    def rounded(self, latent: torch.Tensor) -> torch.Tensor:
        return torch.round(latent - self.medians) + self.medians

    def distortion(self, latent: torch.Tensor) -> torch.Tensor:
        x_hat = self.model.g_s(latent)[..., : self.target.shape[-2], : self.target.shape[-1]]
        if self.window is None:
            return 255.0**2 * torch.mean((x_hat - self.target) ** 2)
        from pytorch_msssim import ms_ssim

        return 1 - ms_ssim(x_hat, self.target, data_range=1.0, win_size=self.window)

    def bits_per_pixel(self, values: torch.Tensor) -> torch.Tensor:
        bottleneck = self.model.entropy_bottleneck
        flat = values.transpose(0, 1).reshape(bottleneck.channels, 1, -1)
        likelihood = bottleneck.likelihood_lower_bound(bottleneck._likelihood(flat)[0])
        return -torch.log2(likelihood).sum() / self.pixels


def refine(model, x: torch.Tensor, latent: torch.Tensor, height: int, width: int,
           refinement: Refinement) -> torch.Tensor:
    """The refined latent of the padded image `x` (1, 3, H, W) whose analysis is `latent`; `height` x `width`
    are its real pixels. An ms-ssim chunk too small for MS-SSIM's five scales (a side of 32 pixels or less)
    is returned as analysed: its level's loss is undefined there."""
    loss = LevelLoss(model, x, height, width, refinement)
    if refinement.iterations == 0 or (refinement.metric == "ms-ssim" and loss.window is None):
        return latent
    noise = torch.Generator(device=x.device).manual_seed(0)
    variable = latent.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([variable], lr=refinement.step)
    best, best_loss = latent, math.inf
    with torch.enable_grad():
        for iteration in range(refinement.iterations + 1):
            last = iteration == refinement.iterations
            rounded = loss.rounded(variable.detach())
            with torch.set_grad_enabled(not last):  # the last iterate is only scored
                distortion = loss.distortion(variable + (rounded - variable).detach())  # straight through the rounding
            with torch.no_grad():
                coded_loss = float(refinement.lam * distortion + loss.bits_per_pixel(rounded))
            if coded_loss < best_loss:
                best, best_loss = variable.detach().clone(), coded_loss
            if last:
                break
            uniform = torch.rand(variable.shape, generator=noise, device=x.device) - 0.5
            objective = refinement.lam * distortion + loss.bits_per_pixel(variable + uniform)
            for group in optimizer.param_groups:  # a cosine from the first step to 0
                group["lr"] = refinement.step * 0.5 * (1 + math.cos(math.pi * iteration / refinement.iterations))
            # autograd.grad, not backward(): the shared model's weights get no gradients, so concurrent
            # encodes with one loaded model do not write into each other's state
            (variable.grad,) = torch.autograd.grad(objective, variable)
            optimizer.step()
    return best
