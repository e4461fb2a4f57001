"""`fsg eval-fid`, files in and a stamped result out: a protocol of the papers (`fsg.eval.protocols`) applied to
sample files or folders, or to a model sampled on the fly, against reference images or the reference statistics
the papers publish; and `--make-ref`, reference statistics of one's own data in each published format.

Every result carries a `Stamp`: the evaluator and protocol, the sha256 of each feature network's weights and of
the reference, the number of samples and their seeds, the model (and its sha256), sampler and NFE, the 8-bit rule,
and a line for each departure from the protocol (a reduced sample count above all), in which case `comparable` is
False.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fsg.app.image_sources import ImageSource, Reference, open_images, open_source
from fsg.app.outputs import output_kind
from fsg.data.conditions import DataConds, condition_source, mask_source
from fsg.errors import UserError
from fsg.eval.extractor import FeatureExtractor, space_of
from fsg.eval.features import build_extractor
from fsg.eval.fid import Progress, accumulate_outputs, fd, no_progress, stats_of
from fsg.eval.images import UINT8_RULES, to_uint8
from fsg.eval.inception_score import ScoreStats
from fsg.eval.paired import PairedStats
from fsg.eval.precision_recall import precision_recall
from fsg.eval.protocols import Protocol, deviations, format_seeds, get_protocol, seed_sets, summarize
from fsg.eval.stats import FeatureStats, Stats, kid
from fsg.io.refstats import sha256_file, write_adm_npz, write_ddbm_npz, write_edm2_pickle, write_edm_npz
from fsg.models.load import load_model
from fsg.nets.lpips import load_lpips
from fsg.sampling.generate import iter_samples

ADM_REF_IMAGES = 10_000     # the images of an ADM reference batch (evaluations/README.md), for precision and recall
Batches = Iterator[tuple[Tensor, Tensor]]   # (positions in the set, uint8 images [B, C, H, W])


@dataclass(frozen=True)
class Stamp:
    """What a result measured, printed with it and written into its JSON."""

    evaluator: str                      # the reference code the protocol reproduces
    protocol: str
    features: dict[str, str | None]     # feature network -> sha256 of its weight file
    reference: str
    reference_format: str               # 'edm', 'adm', 'ddbm', 'edm2', 'fsg', 'images', 'folder', 'data set'
    reference_sha256: str | None        # of the file; of the decoded pixels for a folder or data set
    n: list[int]                        # samples of each set
    protocol_n: int | None              # what the protocol prescribes per set (None: any, or one per pair)
    seeds: list[str] | None             # seed sets, '0-49999' (indices of fsg's per-sample streams); None for files
    seed: int | None                    # the run seed of those streams
    samples: list[str] | None           # sample files or folders
    model: str | None
    model_sha256: str | None
    sampler: str | None
    steps: int | None                   # as requested (None: the model's default)
    nfe: int | None                     # network evaluations per sample, counted
    uint8: str                          # how float samples became 8 bits: 'round' (EDM) or 'floor' (ADM, DDBM)
    comparable: bool                    # False when the run departs from the protocol in a way that moves the numbers
    departures: list[str]               # those departures, one line each (a reduced sample count above all)
    notes: list[str]                    # what else to know (seeds other than the protocol's, assumed feature spaces)


@dataclass(frozen=True)
class EvalResult:
    """One evaluation, as written by `fsg eval-fid --json`: the headline of each metric (None: not measured), their
    mean and per-set values when the protocol has several seed sets, and the stamp."""

    protocol: str
    headline: str                       # how `metrics` summarizes the sets: 'min' (EDM, EDM2) or 'mean'
    metrics: dict[str, float | None]    # the headline value of each metric
    mean: dict[str, float | None] | None
    sets: list[dict]                    # per set: its seeds or file ('set'), 'n' and each metric
    stamp: Stamp

    def to_dict(self) -> dict:
        return {"protocol": self.protocol, "headline": self.headline, **self.metrics, "mean": self.mean,
                "sets": self.sets, "stamp": asdict(self.stamp)}


def _positions(batches: Iterable[Tensor]) -> Batches:
    """(positions, images) of a stream of batches, numbered 0, 1, ... in order."""
    start = 0
    for images in batches:
        yield torch.arange(start, start + len(images)), images
        start += len(images)


def _hashing(batches: Batches, digest) -> Batches:
    """The same batches, every image's bytes added to `digest` on the way (a content hash of an image set)."""
    for index, images in batches:
        digest.update(images.contiguous().numpy().tobytes())
        yield index, images


