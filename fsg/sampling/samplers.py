"""Samplers of the EDM family and consistency models, with one contract:
`sample_X(denoise, x, times, noise, process, **knobs) -> x`.

`denoise(x, t)` returns x0_hat for a batch at one time (float or 0-dim tensor); `times` is the descending schedule
(float64); `noise` a `SampleNoise`; `process` the model's process (`fsg.core.process.Process`), whose PF-ODE drift
the ODE samplers integrate. Samplers count nothing: the NFE is counted by `CountingDenoiser`, which wraps the
network call, so a test can check the formulas below exactly.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from fsg.core.process import renoise_from_boundary
from fsg.core.schedules import karras_index_to_sigma, karras_sigmas
from fsg.core.solvers import heun_step, ode_velocity
from fsg.errors import UserError
from fsg.sampling.plan import SamplerPlan, SamplerSpec, default_sampler


class CountingDenoiser:
    """Wraps D(x, t, cond, labels) as denoise(x, t) for a batch; counts network evaluations (NFE)."""

    def __init__(self, denoiser, cond=None, labels=None, clip: bool = False, guidance: float = 1.0):
        self.denoiser, self.cond, self.labels, self.clip, self.guidance = denoiser, cond, labels, clip, guidance
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t, r=None) -> torch.Tensor:
        """x0_hat at (x, t); for a flow map with `r`, the jump x_r."""
        self.nfe += 1
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0])
        jump = {} if r is None else {"r": torch.as_tensor(r, dtype=torch.float32, device=x.device).expand(x.shape[0])}
        x32 = x.float()
        out = self.denoiser(x32, t, cond=self.cond, labels=self.labels, **jump)
        if self.guidance != 1.0 and self.labels is not None:
            # classifier-free guidance: D_w = D(null) + w (D(c) - D(null)); the second pass is a second NFE
            self.nfe += 1
            uncond = self.denoiser(x32, t, cond=self.cond, labels=torch.full_like(self.labels, -1), **jump)
            out = uncond + self.guidance * (out - uncond)
        if self.clip:
            out = out.clamp(-1, 1)
        return out.to(x.dtype)

    def heads(self, x: torch.Tensor, t) -> dict[str, torch.Tensor]:
        """All heads of a multi-head denoiser (one NFE), e.g. DDM's (x0, C, eps)."""
        self.nfe += 1
        out = self.denoiser.heads(x.float(), t, cond=self.cond, labels=self.labels)
        return {k: v.to(x.dtype) for k, v in out.items()}


# ------------------------------------------------------------------------------------------------ samplers

def sample_heun(denoise, x, times, noise, process, s_churn: float = 0.0, s_tmin: float = 0.0,
                s_tmax: float = float("inf"), s_noise: float = 1.0, second_order: bool = True):
    """Algorithm 2 of Karras et al. 2022 (Euler when `second_order` is False) on the process's PF-ODE.
    NFE = 2N - 1 (Heun), N (Euler). The churn (S_churn > 0) adds noise to x = x0 + t eps processes."""
    drift = ode_velocity(process, denoise)
    n = len(times) - 1
    for i in range(n):
        t, t_next = float(times[i]), float(times[i + 1])
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= t <= s_tmax else 0.0
        t_hat = t * (1 + gamma)
        if gamma > 0:  # Increase noise temporarily.
            x = x + math.sqrt(t_hat**2 - t**2) * s_noise * noise.randn(x.shape, x.dtype)
        if second_order:
            x = heun_step(drift, x, t_hat, t_next)
        else:  # Euler step.
            x = x + (t_next - t_hat) * drift(x, t_hat)
    return x


def sample_euler(denoise, x, times, noise, process, **knobs):
    """First-order Euler sampling of the PF-ODE (Algorithm 2 without the correction). NFE = N."""
    return sample_heun(denoise, x, times, noise, process, second_order=False, **knobs)


