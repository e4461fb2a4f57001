"""Consistency training (Algorithm 3 of Song et al. 2023) and improved CT (Song & Dhariwal 2023).

The pair t > r is adjacent on the N(k)-point Karras grid (the paper's t_{n+1} > t_n). The teacher's ODE step is
replaced by the unbiased one-sample estimate D = x0, so the target point is x_r = x0 + r z with the z of
x_t = x0 + t z. N(k), mu(k) follow the progressive schedules; `schedule: ict` gives iCT's doubling curriculum
with mu = 0, usually with pseudo-Huber, log-normal index sampling and weight 1/(t - r) ... all separate switches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fsg.core.process import forward_sample, randn
from fsg.core.schedules import ct_num_scales_and_ema, ict_num_scales, karras_sigmas, lognormal_index_probs
from fsg.methods.consistency import ConsistencyMethod


@dataclass(frozen=True)
class CTConfig:
    name: Literal["ct"] = "ct"
    schedule: Literal["code", "paper", "ict"] = "code"  # N(k), mu(k): reference code, paper, or iCT doubling (mu = 0)
    s0: int = 2                              # initial discretisation steps (iCT: 10)
    s1: int = 150                            # final discretisation steps (iCT: 1280)
    mu0: float = 0.9                         # target EMA at k = 0 (code/paper schedules)
    total_steps: int | None = None           # K of the schedules (None: the run's train.max_steps)
    distance: Literal["l2", "l1", "pseudo-huber", "lpips"] = "l2"
    huber_c: float | None = None             # pseudo-Huber c (None: 0.00054 sqrt(d))
    index_sampling: Literal["uniform", "lognormal"] = "uniform"
    P_mean: float = -1.1                     # log-normal index sampling (iCT)
    P_std: float = 2.0
    weight: Literal["uniform", "inv_dt"] = "uniform"  # inv_dt: lambda = 1/(t - r) (iCT)


class CTMethod(ConsistencyMethod):
    name = "ct"
    config = CTConfig
    command = "train-consistency"

    def _K(self) -> int:
        return self.cfg.total_steps or self.run.max_steps

    def schedule(self, step: int) -> tuple[int, float]:
        """(N(k), mu(k)) at training step k."""
        c = self.cfg
        if c.schedule == "ict":
            return ict_num_scales(step, self._K(), c.s0, c.s1), 0.0
        return ct_num_scales_and_ema(step, self._K(), c.s0, c.s1, c.mu0, form=c.schedule)

    def target_ema(self, step: int) -> float:
        return self.schedule(step)[1]

    def loss(self, nets, batch, step, gen):
        x0 = batch["x"]
        p, c = self.process, self.cfg
        N, _ = self.schedule(step)
        sigmas = karras_sigmas(N, p.sigma_min, p.sigma_max, p.rho, append_zero=False).to(x0.device)  # descending
        if c.index_sampling == "lognormal":
            probs = lognormal_index_probs(sigmas.flip(0), c.P_mean, c.P_std)        # over ascending pairs
            i = torch.multinomial(probs.float().to(gen.device), x0.shape[0], replacement=True, generator=gen).to(x0.device)
            n = N - 2 - i                                                           # back to descending indices
        else:
            n = torch.randint(0, N - 1, (x0.shape[0],), generator=gen, device=gen.device).to(x0.device)
        t, r = sigmas[n].float(), sigmas[n + 1].float()                         # (N,), t > r
        z = randn(x0.shape, gen, x0.device)
        x_t, x_r = forward_sample(p, x0, t, z), forward_sample(p, x0, r, z)     # one z for both
        weight = 1 / (t - r) if c.weight == "inv_dt" else torch.ones_like(t)
        return self.pair_loss(nets, batch, x_t, t, x_r, r, weight)

    def export_meta(self):
        return {**super().export_meta(), "train_grid": self.schedule(self._K())[0]}
