"""An fsg consistency model on the ADM network as diffusers' `ConsistencyModelPipeline` (a `UNet2DModel` and a
`CMStochasticIterativeScheduler`): which models map exactly, the UNet and scheduler configs, and the state dict.

What makes the map exact (read from diffusers' `unet_2d.py`, `unet_2d_blocks.py`, `resnet.py`, `attention_processor.py`
and `scheduling_consistency_models.py`):
- the scheduler feeds the UNet `c_in x` with c_in = 1/sqrt(sigma^2 + sigma_d^2) and the time 250 ln sigma, and returns
  `c_skip x + c_out F` with the boundary-condition scalings of Appendix C of Song et al. 2023 (epsilon = sigma_min),
  clamped to [-1, 1]: fsg's consistency preconditioning (`consistency_scalings`) on the EDM process, whose c_noise
  ln(sigma) / 4 the ADM network multiplies by its `time_scale` 1000;
- `UNet2DModel` with `resnet_time_scale_shift="scale_shift"`, resnet up/down blocks, 32-group norms (eps 1e-5) and
  a [cos, sin] embedding of block_out_channels[0] frequencies exp(-ln(10^4) i / half) is guided-diffusion's UNet
  block for block, provided the first level has `model_channels` channels (diffusers sizes the time embedding
  from block_out_channels[0]);
- the mid-block attention gets its GroupNorm only with `attn_norm_num_groups` set (under scale_shift it defaults to
  none).

diffusers is imported inside `build_pipeline` only: the rest is plain dictionaries and tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from fsg.errors import UserError
from fsg.models.meta import network_config_from_meta, process_from_meta
from fsg.nets.adm import ADMConfig

GROUPS, EPS = 32, 1e-5       # GroupNorm32 of fsg.nets.adm (torch's default eps)
DEFAULT_GRID = 40            # training-grid points N when a model records none (as fsg's consistency sampler)


def export_refusal(meta: dict[str, Any]) -> str | None:
    """Why the model of `meta` cannot become a ConsistencyModelPipeline (one line), or None when it maps exactly."""
    net = meta.get("network", {}).get("arch")
    if net != "adm":
        return (f"only consistency models on the ADM network (network.arch adm) map onto diffusers' UNet2DModel; "
                f"this model's network is '{net}'")
    process = meta.get("process", {}).get("name")
    if process != "edm":
        return (f"diffusers' consistency scheduler runs the EDM process (x = x0 + sigma eps); this model's process is "
                f"'{process}'")
    if meta.get("precond") not in ("consistency", "ect"):
        return (f"a consistency model (preconditioning consistency or ect) is needed; this model's preconditioning is "
                f"'{meta.get('precond')}' (a diffusion model: sample it with fsg's heun sampler)")
    shape = meta["shape"]
    if len(shape) != 3 or shape[1] != shape[2]:
        return f"ConsistencyModelPipeline makes square images; this model's shape is {tuple(shape)}"
    if meta.get("cond_channels", 0):
        return "ConsistencyModelPipeline has no condition-image input; this model takes condition images (a bridge)"
    if meta["out_channels"] != shape[0]:
        return f"the network must output the {shape[0]} image channels; it outputs {meta['out_channels']}"
    cfg = network_config_from_meta(meta)
    checks = [
        (cfg.time_scale != 1000.0, (f"network.time_scale {cfg.time_scale:g}: diffusers feeds the network 250 ln sigma, "
                                    f"which is time_scale 1000 times c_noise = ln(sigma) / 4")),
        (cfg.channel_mult[0] != 1, (f"network.channel_mult starts with {cfg.channel_mult[0]}: UNet2DModel sizes its "
                                    f"time embedding from the first level's channels, so the first multiplier must be 1")),
        (cfg.two_times, "network.two_times: UNet2DModel takes one time (this is a flow map)"),
        (cfg.double_norm, "network.double_norm: UNet2DModel's residual blocks have no unit-RMS scale and shift"),
        (cfg.null_label, "network.null_label: UNet2DModel's class embedding has no null label for guidance"),
    ]
    return next((why for refused, why in checks if refused), None)


def check_exportable(meta: dict[str, Any]) -> None:
    """A UserError saying why, for a model that does not map onto ConsistencyModelPipeline exactly."""
    why = export_refusal(meta)
    if why is not None:
        raise UserError(f"--diffusers: {why}")


def _attention_levels(cfg: ADMConfig, image_size: int) -> list[bool]:
    return [(image_size >> level) in cfg.attention_resolutions for level in range(len(cfg.channel_mult))]


def unet_config(meta: dict[str, Any]) -> dict[str, Any]:
    """The `UNet2DModel` config of the model's ADM network (one block type per level: attention or not)."""
    cfg: ADMConfig = network_config_from_meta(meta)
    channels, size = meta["shape"][0], meta["shape"][-1]
    attn = _attention_levels(cfg, size)
    plain_down = "ResnetDownsampleBlock2D" if cfg.resblock_updown else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if cfg.resblock_updown else "UpBlock2D"
    resample = "resnet" if cfg.resblock_updown else "conv"
    return {
        "sample_size": size, "in_channels": channels, "out_channels": channels,
        "time_embedding_type": "positional", "flip_sin_to_cos": True, "freq_shift": 0,      # [cos, sin], w_i = 10^(-4 i/half)
        "down_block_types": ["AttnDownBlock2D" if a else plain_down for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else plain_up for a in reversed(attn)],
        "block_out_channels": [cfg.model_channels * m for m in cfg.channel_mult],
        "layers_per_block": cfg.num_res_blocks,
        "downsample_type": resample, "upsample_type": resample, "downsample_padding": 1,
        "mid_block_scale_factor": 1, "dropout": cfg.dropout, "act_fn": "silu",
        "attention_head_dim": cfg.num_head_channels, "norm_num_groups": GROUPS, "attn_norm_num_groups": GROUPS,
        "norm_eps": EPS,
        "resnet_time_scale_shift": "scale_shift" if cfg.use_scale_shift_norm else "default",
        "add_attention": True, "class_embed_type": None,
        "num_class_embeds": meta.get("num_classes") or None,
    }


