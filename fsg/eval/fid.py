"""FID and KID of streamed images against reference statistics, in a named feature space.

    extractor = build_extractor("digits")
    acc = accumulate(batches, extractor, keep=True)          # uint8 NCHW batches
    fid, kid, kid_std = compare(acc, ref_stats, with_kid=True)

Images are never all held in memory: each batch becomes features that go into a `FeatureStats`
accumulator (and, for KID, a float32 copy of the features only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from fsg.errors import UserError
from fsg.eval.features import FeatureExtractor
from fsg.eval.stats import FeatureStats, Stats, frechet_distance, kid

# wraps a stream of batches for display: (batches, number of batches, what) -> the same batches
Progress = Callable[[Iterable[Tensor], int, str], Iterable[Tensor]]


def no_progress(batches: Iterable[Tensor], total: int, what: str) -> Iterable[Tensor]:
    return batches


def accumulate(batches: Iterable[Tensor], extractor: FeatureExtractor, *, keep: bool = False) -> FeatureStats:
    """Features of every uint8 image batch, accumulated (raw features kept too when `keep`, for KID)."""
    acc = FeatureStats(extractor.dim, device=extractor.device, keep=keep)
    for images in batches:
        acc.update(extractor(images))
    return acc


def stats_of(acc: FeatureStats, extractor: FeatureExtractor, label: str, resolution: int | None) -> Stats:
    """The Stats record of accumulated features."""
    if acc.n < 2:
        raise UserError(f"{label}: FID needs at least 2 images, got {acc.n}")
    feats = acc.features().numpy() if acc.kept is not None else None
    return Stats(acc.mu().cpu().numpy(), acc.sigma().cpu().numpy(), acc.n, extractor.name, resolution, label, feats)


def compare(samples: FeatureStats, ref: Stats, *, with_kid: bool = False,
            generator: torch.Generator | None = None) -> tuple[float, float | None, float | None]:
    """(FID, KID, KID std) of accumulated sample features against reference statistics."""
    if samples.n < 2:
        raise UserError(f"FID needs at least 2 samples, got {samples.n}")
    fid = frechet_distance(samples.mu(), samples.sigma(), ref.mu, ref.sigma)
    if not with_kid:
        return fid, None, None
    kid_mean, kid_std = kid(samples.features(), torch.from_numpy(ref.feats), generator=generator)
    return fid, kid_mean, kid_std
