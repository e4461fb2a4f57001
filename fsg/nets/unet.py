"""A compact configurable UNet for small images (digits, MNIST, CIFAR-sized experiments on CPU).

DDPM++-like: residual blocks with GroupNorm, SiLU, a noise-level embedding added through an affine
scale/shift, optional self-attention at chosen resolutions, average-pool down and nearest up. For the
public architectures with their reference parameter names see `fsg.nets.adm` and `fsg.nets.edm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fsg.nets.layers import SecondTime, modulate, small_net_embedding
from fsg.nets.mlp import FourierEmbedding


@dataclass(frozen=True)
class UNetConfig:
    arch: Literal["unet"] = "unet"
    model_channels: int = 32                 # channels at the highest resolution
    channel_mult: tuple[int, ...] = (1, 2, 2)  # channel multiplier per resolution level
    num_res_blocks: int = 1                  # residual blocks per level
    attn_resolutions: tuple[int, ...] = ()   # resolutions with self-attention
    dropout: float = 0.0                     # dropout inside residual blocks
    label_dropout: float = 0.0               # kept for recipes; applied by the engine (classifier-free guidance)
    time_scale: float = 250.0                # the embedding sees time_scale * c_noise (250: 250 ln sigma for EDM)
    double_norm: bool = False                # unit-RMS scale and shift (Lu & Song 2025, Sec. 4.1)
    two_times: bool = False                  # a second time input (a flow map's t - r, MeanFlow)

    def build(self, shape, out_channels: int, cond_channels: int = 0, num_classes: int = 0) -> nn.Module:
        return UNet(shape[0], shape[-1], out_channels, cond_channels, num_classes, self)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, ch // 4) if ch >= 4 else 1, ch)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, dropout: float, double_norm: bool = False):
        super().__init__()
        self.double_norm = double_norm
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb, 2 * cout)
        self.norm2, self.drop, self.conv2 = _norm(cout), nn.Dropout(dropout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, e):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.affine(e)[:, :, None, None].chunk(2, dim=1)      # (N, cout, 1, 1) each
        h = F.silu(modulate(self.norm2(h), scale, shift, self.double_norm))
        return self.skip(x) + self.conv2(self.drop(h))


class Attention(nn.Module):
    def __init__(self, ch: int, head_channels: int = 32):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        self.norm, self.qkv, self.proj = _norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, e=None):
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)  # (N, heads, hc, HW)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))  # (N, heads, HW, hc)
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class UNet(nn.Module):
    def __init__(self, in_ch: int, res: int, out_ch: int, cond_ch: int, num_classes: int, cfg: UNetConfig):
        super().__init__()
        mc, emb = cfg.model_channels, cfg.model_channels * 4
        self.time = FourierEmbedding(mc, scale=cfg.time_scale)
        self.time_mlp = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.two_times = cfg.two_times
        self.time2 = SecondTime(FourierEmbedding(mc, scale=cfg.time_scale), mc, emb) if cfg.two_times else None
        self.num_classes = num_classes
        self.label = nn.Embedding(num_classes + 1, emb) if num_classes else None   # last index = dropped label
        self.inp = nn.Conv2d(in_ch + cond_ch, mc, 3, padding=1)
        self.down, chans, ch = nn.ModuleList(), [mc], mc
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, mc * mult, emb, cfg.dropout, cfg.double_norm)]
                ch = mc * mult
                if res >> level in cfg.attn_resolutions:
                    layers.append(Attention(ch))
                self.down.append(nn.ModuleList(layers))
                chans.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.AvgPool2d(2)]))
                chans.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb, cfg.dropout, cfg.double_norm), Attention(ch), ResBlock(ch, ch, emb, cfg.dropout, cfg.double_norm)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), mc * mult, emb, cfg.dropout, cfg.double_norm)]
                ch = mc * mult
                if res >> level in cfg.attn_resolutions:
                    layers.append(Attention(ch))
                self.up.append(nn.ModuleList(layers))
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest")]))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _run(layers, h, e):
        for layer in layers:
            h = layer(h, e) if isinstance(layer, (ResBlock, Attention)) else layer(h)
        return h

    def forward(self, x, noise_labels, class_labels=None, cond=None, time2=None):
        e = small_net_embedding(self, noise_labels, class_labels, time2)        # (N, emb)
        h = self.inp(x if cond is None else torch.cat([x, cond], dim=1))         # (N, mc, H, W)
        skips = [h]
        for layers in self.down:
            h = self._run(layers, h, e)
            skips.append(h)
        h = self._run(self.mid, h, e)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(layers, h, e)
        return self.out(h)