def _metric_spaces(protocol: Protocol) -> dict[str, str]:
    """The feature space of each Gaussian metric of the protocol."""
    spaces = {"fid": protocol.features}
    if "sfid" in protocol.metrics:
        spaces["sfid"] = space_of(protocol.features, "spatial")
    if "fd_dinov2" in protocol.metrics:
        spaces["fd_dinov2"] = "dinov2"
    return spaces


def _extractors(protocol: Protocol, device, inception, dinov2) -> list[FeatureExtractor]:
    names = [protocol.features] + (["dinov2"] if "fd_dinov2" in protocol.metrics else [])
    return [build_extractor(name, device, inception, dinov2, protocol.logits_bias) for name in names]


def _pass(batches: Batches, count: int, extractors: list[FeatureExtractor], spaces: set[str], keep: set[str],
          what: str, batch_size: int, progress: Progress, scores: ScoreStats | None = None) -> dict[str, FeatureStats]:
    """One pass of a set's batches (`count` images) through the networks."""
    return accumulate_outputs(progress(batches, math.ceil(count / batch_size), what), extractors, spaces=spaces,
                              keep=keep, scores=scores)


@dataclass(frozen=True)
class RefMeasure:
    """A reference ready to compare with: Gaussians by feature space, raw features where needed, and its stamp."""

    stats: dict[str, Stats]
    feats: dict[str, Tensor]            # raw features (precision/recall, KID) by space
    label: str
    format: str
    sha256: str | None
    notes: list[str]


def measure_reference(ref: ImageSource | Reference, extractors: list[FeatureExtractor], spaces: dict[str, str],
                      keep: set[str], batch_size: int, progress: Progress = no_progress) -> RefMeasure:
    """The statistics of each metric's space: those a reference file stores (ADM's whole-set mu/sigma for FID and
    sFID, as its evaluator uses them), else computed from its images (`arr_0`; an image set's images); raw features
    of the `keep` spaces come from the images (ADM's 10,000 for precision/recall) or fsg's stored `feats`."""
    notes: list[str] = []
    stats: dict[str, Stats] = {}
    feats: dict[str, Tensor] = {}
    if isinstance(ref, Reference):
        for metric, space in spaces.items():
            stored = ref.stats.get(space) or (ref.stats.get(None) if metric == "fid" else None)
            if stored is None:
                continue
            if stored.features is None:
                notes.append(f"{ref.label} does not record its feature space ({ref.format} format): taken as '{space}'")
            stats[space] = stored
            if space in keep and stored.feats is not None:
                feats[space] = torch.from_numpy(stored.feats)
        images, label, kind, digest = ref.images, ref.label, ref.format, ref.sha256
    else:
        images, label, kind, digest = ref, ref.label, ref.kind, None
    computed = {space for space in spaces.values() if space not in stats}   # Gaussians to compute from images
    missing = computed | {space for space in keep if space not in feats}
    if missing and images is None:
        have = ", ".join(f"'{s}'" for s in ref.stats if s) or "an unrecorded space"
        raise UserError(f"{label}: holds statistics in {have} and no images; this evaluation needs "
                        f"{', '.join(sorted(missing))}")
    if missing:
        pixels = hashlib.sha256()
        batches = _positions(images.batches(batch_size))
        acc = _pass(batches if digest else _hashing(batches, pixels), images.count, extractors, missing, keep & missing,
                    images.label, batch_size, progress)
        stats.update({space: stats_of(acc[space], space, label, images.resolution) for space in computed})
        feats.update({space: acc[space].features() for space in keep & missing})
        if isinstance(ref, Reference) and computed:
            notes.append(f"statistics of {', '.join(sorted(computed))} computed from the {images.count:,} images of "
                         f"{label} (arr_0)")
        digest = digest or pixels.hexdigest()
    return RefMeasure(stats, feats, label, kind, digest, notes)


def _generated(stream, seeds: range, batch_size: int, rank: int, world: int, quantize) -> Batches:
    """The samples of one seed set: indices seeds[rank::world] of the model's per-index streams, batch by batch."""
    indices = seeds[rank::world]
    for start in range(0, len(indices), batch_size):
        idx, x, _, _ = stream.sample_batch(list(indices[start:start + batch_size]))
        yield idx - seeds.start, quantize(x)


