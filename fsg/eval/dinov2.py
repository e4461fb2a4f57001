"""FD_DINOv2 features (Stein et al. 2023; EDM2's `calculate_metrics.py`): DINOv2 ViT-L/14 built in fsg, offline.

The network is facebookresearch/dinov2's `DinoVisionTransformer` with the torch.hub `dinov2_vitl14` settings
(`dinov2/hub/backbones.py`, `models/vision_transformer.py`): 1024-d tokens, 24 pre-norm blocks of 16 heads of 64,
MLP 4096 with exact GELU, LayerScale, LayerNorm eps 1e-6, no register tokens, a 518 / 14 = 37 x 37 grid of position
embeddings resized for other inputs by bicubic interpolation with a scale factor of (w0 + 0.1) / 37 (the "+0.1
kludge" of `interpolate_pos_encoding`). Attention is written out (softmax(q k^T / sqrt(64)) v), no fused kernel.

Features (EDM2 `DINOv2Detector`, resize_mode 'torch', the default of its metric_specs): 8-bit RGB as float in
[0, 255], `F.interpolate(size=224, mode='bicubic', antialias=True)`, / 255, ImageNet mean and std, the network,
then the final-norm CLS token `x_norm_clstoken` (1024), which is what the hub model's `forward` returns.

The weights, `dinov2_vitl14_pretrain.pth` (a plain state dict, read with `torch.load(weights_only=True)`), are
never downloaded: `--dinov2 PATH`, `$FSG_DINOV2` or `~/.cache/fsg/`. Meta publishes no hash for the file, and
fsg has not pinned one yet (`DINOV2_SHA256` is None): until it is, a file is accepted only with exactly the
ViT-L/14 tensors, a warning says so, and the file's own sha256 goes into the stamp of every result.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsg.errors import UserError
from fsg.eval.extractor import SingleOutput
from fsg.eval.images import to_rgb
from fsg.io.checkpoint import load_torch_file
from fsg.io.refstats import sha256_file

DINOV2_FILE = "dinov2_vitl14_pretrain.pth"
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"
# To be filled with the sha256 of a trusted download of DINOV2_URL (1,217,586,395 bytes); none is published.
DINOV2_SHA256: str | None = None
DINOV2_ENV = "FSG_DINOV2"
DINOV2_INPUT = 224                              # EDM2 resizes every image to 224 x 224
HEAD_DIM = 64                                   # every DINOv2 ViT has heads of 64 channels
VITL14 = {"dim": 1024, "depth": 24, "mlp": 4096, "patch": 14, "grid": 37}  # hub dinov2_vitl14, img_size 518
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LayerScale(nn.Module):
    """x * gamma, per channel (`dinov2/layers/layerscale.py`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention with one qkv projection (rows q, k, v; each head's 64 rows contiguous)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, h, N, 64)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1) / math.sqrt(c // self.heads)).softmax(dim=-1)         # (B, h, N, N)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))                           # (B, N, C)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))) (`dinov2/layers/block.py`)."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp)
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, h * w, C), row-major patches


class DinoViT(nn.Module):
    """DINOv2's ViT, whose state dict has the keys of the released checkpoints (`mask_token` included, unused here)."""

    def __init__(self, dim: int = 1024, depth: int = 24, mlp: int = 4096, patch: int = 14, grid: int = 37):
        super().__init__()
        self.patch = patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = PatchEmbed(dim, patch)
        self.blocks = nn.ModuleList(Block(dim, dim // HEAD_DIM, mlp) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def pos_encoding(self, h0: int, w0: int) -> Tensor:
        """The position embeddings of an h0 x w0 patch grid [1, 1 + h0 w0, C]: the stored 37 x 37 grid resized as
        `interpolate_pos_encoding` does, by scale factors (h0 + 0.1) / 37 and (w0 + 0.1) / 37, not to a size (the
        two differ by up to 1.7 on N(0, 1) embeddings)."""
        pos = self.pos_embed.float()
        grid = math.isqrt(pos.shape[1] - 1)
        if h0 == w0 == grid:
            return pos
        patch_pos = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)  # (1, C, 37, 37)
        patch_pos = F.interpolate(patch_pos, mode="bicubic", antialias=False,
                                  scale_factor=((h0 + 0.1) / grid, (w0 + 0.1) / grid))       # (1, C, h0, w0)
        assert patch_pos.shape[-2:] == (h0, w0), patch_pos.shape
        return torch.cat([pos[:, :1], patch_pos.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Normalized images [B, 3, H, W] -> the final-norm CLS token [B, C]."""
        h0, w0 = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        tokens = self.patch_embed(x)                                               # (B, h0 w0, C)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)  # (B, 1 + h0 w0, C)
        tokens = tokens + self.pos_encoding(h0, w0).to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


def vit_config(state: dict[str, Tensor]) -> dict[str, int]:
    """The architecture a DINOv2 state dict holds: token width, depth, MLP width, patch size and grid side."""
    try:
        depth = sum(1 for k in state if k.startswith("blocks.") and k.endswith(".norm1.weight"))
        return {"dim": state["cls_token"].shape[-1], "depth": depth, "mlp": state["blocks.0.mlp.fc1.weight"].shape[0],
                "patch": state["patch_embed.proj.weight"].shape[-1], "grid": math.isqrt(state["pos_embed"].shape[1] - 1)}
    except (KeyError, IndexError) as e:
        raise UserError(f"not a DINOv2 ViT state dict (missing {e})") from None


def prepare_dinov2(images: Tensor) -> Tensor:
    """uint8 NCHW (1-4 channels, any size) -> [B, 3, 224, 224] normalized as EDM2's DINOv2Detector (resize 'torch')."""
    x = F.interpolate(to_rgb(images).float(), size=(DINOV2_INPUT, DINOV2_INPUT), mode="bicubic", antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x / 255 - mean) / std


class DinoV2Features(SingleOutput):
    """The `dinov2` feature space: uint8 NCHW images -> [B, 1024] CLS features on `device`."""

    name = "dinov2"

    def __init__(self, net: DinoViT, device: torch.device | str = "cpu", sha256: str | None = None):
        self.device = torch.device(device)
        self.net, self.sha256 = net.to(self.device).eval(), sha256
        self.dim = net.norm.normalized_shape[0]

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        return self.net(prepare_dinov2(images.to(self.device)))


def default_dinov2_locations() -> list[Path]:
    """Where the weights are looked for when no path is given: $FSG_DINOV2, then ~/.cache/fsg/."""
    env = os.environ.get(DINOV2_ENV)
    return ([Path(env).expanduser()] if env else []) + [Path.home() / ".cache" / "fsg" / DINOV2_FILE]


def find_dinov2(path: str | Path | None = None) -> tuple[Path, str]:
    """The weight file and its sha256: `path` (a file or a folder holding it), else the first default location.
    Missing: a one-line UserError naming the file, its hash, the URL and where to put it. A pinned hash is checked."""
    candidates = [Path(path).expanduser()] if path is not None else default_dinov2_locations()
    candidates = [p / DINOV2_FILE if p.is_dir() else p for p in candidates]
    found = next((p for p in candidates if p.is_file()), None)
    pin = f"sha256 {DINOV2_SHA256}" if DINOV2_SHA256 else "sha256 not yet pinned by fsg"
    if found is None and path is not None:
        raise UserError(f"--dinov2 {path}: no such file (expected {DINOV2_FILE}, {pin})")
    if found is None:
        raise UserError(f"DINOv2 weights {DINOV2_FILE} ({pin}) not found; fsg never downloads: fetch {DINOV2_URL} "
                        f"and place it at ~/.cache/fsg/{DINOV2_FILE}, or pass --dinov2 PATH or set {DINOV2_ENV}=PATH")
    digest = sha256_file(found)
    if DINOV2_SHA256 and digest != DINOV2_SHA256:
        raise UserError(f"{found}: sha256 {digest} is not that of {DINOV2_FILE} ({DINOV2_SHA256}); "
                        f"the file is truncated or another network: fetch it again from {DINOV2_URL}")
    return found, digest


def load_dinov2(path: str | Path | None = None, device: torch.device | str = "cpu") -> DinoV2Features:
    """The FD_DINOv2 feature extractor from local weights (see `find_dinov2`)."""
    found, digest = find_dinov2(path)
    state = load_torch_file(found, "--dinov2")
    config = vit_config(state)
    if not DINOV2_SHA256:
        if config != VITL14:
            raise UserError(f"{found}: a ViT with {config}, not DINOv2 ViT-L/14 {VITL14}")
        warnings.warn(f"{found}: fsg has no pinned sha256 for {DINOV2_FILE}; this file's ({digest}) is recorded in "
                      "the result's stamp", stacklevel=2)
    net = DinoViT(**config)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{found}: not a DINOv2 ViT state dict (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return DinoV2Features(net, device, digest)
