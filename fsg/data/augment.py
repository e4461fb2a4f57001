"""EDM's non-leaking geometric augmentation (Karras et al. 2022, Sec. 5, "Augmentation regularization";
NVlabs/edm `training/augment.py`, built on the ADA pipeline of Karras et al. 2020).

Every op fires per sample with probability (op multiplier x p) and records its parameters as labels, which
the network sees through `map_augment`; sampling passes no labels, i.e. the "nothing applied" condition, so
the augmentations do not leak into the generated distribution. The ops, in EDM's order, and their labels
(9 columns, `LABELS`):

| op             | parameter (when the op fires)                                   | labels                     |
|----------------|-----------------------------------------------------------------|----------------------------|
| xflip          | w in {0, 1} (a fair coin)                                       | w                          |
| yflip          | w in {0, 1} (a fair coin)                                       | w                          |
| scale          | w ~ N(0, 1), isotropic scale 2^(w scale_std)                     | w                          |
| rotate_frac    | w ~ U(-pi, pi) rotate_frac_max, rotation by w                   | cos(w) - 1, sin(w)         |
| aniso          | w ~ N(0, 1), scale 2^(w aniso_std) along an axis at angle b     | w cos(b), w sin(b)         |
|                | (b ~ U(-pi, pi) with probability aniso_rotate_prob, else 0)     |                            |
| translate_frac | (wx, wy) ~ N(0, I), shift (wx W, wy H) translate_frac_std       | wx, wy                     |

An op that does not fire leaves its labels at 0, so an untouched sample has the all-zero label. The defaults
are EDM's `--augment` setting (xflip=1e8, yflip=scale=rotate_frac=aniso=translate_frac=1): since
1e8 p >= 1 for any p > 0, every sample gets a fair-coin x-flip, while at p = 0 nothing happens at all.

The geometric ops compose one 3x3 matrix per sample that maps output pixel coordinates (centred, x right,
y down) to input coordinates; it is executed as in EDM: reflect padding by the margin the batch needs, 2x
upsampling with the symlet-6 wavelet low-pass filter, bilinear `grid_sample` at twice the output resolution,
and 2x downsampling with the same filter (the filter is orthogonal, so the identity transform reproduces the
image up to rounding). Differences from EDM:
- randomness comes from the caller's `torch.Generator`; the distributions are EDM's, not its random stream;
- the labels always have 9 columns; an op switched off (multiplier 0) keeps its columns at 0, where EDM
  drops them;
- samples where no geometric op fired skip the resampling (EDM resamples them too, which changes them
  only by rounding), so a flip-only sample is exactly the flipped image and p = 0 is exactly the identity;
- EDM's integer ops (rotate_int, translate_int) and colour ops are left out: its train.py never enables them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LABELS = ("xflip", "yflip", "scale", "rotate_cos", "rotate_sin", "aniso_cos", "aniso_sin", "translate_x", "translate_y")

# Low-pass decomposition filter of the symlet-6 wavelet (orthogonal: sum = sqrt(2), sum of squares = 1).
SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148)


def translate_matrix(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Homogeneous 2-D translation matrices (N, 3, 3) by (tx, ty), each (N,)."""
    m = torch.eye(3, device=tx.device).repeat(tx.shape[0], 1, 1)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def scale_matrix(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """Homogeneous 2-D scaling matrices (N, 3, 3) by (sx, sy), each (N,)."""
    m = torch.eye(3, device=sx.device).repeat(sx.shape[0], 1, 1)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def rotate_matrix(theta: torch.Tensor) -> torch.Tensor:
    """Homogeneous 2-D rotation matrices (N, 3, 3) by theta (N,): [[cos, -sin], [sin, cos]]."""
    m = torch.eye(3, device=theta.device).repeat(theta.shape[0], 1, 1)
    c, s = theta.cos(), theta.sin()
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def _upsample2x(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, 2H, 2W): zero insertion and the separable FIR filter f, EDM's alignment."""
    c, k = x.shape[1], f.numel()
    x = F.conv_transpose2d(x, f.view(1, 1, 1, k).expand(c, 1, 1, k), stride=(1, 2), padding=(0, k // 2 - 1), groups=c)
    return F.conv_transpose2d(x, f.view(1, 1, k, 1).expand(c, 1, k, 1), stride=(2, 1), padding=(k // 2 - 1, 0), groups=c)


def _downsample2x(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """(N, C, 2H, 2W) -> (N, C, H, W): the separable FIR filter f and stride 2, the adjoint of `_upsample2x`."""
    c, k = x.shape[1], f.numel()
    x = F.conv2d(x, f.view(1, 1, 1, k).expand(c, 1, 1, k), stride=(1, 2), padding=(0, k // 2 - 1), groups=c)
    return F.conv2d(x, f.view(1, 1, k, 1).expand(c, 1, k, 1), stride=(2, 1), padding=(k // 2 - 1, 0), groups=c)


def warp(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Resample images (N, C, H, W) through per-sample 3x3 matrices (N, 3, 3) that map output to input pixel
    coordinates, both centred on the image ((W - 1) / 2, (H - 1) / 2), x right and y down.

    EDM's execution of the geometric transform (Karras et al. 2022, Sec. 5): reflect padding wide
    enough for the batch, symlet-6 2x upsampling, bilinear sampling at 2x, symlet-6 2x downsampling.
    """
    n, c, h, w = images.shape
    dev = images.device
    f = torch.tensor(SYM6, dtype=images.dtype, device=dev)
    a = f.numel() // 4                                           # output margin that the downsampling filter eats
    matrices = matrices.to(dev, torch.float32)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    corners = torch.tensor([[-cx, cx, cx, -cx], [-cy, -cy, cy, cy], [1.0] * 4], device=dev)
    reach = (matrices @ corners)[:, :2]                                          # (N, 2, 4) input coords of the corners
    centre = torch.tensor([cx, cy], device=dev)
    limit = torch.tensor([w - 1, h - 1], device=dev)                             # reflect padding needs pad < size
    lo = ((-reach).amax(dim=(0, 2)) - centre + 2 * a).clamp(min=0).minimum(limit).ceil()
    hi = (reach.amax(dim=(0, 2)) - centre + 2 * a).clamp(min=0).minimum(limit).ceil()
    (px0, py0), (px1, py1) = lo.int().tolist(), hi.int().tolist()
    up = _upsample2x(F.pad(images, [px0, px1, py0, py1], mode="reflect"), f)  # (N, C, 2 Hp, 2 Wp)

    # Output samples on the 2x grid with the margin a: upsampled index u sits at pixel u / 2 - a.
    xs = torch.arange(2 * (w + 2 * a), device=dev) / 2 - a - cx
    ys = torch.arange(2 * (h + 2 * a), device=dev) / 2 - a - cy
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    out = torch.stack([gx, gy, torch.ones_like(gx)]).flatten(1)                # (3, P)
    src = (matrices @ out)[:, :2]                                                # (N, 2, P) centred input coords
    k = 2 * (src + (centre + torch.tensor([px0, py0], device=dev))[:, None])   # upsampled input pixel index
    size = torch.tensor([up.shape[3], up.shape[2]], device=dev)[:, None]
    grid = ((2 * k + 1) / size - 1).transpose(1, 2).reshape(n, len(ys), len(xs), 2)   # align_corners=False
    sampled = F.grid_sample(up, grid.to(up.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    return _downsample2x(sampled, f)[:, :, a:-a, a:-a]


class AugmentPipe:
    """EDM's augmentation pipe: `pipe(images, generator) -> (augmented images, labels (N, 9))`, see the module doc."""

    def __init__(self, p: float, xflip: float = 1e8, yflip: float = 1.0, scale: float = 1.0, rotate_frac: float = 1.0,
                 aniso: float = 1.0, translate_frac: float = 1.0, scale_std: float = 0.2, rotate_frac_max: float = 1.0,
                 aniso_std: float = 0.2, aniso_rotate_prob: float = 0.5, translate_frac_std: float = 0.125):
        self.p = float(p)
        self.xflip, self.yflip, self.scale = float(xflip), float(yflip), float(scale)
        self.rotate_frac, self.aniso, self.translate_frac = float(rotate_frac), float(aniso), float(translate_frac)
        self.scale_std, self.rotate_frac_max = float(scale_std), float(rotate_frac_max)
        self.aniso_std, self.aniso_rotate_prob = float(aniso_std), float(aniso_rotate_prob)
        self.translate_frac_std = float(translate_frac_std)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(images.device.type, enabled=False):    # float32 matrices and resampling under bf16 training
            return self._augment(images, generator)

    def _augment(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = images.shape
        dev = images.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=generator, device=generator.device).to(dev)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=generator, device=generator.device).to(dev)

        def fires(multiplier: float) -> torch.Tensor:
            """Which samples the op touches: U(0, 1) < multiplier * p, as float (N,)."""
            return (rand(n) < multiplier * self.p).float()

        # Pixel blitting: flips with a fair coin where the op fires.
        flip_x = (rand(n) < 0.5).float() * fires(self.xflip)
        flip_y = (rand(n) < 0.5).float() * fires(self.yflip)
        out = torch.where(flip_x.bool()[:, None, None, None], images.flip(3), images)
        out = torch.where(flip_y.bool()[:, None, None, None], out.flip(2), out)

        # Geometric ops: G maps output to input coordinates and is composed in EDM's order.
        w_scale = randn(n) * fires(self.scale)
        s = torch.exp2(w_scale * self.scale_std)
        G = scale_matrix(1 / s, 1 / s)
        w_rot = (rand(n) * 2 - 1) * math.pi * self.rotate_frac_max * fires(self.rotate_frac)
        G = G @ rotate_matrix(w_rot)
        w_aniso = randn(n) * fires(self.aniso)
        b = (rand(n) * 2 - 1) * math.pi * (rand(n) < self.aniso_rotate_prob).float()
        s = torch.exp2(w_aniso * self.aniso_std)
        G = G @ rotate_matrix(-b) @ scale_matrix(1 / s, s) @ rotate_matrix(b)
        w_tr = randn(2, n) * fires(self.translate_frac)
        G = G @ translate_matrix(-w_tr[0] * w * self.translate_frac_std, -w_tr[1] * h * self.translate_frac_std)

        moved = (w_scale != 0) | (w_rot != 0) | (w_aniso != 0) | (w_tr != 0).any(dim=0)   # (N,) a geometric op fired
        if bool(moved.any()):
            out = out.index_put((moved,), warp(out[moved].float(), G[moved]).to(out.dtype))
        labels = torch.stack([flip_x, flip_y, w_scale, w_rot.cos() - 1, w_rot.sin(),
                              w_aniso * b.cos(), w_aniso * b.sin(), w_tr[0], w_tr[1]], dim=1)
        return out, labels
