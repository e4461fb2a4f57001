"""From a recipe and the command's paths to the pieces the engine runs: data, method, model metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fsg.errors import UserError
from fsg.io.config import to_dict
from fsg.methods import METHODS
from fsg.nets.denoiser import Denoiser
from fsg.nets.load import LoadedModel, load_model, load_state_strict, model_meta, network_config_from_meta

# which methods each training command runs
COMMAND_METHODS = {
    "train-diffusion": ("diffusion", "ddm"),
    "distill": ("cd", "cbd"),
    "train-consistency": ("ct", "cbt"),
    "tune-sct": ("ect", "sct"),
    "grow-decoder": ("pagoda",),
}


@dataclass
class RunParts:
    dataset: Any
    method: Any
    meta: dict[str, Any]


def _check_compatible(model: LoadedModel, dataset, what: str) -> None:
    if tuple(model.meta["shape"]) != tuple(dataset.shape):
        raise UserError(f"{what} {model.path} was trained on data of shape {tuple(model.meta['shape'])}, "
                        f"but the recipe's data has shape {tuple(dataset.shape)}")
    cond = dataset.cond_shape[0] if dataset.cond_shape else 0
    if model.meta.get("cond_channels", 0) != cond:
        raise UserError(f"{what} {model.path} expects {model.meta.get('cond_channels', 0)} condition channels, the data gives {cond}")


def build_run(recipe, command: str, device: torch.device, teacher: str | Path | None = None,
              init: str | Path | None = None) -> RunParts:
    from fsg.data import build_dataset

    name = recipe.method.name
    if name not in COMMAND_METHODS[command]:
        raise UserError(f"`fsg {command}` runs methods {', '.join(COMMAND_METHODS[command])}; "
                        f"the recipe's method.name is '{name}'")
    _, method_cls = METHODS[name]
    dataset = build_dataset(recipe.data, "train")
    shape = tuple(dataset.shape)
    cond_ch = dataset.cond_shape[0] if dataset.cond_shape else 0
    num_classes = dataset.num_classes

    start_network = getattr(method_cls, "start_network", None)   # PaGoDA: grows the start model to the data's resolution
    teacher_model = None
    if teacher is not None:
        teacher_model = load_model(teacher, device)
        if start_network is None:
            _check_compatible(teacher_model, dataset, "teacher")
    elif getattr(method_cls, "needs_teacher", False) or getattr(method_cls, "init_from_teacher", False):
        raise UserError(f"method '{name}' needs --teacher (a diffusion model to start from)")

    source = init if init is not None else (teacher if getattr(method_cls, "init_from_teacher", False) else None)
    if source is not None:
        start = teacher_model if (source == teacher and teacher_model is not None) else load_model(source, device)
        out_ch = start.meta["out_channels"]
        num_classes = start.meta.get("num_classes", 0)
        if start_network is not None:
            net_cfg, net = start_network(recipe, start, teacher_model, shape, cond_ch)
        else:
            if start is not teacher_model:
                _check_compatible(start, dataset, "--init model")
            net_cfg = network_config_from_meta(start.meta)
            net = net_cfg.build(shape, out_ch, cond_ch, num_classes)
            load_state_strict(net, start.denoiser.net.state_dict(), str(start.path))
        process = start.process
    else:
        net_cfg = recipe.network
        out_ch = shape[0] * getattr(recipe.process, "out_multiplier", getattr(method_cls, "out_multiplier", 1))
        net = net_cfg.build(shape, out_ch, cond_ch, num_classes)
        process = recipe.process
    model = Denoiser(net, process, method_cls.precond).to(device)
    method = method_cls(recipe.method, model, process, teacher=teacher_model.denoiser if teacher_model else None, recipe=recipe)
    meta = model_meta(model, net_cfg, shape, out_ch, cond_ch, num_classes, **method.export_meta(), data=to_dict(recipe.data))
    if teacher is not None:
        meta["teacher"] = str(Path(teacher).resolve())     # provenance; PaGoDA's editing encodes with it
    return RunParts(dataset, method, meta)
