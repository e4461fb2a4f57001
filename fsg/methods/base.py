"""The interface between a training method and the one training engine.

A method is a config dataclass (its `method:` recipe section, tag `name`) and a `Method` subclass, registered in
`fsg.methods.METHODS`. It owns its networks (the trained `model`, and e.g. a teacher, a target network, a
discriminator) and turns a batch into losses. It receives its own config, the process, its networks and a
`RunInfo` (what the engine tells it of the run), never the whole recipe. The engine knows a method only through:

    trainable()            name -> module; each gets its own optimizer ("model" always, "disc" for GANs)
    optimizer_overrides()  per-module optimizer settings that differ from the recipe's train section
    loss(nets, batch, step, gen) -> (losses, logs)
                           `nets` holds the trainable modules as the engine wraps them (DDP, compile); a method
                           calls them for every pass that needs gradients. `losses` maps a trainable name to
                           the scalar that updates it this step (a GAN returns one key per step; one loss that
                           trains two modules is listed under both names and counted once). A method that
                           needs forward-mode derivatives (JVP: sCM, MeanFlow) takes them inside `loss` through
                           `torch.func.jvp` on the same modules; the loop is the same.
    after_step(step)       bookkeeping after the optimizer step (target-network EMA)
    state_dict()/load_state_dict()   extra state for exact resume (target network)
    export_meta()          what `model.safetensors` records: precond, method, default sampler and steps

A batch is a dict of tensors: "x" (N, ...), "index", optionally "label" (the class the network sees, -1 where the
engine dropped it for classifier-free guidance; absent for unlabeled data), "label_true" (the data's class),
"cond" (a bridge's condition image), "augment_labels" (EDM's augmentation), "flip".
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class RunInfo:
    """What a method may know of its run besides its own config; the engine fills it in."""

    shape: tuple[int, ...] = ()         # one data item, e.g. (C, H, W) or (D,)
    max_steps: int = 1                  # the run's optimizer steps: the horizon K of schedules that span the run
    latents: Any = None                 # PaGoDA: the teacher's stored inversions (`fsg.data.latents.LatentStore`)


class Method:
    name = "method"
    config: type = object            # the config dataclass (its `name` field is the tag)
    precond = "diffusion"          # preconditioning of the exported model
    command = "train-diffusion"    # the `fsg` training command that runs the method
    processes: tuple[str, ...] = ("edm", "vp")   # the processes it trains (`fsg.core.PROCESSES` names)
    paired: bool | None = None     # True: needs a condition image per item (bridges); False: refuses one
    images_only = False            # needs image data (C, H, W)
    augmentable = False            # takes EDM's augmented images and their labels (`train.augment`)
    two_times = False              # trains a two-time network (a flow map: `network.two_times: true`)
    needs_teacher = False          # the loss calls a frozen teacher (--teacher required)
    init_from_teacher = False      # the trained model starts as a copy of --teacher
    default_sampler = "heun"
    default_steps = 18

    def __init__(self, cfg, model: nn.Module, process, *, teacher: nn.Module | None = None, run: RunInfo = RunInfo()):
        self.cfg = cfg
        self.model = model
        self.process = process
        self.teacher = teacher
        self.run = run
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    @classmethod
    def starts_from_teacher(cls, cfg) -> bool:
        """Whether the trained model starts as a copy of --teacher (the class's `init_from_teacher`, unless the
        config chooses: sCD's `init`)."""
        return cls.init_from_teacher

    @classmethod
    def process_for(cls, cfg, process):
        """The process the method trains, given the recipe's or the start model's: as it is, unless the method tunes
        a model into another process (ECT: EDM with its boundary; sCM: TrigFlow)."""
        return process

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

    def frozen(self) -> list[nn.Module]:
        """Modules the method calls but never trains (teacher, target, LPIPS): moved with it, never optimised."""
        return [self.teacher] if self.teacher is not None else []

    def to(self, device) -> "Method":
        for m in self.frozen():
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


def online_and_target(online_net, target_net, x_t: torch.Tensor, t: torch.Tensor, x_r: torch.Tensor, r: torch.Tensor,
                      **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """f_theta(x_t, t) with gradients, and the stop-gradient target f_theta^-(x_r, r) under the same dropout mask.

    The consistency losses of fsg all compare the model at the larger time t with a target at a smaller time r < t
    (the paper's t_{n+1} and t_n in Song et al. 2023, Eq. 7 and 10). `kw` goes to both calls (cond, labels).
    """
    rng = SharedDropout(x_t.device)
    online = online_net(x_t, t, **kw)
    with torch.no_grad(), rng.replay():
        target = target_net(x_r, r, **kw)
    return online, target
