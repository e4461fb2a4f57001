"""What a feature network is to the metrics: uint8 images in, its FID features out (`__call__`), and every output the
protocols use (`outputs`): 'features', and for `inception-tf` also 'spatial' (sFID) and 'logits' (Inception Score).
Each records the sha256 of its weight file, for the stamp of a result. The networks by name: `fsg.eval.features`."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class FeatureExtractor(Protocol):
    """uint8-valued images NCHW (any size, 1-4 channels) -> features [B, dim] on `device`."""

    name: str
    dim: int
    device: torch.device
    sha256: str | None      # of the weight file

    def __call__(self, images: Tensor) -> Tensor: ...

    def outputs(self, images: Tensor) -> dict[str, Tensor]: ...


class SingleOutput:
    """For a network whose only output is its features."""

    def outputs(self, images: Tensor) -> dict[str, Tensor]:
        return {"features": self(images)}


def space_of(network: str, output: str) -> str:
    """The feature space of one output of a network: 'features' is the network's own, 'spatial' its '-spatial'."""
    return network if output == "features" else f"{network}-{output}"
