"""Evaluation on tensors: FID/KID in clean-fid's Inception or fsg's digits feature space, feature statistics,
paired metrics (MSE, LPIPS) and the distances the toy benchmarks use. The file side (sample files, reference
folders, statistics files, sampling on the fly) is `fsg.app.evaluate`.

Modules: `stats` (the math: Fréchet distance, FeatureStats, Stats, KID, sliced Wasserstein, RBF MMD),
`inception` (offline, sha256-checked clean-fid Inception), `digits` (the digit CNN feature space),
`features` (the registry), `fid` (features of streamed batches), `paired` (MSE, LPIPS), `quality` (toy and
digits metrics of sample tensors), `train_features` (trains the digits network).
"""

from fsg.eval.stats import FeatureStats, Stats, frechet_distance, kid, mmd_rbf, sliced_wasserstein

__all__ = ["FeatureStats", "Stats", "frechet_distance", "kid", "mmd_rbf", "sliced_wasserstein"]
