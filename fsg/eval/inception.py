"""Inception-v3 features, offline, in the two ways the papers' evaluators feed the network.

The network is NVIDIA's TorchScript translation of the TF 2015-12-05 Inception graph (the file that
StyleGAN2-ADA, EDM, EDM2, clean-fid and k-diffusion use). fsg never downloads it: the file is looked up in
`--inception PATH`, `$FSG_INCEPTION`, `~/.cache/fsg/` and clean-fid's own cache `/tmp/`, and its sha256
is checked.

- `inception` (`load_inception`): clean-fid's "clean" protocol. Images go through clean-fid's resizer
  (`cleanfid.resize.build_resizer("clean")`: PIL bicubic in float per channel to 299x299) and the network's
  pool3 layer, exactly as `cleanfid.fid.compute_fid(..., mode="clean")` does.
- `inception-tf` (`load_inception_tf`): clean-fid's "legacy_tensorflow" mode, which is what EDM's `fid.py`, EDM2's
  `calculate_metrics.py`, guided-diffusion's `evaluations/evaluator.py` (through the TF graph itself) and DDBM's
  evaluator measure: native-resolution 8-bit images, the TF-1 bilinear resize to 299 that the TorchScript
  file's `forward` does, then the layers. One pass gives pool3 (FID, precision/recall), ADM's sFID features
  (`mixed_6/conv`, first 7 channels, NHWC order) and the 1008 logits for the Inception Score.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fsg.errors import UserError
from fsg.eval.extractor import SingleOutput
from fsg.eval.images import to_rgb
from fsg.io.refstats import sha256_file

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
# sha256 of NVIDIA's file, as pinned by k-diffusion (k_diffusion/evaluation.py) and others (95,607,719 bytes).
INCEPTION_SHA256 = "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4"
INCEPTION_ENV = "FSG_INCEPTION"
INCEPTION_DIM = 2048
TF_SIZE = 299           # the graph's input side
SFID_CHANNELS = 7       # guided-diffusion evaluator.py: spatial[..., :7] of mixed_6/conv (17 * 17 * 7 = 2023 features)


def default_inception_locations() -> list[Path]:
    """Where the weights are looked for when no path is given: $FSG_INCEPTION, ~/.cache/fsg, /tmp (clean-fid's cache)."""
    env = os.environ.get(INCEPTION_ENV)
    places = [Path(env).expanduser()] if env else []
    return places + [Path.home() / ".cache" / "fsg" / INCEPTION_FILE, Path("/tmp") / INCEPTION_FILE]


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


class CleanFeatures(SingleOutput):
    """A feature network under clean-fid's protocol: uint8 NCHW images -> clean resize to 299 -> `net`.

    `net` is any callable on float images [B, 3, 299, 299] with values in [0, 255] returning [B, dim]
    (the contract of clean-fid's `custom_feat_extractor`); Inception is one instance (`load_inception`).
    `sha256` is that of the network's weight file, for the stamp of a result.
    """

    def __init__(self, net: Callable[[Tensor], Tensor], dim: int, name: str, device: torch.device | str = "cpu",
                 sha256: str | None = None):
        self.net, self.dim, self.name, self.device, self.sha256 = net, dim, name, torch.device(device), sha256

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """uint8 NCHW -> features [B, dim] on `device`."""
        return self.net(clean_resize(images).to(self.device))


def _load_base(path: str | Path | None, device: torch.device | str) -> torch.jit.ScriptModule:
    weights = find_inception(path)
    with warnings.catch_warnings():  # NVIDIA ships TorchScript; torch's deprecation of jit.load is not the user's to act on
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*is deprecated", category=FutureWarning)
        return torch.jit.load(str(weights), map_location=device).eval()


def load_inception(path: str | Path | None = None, device: torch.device | str = "cpu") -> CleanFeatures:
    """clean-fid's Inception feature extractor from local, verified weights (see `find_inception`)."""
    base = _load_base(path, device)

    def pool3(x: Tensor) -> Tensor:
        # clean-fid's InceptionV3W.forward with resize_inside=False: [0, 255] -> [-1, 1], then the layers up to pool3.
        return base.layers.forward((x - 128) / 128).reshape(x.shape[0], -1)   # (B, 2048)

    return CleanFeatures(pool3, INCEPTION_DIM, "inception", device, INCEPTION_SHA256)


def tf1_resize(x: Tensor, size: int = TF_SIZE) -> Tensor:
    """TF-1 `ResizeBilinear(align_corners=False, half_pixel_centers=False)` of float NCHW images to size x size, as
    the TorchScript file's `forward` emulates it (affine_grid + grid_sample with a shifted theta; clean-fid's
    "legacy_tensorflow"): output pixel i samples the source at i * W / size, clamped at the last pixel."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    grid = F.affine_grid(theta.to(x.dtype)[None], [1, c, size, size], align_corners=False)  # the same for every image
    return F.grid_sample(x, grid.expand(n, -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=False)


class InceptionTF:
    """Inception under the legacy TensorFlow protocol: every output the papers' evaluators take, from one pass.

    outputs(images) = {'features': pool3 [B, 2048], 'spatial': sFID features [B, 2023], 'logits': [B, 1008]}.
    The layers run one by one (a TorchScript module takes no forward hooks) so that `mixed_6.conv`, the 1x1 branch
    of the 17x17 block `mixed_6` (post-ReLU), is read on the way: its first 7 channels flattened in (h, w, c) order,
    guided-diffusion evaluator.py's `spatial[..., :7]` reshaped from NHWC. The logits are pool3 @ W^T of the
    network's `output` layer, without its bias as ADM (and improved-gan, StyleGAN) compute the Inception Score, or
    with it as DDBM's evaluator does (`logits_bias`).
    """

    name = "inception-tf"
    dim = INCEPTION_DIM

    def __init__(self, base: torch.nn.Module, device: torch.device | str = "cpu", sha256: str | None = None,
                 logits_bias: bool = False):
        self.base, self.device, self.sha256, self.logits_bias = base, torch.device(device), sha256, logits_bias

    @torch.no_grad()
    def outputs(self, images: Tensor) -> dict[str, Tensor]:
        x = tf1_resize(to_rgb(images).to(self.device).float()).sub_(128).div_(128)  # (B, 3, 299, 299) in [-1, 1]
        spatial = None
        for name, layer in self.base.layers.named_children():
            if name == "mixed_6":
                branch = layer.conv(x)[:, :SFID_CHANNELS]                  # (B, 7, 17, 17)
                spatial = branch.permute(0, 2, 3, 1).flatten(1)            # (B, 2023), NHWC order
            x = layer(x)
        pool3 = x.reshape(x.shape[0], -1).float()                          # (B, 2048)
        out = self.base.output
        logits = F.linear(pool3, out.weight, out.bias if self.logits_bias else None)  # (B, 1008)
        return {"features": pool3, "spatial": spatial, "logits": logits}

    def __call__(self, images: Tensor) -> Tensor:
        return self.outputs(images)["features"]


def load_inception_tf(path: str | Path | None = None, device: torch.device | str = "cpu",
                      logits_bias: bool = False) -> InceptionTF:
    """The legacy-TensorFlow Inception extractor from local, verified weights (see `find_inception`)."""
    return InceptionTF(_load_base(path, device), device, INCEPTION_SHA256, logits_bias)
