"""The image sets `fsg eval-fid` reads, each as lazy uint8 NCHW batches, and the reference files it accepts.

- `.npz` with `arr_0` only: samples in the layout of ADM's evaluator (uint8 NHWC), or float images in [-1, 1]
  (NHWC or NCHW), quantized by the protocol's rule (`fsg.eval.images.UINT8_RULES`).
- reference statistics as the papers publish them (`fsg.io.refstats`): EDM's `fid-refs` `.npz` (`mu`, `sigma`),
  ADM's `VIRTUAL_*.npz` reference batches (whole-set `mu`, `sigma`, `mu_s`, `sigma_s` and 10,000 images in
  `arr_0`, both used), DDBM's reference `.npz`, EDM2's `dataset-refs/*.pkl`, and fsg's own stats `.npz`.
- a folder (recursively, sorted) or a `.zip` of images, decoded to RGB as clean-fid does.
- the built-in sets `digits`, `mnist5k` and `cifar10-train` (from a local CIFAR-10 root), read through
  `fsg.data.build_dataset`, i.e. exactly the pixels a model trained on them saw.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fsg.errors import UserError
from fsg.eval.images import to_uint8
from fsg.eval.stats import Stats
from fsg.io.refstats import RefFile, read_reference

BUILTIN_SETS = ("digits", "mnist5k", "cifar10-train")
CIFAR10_ENV = "FSG_CIFAR10"
Quantize = Callable[[Tensor], Tensor]      # float images in [-1, 1] -> uint8
# The feature space of each metric's statistics in the published formats (fsg's files record their own; EDM's
# mu/sigma-only files, which other tools also write, do not say).
FORMAT_SPACES = {"adm": {"fid": "inception-tf", "sfid": "inception-tf-spatial"}, "ddbm": {"fid": "inception-tf"},
                 "edm2": {"fid": "inception-tf", "fd_dinov2": "dinov2"}, "edm": {"fid": None}}


@dataclass(frozen=True)
class ImageSource:
    """A set of images read lazily: `batches(batch_size)` yields uint8 tensors [B, C, H, W]."""

    label: str                                    # what to print and record (a path or a set name)
    count: int
    resolution: int                               # height of the first image
    read: Callable[[int], Iterator[Tensor]]       # batch_size -> batches
    kind: str = "images"                          # 'images' (an .npz), 'folder' or 'data set', for the stamp

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        return self.read(batch_size)


@dataclass(frozen=True)
class Reference:
    """A reference file: its statistics by feature space (None: a space the file does not record) and its
    images (`arr_0`), if any."""

    label: str
    format: str                                   # fsg.io.refstats formats: 'edm', 'adm', 'ddbm', 'edm2', 'fsg'
    sha256: str
    stats: dict[str | None, Stats]
    images: ImageSource | None


def _nchw(array: np.ndarray, label: str) -> np.ndarray:
    """The array's images as an NCHW view: NHWC when the last axis has 1-4 channels, else NCHW; (N, H, W) is gray."""
    if array.ndim == 3:
        return array[:, None]
    if array.ndim == 4 and array.shape[-1] in (1, 3, 4):
        return array.transpose(0, 3, 1, 2)
    if array.ndim == 4 and array.shape[1] in (1, 3, 4):
        return array
    raise UserError(f"{label}: arr_0 of shape {array.shape} is not a batch of images (N, H, W, C) or (N, C, H, W)")


def _array_batches(images: np.ndarray, label: str, batch_size: int, quantize: Quantize) -> Iterator[Tensor]:
    """uint8 batches of an NCHW array of uint8 pixels or floats in [-1, 1]."""
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
        if chunk.dtype == torch.uint8:
            yield chunk
            continue
        if not chunk.is_floating_point():
            raise UserError(f"{label}: arr_0 has dtype {images.dtype}; expected uint8 pixels or floats in [-1, 1]")
        if not torch.isfinite(chunk).all():
            raise UserError(f"{label}: float images hold NaN or inf")
        if chunk.numel() and (chunk.min() < -1.01 or chunk.max() > 1.01):
            raise UserError(f"{label}: float images must lie in [-1, 1] (found [{chunk.min():.3g}, {chunk.max():.3g}])")
        yield quantize(chunk)


def array_source(images: np.ndarray, label: str, quantize: Quantize = to_uint8) -> ImageSource:
    """Images held in an array: uint8 (ADM layout, NHWC) or float in [-1, 1], NHWC or NCHW."""
    nchw = _nchw(images, label)
    if len(nchw) == 0:
        raise UserError(f"{label}: holds no image")
    return ImageSource(label, len(nchw), int(nchw.shape[2]), lambda bs: _array_batches(nchw, label, bs, quantize))


