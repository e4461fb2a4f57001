"""Samplers with one contract: `sample_X(denoise, x, times, noise, **knobs) -> x`.

`denoise(x, t)` returns x0_hat for a batch at one time (float or 0-dim tensor); `times` is the
descending schedule (float64); `noise` a `SampleNoise`. Samplers count nothing: the NFE is counted by
`CountingDenoiser`, which wraps the network call, so a test can check the formulas below exactly.
"""

from __future__ import annotations

import math

import torch

from fsg.core.solvers import heun_step, ode_derivative
from fsg.errors import UserError


class CountingDenoiser:
    """Wraps D(x, t, cond, labels) as denoise(x, t) for a batch; counts network evaluations (NFE)."""

    def __init__(self, denoiser, cond=None, labels=None, clip: bool = False, guidance: float = 1.0):
        self.denoiser, self.cond, self.labels, self.clip, self.guidance = denoiser, cond, labels, clip, guidance
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        self.nfe += 1
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0])
        x32 = x.float()
        out = self.denoiser(x32, t, cond=self.cond, labels=self.labels)
        if self.guidance != 1.0 and self.labels is not None:
            # classifier-free guidance: D_w = D(null) + w (D(c) - D(null)); the second pass is a second NFE
            self.nfe += 1
            uncond = self.denoiser(x32, t, cond=self.cond, labels=torch.full_like(self.labels, -1))
            out = uncond + self.guidance * (out - uncond)
        if self.clip:
            out = out.clamp(-1, 1)
        return out.to(x.dtype)


    def heads(self, x: torch.Tensor, t) -> dict[str, torch.Tensor]:
        """All heads of a multi-head denoiser (one NFE), e.g. DDM's (x0, C, eps)."""
        self.nfe += 1
        out = self.denoiser.heads(x.float(), t, cond=self.cond, labels=self.labels)
        return {k: v.to(x.dtype) for k, v in out.items()}


def sample_heun(denoise, x, times, noise, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                s_noise: float = 1.0, second_order: bool = True):
    """Algorithm 2 of Karras et al. 2022 (Euler when `second_order` is False). NFE = 2N - 1 (Heun), N (Euler)."""
    n = len(times) - 1
    for i in range(n):
        t, t_next = float(times[i]), float(times[i + 1])
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= t <= s_tmax else 0.0
        t_hat = t * (1 + gamma)
        if gamma > 0:  # Increase noise temporarily.
            x = x + math.sqrt(t_hat**2 - t**2) * s_noise * noise.randn(x.shape, x.dtype)
        if second_order:
            x = heun_step(denoise, x, t_hat, t_next)
        else:  # Euler step.
            x = x + (t_next - t_hat) * ode_derivative(x, denoise(x, t_hat), t_hat)
    return x


def sample_euler(denoise, x, times, noise, **knobs):
    """First-order Euler sampling of the PF-ODE (Algorithm 2 without the correction). NFE = N."""
    return sample_heun(denoise, x, times, noise, second_order=False, **knobs)


def sample_consistency(denoise, x, times, noise, t_min: float = 0.002, edge_skip: float = 0.0):
    """Multistep consistency sampling (Algorithm 1 of Song et al. 2023). NFE = len(times).

    x starts at times[0] (x = T z); after each consistency call f = f(x, t) the estimate is re-noised to the
    next time: x' = f + sqrt(t'^2 - t_min^2) z. Edge-skipping (SCT, eta = `edge_skip` in [0, 1]) does not
    land on the edge t_min: it stops at s = eta t' on the DDIM line through x and f and re-noises from s to t',
    i.e. it keeps a fraction eta of the noise direction eps_hat = (x - f) / t that the call removed:
        x' = f + eta t' eps_hat + sqrt(1 - eta^2) sqrt(t'^2 - t_min^2) z.
    eta = 0 is Algorithm 1, eta = 1 a deterministic DDIM step with f as the denoiser (fsg's form: the SCT
    paper's own formula was not available to check).
    """
    if not 0.0 <= edge_skip <= 1.0:
        raise UserError(f"--edge-skip must lie in [0, 1], got {edge_skip}")
    t_cur = float(times[0])
    x0 = denoise(x, t_cur)
    for t in times[1:]:
        t = float(t)
        fresh = math.sqrt(max(t**2 - t_min**2, 0.0)) * noise.randn(x.shape, x.dtype)
        x = x0 + edge_skip * t * (x - x0) / t_cur + math.sqrt(1 - edge_skip**2) * fresh
        x0, t_cur = denoise(x, t), t
    return x0


def nfe_of(sampler: str, steps: int) -> int:
    """Exact NFE of a sampler with `steps` (grid points for heun/euler, calls for consistency)."""
    return {"heun": 2 * steps - 1, "euler": steps, "consistency": steps}[sampler]
