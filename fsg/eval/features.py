"""The feature spaces FID-like distances are measured in, by name, and the networks that make them (each a
`fsg.eval.extractor.FeatureExtractor`)."""

from __future__ import annotations

from pathlib import Path

import torch

from fsg.errors import UserError
from fsg.eval.extractor import FeatureExtractor

SPACES = {   # what a statistics file records about how its features were made
    "inception": "clean-fid 'clean': 8-bit RGB, PIL bicubic float resize to 299, inception-2015-12-05 pool3 (2048)",
    "inception-tf": "legacy TensorFlow (clean-fid 'legacy_tensorflow', EDM, EDM2, ADM, DDBM): 8-bit RGB at native "
                    "resolution, TF-1 bilinear resize to 299 inside inception-2015-12-05, pool3 (2048)",
    "inception-tf-spatial": "ADM's sFID: mixed_6/conv of the legacy TensorFlow pass, first 7 channels, NHWC (2023)",
    "dinov2": "EDM2's FD_DINOv2: 8-bit RGB, bicubic antialiased resize to 224, ImageNet normalization, DINOv2 "
              "ViT-L/14 final-norm CLS token (1024)",
    "digits": "fsg digits CNN: 8-bit, BT.601 gray, antialiased bilinear resize to 28, global-pool features (128)",
}
FEATURES = ("inception", "inception-tf", "dinov2", "digits")   # the networks --features can name


def build_extractor(name: str, device: torch.device | str = "cpu", inception: str | Path | None = None,
                    dinov2: str | Path | None = None, logits_bias: bool = False) -> FeatureExtractor:
    """The extractor `name`; `inception` and `dinov2` are weight files (else the default locations); `logits_bias`
    adds the output layer's bias to the Inception logits (DDBM's Inception Score)."""
    if name == "inception":
        from fsg.eval.inception import load_inception

        return load_inception(inception, device)
    if name == "inception-tf":
        from fsg.eval.inception import load_inception_tf

        return load_inception_tf(inception, device, logits_bias)
    if name == "dinov2":
        from fsg.eval.dinov2 import load_dinov2

        return load_dinov2(dinov2, device)
    if name == "digits":
        from fsg.eval.digits import load_digits_features

        return load_digits_features(device=device)
    raise UserError(f"--features: unknown feature space '{name}' (choose {', '.join(FEATURES)})")
