"""DDM training: regress the attenuation parameters and the noise with their own weights (Huang et al. 2023).

    t ~ U(t_eps, 1),  x_t = x0 + H_t + sqrt(v(t)) eps,  (C_hat, eps_hat) = heads(x_t, t),
    L = w_C(t) ||C_hat - C||^2 + w_eps(t) ||eps_hat - eps||^2 + w_rec(t) (|x0_hat - x0|_1 [+ LPIPS(x0_hat, x0)]),

with the weights of the process (`loss_weights` in fsg.core.ddm; 1/t, 1/(1 - t), (1 - t)^2 for `ddm`, the
reference's CIFAR-10 configuration). Squared and absolute errors are means over elements; for `ddm-linear`
the attenuation error is the mean over the stacked (K, C), as the reference's `cat([K, C])` target.
With `train.augment` = p > 0 the engine gives x0 as EDM's augmented image and the network sees the augmentation
labels (`fsg.data.augment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fsg.errors import UserError
from fsg.methods.base import Method
from fsg.methods.consistency import load_lpips
from fsg.models.denoiser import Denoiser


@dataclass(frozen=True)
class DDMConfig:
    name: Literal["ddm"] = "ddm"
    reconstruction: Literal["none", "l1", "l1+lpips"] = "l1"   # the (1 - t)^2-weighted x0 term; LPIPS needs FSG_LPIPS weights


class HeadsDenoiser(Denoiser):
    """A Denoiser whose forward returns every head when asked, so that a DDP wrapper sees the training pass."""

    def forward(self, x, t, cond=None, labels=None, augment_labels=None, heads: bool = False):
        if heads:
            return self.heads(x, t, cond, labels, augment_labels)
        return super().forward(x, t, cond, labels, augment_labels)


def mean_error(a: torch.Tensor, b: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Per-sample mean of |a - b|^p over all but the batch axis: (N,)."""
    return (a - b).abs().pow(p).flatten(1).mean(1)


class DDMMethod(Method):
    name = "ddm"
    config = DDMConfig
    precond = "diffusion"
    out_multiplier = 2            # two output groups (C, eps) on the channel axis
    default_sampler = "ddm"
    default_steps = 10
    processes = ("ddm", "ddm-linear", "ddm-const2")
    augmentable = True

    def __init__(self, cfg: DDMConfig, model: Denoiser, process, **kw):
        super().__init__(cfg, HeadsDenoiser(model.net, process, model.precond), process, **kw)
        self.lpips = load_lpips(next(model.parameters()).device) if cfg.reconstruction == "l1+lpips" else None

    def frozen(self):
        return [*super().frozen(), *([self.lpips] if self.lpips is not None else [])]

    def loss(self, nets, batch, step, gen):
        x0, y = batch["x"], batch.get("cond")
        p = self.process
        t = p.train_times(x0.shape[0], gen, x0.device)                       # (N,)
        x_t, target = p.corrupt(x0, t, gen)
        h = nets["model"](x_t, t, cond=y, labels=batch.get("label"), augment_labels=batch.get("augment_labels"), heads=True)
        w_att, w_eps, w_rec = p.loss_weights(t)                             # (N,) each
        att = torch.stack([mean_error(h[k], target[k]) for k in p.attenuation_params]).mean(0)
        eps = mean_error(h["eps"], target["eps"])
        per_sample = w_att * att + w_eps * eps
        logs = {"mse_C": att.mean().item(), "mse_eps": eps.mean().item()}
        if self.cfg.reconstruction != "none":
            rec = mean_error(h["x0"], x0, p=1)
            if self.lpips is not None:
                if x0.ndim != 4:
                    raise UserError("method.reconstruction 'l1+lpips' needs image data; use 'l1' for 2-D points")
                rec = rec + self.lpips(h["x0"], x0).flatten()
            per_sample = per_sample + w_rec * rec
            logs["rec"] = rec.mean().item()
        return {"model": per_sample.mean()}, logs
