"""DDM's few-step sampler: ancestral steps through the closed-form posterior q(x_u | x_t, x0_hat) (Huang et al. 2023).

Registers two samplers in `EXTRA_SAMPLERS`, the default of every model trained with method `ddm`:
- `ddm`:      N uniform steps t_i = 1 - i/N from x_1 ~ N(0, I); NFE = N (the reference's `sample_fn`).
- `ddm-heun`: the same steps with a Heun correction of the reverse drift d = H'_t + v'(t)/sqrt(v(t)) eps_hat
              (the reference's `sample_fn_2order`); the last step, to t = 0 where d is singular, stays first
              order, so NFE = 2N - 1.
"""

from __future__ import annotations

from functools import partial

import torch

from fsg.core.ddm import DecoupledProcess
from fsg.errors import UserError
from fsg.sampling.generate import EXTRA_SAMPLERS, SamplerPlan


def predict(denoise, process, x: torch.Tensor, t: float, clip: bool) -> dict[str, torch.Tensor]:
    """The heads at (x, t) as the sampler uses them (one NFE): x0_hat clamped and the attenuation refitted with `clip`."""
    return process.correct(denoise.heads(x, t), x, t, clip)


def sample_ddm(denoise, x, times, noise, process, clip: bool = False, second_order: bool = False):
    """x_u = mean + std z with (mean, std) of q(x_u | x_t, x0_hat) (`posterior` in fsg.core.ddm), t = times[i],
    u = times[i + 1]. `second_order` replaces the mean by x_t - (t - u) (d(x_t, t) + d(x', u)) / 2, where
    x' = mean + std z is the first-order sample with the same z. NFE = N, or 2N - 1 with `second_order`."""
    for i in range(len(times) - 1):
        t, u = float(times[i]), float(times[i + 1])
        h = predict(denoise, process, x, t, clip)
        mean, std = process.posterior(x, h, t, u)
        if u == 0:  # the last step lands on x0_hat's estimate: no noise, no correction
            x = mean
            continue
        z = noise.randn(x.shape, x.dtype)
        if second_order:
            h_next = predict(denoise, process, mean + std * z, u, clip)
            mean = x - (t - u) * 0.5 * (process.drift(h, t) + process.drift(h_next, u))  # Apply 2nd order correction.
        x = mean + std * z
    return x


class DDMPlan(SamplerPlan):
    """Starts from x_1 ~ N(0, I) (the base `initial`: times[0] = 1) and runs `sample_ddm`; x0_hat is clamped for
    images only (`clip` and a 4-D batch), as the reference does for pixels."""

    def run(self, denoise, x, noise):
        return sample_ddm(denoise, x, self.times, noise, clip=self.clip and x.ndim == 4, **self.knobs)


def uniform_times(steps: int) -> torch.Tensor:
    """t_i = 1 - i / N, i = 0..N (float64, descending to 0)."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def plan_ddm(model, steps: int | None, second_order: bool = False, **knobs) -> DDMPlan:
    """The SamplerPlan of a DDM model (`steps` defaults to the model's, 10 for DDM). EDM's S_churn knobs do not apply."""
    process = model.process
    if not isinstance(process, DecoupledProcess):
        raise UserError(f"the DDM samplers need a model trained with process ddm|ddm-linear|ddm-const2; "
                        f"this one uses '{process.name}'")
    if knobs.get("s_churn"):
        raise UserError("--s-churn applies to the heun/euler samplers, not to DDM's")
    n = steps if steps is not None else model.meta.get("sample", {}).get("steps") or process.default_steps
    if n < 1:
        raise UserError("--steps must be at least 1")
    name = "ddm-heun" if second_order else "ddm"
    return DDMPlan(name, uniform_times(n), {"process": process, "second_order": second_order}, clip=True)


EXTRA_SAMPLERS["ddm"] = plan_ddm
EXTRA_SAMPLERS["ddm-heun"] = partial(plan_ddm, second_order=True)
