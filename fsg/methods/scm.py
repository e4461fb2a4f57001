"""Continuous-time consistency models in TrigFlow time: sCT from data and sCD from a teacher (Lu & Song 2025,
"Simplifying, Stabilizing and Scaling Continuous-Time Consistency Models", arXiv 2410.11081).

One step of Algorithm 1 (App. A), with x_t = cos(t) x0 + sin(t) z, z ~ N(0, sigma_d^2 I), t = arctan(e^tau / sigma_d),
tau ~ N(P_mean, P_std^2):

    dx_t/dt = cos(t) z - sin(t) x0                                   sCT: the one-sample estimate of the PF-ODE
    dx_t/dt = sigma_d F_teacher(x_t / sigma_d, t)                    sCD: the teacher's velocity (fsg.core.trigflow)
    r = min(1, step / H)                                             tangent warm-up (Sec. 4.2)
    g = -cos^2(t) (sigma_d F^- - dx_t/dt) - r cos(t) sin(t) (x_t + sigma_d dF^-/dt)     = cos(t) df^-/dt (Eq. 6)
    g <- g / (||g|| + c)                                             tangent normalisation (Sec. 4.2), c = 0.1
    L = e^{w(t)} / D ||F_theta - F^- - g||^2 - w(t)                  adaptive weighting w(t) (Eq. 8)

F^- = stopgrad(F_theta) at the same (x_t, t), and dF^-/dt its total derivative along the PF-ODE, one JVP of the network
(fsg.nets.forward_ad). With the low-precision arrangement (Sec. 5.1) the JVP's tangent is (cos t sin t dx_t/dt,
cos t sin t), which returns cos(t) sin(t) dF^-/dt directly (the paper's tangent for the input x_t / sigma_d carries
a sigma_d fsg's input x_t does not: F is called on x_t and divides by sigma_d itself). The value of F_theta - F^- is
0; only its gradient, pulling F_theta along g, matters. The weighting w(t) is a small network of t trained by the
same loss (the paper's is unspecified: here a linear layer on sinusoidal features of t, zero-initialised).

The model is a TrigFlow consistency model (`process.name: trigflow`); from an EDM teacher (bundled, fsg-trained or
an imported EDM .pkl) it starts as the teacher's network with `process.time_transform: edm`, which makes the
network exactly a TrigFlow one (fsg.core.trigflow). The paper's stabilisers are each a recipe switch: positional
time embedding with the identity transform (`process.time_transform: identity`, the networks' `time_scale`),
adaptive double normalisation (`network.double_norm`), tangent normalisation and warm-up, adaptive weighting, the
proposal over t and the JVP arrangement (`method.*`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fsg.core.process import append_dims, randn
from fsg.core.trigflow import TrigFlowProcess, velocity_from_teacher
from fsg.errors import UserError
from fsg.methods.base import Method, SharedDropout
from fsg.nets.forward_ad import jvp


@dataclass(frozen=True)
class SCMConfig:
    """What sCT and sCD share (Algorithm 1 and App. G of Lu & Song 2025; defaults are the CIFAR-10 settings)."""

    P_mean: float = -1.0                     # proposal over t: ln(sigma_d tan t) ~ N(P_mean, P_std^2) (ImageNet-64: -1.0, 1.6)
    P_std: float = 1.4
    tangent_norm: bool = True                # g / (||g|| + c)
    tangent_norm_c: float = 0.1              # c (all experiments of the paper)
    warmup_steps: int = 10000                # H: the tangent's second term grows from 0 to 1 over H steps (0: off)
    adaptive_weight: bool = True             # learn w(t) jointly (Eq. 8); off: L = ||F_theta - F^- - g||^2 / D
    weight_features: int = 128               # sinusoidal features of t that w(t) reads
    jvp_arrangement: Literal["rearranged", "plain"] = "rearranged"   # Sec. 5.1: tangent (cos sin dx/dt, cos sin)


@dataclass(frozen=True)
class SCMCTConfig(SCMConfig):
    name: Literal["scm-ct"] = "scm-ct"


@dataclass(frozen=True)
class SCMCDConfig(SCMConfig):
    name: Literal["scm-cd"] = "scm-cd"
    init: Literal["teacher", "scratch"] = "teacher"   # start as the teacher (the paper), or the recipe's network


class AdaptiveWeight(nn.Module):
    """w(t): a linear layer on [cos(f_i t), sin(f_i t)], f_i geometric from 1 to 1000 (t in radians); zero-initialised,
    so that training starts from the unweighted loss."""

    def __init__(self, features: int):
        super().__init__()
        half = features // 2
        self.register_buffer("freqs", torch.exp(math.log(1000.0) * torch.arange(half) / max(half - 1, 1)), persistent=False)
        self.linear = nn.Linear(2 * half, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs[None]                               # (N, half)
        return self.linear(torch.cat([args.cos(), args.sin()], dim=1)).squeeze(1)  # (N,)


def tangent(F_minus: torch.Tensor, dF_term: torch.Tensor, x_t: torch.Tensor, dxdt: torch.Tensor, t: torch.Tensor,
            sigma_data: float, r: float) -> torch.Tensor:
    """g = -cos^2(t) (sigma_d F^- - dx_t/dt) - r (cos(t) sin(t) x_t + sigma_d cos(t) sin(t) dF^-/dt), Algorithm 1 of
    Lu & Song 2025 (= cos(t) df^-/dt of Eq. 6 at r = 1); `dF_term` is cos(t) sin(t) dF^-/dt."""
    cos, sin = (append_dims(v, x_t.ndim) for v in (t.cos(), t.sin()))
    return -cos**2 * (sigma_data * F_minus - dxdt) - r * (cos * sin * x_t + sigma_data * dF_term)


def normalize_tangent(g: torch.Tensor, c: float) -> torch.Tensor:
    """g / (||g|| + c), the per-sample L2 norm over all entries (Sec. 4.2)."""
    return g / (append_dims(g.flatten(1).norm(dim=1), g.ndim) + c)


class SCMMethod(Method):
    """sCT (`scm-ct`, from data) and sCD (`scm-cd`, from a teacher) share everything but dx_t/dt."""

    precond = "consistency"
    processes = ("trigflow",)
    default_sampler = "scm"
    default_steps = 1

    @classmethod
    def process_for(cls, cfg, process):
        """TrigFlow as it is; a model of EDM's process (a teacher to start from) becomes the same network in TrigFlow
        time with EDM's time transform, which leaves its function unchanged (fsg.core.trigflow)."""
        if process.name == "trigflow":
            return process
        if process.name != "edm":
            raise UserError(f"sCT/sCD train TrigFlow models; a model of process '{process.name}' cannot start them "
                            f"(EDM and TrigFlow models can)")
        return TrigFlowProcess(sigma_data=process.sigma_data, sigma_max=process.sigma_max, sigma_min=process.sigma_min,
                               rho=process.rho, time_transform="edm")

    def __init__(self, cfg, model, process, **kw):
        super().__init__(cfg, model, process, **kw)
        self.weighting = AdaptiveWeight(cfg.weight_features) if cfg.adaptive_weight else None

    def trainable(self):
        return {"model": self.model} if self.weighting is None else {"model": self.model, "weighting": self.weighting}

    def velocity(self, batch, x0, z, x_t, t) -> torch.Tensor:
        """dx_t/dt along the PF-ODE at (x_t, t)."""
        raise NotImplementedError

    def loss(self, nets, batch, step, gen):
        x0, c, p = batch["x"], self.cfg, self.process
        sd, nd, kw = p.sigma_data, x0.ndim, dict(cond=batch.get("cond"), labels=batch.get("label"))
        t = torch.atan((c.P_mean + c.P_std * randn((x0.shape[0],), gen, x0.device)).exp() / sd)   # (N,)
        z = sd * randn(x0.shape, gen, x0.device)
        x_t = append_dims(t.cos(), nd) * x0 + append_dims(t.sin(), nd) * z
        with torch.no_grad():
            dxdt = self.velocity(batch, x0, z, x_t, t)
        r = min(1.0, step / c.warmup_steps) if c.warmup_steps > 0 else 1.0

        def F(x, s):                       # F^-(x_t, t) in TrigFlow's convention, s (N,)
            return p.trig_sign * self.model(x, s, raw=True, **kw)

        rng = SharedDropout(x0.device)
        F_theta = p.trig_sign * nets["model"](x_t, t, raw=True, **kw)           # (N, ...), with gradients
        with torch.no_grad(), rng.replay():                                     # the same dropout mask
            if c.jvp_arrangement == "rearranged":
                cs = t.cos() * t.sin()
                F_minus, dF_term = jvp(F, (x_t, t), (append_dims(cs, nd) * dxdt, cs))
            else:
                F_minus, dF = jvp(F, (x_t, t), (dxdt, torch.ones_like(t)))
                dF_term = append_dims(t.cos() * t.sin(), nd) * dF
            g = tangent(F_minus, dF_term, x_t, dxdt, t, sd, r)
            raw_norm = float(g.flatten(1).norm(dim=1).mean())                   # logged before the normalisation
            if c.tangent_norm:
                g = normalize_tangent(g, c.tangent_norm_c)
        sq = (F_theta - F_minus - g).pow(2).flatten(1).mean(1)                  # ||.||^2 / D, (N,)
        logs = {"tangent_norm": raw_norm, "warmup": r}
        if self.weighting is None:
            loss = sq.mean()
            return {"model": loss}, {**logs, "distance": float(sq.detach().mean())}
        w = nets["weighting"](t)                                                # (N,)
        loss = (w.exp() * sq - w).mean()
        return {"model": loss, "weighting": loss}, {**logs, "distance": float(sq.detach().mean()), "w_mean": float(w.detach().mean())}


