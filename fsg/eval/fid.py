"""Feature statistics of streamed image sets in named feature spaces, and the Fréchet distance to a reference.

    extractor = build_extractor("digits")
    acc = accumulate(batches, extractor, keep=True)          # uint8 NCHW batches
    fid = fd(acc, ref_stats)

Images are never all held in memory: each batch becomes features that go into a `FeatureStats` accumulator per
feature space (and, where precision/recall or KID need them, a float32 copy of the features only), and logits
into the Inception Score's per-split sums.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor

from fsg.errors import UserError
from fsg.eval.extractor import FeatureExtractor, space_of
from fsg.eval.inception_score import ScoreStats
from fsg.eval.stats import FeatureStats, Stats, frechet_distance

# wraps a stream of batches for display: (batches, number of batches, what) -> the same batches
Progress = Callable[[Iterable, int, str], Iterable]


def no_progress(batches: Iterable, total: int, what: str) -> Iterable:
    return batches


def accumulate_outputs(batches: Iterable[tuple[Tensor, Tensor]], extractors: Iterable[FeatureExtractor], *,
                       spaces: set[str], keep: set[str] = frozenset(), scores: ScoreStats | None = None
                       ) -> dict[str, FeatureStats]:
    """Statistics of every feature space in `spaces` over (index, uint8 images) batches, `index` the position of
    each image in its set; raw features are kept for the spaces in `keep`, and every network's 'logits' go to
    `scores` when given."""
    extractors = list(extractors)
    acc: dict[str, FeatureStats] = {}
    for index, images in batches:
        for extractor in extractors:
            for output, feats in extractor.outputs(images).items():
                space = space_of(extractor.name, output)
                if output == "logits" and scores is not None:
                    scores.update(feats, index)
                elif space in spaces:
                    if space not in acc:
                        acc[space] = FeatureStats(feats.shape[1], device=extractor.device, keep=space in keep)
                    acc[space].update(feats)
    return acc


def accumulate(batches: Iterable[Tensor], extractor: FeatureExtractor, *, keep: bool = False) -> FeatureStats:
    """Features of every uint8 image batch in the extractor's own space (raw features kept too when `keep`)."""
    acc = accumulate_outputs(((None, b) for b in batches), [extractor], spaces={extractor.name},
                             keep={extractor.name} if keep else set())
    return acc.get(extractor.name, FeatureStats(extractor.dim, device=extractor.device, keep=keep))


def stats_of(acc: FeatureStats, space: str, label: str, resolution: int | None) -> Stats:
    """The Stats record of accumulated features."""
    if acc.n < 2:
        raise UserError(f"{label}: FID needs at least 2 images, got {acc.n}")
    feats = acc.features().numpy() if acc.kept is not None else None
    return Stats(acc.mu().cpu().numpy(), acc.sigma().cpu().numpy(), acc.n, space, resolution, label, feats)


def fd(samples: FeatureStats, ref: Stats) -> float:
    """The Fréchet distance of accumulated sample features to reference statistics of the same space."""
    if samples.n < 2:
        raise UserError(f"a Fréchet distance needs at least 2 samples, got {samples.n}")
    if ref.mu.size != samples.dim:
        raise UserError(f"{ref.label}: {ref.mu.size}-d statistics do not match the {samples.dim}-d "
                        f"'{ref.features}' features")
    return frechet_distance(samples.mu(), samples.sigma(), ref.mu, ref.sigma)
