"""Bjøntegaard delta rate and rate-distortion interpolation (piecewise cubic Hermite, as in the JCT-VC sheet).

BD-rate: log10(rate) is interpolated as a function of quality for both curves (PCHIP, which cannot
overshoot its points as VCEG-M33's single cubic can), the difference is averaged over the quality
interval both curves cover, and 10**mean - 1 is the average relative rate change of the test curve:
negative means the test codec needs fewer bits than the anchor for the same quality.
"""

from __future__ import annotations

import numpy as np


def ms_ssim_db(ms_ssim) -> np.ndarray:
    """MS-SSIM on the decibel scale -10 log10(1 - MS-SSIM), where curves near 1 can be told apart."""
    return -10 * np.log10(1 - np.asarray(ms_ssim, dtype=np.float64))


def _interpolator(x, y):
    """PCHIP of y over x, with points sorted by x and repeated x values averaged; None under 2 distinct x."""
    from scipy.interpolate import PchipInterpolator

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    unique_x, inverse = np.unique(x[keep], return_inverse=True)
    if len(unique_x) < 2:
        return None
    mean_y = np.bincount(inverse, weights=y[keep]) / np.bincount(inverse)
    return PchipInterpolator(unique_x, mean_y)


def _log_rates(rates) -> np.ndarray:
    rates = np.asarray(rates, dtype=np.float64)
    if np.any(rates <= 0):
        raise ValueError(f"rates must be positive for a rate-distortion curve, found {rates.min()}")
    return np.log10(rates)


def bd_rate(anchor_rates, anchor_quality, test_rates, test_quality,
            interval: tuple[float, float] | None = None) -> float | None:
    """Bjøntegaard delta rate of the test curve against the anchor, in percent.

    The average runs over the quality interval both curves cover, or over `interval` (low, high) within it: a
    curve that reaches higher covers more of the anchor's curve, so curves of different reach are compared over
    one interval. None when a curve has fewer than two distinct quality values or the curves' quality ranges do
    not overlap (no extrapolation).
    """
    anchor = _interpolator(anchor_quality, _log_rates(anchor_rates))
    test = _interpolator(test_quality, _log_rates(test_rates))
    if anchor is None or test is None:
        return None
    low = max(anchor.x[0], test.x[0])
    high = min(anchor.x[-1], test.x[-1])
    if not high > low:
        return None
    if interval is not None:
        if not low <= interval[0] < interval[1] <= high:
            raise ValueError(f"the interval {interval[0]:g}-{interval[1]:g} must lie within the curves' overlap, "
                             f"{low:g}-{high:g}")
        low, high = interval
    mean_difference = (test.integrate(low, high) - anchor.integrate(low, high)) / (high - low)
    return float((10**mean_difference - 1) * 100)


def quality_at_rate(rates, quality, rate: float) -> float | None:
    """The quality a curve reaches at `rate`, interpolated over log10(rate); None outside the measured rates."""
    curve = _interpolator(_log_rates(rates), quality)
    if curve is None or not curve.x[0] <= np.log10(rate) <= curve.x[-1]:
        return None
    return float(curve(np.log10(rate)))
