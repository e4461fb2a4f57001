"""Single steps of a probability-flow ODE dx/dt = v(x, t), for any process.

`drift(x, t)` is the ODE's velocity, usually `ode_velocity(process, denoise)`: the process's PF-ODE drift at the
denoiser's estimate (for EDM, (x - D(x, t)) / t, Eq. 3 of Karras et al. 2022). Times are Python floats, 0-dim
tensors or per-sample tensors broadcastable to x.
"""

from __future__ import annotations

import torch


def ode_velocity(process, denoise, cond: torch.Tensor | None = None):
    """v(x, t) = the process's PF-ODE drift at x0_hat = denoise(x, t): one NFE per call."""
    return lambda x, t: process.ode_drift(x, denoise(x, t), t, cond)


def euler_step(drift, x: torch.Tensor, t, t_next) -> torch.Tensor:
    """x_next = x + (t_next - t) v(x, t): one NFE."""
    return x + (t_next - t) * drift(x, t)


def heun_step(drift, x: torch.Tensor, t, t_next, d: torch.Tensor | None = None) -> torch.Tensor:
    """Second-order step of Algorithm 2 of Karras et al. 2022; falls back to Euler when t_next = 0, where the
    drift of a process that reaches the data (sigma(0) = 0) is singular.

    Two NFE (one when the slope `d` at (x, t) is given, one when t_next = 0). t_next is either 0 for every
    sample or positive for every sample.
    """
    if d is None:
        d = drift(x, t)
    x_next = x + (t_next - t) * d
    if bool(torch.as_tensor(t_next).eq(0).all()):
        return x_next
    d_prime = drift(x_next, t_next)
    return x + (t_next - t) * (0.5 * d + 0.5 * d_prime)
