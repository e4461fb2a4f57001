"""Single steps of the PF-ODE dx/dt = (x - D(x, t)) / t (Eq. 3 of Karras et al. 2022, sigma(t) = t).

`denoise(x, t)` is any callable returning x0_hat; times are Python floats or 0-dim tensors.
"""

from __future__ import annotations

import torch


def ode_derivative(x: torch.Tensor, denoised: torch.Tensor, t) -> torch.Tensor:
    """d = (x - D(x; t)) / t, the PF-ODE slope of a VE process (Eq. 3 of Karras et al. 2022)."""
    return (x - denoised) / t


def euler_step(denoise, x: torch.Tensor, t, t_next) -> torch.Tensor:
    """x_next = x + (t_next - t) d(x, t): one NFE."""
    return x + (t_next - t) * ode_derivative(x, denoise(x, t), t)


def heun_step(denoise, x: torch.Tensor, t, t_next, d: torch.Tensor | None = None) -> torch.Tensor:
    """Second-order step of Algorithm 2 of Karras et al. 2022; falls back to Euler when t_next = 0.

    Two NFE (one when the slope `d` at (x, t) is given, one when t_next = 0). Per-sample times are
    tensors broadcastable to x; t_next is either 0 for every sample or positive for every sample.
    """
    if d is None:
        d = ode_derivative(x, denoise(x, t), t)
    x_next = x + (t_next - t) * d
    if bool(torch.as_tensor(t_next).eq(0).all()):
        return x_next
    d_prime = ode_derivative(x_next, denoise(x_next, t_next), t_next)
    return x + (t_next - t) * (0.5 * d + 0.5 * d_prime)
