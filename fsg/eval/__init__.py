"""Evaluation: FID/KID through clean-fid's protocol or fsg's digits feature space, reference statistics,
paired metrics (MSE, LPIPS) and the distances the toy benchmarks use.

    from fsg.eval import evaluate_fid
    result = evaluate_fid("digits", samples="samples.npz", features="digits", with_kid=True)

Modules: `stats` (the math: Fréchet distance, FeatureStats, KID, sliced Wasserstein, RBF MMD),
`inception` (offline, sha256-checked clean-fid Inception), `digits` (the digit CNN feature space),
`features` (the registry), `sources` (sample files, folders, data sets, stats files), `fid`
(orchestration), `paired` (MSE, LPIPS), `train_features` (trains the digits network).
"""

from fsg.eval.fid import FIDResult, evaluate_fid, make_reference
from fsg.eval.stats import FeatureStats, frechet_distance, kid, mmd_rbf, sliced_wasserstein

__all__ = ["FIDResult", "FeatureStats", "evaluate_fid", "frechet_distance", "kid", "make_reference", "mmd_rbf",
           "sliced_wasserstein"]
