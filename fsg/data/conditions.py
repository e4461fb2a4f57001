"""Condition images (and inpainting masks) of a bridge model's samples: from a folder, an .npz, or a split of the
data the model records (`meta["data"]`). Each source maps sample indices to their conditions, item i mod M."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from fsg.data.config import DataConfig
from fsg.data.degrade import make_mask
from fsg.data.images import ImageFile, is_image_name, list_folder, resize_square
from fsg.data.sources import build_dataset
from fsg.errors import UserError
from fsg.io.config import ConfigError, from_dict

Conditions = Callable[[Sequence[int]], torch.Tensor]   # sample indices -> their condition batch
Masks = Callable[[Sequence[int]], torch.Tensor]        # sample indices -> their masks, 1 on the hole (N, 1|C, H, W)
DATA_SPLITS = {"data:train": "train", "data:test": "test"}   # --cond values naming a split of the model's data


class DataConds:
    """Condition i = the condition of item i mod M of a split of the model's data; for inpainting data
    (`data.degrade: mask-*`) also the hole each item was made with (`masks`)."""
    def __init__(self, items, degradation: str | None):
        self.items = items                  # an ImageDataset or VectorDataset with conditions
        self.degradation = degradation      # the model's data.degrade, or None

    def __len__(self) -> int:
        return len(self.items)

    def __call__(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.stack([self.items[int(i) % len(self.items)]["cond"] for i in indices])

    def masks(self, indices: Sequence[int]) -> torch.Tensor:
        """The holes (N, C, H, W), 1 where generated: the mask that `data.degrade` drew for item j = i mod M, with
        the generator seeded by j as `ImageDataset` does (so the center square, or that item's strokes)."""
        kind = (self.degradation or "").removeprefix("mask-")
        shape = tuple(self.items.shape)
        return torch.stack([make_mask(kind, shape, torch.Generator().manual_seed(int(i) % len(self.items)))
                            for i in indices])


def _data_config(meta: dict):
    try:
        return from_dict(DataConfig, meta["data"])
    except ConfigError as e:
        raise UserError(f"model metadata: data: {e} (written by another fsg version?)") from None


def data_conds(meta: dict, split: str = "test") -> DataConds:
    """Condition i = the condition of item i mod M of `split` of the model's recorded data (`meta["data"]`):
    the held-out 'test' split by default, or 'train' (DDBM's protocol measures FID on the training pairs)."""

    if not meta.get("data"):
        raise UserError("this bridge model records no training data (an imported checkpoint?): "
                        "give the conditions with --cond DIR|FILE.npz")
    cfg = _data_config(meta)
    try:
        items = build_dataset(cfg, split)
    except (UserError, ConfigError) as e:
        raise UserError(f"no '{split}' conditions in the model's data ({e}); give them with --cond DIR|FILE.npz") from None
    if items.cond_shape is None:
        raise UserError(f"the model's data ({items.name}) has no condition images; give them with --cond DIR|FILE.npz")
    return DataConds(items, cfg.degrade)


def _read_folder(path: Path, channels: int, resolution: int, mode: str, what: str):
    """item i mod M of the sorted image files of a folder, as (channels, resolution, resolution) in [-1, 1]."""
    files = list_folder(path)
    if not files:
        raise UserError(f"{what} {path}: no image files in the folder")

    def read(i: int) -> torch.Tensor:
        return resize_square(files[int(i) % len(files)].read_unit(channels), resolution, mode)
    return lambda indices: torch.stack([read(i) for i in indices])


def file_conds(path: Path, shape: tuple[int, ...], resize: str = "bilinear") -> Conditions:
    """Conditions of `shape` (C, H, W) or (D,) from a folder of images (sorted names, resized with `resize` and
    centre-cropped) or an .npz (`cond`, else `arr_0`: uint8 NHWC images or float [N, D] points); item i mod M."""
    path = Path(path)
    if path.is_dir():
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise UserError(f"--cond {path}: a folder holds gray or RGB images; this model's conditions have shape {shape}")
        return _read_folder(path, shape[0], shape[-1], resize, "--cond")
    if path.suffix != ".npz" or not path.is_file():
        raise UserError(f"--cond {path}: expected a folder of images or an existing .npz file")
    with np.load(path) as npz:
        key = "cond" if "cond" in npz.files else "arr_0"
        if key not in npz.files:
            raise UserError(f"--cond {path}: no 'cond' or 'arr_0' array in the file")
        array = npz[key]
    if array.dtype == np.uint8 and array.ndim == 4:
        items = torch.from_numpy(array).permute(0, 3, 1, 2).float() / 127.5 - 1     # (M, C, H, W) in [-1, 1]
    else:
        items = torch.from_numpy(np.asarray(array, dtype=np.float32))
    if tuple(items.shape[1:]) != tuple(shape) or len(items) == 0:
        raise UserError(f"--cond {path}: '{key}' holds items of shape {tuple(items.shape[1:])}, the model needs {tuple(shape)}")
    return lambda indices: items[[int(i) % len(items) for i in indices]]


def condition_source(meta: dict, cond: Path | str | None) -> Conditions:
    """The conditions of a bridge model: a folder or .npz, `data:train` / `data:test` (a split of the model's
    recorded data), or by default its held-out 'test' split. Folder images are resized as the model's data
    resized its conditions (`data.resize_cond`, else `data.resize`)."""
    if cond is None or str(cond) in DATA_SPLITS:
        return data_conds(meta, DATA_SPLITS.get(str(cond), "test"))
    shape = (meta.get("cond_channels", 0), *meta["shape"][1:])
    data = meta.get("data") or {}
    return file_conds(Path(cond), shape, data.get("resize_cond") or data.get("resize") or "bilinear")


def file_masks(path: Path, shape: tuple[int, ...]) -> Masks:
    """Masks (N, 1, H, W) for images of `shape` (C, H, W) from one image file (every sample) or a folder of them
    (sorted names, item i mod M): white (>= 128 of 255) is the hole, generated; resized nearest, centre-cropped."""
    path = Path(path)
    if path.is_dir():
        read = _read_folder(path, 1, shape[-1], "nearest", "--mask")
        return lambda indices: (read(indices) >= 0).float()        # 128 / 127.5 - 1 > 0 > 127 / 127.5 - 1
    if not path.is_file() or not is_image_name(path.name):
        raise UserError(f"--mask {path}: expected an image file (white = the hole) or a folder of them")
    hole = (resize_square(ImageFile(path.parent, path.name).read_unit(1), shape[-1], "nearest") >= 0).float()
    return lambda indices: hole[None].expand(len(indices), *hole.shape)


def mask_source(meta: dict, conds: Conditions, mask: Path | str | None = None) -> tuple[Masks | None, str | None]:
    """The inpainting masks (1 on the hole) of a bridge model's samples and what they are, or (None, None):
    `mask` (an image file or a folder, see `file_masks`), else the model's data: `data.degrade: mask-center`
    (the centred square, for any condition) or `mask-strokes` (each item's strokes; known for the model's own
    data splits only)."""
    shape = tuple(meta["shape"])
    if mask is not None:
        if len(shape) != 3:
            raise UserError(f"--mask: this model's samples are {shape[0]}-D points, not images")
        return file_masks(Path(mask), shape), str(mask)
    degradation = (meta.get("data") or {}).get("degrade") or ""
    if not degradation.startswith("mask-"):
        return None, None
    if isinstance(conds, DataConds):
        return conds.masks, degradation
    if degradation == "mask-center":
        hole = make_mask("center", shape)
        return (lambda indices: hole[None].expand(len(indices), *shape)), degradation
    raise UserError(f"--cond: this model fills free-form holes ({degradation}) known only for its own data: "
                    "give them with --mask FILE.png|DIR, or use --cond data:test|data:train")


def default_mask(meta: dict, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The hole of every condition of the model, when its data fixes one (`data.degrade: mask-center`), for
    images of `shape` (..., C, H, W); else None."""
    if len(shape) < 3 or (meta.get("data") or {}).get("degrade") != "mask-center":
        return None
    return make_mask("center", tuple(shape))
