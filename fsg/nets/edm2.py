"""EDM2's magnitude-preserving UNet (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", config G; equation numbers below are the paper's as networks_edm2.py cites them), with
NVlabs/edm2's parameter names.

Module names follow NVlabs/edm2 `training/networks_edm2.py` (`unet.emb_fourier`, `unet.emb_noise`, `unet.emb_label`,
`unet.enc` / `unet.dec` dicts keyed `{res}x{res}_{conv,down,up,in0,in1,block<i>}`, blocks with `emb_gain`,
`conv_res0`, `emb_linear`, `conv_res1`, `conv_skip`, `attn_qkv`, `attn_proj`, and `unet.out_gain`, `unet.out_conv`,
`logvar_fourier`, `logvar_linear`), so the state of EDM2's `Precond` loads strictly into `EDM2UNet`: fsg's network
is the Precond without its scalings, which live in fsg's Denoiser (`EDMProcess.scalings`: EDM's c_skip, c_out, c_in
and c_noise = ln(sigma) / 4, exactly EDM2's). Every layer has no bias and keeps unit-variance activations:

    normalize(x) = x / (eps + RMS(x))        MPConv: w_i <- normalize(w_i) gain / sqrt(fan_in), one row per output
    mp_silu(x) = silu(x) / 0.596            mp_sum(a, b, t) = ((1 - t) a + t b) / sqrt((1 - t)^2 + t^2)
    mp_cat(a, b, t): both parts rescaled so that each carries its share (1 - t, t) of a unit-variance output

Forced weight normalisation (Eq. 66). EDM2 rewrites every MPConv weight to unit-RMS rows
in place at the start of each training-mode forward. That in-place write breaks a backward that follows two
training-mode forwards (few-step losses call the network several times per step) and `torch.func.jvp` (continuous
consistency models), and it rewrites EMA copies left in training mode (locuslab/ect#21). Here the forward only
uses normalize(w) functionally, whatever the mode, and `normalize_weights_(module)` does the in-place projection:
the training engine calls it once per optimizer step, before the step's first forward, which is where EDM2's
first training forward of the step does it. No op in the forward is in place; attention is plain matmul +
softmax, so forward-mode derivatives pass through every layer.

Options beyond EDM2: `time_embedding: positional` (sinusoidal, for consistency training: Fourier features gave
all-black sCM samples, xandergos/sCM-mnist#5, locuslab/ect#15), `double_norm` (the multiplicative modulation made
unit-RMS over channels, fsg's reading of Lu & Song 2025 Sec. 4.1 for blocks without a shift), `dropout_res`
(dropout only at resolutions <= this: locuslab/ect's `imgnet` branch, `--dropres 16`), a condition image
concatenated to x (bridges) and `two_times` (a second time input, `time2`, for flow maps: MeanFlow's h = t - r).

The second time gets its own embedding of the kind of the first (`unet.emb_time2.embed`), an MPConv to the embedding
width (`unet.emb_time2.linear`) and a learned gain g (`unet.emb_time2.gain`, 0 at initialisation), and joins the
noise embedding magnitude-preservingly, before the label: emb <- (emb + g e2) / sqrt(1 + g^2), which is
mp_sum(emb, e2, t) with the learned balance t = g / (1 + g). At g = 0 the network is its single-time self; the
second-time modules are built last, so with the same seed every other weight equals the single-time network's and
EDM2 checkpoints load into a two-time network with only `unet.emb_time2.*` new (fsg's `SecondTime` contract, made
magnitude-preserving: no bias, no unnormalised MLP).

Class labels are int64 indices (-1 or None: the zero vector, as EDM2's Precond does for missing labels), made
one-hot and scaled by sqrt(num_classes) to unit RMS inside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fsg.nets.edm import _one_hot
from fsg.nets.layers import at_least_float32, pixel_norm

MP_SILU_SCALE = 0.596         # sqrt(E[silu(z)^2]), z ~ N(0, 1): mp_silu keeps unit second moment (EDM2 Eq. 81)


@dataclass(frozen=True)
class EDM2UNetConfig:
    arch: Literal["edm2"] = "edm2"
    model_channels: int = 192                     # base multiplier for the number of channels (XS 128 ... XXL 448)
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)  # per-resolution multipliers of the channels
    channel_mult_noise: int | None = None         # noise embedding = model_channels * this (None: channel_mult[0])
    channel_mult_emb: int | None = None           # embedding = model_channels * this (None: max(channel_mult))
    num_blocks: int = 3                           # residual blocks per resolution (the decoder has one more)
    attn_resolutions: tuple[int, ...] = (16, 8)   # resolutions with self-attention
    channels_per_head: int = 64                   # attention heads = channels // this
    label_balance: float = 0.5                    # mp_sum weight of the class embedding against the noise embedding
    concat_balance: float = 0.5                   # mp_cat weight of the skip connection against the main path
    res_balance: float = 0.3                      # mp_sum weight of the residual branch
    attn_balance: float = 0.3                     # mp_sum weight of the attention branch
    clip_act: float | None = 256.0                # clamp every block's output to +-this (None: no clamp)
    dropout: float = 0.0                          # dropout in the residual branch (M and larger: 0.10)
    dropout_res: int | None = None                # dropout only at resolutions <= this (ECT ImageNet: 16; None: all)
    time_embedding: Literal["fourier", "positional"] = "fourier"  # EDM2: fourier; consistency training: positional
    double_norm: bool = False                     # unit-RMS modulation over channels (Lu & Song 2025, Sec. 4.1)
    logvar_channels: int = 128                    # Fourier features of the log-variance head u(sigma)
    two_times: bool = False                       # a second time input (a flow map's t - r, MeanFlow)

    def build(self, shape: tuple, out_channels: int, cond_channels: int = 0, num_classes: int = 0) -> nn.Module:
        return EDM2UNet(self, tuple(shape), out_channels, cond_channels, num_classes)


# The released sizes (NVlabs/edm2 `train_edm2.py` config_presets): model_channels and dropout; everything else is
# the default above. img512-* work on 4x64x64 SD-VAE latents (fsg.data.vae), img64-* on 3x64x64 pixels; all have
# 1000 classes. (XXS exists for img512 only, XXL too; img64 stops at XL.)
RELEASED_SIZES = {"xxs": (64, 0.0), "xs": (128, 0.0), "s": (192, 0.0), "m": (256, 0.10), "l": (320, 0.10),
                  "xl": (384, 0.10), "xxl": (448, 0.10)}
RELEASED_SHAPES = {"img512": (4, 64, 64), "img64": (3, 64, 64)}


def released_config(name: str) -> tuple[EDM2UNetConfig, tuple[int, int, int]]:
    """(config, data shape) of a released EDM2 model, e.g. 'img512-xxl' or 'img64-s'."""
    dataset, _, size = name.partition("-")
    if dataset not in RELEASED_SHAPES or size not in RELEASED_SIZES or (dataset == "img64" and size in ("xxs", "xxl")):
        raise ValueError(f"unknown EDM2 size {name!r}")
    channels, dropout = RELEASED_SIZES[size]
    return EDM2UNetConfig(model_channels=channels, dropout=dropout), RELEASED_SHAPES[dataset]


# ------------------------------------------------------------------------------ magnitude-preserving operations

def normalize(x: torch.Tensor, dim: int | tuple[int, ...] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """x / (eps + RMS(x)), the RMS over `dim` (None: every dim but the first), computed in at least float32
    (networks_edm2.py `normalize`): unit RMS per slice, so w . x has the variance of x for a row w
    scaled by 1 / sqrt(fan_in)."""
    dims = tuple(range(1, x.ndim)) if dim is None else dim
    wide = at_least_float32(x)
    rms = wide.square().mean(dim=dims, keepdim=True).sqrt()
    return x / (eps + rms).to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """silu(x) / 0.596: unit second moment for x ~ N(0, 1) (EDM2 Eq. 81)."""
    return F.silu(x) / MP_SILU_SCALE


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """((1 - t) a + t b) / sqrt((1 - t)^2 + t^2): unit variance for independent unit-variance a, b (EDM2 Eq. 88)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenate a (Na channels, weight 1 - t) and b (Nb channels, weight t) so that the result has unit variance
    and a following MPConv sees each part with its weight, whatever Na and Nb (EDM2 Eq. 103)."""
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([a * (c / math.sqrt(na) * (1 - t)), b * (c / math.sqrt(nb) * t)], dim=dim)


def resample(x: torch.Tensor, mode: Literal["keep", "down", "up"]) -> torch.Tensor:
    """EDM2's resampling with its only filter [1, 1]: 2x2 average pooling down, nearest-neighbour up."""
    if mode == "down":
        return F.avg_pool2d(x, 2)                                            # (N, C, H/2, W/2)
    if mode == "up":
        return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)     # (N, C, 2H, 2W)
    return x


