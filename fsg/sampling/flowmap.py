"""Flow-map sampling (MeanFlow, Geng et al. 2025, Eq. 12): with a two-time network u(z, r, t), each step jumps
z_r = z_t - (t - r) u(z_t, r, t) from t to r in one call; 1 step is z_0 = z_1 - u(z_1, 0, 1). K steps take
1 = t_0 > t_1 > ... > t_K = 0 evenly spaced (2 steps: 1, 0.5, 0, the default of MeanFlow's reimplementations), or
the given intermediate times. Unlike a consistency model, more steps follow the same flow more closely."""

from __future__ import annotations

from typing import Sequence

import torch

from fsg.errors import UserError
from fsg.sampling.plan import SamplerPlan, SamplerSpec, default_sampler


def sample_flowmap(denoise, x, times, noise, process):
    """x <- denoise(x, t_i, r = t_{i+1}) over the schedule (the denoiser returns the jump's endpoint). NFE = len(times) - 1."""
    for t, r in zip(times[:-1].tolist(), times[1:].tolist()):
        x = denoise(x, t, r=r)
    return x


def flowmap_times(steps: int, times: Sequence[float] | None = None) -> torch.Tensor:
    """[1, *intermediate, 0]: `times` strictly decreasing in (0, 1), else K - 1 evenly spaced ones."""
    if times:
        mids = torch.tensor([float(t) for t in times], dtype=torch.float64)
        if not bool(((mids > 0) & (mids < 1)).all()) or not bool((mids[1:] < mids[:-1]).all()):
            raise UserError(f"--times must be strictly decreasing in (0, 1), got {', '.join(f'{t:g}' for t in times)}")
        return torch.cat([mids.new_tensor([1.0]), mids, mids.new_tensor([0.0])])
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def plan_flowmap(model, steps: int | None, times: Sequence[float] | None = None) -> SamplerPlan:
    """K jumps of a flow map (MeanFlow); K defaults to the model's."""
    if model.process.name != "flow" or not getattr(model.denoiser.net, "two_times", False):
        raise UserError("the flowmap sampler needs a flow map: a two-time network on the flow process (MeanFlow)")
    default_name, default_steps = default_sampler(model.meta)
    k = steps if steps is not None else (len(times) + 1 if times else (default_steps if default_name == "flowmap" else 1))
    if k < 1 or (times and k != len(times) + 1):
        raise UserError(f"--steps must be at least 1{' and match --times' if times else ''}, got {k}")
    return SamplerPlan("flowmap", flowmap_times(k, times), {}, clip=True, process=model.process, sample_fn=sample_flowmap)


FLOWMAP = SamplerSpec(plan_flowmap, ("times",), ("flow",), ("consistency",),
                      "flow-map jumps z_r = z_t - (t - r) u(z_t, r, t) (MeanFlow, Geng et al. 2025)", lambda n: n,
                      needs="two_times")
