"""Interpolation: decode the spherical path between two latents with a consistency model or a PaGoDA generator
(Sec. 6 of Song et al. 2023), or interpolate a bridge's noises at a fixed condition (Fig. 5 of He et al. 2024)."""

from __future__ import annotations

from typing import Sequence

import torch

from fsg.data.conditions import default_mask
from fsg.errors import UserError
from fsg.models.load import LoadedModel
from fsg.sampling.generate import plan_sampler
from fsg.sampling.noise import FixedNoise, SampleNoise, SlerpNoise, slerp
from fsg.sampling.pagoda import latent_shape
from fsg.sampling.samplers import CountingDenoiser


def _path_labels(model: LoadedModel, ends: list[SampleNoise], n_points: int, class_label: int | None, device):
    """Class labels of the path: `class_label`, else the class sample 0 of the first seed draws (as `fsg sample`:
    a stream draws its class first); None for an unconditional model."""
    num_classes = model.meta.get("num_classes", 0)
    if not num_classes:
        return None
    drawn = [int(e.randint(num_classes)[0]) for e in ends][0]
    return torch.full((n_points,), drawn if class_label is None else class_label, device=device)


@torch.no_grad()
def interpolate(model: LoadedModel, n_points: int, *, seeds: tuple[int, int] = (0, 1),
                latents: tuple[torch.Tensor, torch.Tensor] | None = None, steps: int | None = None,
                timesteps: Sequence[int] | None = None, class_label: int | None = None,
                device="cpu") -> tuple[torch.Tensor, int]:
    """`n_points` samples along the slerp path between two N(0, I) latents, left to right, and the NFE per point.

    Endpoints are seeds (the latents of sample 0 of `fsg sample --seed S`) or given latents (of the sample's shape,
    or for PaGoDA of its teacher's). The re-noising of multistep decoding uses the seeds' streams, so with seeds the
    endpoints equal their plain samples.
    """
    if n_points < 2:
        raise UserError(f"interpolation needs at least 2 points (the two endpoints), got {n_points}")
    pagoda = model.meta.get("method") == "pagoda"
    if model.denoiser.precond == "diffusion" and not pagoda:
        raise UserError(f"interpolate needs a consistency model or a PaGoDA generator; {model.path} is a diffusion model")
    if pagoda:
        if steps not in (None, 1) or timesteps:
            raise UserError("a PaGoDA generator decodes in one call: --steps/--timesteps do not apply")
        plan = plan_sampler(model, "pagoda", 1)
    else:
        plan = plan_sampler(model, "consistency", steps if steps is not None or timesteps else 1, timesteps=timesteps)
    shape = model.shape
    ends = [SampleNoise(s, [0], device) for s in seeds]
    labels = _path_labels(model, ends, n_points, class_label, device)
    alpha = torch.linspace(0, 1, n_points, dtype=torch.float64)
    noise = SlerpNoise(*ends, alpha)
    start_noise = noise if latents is None else FixedNoise(slerp(*latents, alpha).to(device))
    denoise = CountingDenoiser(model.denoiser, labels=labels, clip=len(shape) == 3)
    x = plan.run(denoise, plan.initial(start_noise, (n_points, *shape)).to(device), noise).float().cpu()
    return (x.clamp(-1, 1) if x.ndim == 4 else x), denoise.nfe


def latent_shape_of(model: LoadedModel) -> tuple[int, ...]:
    """The shape of the model's N(0, I) latents: the sample's, or a PaGoDA generator's teacher's."""
    return latent_shape(model.meta) if model.meta.get("method") == "pagoda" else model.shape


@torch.no_grad()
def interpolate_bridge(model: LoadedModel, cond: torch.Tensor, n_points: int, *, seeds: tuple[int, int] = (0, 1),
                       sampler: str | None = None, steps: int | None = None, class_label: int | None = None,
                       device="cpu", mask: torch.Tensor | None = None, **knobs) -> tuple[torch.Tensor, int]:
    """Semantic interpolation in data space (Fig. 5 of He et al. 2024; DBIM's interpolation of booting
    noises): fix the condition y (one item, (C, H, W) or (D,)), take the noise draws of sample 0 under two
    seeds (the booting noise and every later draw), slerp them draw by draw and rerun the chain. `mask`
    ((1|C, H, W), 1 on the hole; default: the model's centre hole for `data.degrade: mask-center`) keeps y's
    known pixels.

    Returns the (n_points, ...) path and its NFE per point; the ends equal sample 0 of `fsg sample --seed S`
    with this condition, and the path is smooth when the chain is deterministic given its noises (cdbm, dbim).
    """
    if n_points < 2:
        raise UserError("interpolation needs at least 2 points (the two endpoints)")
    plan = plan_sampler(model, sampler, steps, **knobs)
    if not plan.keeps_known:
        raise UserError(f"interpolation in data space needs a bridge sampler; '{plan.name}' is not one")
    ends = [SampleNoise(s, [0], device) for s in seeds]
    labels = _path_labels(model, ends, n_points, class_label, device)
    alpha = torch.linspace(0, 1, n_points, dtype=torch.float64)
    y = cond.to(device).float()[None].expand(n_points, *cond.shape)              # (P, *cond.shape)
    denoise = CountingDenoiser(model.denoiser, cond=y, labels=labels, clip=plan.clip and y.ndim == 4)
    noise = SlerpNoise(*ends, alpha)
    if mask is None:
        mask = default_mask(model.meta, tuple(cond.shape))
    masks = None if mask is None else mask.to(device)[None].expand(n_points, *mask.shape)
    x = plan.run(denoise, plan.initial(noise, tuple(y.shape), y), noise, mask=masks).float()
    return (x.clamp(-1, 1) if x.ndim == 4 else x), denoise.nfe
