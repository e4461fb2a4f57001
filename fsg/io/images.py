"""Writing results people look at: PNG grids, scatter plots of 2-D samples, streamed .npz files."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from fsg.io.checkpoint import atomic_write


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW float -> uint8 NHWC (the ADM / guided-diffusion npz layout)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def grid_image(x: torch.Tensor, nrow: int | None = None, pad: int = 1) -> Image.Image:
    """Tile N images (NCHW in [-1, 1]) into one PIL image, nrow per row (default: about square)."""
    imgs = to_uint8(x)                                         # (N, H, W, C)
    n, h, w, c = imgs.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    rows = (n + nrow - 1) // nrow
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = imgs[i]
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)


def scatter_image(points: torch.Tensor, size: int = 512, extent: float = 4.0) -> Image.Image:
    """2-D samples as a scatter plot on [-extent, extent]^2."""
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    p = points.float().cpu().numpy()
    xy = (p + extent) / (2 * extent) * (size - 1)
    for x, y in xy:
        x, y = float(x), float(size - 1 - y)
        draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=(30, 60, 160))
    return img


def save_png(img: Image.Image, path: str | Path, scale: int = 1) -> None:
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def save_samples_png(x: torch.Tensor, path: str | Path, nrow: int | None = None) -> None:
    """A grid for images, a scatter plot for vectors; small images are upscaled to stay visible."""
    if x.ndim == 2:
        save_png(scatter_image(x), path)
        return
    img = grid_image(x, nrow)
    save_png(img, path, scale=-(-512 // img.width) if img.width < 512 else 1)   # small images: upscale to >= 512 px


class NpzWriter:
    """Fill `arr_0` (and optional extra arrays) row by row through memory-mapped .npy files, then zip
    them into an .npz: memory stays flat however many samples are written."""

    def __init__(self, path: str | Path, n: int, row_shape: tuple[int, ...], dtype, extras: dict | None = None):
        self.path = Path(path)
        self.tmpdir = tempfile.TemporaryDirectory(dir=self.path.parent if self.path.parent.exists() else None)
        self.arrays = {"arr_0": np.lib.format.open_memmap(os.path.join(self.tmpdir.name, "arr_0.npy"), "w+", dtype, (n, *row_shape))}
        for name, (shape, dt) in (extras or {}).items():
            self.arrays[name] = np.lib.format.open_memmap(os.path.join(self.tmpdir.name, f"{name}.npy"), "w+", dt, (n, *shape))

    def write(self, rows: np.ndarray, index: np.ndarray, name: str = "arr_0") -> None:
        self.arrays[name][index] = rows

    def close(self) -> None:
        names = list(self.arrays)
        for a in self.arrays.values():
            a.flush()
        self.arrays.clear()   # drop the memory maps before zipping their files

        def write(tmp):
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
                for name in names:
                    z.write(os.path.join(self.tmpdir.name, f"{name}.npy"), f"{name}.npy")

        atomic_write(self.path, write)
        self.tmpdir.cleanup()
