"""Noise-aware comparisons of groups of seeds, and the numbers' formatting in tables.

A difference between two nets counts only beyond the noise: the largest of a tolerance,
the two groups' standard deviations over seeds added, and 1.96 standard errors of the
difference where one is known (binomial for error rates, He et al.'s 2 images in 359 are
not a finding). Every report, study, tune and robustness statement is made with
``compare``, so that "higher", "lower" and "within noise" mean the same everywhere.

Layering: this module sits at the package's top level beside errors.py and runfs.py and
imports nothing of reslab, so that every layer (experiments, report, ...) can use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import IntEnum

Z_95 = 1.96  # two-sided 95% of a normal distribution


class Difference(IntEnum):
    """How one group's mean stands against another's; compares equal to +1, -1 and 0."""

    HIGHER = 1
    LOWER = -1
    WITHIN_NOISE = 0

    def __str__(self) -> str:
        return self.name.lower().replace("_", " ")


def binomial_standard_error(rate_a: float | None, count_a: int | None, rate_b: float | None,
                            count_b: int | None) -> float | None:
    """The standard error of the difference of two rates measured on ``count_a`` and
    ``count_b`` independent samples; None where a rate or a count is missing."""
    if rate_a is None or rate_b is None or not count_a or not count_b:
        return None
    variance = rate_a * (1 - rate_a) / count_a + rate_b * (1 - rate_b) / count_b
    return math.sqrt(max(variance, 0.0))  # a mean of fractions may stray a rounding error past 1


def compare(a: Mapping, b: Mapping, key: str, tolerance: float,
            standard_error: float | None = None) -> Difference | None:
    """``a``'s ``{key}_mean`` against ``b``'s: HIGHER or LOWER beyond the noise, WITHIN_NOISE
    inside it, None where either was not recorded. The noise is the largest of
    ``tolerance``, the two ``{key}_std`` added, and 1.96 ``standard_error`` (of the
    difference) where given."""
    mean_a, mean_b = a[f"{key}_mean"], b[f"{key}_mean"]
    if mean_a is None or mean_b is None:
        return None
    noise = max(tolerance, (a[f"{key}_std"] or 0.0) + (b[f"{key}_std"] or 0.0))
    if standard_error is not None:
        noise = max(noise, Z_95 * standard_error)
    if mean_a - mean_b > noise:
        return Difference.HIGHER
    if mean_b - mean_a > noise:
        return Difference.LOWER
    return Difference.WITHIN_NOISE


# ---------------------------------------------------------------- numbers in tables and statements


def percent(value: float | None) -> str:
    """A fraction in percent, two decimals: 0.0661 -> '6.61%'; 'n/a' for None."""
    return "n/a" if value is None else f"{100 * value:.2f}%"


def plus_minus(mean: float | None, std: float | None, runs: int, fmt: str = ".2f", scale: float = 1.0) -> str:
    """A mean over seeds and, where there were several, its standard deviation:
    '6.61 ± 0.16'; '–' where nothing was recorded. Both are multiplied by ``scale``."""
    if mean is None:
        return "–"
    text = format(mean * scale, fmt)
    return f"{text} ± {format((std or 0.0) * scale, fmt)}" if runs > 1 else text
