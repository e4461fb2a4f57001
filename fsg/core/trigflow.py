"""TrigFlow (Lu & Song 2025, "Simplifying, Stabilizing and Scaling Continuous-Time Consistency Models", Sec. 3):

    x_t = cos(t) x0 + sin(t) z,   z ~ N(0, sigma_d^2 I),   t in [0, pi/2],

so (alpha, beta, sigma)(t) = (cos t, 0, sigma_d sin t). The network F predicts the velocity in units of sigma_d:

    D(x_t, t) = f(x_t, t) = cos(t) x_t - sin(t) sigma_d F(x_t / sigma_d, c_noise(t))      (Eq. 5; App. B, Eq. 23)
    dx_t/dt = sigma_d F = (cos(t) x_t - D(x_t, t)) / sin(t)                              (Eq. 3 / 24)

A TrigFlow diffusion model and its consistency model share this parameterisation (f(x, 0) = x holds by itself).
EDM's sigma maps to t = arctan(sigma / sigma_d) with x_t = cos(t) x_sigma (App. B.2, Eq. 30); under that map EDM's
preconditioning is this one with F -> -F and c_noise = ln(sigma_d tan t) / 4 (c_in = 1/sigma_d, c_skip = cos t,
c_out = sigma_d sin t), so an EDM network is a TrigFlow network: `time_transform: edm` uses it as it is (what a
model tuned from an EDM teacher needs); `identity` (c_noise = t) is the paper's stabiliser of Sec. 4.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from fsg.core.process import randn


@dataclass(frozen=True)
class TrigFlowProcess:
    name: Literal["trigflow"] = "trigflow"
    sigma_data: float = 0.5              # sigma_d: z ~ N(0, sigma_d^2 I) and the data's expected std
    sigma_max: float = 80.0              # sampling starts at t_max = arctan(sigma_max / sigma_d) (EDM's 80: 1.5645)
    sigma_min: float = 0.002             # a diffusion model's ODE grid: EDM's Karras grid sigma_max -> sigma_min, in t
    rho: float = 7.0                     # Karras exponent of that grid
    P_mean: float = -1.0                 # training times: ln(sigma_d tan t) ~ N(P_mean, P_std^2) (CIFAR-10 CM: -1.0, 1.4)
    P_std: float = 1.4
    time_transform: Literal["identity", "edm"] = "identity"   # c_noise = t (Sec. 4.1), or EDM's ln(sigma_d tan t)/4

    @property
    def t_min(self) -> float:
        return 0.0

    @property
    def t_max(self) -> float:
        return math.atan(self.sigma_max / self.sigma_data)

    @property
    def trig_sign(self) -> float:
        """F = trig_sign * (the network's output): -1 under EDM's time transform, whose networks predict -F."""
        return 1.0 if self.time_transform == "identity" else -1.0

    def marginal(self, t: torch.Tensor):
        """(alpha, beta, sigma) = (cos t, 0, sigma_d sin t)."""
        return t.cos(), torch.zeros_like(t), self.sigma_data * t.sin()

    def train_times(self, n: int, gen: torch.Generator | None, device=None) -> torch.Tensor:
        """t = arctan(e^tau / sigma_d), tau ~ N(P_mean, P_std^2): EDM's log-normal over sigma = sigma_d tan t
        (Algorithm 1 of Lu & Song 2025)."""
        tau = self.P_mean + self.P_std * randn((n,), gen, device)
        return torch.atan(tau.exp() / self.sigma_data)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """1 / (sigma_d sin t)^2: lambda ||D - x0||^2 = ||F - v / sigma_d||^2, the unweighted velocity loss of Eq. 4
        in units of sigma_d (D - x0 = sin t (v - sigma_d F), v = cos t z - sin t x0); it is EDM's lambda(sigma) under
        t = arctan(sigma / sigma_d)."""
        return 1 / (self.sigma_data * t.sin()) ** 2

    def c_noise(self, t: torch.Tensor) -> torch.Tensor:
        """The network's time input: t (identity transform) or EDM's ln(sigma_d tan t) / 4."""
        return t if self.time_transform == "identity" else (self.sigma_data * t.tan()).log() / 4

    def scalings(self, t: torch.Tensor):
        """c_skip = cos t, c_out = -trig_sign sigma_d sin t, c_in = 1 / sigma_d, c_noise (Eq. 23)."""
        return t.cos(), -self.trig_sign * self.sigma_data * t.sin(), torch.full_like(t, 1 / self.sigma_data), self.c_noise(t)

    def consistency_scalings(self, t: torch.Tensor):
        """The same: f(x, 0) = x holds for the TrigFlow parameterisation itself (Eq. 5)."""
        return self.scalings(t)

    def ode_drift(self, x: torch.Tensor, x0_hat: torch.Tensor, t, cond=None) -> torch.Tensor:
        """dx_t/dt = (cos t x_t - D(x_t, t)) / sin t (Eq. 3 with Eq. 23 solved for F)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return (t.cos() * x - x0_hat) / t.sin()


def edm_sigma(t: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """sigma = sigma_d tan t, EDM's noise level of TrigFlow time t (App. B.2, Eq. 30 of Lu & Song 2025)."""
    return sigma_data * t.tan()


def velocity_from_teacher(teacher_process, denoise, x_t: torch.Tensor, t: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """dx_t/dt in TrigFlow time from a teacher denoiser `denoise(x, s)` of another process: a teacher whose time is
    EDM's sigma (`edm`, `vp`) sees x_sigma = x_t / cos t at sigma = sigma_d tan t, and its x0 estimate D gives
    dx_t/dt = (cos t x_t - D) / sin t (fsg's derivation: the TrigFlow parameterisation solved for F, equal to EDM's
    ODE through the chain rule); a TrigFlow teacher is used as it is. `t` is per sample (N,)."""
    tt = t.reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
    if teacher_process.name == "trigflow":
        x0_hat = denoise(x_t, t)
    else:
        x0_hat = denoise(x_t / tt.cos(), edm_sigma(t, sigma_data))
    return (tt.cos() * x_t - x0_hat) / tt.sin()
