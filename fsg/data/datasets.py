"""The two dataset classes `build_dataset` returns, and the image readers behind `ImageDataset`.

An item is a dict: `x` (float32, (C, H, W) in [-1, 1] or a 2-D point), `label` (int64 scalar, -1 when
unlabeled), `index` (int64 scalar, the item's index in this dataset) and, for paired or degraded data,
`cond` (float32 (Cc, H, W) in [-1, 1]). Every item is a pure function of its index.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from fsg.data.degrade import degrade
from fsg.data.images import ImageFile, convert_channels, resize_square, to_unit

# An image reader maps a source index to (x, cond or None), both (C, resolution, resolution) in [-1, 1].
ImageReader = Callable[[int], tuple[torch.Tensor, torch.Tensor | None]]


class VectorDataset(torch.utils.data.Dataset):
    """Points (N, D) of a toy distribution, unlabeled."""

    kind = "vector"
    cond_shape = None
    num_classes = 0

    def __init__(self, points: torch.Tensor, name: str):
        self.points = points  # (N, D)
        self.shape = tuple(points.shape[1:])
        self.name = name

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.points[i].clone(), "label": torch.tensor(-1), "index": torch.tensor(i)}


class ImageDataset(torch.utils.data.Dataset):
    """The images `indices` of a reader, then k-times average-pooled (`downsample`) and given the
    condition `degrade` made from x (its random strokes seeded by the item's index)."""

    kind = "image"

    def __init__(self, read: ImageReader, indices: torch.Tensor, labels: torch.Tensor | None, num_classes: int,
                 name: str, *, downsample: int = 1, degradation: str | None = None):
        self.read = read                    # source index -> (x, cond or None)
        self.indices = indices              # (N,) source index of each item of this split
        self.labels = labels                # class of every source index, None when labels are off
        self.num_classes = num_classes      # 0 when labels are off
        self.name = name
        self.downsample = downsample        # average-pool factor applied to x (and cond)
        self.degradation = degradation      # name of the degradation making cond from x, or None
        first = self[0]
        self.shape = tuple(first["x"].shape)
        self.cond_shape = tuple(first["cond"].shape) if "cond" in first else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        source_index = int(self.indices[i])
        x, cond = self.read(source_index)
        if self.downsample > 1:
            x = F.avg_pool2d(x, self.downsample)  # (C, H/k, W/k)
            cond = None if cond is None else F.avg_pool2d(cond, self.downsample)
        if self.degradation is not None:
            cond = degrade(x, self.degradation, torch.Generator().manual_seed(i))
        label = torch.tensor(-1) if self.labels is None else self.labels[source_index].clone()
        item = {"x": x, "label": label, "index": torch.tensor(i)}
        if cond is not None:
            item["cond"] = cond
        return item


class TensorImages:
    """In-memory images (N, C, H, W), uint8 or float in [-1, 1], converted and resized (`mode`) per item."""

    def __init__(self, images: torch.Tensor, resolution: int, channels: int, mode: str = "bilinear"):
        self.images, self.resolution, self.channels, self.mode = images, resolution, channels, mode

    def __call__(self, i: int) -> tuple[torch.Tensor, None]:
        x = convert_channels(to_unit(self.images[i]), self.channels)
        return resize_square(x, self.resolution, self.mode), None


class FileImages:
    """Image files, each decoded, resized (shorter side, `mode`) and centre-cropped."""

    def __init__(self, files: list[ImageFile], resolution: int, channels: int, mode: str = "bilinear"):
        self.files, self.resolution, self.channels, self.mode = files, resolution, channels, mode

    def __call__(self, i: int) -> tuple[torch.Tensor, None]:
        return resize_square(self.files[i].read_unit(self.channels), self.resolution, self.mode), None


class SideBySideImages:
    """pix2pix A|B files: the left half A is the condition and the right half B the target (or swapped);
    the target is resized with `mode`, the condition with `cond_mode`."""

    def __init__(self, files: list[ImageFile], resolution: int, channels: int, swap: bool, mode: str = "bilinear",
                 cond_mode: str = "bilinear"):
        self.files, self.resolution, self.channels, self.swap = files, resolution, channels, swap
        self.mode, self.cond_mode = mode, cond_mode

    def __call__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.files[i].read_unit(self.channels).chunk(2, dim=-1)  # (C, H, W/2) each
        cond, x = (b, a) if self.swap else (a, b)
        return resize_square(x, self.resolution, self.mode), resize_square(cond, self.resolution, self.cond_mode)


class PairedImages:
    """Condition and target files of the same name, both resized and centre-cropped: the target with `mode`,
    the condition with `cond_mode` (DIODE: bicubic RGB targets, nearest surface-normal conditions)."""

    def __init__(self, conds: list[ImageFile], targets: list[ImageFile], resolution: int, channels: int,
                 mode: str = "bilinear", cond_mode: str = "bilinear"):
        self.conds, self.targets, self.resolution, self.channels = conds, targets, resolution, channels
        self.mode, self.cond_mode = mode, cond_mode

    def __call__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.targets[i].read_unit(self.channels)
        cond = self.conds[i].read_unit(self.channels)
        return resize_square(x, self.resolution, self.mode), resize_square(cond, self.resolution, self.cond_mode)