def _with_pairs(batches: Batches, pairs: PairedStats, targets: Iterator[Tensor]) -> Batches:
    """The same batches, each sample also paired with the next target (the count check is `pairs.result`)."""
    for index, images in batches:
        pairs.add(samples=images)
        while pairs.waiting:
            y = next(targets, None)
            if y is None:
                pairs.result()      # raises: the targets ended first
            pairs.add(targets=y)
        yield index, images
    for y in targets:
        pairs.add(targets=y)


def _take(batches: Iterable[Tensor], count: int) -> Iterator[Tensor]:
    """The first `count` images of a stream of batches."""
    for images in batches:
        if count <= 0:
            return
        yield images[:count]
        count -= len(images)


def _split_targets(conds: DataConds) -> ImageSource:
    """The targets x of the data items whose conditions a bridge model is sampled from, pair i = item i."""
    items = conds.items

    def read(batch_size: int) -> Iterator[Tensor]:
        for start in range(0, len(items), batch_size):
            yield to_uint8(torch.stack([items[i]["x"] for i in range(start, min(start + batch_size, len(items)))]))

    return ImageSource(f"{items.name} targets", len(items), int(items.shape[-1]), read, "data set")


@dataclass(frozen=True)
class SampleSet:
    label: str                              # the seed set ('0-49999') or the file
    count: int
    batches: Callable[[], Batches]


@dataclass(frozen=True)
class Scoring:
    """Everything a set is scored with: the protocol, its networks and spaces, the reference, the paired targets."""

    protocol: Protocol
    extractors: list[FeatureExtractor]
    spaces: dict[str, str]                  # metric -> feature space
    keep: set[str]                          # spaces whose raw features are kept (precision/recall, KID)
    reference: RefMeasure
    targets: ImageSource | None
    lpips: object | None
    with_kid: bool
    device: torch.device | str


def _targets(proto: Protocol, paired, conds, ref_source, ref_root) -> ImageSource | None:
    """The images sample i is compared with: --paired, else (bridge protocol) the pairs of a bridge model's data, else
    the reference's images (DDBM's reference holds the targets in order)."""
    if paired is not None:
        return open_images(paired, ref_root, what="--paired")
    if not proto.paired:
        return None
    if isinstance(conds, DataConds):
        return _split_targets(conds)
    if isinstance(ref_source, Reference):
        return ref_source.images
    return ref_source


def _score(sample_set: SampleSet, scoring: Scoring, loaded: bool, what: str, batch_size: int, world: int,
           progress: Progress) -> dict:
    """The protocol's metrics of one set of samples."""
    proto, spaces, reference = scoring.protocol, scoring.spaces, scoring.reference
    fid_space = spaces["fid"]
    batches = sample_set.batches()
    pairs = None
    if scoring.targets is not None:
        pairs = PairedStats(scoring.lpips, batch_size, ddbm=proto.paired)
        targets = scoring.targets.batches(batch_size)
        batches = _with_pairs(batches, pairs, _take(targets, sample_set.count) if loaded else iter(targets))
    scores = ScoreStats(sample_set.count, device=scoring.device) if "is" in proto.metrics else None
    acc = _pass(batches, sample_set.count // world, scoring.extractors, set(spaces.values()), scoring.keep, what,
                batch_size, progress, scores)
    for stats in acc.values():      # each rank made indices rank, rank + world, ... of the set
        stats.all_reduce()
    values: dict[str, float | None] = {m: fd(acc[space], reference.stats[space]) for m, space in spaces.items()}
    if scores is not None:
        values["is"] = scores.all_reduce().score()
    if "precision" in proto.metrics:
        values["precision"], values["recall"] = precision_recall(reference.feats[fid_space].to(scoring.device),
                                                                 acc[fid_space].features().to(scoring.device))
    if scoring.with_kid:
        values["kid"], values["kid_std"] = kid(acc[fid_space].features(), reference.feats[fid_space])
    if pairs is not None:
        paired = pairs.result()
        values["mse"], values["lpips"] = paired["mse"], paired["lpips"]
    return {"set": sample_set.label, "n": acc[fid_space].n, **values}


