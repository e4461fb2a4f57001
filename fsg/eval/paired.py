"""Paired image-to-image metrics (bridges, editing): MSE in [-1, 1] and LPIPS, matched in sample-index order.

Sample i is compared with target i, in the order the sources yield them (a sample file's rows; a folder's
sorted file names). LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric", VGG variant, v0.1; `fsg.nets.lpips`) runs only from local weights. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import zip_longest

import torch
from torch import Tensor

from fsg.errors import UserError
from fsg.eval.images import to_rgb
from fsg.nets.lpips import LPIPS

def _pairs(samples: Iterable[Tensor], targets: Iterable[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
    """(sample i, target i) single images from two streams of batches; their counts and shapes must agree."""
    flat = zip_longest((x for b in samples for x in b), (y for b in targets for y in b))
    for i, (x, y) in enumerate(flat):
        if x is None or y is None:
            raise UserError(f"paired metrics: {'the samples' if x is None else 'the targets'} end at {i} images, the other set has more")
        if x.shape != y.shape:
            raise UserError(f"paired metrics: sample {i} is {tuple(x.shape)} but target {i} is {tuple(y.shape)} (C, H, W)")
        yield x, y


def _batched_pairs(pairs: Iterator[tuple[Tensor, Tensor]], batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Stack consecutive pairs of equal shape into batches."""
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    for x, y in pairs:
        if xs and (len(xs) == batch_size or x.shape != xs[0].shape):
            yield torch.stack(xs), torch.stack(ys)
            xs, ys = [], []
        xs.append(x)
        ys.append(y)
    if xs:
        yield torch.stack(xs), torch.stack(ys)


def paired_metrics(samples: Iterable[Tensor], targets: Iterable[Tensor], lpips: LPIPS | None = None,
                   batch_size: int = 64) -> dict[str, float | int | None]:
    """Mean per-pair MSE (pixels in [-1, 1]) and, with `lpips`, mean LPIPS of uint8 sample/target batches."""
    device = lpips.shift.device if lpips is not None else torch.device("cpu")
    n, mse_sum, lpips_sum = 0, 0.0, 0.0
    for x, y in _batched_pairs(_pairs(samples, targets), batch_size):
        a = x.to(device).float() / 127.5 - 1  # (B, C, H, W) in [-1, 1]
        b = y.to(device).float() / 127.5 - 1
        n += len(a)
        mse_sum += float((a - b).square().flatten(1).mean(dim=1).sum())
        if lpips is not None:
            lpips_sum += float(lpips(to_rgb(a), to_rgb(b)).sum())
    if n == 0:
        raise UserError("paired metrics: no image pairs")
    return {"n": n, "mse": mse_sum / n, "lpips": lpips_sum / n if lpips is not None else None}
