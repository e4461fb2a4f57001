"""What a model file records (its metadata) and how a network and a denoiser are rebuilt from it.

The metadata is a JSON mapping: format, process (its recipe section), precond, network (its recipe section),
shape, out_channels, cond_channels, num_classes, method, step, sample (default sampler and steps) and whatever a
method adds (train_grid, latent_factor, teacher, ...). Reading it needs the process and network registries only,
never the methods.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from fsg.core import ProcessConfig
from fsg.errors import UserError
from fsg.io.config import ConfigError, convert, show, to_dict
from fsg.models.denoiser import Denoiser
from fsg.nets import NetworkConfig

FORMAT = 1
REQUIRED_KEYS = ("process", "network", "shape", "out_channels")


def _checked(tp, meta: dict, key: str):
    if not isinstance(meta, dict) or key not in meta:
        raise UserError(f"model metadata has no '{key}' section (written by another fsg version, or not an fsg model?)")
    try:
        return convert(tp, meta[key], key)
    except ConfigError as e:
        raise UserError(f"model metadata: {e} (written by another fsg version?)") from None


def process_from_meta(meta: dict):
    return _checked(ProcessConfig, meta, "process")


def network_config_from_meta(meta: dict):
    return _checked(NetworkConfig, meta, "network")


OPTIONAL_SECTIONS = {"sample": dict, "data": dict, "precond": str, "method": str, "train_grid": int, "step": int}


def check_meta(meta: dict, where: str) -> None:
    """Every key a model needs is present with a value of the right kind; a UserError naming the key otherwise."""
    if not isinstance(meta, dict):
        raise UserError(f"{where}: model metadata is a {type(meta).__name__}, not a mapping (not an fsg model?)")
    for key, kind in OPTIONAL_SECTIONS.items():
        if key in meta and meta[key] is not None and not (isinstance(meta[key], kind) and not isinstance(meta[key], bool)):
            raise UserError(f"{where}: model metadata '{key}' must be a {kind.__name__}, got {show(meta[key])} "
                            f"(written by another fsg version, or edited?)")
    for key in REQUIRED_KEYS:
        if key not in meta:
            raise UserError(f"{where}: model metadata has no '{key}' (written by another fsg version, or not an fsg model?)")
    shape = meta["shape"]
    if not isinstance(shape, list) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise UserError(f"{where}: model metadata 'shape' must be a list of positive integers, got {shape!r}")
    for key in ("out_channels", "cond_channels", "num_classes"):
        value = meta.get(key, 0)
        if not isinstance(value, int) or value < 0 or (key == "out_channels" and value == 0):
            raise UserError(f"{where}: model metadata '{key}' must be a {'positive' if key == 'out_channels' else 'non-negative'} "
                            f"integer, got {value!r}")


def build_denoiser(meta: dict, precond: str | None = None) -> Denoiser:
    """A freshly initialised denoiser with the architecture recorded in `meta`."""
    net_cfg = network_config_from_meta(meta)
    try:
        net = net_cfg.build(tuple(meta["shape"]), meta["out_channels"], meta.get("cond_channels", 0),
                            meta.get("num_classes", 0))
    except (ValueError, RuntimeError, TypeError, ZeroDivisionError, KeyError, IndexError) as e:
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        raise UserError(f"model metadata: network: cannot build the {getattr(net_cfg, 'arch', '')} network it describes "
                        f"({type(e).__name__}: {detail})") from None
    return Denoiser(net, process_from_meta(meta), precond or meta.get("precond", "diffusion"))


def model_meta(denoiser: Denoiser, net_cfg, shape, out_channels: int, cond_channels: int, num_classes: int,
               **extra) -> dict[str, Any]:
    return {"format": FORMAT, "process": to_dict(denoiser.process), "precond": denoiser.precond,
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


def model_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a network's state (names, shapes, dtypes and bytes): identifies a teacher wherever its file lives."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def relocate_teacher(meta: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`meta` of a model written into `folder`, with `teacher_relpath`: its recorded teacher's path relative to
    `folder`, so that a copy of both folders finds the teacher again (`teacher_candidates`). Absent when there is no
    teacher or no relative path (another drive)."""
    meta = {k: v for k, v in meta.items() if k != "teacher_relpath"}
    if meta.get("teacher"):
        try:
            meta["teacher_relpath"] = os.path.relpath(Path(meta["teacher"]).resolve(), Path(folder).resolve())
        except ValueError:
            pass
    return meta


def teacher_candidates(meta: dict[str, Any], model_path: Path) -> list[Path]:
    """Where a model's teacher may be: the path it records, then that path relative to the model's folder."""
    folder = Path(model_path) if Path(model_path).is_dir() else Path(model_path).parent
    found = [Path(meta["teacher"])] if meta.get("teacher") else []
    if meta.get("teacher_relpath"):
        found.append(Path(os.path.normpath(folder.resolve() / meta["teacher_relpath"])))
    return list(dict.fromkeys(found))
