"""A small residual MLP with a Fourier time embedding, for 2-D toy data."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fsg.nets.layers import SecondTime, add_embedding, at_least_float32, small_net_embedding


@dataclass(frozen=True)
class MLPConfig:
    arch: Literal["mlp"] = "mlp"
    hidden: int = 128            # width of every hidden layer
    depth: int = 3               # number of residual blocks
    emb_dim: int = 64            # size of the noise-level embedding
    dropout: float = 0.0         # dropout inside the residual blocks
    time_scale: float = 250.0    # the embedding sees time_scale * c_noise (250: c_noise = ln(sigma)/4 as 250 ln sigma)
    double_norm: bool = False    # unit-RMS time modulation (Lu & Song 2025, Sec. 4.1)
    two_times: bool = False      # a second time input (a flow map's t - r, MeanFlow)

    def build(self, shape, out_channels: int, cond_channels: int = 0, num_classes: int = 0) -> nn.Module:
        return MLP(shape[0], out_channels, cond_channels, num_classes, self)


class FourierEmbedding(nn.Module):
    """Sinusoidal (positional) embedding of a scalar with geometric frequencies (as in the Transformer / DDPM) of
    `scale` times the input: 250 makes c_noise = ln(sigma)/4 the reference's 250 ln sigma; 1 embeds it as it is."""

    def __init__(self, dim: int, max_period: float = 10000.0, scale: float = 250.0):
        super().__init__()
        half = dim // 2
        self.scale = scale
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / half), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = at_least_float32(t)[:, None] * self.freqs[None] * self.scale  # (N, dim/2)
        return torch.cat([args.cos(), args.sin()], dim=1)          # (N, dim)


class _Block(nn.Module):
    def __init__(self, width: int, emb: int, dropout: float, double_norm: bool = False):
        super().__init__()
        self.double_norm = double_norm
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb, width)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h, e):
        y = add_embedding(self.fc1(torch.nn.functional.silu(self.norm(h))), self.emb(e), self.double_norm)
        return h + self.fc2(self.drop(torch.nn.functional.silu(y)))


class MLP(nn.Module):
    def __init__(self, dim: int, out_dim: int, cond_dim: int, num_classes: int, cfg: MLPConfig):
        super().__init__()
        self.time = FourierEmbedding(cfg.emb_dim, scale=cfg.time_scale)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.emb_dim, cfg.emb_dim), nn.SiLU(), nn.Linear(cfg.emb_dim, cfg.emb_dim))
        self.two_times = cfg.two_times
        self.time2 = SecondTime(FourierEmbedding(cfg.emb_dim, scale=cfg.time_scale), cfg.emb_dim, cfg.emb_dim) if cfg.two_times else None
        self.label = nn.Embedding(num_classes + 1, cfg.emb_dim) if num_classes else None  # last index = dropped label
        self.num_classes = num_classes
        self.inp = nn.Linear(dim + cond_dim, cfg.hidden)
        self.blocks = nn.ModuleList(_Block(cfg.hidden, cfg.emb_dim, cfg.dropout, cfg.double_norm) for _ in range(cfg.depth))
        self.out = nn.Sequential(nn.LayerNorm(cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, out_dim))

    def forward(self, x, noise_labels, class_labels=None, cond=None, time2=None):
        e = small_net_embedding(self, noise_labels, class_labels, time2)        # (N, emb)
        h = self.inp(x if cond is None else torch.cat([x, cond], dim=1))  # (N, hidden)
        for block in self.blocks:
            h = block(h, e)
        return self.out(h)
