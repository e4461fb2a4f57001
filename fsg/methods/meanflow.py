"""MeanFlow (Geng, Deng, Bai, Kolter, He 2025, "Mean Flows for One-step Generative Modeling", arXiv 2505.13447):
a flow map trained from scratch, no teacher.

On the flow path z_t = (1 - t) x + t eps (v_t = eps - x), the network is the average velocity
u(z_t, r, t) = 1/(t - r) int_r^t v(z_s, s) ds (Eq. 3), a two-time network fed (t, t - r) (Sec. 4.3). The MeanFlow
identity u = v - (t - r) du/dt (Eq. 6), with du/dt = v d_z u + d_t u (Eq. 8, one JVP with tangent (v, 0, 1) over
(z, r, t)), gives the loss (Eqs. 9 and 11)

    u_tgt = v_t - (t - r) (v_t d_z u + d_t u),     L = sg(w) ||u_theta(z_t, r, t) - sg(u_tgt)||^2,
    w = 1 / (||Delta||^2 + c)^p                                       (adaptive weighting, Sec. 4.3; sum over dims)

with (t, r) two logit-normal draws, sorted, and r = t on a share of the batch (flow matching there). Classifier-free
guidance as the paper trains it (Eqs. 16-19, App. B.1 Eq. 21): the velocity in the target becomes
v~ = omega v_t + kappa u(z, t, t | c) + (1 - omega - kappa) u(z, t, t | null) for t in the guidance interval and
kept labels, so sampling stays one call. The JVP runs on the online network under stop-gradient, with the online
pass's dropout mask, in float32 (the authors' PyTorch code: fp16 JVPs give NaNs).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch

from fsg.core.process import append_dims, forward_sample, randn
from fsg.methods.base import Method, SharedDropout
from fsg.nets.forward_ad import jvp


@dataclass(frozen=True)
class MeanFlowConfig:
    name: Literal["meanflow"] = "meanflow"
    P_mean: float = -0.4                     # t, r: sigmoid(N(P_mean, P_std^2)), sorted (ImageNet; CIFAR-10: -2.0, 2.0)
    P_std: float = 1.0
    ratio_r_neq_t: float = 0.25              # share of the batch with r != t (ImageNet 0.25; CIFAR-10 0.75)
    adaptive_p: float = 1.0                  # p of w = 1/(||Delta||^2 + c)^p (ImageNet 1.0; CIFAR-10 0.75; 0: plain L2)
    adaptive_c: float = 1e-3                 # c (the paper's "e.g. 1e-3"; the JAX code 0.01)
    guidance: float = 1.0                    # omega (1: no guidance; class-conditional models only)
    guidance_kappa: float = 0.0              # kappa of App. B.1 (effective scale omega / (1 - kappa))
    guidance_interval: tuple[float, float] = (0.0, 1.0)   # guidance applies to t in this interval
    jvp_fp32: bool = True                    # the JVP and the target in float32 under bf16 autocast


def sample_time_pair(n: int, cfg: MeanFlowConfig, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r), t >= r: two logit-normal draws sorted, and r := t where a uniform draw is >= ratio_r_neq_t."""
    a = torch.sigmoid(cfg.P_mean + cfg.P_std * randn((n,), gen, device))
    b = torch.sigmoid(cfg.P_mean + cfg.P_std * randn((n,), gen, device))
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    equal = torch.rand((n,), generator=gen, device=gen.device).to(device) >= cfg.ratio_r_neq_t
    return t, torch.where(equal, t, r)


def meanflow_target(v: torch.Tensor, dudt: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """u_tgt = v - (t - r) du/dt (Eqs. 6 and 11 of Geng et al. 2025)."""
    return v - append_dims(t - r, v.ndim) * dudt


def adaptive_weighted(delta: torch.Tensor, p: float, c: float) -> torch.Tensor:
    """sg(w) ||Delta||^2 per sample, w = 1 / (||Delta||^2 + c)^p, the squared norm summed over all dims (Sec. 4.3)."""
    e = delta.flatten(1).pow(2).sum(1)
    return e / (e.detach() + c) ** p


class MeanFlowMethod(Method):
    name = "meanflow"
    config = MeanFlowConfig
    command = "train-consistency"
    precond = "consistency"
    processes = ("flow",)
    two_times = True
    default_sampler = "flowmap"
    default_steps = 1

    def guided_velocity(self, v, z, t, labels) -> torch.Tensor:
        """v~ = omega v + kappa u(z, t, t | c) + (1 - omega - kappa) u(z, t, t | null) where guided (App. B.1)."""
        c = self.cfg
        if labels is None or (c.guidance == 1.0 and c.guidance_kappa == 0.0):
            return v
        with torch.no_grad():
            u_null = self.model(z, t, r=t, raw=True, labels=torch.full_like(labels, -1))
            u_cond = self.model(z, t, r=t, raw=True, labels=labels) if c.guidance_kappa else 0.0
        guided = c.guidance * v + c.guidance_kappa * u_cond + (1 - c.guidance - c.guidance_kappa) * u_null
        lo, hi = c.guidance_interval
        use = (labels >= 0) & (t >= lo) & (t <= hi)
        return torch.where(append_dims(use, v.ndim), guided, v)

    def loss(self, nets, batch, step, gen):
        x, c = batch["x"], self.cfg
        kw = dict(cond=batch.get("cond"), labels=batch.get("label"))
        t, r = sample_time_pair(x.shape[0], c, gen, x.device)                     # (N,) each, t >= r
        eps = randn(x.shape, gen, x.device)
        z = forward_sample(self.process, x, t, eps)                                # (1 - t) x + t eps
        v = self.guided_velocity(eps - x, z, t, kw["labels"])

        def u(z_, r_, t_):
            return self.model(z_, t_, r=r_, raw=True, **kw)

        rng = SharedDropout(x.device)
        u_theta = nets["model"](z, t, r=r, raw=True, **kw)                        # (N, ...), with gradients
        precision = torch.autocast(x.device.type, enabled=False) if c.jvp_fp32 else contextlib.nullcontext()
        with torch.no_grad(), rng.replay(), precision:
            _, dudt = jvp(u, (z.float(), r.float(), t.float()), (v.float(), torch.zeros_like(r).float(), torch.ones_like(t).float()))
            target = meanflow_target(v.float(), dudt, t.float(), r.float())
        delta = u_theta.float() - target
        per_sample = adaptive_weighted(delta, c.adaptive_p, c.adaptive_c)
        flow_share = float((t == r).float().mean())
        return {"model": per_sample.mean()}, {"mse": float(delta.detach().pow(2).mean()), "r_eq_t": flow_share}
