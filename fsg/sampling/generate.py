"""Generation: pick the sampler and schedule for a model, and stream samples batch by batch.

`iter_samples` is what `fsg sample`, `fsg eval-fid --model` and the benchmarks use. A sample's pixels
depend only on (seed, index): each index owns its noise stream, and rank r of `world` takes indices
r, r + world, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from fsg.core.processes import karras_index_to_sigma, karras_sigmas
from fsg.errors import UserError
from fsg.nets.load import LoadedModel, load_model
from fsg.sampling.noise import SampleNoise
from fsg.sampling.samplers import CountingDenoiser, sample_consistency, sample_euler, sample_heun

SAMPLERS = {"heun": sample_heun, "euler": sample_euler, "consistency": sample_consistency}
EXTRA_SAMPLERS: dict = {}     # name -> SamplerPlan factory, registered by other sampling modules (bridges, DDM)
SAMPLER_KNOBS: dict[str, tuple[str, tuple[str, ...]]] = {}   # knob -> (its fsg sample option, the samplers it
                                                             # applies to); given (not None) to another: a UserError


@dataclass
class SamplerPlan:
    """A sampler with its time schedule and knobs, ready to run on batches."""

    name: str
    times: torch.Tensor                          # descending, float64
    knobs: dict = field(default_factory=dict)
    clip: bool = False
    keeps_known = False     # whether run() takes an inpainting mask (bridge samplers)

    def initial(self, noise, shape, cond=None) -> torch.Tensor:
        """The starting point x_T (float64): N(0, T^2 I) for the EDM family; bridges start from cond."""
        return noise.randn(shape, torch.float64) * float(self.times[0])

    def run(self, denoise, x, noise):
        return SAMPLERS[self.name](denoise, x, self.times, noise, **self.knobs)


def default_sampler(meta: dict) -> tuple[str, int]:
    s = meta.get("sample", {})
    return s.get("sampler") or "heun", s.get("steps") or 18


def consistency_times(model: LoadedModel, steps: int | None, timesteps: Sequence[int] | None,
                      sigmas: Sequence[float] | None) -> torch.Tensor:
    """Times of multistep consistency sampling: explicit sigmas, indices into the N-point training grid
    (the reference's --ts; index 0 = sigma_max), or K evenly spaced indices of that grid."""
    p = model.process
    if sigmas:
        t = torch.tensor(list(sigmas), dtype=torch.float64)
    else:
        N = int(model.meta.get("train_grid") or 40)
        if timesteps:
            idx = list(timesteps)
            if any(i < 0 or i >= N for i in idx):
                raise UserError(f"--timesteps: indices must lie in [0, {N - 1}] (the model's {N}-point training grid)")
        else:
            k = steps or 1
            idx = [round(i * (N - 1) / k) for i in range(k)]
        t = karras_index_to_sigma(torch.tensor(idx), N, p.sigma_min, p.sigma_max, p.rho)
    if len(t) > 1 and not bool((t[1:] < t[:-1]).all()):
        raise UserError("consistency sampling times must be strictly decreasing")
    return t


def plan_sampler(model: LoadedModel, sampler: str | None = None, steps: int | None = None,
                 timesteps: Sequence[int] | None = None, sigmas: Sequence[float] | None = None,
                 **knobs) -> SamplerPlan:
    """Resolve a sampler name + steps into a SamplerPlan for this model (defaults from its metadata)."""
    default_name, default_steps = default_sampler(model.meta)
    name = sampler or default_name
    for knob, (option, names) in SAMPLER_KNOBS.items():
        if knobs.get(knob) is not None and name not in names:
            raise UserError(f"{option} applies to the {' and '.join(names)} sampler{'s' if len(names) > 1 else ''}, "
                            f"not to '{name}'")
    if name in EXTRA_SAMPLERS:
        return EXTRA_SAMPLERS[name](model, steps, **knobs)
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler '{name}' (available: {', '.join([*SAMPLERS, *EXTRA_SAMPLERS])})")
    p = model.process
    if not hasattr(p, "sigma_max"):
        raise UserError(f"sampler '{name}' integrates the EDM-family ODE; this {p.name} model samples with "
                        f"'{default_name}' (the default) or {', '.join(EXTRA_SAMPLERS)}")
    if name == "consistency":
        if model.denoiser.precond == "diffusion":
            raise UserError("the consistency sampler needs a consistency model; this is a diffusion model (use heun or euler)")
        times = consistency_times(model, steps if steps is not None else (default_steps if name == default_name else 1), timesteps, sigmas)
        extra = {k: v for k, v in knobs.items() if k == "edge_skip" and v}
        return SamplerPlan(name, times, {"t_min": p.sigma_min, **extra}, clip=True)
    if timesteps or sigmas:
        raise UserError("--timesteps/--sigmas apply to the consistency sampler only")
    n = steps if steps is not None else (default_steps if name == default_name else 18)
    if n < 1:
        raise UserError("--steps must be at least 1")
    churn = {k: v for k, v in knobs.items() if k in ("s_churn", "s_tmin", "s_tmax", "s_noise") and v is not None}
    return SamplerPlan(name, karras_sigmas(n, p.sigma_min, p.sigma_max, p.rho), churn)


class SampleStream:
    """Iterator over (indices, samples, labels) batches; `.nfe` is the NFE per sample after a batch."""

    def __init__(self, model: LoadedModel, plan: SamplerPlan, n: int, seed: int, batch_size: int,
                 device, rank: int = 0, world: int = 1, labels: int | None = None, guidance: float = 1.0,
                 conds=None, masks=None):
        self.model, self.plan, self.seed, self.device = model, plan, seed, torch.device(device)
        self.indices = list(range(rank, n, world))
        self.batch_size, self.labels, self.guidance, self.conds = batch_size, labels, guidance, conds
        self.masks = masks      # indices -> inpainting masks (1 on the hole), for bridge plans
        self.nfe: int | None = None

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    @torch.no_grad()
    def sample_batch(self, idx: Sequence[int]):
        noise = SampleNoise(self.seed, idx, self.device)
        shape = (len(idx), *self.model.shape)
        num_classes = self.model.meta.get("num_classes", 0)
        labels = None
        if num_classes:
            labels = torch.full((len(idx),), self.labels, device=self.device) if self.labels is not None else noise.randint(num_classes)
        cond = self.conds(idx).to(self.device) if self.conds is not None else None
        clip = self.plan.clip and len(shape) == 4          # clamp x0 estimates of images only
        denoise = CountingDenoiser(self.model.denoiser, cond=cond, labels=labels, clip=clip, guidance=self.guidance)
        x = self.plan.initial(noise, shape, cond)
        if self.masks is not None:      # inpainting: the known pixels of cond are kept
            x = self.plan.run(denoise, x, noise, mask=self.masks(idx).to(self.device)).float()
        else:
            x = self.plan.run(denoise, x, noise).float()
        if x.ndim == 4:  # images live in [-1, 1]; 2-D toy points are unbounded
            x = x.clamp(-1, 1)
        self.nfe = denoise.nfe
        return torch.as_tensor(idx), x.cpu(), None if labels is None else labels.cpu(), None if cond is None else cond.cpu()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        for start in range(0, len(self.indices), self.batch_size):
            idx, x, labels, _ = self.sample_batch(self.indices[start:start + self.batch_size])
            yield idx, x, labels


def iter_samples(model: str | Path | LoadedModel | None, n: int, *, steps: int | None = None, sampler: str | None = None,
                 seed: int = 0, batch_size: int = 256, device="cpu", rank: int = 0, world: int = 1, **knobs) -> SampleStream:
    """Stream n samples of a model (path, LoadedModel, or None for the bundled one). `conds` and `masks` map
    sample indices to conditions and inpainting masks (bridges); `guidance` is classifier-free guidance."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device)
    plan_knobs = {k: v for k, v in knobs.items() if k not in ("labels", "guidance", "conds", "masks")}
    plan = plan_sampler(loaded, sampler, steps, **plan_knobs)
    masks = knobs.get("masks")
    if masks is not None and not plan.keeps_known:
        raise UserError(f"--mask applies to the bridge samplers, not to '{plan.name}'")
    return SampleStream(loaded, plan, n, seed, batch_size, device, rank, world, labels=knobs.get("labels"),
                        guidance=knobs.get("guidance", 1.0), conds=knobs.get("conds"), masks=masks)


# Samplers that live in their own modules register themselves in EXTRA_SAMPLERS on import.
for _module in ("fsg.sampling.bridges", "fsg.sampling.ddm"):
    try:
        __import__(_module)
    except ModuleNotFoundError as _e:
        if _e.name != _module:
            raise
