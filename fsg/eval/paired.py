"""Paired image-to-image metrics (bridges, editing): MSE in [-1, 1] and LPIPS, matched in sample-index order.

Sample i is compared with target i, in the order the sources yield them (a sample file's rows; a folder's
sorted file names). LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric", VGG variant, v0.1; `fsg.nets.lpips`) runs only from local weights. Nothing is downloaded.

Two aggregations: fsg's, the mean over pairs at native resolution, and DDBM's (`evaluations/evaluator.py`
`get_ssim_lpips`, which DBIM and CDBM reuse): batches of 128 pairs, both images bilinearly upsampled to 224 when
narrower than 256 (so edges2handbags at 64 is scored at 224, MSE included), and the mean of the per-batch means.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from itertools import zip_longest

import torch
import torch.nn.functional as F
from torch import Tensor

from fsg.errors import UserError
from fsg.eval.images import to_rgb
from fsg.nets.lpips import LPIPS

DDBM_BATCH = 128        # evaluator.py: DataLoader(batch_size=128)
DDBM_SIDE = 224         # evaluator.py: F.interpolate(..., size=224, mode='bilinear') when the width is < 256
DDBM_UPSAMPLE_BELOW = 256


class PairedStats:
    """Streaming paired metrics: samples and targets arrive in batches of any sizes; pair i is (sample i, target i).
    Pairs are scored in batches of consecutive pairs of equal shape."""

    def __init__(self, lpips: LPIPS | None = None, batch_size: int = 64, *, ddbm: bool = False):
        self.lpips, self.ddbm = lpips, ddbm
        self.batch_size = DDBM_BATCH if ddbm else batch_size
        self.device = lpips.shift.device if lpips is not None else torch.device("cpu")
        self.samples: deque[Tensor] = deque()      # single images still waiting for their partner
        self.targets: deque[Tensor] = deque()
        self.batch: list[tuple[Tensor, Tensor]] = []
        self.n = self.terms = 0
        self.mse_sum = self.lpips_sum = 0.0

    @property
    def waiting(self) -> int:
        """Samples given whose targets have not come yet."""
        return len(self.samples)

    def add(self, samples: Tensor | None = None, targets: Tensor | None = None) -> None:
        """Add uint8 batches [B, C, H, W] of samples and/or targets."""
        self.samples.extend(samples if samples is not None else ())
        self.targets.extend(targets if targets is not None else ())
        while self.samples and self.targets:
            x, y = self.samples.popleft(), self.targets.popleft()
            i = self.n + len(self.batch)
            if x.shape != y.shape:
                raise UserError(f"paired metrics: sample {i} is {tuple(x.shape)} but target {i} is {tuple(y.shape)} (C, H, W)")
            if self.batch and (len(self.batch) == self.batch_size or x.shape != self.batch[0][0].shape):
                self._score()
            self.batch.append((x, y))

    def _score(self) -> None:
        a = torch.stack([x for x, _ in self.batch]).to(self.device).float() / 127.5 - 1  # (B, C, H, W) in [-1, 1]
        b = torch.stack([y for _, y in self.batch]).to(self.device).float() / 127.5 - 1
        self.batch = []
        if self.ddbm and a.shape[-1] < DDBM_UPSAMPLE_BELOW:
            a, b = (F.interpolate(t, size=(DDBM_SIDE, DDBM_SIDE), mode="bilinear", align_corners=False) for t in (a, b))
        mse = (a - b).square().flatten(1).mean(dim=1)                                      # (B,) per pair
        dist = self.lpips(to_rgb(a), to_rgb(b)).flatten() if self.lpips is not None else torch.zeros_like(mse)
        self.n += len(a)
        self.terms += 1 if self.ddbm else len(a)
        self.mse_sum += float(mse.mean() if self.ddbm else mse.sum())
        self.lpips_sum += float(dist.mean() if self.ddbm else dist.sum())

    def result(self) -> dict[str, float | int | None]:
        """{'n', 'mse', 'lpips'} (lpips None without a network); both sets must have ended together."""
        if self.samples or self.targets:
            ended = "targets" if self.samples else "samples"
            raise UserError(f"paired metrics: the {ended} end at {self.n + len(self.batch)} images, the other set has more")
        if self.batch:
            self._score()
        if self.n == 0:
            raise UserError("paired metrics: no image pairs")
        return {"n": self.n, "mse": self.mse_sum / self.terms,
                "lpips": self.lpips_sum / self.terms if self.lpips is not None else None}


def paired_metrics(samples: Iterable[Tensor], targets: Iterable[Tensor], lpips: LPIPS | None = None,
                   batch_size: int = 64, *, ddbm: bool = False) -> dict[str, float | int | None]:
    """Mean MSE (pixels in [-1, 1]) and, with `lpips`, mean LPIPS of uint8 sample/target batches: over pairs at
    native resolution, or with `ddbm` as DDBM's evaluator (224 upsampling, mean of per-batch means of 128)."""
    acc = PairedStats(lpips, batch_size, ddbm=ddbm)
    for x, y in zip_longest(samples, targets):
        acc.add(x, y)
    return acc.result()
