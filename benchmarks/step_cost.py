"""CPU time of the parts of a training step, and of the ways tried to make the expensive part cheaper.

    python3 benchmarks/step_cost.py          # one thread; about a minute; prints a table (docs/training.md)

Times one data-parallel replica's share of a step (4 of the batch's 8 crops of 128 x 128) on one thread, as
CPU time of this process (`time.process_time`), so a busy machine slows the figures less than wall time:
the forward and backward pass of the transforms in float32, with channels-last tensors, and under bfloat16
autocast (what `caecodec train --precision bf16` does); the densities of the 15 levels not sampled; the
auxiliary loss; the Adam step. Also counts the multiply-adds of the convolutions and GDNs, to say how close
the float32 pass runs to the core's arithmetic peak.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from caecodec.layers import GDN
from caecodec.models import VariableRateFactorizedPrior
from caecodec.training import rate_distortion_loss

CROPS, SIZE, LEVEL = 4, 128, 3  # a replica's share of a batch; mse q4


def cpu_seconds(function, repeats: int = 6) -> float:
    function()
    start = time.process_time()
    for _ in range(repeats):
        function()
    return (time.process_time() - start) / repeats


def forward_flops(model: nn.Module, x: torch.Tensor) -> float:
    """Floating-point operations of the convolutions and GDNs of one forward pass (2 per multiply-add)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += 2 * module.in_channels * module.kernel_size[0] * module.kernel_size[1] * output.numel()
        elif isinstance(module, nn.ConvTranspose2d):
            total += 2 * module.out_channels * module.kernel_size[0] * module.kernel_size[1] * inputs[0].numel()
        elif isinstance(module, GDN):
            total += 2 * inputs[0].shape[1] * inputs[0].numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, GDN))]
    with torch.no_grad():
        model(x, LEVEL)
    for hook in hooks:
        hook.remove()
    return total


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = VariableRateFactorizedPrior(128, 192, [1.0] * 16).train()
    x = torch.rand(CROPS, 3, SIZE, SIZE)

    def transforms(precision: str = "fp32", inputs: torch.Tensor = x, network=model):
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                output = network(inputs, LEVEL)
            rate_distortion_loss(output, inputs, LEVEL, 7)[0].backward()
            network.zero_grad()
        return step

    def densities():
        y = torch.randn(1, 192, SIZE // 16, SIZE // 16)
        sum(model.density_bits(y, level) for level in range(16) if level != LEVEL).backward()
        model.zero_grad()

    def aux():
        sum(model.aux_loss(level) for level in range(16)).backward()
        model.zero_grad()

    optimizer = torch.optim.Adam(model.parameters())

    def adam():
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()

    channels_last = VariableRateFactorizedPrior(128, 192, [1.0] * 16).train().to(memory_format=torch.channels_last)
    rows = [
        ("transforms, forward + backward, float32", transforms()),
        ("the same, channels-last tensors", transforms(inputs=x.contiguous(memory_format=torch.channels_last),
                                                       network=channels_last)),
        ("the same, bfloat16 autocast", transforms("bf16")),
        ("densities of the 15 other levels (1 crop)", densities),
        ("auxiliary loss, 16 levels", aux),
        ("Adam step", adam),
    ]
    flops = 3 * forward_flops(model, x)  # the backward pass costs about twice the forward
    print(f"one replica's share of a step: {CROPS} crops of {SIZE} x {SIZE}, one thread")
    for name, function in rows:
        seconds = cpu_seconds(function)
        rate = f"  ({flops / seconds / 1e9:.0f} GFLOP/s)" if name.startswith(("transforms", "the same")) else ""
        print(f"{name:45s} {seconds:.3f} CPU-s{rate}")
    print(f"convolutions and GDNs, forward + backward: {flops / 1e9:.1f} GFLOP")


if __name__ == "__main__":
    main()