# ------------------------------------------------------------------------------------------------- layers

class MPConv(nn.Module):
    """Magnitude-preserving convolution (kernel (k, k)) or linear layer (kernel ()): no bias, each output row
    normalised to unit RMS, times gain / sqrt(fan_in) (networks_edm2.py `MPConv`; EDM2 Eq. 47)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...]):
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        w = normalize(at_least_float32(self.weight))                         # unit RMS per output row, functional
        w = (w * (gain / math.sqrt(w[0].numel()))).to(x.dtype)              # each row has L2 norm |gain|
        if w.ndim == 2:
            return x @ w.t()                                                 # (N, out)
        return F.conv2d(x, w, padding=w.shape[-1] // 2)                     # (N, out, H, W)

    @torch.no_grad()
    def normalize_(self) -> None:
        """Forced weight normalisation (EDM2 Eq. 66): the stored weight becomes its unit-RMS rows."""
        self.weight.copy_(normalize(at_least_float32(self.weight)))


def normalize_weights_(module: nn.Module) -> None:
    """Project every MPConv weight of `module` onto unit-RMS rows, in place; other modules are left alone. Called
    once per optimizer step before its first forward (fsg.train.engine), as EDM2's first training forward does."""
    for m in module.modules():
        if isinstance(m, MPConv):
            m.normalize_()


