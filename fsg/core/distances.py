"""Per-sample distances of the consistency and reconstruction losses: L2, L1, pseudo-Huber, LPIPS."""

from __future__ import annotations

import math

import torch
from torch import nn

DISTANCES = ("l2", "l1", "pseudo-huber", "lpips")


def pseudo_huber(diff: torch.Tensor, c: float) -> torch.Tensor:
    """Per-sample pseudo-Huber distance sqrt(||d||^2 + c^2) - c (Sec. 3.3 of Song & Dhariwal 2023)."""
    sq = diff.flatten(1).pow(2).sum(1)
    return (sq + c * c).sqrt() - c


def ict_huber_c(dim: int) -> float:
    """c = 0.00054 sqrt(d) for data of dimension d (Sec. 3.3 of Song & Dhariwal 2023)."""
    return 0.00054 * math.sqrt(dim)


def consistency_distance(a: torch.Tensor, b: torch.Tensor, metric: str, huber_c: float | None = None,
                         lpips: nn.Module | None = None) -> torch.Tensor:
    """Per-sample distance d(a, b) (N,): mean squared / absolute error, pseudo-Huber or LPIPS (a given network)."""
    if metric == "l2":
        return (a - b).pow(2).flatten(1).mean(1)
    if metric == "l1":
        return (a - b).abs().flatten(1).mean(1)
    if metric == "pseudo-huber":
        c = huber_c if huber_c is not None else ict_huber_c(a[0].numel())
        return pseudo_huber(a - b, c)
    if metric == "lpips":
        # as the CM reference: gray -> RGB, bilinear upsampling to 224 below 256 px
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        if a.shape[-1] < 256:
            a, b = (torch.nn.functional.interpolate(v, size=224, mode="bilinear", align_corners=False) for v in (a, b))
        return lpips(a, b).flatten()
    raise ValueError(f"unknown distance {metric!r}")