def scheduler_config(meta: dict[str, Any]) -> dict[str, Any]:
    """The `CMStochasticIterativeScheduler` config: the process's noise range and sigma_data, and the model's N-point
    training grid (the grid `num_inference_steps` and `timesteps` index, as fsg's `--timesteps`)."""
    p = process_from_meta(meta)
    return {"num_train_timesteps": int(meta.get("train_grid") or DEFAULT_GRID), "sigma_min": p.sigma_min,
            "sigma_max": p.sigma_max, "sigma_data": p.sigma_data, "s_noise": 1.0, "rho": p.rho, "clip_denoised": True}


def _module_map(cfg: ADMConfig, image_size: int) -> list[tuple[str, str, str]]:
    """(fsg module, diffusers module, kind) for every module with parameters, walking the blocks in the order
    `ADMUNet.__init__` builds them."""
    attn = _attention_levels(cfg, image_size)
    levels, n = len(cfg.channel_mult), cfg.num_res_blocks
    rows = [("time_embed.0", "time_embedding.linear_1", "plain"), ("time_embed.2", "time_embedding.linear_2", "plain"),
            ("label_emb", "class_embedding", "plain"), ("input_blocks.0.0", "conv_in", "plain")]
    k = 1
    for level in range(levels):
        for j in range(n):
            rows.append((f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}", "resblock"))
            if attn[level]:
                rows.append((f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{j}", "attention"))
            k += 1
        if level < levels - 1:
            kind = "resblock" if cfg.resblock_updown else "downsample"
            rows.append((f"input_blocks.{k}.0", f"down_blocks.{level}.downsamplers.0", kind))
            k += 1
    rows += [("middle_block.0", "mid_block.resnets.0", "resblock"), ("middle_block.1", "mid_block.attentions.0", "attention"),
             ("middle_block.2", "mid_block.resnets.1", "resblock")]
    k = 0
    for up, level in enumerate(reversed(range(levels))):
        for i in range(n + 1):
            rows.append((f"output_blocks.{k}.0", f"up_blocks.{up}.resnets.{i}", "resblock"))
            if attn[level]:
                rows.append((f"output_blocks.{k}.1", f"up_blocks.{up}.attentions.{i}", "attention"))
            if level > 0 and i == n:
                kind = "resblock" if cfg.resblock_updown else "upsample"
                rows.append((f"output_blocks.{k}.{1 + attn[level]}", f"up_blocks.{up}.upsamplers.0", kind))
            k += 1
    rows += [("out.0", "conv_norm_out", "plain"), ("out.2", "conv_out", "plain")]
    return rows


RESBLOCK = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj", "out_layers.0": "norm2",
            "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
RESAMPLE = {"downsample": {"op": "conv"}, "upsample": {"conv": "conv"}}


def _split_qkv(t: torch.Tensor, heads: int, new_order: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v rows of a qkv weight (3C, C) or bias (3C,), each in diffusers' channel order (head, channel): the
    flash-attn order (q|k|v, head, ch) splits in thirds, guided-diffusion's legacy (head, q|k|v, ch) is regrouped."""
    c = t.shape[0] // 3
    if new_order:
        return t.reshape(3, c, *t.shape[1:]).unbind(0)
    per_head = t.reshape(heads, 3, c // heads, *t.shape[1:])                        # (heads, 3, d, ...)
    return per_head.transpose(0, 1).reshape(3, c, *t.shape[1:]).unbind(0)


def unet_state_dict(state: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The ADM network's state dict under `UNet2DModel`'s names (float32): 1x1 attention convolutions become the
    linear `to_q`/`to_k`/`to_v`/`to_out.0`. Every fsg tensor is used exactly once."""
    cfg: ADMConfig = network_config_from_meta(meta)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(name: str) -> torch.Tensor | None:
        if name not in state:
            return None
        used.add(name)
        return state[name].detach().to("cpu", torch.float32)

    for src, dst, kind in _module_map(cfg, meta["shape"][-1]):
        if kind == "attention":
            heads = state[f"{src}.qkv.weight"].shape[1] // cfg.num_head_channels
            for p in ("weight", "bias"):
                out[f"{dst}.group_norm.{p}"] = take(f"{src}.norm.{p}")
                qkv = take(f"{src}.qkv.{p}")
                qkv = qkv.flatten(1) if p == "weight" else qkv                     # (3C, C, 1, 1) -> (3C, C)
                for name, part in zip(("to_q", "to_k", "to_v"), _split_qkv(qkv, heads, cfg.new_attention_order)):
                    out[f"{dst}.{name}.{p}"] = part.contiguous()
                proj = take(f"{src}.proj_out.{p}")
                out[f"{dst}.to_out.0.{p}"] = proj.flatten(1) if p == "weight" else proj
            continue
        names = {"resblock": RESBLOCK, "plain": {"": ""}}.get(kind) or RESAMPLE[kind]
        for a, b in names.items():
            for p in ("weight", "bias"):
                value = take(".".join(filter(None, (src, a, p))))
                if value is not None:
                    out[".".join(filter(None, (dst, b, p)))] = value
    left = sorted(set(state) - used)
    if left:
        raise ValueError(f"ADM tensors without a diffusers name: {left[:3]}{' ...' if len(left) > 3 else ''}")
    return out


def build_pipeline(state: dict[str, torch.Tensor], meta: dict[str, Any]):
    """The `ConsistencyModelPipeline` of an exportable model (check_exportable first), its UNet loaded strictly."""
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel

    unet = UNet2DModel(**unet_config(meta))
    unet.load_state_dict(unet_state_dict(state, meta), strict=True)
    scheduler = CMStochasticIterativeScheduler(**scheduler_config(meta))
    return ConsistencyModelPipeline(unet=unet.eval(), scheduler=scheduler)
