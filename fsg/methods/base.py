"""The interface between a training method and the one training engine.

A method owns its networks (the trained `model`, and e.g. a teacher, a target network, a discriminator)
and turns a batch into losses. The engine knows a method only through this interface:

    trainable()            name -> module; each gets its own optimizer ("model" always, "disc" for GANs)
    optimizer_overrides()  per-module optimizer settings that differ from the recipe's train section
    loss(nets, batch, step, gen) -> (losses, logs)
                           `nets` holds the trainable modules as the engine wraps them (DDP); a method
                           calls them for every pass that needs gradients. `losses` maps a trainable
                           name to the scalar that updates it this step (a GAN returns one key per step).
    after_step(step)       bookkeeping after the optimizer step (target-network EMA)
    state_dict()/load_state_dict()   extra state for exact resume (target network)
    export_meta()          what `model.safetensors` records: precond, method, default sampler and steps
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn


class Method:
    name = "method"
    precond = "diffusion"          # preconditioning of the exported model
    needs_teacher = False          # the loss calls a frozen teacher (--teacher required)
    init_from_teacher = False      # the trained model starts as a copy of --teacher
    default_sampler = "heun"
    default_steps = 18

    def __init__(self, cfg, model: nn.Module, process, *, teacher: nn.Module | None = None, recipe=None):
        self.cfg = cfg
        self.model = model
        self.process = process
        self.teacher = teacher
        self.recipe = recipe
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    def trainable(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizer_overrides(self, name: str) -> dict[str, Any]:
        return {}

    def loss(self, nets: dict[str, nn.Module], batch: dict[str, torch.Tensor], step: int,
             gen: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def to(self, device) -> "Method":
        for m in (self.teacher,):
            if m is not None:
                m.to(device)
        return self

    def export_meta(self) -> dict[str, Any]:
        return {"precond": self.precond, "method": self.name,
                "sample": {"sampler": self.default_sampler, "steps": self.default_steps}}


class SharedDropout:
    """Capture the global RNG state once, replay it for a second pass: the same dropout mask for the
    online and the stop-gradient target pass (Song et al. 2023's reference; ECT's `cuda RNG state`)."""

    def __init__(self, device: torch.device):
        self.devices = [device] if device.type == "cuda" else []
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextlib.contextmanager
    def replay(self):
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for d, s in zip(self.devices, self.cuda):
                torch.cuda.set_rng_state(s, d)
            yield


def drop_labels(labels: torch.Tensor | None, p: float, gen: torch.Generator) -> torch.Tensor | None:
    """Replace each class label by -1 (the null label) with probability p (classifier-free guidance)."""
    if labels is None or p <= 0:
        return labels
    keep = torch.rand(labels.shape, generator=gen, device=gen.device).to(labels.device) >= p
    return torch.where(keep, labels, torch.full_like(labels, -1))


def batch_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Class labels of a batch, or None when the data set is unlabeled (all -1)."""
    labels = batch.get("label")
    if labels is None or bool((labels < 0).all()):
        return None
    return labels
