"""Reading CompressAI FactorizedPrior checkpoints, whatever their key naming.

Three namings of the density parameters exist in the wild (`matrices.0`, `_matrices.0`, `_matrix0`);
N and M are read off the weight shapes. Files are loaded with `weights_only=True`: a checkpoint can
never run code.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .models import FactorizedPrior

_DENSITY_KEY = re.compile(r"^entropy_bottleneck\.(?:_?(matrices|biases|factors)\.(\d+)|_(matrix|bias|factor)(\d+))$")
_PLURAL = {"matrix": "matrices", "bias": "biases", "factor": "factors"}
# Constant buffers that older checkpoints may lack; the model's own defaults are the same constants.
_OPTIONAL_BUFFERS = re.compile(r"(reparam\.pedestal|lower_bound\.bound|entropy_bottleneck\.target)$")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several kinds for non-checkpoints; name the file either way
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if code:  # torch's own advice here (weights_only=False) is the unsafe way out: name the object instead
            raise ValueError(f"{path}: refused: the checkpoint holds a Python object ({code[1]}) besides tensors; "
                             "caecodec never unpickles code") from None
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({error})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return state


def normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the density parameters to this package's (and CompressAI 1.2's) `matrices.0` naming."""
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        match = _DENSITY_KEY.match(key)
        if match:
            kind, index = (match[1], match[2]) if match[1] else (_PLURAL[match[3]], match[4])
            key = f"entropy_bottleneck.{kind}.{index}"
        renamed[key] = value
    return renamed


def factorized_prior_from_state_dict(state: dict[str, torch.Tensor]) -> FactorizedPrior:
    state = normalize_keys(state)
    try:
        n, m = state["g_a.0.weight"].shape[0], state["g_a.6.weight"].shape[0]
    except KeyError as error:
        raise ValueError(f"not a FactorizedPrior checkpoint: no {error.args[0]!r}") from None
    model = FactorizedPrior(n, m)
    bottleneck = model.entropy_bottleneck
    for name in bottleneck.TABLES:  # sized by the checkpoint
        key = f"entropy_bottleneck.{name}"
        if key in state:
            getattr(bottleneck, name).resize_(state[key].shape)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not _OPTIONAL_BUFFERS.search(k)]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"not a FactorizedPrior checkpoint: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, value in state.items():
        if expected[key].shape != value.shape:
            raise ValueError(f"{key}: expected shape {tuple(expected[key].shape)}, found {tuple(value.shape)}")
    model.load_state_dict(state, strict=False)
    if bottleneck._quantized_cdf.numel() == 0:
        bottleneck.update()
    return model.eval()
