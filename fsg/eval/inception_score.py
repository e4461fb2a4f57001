"""Inception Score (Salimans et al. 2016, "Improved Techniques for Training GANs", Sec. 4) as guided-diffusion's
`evaluations/evaluator.py` computes it (`compute_inception_score`): the samples are cut into consecutive splits of
5,000 (the last one shorter), each split scores

    IS = exp( mean_i KL(p(y | x_i) || p(y)) ) = exp( mean_i sum_c p_ic log p_ic - sum_c pbar_c log pbar_c ),

pbar the mean prediction of the split, and the result is the mean over the splits (no std is reported). Sums are
kept per split in float64, so samples can stream in any order: sample i of a set belongs to split i // 5000.
0 log 0 is taken as 0 (`xlogy`), where the reference code would give NaN.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

SPLIT_SIZE = 5000       # evaluator.py: split_size=5000


class ScoreStats:
    """Per split: the number of samples, sum_i p_i and sum_i sum_c p_ic log p_ic, for a set of `n` samples (the
    number of classes is that of the first logits)."""

    def __init__(self, n: int, split_size: int = SPLIT_SIZE, device: torch.device | str = "cpu"):
        self.splits, self.split_size = max(1, math.ceil(n / split_size)), split_size
        self.count = torch.zeros(self.splits, dtype=torch.float64, device=device)
        self.plogp_sum = torch.zeros(self.splits, dtype=torch.float64, device=device)
        self.p_sum: Tensor | None = None                                       # (splits, classes)

    def update(self, logits: Tensor, index: Tensor) -> None:
        """Add the class logits [B, classes] of the samples at positions `index` [B] of the set."""
        if self.p_sum is None:
            self.p_sum = self.count.new_zeros(self.splits, logits.shape[1])
        p = logits.to(self.p_sum.device, torch.float64).softmax(dim=1)        # (B, C)
        split = index.to(self.p_sum.device) // self.split_size                 # (B,)
        self.count.index_add_(0, split, torch.ones_like(split, dtype=torch.float64))
        self.p_sum.index_add_(0, split, p)
        self.plogp_sum.index_add_(0, split, torch.xlogy(p, p).sum(dim=1))

    def all_reduce(self) -> ScoreStats:
        """Sum the shards of all ranks (no-op unless torch.distributed is initialized)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for t in (self.count, self.p_sum, self.plogp_sum):
                dist.all_reduce(t)
        return self

    def score(self) -> float:
        """The mean over non-empty splits of exp(mean_i sum_c p_ic log p_ic - sum_c pbar_c log pbar_c)."""
        full = self.count > 0
        if self.p_sum is None:
            raise ValueError("no samples")
        count = self.count[full]
        p_bar = self.p_sum[full] / count[:, None]                              # (S, C)
        kl = self.plogp_sum[full] / count - torch.xlogy(p_bar, p_bar).sum(dim=1)
        return float(kl.exp().mean())


def inception_score(logits: Tensor, split_size: int = SPLIT_SIZE) -> float:
    """The Inception Score of all samples' logits [N, classes], in consecutive splits of `split_size`."""
    stats = ScoreStats(len(logits), split_size)
    stats.update(logits, torch.arange(len(logits)))
    return stats.score()
