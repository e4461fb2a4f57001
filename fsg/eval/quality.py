"""Quality numbers the CPU benchmarks and `fsg demo` report: distances to fresh toy data, digits FID."""

from __future__ import annotations

from functools import lru_cache

import torch

from fsg.eval.stats import FeatureStats, frechet_distance, mmd_rbf, sliced_wasserstein

TOY_REF_SEED = 123     # fresh reference points: never the training set


def toy_distances(samples: torch.Tensor, toy: str = "moons", n_ref: int = 5000) -> dict[str, float]:
    """Sliced Wasserstein-2 and RBF MMD^2 between 2-D samples and fresh points of the toy distribution."""
    from fsg.data import sample_toy

    ref = sample_toy(toy, n_ref, torch.Generator().manual_seed(TOY_REF_SEED))
    return {"sw": sliced_wasserstein(samples, ref, generator=torch.Generator().manual_seed(0)),
            "mmd": mmd_rbf(samples, ref)}


@lru_cache(maxsize=4)
def _digits_reference(resolution: int):
    from fsg.data import build_dataset
    from fsg.data.config import DataConfig
    from fsg.eval.features import build_extractor
    from fsg.eval.images import to_uint8

    extractor = build_extractor("digits")
    data = build_dataset(DataConfig(source="digits", resolution=resolution))
    images = torch.stack([data[i]["x"] for i in range(len(data))])
    acc = FeatureStats(extractor.dim)
    acc.update(extractor(to_uint8(images)))
    return extractor, acc.mu(), acc.sigma()


def digits_fid(samples: torch.Tensor) -> float:
    """FID in the feature space of fsg's bundled digits classifier against all 1,797 digits at the
    samples' resolution (real digits against themselves: 0)."""
    from fsg.eval.images import to_uint8

    extractor, mu, sigma = _digits_reference(int(samples.shape[-1]))
    acc = FeatureStats(extractor.dim)
    for chunk in samples.split(512):
        acc.update(extractor(to_uint8(chunk)))
    return frechet_distance(acc.mu(), acc.sigma(), mu, sigma)
