"""NVlabs/edm's networks with EDM's parameter names: SongUNet (DDPM++ / NCSN++) and DhariwalUNet (ADM).

Module names follow EDM's `training/networks.py` (`map_noise`, `map_label`, `map_augment`,
`map_layer0/1`, `enc` / `dec` dicts keyed `{res}x{res}_{kind}`, blocks with `norm0`, `conv0`, `affine`,
`norm1`, `conv1`, `skip`, `norm2`, `qkv`, `proj`, and the `resample_filter` buffers), so the state of an
EDM or ECT network loads strictly. The defaults are EDM's CIFAR-10 DDPM++ and ImageNet-64 ADM.

EDM's networks take `noise_labels` = c_noise as is and one-hot class labels; here class labels are int64
indices, converted inside, with -1 meaning "no label" (the all-zero vector, EDM's dropped label).
`map_augment` (with `augment_dim` > 0) embeds the labels of EDM's augmentation pipe (`fsg.data.augment`), added
to the noise embedding as EDM does; training with `train.augment` passes them, sampling never does (as EDM's
`generate.py`), which is the "no augmentation" condition since the layer has no bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fsg.nets.layers import SecondTime, add_embedding, at_least_float32, modulate, second_time


@dataclass(frozen=True)
class SongUNetConfig:
    arch: Literal["songunet"] = "songunet"
    model_channels: int = 128                                # base multiplier for the number of channels
    channel_mult: tuple[int, ...] = (2, 2, 2)                # per-resolution multipliers of the channels
    channel_mult_emb: int = 4                                # embedding size = model_channels * this
    num_blocks: int = 4                                      # residual blocks per resolution
    attn_resolutions: tuple[int, ...] = (16,)                # resolutions with self-attention
    dropout: float = 0.13                                    # dropout of intermediate activations
    embedding_type: Literal["positional", "fourier"] = "positional"  # noise embedding: DDPM++ / NCSN++
    channel_mult_noise: int = 1                              # noise embedding size multiplier: 1 DDPM++, 2 NCSN++
    encoder_type: Literal["standard", "skip", "residual"] = "standard"  # DDPM++ standard, NCSN++ residual
    decoder_type: Literal["standard", "skip"] = "standard"   # standard for both
    resample_filter: tuple[int, ...] = (1, 1)                # FIR filter: (1, 1) DDPM++, (1, 3, 3, 1) NCSN++
    augment_dim: int = 0                                     # augmentation labels (EDM CIFAR-10: 9; train.augment needs 9)
    double_norm: bool = False                                # unit-RMS time modulation (Lu & Song 2025, Sec. 4.1)
    two_times: bool = False                                  # a second time input (a flow map's t - r, MeanFlow)

    def build(self, shape: tuple, out_channels: int, cond_channels: int = 0, num_classes: int = 0) -> nn.Module:
        return SongUNet(self, tuple(shape), out_channels, cond_channels, num_classes)


@dataclass(frozen=True)
class DhariwalUNetConfig:
    arch: Literal["dhariwal"] = "dhariwal"
    model_channels: int = 192                                # base multiplier for the number of channels
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)             # per-resolution multipliers of the channels
    channel_mult_emb: int = 4                                # embedding size = model_channels * this
    num_blocks: int = 3                                      # residual blocks per resolution
    attn_resolutions: tuple[int, ...] = (32, 16, 8)          # resolutions with self-attention
    dropout: float = 0.10                                    # dropout of intermediate activations
    augment_dim: int = 0                                     # augmentation labels (train.augment needs 9)
    double_norm: bool = False                                # unit-RMS scale and shift (Lu & Song 2025, Sec. 4.1)
    two_times: bool = False                                  # a second time input (a flow map's t - r, MeanFlow)

    def build(self, shape: tuple, out_channels: int, cond_channels: int = 0, num_classes: int = 0) -> nn.Module:
        return DhariwalUNet(self, tuple(shape), out_channels, cond_channels, num_classes)


def _weight_init(shape: list[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init mode {mode!r}")


def _linear(in_features: int, out_features: int, bias: bool = True, init_mode: str = "kaiming_normal",
            init_weight: float = 1.0, init_bias: float = 0.0) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(_weight_init([out_features, in_features], init_mode, in_features, out_features) * init_weight)
        if bias:
            layer.bias.copy_(_weight_init([out_features], init_mode, in_features, out_features) * init_bias)
    return layer


def _group_norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels, eps=eps)


class Conv2d(nn.Module):
    """EDM's convolution with optional 2x up/downsampling by a separable FIR filter; kernel 0 only resamples."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: tuple[int, ...] = (1, 1), fused_down: bool = False,
                 init_mode: str = "kaiming_normal", init_weight: float = 1.0, init_bias: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels, self.up, self.down, self.fused_down = in_channels, out_channels, up, down, fused_down
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = nn.Parameter(_weight_init([out_channels, in_channels, kernel, kernel], **fans) * init_weight) if kernel else None
        self.bias = nn.Parameter(_weight_init([out_channels], **fans) * init_bias) if kernel and bias else None
        if up or down:
            f = torch.as_tensor(resample_filter, dtype=torch.float32)
            self.register_buffer("resample_filter", torch.outer(f, f)[None, None] / f.sum() ** 2)   # (1, 1, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w_pad = w.shape[-1] // 2 if w is not None else 0
        if self.up or self.down:
            f = self.resample_filter
            f_pad = (f.shape[-1] - 1) // 2
        if self.fused_down:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, (4 * f).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class UNetBlock(nn.Module):
    """EDM's residual block with optional up/downsampling and multi-head self-attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: int | None = None, channels_per_head: int = 64,
                 dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5,
                 resample_filter: tuple[int, ...] = (1, 1), resample_proj: bool = False, adaptive_scale: bool = True,
                 init: dict | None = None, init_zero: dict | None = None, init_attn: dict | None = None,
                 double_norm: bool = False):
        super().__init__()
        init = init or {}
        init_zero = init_zero if init_zero is not None else dict(init_weight=0.0)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_heads = 0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        self.double_norm = double_norm

        self.norm0 = _group_norm(in_channels, eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = _linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = _group_norm(out_channels, eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = _group_norm(out_channels, eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)                       # (N, C or 2C, 1, 1)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(modulate(self.norm1(x), scale, shift, self.double_norm))
        else:
            x = F.silu(self.norm1(add_embedding(x, params, self.double_norm)))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            n, c, h, w = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(n, self.num_heads, c // self.num_heads, 3, h * w).unbind(3)  # (N, heads, d, HW)
            a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))       # (N, heads, HW, d)
            x = (self.proj(a.transpose(-1, -2).reshape(n, c, h, w)) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """Transformer-style embedding [cos(x w_i), sin(x w_i)], w_i = (1/max_positions)^(i / (C/2 - endpoint))."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        args = torch.outer(at_least_float32(x), (1 / self.max_positions) ** freqs.to(at_least_float32(x).dtype))           # (N, C/2)
        return torch.cat([args.cos(), args.sin()], dim=1)                          # (N, C)


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos(2 pi x f_i), sin(2 pi x f_i)], f_i ~ N(0, scale^2) (NCSN++)."""

    def __init__(self, num_channels: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = torch.outer(at_least_float32(x), 2 * math.pi * self.freqs.to(at_least_float32(x).dtype))                   # (N, C/2)
        return torch.cat([args.cos(), args.sin()], dim=1)                          # (N, C)


def _one_hot(class_labels: torch.Tensor | None, num_classes: int, n: int, device) -> torch.Tensor:
    """int64 labels (N,) -> one-hot (N, num_classes); -1 or no labels -> the zero vector."""
    if class_labels is None:
        return torch.zeros(n, num_classes, device=device)
    labels = class_labels.long()
    return F.one_hot(labels.clamp(min=0), num_classes).float() * (labels >= 0)[:, None]


class SongUNet(nn.Module):
    """DDPM++ / NCSN++ of Song et al. 2021 as reimplemented by EDM (Karras et al. 2022, Appendix F.2)."""

    def __init__(self, cfg: SongUNetConfig, shape: tuple, out_channels: int, cond_channels: int, num_classes: int):
        super().__init__()
        res0, emb_channels, noise_channels = shape[-1], cfg.model_channels * cfg.channel_mult_emb, cfg.model_channels * cfg.channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block = partial(UNetBlock, emb_channels=emb_channels, num_heads=1, dropout=cfg.dropout, skip_scale=math.sqrt(0.5),
                        eps=1e-6, resample_filter=cfg.resample_filter, resample_proj=True, adaptive_scale=False,
                        init=init, init_zero=init_zero, init_attn=init_attn, double_norm=cfg.double_norm)

        self.map_noise = (PositionalEmbedding(noise_channels, endpoint=True) if cfg.embedding_type == "positional"
                          else FourierEmbedding(noise_channels))
        self.map_label = _linear(num_classes, noise_channels, **init) if num_classes else None
        self.map_augment = _linear(cfg.augment_dim, noise_channels, bias=False, **init) if cfg.augment_dim else None
        self.map_layer0 = _linear(noise_channels, emb_channels, **init)
        self.map_layer1 = _linear(emb_channels, emb_channels, **init)
        self.two_times = cfg.two_times
        self.map_time2 = (SecondTime(PositionalEmbedding(noise_channels, endpoint=True) if cfg.embedding_type == "positional"
                                     else FourierEmbedding(noise_channels), noise_channels, emb_channels)
                          if cfg.two_times else None)

        self.enc = nn.ModuleDict()
        cout = caux = shape[0] + cond_channels
        for level, mult in enumerate(cfg.channel_mult):
            res = res0 >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, cfg.model_channels, 3, **init)
                cout = cfg.model_channels
            else:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, down=True)
                if cfg.encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True, resample_filter=cfg.resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1, **init)
                if cfg.encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, 3, down=True, resample_filter=cfg.resample_filter,
                                                                   fused_down=True, **init)
                    caux = cout
            for idx in range(cfg.num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = block(cout, cfg.model_channels * mult, attention=res in cfg.attn_resolutions)
                cout = cfg.model_channels * mult
        skips = [b.out_channels for name, b in self.enc.items() if "aux" not in name]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            res = res0 >> level
            if level == len(cfg.channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout)
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, up=True)
            for idx in range(cfg.num_blocks + 1):
                attn = idx == cfg.num_blocks and res in cfg.attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = block(cout + skips.pop(), cfg.model_channels * mult, attention=attn)
                cout = cfg.model_channels * mult
            if cfg.decoder_type == "skip" or level == 0:
                if cfg.decoder_type == "skip" and level < len(cfg.channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True, resample_filter=cfg.resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = _group_norm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3, **init_zero)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, augment_labels: torch.Tensor | None = None,
                time2: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[0]
        emb = self.map_noise(noise_labels).reshape(n, 2, -1).flip(1).reshape(n, -1)    # (N, C): [sin, cos], as EDM
        if self.map_label is not None:
            k = self.map_label.in_features
            emb = emb + self.map_label(_one_hot(class_labels, k, n, x.device) * math.sqrt(k))
        if augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))                 # (N, augment_dim) -> (N, C)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))                            # (N, emb_channels)
        emb = F.silu(emb + second_time(self.map_time2, time2, emb))

        x = x if cond is None else torch.cat([x, cond], dim=1)                          # (N, C + Cc, H, W)
        skips, aux = [], x
        for name, block in self.enc.items():
            if name.endswith("_aux_down"):
                aux = block(aux)
            elif name.endswith("_aux_skip"):
                x = skips[-1] = x + block(aux)
            elif name.endswith("_aux_residual"):
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        out = tmp = None
        for name, block in self.dec.items():
            if name.endswith("_aux_up"):
                out = block(out)
            elif name.endswith("_aux_norm"):
                tmp = block(x)
            elif name.endswith("_aux_conv"):
                tmp = block(F.silu(tmp))
                out = tmp if out is None else tmp + out
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return out


class DhariwalUNet(nn.Module):
    """ADM of Dhariwal & Nichol 2021 as reimplemented by EDM (Karras et al. 2022, Appendix F.2)."""

    def __init__(self, cfg: DhariwalUNetConfig, shape: tuple, out_channels: int, cond_channels: int, num_classes: int):
        super().__init__()
        res0, mc, emb_channels = shape[-1], cfg.model_channels, cfg.model_channels * cfg.channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0.0, init_bias=0.0)
        block = partial(UNetBlock, emb_channels=emb_channels, channels_per_head=64, dropout=cfg.dropout,
                        init=init, init_zero=init_zero, double_norm=cfg.double_norm)

        self.map_noise = PositionalEmbedding(mc)
        self.map_augment = _linear(cfg.augment_dim, mc, bias=False, **init_zero) if cfg.augment_dim else None
        self.map_layer0 = _linear(mc, emb_channels, **init)
        self.map_layer1 = _linear(emb_channels, emb_channels, **init)
        self.two_times = cfg.two_times
        self.map_time2 = SecondTime(PositionalEmbedding(mc), mc, emb_channels) if cfg.two_times else None
        self.map_label = (_linear(num_classes, emb_channels, bias=False, init_mode="kaiming_normal",
                                  init_weight=math.sqrt(num_classes)) if num_classes else None)

        self.enc = nn.ModuleDict()
        cout = shape[0] + cond_channels
        for level, mult in enumerate(cfg.channel_mult):
            res = res0 >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, mc * mult, 3, **init)
                cout = mc * mult
            else:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, down=True)
            for idx in range(cfg.num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = block(cout, mc * mult, attention=res in cfg.attn_resolutions)
                cout = mc * mult
        skips = [b.out_channels for b in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            res = res0 >> level
            if level == len(cfg.channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout)
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, up=True)
            for idx in range(cfg.num_blocks + 1):
                self.dec[f"{res}x{res}_block{idx}"] = block(cout + skips.pop(), mc * mult, attention=res in cfg.attn_resolutions)
                cout = mc * mult
        self.out_norm = _group_norm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3, **init_zero)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, augment_labels: torch.Tensor | None = None,
                time2: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_noise(noise_labels)                                              # (N, model_channels)
        if augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))                             # (N, emb_channels)
        emb = emb + second_time(self.map_time2, time2, emb)
        if self.map_label is not None:
            emb = emb + self.map_label(_one_hot(class_labels, self.map_label.in_features, x.shape[0], x.device))
        emb = F.silu(emb)

        x = x if cond is None else torch.cat([x, cond], dim=1)                          # (N, C + Cc, H, W)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))
