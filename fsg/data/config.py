"""The `data:` section of a recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

Resize = Literal["bilinear", "bicubic", "nearest"]


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"                              # toy:moons|toy:8gaussians|toy:checkerboard|toy:swissroll|digits|mnist5k|cifar10|folder|zip|paired-ab|paired-folders
    path: str | None = None                             # folder / zip file / CIFAR-10 root / side-by-side pairs / first folder of a pair
    path_b: str | None = None                           # second (target) folder for paired-folders
    resolution: Annotated[int, "[1, inf)"] | None = None  # images are resized / center-cropped to this size (None: native)
    resize: Resize = "bilinear"                         # interpolation of that resize: bilinear | bicubic (antialiased) | nearest
    resize_cond: Resize | None = None                   # paired sources: the condition's (None: as resize; DIODE normals: nearest)
    channels: Annotated[int, "1 or 3"] | None = None    # convert images to 1 (gray) or 3 (RGB) channels (None: native)
    labels: bool = False                                # use class labels (sub-folder names, dataset.json, digits/MNIST classes)
    flip: bool = False                                  # random horizontal flips (deterministic under the seed)
    degrade: str | None = None                          # make a condition image on the fly: canny | gray | down<k> | mask-center | mask-strokes
    swap: bool = False                                  # paired-ab: the condition is the right half instead of the left
    downsample: Annotated[int, "[1, inf)"] = 1          # train on k-times downsampled images (PaGoDA's low-resolution teacher)
    toy_size: Annotated[int, "[1, inf)"] = 65536        # number of points of a 2-D toy data set
    holdout: Annotated[float, "[0, 1)"] = 0.0           # fraction held out as the 'test' split (conditions for bridge sampling)
    workers: Annotated[int, "[0, inf)"] = 0             # DataLoader worker processes