class MPFourier(nn.Module):
    """sqrt(2) cos(2 pi (f_i x + p_i)) with f_i ~ N(0, bandwidth^2), p_i ~ U[0, 1) fixed at construction
    (networks_edm2.py `MPFourier`; EDM2 Eq. 75): unit RMS over channels. (N,) -> (N, C)."""

    def __init__(self, num_channels: int, bandwidth: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = at_least_float32(x)
        y = torch.outer(wide, self.freqs.to(wide.dtype)) + self.phases.to(wide.dtype)        # (N, C)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPPositional(nn.Module):
    """sqrt(2) [cos(x f_i), sin(x f_i)], f_i = max_positions^(-i / (C/2)), i < C/2: the sinusoidal embedding of
    EDM's DhariwalUNet (which also takes c_noise = ln(sigma) / 4) at unit RMS. No buffers. (N,) -> (N, C)."""

    def __init__(self, num_channels: int, max_positions: float = 10000.0):
        super().__init__()
        self.num_channels, self.max_positions = num_channels, max_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = at_least_float32(x)
        half = self.num_channels // 2
        freqs = self.max_positions ** -(torch.arange(half, device=x.device, dtype=wide.dtype) / half)
        y = torch.outer(wide, freqs)                                                          # (N, C/2)
        return (torch.cat([y.cos(), y.sin()], dim=1) * math.sqrt(2)).to(x.dtype)             # (N, C)


class MPSecondTime(nn.Module):
    """The second time of a flow map, magnitude-preserving: embed(h) (Fourier or positional, unit RMS) through an MPConv
    with gain g, so e2 has RMS |g| (0 at initialisation). (N,) -> (N, emb_channels)."""

    def __init__(self, embed: nn.Module, noise_channels: int, emb_channels: int):
        super().__init__()
        self.embed = embed
        self.linear = MPConv(noise_channels, emb_channels, ())
        self.gain = nn.Parameter(torch.zeros([]))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(self.embed(h), gain=self.gain)

    def join(self, emb: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        """(emb + g e2(h)) / sqrt(1 + g^2): unit variance for unit-variance emb and e2 independent of it (EDM2 Eq. 88
        with balance g / (1 + g)); h = None is h = 0, as `fsg.nets.layers.second_time`."""
        h = h if h is not None else torch.zeros(emb.shape[0], dtype=emb.dtype, device=emb.device)
        return (emb + self(h).to(emb.dtype)) / (1 + self.gain.square()).sqrt().to(emb.dtype)


class Block(nn.Module):
    """EDM2's residual block (networks_edm2.py `Block`): 'enc' blocks project and pixel-norm
    their input first, 'dec' blocks project the skip path after the residual branch; optional self-attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, flavor: Literal["enc", "dec"],
                 resample_mode: Literal["keep", "down", "up"] = "keep", attention: bool = False,
                 channels_per_head: int = 64, dropout: float = 0.0, res_balance: float = 0.3,
                 attn_balance: float = 0.3, clip_act: float | None = 256.0, double_norm: bool = False):
        super().__init__()
        self.out_channels, self.flavor, self.resample_mode = out_channels, flavor, resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout, self.res_balance, self.attn_balance = dropout, res_balance, attn_balance
        self.clip_act, self.double_norm = clip_act, double_norm
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, (3, 3))
        self.emb_linear = MPConv(emb_channels, out_channels, ())
        self.conv_res1 = MPConv(out_channels, out_channels, (3, 3))
        self.conv_skip = MPConv(in_channels, out_channels, (1, 1)) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, (1, 1)) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, (1, 1)) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)                                          # pixel norm: unit RMS over channels

        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1                     # (N, C): 1 at init (emb_gain = 0)
        if self.double_norm:
            c = pixel_norm(c)
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)

        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            x = mp_sum(x, self.attention(x), t=self.attn_balance)
        return x if self.clip_act is None else x.clamp(-self.clip_act, self.clip_act)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over the pixels, with q, k, v each normalised to unit RMS per head and pixel.
        EDM2's qkv channel order puts (q, k, v) innermost: channel (head Ch + c) 3 + s."""
        n, ch, h, w = x.shape
        heads = self.num_heads
        qkv = normalize(self.attn_qkv(x).reshape(n, heads, ch // heads, 3, h * w), dim=2)   # (N, H, Ch, 3, P)
        q, k, v = qkv.unbind(3)                                                             # (N, H, Ch, P) each
        weights = (q.transpose(2, 3) @ k / math.sqrt(q.shape[2])).softmax(dim=3)           # (N, H, P query, P key)
        y = v @ weights.transpose(2, 3)                                                     # (N, H, Ch, P)
        return self.attn_proj(y.reshape(n, ch, h, w))


class UNet(nn.Module):
    """EDM2's UNet (networks_edm2.py `UNet`; config G of the paper): a constant ones channel is appended to the
    input, the embedding is mp_silu(mp_sum(noise, label)), skips are joined by mp_cat, the output gain starts at 0."""

    def __init__(self, cfg: EDM2UNetConfig, resolution: int, in_channels: int, out_channels: int, num_classes: int):
        super().__init__()
        cblock = [cfg.model_channels * m for m in cfg.channel_mult]
        cnoise = cfg.model_channels * cfg.channel_mult_noise if cfg.channel_mult_noise is not None else cblock[0]
        cemb = cfg.model_channels * cfg.channel_mult_emb if cfg.channel_mult_emb is not None else max(cblock)
        self.label_balance, self.concat_balance = cfg.label_balance, cfg.concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.time_embedding = cfg.time_embedding
        if cfg.time_embedding == "fourier":
            self.emb_fourier = MPFourier(cnoise)
        else:
            self.emb_positional = MPPositional(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, ())
        self.emb_label = MPConv(num_classes, cemb, ()) if num_classes else None

        def block(cin, cout, flavor, res, **kw):
            dropout = cfg.dropout if cfg.dropout_res is None or res <= cfg.dropout_res else 0.0
            return Block(cin, cout, cemb, flavor, channels_per_head=cfg.channels_per_head, dropout=dropout,
                         res_balance=cfg.res_balance, attn_balance=cfg.attn_balance, clip_act=cfg.clip_act,
                         double_norm=cfg.double_norm, **kw)

        self.enc = nn.ModuleDict()
        cout = in_channels + 1
        for level, channels in enumerate(cblock):
            res = resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = MPConv(cout, channels, (3, 3))
                cout = channels
            else:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, "enc", res, resample_mode="down")
            for idx in range(cfg.num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = block(cout, channels, "enc", res, attention=res in cfg.attn_resolutions)
                cout = channels
        skips = [m.out_channels for m in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, channels in reversed(list(enumerate(cblock))):
            res = resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, "dec", res, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout, "dec", res)
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, "dec", res, resample_mode="up")
            for idx in range(cfg.num_blocks + 1):
                self.dec[f"{res}x{res}_block{idx}"] = block(cout + skips.pop(), channels, "dec", res,
                                                            attention=res in cfg.attn_resolutions)
                cout = channels
        self.out_conv = MPConv(cout, out_channels, (3, 3))
        self.noise_channels, self.emb_channels = cnoise, cemb
        self.emb_time2: MPSecondTime | None = None          # two_times: set by EDM2UNet, after every other weight

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_onehot: torch.Tensor | None,
                time2: torch.Tensor | None = None) -> torch.Tensor:
        time = self.emb_fourier if self.time_embedding == "fourier" else self.emb_positional
        emb = self.emb_noise(time(noise_labels))                                            # (N, cemb)
        if self.emb_time2 is not None:
            emb = self.emb_time2.join(emb, time2)                                           # (N, cemb)
        if self.emb_label is not None:
            k = class_onehot.shape[1]
            emb = mp_sum(emb, self.emb_label(class_onehot * math.sqrt(k)), t=self.label_balance)
        emb = mp_silu(emb)

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)                               # (N, C + 1, H, W)
        skips = []
        for name, layer in self.enc.items():
            x = layer(x) if name.endswith("_conv") else layer(x, emb)
            skips.append(x)
        for name, layer in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = layer(x, emb)
        return self.out_conv(x, gain=self.out_gain)


class EDM2UNet(nn.Module):
    """fsg's EDM2 network: the modules of EDM2's `Precond` (its UNet and the log-variance head u(sigma) of the
    uncertainty-weighted loss, EDM2 Eq. 21), called with fsg's network contract; the scalings live in the Denoiser."""

    def __init__(self, cfg: EDM2UNetConfig, shape: tuple, out_channels: int, cond_channels: int, num_classes: int):
        super().__init__()
        self.num_classes, self.two_times = num_classes, cfg.two_times
        self.unet = UNet(cfg, shape[-1], shape[0] + cond_channels, out_channels, num_classes)
        self.logvar_fourier = MPFourier(cfg.logvar_channels)
        self.logvar_linear = MPConv(cfg.logvar_channels, 1, ())
        if cfg.two_times:       # drawn last: with the same seed, every other weight is the single-time network's
            cnoise = self.unet.noise_channels
            embed = MPFourier(cnoise) if cfg.time_embedding == "fourier" else MPPositional(cnoise)
            self.unet.emb_time2 = MPSecondTime(embed, cnoise, self.unet.emb_channels)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, time2: torch.Tensor | None = None) -> torch.Tensor:
        """F(x, c_noise); `time2` is a two-time network's second time (h = t - r; None: 0; a single-time network
        ignores it, as fsg's other networks do)."""
        x = x if cond is None else torch.cat([x, cond], dim=1)                              # (N, C + Cc, H, W)
        onehot = _one_hot(class_labels, self.num_classes, x.shape[0], x.device).to(x.dtype) if self.num_classes else None
        return self.unet(x, noise_labels, onehot, time2)

    def logvar(self, noise_labels: torch.Tensor) -> torch.Tensor:
        """u(sigma) (N,) of the uncertainty-weighted loss lambda(sigma) / e^u ||D - x0||^2 + u (EDM2 Eq. 21), from
        the same c_noise the UNet sees (networks_edm2.py `Precond.forward` with return_logvar)."""
        return self.logvar_linear(self.logvar_fourier(noise_labels)).flatten()
