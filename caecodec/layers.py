"""Building blocks of the transforms: GDN and the strided convolutions of Ballé et al.

Parameter and buffer names follow CompressAI's, so its checkpoints load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _LowerBoundFunction(torch.autograd.Function):
    """max(x, bound) whose gradient still flows when x is below the bound and the step pushes it up."""

    @staticmethod
    def forward(ctx, inputs, bound):
        ctx.save_for_backward(inputs, bound)
        return torch.max(inputs, bound)

    @staticmethod
    def backward(ctx, grad_output):
        inputs, bound = ctx.saved_tensors
        pass_through = (inputs >= bound) | (grad_output < 0)
        return pass_through.type(grad_output.dtype) * grad_output, None


class LowerBound(nn.Module):
    bound: torch.Tensor

    def __init__(self, bound: float):
        super().__init__()
        self.register_buffer("bound", torch.tensor([float(bound)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or not torch.is_grad_enabled():
            return torch.max(x, self.bound)
        return _LowerBoundFunction.apply(x, self.bound)


class NonNegativeParametrizer(nn.Module):
    """Stores a non-negative parameter as sqrt(value + pedestal) for stable gradients near zero."""

    pedestal: torch.Tensor

    def __init__(self, minimum: float = 0.0, reparam_offset: float = 2**-18):
        super().__init__()
        pedestal = reparam_offset**2
        self.register_buffer("pedestal", torch.tensor([pedestal]))
        self.lower_bound = LowerBound((minimum + pedestal) ** 0.5)

    def init(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.max(x + self.pedestal, self.pedestal))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lower_bound(x) ** 2 - self.pedestal


class GDN(nn.Module):
    """Generalized divisive normalization (Ballé et al. 2016); `inverse=True` gives IGDN."""

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self.beta_reparam = NonNegativeParametrizer(minimum=beta_min)
        self.beta = nn.Parameter(self.beta_reparam.init(torch.ones(channels)))
        self.gamma_reparam = NonNegativeParametrizer()
        self.gamma = nn.Parameter(self.gamma_reparam.init(gamma_init * torch.eye(channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma).reshape(channels, channels, 1, 1)
        norm = F.conv2d(x * x, gamma, beta)
        return x * (torch.sqrt(norm) if self.inverse else torch.rsqrt(norm))


def conv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


def deconv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(
        in_channels, out_channels, kernel_size, stride=stride, output_padding=stride - 1, padding=kernel_size // 2
    )
