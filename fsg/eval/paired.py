"""Paired image-to-image metrics (bridges, editing): MSE in [-1, 1] and LPIPS, matched in sample-index order.

Sample i is compared with target i, in the order the sources yield them (a sample file's rows; a folder's
sorted file names). LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric", VGG variant, v0.1) runs only from local weights: a folder given by `--lpips DIR` or
$FSG_LPIPS holding torchvision's ImageNet VGG16 (`vgg16-397923af.pth`) and the LPIPS v0.1 linear layers
(`vgg.pth`, shipped inside the `lpips` package as lpips/weights/v0.1/vgg.pth). Nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from itertools import zip_longest
from pathlib import Path

import torch
from torch import Tensor, nn

from fsg.errors import UserError
from fsg.eval.images import to_rgb

LPIPS_ENV = "FSG_LPIPS"
VGG_FILE = "vgg16-397923af.pth"
LIN_FILE = "vgg.pth"
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
LPIPS_TAPS = (4, 9, 16, 23, 30)     # trunk prefixes ending at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LPIPS_CHANNELS = (64, 128, 256, 512, 512)


def _vgg16_trunk() -> nn.Sequential:
    """VGG16's convolutional layers up to relu5_3, indexed as torchvision's `vgg16().features`."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in VGG16_LAYERS:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU()]
            c_in = v
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """d(x, y) = sum_l mean_hw sum_c w_lc (x^_lhwc - y^_lhwc)^2, x^ the channel-normalized VGG activations
    (Eq. 1 of Zhang et al. 2018; as in the reference code, the weights w multiply squared differences)."""

    def __init__(self, vgg_state: dict[str, Tensor], lin_state: dict[str, Tensor]):
        super().__init__()
        self.trunk = _vgg16_trunk()
        self.trunk.load_state_dict({k.removeprefix("features."): v for k, v in vgg_state.items() if k.startswith("features.")})
        self.weights = nn.ParameterList(
            nn.Parameter(lin_state[f"lin{i}.model.1.weight"].reshape(1, c, 1, 1), requires_grad=False)
            for i, c in enumerate(LPIPS_CHANNELS))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def _activations(self, x: Tensor) -> list[Tensor]:
        """Channel-normalized activations at the five taps of RGB images in [-1, 1]."""
        h = (x - self.shift) / self.scale
        out, start = [], 0
        for stop in LPIPS_TAPS:
            h = self.trunk[start:stop](h)
            out.append(h / (h.square().sum(dim=1, keepdim=True).sqrt() + 1e-10))
            start = stop
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Distances [B] between RGB image batches in [-1, 1] (differentiable: it is also a training loss)."""
        return sum((w * (a - b).square()).sum(dim=1).mean(dim=(1, 2))
                   for w, a, b in zip(self.weights, self._activations(x), self._activations(y)))


def load_lpips(path: str | Path | None = None, device: torch.device | str = "cpu") -> LPIPS:
    """LPIPS from a local folder (`path`, else $FSG_LPIPS) holding vgg16-397923af.pth and vgg.pth."""
    folder = path if path is not None else os.environ.get(LPIPS_ENV)
    if folder is None:
        raise UserError(f"LPIPS needs local weights: pass --lpips DIR or set {LPIPS_ENV}=DIR, DIR holding torchvision's "
                        f"{VGG_FILE} and LPIPS v0.1 {LIN_FILE} (lpips/weights/v0.1/vgg.pth of the lpips package); fsg never downloads")
    folder = Path(folder).expanduser()
    missing = [name for name in (VGG_FILE, LIN_FILE) if not (folder / name).is_file()]
    if missing:
        raise UserError(f"--lpips {folder}: missing {' and '.join(missing)} (torchvision's {VGG_FILE} and LPIPS v0.1 {LIN_FILE})")
    states = []
    for name in (VGG_FILE, LIN_FILE):
        try:
            states.append(torch.load(folder / name, map_location="cpu", weights_only=True))
        except Exception as e:  # torch raises several types for foreign or truncated files
            raise UserError(f"{folder / name}: unreadable weights ({type(e).__name__})") from None
    try:
        net = LPIPS(*states)
    except (KeyError, RuntimeError) as e:
        raise UserError(f"--lpips {folder}: not VGG16 + LPIPS v0.1 weights ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return net.to(device).eval()


def _pairs(samples: Iterable[Tensor], targets: Iterable[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
    """(sample i, target i) single images from two streams of batches; their counts and shapes must agree."""
    flat = zip_longest((x for b in samples for x in b), (y for b in targets for y in b))
    for i, (x, y) in enumerate(flat):
        if x is None or y is None:
            raise UserError(f"paired metrics: {'the samples' if x is None else 'the targets'} end at {i} images, the other set has more")
        if x.shape != y.shape:
            raise UserError(f"paired metrics: sample {i} is {tuple(x.shape)} but target {i} is {tuple(y.shape)} (C, H, W)")
        yield x, y


def _batched_pairs(pairs: Iterator[tuple[Tensor, Tensor]], batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Stack consecutive pairs of equal shape into batches."""
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    for x, y in pairs:
        if xs and (len(xs) == batch_size or x.shape != xs[0].shape):
            yield torch.stack(xs), torch.stack(ys)
            xs, ys = [], []
        xs.append(x)
        ys.append(y)
    if xs:
        yield torch.stack(xs), torch.stack(ys)


def paired_metrics(samples: Iterable[Tensor], targets: Iterable[Tensor], lpips: LPIPS | None = None,
                   batch_size: int = 64) -> dict[str, float | int | None]:
    """Mean per-pair MSE (pixels in [-1, 1]) and, with `lpips`, mean LPIPS of uint8 sample/target batches."""
    device = lpips.shift.device if lpips is not None else torch.device("cpu")
    n, mse_sum, lpips_sum = 0, 0.0, 0.0
    for x, y in _batched_pairs(_pairs(samples, targets), batch_size):
        a = x.to(device).float() / 127.5 - 1  # (B, C, H, W) in [-1, 1]
        b = y.to(device).float() / 127.5 - 1
        n += len(a)
        mse_sum += float((a - b).square().flatten(1).mean(dim=1).sum())
        if lpips is not None:
            lpips_sum += float(lpips(to_rgb(a), to_rgb(b)).sum())
    if n == 0:
        raise UserError("paired metrics: no image pairs")
    return {"n": n, "mse": mse_sum / n, "lpips": lpips_sum / n if lpips is not None else None}
