"""The Process protocol: what every forward process of fsg declares, and what solvers, samplers and losses use.

A process is a frozen dataclass whose fields are its `process:` recipe section. Its marginal is

    x_t = alpha(t) x0 + beta(t) y + sigma(t) eps,   eps ~ N(0, I),

with y the condition image of a bridge (beta = 0 otherwise), over the time domain [t_min, t_max]: t_min is the
data end (the consistency boundary), t_max the prior end. A new process is one class implementing `Process`
plus one line in `fsg.core.PROCESSES`; the contract test in tests/test_processes.py checks every registered
process against identities (the PF-ODE drift is the time derivative of the marginal path when the data is one
point, the boundary scalings are exact at t_min, ...).
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Process(Protocol):
    name: str
    sigma_data: float

    @property
    def t_min(self) -> float:
        """The data end of the time domain (the consistency boundary)."""

    @property
    def t_max(self) -> float:
        """The prior end of the time domain."""

    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(alpha, beta, sigma) of x_t = alpha x0 + beta y + sigma eps."""

    def train_times(self, n: int, gen: torch.Generator | None, device=None) -> torch.Tensor:
        """n training times drawn from the process's training distribution."""

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) of the denoising loss lambda(t) ||D(x_t, t) - x0||^2."""

    def scalings(self, t: torch.Tensor):
        """c_skip, c_out, c_in, c_noise of the diffusion preconditioning D = c_skip x + c_out F(c_in x, c_noise)."""

    def consistency_scalings(self, t: torch.Tensor):
        """c_skip, c_out, c_in, c_noise with the boundary condition f(x, t_min) = x exactly."""

    def ode_drift(self, x: torch.Tensor, x0_hat: torch.Tensor, t, cond: torch.Tensor | None = None) -> torch.Tensor:
        """dx/dt of the probability-flow ODE at (x, t), given the denoiser's estimate x0_hat of E[x0 | x_t]."""


def randn(shape, gen: torch.Generator | None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normal noise drawn from an explicit generator (on the generator's device, then moved)."""
    gdev = gen.device if gen is not None else "cpu"
    return torch.randn(shape, generator=gen, device=gdev, dtype=dtype).to(device or gdev)


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-sample vector (N,) to (N, 1, ..., 1) with `ndim` dims in total."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def forward_sample(process: Process, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                   cond: torch.Tensor | None = None) -> torch.Tensor:
    """x_t = alpha(t) x0 + beta(t) y + sigma(t) eps for per-sample times t (N,)."""
    alpha, beta, sigma = (append_dims(c.to(x0.dtype), x0.ndim) for c in process.marginal(t))
    x_t = alpha * x0 + sigma * eps
    return x_t if cond is None else x_t + beta * cond


def uniform_times(process: Process, n: int, gen: torch.Generator | None, device=None) -> torch.Tensor:
    """t ~ U[t_min, t_max], in float32 on `device`."""
    u = torch.rand((n,), generator=gen, device=gen.device if gen is not None else "cpu").to(device)
    return process.t_min + (process.t_max - process.t_min) * u


def float64(t) -> torch.Tensor:
    """A time as a float64 tensor. A Python float goes straight to float64 (never through float32, as
    `torch.as_tensor(t).double()` would take it); a tensor is cast."""
    return t.double() if torch.is_tensor(t) else torch.tensor(t, dtype=torch.float64)


def renoise_from_boundary(process: Process, x0: torch.Tensor, t, z: torch.Tensor) -> torch.Tensor:
    """x_t from an estimate x0 of the boundary point x_{t_min}: the exact Gaussian transition of the marginal,
    x_t = (alpha_t / alpha_min) x0 + sqrt(sigma_t^2 - (alpha_t / alpha_min)^2 sigma_min^2) z (no condition term).

    For x_t = x0 + t eps this is the multistep consistency sampler's x0 + sqrt(t^2 - t_min^2) z (Algorithm 1 of
    Song et al. 2023); for TrigFlow (t_min = 0) it is cos(t) x0 + sin(t) sigma_d z (Lu & Song 2025).
    """
    a_t, _, s_t = (float(v) for v in process.marginal(float64(t)))
    a_0, _, s_0 = (float(v) for v in process.marginal(float64(process.t_min)))
    k = a_t / a_0
    return k * x0 + math.sqrt(max(s_t**2 - (k * s_0) ** 2, 0.0)) * z
