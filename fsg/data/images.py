"""Image files (in a folder or a zip archive) and the tensor conversions every image source shares."""

from __future__ import annotations

import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fsg.data.degrade import luma
from fsg.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_OPEN_ZIPS: dict[tuple[str, int], zipfile.ZipFile] = {}


def _open_zip(path: Path) -> zipfile.ZipFile:
    """One handle per archive and process: a handle inherited through fork shares its file offset."""
    key = (str(path), os.getpid())
    if key not in _OPEN_ZIPS:
        _OPEN_ZIPS[key] = zipfile.ZipFile(path)
    return _OPEN_ZIPS[key]


@dataclass(frozen=True)
class ImageFile:
    """One image: `name` is its POSIX path relative to `root`, a folder or (when `in_zip`) a zip file."""

    root: Path
    name: str
    in_zip: bool = False

    def __str__(self) -> str:
        return f"{self.root}:{self.name}" if self.in_zip else str(self.root / self.name)

    def open(self) -> IO[bytes]:
        return _open_zip(self.root).open(self.name) if self.in_zip else open(self.root / self.name, "rb")

    def size(self) -> tuple[int, int] | None:
        """(width, height) read from the header, or None when the file is not a readable image."""
        try:
            with self.open() as f, Image.open(f) as img:
                return img.size
        except _DECODE_ERRORS:
            return None

    def read(self, channels: int) -> torch.Tensor:
        """The decoded image as uint8 (channels, H, W), converted by PIL to gray (1) or RGB (3)."""
        try:
            with self.open() as f, Image.open(f) as img:
                pixels = np.array(img.convert("L" if channels == 1 else "RGB"))
        except _DECODE_ERRORS as e:
            raise UserError(f"{self}: cannot decode the image ({e})") from None
        pixels = torch.from_numpy(pixels)
        return pixels[None] if channels == 1 else pixels.permute(2, 0, 1)  # (C, H, W)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def list_folder(root: Path) -> list[ImageFile]:
    """Image files under `root`, recursively, sorted by relative path."""
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and is_image_name(p.name))
    return [ImageFile(root, name) for name in names]


def list_zip(path: Path) -> list[ImageFile]:
    """Image members of the zip archive `path`, sorted by name."""
    try:
        names = _open_zip(path).namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise UserError(f"data.path: {path} is not a readable zip archive ({e})") from None
    return [ImageFile(path, name, in_zip=True) for name in sorted(names) if is_image_name(name)]


def image_sizes(files: list[ImageFile], where: str | Path) -> list[tuple[int, int] | None]:
    """Header sizes of `files` (None for an unreadable file), with one warning counting the unreadable ones.

    Raises a UserError naming `where` when there is no file at all or none is readable.
    """
    if not files:
        raise UserError(f"data.path: no image ({', '.join(IMAGE_SUFFIXES)}) found in {where}")
    sizes = [f.size() for f in files]
    bad = [f for f, s in zip(files, sizes) if s is None]
    if len(bad) == len(files):
        raise UserError(f"data.path: none of the {len(files)} image files in {where} is readable (e.g. {bad[0]})")
    if bad:
        warnings.warn(f"{where}: skipped {len(bad)} unreadable image file(s), e.g. {bad[0]}", stacklevel=2)
    return sizes


def check_min_size(file: ImageFile, size: tuple[int, int], resolution: int) -> None:
    """UserError when the image (`size` = (W, H)) cannot give a resolution x resolution crop without upsampling."""
    if min(size) < resolution:
        raise UserError(f"{file}: the image is {size[0]}x{size[1]}, smaller than the resolution "
                        f"{resolution}x{resolution} (data.resolution)")


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [-1, 1]; float input is taken to be in [-1, 1] already (and copied,
    so an item never shares memory with the images it came from)."""
    return x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.to(torch.float32, copy=True)


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(C, H, W) -> (channels, H, W): gray to RGB repeats, RGB to gray takes the BT.601 luma."""
    if x.shape[-3] == channels:
        return x
    return x.expand(3, *x.shape[-2:]) if channels == 3 else luma(x)


RESIZE_MODES = ("bilinear", "bicubic", "nearest")


def resize_square(x: torch.Tensor, resolution: int, mode: str = "bilinear") -> torch.Tensor:
    """Scale (C, H, W) so its shorter side is `resolution`, then crop the centre square.

    `mode`: "bilinear" or "bicubic" (antialiased; bicubic clamped back to [-1, 1], since its kernel overshoots),
    or "nearest" (PIL's NEAREST pixel centres, `nearest-exact`): every output pixel is a copy of an input pixel, so
    label-like images (surface normals, masks) keep only their own values.
    """
    if mode not in RESIZE_MODES:
        raise UserError(f"unknown resize mode '{mode}' (choose {', '.join(RESIZE_MODES)})")
    c, h, w = x.shape
    if min(h, w) != resolution:
        size = (max(resolution, round(h * resolution / min(h, w))), max(resolution, round(w * resolution / min(h, w))))
        if mode == "nearest":
            x = F.interpolate(x[None], size=size, mode="nearest-exact")[0]
        else:
            x = F.interpolate(x[None], size=size, mode=mode, antialias=True, align_corners=False)[0]
            if mode == "bicubic":
                x = x.clamp(-1, 1)
        h, w = size
    top, left = (h - resolution) // 2, (w - resolution) // 2
    return x[:, top:top + resolution, left:left + resolution]
