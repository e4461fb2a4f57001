"""Consistency distillation (Algorithm 2 of Song et al. 2023).

On the N-point Karras grid (index 0 = sigma_max), an index n ~ U{0, ..., N-2} gives the pair t = t_n > r = t_{n+1}
(the paper's t_{n+1} and t_n); x_t = x0 + t z; one step of the teacher's PF-ODE from t to r gives the target point
x_r; the loss is d(f_theta(x_t, t), f_theta^-(x_r, r)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fsg.core.process import append_dims, forward_sample, randn
from fsg.core.schedules import karras_sigmas
from fsg.core.solvers import euler_step, heun_step, ode_velocity
from fsg.methods.consistency import ConsistencyMethod


@dataclass(frozen=True)
class CDConfig:
    name: Literal["cd"] = "cd"
    num_scales: int = 18                     # N: points of the Karras grid (18 CIFAR-10, 40 ImageNet-64/LSUN)
    target_ema: float = 0.0                  # mu: 0 = stop-gradient copy of the online net (CIFAR-10 reference)
    distance: Literal["l2", "l1", "pseudo-huber", "lpips"] = "l2"
    huber_c: float | None = None             # pseudo-Huber c (None: 0.00054 sqrt(d))
    solver: Literal["heun", "euler"] = "heun"  # teacher ODE step from t to r


class CDMethod(ConsistencyMethod):
    name = "cd"
    config = CDConfig
    command = "distill"
    needs_teacher = True
    init_from_teacher = True

    def target_ema(self, step: int) -> float:
        return self.cfg.target_ema

    def loss(self, nets, batch, step, gen):
        x0, c, p = batch["x"], self.cfg, self.process
        sigmas = karras_sigmas(c.num_scales, p.sigma_min, p.sigma_max, p.rho, append_zero=False).to(x0.device)
        n = torch.randint(0, c.num_scales - 1, (x0.shape[0],), generator=gen, device=gen.device).to(x0.device)
        t, r = sigmas[n].float(), sigmas[n + 1].float()                         # (N,), t > r
        x_t = forward_sample(p, x0, t, randn(x0.shape, gen, x0.device))
        with torch.no_grad():
            teacher = lambda x, s: self.teacher(x, s, cond=batch.get("cond"), labels=batch.get("label"))  # noqa: E731
            step_fn = heun_step if c.solver == "heun" else euler_step
            x_r = step_fn(ode_velocity(p, teacher), x_t, append_dims(t, x0.ndim), append_dims(r, x0.ndim))
        return self.pair_loss(nets, batch, x_t, t, x_r, r, torch.ones_like(t))

    def export_meta(self):
        return {**super().export_meta(), "train_grid": self.cfg.num_scales}   # --timesteps index this grid
