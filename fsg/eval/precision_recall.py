"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing
Generative Models", Sec. 2) as guided-diffusion's `evaluations/evaluator.py` computes them (`ManifoldEstimator`,
`DistanceBlock`, `evaluate_pr`; adapted there from kynkaat's `precision_recall.py`).

Each set approximates its manifold by balls: around every point, the ball reaching its k-th nearest neighbour in
its own set (k = 3; the point itself is the 0-th, duplicates count). A point of one set lies on the other's
manifold when it is inside at least one of that set's balls, boundary included (`<=`). Precision is the fraction
of samples on the reference manifold, recall the fraction of references on the sample manifold. Distances are
squared, from the norm expansion clamped at 0, in float32 (ADM computes them in float16 first and falls back to
float32 only on overflow; the difference is below float16 resolution). Blocks bound the memory to
block x N distances and do not change the result.
"""

from __future__ import annotations

import torch
from torch import Tensor

K_NEAREST = 3           # evaluator.py ManifoldEstimator(nhood_sizes=(3,))
BLOCK = 2048


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """||a_i - b_j||^2 = ||a_i||^2 - 2 a_i.b_j + ||b_j||^2, clamped at 0, float32 [len(a), len(b)]."""
    a, b = a.float(), b.float()
    return ((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]).clamp(min=0)


def manifold_radii(feats: Tensor, k: int = K_NEAREST, block: int = BLOCK) -> Tensor:
    """Squared distance from each point to its k-th nearest neighbour within `feats` [N, d], itself being the
    0-th (evaluator.py `manifold_radii`: np.partition(kth=range(k + 1))[:, k])."""
    if len(feats) <= k:
        raise ValueError(f"k = {k} nearest neighbours need more than {k} points, got {len(feats)}")
    radii = [squared_distances(rows, feats).topk(k + 1, dim=1, largest=False).values[:, k] for rows in feats.split(block)]
    return torch.cat(radii)


def inside_balls(points: Tensor, centres: Tensor, radii: Tensor, block: int = BLOCK) -> Tensor:
    """For each point, whether ||point - centre_j||^2 <= radii_j for some j (bool [len(points)])."""
    inside = []
    for rows in points.split(block):
        hit = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
        for cols, r in zip(centres.split(block), radii.split(block)):
            hit |= (squared_distances(rows, cols) <= r[None, :]).any(dim=1)
        inside.append(hit)
    return torch.cat(inside)


def precision_recall(real: Tensor, fake: Tensor, k: int = K_NEAREST, block: int = BLOCK) -> tuple[float, float]:
    """(precision, recall) of sample features `fake` [M, d] against reference features `real` [N, d]."""
    precision = inside_balls(fake, real, manifold_radii(real, k, block), block).float().mean()
    recall = inside_balls(real, fake, manifold_radii(fake, k, block), block).float().mean()
    return float(precision), float(recall)
