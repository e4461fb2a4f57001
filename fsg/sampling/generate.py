"""Generation: pick the sampler and schedule for a model, and stream samples batch by batch.

`iter_samples` is what `fsg sample`, `fsg eval-fid --model`, `fsg.load(...).sample` and the benchmarks use. A
sample's pixels depend only on (seed, index): each index owns its noise stream (EDM's `--seeds` are these indices),
and rank r of `world` takes the r-th, (r + world)-th, ... index of the list.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch

from fsg.errors import UserError
from fsg.models.load import LoadedModel
from fsg.sampling import SAMPLERS
from fsg.sampling.noise import SampleNoise
from fsg.sampling.plan import KNOB_OPTIONS, SamplerPlan, default_sampler
from fsg.sampling.samplers import CountingDenoiser


def plan_sampler(model: LoadedModel, sampler: str | None = None, steps: int | None = None, **knobs) -> SamplerPlan:
    """Resolve a sampler name + steps into a SamplerPlan for this model (defaults from its metadata). A knob given
    (not None) to a sampler that does not take it is refused, naming its option."""
    name = sampler or default_sampler(model.meta)[0]
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler '{name}' (available: {', '.join(SAMPLERS)})")
    spec = SAMPLERS[name]
    for knob, value in knobs.items():
        if knob not in KNOB_OPTIONS:
            raise TypeError(f"unknown sampler knob {knob!r}")
        if value is not None and knob not in spec.knobs:
            takers = [n for n, sp in SAMPLERS.items() if knob in sp.knobs]
            names = takers[0] if len(takers) == 1 else f"{', '.join(takers[:-1])} and {takers[-1]}"
            raise UserError(f"{KNOB_OPTIONS[knob]} applies to the {names} sampler"
                            f"{'s' if len(takers) > 1 else ''}, not to '{name}'")
    return spec.plan(model, steps, **{k: v for k, v in knobs.items() if k in spec.knobs})


def check_labels(model: LoadedModel, labels) -> None:
    """A class given to an unconditional model, or a class outside [0, num_classes), is a UserError (a class per
    index, a callable, is checked batch by batch)."""
    num_classes = int(model.meta.get("num_classes", 0))
    if labels is None or callable(labels):
        return
    if not num_classes:
        raise UserError(f"--class-label {labels}: {model.path} is unconditional (it takes no class label)")
    if not 0 <= int(labels) < num_classes:
        raise UserError(f"--class-label {labels}: {model.path} has classes 0 to {num_classes - 1}")


class SampleStream:
    """Iterator over (indices, samples, labels) batches; `.nfe` is the NFE per sample after a batch. The indices are
    `seeds` (default 0, ..., n - 1), this rank's share: every `world`-th from the `rank`-th."""

    def __init__(self, model: LoadedModel, plan: SamplerPlan, n: int, seed: int, batch_size: int,
                 device, rank: int = 0, world: int = 1, labels: int | None = None, guidance: float = 1.0,
                 conds=None, masks=None, seeds: Sequence[int] | None = None):
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {batch_size}")
        check_labels(model, labels)
        self.model, self.plan, self.seed, self.device = model, plan, seed, torch.device(device)
        self.indices = list(range(n) if seeds is None else seeds)[rank::world]
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
            if callable(self.labels):           # a class per sample index
                labels = torch.as_tensor(self.labels(idx)).long().to(self.device)
                if labels.shape != (len(idx),) or not bool(((labels >= 0) & (labels < num_classes)).all()):
                    raise UserError(f"labels: one class in [0, {num_classes}) per sample expected")
            elif self.labels is not None:
                labels = torch.full((len(idx),), self.labels, device=self.device)
            else:
                labels = noise.randint(num_classes)
        cond = self.conds(idx).to(self.device) if self.conds is not None else None
        clip = self.plan.clip and len(shape) == 4          # clamp x0 estimates of images only
        denoise = CountingDenoiser(self.model.denoiser, cond=cond, labels=labels, clip=clip, guidance=self.guidance)
        x = self.plan.initial(noise, shape, cond)
        if self.masks is not None:      # inpainting: the known pixels of cond are kept
            x = self.plan.run(denoise, x, noise, mask=self.masks(idx).to(self.device)).float()
        else:
            x = self.plan.run(denoise, x, noise).float()
        if x.ndim == 4 and "vae" not in self.model.meta:  # images live in [-1, 1]; 2-D points and VAE latents are unbounded
            x = x.clamp(-1, 1)
        self.nfe = denoise.nfe
        return torch.as_tensor(idx), x.cpu(), None if labels is None else labels.cpu(), None if cond is None else cond.cpu()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        for start in range(0, len(self.indices), self.batch_size):
            idx, x, labels, _ = self.sample_batch(self.indices[start:start + self.batch_size])
            yield idx, x, labels


def iter_samples(model: LoadedModel, n: int, *, steps: int | None = None, sampler: str | None = None,
                 seed: int = 0, batch_size: int = 64, device="cpu", rank: int = 0, world: int = 1,
                 seeds: Sequence[int] | None = None, **knobs) -> SampleStream:
    """Stream n samples of a loaded model: indices 0..n-1, or the indices `seeds` (EDM's --seeds; n is then
    len(seeds)). `labels` is a class for every sample or a callable indices -> classes; `conds` and `masks` map
    sample indices to conditions and inpainting masks (bridges); `guidance` is classifier-free guidance; other
    keywords are sampler knobs."""
    loaded = model
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    plan_knobs = {k: v for k, v in knobs.items() if k not in ("labels", "guidance", "conds", "masks")}
    for knob, value in plan_knobs.items():      # explicit times (--sigmas, --timesteps, --times): finite numbers
        if isinstance(value, (list, tuple)) and not all(math.isfinite(float(v)) for v in value):
            raise UserError(f"{KNOB_OPTIONS.get(knob, knob)}: expected finite numbers, got {list(value)}")
    plan = plan_sampler(loaded, sampler, steps, **plan_knobs)
    masks = knobs.get("masks")
    if masks is not None and not plan.keeps_known:
        raise UserError(f"--mask applies to the bridge samplers, not to '{plan.name}'")
    return SampleStream(loaded, plan, n, seed, batch_size, device, rank, world, labels=knobs.get("labels"),
                        guidance=knobs.get("guidance", 1.0), conds=knobs.get("conds"), masks=masks, seeds=seeds)
