"""PaGoDA's one-step sampler (Kim et al. 2024, Sec. 3): z ~ N(0, sigma_max^2 I) at the latent shape (the teacher's
data shape), then the decoder G(z) = D_G(up(z), sigma_max) in one call (`fsg.core.inversion.decode`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fsg.errors import UserError
from fsg.sampling.plan import SamplerPlan, SamplerSpec


@dataclass
class OneStepPlan(SamplerPlan):
    """PaGoDA's one-step sampler: x_T = sigma_max z at the latent shape, nearest-upsampled, then one call."""

    latent_shape: tuple[int, ...] = ()

    def initial(self, noise, shape, cond=None) -> torch.Tensor:
        z = noise.randn((shape[0], *self.latent_shape), torch.float64) * float(self.times[0])  # (N, C, r, r)
        factor = shape[-1] // self.latent_shape[-1]
        return F.interpolate(z, scale_factor=float(factor), mode="nearest") if factor > 1 else z

    def run(self, denoise, x, noise):
        return denoise(x, float(self.times[0]))


def latent_shape(meta: dict) -> tuple[int, ...]:
    """The generator's latent shape (the teacher's data shape): the output shape over the recorded
    `latent_factor` (output resolution / teacher resolution)."""
    if "latent_factor" not in meta:
        raise UserError("the pagoda sampler needs a PaGoDA generator (its metadata has no latent_factor)")
    c, *spatial = meta["shape"]
    return (c, *(s // int(meta["latent_factor"]) for s in spatial))


def plan_pagoda(model, steps: int | None) -> OneStepPlan:
    """The SamplerPlan of a PaGoDA generator: one step, NFE = 1."""
    if steps not in (None, 1):
        raise UserError("a PaGoDA generator samples in one step: use --steps 1")
    sigma_max = model.process.sigma_max
    return OneStepPlan("pagoda", torch.tensor([sigma_max], dtype=torch.float64), latent_shape=latent_shape(model.meta))


PAGODA = SamplerSpec(plan_pagoda, (), ("edm",), ("diffusion",), "PaGoDA's one-step decoder (Kim et al. 2024)", lambda n: 1, needs="latent_factor")
