"""Evaluation on tensors: the papers' protocols (EDM, EDM2, ADM, clean-fid, the bridges'), FID, sFID, FD_DINOv2, KID,
Inception Score, precision/recall, paired metrics (MSE, LPIPS) and the distances the toy benchmarks use. The file
side (sample files, reference folders and statistics files, sampling on the fly, the stamp) is `fsg.app.evaluate`;
published reference formats are `fsg.io.refstats`.

Modules: `stats` (the math: Fréchet distance, FeatureStats, Stats, KID, sliced Wasserstein, RBF MMD),
`protocols` (the protocols by name, seed sets, min/mean), `extractor` (what a feature network is), `features` (the
networks by name), `inception` (offline, sha256-checked Inception: clean-fid's "clean" and the legacy TensorFlow
path with sFID features and logits), `dinov2` (DINOv2 ViT-L/14 for FD_DINOv2), `digits` (the digit CNN feature
space), `fid` (statistics of streamed batches), `inception_score`, `precision_recall`, `paired` (MSE, LPIPS),
`quality` (toy and digits metrics of sample tensors), `train_features` (trains the digits network).
"""

from fsg.eval.stats import FeatureStats, Stats, frechet_distance, kid, mmd_rbf, sliced_wasserstein

__all__ = ["FeatureStats", "Stats", "frechet_distance", "kid", "mmd_rbf", "sliced_wasserstein"]
