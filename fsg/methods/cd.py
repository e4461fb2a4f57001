"""Consistency distillation (Algorithm 2 of Song et al. 2023).

n ~ U{0, ..., N-2} on the Karras grid (index 0 = sigma_max), x_t = x0 + t z with t = t_n; one Heun step
of the teacher's PF-ODE gives x_{t_{n+1}}; loss = d(f_theta(x_t, t), f_theta^-(x_{t_{n+1}}, t_{n+1})).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fsg.core.processes import append_dims, karras_sigmas, randn
from fsg.core.solvers import euler_step, heun_step
from fsg.methods.base import batch_labels
from fsg.methods.consistency import ConsistencyMethod


@dataclass(frozen=True)
class CDConfig:
    name: Literal["cd"] = "cd"
    num_scales: int = 18                     # N: points of the Karras grid (18 CIFAR-10, 40 ImageNet-64/LSUN)
    target_ema: float = 0.0                  # mu: 0 = stop-gradient copy of the online net (CIFAR-10 reference)
    distance: Literal["l2", "l1", "pseudo-huber", "lpips"] = "l2"
    huber_c: float | None = None             # pseudo-Huber c (None: 0.00054 sqrt(d))
    solver: Literal["heun", "euler"] = "heun"  # teacher ODE step from t_n to t_{n+1}


class CDMethod(ConsistencyMethod):
    name = "cd"
    needs_teacher = True
    init_from_teacher = True

    def target_ema(self, step: int) -> float:
        return self.cfg.target_ema

    def loss(self, nets, batch, step, gen):
        x0, y, labels = batch["x"], batch.get("cond"), batch_labels(batch)
        p = self.process
        sigmas = karras_sigmas(self.cfg.num_scales, p.sigma_min, p.sigma_max, p.rho, append_zero=False).to(x0.device)
        n = torch.randint(0, self.cfg.num_scales - 1, (x0.shape[0],), generator=gen, device=gen.device).to(x0.device)
        t, t_next = sigmas[n].float(), sigmas[n + 1].float()        # (N,), t > t_next
        x_t = x0 + append_dims(t, x0.ndim) * randn(x0.shape, gen, x0.device)

        def teacher(x, s):
            return self.teacher(x, s, cond=y, labels=labels)

        step_fn = heun_step if self.cfg.solver == "heun" else euler_step
        tt, tn = append_dims(t, x0.ndim), append_dims(t_next, x0.ndim)
        return self.pair_loss(nets, batch, x_t, t, lambda: step_fn(teacher, x_t, tt, tn), t_next, torch.ones_like(t))

    def export_meta(self):
        meta = super().export_meta()
        meta["train_grid"] = self.cfg.num_scales       # --timesteps index this N-point Karras grid
        return meta
