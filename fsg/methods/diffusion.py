"""Denoising score matching for any process with a Gaussian marginal: the EDM loss and its relatives.

x_t = alpha(t) x0 + beta(t) y + sigma(t) eps,   L = lambda(t) ||D(x_t, t, y) - x0||^2,
which is EDMLoss / VPLoss (Eq. 2 and Table 1 of Karras et al. 2022) for `edm` / `vp`, and DDBM's
bridge loss with lambda = 1/c_out^2 (Sec. 3.3 of Zhou et al. 2024) for the bridge processes.
With `train.augment` = p > 0, x0 is first replaced by EDM's augmented image and the network is
conditioned on the augmentation labels (EDMLoss's `augment_pipe`; `fsg.data.augment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fsg.core.processes import append_dims, randn
from fsg.data.augment import LABELS, AugmentPipe
from fsg.errors import UserError
from fsg.methods.base import Method, batch_labels, drop_labels
from fsg.nets.edm import DhariwalUNet, SongUNet

def build_augment_pipe(recipe, net) -> AugmentPipe | None:
    """EDM's augmentation pipe with p = `train.augment` (None at 0), after checking that the network takes its
    labels: songunet/dhariwal with `augment_dim` 9. (`fsg.train.setup.build_run` checks method and data.)"""
    p = recipe.train.augment if recipe is not None else 0.0
    if p == 0:
        return None
    if not 0 < p <= 1:
        raise UserError(f"train.augment is a probability multiplier in [0, 1], got {p:g}")
    if not isinstance(net, (SongUNet, DhariwalUNet)):
        raise UserError(f"train.augment needs network.arch songunet or dhariwal with network.augment_dim: {len(LABELS)}; "
                        f"this network is {type(net).__name__}")
    dim = net.map_augment.in_features if net.map_augment is not None else 0
    if dim != len(LABELS):
        raise UserError(f"train.augment needs network.augment_dim: {len(LABELS)} (EDM's augmentation labels); "
                        f"the network has augment_dim {dim}")
    return AugmentPipe(p)


@dataclass(frozen=True)
class DiffusionConfig:
    name: Literal["diffusion"] = "diffusion"


class DiffusionMethod(Method):
    name = "diffusion"
    precond = "diffusion"

    def __init__(self, cfg, model, process, **kw):
        if not hasattr(process, "loss_weight"):
            raise UserError(f"method 'diffusion' does not train process '{process.name}' (use its own method, e.g. method.name: ddm)")
        super().__init__(cfg, model, process, **kw)
        self.augment = build_augment_pipe(self.recipe, model.net)

    def loss(self, nets, batch, step, gen):
        x0, y = batch["x"], batch.get("cond")
        augment_labels = None
        if self.augment is not None:
            x0, augment_labels = self.augment(x0, gen)               # the target is the augmented image, as EDM
        n = x0.shape[0]
        t = self.process.train_times(n, gen, x0.device)
        alpha, beta, sigma = (append_dims(c, x0.ndim) for c in self.process.marginal(t))
        eps = randn(x0.shape, gen, x0.device)
        x_t = alpha * x0 + sigma * eps + (beta * y if y is not None else 0)
        labels = drop_labels(batch_labels(batch), self.recipe.train.label_dropout if self.recipe else 0.0, gen)
        D = nets["model"](x_t, t, cond=y, labels=labels, augment_labels=augment_labels)
        per_sample = (D - x0).pow(2).flatten(1).mean(1)             # (N,)
        loss = (self.process.loss_weight(t) * per_sample).mean()
        return {"model": loss}, {"mse": per_sample.mean().item()}

    def export_meta(self):
        meta = super().export_meta()
        sampler = getattr(self.process, "default_sampler", "heun")
        meta["sample"] = {"sampler": sampler, "steps": getattr(self.process, "default_steps", 18)}
        return meta
