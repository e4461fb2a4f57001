"""Pick the middle time of a two-step consistency schedule (0, p, N-1) by ternary search on a metric,
as openai/consistency_models' scripts/ternary_search.py does on FID."""

from __future__ import annotations

from typing import Callable

import torch

from fsg.sampling.generate import iter_samples


def ternary_search_middle(metric: Callable[[int], float], lo: int, hi: int) -> tuple[int, dict[int, float]]:
    """Integer p in [lo, hi] minimising a unimodal `metric(p)`; returns p and every value evaluated.

    Each round evaluates two interior points and drops the outer third on the worse side, so about
    2 log_{3/2}(hi - lo) metric calls are made (each value is computed once and cached).
    """
    seen: dict[int, float] = {}

    def f(p: int) -> float:
        if p not in seen:
            seen[p] = metric(p)
        return seen[p]

    while hi - lo > 2:
        m1, m2 = lo + (hi - lo) // 3, hi - (hi - lo) // 3
        if f(m1) <= f(m2):
            hi = m2 - 1 if f(m1) < f(m2) else m2
        else:
            lo = m1 + 1
    best = min(range(lo, hi + 1), key=f)
    return best, seen


def two_step_metric(model, n: int, score: Callable, seed: int = 0, batch_size: int = 256, device="cpu"):
    """metric(p) = score(samples of the two-step schedule ts = (0, p, N - 1) on the model's N-point training grid,
    calls at indices 0 and p as the reference's --ts)."""
    end = int(model.meta.get("train_grid") or 40) - 1

    def metric(p: int) -> float:
        stream = iter_samples(model, n, sampler="consistency", timesteps=[0, p, end], seed=seed, batch_size=batch_size,
                              device=device)
        return float(score(torch.cat([x for _, x, _ in stream])))

    return metric