def evaluate_fid(
    ref: str | Path | None,
    *,
    samples: str | Path | list | None = None,   # sample files or folders (each one set) ...
    model: str | Path | None = None,            # ... or a model to sample on the fly
    protocol: str | None = None,                # fsg.eval.protocols.PROTOCOLS (default 'fsg')
    n: int | None = None,                       # samples per seed set (default: the protocol's)
    seeds: str | None = None,                   # seed sets, '0-49999,50000-99999' (instead of n)
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,                              # run seed of the per-index noise streams
    features: str | None = None,                # FID network of the 'fsg' protocol (default inception)
    inception: str | Path | None = None,        # Inception weight file (else the default locations)
    dinov2: str | Path | None = None,           # DINOv2 ViT-L/14 weight file (else the default locations)
    with_kid: bool = False,
    paired: str | Path | None = None,           # targets matched to the samples by index: adds MSE (and LPIPS)
    cond: str | None = None,                    # a bridge model's conditions (default: its data's split)
    lpips: str | Path | None = None,            # folder of the LPIPS weights (see fsg.nets.lpips)
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    ref_root: str | Path | None = None,         # CIFAR-10 root for ref = cifar10-train
    rank: int = 0,                              # with `model`: this process generates indices rank, rank + world, ...
    world: int = 1,
    progress: Progress = no_progress,
) -> EvalResult:
    """The metrics of a protocol for samples from files or generated on the fly, against a reference."""
    proto = get_protocol(protocol, features)
    sample_specs = [samples] if isinstance(samples, (str, Path)) else list(samples or [])
    if bool(sample_specs) == (model is not None):
        raise UserError("give exactly one of --samples FILE|DIR (repeatable: one per seed set) and --model M")
    if sample_specs and (n is not None or seeds is not None):
        raise UserError("-n and --seeds choose the samples of --model; a sample file is scored whole")
    pairs_wanted = proto.paired or paired is not None
    if pairs_wanted and (world > 1 or len(sample_specs) > 1 or seeds is not None):
        raise UserError("paired metrics pair sample i with target i: one --samples file, or a --model with -n (no "
                        "--seeds), in one process (no torchrun)")
    breaking: list[str] = []
    notes: list[str] = []

    loaded = load_model(model, device) if model is not None else None
    conds = masks = None
    if loaded is not None and loaded.meta.get("cond_channels", 0):
        conds = condition_source(loaded.meta, cond if cond is not None else ("data:train" if proto.paired else None))
        masks, _ = mask_source(loaded.meta, conds)
    elif cond is not None:
        raise UserError("--cond: give it with a bridge --model (a model that takes condition images)")
    ref_source = open_source(ref, ref_root, what="--ref") if ref is not None else None
    targets = _targets(proto, paired, conds, ref_source, ref_root)
    if proto.paired and targets is None:
        raise UserError(f"protocol '{proto.name}' compares sample i with target i: give --paired TARGETS or a --ref "
                        "holding the targets in order (arr_0)")
    if ref_source is None:
        if not proto.paired:
            raise UserError("--ref is required (a folder, .npz, .pkl, cifar10-train, digits or mnist5k)")
        ref_source = targets
        notes.append(f"no --ref: the FID reference is the paired targets ({targets.label})")

    extractors = _extractors(proto, device, inception, dinov2)
    spaces = _metric_spaces(proto)
    keep = {spaces["fid"]} if with_kid or "precision" in proto.metrics else set()
    reference = measure_reference(ref_source, extractors, spaces, keep, batch_size, progress)
    notes += reference.notes
    lpips_net = load_lpips(lpips, device) if lpips is not None and pairs_wanted else None
    if proto.paired and lpips_net is None:
        breaking.append("LPIPS not measured: no LPIPS weights (--lpips DIR or $FSG_LPIPS)")
    scoring = Scoring(proto, extractors, spaces, keep, reference, targets, lpips_net, with_kid, device)

    stream = None
    quantize = UINT8_RULES[proto.uint8]
    if loaded is not None:
        if pairs_wanted:
            if n is not None and n > targets.count:
                raise UserError(f"-n {n}: there are {targets.count:,} pairs (one sample per pair)")
            if n is not None and n < targets.count:
                breaking.append(f"one sample for each of the first {n:,} of the {targets.count:,} pairs")
            n = n if n is not None else targets.count
        sets = seed_sets(proto, n, seeds)
        stream = iter_samples(loaded, max(s.stop for s in sets), steps=steps, sampler=sampler, seed=seed,
                              batch_size=batch_size, device=device, conds=conds, masks=masks)
        sample_sets = [SampleSet(format_seeds(s), len(s),
                                 lambda s=s: _generated(stream, s, batch_size, rank, world, quantize)) for s in sets]
        departures = deviations(proto, [len(s) for s in sets], sets)
    else:
        sources = [open_images(spec, what="--samples", quantize=quantize) for spec in sample_specs]
        sample_sets = [SampleSet(src.label, src.count, lambda src=src: _positions(src.batches(batch_size)))
                       for src in sources]
        departures = deviations(proto, [src.count for src in sources], None)
    breaking += departures[0]
    notes += departures[1]

    per_set = [_score(s, scoring, loaded is not None, f"{model} ({s.label})" if loaded is not None else s.label,
                      batch_size, world, progress) for s in sample_sets]
    headline, mean = summarize(proto, [{k: v for k, v in s.items() if k not in ("set", "n")} for s in per_set])
    stamp = Stamp(
        evaluator=proto.evaluator, protocol=proto.name, features={e.name: e.sha256 for e in extractors},
        reference=reference.label, reference_format=reference.format, reference_sha256=reference.sha256,
        n=[s["n"] for s in per_set], protocol_n=proto.num_samples,
        seeds=[s.label for s in sample_sets] if loaded is not None else None, seed=seed if loaded is not None else None,
        samples=[str(s) for s in sample_specs] or None, model=str(model) if model is not None else None,
        model_sha256=sha256_file(loaded.path) if loaded is not None and loaded.path.is_file() else None,
        sampler=stream.plan.name if stream is not None else None, steps=steps if loaded is not None else None,
        nfe=stream.nfe if stream is not None else None, uint8=proto.uint8, comparable=not breaking,
        departures=breaking, notes=notes)
    return EvalResult(proto.name, proto.headline, headline, mean, per_set, stamp)