def sample_consistency(denoise, x, times, noise, process, t_end: float | None = None, edge_skip: float = 0.0):
    """Multistep consistency sampling (Algorithm 1 of Song et al. 2023). NFE = len(times).

    x starts at times[0]; after each consistency call f = f(x, t) the estimate is re-noised to the next time with
    the exact transition from the boundary (`renoise_from_boundary`; for x0 + t eps: x' = f + sqrt(t'^2 - t_min^2) z).
    With `t_end` above the boundary, the last estimate is re-noised to t_end too, as openai/consistency_models'
    `stochastic_iterative_sampler` does when the last of its `--ts` indices is not the grid's end.
    Edge-skipping (eta = `edge_skip` in [0, 1], fsg's variant for single-phase models) does not land on the boundary:
    it keeps a fraction eta of the noise direction eps_hat = (x - alpha f) / sigma that the call removed,
        x' = alpha' f + eta sigma' eps_hat + sqrt(1 - eta^2) (x' of Algorithm 1 - alpha' f).
    eta = 0 is Algorithm 1, eta = 1 a deterministic DDIM step with f as the denoiser.
    """
    t_cur = float(times[0])
    x0 = denoise(x, t_cur)
    ends = [float(t) for t in times[1:]] + ([float(t_end)] if t_end is not None and t_end > process.t_min else [])
    for i, t in enumerate(ends):
        fresh = renoise_from_boundary(process, x0, t, noise.randn(x.shape, x.dtype))
        if edge_skip > 0:
            a_cur, _, s_cur = (float(v) for v in process.marginal(torch.tensor(t_cur, dtype=torch.float64)))
            a_t, _, s_t = (float(v) for v in process.marginal(torch.tensor(t, dtype=torch.float64)))
            eps_hat = (x - a_cur * x0) / s_cur
            fresh = a_t * x0 + edge_skip * s_t * eps_hat + math.sqrt(1 - edge_skip**2) * (fresh - a_t * x0)
        x = fresh
        if i < len(times) - 1:
            x0, t_cur = denoise(x, t), t
        else:
            x0 = x
    return x0


def nfe_of(sampler: str, steps: int) -> int:
    """Exact NFE of a sampler with `steps` (grid points for heun/euler, calls for consistency)."""
    return {"heun": 2 * steps - 1, "euler": steps, "consistency": steps}[sampler]


# ------------------------------------------------------------------------------------------------ plans

def _needs_noise_levels(model, name: str) -> None:
    p = model.process
    if not hasattr(p, "sigma_max"):
        raise UserError(f"sampler '{name}' integrates the EDM-family ODE; this {p.name} model samples with "
                        f"'{default_sampler(model.meta)[0]}' (its default)")


def plan_ode(name: str):
    def plan(model, steps: int | None, s_churn=None, s_tmin=None, s_tmax=None, s_noise=None) -> SamplerPlan:
        """N = `steps` points of the Karras grid (Eq. 5 of Karras et al. 2022) and t_N = 0; default the model's
        steps when it is the model's sampler, else 18. S_churn, S_tmin, S_tmax, S_noise of Algorithm 2."""
        _needs_noise_levels(model, name)
        default_name, default_steps = default_sampler(model.meta)
        n = steps if steps is not None else (default_steps if name == default_name else 18)
        if n < 1:
            raise UserError(f"--steps must be at least 1, got {n}")
        churn = {k: float(v) for k, v in dict(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise).items()
                 if v is not None}
        for key, value in churn.items():
            if math.isnan(value) or value < 0 or (key != "s_tmax" and math.isinf(value)):
                raise UserError(f"--{key.replace('_', '-')} must be a finite number >= 0, got {value:g}")
        p = model.process
        fn = sample_heun if name == "heun" else sample_euler
        times = karras_sigmas(n, p.sigma_min, p.sigma_max, p.rho)
        if p.name == "trigflow":       # the same noise levels in TrigFlow time, t = arctan(sigma / sigma_d)
            if churn.get("s_churn"):
                raise UserError("--s-churn adds the noise of x = x0 + sigma eps; a TrigFlow model samples without it")
            times = torch.atan(times / p.sigma_data)
        return SamplerPlan(name, times, churn, process=p, sample_fn=fn)
    return plan


