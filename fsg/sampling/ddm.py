"""DDM's few-step sampler: ancestral steps through the closed-form posterior q(x_u | x_t, x0_hat) (Huang et al. 2023).

Two samplers, the default of every model trained with method `ddm`:
- `ddm`:      N uniform steps t_i = 1 - i/N from x_1 ~ N(0, I); NFE = N. This is DDM-Public's `sample_fn` with
              `denoise=False`. With `split_last` (`fsg sample --split-last`) the last step is split at t_eps:
              1/N -> t_eps -> 0, NFE = N + 1, which is the reference's default (`denoise=True`, what its evaluation
              uses); `ddm` and `ddm-linear` only (ADM-Public's const2 sampler has no split).
- `ddm-heun`: the same steps with a Heun correction of the reverse drift d = H'_t + v'(t)/sqrt(v(t)) eps_hat, as the
              reference's `sample_fn_2order`: the corrector is evaluated at the noiseless first-order point (the
              posterior mean) and the step's noise is added after the correction. The step to t = 0 (where d is
              singular) and, with `split_last`, the step to t_eps stay first order: NFE = 2N - 1, or 2N split.
              The reference's grid differs: `sampling_timesteps` = M takes M/2 Heun steps of 2/M and splits the
              last one, which is fsg's `ddm-heun --steps M/2 --split-last` (NFE M) for even M.
"""

from __future__ import annotations

from functools import partial

import torch

from fsg.core.ddm import DecoupledProcess
from fsg.errors import UserError
from fsg.sampling.plan import SamplerPlan, SamplerSpec


def predict(denoise, process, x: torch.Tensor, t: float, clip: bool) -> dict[str, torch.Tensor]:
    """The heads at (x, t) as the sampler uses them (one NFE): x0_hat clamped and the attenuation refitted with `clip`."""
    return process.correct(denoise.heads(x, t), x, t, clip)


def sample_ddm(denoise, x, times, noise, process, clip: bool = False, second_order: bool = False,
               first_order_tail: int = 1):
    """x_u = mean + std z with (mean, std) of q(x_u | x_t, x0_hat) (`posterior` in fsg.core.ddm), t = times[i],
    u = times[i + 1]. `second_order` replaces the mean by x_t - (t - u) (d(x_t, t) + d(x_mean, u)) / 2 with the
    corrector at the noiseless first-order point x_mean (DDM-Public's `sample_fn_2order`), then adds std z; the last
    `first_order_tail` steps stay first order. NFE = N, or 2N - tail with `second_order`."""
    n = len(times) - 1
    for i in range(n):
        t, u = float(times[i]), float(times[i + 1])
        h = predict(denoise, process, x, t, clip)
        mean, std = process.posterior(x, h, t, u)
        if u == 0:  # the last step lands on x0_hat's estimate: no noise, no correction
            x = mean
            continue
        z = noise.randn(x.shape, x.dtype)
        if second_order and i < n - first_order_tail:
            h_next = predict(denoise, process, mean, u, clip)
            mean = x - (t - u) * 0.5 * (process.drift(h, t) + process.drift(h_next, u))  # Apply 2nd order correction.
        x = mean + std * z
    return x


class DDMPlan(SamplerPlan):
    """Starts from x_1 ~ N(0, I) (the base `initial`: times[0] = 1) and runs `sample_ddm`; x0_hat is clamped for
    images only (`clip` and a 4-D batch), as the reference does for pixels."""

    def run(self, denoise, x, noise):
        return sample_ddm(denoise, x, self.times, noise, self.process, clip=self.clip and x.ndim == 4, **self.knobs)


def uniform_times(steps: int, split_at: float | None = None) -> torch.Tensor:
    """t_i = 1 - i / N, i = 0..N (float64, descending to 0); with `split_at` the last step 1/N -> 0 becomes
    1/N -> split_at -> 0 (DDM-Public's `denoise=True` grid, split_at = t_eps)."""
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return times if split_at is None else torch.cat([times[:-1], times.new_tensor([split_at, 0.0])])


def plan_ddm(model, steps: int | None, second_order: bool = False, split_last: bool | None = None) -> DDMPlan:
    """The SamplerPlan of a DDM model (`steps` defaults to the model's, 10 for DDM)."""
    process = model.process
    if not isinstance(process, DecoupledProcess):
        raise UserError(f"the DDM samplers need a model trained with process ddm|ddm-linear|ddm-const2; "
                        f"this one uses '{process.name}'")
    n = steps if steps is not None else model.meta.get("sample", {}).get("steps") or process.default_steps
    if n < 1:
        raise UserError("--steps must be at least 1")
    name = "ddm-heun" if second_order else "ddm"
    if split_last and process.name == "ddm-const2":
        raise UserError("--split-last follows DDM-Public's ddm and ddm-linear samplers; ADM-Public's ddm-const2 sampler "
                        "has no split")
    times = uniform_times(n, process.t_eps if split_last else None)
    return DDMPlan(name, times, {"second_order": second_order, "first_order_tail": 2 if split_last else 1},
                   clip=True, process=process)


DDM_PROCESSES = ("ddm", "ddm-linear", "ddm-const2")
DDM = SamplerSpec(plan_ddm, ("split_last",), DDM_PROCESSES, ("diffusion",),
                  "DDM's ancestral steps through the closed-form posterior (Huang et al. 2023)", lambda n: n)
DDM_HEUN = SamplerSpec(partial(plan_ddm, second_order=True), ("split_last",), DDM_PROCESSES, ("diffusion",),
                       "DDM's steps with a 2nd-order correction of the drift", lambda n: 2 * n - 1)
