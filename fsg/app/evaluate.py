"""`fsg eval-fid`, files in and a result out: FID and KID of a sample file, folder or model (sampled on the fly)
against a reference set or statistics file, paired metrics, and reference statistics."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fsg.app.image_sources import ImageSource, open_images, open_source
from fsg.errors import UserError
from fsg.eval.features import FeatureExtractor, build_extractor
from fsg.eval.fid import Progress, accumulate, compare, no_progress, stats_of
from fsg.eval.images import to_uint8
from fsg.eval.paired import paired_metrics
from fsg.eval.stats import Stats
from fsg.models.load import load_model
from fsg.nets.lpips import load_lpips
from fsg.sampling.generate import iter_samples


@dataclass(frozen=True)
class FIDResult:
    """One evaluation, as written by `fsg eval-fid --json` (None: not measured / not applicable)."""

    fid: float
    kid: float | None
    kid_std: float | None
    n: int
    nfe: int | None             # network evaluations per sample (generated on the fly only)
    model: str | None
    samples: str | None         # the samples file or folder (None when generated on the fly)
    ref: str
    features: str
    mse: float | None = None    # paired metrics (--paired)
    lpips: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def source_stats(source: ImageSource, extractor: FeatureExtractor, batch_size: int, *, keep: bool = False,
                 progress: Progress = no_progress) -> Stats:
    """Statistics of every image of a source."""
    batches = progress(source.batches(batch_size), math.ceil(source.count / batch_size), source.label)
    return stats_of(accumulate(batches, extractor, keep=keep), extractor, source.label, source.resolution)


def reference_stats(ref: ImageSource | Stats, extractor: FeatureExtractor, batch_size: int, *, keep: bool = False,
                    progress: Progress = no_progress) -> Stats:
    """Statistics of a reference: computed from its images, or checked against the extractor when precomputed."""
    if isinstance(ref, ImageSource):
        return source_stats(ref, extractor, batch_size, keep=keep, progress=progress)
    if ref.features is None:
        warnings.warn(f"{ref.label}: statistics without a recorded feature space (another tool's file?); the FID is "
                      f"comparable only if they were made with the same network and resizing as '{extractor.name}'",
                      stacklevel=2)
    elif ref.features != extractor.name:
        raise UserError(f"{ref.label}: statistics in the '{ref.features}' feature space, not '{extractor.name}' (--features)")
    if ref.mu.size != extractor.dim:
        raise UserError(f"{ref.label}: {ref.mu.size}-d statistics do not match the {extractor.dim}-d '{extractor.name}' features")
    if keep and ref.feats is None:
        raise UserError(f"{ref.label}: has no raw features for KID; remake it with `fsg eval-fid --make-ref ... --kid`")
    return ref


def evaluate_fid(
    ref: str | Path,
    *,
    samples: str | Path | None = None,      # a .npz or an image folder / .zip ...
    model: str | Path | None = None,        # ... or a model to sample on the fly
    n: int = 50_000,                        # samples to generate (with `model`)
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    features: str = "inception",
    inception: str | Path | None = None,    # Inception weight file (else the default locations)
    with_kid: bool = False,
    paired: str | Path | None = None,       # targets matched to the samples by index: adds MSE (and LPIPS)
    lpips: str | Path | None = None,        # folder of the LPIPS weights (see fsg.eval.paired)
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    ref_root: str | Path | None = None,     # CIFAR-10 root for ref = cifar10-train
    rank: int = 0,                          # with `model`: this process generates indices rank, rank + world, ...
    world: int = 1,
    progress: Progress = no_progress,
) -> FIDResult:
    """FID (and KID, MSE, LPIPS) of samples, from a file or generated on the fly, against a reference."""
    if (samples is None) == (model is None):
        raise UserError("give exactly one of --samples FILE|DIR and --model M")
    if paired is not None and samples is None:
        raise UserError("--paired compares sample files with their targets: it needs --samples")
    ref_source = open_source(ref, ref_root, what="--ref")
    sample_source = open_images(samples) if samples is not None else None
    target_source = open_images(paired, ref_root, what="--paired") if paired is not None else None
    extractor = build_extractor(features, device, inception)
    ref_stats = reference_stats(ref_source, extractor, batch_size, keep=with_kid, progress=progress)
    nfe = None
    if sample_source is None:
        stream = iter_samples(load_model(model, device), n, steps=steps, sampler=sampler, seed=seed, batch_size=batch_size, device=device,
                              rank=rank, world=world)
        images = (to_uint8(x) for _, x, _ in stream)
        acc = accumulate(progress(images, len(stream), f"{model} ({n} samples)"), extractor, keep=with_kid).all_reduce()
        nfe = stream.nfe
    else:
        total = math.ceil(sample_source.count / batch_size)
        acc = accumulate(progress(sample_source.batches(batch_size), total, sample_source.label), extractor, keep=with_kid)
    fid, kid_mean, kid_std = compare(acc, ref_stats, with_kid=with_kid)
    pair = {}
    if target_source is not None:
        net = load_lpips(lpips, device) if lpips is not None else None
        pair = paired_metrics(sample_source.batches(batch_size), target_source.batches(batch_size), net, batch_size)
    return FIDResult(fid, kid_mean, kid_std, acc.n, nfe, None if model is None else str(model),
                     None if samples is None else str(samples), ref_stats.label, extractor.name,
                     pair.get("mse"), pair.get("lpips"))


def make_reference(spec: str | Path, out: str | Path, *, features: str = "inception", inception: str | Path | None = None,
                   with_kid: bool = False, batch_size: int = 256, device: torch.device | str = "cpu",
                   ref_root: str | Path | None = None, progress: Progress = no_progress) -> Stats:
    """Compute the statistics of an image set (raw features too with `with_kid`) and write them to `out` (.npz)."""
    extractor = build_extractor(features, device, inception)
    stats = source_stats(open_images(spec, ref_root, what="--make-ref"), extractor, batch_size, keep=with_kid,
                         progress=progress)
    stats.save(out)
    return stats
