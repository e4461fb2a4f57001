"""The ADM UNet of guided-diffusion (Dhariwal & Nichol 2021) as used by openai/consistency_models and DDBM.

Module structure and parameter names follow guided-diffusion's `UNetModel` (`time_embed`, `label_emb`,
`input_blocks`, `middle_block`, `output_blocks`, `out`; residual blocks with `in_layers`, `emb_layers`,
`out_layers`, `skip_connection`; attention blocks with `norm`, `qkv`, `proj_out`), so the released CM and
DDBM state dicts load with `strict=True`.

Attention runs through `torch.nn.functional.scaled_dot_product_attention`; there is no flash-attn
dependency. The reference variants differ in two ways, both handled here:
- the order of the qkv output channels: (q|k|v, head, channel) for the flash-attn code of CM and DDBM
  (`new_attention_order=True`), (head, q|k|v, channel) for guided-diffusion's `QKVAttentionLegacy`;
- the rank of the 1x1 `qkv`/`proj_out` weights: conv2d [O, I, 1, 1] in CM and DDBM, conv1d [O, I, 1] in
  guided-diffusion and in DBIM (whose `preprocess_ckpt.py` squeezes DDBM's). Both load; conv1d weights
  are reshaped on load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from fsg.errors import UserError
from fsg.nets.layers import SecondTime, add_embedding, at_least_float32, modulate, second_time


@dataclass(frozen=True)
class ADMConfig:
    arch: Literal["adm"] = "adm"
    model_channels: int = 192                               # base channel count (`--num_channels`)
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)            # channel multiplier per resolution level
    num_res_blocks: int = 3                                 # residual blocks per level
    attention_resolutions: tuple[int, ...] = (32, 16, 8)    # resolutions with self-attention
    num_head_channels: int = 64                             # channels per attention head
    use_scale_shift_norm: bool = True                       # condition as GroupNorm(h) * (1 + scale) + shift
    resblock_updown: bool = True                            # resample with residual blocks (else strided conv / nearest + conv)
    new_attention_order: bool = True                        # qkv channels (q|k|v, head, ch) as CM/DDBM; False: (head, q|k|v, ch)
    dropout: float = 0.0                                    # dropout inside the residual blocks
    null_label: bool = False                                # learn an embedding for class label -1 (classifier-free guidance)
    time_scale: float = 1000.0                              # timesteps = time_scale * noise_labels (250 ln sigma for CM/DDBM)
    use_checkpoint: bool = False                            # gradient checkpointing of residual and attention blocks
    double_norm: bool = False                               # unit-RMS scale and shift (Lu & Song 2025, Sec. 4.1)
    two_times: bool = False                                 # a second time input (a flow map's t - r, MeanFlow)

    def build(self, shape: tuple, out_channels: int, cond_channels: int = 0, num_classes: int = 0) -> nn.Module:
        return ADMUNet(self, tuple(shape), out_channels, cond_channels, num_classes)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(t w_i), sin(t w_i)] with w_i = max_period^(-i / (dim/2)), as guided-diffusion."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = at_least_float32(t)[:, None] * freqs[None]                     # (N, dim/2)
    return torch.cat([args.cos(), args.sin()], dim=1)           # (N, dim)


class _TimestepEmbedding(nn.Module):
    """`timestep_embedding` of time_scale * t as a module (the second time input of a two-time network)."""

    def __init__(self, dim: int, time_scale: float):
        super().__init__()
        self.dim, self.time_scale = dim, time_scale

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(self.time_scale * t, self.dim)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, computed in float32 whatever the input dtype."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(at_least_float32(x)).to(x.dtype)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _run(fn, *args, checkpointed: bool):
    """fn(*args), recomputed in the backward pass when gradient checkpointing is on."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _resample(x: torch.Tensor, how: str | None) -> torch.Tensor:
    if how == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    if how == "down":
        return F.avg_pool2d(x, 2)
    return x


class Downsample(nn.Module):
    """Strided 3x3 convolution (guided-diffusion's `Downsample` with conv_resample)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling then a 3x3 convolution (guided-diffusion's `Upsample` with conv_resample)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(_resample(x, "up"))


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding; optionally resamples (`resample` = "up" / "down")."""

    def __init__(self, channels: int, out_channels: int, emb_channels: int, dropout: float, scale_shift: bool,
                 checkpointed: bool, resample: str | None = None, double_norm: bool = False):
        super().__init__()
        self.double_norm = double_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        self.scale_shift, self.checkpointed, self.resample = scale_shift, checkpointed, resample

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return _run(self._forward, x, emb, checkpointed=self.checkpointed)

    def _forward(self, x, emb):
        h = self.in_layers[:-1](x)
        h, x = _resample(h, self.resample), _resample(x, self.resample)   # between activation and conv, as the reference
        h = self.in_layers[-1](h)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]            # (N, C or 2C, 1, 1)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[1:](modulate(self.out_layers[0](h), scale, shift, self.double_norm))
        else:
            h = self.out_layers(add_embedding(h, e, self.double_norm))
        return self.skip_connection(x) + h


