"""The feature spaces FID/KID are measured in, by name: `inception` (clean-fid) and `digits` (fsg's digit CNN)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from fsg.errors import UserError

FEATURES = ("inception", "digits")
PROTOCOLS = {   # what a statistics file records about how its features were made
    "inception": "clean-fid 'clean': 8-bit RGB, PIL bicubic float resize to 299, inception-2015-12-05 pool3 (2048)",
    "digits": "fsg digits CNN: 8-bit, BT.601 gray, antialiased bilinear resize to 28, global-pool features (128)",
}


class FeatureExtractor(Protocol):
    """uint8-valued images NCHW (any size, 1-4 channels) -> features [B, dim] on `device`."""

    name: str
    dim: int
    device: torch.device

    def __call__(self, images: Tensor) -> Tensor: ...


def build_extractor(name: str, device: torch.device | str = "cpu", inception: str | Path | None = None) -> FeatureExtractor:
    """The extractor `name`; `inception` is the weight file for 'inception' (else the default locations)."""
    if name == "inception":
        from fsg.eval.inception import load_inception

        return load_inception(inception, device)
    if name == "digits":
        from fsg.eval.digits import load_digits_features

        return load_digits_features(device=device)
    raise UserError(f"--features: unknown feature space '{name}' (choose {', '.join(FEATURES)})")
