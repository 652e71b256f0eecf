"""Spearman's rank correlation (average ranks for ties), the one rule every correlation of
this package uses."""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor


def average_ranks(values: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """Ranks 1..n of ``values``; tied values share the mean of their ranks."""
    values = values.double()
    order = torch.argsort(values, stable=True)
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(1, len(values) + 1, dtype=torch.float64)
    unique, inverse = torch.unique(values, return_inverse=True)
    sums = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def spearman(x: Float[Tensor, " n"], y: Float[Tensor, " n"]) -> float:
    """Spearman's rho of the pairs where both values are finite; NaN when fewer than 3 pairs
    remain or either side is constant (the correlation is undefined)."""
    x, y = torch.as_tensor(x).flatten().double(), torch.as_tensor(y).flatten().double()
    keep = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return math.nan
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = (rx.square().sum() * ry.square().sum()).sqrt()
    if denominator == 0:
        return math.nan
    return float((rx * ry).sum() / denominator)
