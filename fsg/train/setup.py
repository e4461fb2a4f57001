"""From a recipe and the command's paths to the pieces the engine runs: data, method, model metadata, and the batch
transforms that every method shares (EDM's augmentation, label dropout for classifier-free guidance)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from fsg.data import build_dataset
from fsg.data.augment import LABELS, AugmentPipe
from fsg.data.latents import LatentStore
from fsg.data.vae import draw_latents
from fsg.errors import UserError
from fsg.io.config import to_dict
from fsg.methods import METHODS
from fsg.methods.base import RunInfo
from fsg.models.denoiser import Denoiser
from fsg.models.load import LoadedModel, load_model
from fsg.models.meta import load_state_strict, model_fingerprint, model_meta, network_config_from_meta
from fsg.sampling import SAMPLERS


def command_methods(command: str) -> list[str]:
    """The methods a training command runs (each method class names its command)."""
    return [name for name, cls in METHODS.items() if cls.command == command]


@dataclass
class RunParts:
    dataset: Any
    method: Any
    meta: dict[str, Any]
    transform: Callable[[dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]]


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
    out = dict(method_default)
    if sample.sampler is not None:
        if sample.sampler not in SAMPLERS:
            raise UserError(f"sample.sampler: unknown sampler '{sample.sampler}' (known: {', '.join(SAMPLERS)})")
        out["sampler"] = sample.sampler
    if sample.steps is not None:
        if sample.steps < 1:
            raise UserError(f"sample.steps must be at least 1, got {sample.steps}")
        out["steps"] = sample.steps
    return out


def _check_method_fits(method_cls, process_name: str, shape: tuple, cond_ch: int, data_name: str) -> None:
    """The process, data kind and conditions a method declares it trains."""
    name = method_cls.name
    if process_name not in method_cls.processes:
        raise UserError(f"method '{name}' trains the processes {', '.join(method_cls.processes)}; "
                        f"the process is '{process_name}'")
    if method_cls.paired is True and not cond_ch:
        raise UserError(f"method '{name}' needs paired data (a condition image per item); data.source '{data_name}' has none")
    if method_cls.paired is False and cond_ch:
        raise UserError(f"method '{name}' trains unconditional or class-conditional models; this data has condition images")
    if method_cls.images_only and len(shape) != 3:
        raise UserError(f"method '{name}' needs image data; data.source '{data_name}' gives vectors of shape {shape}")


def augment_pipe(recipe, method_cls, net, shape: tuple, cond_ch: int) -> AugmentPipe | None:
    """EDM's augmentation pipe with p = `train.augment` (None at 0), after checking that the method, the data and
    the network take it: images without conditions, songunet/dhariwal with `augment_dim` 9."""
    p = recipe.train.augment
    if not 0 <= p <= 1:
        raise UserError(f"train.augment is a probability multiplier in [0, 1], got {p:g}")
    if p == 0:
        return None
    if not method_cls.augmentable:
        takers = [n for n, m in METHODS.items() if m.augmentable]
        raise UserError(f"train.augment (EDM's augmentation pipe) applies to methods {' and '.join(takers)}; "
                        f"method.name is '{method_cls.name}' (set train.augment: 0)")
    if len(shape) != 3:
        raise UserError(f"train.augment needs image data; data.source '{recipe.data.source}' gives vectors of shape "
                        f"{shape} (set train.augment: 0)")
    if cond_ch:
        raise UserError("train.augment transforms x0 but not its condition image, so it does not apply to bridges, "
                        "paired sources or data.degrade (set train.augment: 0)")
    dim = net.map_augment.in_features if getattr(net, "map_augment", None) is not None else 0
    if dim != len(LABELS):
        raise UserError(f"train.augment needs network.arch songunet or dhariwal with network.augment_dim: {len(LABELS)} "
                        f"(EDM's augmentation labels); this network ({type(net).__name__}) has augment_dim {dim}")
    return AugmentPipe(p)


def batch_transform(pipe: AugmentPipe | None, num_classes: int, label_dropout: float):
    """What the engine does to every micro-batch before the method sees it, with the micro-batch's generator:
    EDM's augmentation (x becomes the augmented image, "augment_labels" its labels), then the labels: dropped from
    the batch for a model without classes; else "label_true" keeps the data's class and "label" is -1 with
    probability `label_dropout` (classifier-free guidance's null label)."""
    def transform(batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
        batch = draw_latents(dict(batch), gen)     # SD-VAE latents: a sample of each posterior (fsg.data.vae)
        if pipe is not None:
            batch["x"], batch["augment_labels"] = pipe(batch["x"], gen)
        labels = batch.pop("label", None)
        if num_classes and labels is not None:
            batch["label_true"] = labels
            if label_dropout > 0:
                keep = torch.rand(labels.shape, generator=gen, device=gen.device).to(labels.device) >= label_dropout
                labels = torch.where(keep, labels, torch.full_like(labels, -1))
            batch["label"] = labels
        return batch
    return transform


def _start_model(recipe, method_cls, start: LoadedModel, teacher_model, dataset, shape, cond_ch):
    """(network config, network, out channels, classes, process) of a run started from --init or --teacher."""
    dropout = recipe.train.dropout
    if dropout is not None and not 0 <= dropout < 1:
        raise UserError(f"train.dropout must lie in [0, 1), got {dropout:g}")
    start_network = getattr(method_cls, "start_network", None)   # PaGoDA: grows the start model to the data's resolution
    if start_network is not None:
        net_cfg, net = start_network(recipe.method, dropout, start, teacher_model, shape, cond_ch)
    else:
        if start is not teacher_model:
            _check_compatible(start, dataset, "--init model")
        net_cfg = network_config_from_meta(start.meta)
        if dropout is not None:        # e.g. ECT tunes EDM's 0.13-dropout teacher with 0.2
            net_cfg = replace(net_cfg, dropout=float(dropout))
        net = net_cfg.build(shape, start.meta["out_channels"], cond_ch, start.meta.get("num_classes", 0))
        load_state_strict(net, start.denoiser.net.state_dict(), str(start.path))
    return net_cfg, net, start.meta["out_channels"], start.meta.get("num_classes", 0), start.process


def build_run(recipe, command: str, device: torch.device, teacher: str | Path | None = None,
              init: str | Path | None = None) -> RunParts:
    """Data, method (with its networks on `device`), the model's metadata and the batch transform of a run."""
    name = recipe.method.name
    if name not in command_methods(command):
        raise UserError(f"`fsg {command}` runs methods {', '.join(command_methods(command))}; "
                        f"the recipe's method.name is '{name}'")
    method_cls = METHODS[name]
    dataset = build_dataset(recipe.data, "train")
    shape = tuple(dataset.shape)
    cond_ch = dataset.cond_shape[0] if dataset.cond_shape else 0

    teacher_model = None
    if teacher is not None:
        teacher_model = load_model(teacher, device)
        if getattr(method_cls, "start_network", None) is None:
            _check_compatible(teacher_model, dataset, "teacher")
    elif method_cls.needs_teacher or method_cls.starts_from_teacher(recipe.method):
        raise UserError(f"method '{name}' needs --teacher (a diffusion model to start from)")

    from_teacher = method_cls.starts_from_teacher(recipe.method)
    start = load_model(init, device) if init is not None else (teacher_model if from_teacher else None)
    if start is not None:
        net_cfg, net, out_ch, num_classes, process = _start_model(recipe, method_cls, start, teacher_model, dataset,
                                                                  shape, cond_ch)
    else:
        if recipe.train.dropout is not None:
            raise UserError("train.dropout sets the dropout of a network started from --init/--teacher; "
                            "this run builds a new network: set network.dropout instead")
        net_cfg, process, num_classes = recipe.network, recipe.process, dataset.num_classes
        out_ch = shape[0] * getattr(process, "out_multiplier", getattr(method_cls, "out_multiplier", 1))
        net = net_cfg.build(shape, out_ch, cond_ch, num_classes)
    process = method_cls.process_for(recipe.method, process)
    _check_method_fits(method_cls, process.name, shape, cond_ch, recipe.data.source)
    if method_cls.two_times != getattr(net, "two_times", False):
        raise UserError(f"method '{name}' trains a {'two' if method_cls.two_times else 'single'}-time network: "
                        f"set network.two_times: {'true' if method_cls.two_times else 'false'}")
    pipe = augment_pipe(recipe, method_cls, net, shape, cond_ch)

    latents = None
    cfg = recipe.method
    if getattr(cfg, "latents", None) is not None:           # PaGoDA's stored inversions
        latents = LatentStore(cfg.latents)
        latents.check(model_fingerprint(teacher_model.denoiser.net), cfg.inversion_steps, recipe.data, len(dataset))
    run = RunInfo(shape=shape, max_steps=recipe.train.max_steps, latents=latents)
    model = Denoiser(net, process, method_cls.precond).to(device)
    method = method_cls(cfg, model, process, teacher=teacher_model.denoiser if teacher_model else None, run=run)
    meta = model_meta(model, net_cfg, shape, out_ch, cond_ch, num_classes, **method.export_meta(), data=to_dict(recipe.data))
    meta["sample"] = recipe_sample_defaults(meta["sample"], recipe.sample)
    if getattr(dataset, "vae", None) is not None:     # a latent model: `fsg sample --vae DIR` decodes its samples
        meta["vae"] = dataset.vae
    if teacher_model is not None:       # provenance; PaGoDA's editing encodes with it (fsg.models.load.load_teacher)
        given = Path(teacher)           # as given, else the file a bundled name stands for; the engine adds the
        meta["teacher"] = str((given if given.exists() else teacher_model.path).resolve())   # relative path
        meta["teacher_fingerprint"] = model_fingerprint(teacher_model.denoiser.net)
    return RunParts(dataset, method, meta, batch_transform(pipe, num_classes, recipe.train.label_dropout))
