"""The evaluation protocols of the papers, by name (`fsg eval-fid --protocol NAME`), and their seed sets.

| protocol | reproduces | reports | samples and seeds |
|---|---|---|---|
| `fsg` (default) | fsg's own: FID in the `--features` space | FID (KID with --kid) | any number (default 50,000), seeds 0.. |
| `clean` | clean-fid `compute_fid(mode="clean")` | FID (KID) | any number (default 50,000) |
| `legacy-tf` | clean-fid `compute_fid(mode="legacy_tensorflow")` | FID (KID) | any number (default 50,000) |
| `edm` | NVlabs/edm `fid.py` (README: "the minimum of three") | FID: min and mean of 3 sets | 50,000 each; seeds 0-49999, 50000-99999, 100000-149999 |
| `edm2` | NVlabs/edm2 `calculate_metrics.py` (README: "reported the minimum") | FID, FD_DINOv2: min and mean | as `edm` |
| `adm` | openai/guided-diffusion `evaluations/evaluator.py` | FID, sFID, IS, precision, recall | 50,000; seeds 0-49999 |
| `bridge` | alexzhou907/DDBM `evaluations/evaluator.py` (used by DBIM and CDBM) | FID, IS, LPIPS, MSE | one sample per pair |

Seeds. EDM generates image s from its own generator seeded with s. In fsg a sample depends only on (run seed S,
index i) (`fsg.sampling.noise`): index i of `--seed S` has its own stream, and distinct indices never share one, so
`--seeds 0-49999` means indices 0..49999 of the run seeded S (default 0). That is the reproducible analogue of EDM's
seed set, not its pixels: fsg's index s is not EDM's `torch.Generator().manual_seed(s)`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

from fsg.errors import UserError

DEFAULT_N = 50_000      # samples of a protocol that fixes no number (clean-fid's, fsg's)
HIGHER_IS_BETTER = ("is", "precision", "recall")     # for the other metrics (distances) lower is better


@dataclass(frozen=True)
class Protocol:
    name: str
    evaluator: str                  # the code it reproduces, for the stamp
    features: str | None            # network of the FID ('inception-tf', 'inception'); None: from --features
    metrics: tuple[str, ...]        # what it reports
    num_samples: int | None         # per seed set; None: any number (bridge: one per pair)
    seed_starts: tuple[int, ...]    # first seed of each set (EDM: 0, 50000, 100000)
    headline: str                   # 'min' over the sets (EDM, EDM2) or their 'mean'
    uint8: str                      # how float samples become 8 bits: 'round' or 'floor' (fsg.eval.images)
    ref_format: str                 # what --make-ref writes: 'fsg', 'edm', 'edm2', 'adm' or 'ddbm' (fsg.io.refstats)
    logits_bias: bool = False       # Inception Score logits with the output bias (DDBM) or without (ADM)
    paired: bool = False            # one sample per target pair, with LPIPS and MSE as DDBM computes them


PROTOCOLS = {p.name: p for p in (
    Protocol("fsg", "fsg eval-fid", None, ("fid",), None, (0,), "mean", "round", "fsg"),
    Protocol("clean", "clean-fid compute_fid(mode='clean')", "inception", ("fid",), None, (0,), "mean", "round", "fsg"),
    Protocol("legacy-tf", "clean-fid compute_fid(mode='legacy_tensorflow')", "inception-tf", ("fid",), None, (0,),
             "mean", "round", "fsg"),
    Protocol("edm", "NVlabs/edm fid.py", "inception-tf", ("fid",), 50_000, (0, 50_000, 100_000), "min", "round", "edm"),
    Protocol("edm2", "NVlabs/edm2 calculate_metrics.py", "inception-tf", ("fid", "fd_dinov2"), 50_000,
             (0, 50_000, 100_000), "min", "round", "edm2"),
    Protocol("adm", "openai/guided-diffusion evaluations/evaluator.py", "inception-tf",
             ("fid", "sfid", "is", "precision", "recall"), 50_000, (0,), "mean", "floor", "adm"),
    Protocol("bridge", "alexzhou907/DDBM evaluations/evaluator.py", "inception-tf", ("fid", "is", "lpips", "mse"),
             None, (0,), "mean", "floor", "ddbm", logits_bias=True, paired=True),
)}


def get_protocol(name: str | None, features: str | None = None) -> Protocol:
    """The protocol `name` (default 'fsg'); `features` names the FID network of 'fsg' and is refused by the others,
    which fix theirs."""
    protocol = PROTOCOLS.get(name or "fsg")
    if protocol is None:
        raise UserError(f"--protocol: unknown protocol '{name}' (choose {', '.join(PROTOCOLS)})")
    if protocol.features is None:
        return replace(protocol, features=features or "inception")
    if features is not None and features != protocol.features:
        raise UserError(f"--features {features}: protocol '{protocol.name}' measures in '{protocol.features}'; "
                        "--features applies without --protocol")
    return protocol


def parse_seeds(text: str) -> tuple[range, ...]:
    """Seed sets from '0-49999' (one set, both ends included, as EDM's --seeds) or '0-49999,50000-99999' (one set per
    comma-separated range); a single number is a set of one seed."""
    sets = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            start, stop = int(lo), int(hi if sep else lo) + 1
        except ValueError:
            raise UserError(f"--seeds: expected ranges such as 0-49999 or 0-49999,50000-99999, got '{text}'") from None
        if start < 0 or stop <= start:
            raise UserError(f"--seeds: '{part}' is not a range of non-negative seeds, low to high")
        sets.append(range(start, stop))
    return tuple(sets)


def format_seeds(seeds: range) -> str:
    """'0-49999' for range(0, 50000), as EDM writes seed ranges."""
    return f"{seeds.start}-{seeds.stop - 1}"


def seed_sets(protocol: Protocol, n: int | None = None, seeds: str | None = None) -> tuple[range, ...]:
    """The seed sets of a run: `seeds` as given, else the protocol's sets cut or grown to `n` samples each (a
    reduced run's sample i is that of the full run), else the protocol's own (50,000 when it fixes none)."""
    if seeds is not None:
        if n is not None:
            raise UserError("give -n or --seeds, not both (--seeds 0-999 is 1,000 samples)")
        return parse_seeds(seeds)
    count = n if n is not None else protocol.num_samples or DEFAULT_N
    if count < 1:
        raise UserError(f"-n {count}: needs at least one sample")
    return tuple(range(start, start + count) for start in protocol.seed_starts)


def deviations(protocol: Protocol, sizes: list[int], seeds: tuple[range, ...] | None) -> tuple[list[str], list[str]]:
    """What in a run differs from the protocol, one line each: (lines that make the numbers not comparable with the
    published ones, lines that do not). `sizes` are the numbers of samples of the sets; `seeds` their seed sets
    (None for sample files). Two empty lists: the run is the protocol's."""
    breaking, other = [], []
    if protocol.num_samples is not None and any(size != protocol.num_samples for size in sizes):
        counts = ", ".join(f"{size:,}" for size in sorted(set(sizes)))
        breaking.append(f"{counts} samples per set, not the protocol's {protocol.num_samples:,}")
    if len(protocol.seed_starts) > 1 and len(sizes) != len(protocol.seed_starts):
        breaking.append(f"{len(sizes)} set(s), not the protocol's {len(protocol.seed_starts)}: the {protocol.headline} "
                        f"is over {len(sizes)}")
    if seeds is not None and protocol.num_samples is not None and not breaking:
        expected = tuple(range(s, s + protocol.num_samples) for s in protocol.seed_starts)
        if seeds != expected:       # other seeds of the same count: the same protocol on other samples
            other.append(f"seeds {', '.join(map(format_seeds, seeds))} instead of the protocol's "
                         f"{', '.join(map(format_seeds, expected))}")
    return breaking, other


def summarize(protocol: Protocol, per_set: list[dict[str, float | None]]) -> tuple[dict, dict | None]:
    """(headline, mean) of each metric over the sets. The headline is the protocol's rule: EDM's and EDM2's minimum
    of each distance over the sets (taken per metric, as their READMEs describe; the maximum of a score), else the
    mean; `mean` is None for a single set. A metric that is None in a set stays None."""
    def over_sets(metric: str, rule) -> float | None:
        values = [s[metric] for s in per_set]
        return None if any(v is None for v in values) else float(rule(values))

    metrics = per_set[0].keys()
    mean = {m: over_sets(m, statistics.fmean) for m in metrics}
    if protocol.headline == "min":
        headline = {m: over_sets(m, max if m in HIGHER_IS_BETTER else min) for m in metrics}
    else:
        headline = mean
    return headline, (mean if len(per_set) > 1 else None)
