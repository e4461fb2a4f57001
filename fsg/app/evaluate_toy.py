"""`fsg eval-toy`: the distances of 2-D samples to fresh points of their toy distribution (the figures of the
README's toy tables), from a samples .npz or generated on the fly."""

from __future__ import annotations

from pathlib import Path

import torch

from fsg.app.sample import read_samples
from fsg.data.toys import TOY_NAMES
from fsg.errors import UserError
from fsg.eval.quality import TOY_REF_SEED, toy_distances
from fsg.models.load import load_model
from fsg.progress import Progress
from fsg.sampling.generate import iter_samples

N_REF = 5000           # fresh reference points: the README's and the benchmarks' toy figures


def toy_name(ref: str | None, meta: dict | None) -> str:
    """The toy of `--ref` ('moons' or 'toy:moons'), else the one the model was trained on."""
    if ref is None:
        source = ((meta or {}).get("data") or {}).get("source")
        if not (isinstance(source, str) and source.startswith("toy:")):
            raise UserError(f"--ref: give the toy data set (toy:{', toy:'.join(TOY_NAMES)})")
        ref = source
    name = ref.removeprefix("toy:")
    if name not in TOY_NAMES:
        raise UserError(f"--ref {ref}: not a toy data set (toy:{', toy:'.join(TOY_NAMES)})")
    return name


def evaluate_toy(*, samples: str | Path | None = None, model: str | Path | None = None, ref: str | None = None,
                 n: int = 5000, steps: int | None = None, sampler: str | None = None, seed: int = 0,
                 batch_size: int = 64, device="cpu", n_ref: int = N_REF, progress: bool = True) -> dict:
    """Sliced Wasserstein-2 (`sw`) and RBF MMD^2 (`mmd`) of 2-D samples (an .npz's float32 (N, 2) `arr_0`, or n
    samples of `model`, seeds 0..n-1 of `seed`) against `n_ref` fresh points of the toy (seed TOY_REF_SEED, never the
    training set): fsg.eval.quality.toy_distances. Returns the distances and what was measured."""
    if (samples is None) == (model is None):
        raise UserError("give exactly one of --samples FILE.npz and --model M")
    if n_ref < 2:
        raise UserError(f"--n-ref must be at least 2, got {n_ref}")
    result: dict = {}
    if samples is not None:
        points, _ = read_samples(samples)
        x = torch.from_numpy(points).float()
        name = toy_name(ref, None)
        result["samples"] = str(samples)
    else:
        if n < 2:
            raise UserError(f"-n must be at least 2, got {n}")
        loaded = load_model(model, device)
        name = toy_name(ref, loaded.meta)
        stream = iter_samples(loaded, n, steps=steps, sampler=sampler, seed=seed, batch_size=batch_size, device=device)
        parts = []
        with Progress(n, "sample", unit="sample", enabled=progress) as bar:
            for _, xb, _ in stream:
                parts.append(xb)
                bar.advance(len(xb), nfe=stream.nfe)
        x = torch.cat(parts)
        result |= {"model": str(model), "sampler": stream.plan.name, "nfe": stream.nfe, "seed": seed}
    if x.ndim != 2 or x.shape[1] != 2:
        raise UserError(f"expected 2-D points (N, 2); got samples of shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise UserError("the samples hold non-finite values (NaN or inf)")
    distances = toy_distances(x, name, n_ref)
    return {**distances, "n": len(x), "ref": f"toy:{name}", "n_ref": n_ref, "ref_seed": TOY_REF_SEED, **result}
