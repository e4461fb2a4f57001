"""A paired 2-D toy for bridges (`data.source: pair:rings`): items hold a target point x and its condition.

`rings`: theta ~ U[0, 2 pi); the condition is y = (cos theta, sin theta) / sqrt(2) on the inner ring and the
target x = sqrt(2) (cos(theta + s pi/4), sin(theta + s pi/4)) on the outer ring with s = +-1 at random, both
plus N(0, 0.05^2) noise: x | y has two modes, a coupling a bridge must learn (a mean regressor lands between
them, on the inner side). Per-coordinate variances: x about 1, y about 1/4 (sigma_data 1, sigma_data_end 0.5).
'train' and 'test' are drawn with two fixed seeds, as the unpaired toys.
"""

from __future__ import annotations

import math

import torch

from fsg.errors import UserError

PAIRED_TOYS = ("rings",)
PAIRED_SEEDS = {"train": 0, "test": 1}
RING_NOISE = 0.05


def _rings(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    theta = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    side = 2 * torch.randint(0, 2, (n,), generator=generator).double() - 1        # s = +-1
    turn = theta + side * (math.pi / 4)
    y = torch.stack([theta.cos(), theta.sin()], 1) / math.sqrt(2)                 # (n, 2)
    x = math.sqrt(2) * torch.stack([turn.cos(), turn.sin()], 1)                   # (n, 2)
    x = x + RING_NOISE * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    y = y + RING_NOISE * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return x.float(), y.float()


def sample_paired_toy(name: str, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n pairs (x, y) of the paired toy `name` ('rings' or 'pair:rings'), each (n, 2) float32."""
    key = name.removeprefix("pair:")
    if key not in PAIRED_TOYS:
        raise UserError(f"data.source: unknown paired toy '{name}' (choose {', '.join('pair:' + t for t in PAIRED_TOYS)})")
    return _rings(n, generator)


class PairedVectorDataset(torch.utils.data.Dataset):
    """Points (N, D) with their conditions (N, D), unlabeled."""

    kind = "vector"
    num_classes = 0

    def __init__(self, points: torch.Tensor, conds: torch.Tensor, name: str):
        self.points, self.conds = points, conds      # (N, D) each
        self.shape = tuple(points.shape[1:])
        self.cond_shape = tuple(conds.shape[1:])
        self.name = name

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.points[i].clone(), "cond": self.conds[i].clone(), "label": torch.tensor(-1), "index": torch.tensor(i)}


def paired_toy(source: str, size: int, split: str) -> PairedVectorDataset:
    """`size` pairs of the paired toy `source` for `split` ('train' or 'test')."""
    if size < 1:
        raise UserError(f"data.toy_size: must be positive, not {size}")
    x, y = sample_paired_toy(source, size, torch.Generator().manual_seed(PAIRED_SEEDS[split]))
    return PairedVectorDataset(x, y, f"{source} ({split})")
