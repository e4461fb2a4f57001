"""From a recipe and the command's paths to the pieces the engine runs: data, method, model metadata."""

from __future__ import annotations

from dataclasses import dataclass, replace
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


def recipe_sample_defaults(method_default: dict[str, Any], sample) -> dict[str, Any]:
    """The exported model's default sampler and steps: the recipe's `sample.sampler` / `sample.steps` where set,
    else the method's. A sampler name fsg does not know is refused before training starts."""
    import fsg.sampling.inversion  # noqa: F401  (registers PaGoDA's sampler)
    from fsg.sampling.generate import EXTRA_SAMPLERS, SAMPLERS

    out = dict(method_default)
    if sample.sampler is not None:
        known = sorted({*SAMPLERS, *EXTRA_SAMPLERS})
        if sample.sampler not in known:
            raise UserError(f"sample.sampler: unknown sampler '{sample.sampler}' (known: {', '.join(known)})")
        out["sampler"] = sample.sampler
    if sample.steps is not None:
        if sample.steps < 1:
            raise UserError(f"sample.steps must be at least 1, got {sample.steps}")
        out["steps"] = sample.steps
    return out


def _check_augmentable(recipe, method: str, shape: tuple, cond_ch: int) -> None:
    """`train.augment` needs the diffusion or DDM method and unconditional images (the network is checked by
    the method: `fsg.methods.diffusion.build_augment_pipe`)."""
    if method not in ("diffusion", "ddm"):
        raise UserError(f"train.augment (EDM's augmentation pipe) applies to methods diffusion and ddm; "
                        f"method.name is '{method}' (set train.augment: 0)")
    if len(shape) != 3:
        raise UserError(f"train.augment needs image data; data.source '{recipe.data.source}' gives vectors of shape "
                        f"{shape} (set train.augment: 0)")
    if cond_ch:
        raise UserError("train.augment transforms x0 but not its condition image, so it does not apply to bridges, "
                        "paired sources or data.degrade (set train.augment: 0)")


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
    if recipe.train.augment > 0:
        _check_augmentable(recipe, name, shape, cond_ch)
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
        if recipe.train.dropout is not None and not 0 <= recipe.train.dropout < 1:
            raise UserError(f"train.dropout must lie in [0, 1), got {recipe.train.dropout:g}")
        if start_network is not None:
            net_cfg, net = start_network(recipe, start, teacher_model, shape, cond_ch)
        else:
            if start is not teacher_model:
                _check_compatible(start, dataset, "--init model")
            net_cfg = network_config_from_meta(start.meta)
            if recipe.train.dropout is not None:        # e.g. ECT tunes EDM's 0.13-dropout teacher with 0.2
                net_cfg = replace(net_cfg, dropout=float(recipe.train.dropout))
            net = net_cfg.build(shape, out_ch, cond_ch, num_classes)
            load_state_strict(net, start.denoiser.net.state_dict(), str(start.path))
        process = start.process
    else:
        if recipe.train.dropout is not None:
            raise UserError("train.dropout sets the dropout of a network started from --init/--teacher; "
                            "this run builds a new network: set network.dropout instead")
        net_cfg = recipe.network
        out_ch = shape[0] * getattr(recipe.process, "out_multiplier", getattr(method_cls, "out_multiplier", 1))
        net = net_cfg.build(shape, out_ch, cond_ch, num_classes)
        process = recipe.process
    model = Denoiser(net, process, method_cls.precond).to(device)
    method = method_cls(recipe.method, model, process, teacher=teacher_model.denoiser if teacher_model else None, recipe=recipe)
    meta = model_meta(model, net_cfg, shape, out_ch, cond_ch, num_classes, **method.export_meta(), data=to_dict(recipe.data))
    meta["sample"] = recipe_sample_defaults(meta["sample"], recipe.sample)
    if teacher is not None:
        meta["teacher"] = str(Path(teacher).resolve())     # provenance; PaGoDA's editing encodes with it
    return RunParts(dataset, method, meta)