def _file_batches(files: list, batch_size: int) -> Iterator[Tensor]:
    """Decode files to RGB uint8 and batch consecutive images of equal size (a size change starts a new batch)."""
    batch: list[Tensor] = []
    for f in files:
        image = f.read(3)  # (3, H, W)
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            yield torch.stack(batch)
            batch = []
        batch.append(image)
    if batch:
        yield torch.stack(batch)


def folder_source(path: Path) -> ImageSource:
    """Every image under a folder (recursively, sorted by relative path) or in a .zip archive."""
    from fsg.data.images import list_folder, list_zip

    files = list_zip(path) if path.is_file() else list_folder(path)
    if not files:
        raise UserError(f"{path}: no image (.png, .jpg, .jpeg, .webp) found")
    first = files[0].read(3)
    return ImageSource(str(path), len(files), int(first.shape[1]), lambda bs: _file_batches(files, bs), "folder")


def dataset_source(name: str, root: str | Path | None = None) -> ImageSource:
    """A built-in set through `fsg.data.build_dataset` at native resolution: digits, mnist5k, or cifar10-train
    (needs the folder holding `cifar-10-batches-py`: `root`, else $FSG_CIFAR10)."""
    from fsg.data import build_dataset
    from fsg.data.config import DataConfig

    if name == "cifar10-train":
        root = root or os.environ.get(CIFAR10_ENV)
        if root is None:
            raise UserError(f"cifar10-train needs a local CIFAR-10 copy: pass --ref-root DIR or set {CIFAR10_ENV}=DIR "
                            "(DIR holds cifar-10-batches-py, extracted from cifar-10-python.tar.gz)")
        cfg = DataConfig(source="cifar10", path=str(root))
    elif name in ("digits", "mnist5k"):
        cfg = DataConfig(source=name)
    else:
        raise UserError(f"unknown data set '{name}' (choose {', '.join(BUILTIN_SETS)})")
    data = build_dataset(cfg, split="train")

    def read(batch_size: int) -> Iterator[Tensor]:
        for start in range(0, len(data), batch_size):
            stop = min(start + batch_size, len(data))
            yield to_uint8(torch.stack([data[i]["x"] for i in range(start, stop)]))  # (B, C, H, W)

    return ImageSource(name, len(data), int(data.shape[-1]), read, "data set")


def reference_file(path: Path, quantize: Quantize = to_uint8) -> Reference | ImageSource:
    """A reference file read as its format says (`fsg.io.refstats`); a file of images only is an ImageSource."""
    ref: RefFile = read_reference(path)
    images = array_source(ref.images, str(path), quantize) if ref.images is not None else None
    if ref.format == "images":
        return images
    stats: dict[str | None, Stats] = {}
    for metric, (mu, sigma) in ref.gaussians.items():
        if ref.format == "fsg":
            stat = Stats.from_arrays({"mu": mu, "sigma": sigma, **ref.arrays}, str(path))
        else:
            stat = Stats(mu, sigma, ref.num_images, FORMAT_SPACES[ref.format][metric], None, str(path))
        stats[stat.features] = stat
    return Reference(str(path), ref.format, ref.sha256, stats, images)


def open_source(spec: str | Path, root: str | Path | None = None, *, what: str = "--samples",
                quantize: Quantize = to_uint8) -> ImageSource | Reference:
    """An image set or a reference file from a command-line spec: a built-in set name, a .npz, an EDM2 .pkl, a folder
    or a .zip. Float images are quantized with `quantize`."""
    if str(spec) in BUILTIN_SETS:
        return dataset_source(str(spec), root)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"{what} {spec}: no such file or folder (nor a built-in set: {', '.join(BUILTIN_SETS)})")
    if path.is_dir() or path.suffix.lower() == ".zip":
        return folder_source(path)
    if path.suffix.lower() not in (".npz", ".pkl"):
        raise UserError(f"{what} {spec}: expected a .npz or .pkl file, an image folder, a .zip or one of "
                        f"{', '.join(BUILTIN_SETS)}")
    return reference_file(path, quantize)


def open_images(spec: str | Path, root: str | Path | None = None, *, what: str = "--samples",
                quantize: Quantize = to_uint8) -> ImageSource:
    """Like `open_source`, for places that need images (samples, paired targets, --make-ref): a reference file
    counts by its images (`arr_0`)."""
    source = open_source(spec, root, what=what, quantize=quantize)
    if isinstance(source, Reference):
        if source.images is None:
            raise UserError(f"{what} {spec}: holds statistics ({source.format} format), not images")
        return source.images
    return source
