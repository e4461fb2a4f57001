"""Inception-v3 features under clean-fid's "clean" protocol, offline.

The network is NVIDIA's TorchScript translation of the TF 2015-12-05 Inception graph (the file that
StyleGAN2-ADA, clean-fid and k-diffusion use). fsg never downloads it: the file is looked up in
`--inception PATH`, `$FSG_INCEPTION`, `~/.cache/fsg/` and clean-fid's own cache `/tmp/`, and its sha256
is checked. Images go through clean-fid's resizer (`cleanfid.resize.build_resizer("clean")`: PIL bicubic
in float per channel to 299x299) and the network's pool3 layer, exactly as `cleanfid.fid.compute_fid(...,
mode="clean")` does, so FIDs are comparable with published clean-fid numbers.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fsg.errors import UserError
from fsg.eval.images import to_rgb

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
# sha256 of NVIDIA's file, as pinned by k-diffusion (k_diffusion/evaluation.py) and others (95,607,719 bytes).
INCEPTION_SHA256 = "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4"
INCEPTION_ENV = "FSG_INCEPTION"
INCEPTION_DIM = 2048


def default_inception_locations() -> list[Path]:
    """Where the weights are looked for when no path is given: $FSG_INCEPTION, ~/.cache/fsg, /tmp (clean-fid's cache)."""
    env = os.environ.get(INCEPTION_ENV)
    places = [Path(env).expanduser()] if env else []
    return places + [Path.home() / ".cache" / "fsg" / INCEPTION_FILE, Path("/tmp") / INCEPTION_FILE]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weight_file(p: Path) -> Path:
    return p / INCEPTION_FILE if p.is_dir() else p


def find_inception(path: str | Path | None = None) -> Path:
    """The verified weight file: `path` (a file or a folder holding it) if given, else the first default location.

    Raises a one-line UserError naming the file, its sha256, the URL and where to put it when none is found,
    and another when the file found has the wrong sha256 (a truncated download, another network).
    """
    if path is not None:
        candidates = [_weight_file(Path(path).expanduser())]
    else:
        candidates = [_weight_file(p) for p in default_inception_locations()]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None and path is not None:
        raise UserError(f"--inception {path}: no such file (expected {INCEPTION_FILE}, sha256 {INCEPTION_SHA256})")
    if found is None:
        raise UserError(
            f"Inception weights {INCEPTION_FILE} (sha256 {INCEPTION_SHA256}) not found; fsg never downloads: "
            f"fetch {INCEPTION_URL} and place it at ~/.cache/fsg/{INCEPTION_FILE}, or pass --inception PATH "
            f"or set {INCEPTION_ENV}=PATH")
    digest = sha256_file(found)
    if digest != INCEPTION_SHA256:
        raise UserError(f"{found}: sha256 {digest} is not that of {INCEPTION_FILE} ({INCEPTION_SHA256}); "
                        f"the file is truncated or another network: fetch it again from {INCEPTION_URL}")
    return found


def clean_resize(images: Tensor, workers: int | None = None) -> Tensor:
    """uint8 NCHW (1-4 channels, any size) -> float32 [N, 3, 299, 299] in [0, 255] by clean-fid's "clean" resizer.

    The resizer runs per image on CPU (PIL releases the GIL, so a thread pool parallelizes it).
    """
    from cleanfid.resize import build_resizer

    resize = build_resizer("clean")
    hwc = to_rgb(images).permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3) uint8
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        out = list(pool.map(resize, hwc))  # each (299, 299, 3) float32
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()  # (N, 3, 299, 299)


class CleanFeatures:
    """A feature network under clean-fid's protocol: uint8 NCHW images -> clean resize to 299 -> `net`.

    `net` is any callable on float images [B, 3, 299, 299] with values in [0, 255] returning [B, dim]
    (the contract of clean-fid's `custom_feat_extractor`); Inception is one instance (`load_inception`).
    """

    def __init__(self, net: Callable[[Tensor], Tensor], dim: int, name: str, device: torch.device | str = "cpu"):
        self.net, self.dim, self.name, self.device = net, dim, name, torch.device(device)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """uint8 NCHW -> features [B, dim] on `device`."""
        return self.net(clean_resize(images).to(self.device))


def load_inception(path: str | Path | None = None, device: torch.device | str = "cpu") -> CleanFeatures:
    """clean-fid's Inception feature extractor from local, verified weights (see `find_inception`)."""
    weights = find_inception(path)
    with warnings.catch_warnings():  # NVIDIA ships TorchScript; torch's deprecation of jit.load is not the user's to act on
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*is deprecated", category=FutureWarning)
        base = torch.jit.load(str(weights), map_location=device).eval()

    def pool3(x: Tensor) -> Tensor:
        # clean-fid's InceptionV3W.forward with resize_inside=False: [0, 255] -> [-1, 1], then the layers up to pool3.
        return base.layers.forward((x - 128) / 128).reshape(x.shape[0], INCEPTION_DIM)

    return CleanFeatures(pool3, INCEPTION_DIM, "inception", device)
