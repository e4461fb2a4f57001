"""The denoiser D(x, t, cond, labels, augment_labels) -> x0_hat: a network wrapped by a preconditioning.

Every sampler and loss talks to a `Denoiser`, never to a raw network. `precond` picks the scalings:
- "diffusion":   the process's own (EDM Table 1, VP, DDBM bridge scalings, ...);
- "consistency": boundary-condition scalings, f(x, t_min) = x exactly (Song et al. 2023, Appendix C);
- "ect":         diffusion scalings while training and consistency scalings in eval mode, as ECT's
                 reference ECMPrecond does.
"""

from __future__ import annotations

import torch
from torch import nn

from fsg.core.process import append_dims
from fsg.errors import UserError


class Denoiser(nn.Module):
    def __init__(self, net: nn.Module, process, precond: str = "diffusion"):
        super().__init__()
        if precond not in ("diffusion", "consistency", "ect"):
            raise ValueError(f"unknown preconditioning {precond!r}")
        self.net = net
        self.process = process
        self.precond = precond

    def scalings(self, t: torch.Tensor):
        use_boundary = self.precond == "consistency" or (self.precond == "ect" and not self.training)
        return self.process.consistency_scalings(t) if use_boundary else self.process.scalings(t)

    @staticmethod
    def per_sample(t, x: torch.Tensor) -> torch.Tensor:
        """A time per sample (float32): a scalar is broadcast to the batch."""
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        return t.expand(x.shape[0]) if t.ndim == 0 else t

    def augment_kwargs(self, augment_labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The network's keyword for EDM's augmentation labels (N, augment_dim): none when there are none;
        a network without augmentation conditioning refuses them."""
        if augment_labels is None:
            return {}
        layer = getattr(self.net, "map_augment", None)
        if layer is None:
            raise UserError(f"augmentation labels need network.arch songunet or dhariwal with network.augment_dim: "
                            f"{augment_labels.shape[1]}; this network ({type(self.net).__name__}) has no augmentation input")
        if layer.in_features != augment_labels.shape[1]:
            raise UserError(f"the network has network.augment_dim: {layer.in_features}, "
                            f"the augmentation gives {augment_labels.shape[1]} labels")
        return {"augment_labels": augment_labels}

    def heads(self, x: torch.Tensor, t, cond=None, labels=None, augment_labels=None) -> dict[str, torch.Tensor]:
        """All outputs of a multi-head parameterisation (DDM: x0, C, eps); {'x0': D} otherwise."""
        t = self.per_sample(t, x)
        if hasattr(self.process, "heads"):
            return self.process.heads(self.net, x, t, cond, labels, **self.augment_kwargs(augment_labels))
        return {"x0": self(x, t, cond, labels, augment_labels)}

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, augment_labels: torch.Tensor | None = None,
                raw: bool = False, r: torch.Tensor | None = None) -> torch.Tensor:
        """x0_hat = c_skip x + c_out F(c_in x, c_noise); with `raw`, the network's output F itself (a method whose loss
        is written in F, as sCM's and MeanFlow's, calls the model this way so that a DDP wrapper sees the training
        pass). A two-time network (a flow map) jumps to time `r` instead (x_r; r = t_min, the data, by default),
        seeing the interval t - r as its second time input."""
        t = self.per_sample(t, x)
        extra = self.augment_kwargs(augment_labels)
        if hasattr(self.process, "denoise"):   # a process with its own parameterisation (DDM's two heads)
            return self.process.denoise(self.net, x, t, cond, labels, **extra)
        if getattr(self.net, "two_times", False):
            if not hasattr(self.process, "jump_scalings"):
                raise UserError(f"a two-time network needs a process with flow-map jumps (flow); this one is "
                                f"'{self.process.name}'")
            r = torch.full_like(t, self.process.t_min) if r is None else self.per_sample(r, x)
            c_skip, c_out, c_in, c_noise = self.process.jump_scalings(t, r)
            extra["time2"] = t - r
        elif r is not None:
            raise UserError("this model's network takes one time: it cannot jump to another time r")
        else:
            c_skip, c_out, c_in, c_noise = self.scalings(t)
        nd = x.ndim
        F_x = self.net(append_dims(c_in, nd) * x, c_noise.flatten(), labels, cond, **extra)   # (N, C, ...)
        if raw:
            return F_x
        return append_dims(c_skip, nd) * x + append_dims(c_out, nd) * F_x.to(x.dtype)