def make_reference(spec: str | Path, out: str | Path, *, protocol: str | None = None, features: str | None = None,
                   inception: str | Path | None = None, dinov2: str | Path | None = None, with_kid: bool = False,
                   batch_size: int = 256, device: torch.device | str = "cpu", ref_root: str | Path | None = None,
                   progress: Progress = no_progress, ref_images: int = ADM_REF_IMAGES, seed: int = 0) -> dict:
    """Compute the reference statistics of an image set and write them in the protocol's format: fsg's .npz (raw
    features too with `with_kid`), EDM's fid-refs .npz, EDM2's dataset-refs .pkl, an ADM reference batch (whole-set
    statistics plus `ref_images` images drawn without replacement by `seed`, in index order, as `arr_0`) or DDBM's
    .npz (every image in order as `arr_0`). Returns what was written: format, n, spaces, out."""
    proto = get_protocol(protocol, features)
    output_kind(out, (".pkl" if proto.ref_format == "edm2" else ".npz",))      # checked before the work
    if Path(out).resolve() == Path(spec).resolve():
        raise UserError(f"--out {out}: is the --make-ref source itself; write the reference to another file")
    source = open_images(spec, ref_root, what="--make-ref")
    extractors = _extractors(proto, device, inception, dinov2)
    spaces = _metric_spaces(proto)
    keep = {proto.features} if with_kid and proto.ref_format == "fsg" else set()
    chosen = None                                   # which images go into arr_0
    if proto.ref_format == "adm":
        picked = np.random.default_rng(seed).choice(source.count, min(ref_images, source.count), replace=False)
        chosen = np.zeros(source.count, bool)
        chosen[picked] = True
    elif proto.ref_format == "ddbm":
        chosen = np.ones(source.count, bool)
    kept: list[np.ndarray] = []

    def collect(batches: Batches) -> Batches:
        for index, images in batches:
            if chosen is not None:
                kept.append(images[torch.from_numpy(chosen[index.numpy()])].permute(0, 2, 3, 1).numpy())  # NHWC
            yield index, images

    acc = _pass(collect(_positions(source.batches(batch_size))), source.count, extractors, set(spaces.values()), keep,
                source.label, batch_size, progress)
    stats = {metric: stats_of(acc[space], space, source.label, source.resolution) for metric, space in spaces.items()}
    gauss = {metric: (s.mu, s.sigma) for metric, s in stats.items()}
    if chosen is not None and len({k.shape[1:] for k in kept}) > 1:
        raise UserError(f"--make-ref {spec}: images of different sizes cannot form arr_0 ({proto.ref_format} format)")
    images = np.concatenate(kept) if chosen is not None else None
    if proto.ref_format == "edm":
        write_edm_npz(out, *gauss["fid"])
    elif proto.ref_format == "edm2":
        write_edm2_pickle(out, source.count, gauss)
    elif proto.ref_format == "adm":
        write_adm_npz(out, images, gauss["fid"], gauss["sfid"])
    elif proto.ref_format == "ddbm":
        write_ddbm_npz(out, images, gauss["fid"])
    else:
        stats["fid"].save(out)
    return {"format": proto.ref_format, "n": source.count, "spaces": sorted(spaces.values()), "out": str(out),
            "label": source.label}
