"""Pixel conversions shared by the feature extractors: [-1, 1] floats to 8-bit values, channel counts.

Every metric scores what a saved PNG would hold: samples are quantized to 8 bits first, then each extractor
resizes them. Two rules are in use, and a protocol names the one of the code it reproduces (`UINT8_RULES`):
`round`, StyleGAN/EDM/EDM2/clean-fid's `x * 127.5 + 128` clamped and truncated (round half up of 127.5 (x + 1)),
and `floor`, guided-diffusion's and DDBM's `((x + 1) * 127.5).clamp(0, 255).to(uint8)`, on average half a level
darker.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fsg.data.degrade import luma


def to_uint8(images: Tensor) -> Tensor:
    """Float images in [-1, 1] (NCHW) -> uint8 in [0, 255], the 8-bit value a saved PNG holds."""
    return (images.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def to_uint8_floor(images: Tensor) -> Tensor:
    """Float images in [-1, 1] -> uint8 as guided-diffusion's `scripts/image_sample.py` and DDBM's sampler convert
    them: floor of 127.5 (x + 1)."""
    return ((images.detach().float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)


UINT8_RULES = {"round": to_uint8, "floor": to_uint8_floor}


def to_rgb(images: Tensor) -> Tensor:
    """uint8 NCHW with 1-4 channels -> 3 channels, as PIL's `convert("RGB")` (gray replicated, alpha dropped)."""
    c = images.shape[1]
    if c in (1, 2):
        return images[:, :1].expand(-1, 3, -1, -1)
    if c in (3, 4):
        return images[:, :3]
    raise ValueError(f"images must have 1 to 4 channels, got {c}")


def to_gray(images: Tensor) -> Tensor:
    """uint8 NCHW with 1-4 channels -> float gray [N, 1, H, W] in [0, 1] (BT.601 luma, as PIL's `convert("L")`)."""
    x = images[:, :1] if images.shape[1] in (1, 2) else to_rgb(images)
    return luma(x.float() / 255)