def consistency_times(model, steps: int | None, timesteps: Sequence[int] | None,
                      sigmas: Sequence[float] | None) -> tuple[torch.Tensor, float | None]:
    """(call times, end time) of multistep consistency sampling.

    - `sigmas`: explicit noise levels, one consistency call each;
    - `timesteps`: indices into the model's N-point training grid (index 0 = sigma_max), openai/consistency_models'
      `--ts`: the model is called at every index but the last, which only sets the level of the final re-noising
      (the grid's end, N - 1, gives none), so `--timesteps 0,9,17` on an 18-point grid costs 2 NFE;
    - else K = `steps` evenly spaced indices of the grid, K calls.
    """
    p = model.process
    N = int(model.meta.get("train_grid") or 40)
    end = None
    if sigmas:
        t = torch.tensor([float(s) for s in sigmas], dtype=torch.float64)
        if not bool(torch.isfinite(t).all()) or not bool(((t > p.sigma_min) & (t <= p.sigma_max)).all()):
            raise UserError(f"--sigmas must lie in ({p.sigma_min:g}, {p.sigma_max:g}], got {', '.join(f'{s:g}' for s in sigmas)}")
    elif timesteps:
        idx = [int(i) for i in timesteps]
        if len(idx) < 2:
            raise UserError("--timesteps takes at least two indices: the model is called at each but the last, "
                            "which marks the end (e.g. 0,17 is one step on an 18-point grid)")
        if any(i < 0 or i >= N for i in idx):
            raise UserError(f"--timesteps: indices must lie in [0, {N - 1}] (the model's {N}-point training grid)")
        grid = karras_index_to_sigma(torch.tensor(idx), N, p.sigma_min, p.sigma_max, p.rho)
        t, end = grid[:-1], float(grid[-1])
        if len(idx) > 1 and not all(a < b for a, b in zip(idx[:-1], idx[1:])):
            raise UserError("--timesteps must be strictly increasing indices (decreasing noise levels)")
    else:
        k = 1 if steps is None else steps
        if k < 1:
            raise UserError(f"--steps must be at least 1, got {k}")
        idx = [round(i * (N - 1) / k) for i in range(k)]
        t = karras_index_to_sigma(torch.tensor(idx), N, p.sigma_min, p.sigma_max, p.rho)
    if len(t) > 1 and not bool((t[1:] < t[:-1]).all()):
        raise UserError("consistency sampling times must be strictly decreasing")
    return t, end


def plan_consistency(model, steps: int | None, timesteps=None, sigmas=None, edge_skip=None) -> SamplerPlan:
    """Multistep consistency sampling of a consistency model (CD, CT, ECT, SCT); `steps` defaults to the model's
    when consistency is its default sampler, else 1."""
    _needs_noise_levels(model, "consistency")
    if model.denoiser.precond == "diffusion":
        raise UserError("the consistency sampler needs a consistency model; this is a diffusion model (use heun or euler)")
    if steps is not None and (timesteps or sigmas):
        raise UserError("give --steps, --timesteps or --sigmas, not several")
    default_name, default_steps = default_sampler(model.meta)
    if steps is None and not (timesteps or sigmas):
        steps = default_steps if default_name == "consistency" else 1
    times, end = consistency_times(model, steps, timesteps, sigmas)
    knobs = {} if end is None else {"t_end": end}
    if edge_skip is not None:
        if not 0.0 <= float(edge_skip) <= 1.0:
            raise UserError(f"--edge-skip must lie in [0, 1], got {edge_skip:g}")
        if edge_skip > 0:
            knobs["edge_skip"] = float(edge_skip)
    return SamplerPlan("consistency", times, knobs, clip=True, process=model.process, sample_fn=sample_consistency)


HEUN = SamplerSpec(plan_ode("heun"), ("s_churn", "s_tmin", "s_tmax", "s_noise"), ("edm", "vp", "trigflow"), ("diffusion",),
                   "Heun's 2nd-order PF-ODE solver (Algorithm 2 of Karras et al. 2022)", lambda n: 2 * n - 1)
EULER = SamplerSpec(plan_ode("euler"), ("s_churn", "s_tmin", "s_tmax", "s_noise"), ("edm", "vp", "trigflow"), ("diffusion",),
                    "Euler's method on the PF-ODE", lambda n: n)
CONSISTENCY = SamplerSpec(plan_consistency, ("timesteps", "sigmas", "edge_skip"), ("edm", "vp"),
                          ("consistency", "ect"), "multistep consistency sampling (Algorithm 1 of Song et al. 2023)", lambda n: n)