def _conv1d_to_conv2d(state_dict, prefix, *_):
    """Load-time hook: 1x1 conv1d weights [O, I, 1] (guided-diffusion, DBIM) become conv2d [O, I, 1, 1]."""
    for name in ("qkv.weight", "proj_out.weight"):
        w = state_dict.get(prefix + name)
        if w is not None and w.ndim == 3:
            state_dict[prefix + name] = w[..., None]


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions, with a residual connection."""

    def __init__(self, channels: int, head_channels: int, new_order: bool, checkpointed: bool):
        super().__init__()
        if channels % head_channels:
            raise UserError(f"network.num_head_channels: {head_channels} does not divide the {channels} channels of an attention block")
        self.heads, self.new_order, self.checkpointed = channels // head_channels, new_order, checkpointed
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv2d(channels, channels, 1))
        self._register_load_state_dict_pre_hook(_conv1d_to_conv2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self._forward, x, checkpointed=self.checkpointed)

    def _forward(self, x):
        n, c, h, w = x.shape
        d = c // self.heads
        qkv = self.qkv(self.norm(x))                                                     # (N, 3C, H, W)
        if self.new_order:
            q, k, v = qkv.reshape(n, 3, self.heads, d, h * w).unbind(1)                   # (N, heads, d, HW) each
        else:
            q, k, v = qkv.reshape(n, self.heads, 3, d, h * w).unbind(2)                   # (N, heads, d, HW) each
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))  # (N, heads, HW, d)
        return x + self.proj_out(a.transpose(-1, -2).reshape(n, c, h, w))


class EmbedSequential(nn.Sequential):
    """A sequence of layers; residual blocks also receive the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


def _attention_ds(resolutions: tuple[int, ...], image_size: int, levels: int) -> set[int]:
    """Attention resolutions -> downsampling factors 2^level, checked against the levels of the UNet."""
    available = {image_size >> level: 1 << level for level in range(levels)}
    for r in resolutions:
        if r not in available:
            raise UserError(f"network.attention_resolutions: {r} is not a resolution of this UNet "
                            f"(images of {image_size}: {', '.join(map(str, available))})")
    return {available[r] for r in resolutions}


class ADMUNet(nn.Module):
    def __init__(self, cfg: ADMConfig, shape: tuple, out_channels: int, cond_channels: int, num_classes: int):
        super().__init__()
        mc, emb = cfg.model_channels, 4 * cfg.model_channels
        attention_ds = _attention_ds(cfg.attention_resolutions, shape[-1], len(cfg.channel_mult))
        self.model_channels, self.time_scale, self.null_label = mc, cfg.time_scale, cfg.null_label
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.two_times = cfg.two_times
        self.time2_embed = (SecondTime(_TimestepEmbedding(mc, cfg.time_scale), mc, emb) if cfg.two_times else None)
        self.label_emb = nn.Embedding(num_classes + cfg.null_label, emb) if num_classes else None
        block = partial(ResBlock, emb_channels=emb, dropout=cfg.dropout, scale_shift=cfg.use_scale_shift_norm,
                        checkpointed=cfg.use_checkpoint, double_norm=cfg.double_norm)
        attention = partial(AttentionBlock, head_channels=cfg.num_head_channels, new_order=cfg.new_attention_order,
                            checkpointed=cfg.use_checkpoint)

        ch = mc * cfg.channel_mult[0]
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(shape[0] + cond_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [block(ch, mc * mult)]
                ch = mc * mult
                if 1 << level in attention_ds:
                    layers.append(attention(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(block(ch, ch, resample="down") if cfg.resblock_updown else Downsample(ch)))
                skip_channels.append(ch)

        self.middle_block = EmbedSequential(block(ch, ch), attention(ch), block(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [block(ch + skip_channels.pop(), mc * mult)]
                ch = mc * mult
                if 1 << level in attention_ds:
                    layers.append(attention(ch))
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(block(ch, ch, resample="up") if cfg.resblock_updown else Upsample(ch))
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), _zero(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def _label_embedding(self, class_labels: torch.Tensor | None, n: int, device) -> torch.Tensor:
        """Label -1 (or no labels) is the learned null label with `null_label`, else no label embedding at all."""
        labels = class_labels.long() if class_labels is not None else torch.full((n,), -1, dtype=torch.long, device=device)
        if self.null_label:
            return self.label_emb(labels % self.label_emb.num_embeddings)            # -1 -> the last row
        return self.label_emb(labels.clamp(min=0)) * (labels >= 0)[:, None]

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, time2: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(self.time_scale * noise_labels, self.model_channels))  # (N, 4 mc)
        emb = emb + second_time(self.time2_embed, time2, emb)
        if self.label_emb is not None:
            emb = emb + self._label_embedding(class_labels, x.shape[0], x.device)
        h = x if cond is None else torch.cat([x, cond], dim=1)                 # (N, C + Cc, H, W)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
