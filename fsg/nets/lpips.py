"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", VGG variant,
v0.1), from local weights only: a folder given by `--lpips DIR` or $FSG_LPIPS holding torchvision's ImageNet VGG16
(`vgg16-397923af.pth`) and the LPIPS v0.1 linear layers (`vgg.pth`, shipped inside the `lpips` package as
lpips/weights/v0.1/vgg.pth). Nothing is downloaded. A training loss (CD, DDM, PaGoDA) and a paired metric."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from fsg.errors import UserError

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
