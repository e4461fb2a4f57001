"""Consistency bridge distillation (CBD, Eq. 17 of He et al. 2024, "Consistency Diffusion Bridge Models").

t ~ U[eps, T - gamma], r = r(t) < t; x_t = a_t y + b_t x0 + c_t z; x_hat_r is one step of the frozen DDBM
teacher's first-order bridge ODE solver from t to r (Prop. 3.1, i.e. DBIM with eta = 0);
L = lambda(t) d(h_theta(x_t, t, y), h_theta^-(x_hat_r, r, y)), where h has CDBM's time-shifted boundary
scalings (h(x_eps, eps, y) = x_eps). `BridgeConsistencyMethod` is what CBD and CBT (`fsg.methods.cbt`) share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fsg.core.bridges import bridge_sample, cdbm_time_pair, dbim_step, sample_consistency_times
from fsg.core.process import randn
from fsg.methods.consistency import ConsistencyMethod


@dataclass(frozen=True)
class BridgeConsistencyConfig:
    """The settings CBD and CBT share: the time-pair schedule (Sec. 3.3 of He et al. 2024), target and distance."""

    schedule: Literal["constant", "sigmoid"] = "constant"  # r(t) = t - dt, lambda = 1; or a shrinking gap, lambda = 1/(t - r)
    dt: float = 1 / 60                       # constant gap in t (the paper ablates 1/9 ... 1/120 with T = 1)
    b: float = 20.0                          # sigmoid schedule: steepness of sigmoid(-b t) (the paper: 1 ... 50)
    k: float = 8.0                           # sigmoid schedule: weight of the sigmoid term (ECT's k)
    q: float = 2.0                           # sigmoid schedule: the gap shrinks by q every stage
    stage_steps: int = 10000                 # sigmoid schedule: training steps per stage
    target_ema: float = 0.0                  # mu of theta^-: 0 = stop-gradient copy of the online network
    distance: Literal["l2", "l1", "pseudo-huber", "lpips"] = "l2"
    huber_c: float | None = None             # pseudo-Huber c (None: 0.00054 sqrt(d))


@dataclass(frozen=True)
class CBDConfig(BridgeConsistencyConfig):
    name: Literal["cbd"] = "cbd"


class BridgeConsistencyMethod(ConsistencyMethod):
    """A consistency bridge model h_theta on [eps, T - gamma] trained against theta^- at the pair (t, r(t))."""

    default_sampler = "cdbm"
    default_steps = 2
    processes = ("bridge-vp", "bridge-ve", "bridge-i2sb")
    paired = True

    def target_ema(self, step: int) -> float:
        return self.cfg.target_ema

    def target_point(self, batch, x_t: torch.Tensor, t: torch.Tensor, r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x_hat_r, the point at time r that the target network sees (no gradients)."""
        raise NotImplementedError

    def loss(self, nets, batch, step, gen):
        x0, y = batch["x"], batch["cond"]
        p, c = self.process, self.cfg
        t = sample_consistency_times(x0.shape[0], p, gen, x0.device)                     # (N,)
        r, weight = cdbm_time_pair(t, step, schedule=c.schedule, dt=c.dt, q=c.q, k=c.k, b=c.b,
                                   stage_steps=c.stage_steps, eps=p.t_min, horizon=p.T)
        z = randn(x0.shape, gen, x0.device)
        x_t = bridge_sample(p, x0, y, t, z)
        with torch.no_grad():
            x_r = self.target_point(batch, x_t, t, r, z)
        return self.pair_loss(nets, batch, x_t, t, x_r, r, weight)


class CBDMethod(BridgeConsistencyMethod):
    name = "cbd"
    config = CBDConfig
    command = "distill"
    needs_teacher = True
    init_from_teacher = True

    def target_point(self, batch, x_t, t, r, z):
        """One ODE-1 step of the teacher, Eq. 16 of He et al. 2024: DBIM from t to r with eta = 0."""
        y = batch["cond"]
        x0_hat = self.teacher(x_t, t, cond=y, labels=batch.get("label"))
        return dbim_step(self.process, x_t, x0_hat, y, t, r)
