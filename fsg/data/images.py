"""Image files (in a folder or a zip archive) and the tensor conversions every image source shares.

Every PNG bit depth and colour type decodes: 1, 2, 4 and 8-bit gray, palette, gray+alpha, RGB and RGBA through PIL,
and 16-bit gray, gray+alpha, RGB and RGBA through torchvision's decoder, which keeps the 16 bits (PIL would clip a
16-bit gray image to 255 and cut a 16-bit RGB one to its high bytes). Alpha is dropped. Pixels of depth d map to
[-1, 1] as v / (2^d - 1) * 2 - 1 (`read_unit`); `read` gives the nearest 8-bit value. Image modes without such a
meaning (32-bit integer or float images) are refused in one line.
"""

from __future__ import annotations

import io
import os
import struct
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
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PIL_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")   # 8-bit (or 1-bit) modes
LUMA = (0.299, 0.587, 0.114)        # ITU-R 601-2, the weights of PIL's convert("L")

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

    def decode(self, channels: int) -> tuple[torch.Tensor, int]:
        """(pixels, depth): the image as an integer tensor (channels, H, W) of `depth` bits (8, or 16 for a 16-bit PNG),
        gray (1) or RGB (3), alpha dropped."""
        try:
            with self.open() as f:
                data = f.read()
            if data[:8] == PNG_SIGNATURE and len(data) > 25 and data[24] == 16:     # IHDR's bit depth
                return _decode_png16(data, channels, str(self)), 16
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PIL's notes on odd files (corrupt EXIF, palette transparency)
                with Image.open(io.BytesIO(data)) as img:
                    if img.mode not in PIL_MODES:
                        raise UserError(f"{self}: {img.mode} images are not supported (8-bit gray, palette or "
                                        f"RGB(A), 1-bit, or 16-bit PNG)")
                    pixels = torch.from_numpy(np.array(img.convert("L" if channels == 1 else "RGB")))
        except _DECODE_ERRORS as e:
            raise UserError(f"{self}: cannot decode the image ({e})") from None
        return (pixels[None] if channels == 1 else pixels.permute(2, 0, 1)), 8    # (C, H, W)

    def read(self, channels: int) -> torch.Tensor:
        """The decoded image as uint8 (channels, H, W), gray (1) or RGB (3); 16 bits round to the nearest 8-bit value."""
        pixels, depth = self.decode(channels)
        if depth == 16:
            return (pixels.double() * (255 / 65535)).round().to(torch.uint8)
        return pixels

    def read_unit(self, channels: int) -> torch.Tensor:
        """The decoded image as float32 (channels, H, W) in [-1, 1] at its full depth: v / (2^depth - 1) * 2 - 1."""
        pixels, depth = self.decode(channels)
        return (pixels.double() / ((2**depth - 1) / 2) - 1).float()


def _decode_png16(data: bytes, channels: int, where: str) -> torch.Tensor:
    """A 16-bit PNG as int32 (channels, H, W) in 0..65535: gray, gray+alpha, RGB or RGBA, alpha dropped, gray to RGB
    repeated, RGB to gray by PIL's luma weights (rounded)."""
    width, height = struct.unpack(">II", data[16:24])
    if width * height > Image.MAX_IMAGE_PIXELS:
        raise UserError(f"{where}: {width}x{height} pixels is more than the {Image.MAX_IMAGE_PIXELS:,} an image may have")
    try:
        with warnings.catch_warnings():       # torchvision 0.29 announces a move of its decoders: not the user's to act on
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_png

            x = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED)
    except ImportError:
        x = None
    except RuntimeError as e:
        raise UserError(f"{where}: cannot decode the 16-bit PNG ({str(e).splitlines()[0] if str(e) else e})") from None
    if x is None or x.dtype != torch.uint16:
        raise UserError(f"{where}: a 16-bit PNG, which this torchvision cannot decode at 16 bits (0.21 to 0.29 can)")
    x = x.to(torch.int32)
    x = x[:1] if x.shape[0] <= 2 else x[:3]                                   # (1 or 3, H, W): alpha dropped
    if channels == 3 and x.shape[0] == 1:
        return x.expand(3, *x.shape[1:]).contiguous()
    if channels == 1 and x.shape[0] == 3:
        weights = torch.tensor(LUMA, dtype=torch.float64).view(3, 1, 1)
        return (x.double() * weights).sum(0, keepdim=True).round().to(torch.int32)
    return x


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
