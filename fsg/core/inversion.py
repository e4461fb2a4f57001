"""PaGoDA's encoder and decoder (Kim et al. 2024, Sec. 3), as functions of a denoiser.

Encoder: z = Enc(x), the deterministic PF-ODE solved *forward* (data -> noise, "DDIM inversion") from
sigma_min to sigma_max with the frozen low-resolution teacher, Heun on the Karras grid traversed upwards.
x is first average-pooled to the teacher's resolution. Decoder: the generator G called once at sigma_max,
G(z) = D_G(up(z), sigma_max), where up is the nearest upsampling to the output resolution (identity for
an ungrown generator).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fsg.core.schedules import karras_sigmas
from fsg.core.solvers import heun_step, ode_velocity
from fsg.errors import UserError


def inversion_times(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """The Karras grid of `steps` + 1 points (Eq. 5 of Karras et al. 2022), ascending from sigma_min to sigma_max."""
    return karras_sigmas(steps + 1, sigma_min, sigma_max, rho, append_zero=False).flip(0)


def invert(process, denoise, x: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Solve the process's PF-ODE (for EDM dx/dt = (x - D(x, t)) / t) from times[0] to times[-1] (ascending) with
    Heun steps: the data -> noise direction of Algorithm 2 of Karras et al. 2022. NFE = 2 (len(times) - 1)."""
    drift = ode_velocity(process, denoise)
    for t, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
        x = heun_step(drift, x, t, t_next)
    return x


def to_latent_resolution(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Average-pool images to the teacher's resolution (as `data.downsample` makes the teacher's data)."""
    k = x.shape[-1] // resolution
    if k * resolution != x.shape[-1]:
        raise UserError(f"images of resolution {x.shape[-1]} cannot be pooled to the teacher's {resolution}")
    return F.avg_pool2d(x, k) if k > 1 else x                                  # (N, C, r, r)


@torch.no_grad()
def encode(teacher, x: torch.Tensor, resolution: int, steps: int, labels: torch.Tensor | None = None) -> torch.Tensor:
    """z = Enc(x): pool x to `resolution`, then invert with the teacher D(x, t, labels=) (a `Denoiser`)."""
    p = teacher.process
    times = inversion_times(steps, p.sigma_min, p.sigma_max, p.rho)
    x_low = to_latent_resolution(x, resolution)
    return invert(p, lambda v, t: teacher(v, t, labels=labels), x_low, times)


def decode(generator, z: torch.Tensor, factor: int, sigma_max: float, labels: torch.Tensor | None = None) -> torch.Tensor:
    """x = G(z) = D_G(up(z), sigma_max): one network evaluation at the output resolution."""
    z_up = F.interpolate(z, scale_factor=float(factor), mode="nearest") if factor > 1 else z   # (N, C, R, R)
    return generator(z_up, sigma_max, labels=labels)