class SCMCTMethod(SCMMethod):
    """sCT: no teacher in the loss; it may start from a diffusion model (`--init`), as the paper always does."""

    name = "scm-ct"
    config = SCMCTConfig
    command = "train-consistency"

    def velocity(self, batch, x0, z, x_t, t):
        """dx_t/dt = cos(t) z - sin(t) x0 (Algorithm 1, sCT)."""
        return append_dims(t.cos(), x0.ndim) * z - append_dims(t.sin(), x0.ndim) * x0


class SCMCDMethod(SCMMethod):
    """sCD: the teacher's PF-ODE velocity (an EDM, VP or TrigFlow teacher); the model starts as the teacher."""

    name = "scm-cd"
    config = SCMCDConfig
    command = "distill"
    needs_teacher = True
    init_from_teacher = True

    @classmethod
    def starts_from_teacher(cls, cfg) -> bool:
        return cfg.init == "teacher"

    def velocity(self, batch, x0, z, x_t, t):
        """dx_t/dt = sigma_d F_teacher: the teacher's velocity in TrigFlow time (fsg.core.trigflow)."""
        kw = dict(cond=batch.get("cond"), labels=batch.get("label"))
        return velocity_from_teacher(self.teacher.process, lambda x, s: self.teacher(x, s, **kw), x_t, t,
                                     self.process.sigma_data)
