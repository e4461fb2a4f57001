"""Decoder growth (Stage 3 of PaGoDA, Kim et al. 2024): append upsampling levels to a UNet's output path.

A grown network is the base UNet (built at the teacher's resolution, its own output layer removed),
followed by `levels` new levels (each a 2x up-ResBlock and `num_res_blocks` ResBlocks at `channels`
channels) and a new output layer `out`. It is called on images at the grown resolution R and sees them
through a 2^levels average pool, so a generator input z at the teacher's resolution, nearest-upsampled to
R, reaches the base network unchanged (the average pool inverts nearest upsampling exactly); the skip
term c_skip x of the preconditioning then lives at R too.

    cfg = GrownConfig(base=UNetConfig(...), levels=2, channels=32)
    net = cfg.build((1, 32, 32), 1)          # base UNet at 8x8, two new levels, output at 32x32
    copied = copy_matching(net, old_state)   # every old weight with a matching name and shape

Weight names: the base network's weights keep their names under `base.`, the new levels are `levels.i.*`
and the output layer `out.*`; a plain (ungrown) network's own `out.*` maps onto the grown `out.*`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import nn

from fsg.errors import UserError
from fsg.nets.adm import ADMConfig
from fsg.nets.unet import UNetConfig

# the attribute holding the output (decoder) blocks of each base architecture, indexed as the reference does
OUTPUT_BLOCKS = {"unet": "up", "adm": "output_blocks"}


@dataclass(frozen=True)
class GrownConfig:
    arch: Literal["grown"] = "grown"
    base: Union[UNetConfig, ADMConfig] = field(default_factory=UNetConfig)  # the network at the teacher's resolution
    levels: int = 1                          # appended 2x upsampling levels (output resolution = base * 2^levels)
    channels: int = 192                      # channels of the new levels (PaGoDA's num_channels_high)
    num_res_blocks: int = 2                  # ResBlocks after each up-ResBlock (num_res_blocks_high)

    def build(self, shape, out_channels: int, cond_channels: int = 0, num_classes: int = 0) -> nn.Module:
        if cond_channels:
            raise UserError("network.arch grown: condition images are not supported")
        factor = 2 ** self.levels
        if self.levels < 1 or shape[-1] % factor:
            raise UserError(f"network.levels: the resolution {shape[-1]} is not a multiple of 2^{self.levels}")
        base_shape = (shape[0], shape[-2] // factor, shape[-1] // factor)
        return GrownNet(self, self.base.build(base_shape, out_channels, 0, num_classes), out_channels)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, ch // 4) if ch >= 4 else 1, ch)


class PlainResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus a skip; `up` doubles the resolution first (an up-ResBlock).

    Unconditioned: the generator is called at the single time sigma_max, so a time embedding would be a
    constant; class information reaches the new levels through the base network's features."""

    def __init__(self, cin: int, cout: int, up: bool = False):
        super().__init__()
        self.up = up
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(x))
        if self.up:
            h, x = F.interpolate(h, scale_factor=2.0, mode="nearest"), F.interpolate(x, scale_factor=2.0, mode="nearest")
        h = self.conv2(F.silu(self.norm2(self.conv1(h))))
        return self.skip(x) + h


def base_features(net: nn.Module) -> int:
    """Channels entering a base network's output layer (the conv of its `out` head)."""
    return net.out[-1].in_channels


class GrownNet(nn.Module):
    def __init__(self, cfg: GrownConfig, base: nn.Module, out_channels: int):
        super().__init__()
        self.factor = 2 ** cfg.levels
        ch = base_features(base)
        base.out = nn.Identity()             # the base now returns its decoder features
        self.base = base
        self.levels = nn.ModuleList()
        for _ in range(cfg.levels):
            blocks = [PlainResBlock(ch, cfg.channels, up=True)]
            blocks += [PlainResBlock(cfg.channels, cfg.channels) for _ in range(cfg.num_res_blocks)]
            self.levels.append(nn.Sequential(*blocks))
            ch = cfg.channels
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))
        self.two_times = getattr(base, "two_times", False)

    def forward(self, x, noise_labels, class_labels=None, cond=None, time2=None):
        h = self.base(F.avg_pool2d(x, self.factor), noise_labels, class_labels, time2=time2)   # (N, ch, R/2^L, R/2^L)
        for level in self.levels:
            h = level(h)                                                         # resolution x2
        return self.out(h)                                                       # (N, C, R, R)


def grown_config(net_cfg, levels: int, channels: int, num_res_blocks: int) -> GrownConfig:
    """The config of `net_cfg` (plain or already grown) with `levels` more levels; the new levels of an
    already grown network keep its channels and block count."""
    if isinstance(net_cfg, GrownConfig):
        return GrownConfig(base=net_cfg.base, levels=net_cfg.levels + levels, channels=net_cfg.channels,
                           num_res_blocks=net_cfg.num_res_blocks)
    if net_cfg.arch not in OUTPUT_BLOCKS:
        raise UserError(f"decoder growth supports network.arch {', '.join(OUTPUT_BLOCKS)}; this model is '{net_cfg.arch}'")
    return GrownConfig(base=net_cfg, levels=levels, channels=channels, num_res_blocks=num_res_blocks)


def grown_name(name: str, plain: bool) -> str:
    """Where a weight of the previous stage lives in a grown network."""
    return name if not plain or name.startswith("out.") else f"base.{name}"


@torch.no_grad()
def copy_matching(net: GrownNet, old_state: dict[str, torch.Tensor], plain: bool) -> list[str]:
    """Copy every old weight whose (mapped) name and shape match into `net`; returns the names copied."""
    own = net.state_dict()
    copied = []
    for name, value in old_state.items():
        target = grown_name(name, plain)
        if target in own and own[target].shape == value.shape:
            own[target].copy_(value)
            copied.append(name)
    return copied


def freeze_by_block(net: GrownNet, activate_from: int) -> list[str]:
    """Freeze all but the base's output blocks i >= `activate_from`, the new levels and `out`, as the
    reference's `progressive=True`; returns the names of the parameters that still train."""
    blocks = getattr(net.base, OUTPUT_BLOCKS[_base_arch(net)])
    if not 0 <= activate_from <= len(blocks):
        raise UserError(f"method.activate_from: must lie in [0, {len(blocks)}] (the base has {len(blocks)} output blocks)")
    net.requires_grad_(False)
    for block in list(blocks)[activate_from:] + [net.levels, net.out]:
        block.requires_grad_(True)
    return [n for n, p in net.named_parameters() if p.requires_grad]


def _base_arch(net: GrownNet) -> str:
    return next(arch for arch, attr in OUTPUT_BLOCKS.items() if hasattr(net.base, attr))


def upsampling_factor(net_cfg) -> int:
    """Output resolution / resolution of the generator's latent: 2^levels for a grown network, else 1."""
    return 2 ** net_cfg.levels if isinstance(net_cfg, GrownConfig) else 1
