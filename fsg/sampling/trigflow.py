"""Sampling a continuous-time consistency model in TrigFlow time (Lu & Song 2025, Sec. 5.2): one step
f(sigma_d z, t_max) from t_max = arctan(sigma_max / sigma_d), or several with the multistep consistency sampler
(Algorithm 1 of Song et al. 2023) that re-noises each estimate to the next time, x_t = cos(t) x0 + sin(t) z.
The paper's 2-step sampler uses the intermediate time t = 1.1 (App. G.2)."""

from __future__ import annotations

from typing import Sequence

import torch

from fsg.errors import UserError
from fsg.sampling.plan import SamplerPlan, SamplerSpec, default_sampler
from fsg.sampling.samplers import sample_consistency

MID_TIME = 1.1          # the intermediate time of the paper's 2-step sampler (App. G.2 of Lu & Song 2025)


def scm_times(t_max: float, steps: int, times: Sequence[float] | None = None) -> torch.Tensor:
    """The call times: t_max, then `times` (strictly decreasing in (0, t_max)), else for K steps K - 1 times evenly
    spaced from 1.1 down to 1.1 / (K - 1): [t_max] at K = 1 and the paper's [t_max, 1.1] at K = 2 (fsg's spacing
    beyond 2 steps, which the paper does not use)."""
    if times:
        mids = torch.tensor([float(t) for t in times], dtype=torch.float64)
        if not bool(((mids > 0) & (mids < t_max)).all()) or not bool((mids[1:] < mids[:-1]).all()):
            raise UserError(f"--times must be strictly decreasing in (0, t_max = {t_max:.4f}), got "
                            f"{', '.join(f'{t:g}' for t in times)}")
    else:
        mids = torch.linspace(MID_TIME, MID_TIME / max(steps - 1, 1), steps - 1, dtype=torch.float64)
    return torch.cat([torch.tensor([t_max], dtype=torch.float64), mids])


def plan_scm(model, steps: int | None, times: Sequence[float] | None = None) -> SamplerPlan:
    """K-step consistency sampling of a TrigFlow consistency model (sCT, sCD); K defaults to the model's."""
    p = model.process
    if p.name != "trigflow":
        raise UserError(f"the scm sampler samples TrigFlow consistency models (sCT, sCD); this model's process is '{p.name}'")
    if model.denoiser.precond == "diffusion":
        raise UserError("the scm sampler needs a consistency model; this TrigFlow model is a diffusion model (use heun)")
    default_name, default_steps = default_sampler(model.meta)
    k = steps if steps is not None else (len(times) + 1 if times else (default_steps if default_name == "scm" else 1))
    if k < 1 or (times and k != len(times) + 1):
        raise UserError(f"--steps must be at least 1{' and match --times' if times else ''}, got {k}")
    return SamplerPlan("scm", scm_times(p.t_max, k, times), {}, clip=True, process=p, sample_fn=sample_consistency)


SCM = SamplerSpec(plan_scm, ("times",), ("trigflow",), ("consistency",),
                  "continuous-time consistency sampling in TrigFlow time (Lu & Song 2025)", lambda n: n)
