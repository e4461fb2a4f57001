"""Degradations: the condition image y of a bridge (or the observation of an editing task) made from a
clean image x. Pure functions of tensors (..., C, H, W) in [-1, 1]; the only randomness (brush strokes)
comes from an explicit generator.

Names, as in `data.degrade`:
- `canny`: Canny edges of x, black lines on white (the pix2pix edges convention), x's channel count.
- `gray`: ITU-R BT.601 luma, repeated to x's channels.
- `down<k>` (e.g. `down4`): k x k average pooling, then nearest upsampling back to full size.
- `mask-center`: a centred square of half the side set to 0.
- `mask-strokes`: random free-form brush strokes set to 0.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

from fsg.errors import UserError

DEGRADATIONS = ("canny", "gray", "down<k>", "mask-center", "mask-strokes")
MASK_KINDS = ("center", "strokes")

_DOWN = re.compile(r"down([0-9]+)")
_LUMA = (0.299, 0.587, 0.114)   # ITU-R BT.601, the weights of PIL's "L" conversion


def luma(x: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images (..., 3, H, W) -> (..., 1, H, W); a 1-channel image is its own luma."""
    if x.shape[-3] == 1:
        return x
    return torch.einsum("...chw,c->...hw", x, x.new_tensor(_LUMA)).unsqueeze(-3)


def gray(x: torch.Tensor) -> torch.Tensor:
    """Gray version of x with x's channel count (the luma, repeated)."""
    return luma(x).expand_as(x)


def canny_edges(x: torch.Tensor, low: float = 0.1, high: float = 0.2) -> torch.Tensor:
    """Canny edges of x (kornia.filters.canny on [0, 1] intensities): -1 on an edge, +1 elsewhere."""
    from kornia.filters import canny

    batch = x.reshape(-1, *x.shape[-3:])  # (B, C, H, W)
    _, edges = canny((batch + 1) / 2, low_threshold=low, high_threshold=high)  # (B, 1, H, W) in {0, 1}
    return (1 - 2 * edges).expand_as(batch).reshape(x.shape)


def down_up(x: torch.Tensor, k: int) -> torch.Tensor:
    """k x k average pooling then nearest upsampling: each k x k block is replaced by its mean."""
    h, w = x.shape[-2:]
    if h % k or w % k:
        raise UserError(f"down{k}: the image size {h}x{w} is not divisible by {k}")
    batch = x.reshape(-1, *x.shape[-3:])  # (B, C, H, W)
    low = F.avg_pool2d(batch, k)  # (B, C, H/k, W/k)
    return low.repeat_interleave(k, -2).repeat_interleave(k, -1).reshape(x.shape)


def _center_hole(h: int, w: int) -> torch.Tensor:
    """(H, W) mask of the centred (H/2) x (W/2) rectangle (a square for square images)."""
    hole = torch.zeros(h, w)
    top, left = (h - h // 2) // 2, (w - w // 2) // 2
    hole[top:top + h // 2, left:left + w // 2] = 1
    return hole


def _stroke_hole(h: int, w: int, generator: torch.Generator | None) -> torch.Tensor:
    """(H, W) mask of 1-4 free-form brush strokes, in the spirit of Algorithm 1 of Yu et al. 2019
    ("Free-Form Image Inpainting with Gated Convolution"): each stroke is a polyline of 4-8 segments with
    random directions and lengths, drawn with a round brush (a pixel is in the hole when its centre lies
    within half the brush width of a segment)."""
    size = min(h, w)
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    pixels = torch.stack([xs, ys], -1).reshape(-1, 1, 2)  # (HW, 1, 2)
    hole = torch.zeros(h * w, dtype=torch.bool)
    for _ in range(int(torch.randint(1, 5, (), generator=generator))):
        n_seg = int(torch.randint(4, 9, (), generator=generator))
        start = torch.rand(2, generator=generator) * torch.tensor([w, h])
        angle = torch.rand(n_seg, generator=generator) * (2 * math.pi)
        length = (0.1 + 0.15 * torch.rand(n_seg, generator=generator)) * size
        width = (0.06 + 0.08 * float(torch.rand((), generator=generator))) * size
        steps = torch.stack([torch.cos(angle), torch.sin(angle)], -1) * length[:, None]  # (S, 2)
        vertices = torch.cat([start[None], start + steps.cumsum(0)])  # (S + 1, 2)
        vertices = vertices.clamp(min=torch.zeros(2), max=torch.tensor([w, h], dtype=torch.float32))
        a, b = vertices[:-1], vertices[1:]  # segment ends (S, 2)
        ab = b - a
        u = ((pixels - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)  # (HW, S)
        nearest = a + u.clamp(0, 1)[..., None] * ab  # (HW, S, 2)
        dist = (pixels - nearest).norm(dim=-1).amin(-1)  # (HW,)
        hole |= dist <= width / 2
    return hole.reshape(h, w).float()


def make_mask(kind: str, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """Float mask of `shape`, 1 on the hole: `center` or `strokes`.

    `shape` is (H, W), (C, H, W) or (N, ..., C, H, W); channels share a mask, and with leading batch
    dimensions each image gets its own strokes, drawn one after another from `generator`.
    """
    if kind not in MASK_KINDS:
        raise UserError(f"unknown mask '{kind}' (choose {', '.join(MASK_KINDS)})")
    h, w = shape[-2:]
    lead = tuple(shape[:-3])
    n = math.prod(lead)
    if kind == "center":
        holes = _center_hole(h, w).expand(n, h, w)
    else:
        holes = torch.stack([_stroke_hole(h, w, generator) for _ in range(n)])  # (n, H, W)
    holes = holes.reshape(*lead, 1, h, w) if len(shape) >= 3 else holes.reshape(h, w)
    return holes.expand(shape).contiguous()


def check_degradation(name: str) -> None:
    """Raise a UserError unless `name` is one of DEGRADATIONS."""
    match = _DOWN.fullmatch(name)
    if name in ("canny", "gray", "mask-center", "mask-strokes") or (match and int(match[1]) > 1):
        return
    raise UserError(f"unknown degradation '{name}' (choose canny, gray, down<k> with k > 1 e.g. down4, "
                    "mask-center, mask-strokes)")


def degrade(x: torch.Tensor, name: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """The condition `name` (see the module docstring) made from x (..., C, H, W) in [-1, 1]."""
    check_degradation(name)
    if name == "canny":
        return canny_edges(x)
    if name == "gray":
        return gray(x)
    if name.startswith("mask-"):
        hole = make_mask(name.removeprefix("mask-"), x.shape, generator) > 0
        return x.masked_fill(hole.to(x.device), 0)
    return down_up(x, int(name.removeprefix("down")))
