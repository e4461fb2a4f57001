"""Build a denoiser from model metadata, and load a model from a path (fsg file or public checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fsg.errors import UserError
from fsg.io.checkpoint import read_model, resolve_model_path
from fsg.io.config import ConfigError, convert, to_dict
from fsg.nets.denoiser import Denoiser
from fsg.resources import shipped

BUNDLED_MODEL = shipped("assets", "cd_digits", "model.safetensors")


@dataclass
class LoadedModel:
    denoiser: Denoiser
    meta: dict[str, Any]
    path: Path

    @property
    def process(self):
        return self.denoiser.process

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.meta["shape"])


def process_from_meta(meta: dict):
    from fsg.recipe import ProcessConfig
    return from_dict_checked(ProcessConfig, meta["process"], "process")


def network_config_from_meta(meta: dict):
    from fsg.recipe import NetworkConfig
    return from_dict_checked(NetworkConfig, meta["network"], "network")


def from_dict_checked(tp, data, what):
    try:
        return convert(tp, data, what)
    except ConfigError as e:
        raise UserError(f"model metadata: {e} (written by another fsg version?)") from None


def build_denoiser(meta: dict, precond: str | None = None) -> Denoiser:
    """A freshly initialised denoiser with the architecture recorded in `meta`."""
    net_cfg = network_config_from_meta(meta)
    net = net_cfg.build(tuple(meta["shape"]), meta["out_channels"], meta.get("cond_channels", 0), meta.get("num_classes", 0))
    return Denoiser(net, process_from_meta(meta), precond or meta.get("precond", "diffusion"))


def model_meta(denoiser: Denoiser, net_cfg, shape, out_channels: int, cond_channels: int, num_classes: int,
               **extra) -> dict[str, Any]:
    return {"format": 1, "process": to_dict(denoiser.process), "precond": denoiser.precond,
            "network": to_dict(net_cfg), "shape": list(shape), "out_channels": out_channels,
            "cond_channels": cond_channels, "num_classes": num_classes, **extra}


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict(strict=True) with a one-line message naming what differs."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: expected {tuple(own[k].shape)}, found {tuple(v.shape)}" for k, v in state.items()
              if k in own and own[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
        raise UserError(f"{where}: weights do not fit the architecture: {'; '.join(parts)}")
    module.load_state_dict(state, strict=True)


def load_model(path: str | Path | None, device="cpu", precond: str | None = None) -> LoadedModel:
    """Load a model from a run folder, checkpoint folder, .safetensors file or public .pt/.pkl checkpoint.

    None loads the bundled digits consistency model.
    """
    if path is None:
        if not BUNDLED_MODEL.is_file():
            raise UserError(f"no --model given and the bundled model is missing ({BUNDLED_MODEL})")
        path = BUNDLED_MODEL
    p = Path(path)
    if p.suffix in (".pt", ".pth", ".pkl"):
        if not p.is_file():
            raise UserError(f"model not found: {p}")
        try:
            from fsg.io.importers import import_checkpoint
        except ModuleNotFoundError:
            raise UserError(f"{p}: importing public checkpoints is not available in this install") from None
        state, meta = import_checkpoint(p)
    else:
        p = resolve_model_path(p)
        state, meta = read_model(p)
    denoiser = build_denoiser(meta, precond)
    load_state_strict(denoiser.net, state, str(p))
    return LoadedModel(denoiser.to(device).eval(), meta, p)
