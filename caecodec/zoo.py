"""The sixteen configurations (quality 1-8 x metric) and CompressAI's rate-distortion trade-offs for them."""

from __future__ import annotations

METRICS = ("mse", "ms-ssim")
QUALITIES = tuple(range(1, 9))

# CompressAI's lambdas for bmshj2018-factorized (model zoo documentation). The loss is
# lambda * 255**2 * MSE + bpp for "mse" and lambda * (1 - MS-SSIM) + bpp for "ms-ssim".
LAMBDAS = {
    "mse": (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800),
    "ms-ssim": (2.40, 4.58, 8.73, 16.64, 31.73, 60.50, 115.37, 220.00),
}


def check_configuration(quality: int, metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, found {metric!r}")
    if isinstance(quality, bool) or not isinstance(quality, int) or quality not in QUALITIES:
        raise ValueError(f"quality must be an integer from 1 to 8, found {quality!r}")


def level_index(quality: int, metric: str) -> int:
    """Position of a configuration among the levels of a variable-rate network trained for all sixteen."""
    check_configuration(quality, metric)
    return METRICS.index(metric) * len(QUALITIES) + quality - 1


def level_configuration(level: int) -> tuple[int, str]:
    return QUALITIES[level % len(QUALITIES)], METRICS[level // len(QUALITIES)]


def level_lambda(level: int) -> float:
    quality, metric = level_configuration(level)
    return LAMBDAS[metric][quality - 1]
