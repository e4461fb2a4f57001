"""A sampler as the registry sees it (`SamplerSpec`) and as it runs (`SamplerPlan`: times, knobs, the loop).

Every sampler follows one contract: `sample_X(denoise, x, times, noise, **knobs) -> x` with `denoise(x, t)` returning
x0_hat for the batch, `times` the descending float64 schedule and `noise` a per-sample stream
(`fsg.sampling.noise.SampleNoise`). Samplers count nothing; the NFE is counted by `CountingDenoiser`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

# The sampler knobs and the options of `fsg sample` (and the API's keywords) that set them, for messages.
KNOB_OPTIONS = {
    "s_churn": "--s-churn", "s_tmin": "--s-tmin", "s_tmax": "--s-tmax", "s_noise": "--s-noise",
    "edge_skip": "--edge-skip", "timesteps": "--timesteps", "sigmas": "--sigmas", "eta": "--eta",
    "churn_step_ratio": "--churn-step-ratio", "w": "--guidance", "times": "--times", "split_last": "--split-last",
}


@dataclass
class SamplerPlan:
    """A sampler with its time schedule and knobs, ready to run on batches. `process` is the model's process:
    the prior is beta(T) y + sigma(T) z at T = times[0] (`initial`), and the ODE drift is the process's."""

    name: str
    times: torch.Tensor                          # descending, float64
    knobs: dict = field(default_factory=dict)
    clip: bool = False
    process: Any = None
    sample_fn: Callable | None = None            # sample_X(denoise, x, times, noise, **knobs)
    keeps_known = False                          # whether run() takes an inpainting mask (bridge samplers)

    def initial(self, noise, shape, cond=None) -> torch.Tensor:
        """x_T (float64) = sigma(T) z, the prior of an unconditional process at T = times[0]: T z for the EDM family,
        sigma_d sin(T) z for TrigFlow (a bridge plan starts from its condition instead)."""
        if hasattr(self.process, "marginal"):
            scale = float(self.process.marginal(torch.tensor(float(self.times[0]), dtype=torch.float64))[2])
        else:                           # DDM's linear process (no Gaussian marginal): x_1 ~ N(0, I)
            scale = float(self.times[0])
        return noise.randn(shape, torch.float64) * scale

    def run(self, denoise, x, noise):
        return self.sample_fn(denoise, x, self.times, noise, self.process, **self.knobs)


@dataclass(frozen=True)
class SamplerSpec:
    """A registry entry: `plan(model, steps, **knobs) -> SamplerPlan`, the knobs it takes (any other given knob is
    refused), what it samples (the process names and preconditionings; the first of each makes the test model of the
    sampler contract) and its exact NFE per sample for `steps` with default knobs, which the contract checks against
    the count."""

    plan: Callable[..., SamplerPlan]
    knobs: tuple[str, ...]
    processes: tuple[str, ...]
    preconds: tuple[str, ...]
    summary: str
    nfe: Callable[[int], int]
    needs: str = ""          # what the model needs besides the process: "conditions" (bridges), "two_times" (a flow
                             # map), "latent_factor" (a PaGoDA generator)


def default_sampler(meta: dict) -> tuple[str, int]:
    """The model's default sampler and steps (its metadata's `sample`), else Heun with 18 points."""
    s = meta.get("sample", {})
    return s.get("sampler") or "heun", s.get("steps") or 18
