"""Denoising score matching for any process with a Gaussian marginal: the EDM loss and its relatives.

x_t = alpha(t) x0 + beta(t) y + sigma(t) eps,   L = lambda(t) ||D(x_t, t, y) - x0||^2,
which is EDMLoss / VPLoss (Eq. 2 and Table 1 of Karras et al. 2022) for `edm` / `vp`, and DDBM's
bridge loss with lambda = 1/c_out^2 (Sec. 3.3 of Zhou et al. 2024) for the bridge processes.
With `train.augment` = p > 0 the engine gives x0 as EDM's augmented image and the network is conditioned on the
augmentation labels (EDMLoss's `augment_pipe`; `fsg.data.augment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fsg.core.process import forward_sample, randn
from fsg.methods.base import Method


@dataclass(frozen=True)
class DiffusionConfig:
    name: Literal["diffusion"] = "diffusion"


class DiffusionMethod(Method):
    name = "diffusion"
    config = DiffusionConfig
    precond = "diffusion"
    processes = ("edm", "vp", "trigflow", "bridge-vp", "bridge-ve", "bridge-i2sb")
    augmentable = True

    def loss(self, nets, batch, step, gen):
        x0, y = batch["x"], batch.get("cond")
        t = self.process.train_times(x0.shape[0], gen, x0.device)
        x_t = forward_sample(self.process, x0, t, randn(x0.shape, gen, x0.device), y)
        D = nets["model"](x_t, t, cond=y, labels=batch.get("label"), augment_labels=batch.get("augment_labels"))
        per_sample = (D - x0).pow(2).flatten(1).mean(1)             # (N,)
        loss = (self.process.loss_weight(t) * per_sample).mean()
        return {"model": loss}, {"mse": per_sample.mean().item()}

    def export_meta(self):
        meta = super().export_meta()
        meta["sample"] = {"sampler": getattr(self.process, "default_sampler", "heun"),
                          "steps": getattr(self.process, "default_steps", 18)}
        return meta
