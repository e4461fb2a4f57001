"""The public Python API: what `import fsg` gives a notebook.

>>> import fsg, torch
>>> model = fsg.load("cd_digits")            # a bundled model, a run folder, a .safetensors file or a public .pt/.pkl
>>> x = model.sample(16, steps=1, seed=0)    # (16, 1, 16, 16) float32 in [-1, 1], NCHW, on the CPU
>>> tuple(x.shape), model.nfe                # model.nfe: the exact NFE per sample of the last call
((16, 1, 16, 16), 1)
>>> bool(x.abs().max() <= 1)
True
>>> torch.allclose(model.sample(4, steps=1, seed=0), x[:4], atol=1e-5)     # a sample depends on (seed, index) only
True
>>> images = fsg.to_pil(x)                   # 8-bit PIL images, as `fsg sample --out DIR/` writes them
>>> images[0].size
(16, 16)
>>> x0 = model.denoise(x + 0.5 * torch.randn_like(x), 0.5)    # the denoiser D(x, sigma), k-diffusion's signature

Seeds. `seed=s` is `fsg sample --seed s`: sample i is drawn from the noise stream of (s, i), so the pixels do not
depend on the batch size, on n or on the number of processes. A `torch.Generator` may stand for the seed, as in
diffusers: its next draw (an integer in [0, 2^31 - 1)) is the run seed, so one generator gives new samples at every
call and an equally seeded generator the same ones again. `generator=torch.Generator().manual_seed(s)` does not give
the samples of `seed=s`: fsg never draws images from the user's generator itself, which would tie each sample to the
batch it is in. `model.seed` is the run seed of the last call (`fsg sample --seed model.seed` writes the same
pixels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from fsg.core.bridges import BridgeProcess
from fsg.data.conditions import condition_source
from fsg.errors import UserError
from fsg.models.load import LoadedModel, load_model
from fsg.progress import Progress
from fsg.sampling.editing import (
    TASKS,
    Colorize,
    Inpaint,
    SuperRes,
    check_edit_model,
    denoise_inputs,
    edit_batches,
    edit_times,
    sample_edit,
)
from fsg.sampling.generate import iter_samples
from fsg.sampling.interpolate import interpolate, interpolate_bridge, latent_shape_of

BATCH_SIZE = 64         # the CLI's --batch-size default (fsg.cli.common.BATCH_SIZE): never changes a result

__all__ = ["BATCH_SIZE", "Model", "load", "to_pil", "train"]


def run_seed(seed: int | None, generator: torch.Generator | None) -> int:
    """The run seed of a call: `seed`, else the next draw of `generator` (on its own device), else 0."""
    if generator is None:
        return 0 if seed is None else int(seed)
    if seed is not None:
        raise UserError("give seed= or generator=, not both")
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))


class Model:
    """A trained model: sample it, denoise with it, edit and interpolate with it (`fsg.load` makes one).

    Images are float tensors in [-1, 1], (N, C, H, W); 2-D toy models give points (N, 2). Results come back on the
    CPU as float32; `model.nfe` is the exact number of network evaluations per sample of the last call.
    """

    def __init__(self, loaded: LoadedModel, device: torch.device | str = "cpu"):
        self.loaded, self.device = loaded, torch.device(device)
        self.nfe: int | None = None          # NFE per sample of the last call
        self.seed: int | None = None         # run seed of the last sample() call

    # ------------------------------------------------------------------------------------------------ what it is
    @property
    def path(self) -> Path:
        return self.loaded.path

    @property
    def meta(self) -> dict[str, Any]:
        """The model file's metadata (process, network, method, default sampler and steps, ...)."""
        return self.loaded.meta

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample: (C, H, W), or (D,) for 2-D toy data."""
        return self.loaded.shape

    @property
    def num_classes(self) -> int:
        """Number of classes of a class-conditional model; 0 for an unconditional one."""
        return int(self.meta.get("num_classes", 0))

    @property
    def process(self):
        """The forward process (fsg.core.process.Process): its time domain is [t_min, t_max]."""
        return self.loaded.process

    @property
    def sigma_min(self) -> float:
        """The smallest time (noise level for EDM-family models): what k-diffusion's wrappers call sigma_min."""
        return float(self.process.t_min)

    @property
    def sigma_max(self) -> float:
        """The largest time (noise level for EDM-family models), where sampling starts."""
        return float(self.process.t_max)

    def __repr__(self) -> str:
        s = self.meta.get("sample", {})
        return (f"fsg.Model({self.path}: {self.meta.get('method')} on {self.process.name}, shape {self.shape}, "
                f"default sampler {s.get('sampler')} x {s.get('steps')})")

    def to(self, device: torch.device | str) -> Model:
        """Move the network to `device` (results still come back on the CPU)."""
        self.device = torch.device(device)
        self.loaded.denoiser.to(self.device)
        return self

    # ------------------------------------------------------------------------------------------------ generation
    def sample(self, n: int, *, steps: int | None = None, sampler: str | None = None, seed: int | None = None,
               generator: torch.Generator | None = None, labels: int | Sequence[int] | None = None,
               guidance: float = 1.0, cond=None, batch_size: int = BATCH_SIZE, progress: bool = False,
               **knobs) -> torch.Tensor:
        """n samples (indices 0..n-1 of the run seed), with the model's default sampler and steps unless given.

        steps, sampler: as `fsg sample --steps --sampler` (heun, euler, consistency, dbim, ...).
        seed | generator: the run seed, or a torch.Generator whose next draw is the run seed (see the module's
            docstring: not the samples of seed=s for a generator seeded s). Neither: seed 0.
        labels: one class for every sample or one per sample (class-conditional models; each sample draws its
            own when None). A class given to an unconditional model is an error.
        guidance: classifier-free guidance scale (1: off); for bridge models the hybrid sampler's weight w.
        cond: a bridge model's conditions: a folder, an .npz, "data:test" (default) or "data:train", or a tensor
            (M, C, H, W) (sample i takes item i mod M).
        progress: show progress with the ETA on stderr (a bar on a terminal, plain lines otherwise).
        knobs: the sampler's settings by their `fsg sample` names: sigmas=[80, 0.8], timesteps=[0, 22, 39],
            s_churn, eta, edge_skip, ...

        >>> import fsg
        >>> model = fsg.load("edm_toy")
        >>> model.sample(5, steps=10).shape, model.nfe       # Heun on 10 grid points: 2 * 10 - 1 evaluations
        (torch.Size([5, 2]), 19)
        """
        if n < 1:
            raise UserError(f"n must be at least 1, got {n}")
        per_sample = None
        if labels is not None and not isinstance(labels, (int, np.integer)):
            per_sample = torch.as_tensor(list(labels), dtype=torch.long)
            if len(per_sample) != n:
                raise UserError(f"labels: {len(per_sample)} labels for {n} samples")
            if not self.num_classes:
                raise UserError(f"labels: {self.path} is unconditional (it takes no class label)")
            labels = lambda idx: per_sample[list(idx)]
        if self.meta.get("cond_channels") or cond is not None:
            knobs["conds"] = self._conditions(cond)
        if isinstance(self.process, BridgeProcess):     # as `fsg sample --guidance`: the hybrid sampler's w
            knobs["w"], guidance = (None if guidance == 1.0 else guidance), 1.0
        self.seed = run_seed(seed, generator)
        with torch.no_grad():
            stream = iter_samples(self.loaded, n, steps=steps, sampler=sampler, seed=self.seed, batch_size=batch_size,
                                  device=self.device, labels=labels, guidance=guidance, **knobs)
            parts = []
            with Progress(n, "sample", unit="sample", enabled=progress) as bar:
                for _, x, _ in stream:
                    parts.append(x)
                    bar.advance(len(x), nfe=stream.nfe)
        self.nfe = stream.nfe
        return torch.cat(parts)

    def _conditions(self, cond):
        """Indices -> condition images of a bridge model (a tensor, a folder, an .npz or a split of its data)."""
        if not self.meta.get("cond_channels"):
            raise UserError("cond: this model takes no condition image")
        if torch.is_tensor(cond):
            items = cond.float()
            if tuple(items.shape[1:]) != (self.meta["cond_channels"], *self.shape[1:]):
                raise UserError(f"cond: conditions of shape {tuple(items.shape[1:])}; this model's are "
                                f"{(self.meta['cond_channels'], *self.shape[1:])}")
            return lambda idx: items[[int(i) % len(items) for i in idx]]
        return condition_source(self.meta, cond)

    def denoise(self, x: torch.Tensor, sigma, labels: int | torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """D(x, sigma): the model's estimate of the clean x from x at time sigma (a number or one per sample), with
        k-diffusion's signature: for EDM-family models the time is the noise level sigma; for a consistency model D is
        its consistency function f(x, t). Runs on the model's device; gradients flow when x requires them."""
        x = x.to(self.device)
        if isinstance(labels, (int, np.integer)):
            labels = torch.full((x.shape[0],), int(labels), device=self.device)
        elif labels is not None:
            labels = labels.to(self.device)
        with torch.set_grad_enabled(x.requires_grad and torch.is_grad_enabled()):
            out = self.loaded.denoiser(x.float(), torch.as_tensor(sigma, device=self.device),
                                       cond=None if cond is None else cond.to(self.device).float(), labels=labels)
        return out.to(x.dtype)

    __call__ = denoise

    # ------------------------------------------------------------------------------------------------ editing
    @torch.no_grad()
    def edit(self, task: str, images: torch.Tensor, *, mask: torch.Tensor | None = None, factor: int | None = None,
             sigma: float | None = None, add_noise: bool = False, t_start: float | None = None,
             steps: int | None = None, timesteps: Sequence[int] | None = None, seed: int = 0,
             class_label: int | None = None, batch_size: int = BATCH_SIZE, teacher: str | Path | None = None,
             inversion_steps: int | None = None) -> torch.Tensor:
        """`fsg edit TASK` on tensors: the results (N, C, H, W) in [-1, 1] for `images` (N, C, H, W) in [-1, 1].

        A consistency model edits zero-shot (Algorithm 4 of Song et al. 2023): "inpaint" regenerates where `mask`
        ((1|N, 1, H, W)) is 1 and keeps every other pixel; "colorize" keeps the luma (RGB models); "superres" keeps
        the means of `factor` x `factor` patches (default 4; inputs of resolution H / factor are upsampled first);
        "stroke" is SDEdit from `t_start` (default 1.2) in `steps` steps (default 2); "denoise" is one call at noise
        level `sigma` (with `add_noise`, N(0, sigma^2) noise is added first). A PaGoDA generator runs "superres"
        (inputs at its teacher's resolution, results `latent_factor` times larger) and "invert" (reconstructions
        of images at its resolution) through its teacher's PF-ODE inversion. Input i's noise depends only on
        (seed, i).

        >>> import fsg, torch
        >>> model = fsg.load("cd_digits")
        >>> x = model.sample(2, steps=1)
        >>> low = torch.nn.functional.avg_pool2d(x, 2)                 # (2, 1, 8, 8)
        >>> sr = model.edit("superres", low, factor=2, steps=1)
        >>> torch.allclose(torch.nn.functional.avg_pool2d(sr, 2), low, atol=1e-5)   # the patch means are kept
        True
        """
        tasks = ("superres", "invert") if self.meta.get("method") == "pagoda" else tuple(t for t in TASKS if t != "invert")
        if task not in tasks:
            raise UserError(f"unknown editing task '{task}' for this model (choose {', '.join(tasks)})")
        images = torch.as_tensor(images).float()
        if images.ndim != 4:
            raise UserError(f"images: expected (N, C, H, W), got shape {tuple(images.shape)}")
        if self.meta.get("method") == "pagoda":
            if steps is not None or timesteps:
                raise UserError("a PaGoDA generator decodes in one call: steps/timesteps do not apply")
            return self._pagoda_edit(task, images, factor, teacher, inversion_steps, class_label, batch_size)
        factor = 4 if factor is None else factor
        check_edit_model(self.loaded, task, factor)
        c, r = self.shape[0], self.shape[-1]
        if task == "superres" and tuple(images.shape[-2:]) == (r // factor, r // factor):
            images = images.repeat_interleave(factor, -2).repeat_interleave(factor, -1)   # constant patches
        if tuple(images.shape[1:]) != (c, r, r) and not (task == "colorize" and images.shape[1] == 1):
            raise UserError(f"images of shape {tuple(images.shape[1:])}; this model's are {tuple(self.shape)}")
        if task == "colorize" and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if task == "denoise":
            _, out, self.nfe = denoise_inputs(self.loaded, images, sigma, add_noise, seed, batch_size, self.device,
                                              class_label)
            return out
        if task == "inpaint":
            if mask is None:
                raise UserError("inpaint needs mask= ((1|N, 1, H, W), 1 where pixels are regenerated)")
            replace = Inpaint(torch.as_tensor(mask).float())
        else:
            replace = {"colorize": Colorize(), "superres": SuperRes(factor)}.get(task)
        times, t_end = edit_times(self.loaded, task, steps, timesteps, t_start)
        out, self.nfe = edit_batches(self.loaded, images,
                                     lambda d, y, z: sample_edit(d, y, times, z, self.process, replace, t_end),
                                     seed, batch_size, self.device, class_label)
        return out

    def _pagoda_edit(self, task, images, factor, teacher, inversion_steps, class_label, batch_size) -> torch.Tensor:
        """x_hat = G(Enc(pool(x))) (Kim et al. 2024, Sec. 3), as `fsg edit superres|invert` on a PaGoDA generator."""
        from fsg.app.edit import pagoda_teacher
        from fsg.core.inversion import decode, encode
        from fsg.sampling.pagoda import latent_shape

        k, low = int(self.meta["latent_factor"]), latent_shape(self.meta)[-1]
        if factor is not None and factor != k:
            raise UserError(f"factor {factor}: this generator super-resolves by its growth factor {k}")
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        enc = pagoda_teacher(self.loaded, None if teacher is None else Path(teacher), self.device)
        steps = int(inversion_steps or self.meta.get("inversion_steps") or 40)
        labels = None
        if self.num_classes:
            if class_label is None:
                raise UserError("this generator is class-conditional: pass class_label=")
            labels = torch.full((len(images),), class_label, device=self.device)
        outs = []
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(self.device)
            lab = None if labels is None else labels[i:i + batch_size]
            z = encode(enc.denoiser, x, low, steps, lab)                                 # (n, C, r, r)
            outs.append(decode(self.loaded.denoiser, z, k, self.process.sigma_max, lab).clamp(-1, 1).float().cpu())
        self.nfe = 1
        return torch.cat(outs)

    # ------------------------------------------------------------------------------------------------ interpolation
    @torch.no_grad()
    def interpolate(self, n: int = 8, *, seeds: tuple[int, int] = (0, 1),
                    latents: tuple[torch.Tensor, torch.Tensor] | None = None, steps: int | None = None,
                    timesteps: Sequence[int] | None = None, class_label: int | None = None, cond=None) -> torch.Tensor:
        """`fsg interpolate -n N`: n points, endpoints included, on the spherical path between the latents of two
        seeds (the latents of sample 0 of `sample(..., seed=s)`, so the ends are those samples) or two given N(0, I)
        `latents`, decoded by a consistency model (in `steps` steps, default 1) or a PaGoDA generator. For a bridge
        model: the path between the two seeds' samples at the first condition of `cond` (default "data:test").

        >>> import fsg, torch
        >>> model = fsg.load("cd_digits")
        >>> path = model.interpolate(5, seeds=(3, 7))
        >>> path.shape, torch.allclose(path[0], model.sample(1, steps=1, seed=3)[0], atol=1e-5)
        (torch.Size([5, 1, 16, 16]), True)
        """
        if self.meta.get("cond_channels"):
            if latents is not None or timesteps:
                raise UserError("latents/timesteps apply to consistency models and PaGoDA generators, not to bridges")
            y = self._conditions(cond if cond is not None else "data:test")([0])[0]
            x, self.nfe = interpolate_bridge(self.loaded, y, n, seeds=seeds, steps=steps, class_label=class_label,
                                             device=self.device)
            return x.cpu()
        if cond is not None:
            raise UserError("cond: this model takes no condition image")
        if latents is not None:
            shape = latent_shape_of(self.loaded)
            latents = tuple(torch.as_tensor(z).reshape(shape).to(torch.float64) for z in latents)
        x, self.nfe = interpolate(self.loaded, n, seeds=seeds, latents=latents, steps=steps, timesteps=timesteps,
                                  class_label=class_label, device=self.device)
        return x


def load(source: str | Path | None = None, device: str | torch.device = "cpu") -> Model:
    """A model by bundled name (`fsg.list_models()`: cd_digits, edm_digits, edm_toy), run folder, checkpoint folder,
    `.safetensors` file or public `.pt`/`.pkl` checkpoint (openai CM, DDBM, EDM, ECT); None is the bundled 1-step
    digits model. `device`: cpu, cuda, cuda:N or auto.

    >>> import fsg
    >>> fsg.load("edm_toy").shape
    (2,)
    """
    if isinstance(device, str) and device == "auto":
        from fsg.train.dist import resolve_device

        device = resolve_device(device)
    return Model(load_model(source, device), torch.device(device))


def _set_items(overrides: Sequence[str] | Mapping[str, Any]) -> list[str]:
    """`--set` items from a list of 'key=value' strings or a mapping {key: value} (values written as YAML flow)."""
    if isinstance(overrides, Mapping):
        return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items()]
    return list(overrides)


def train(recipe: str | Path, *, command: str | None = None, run_dir: str | Path | None = None,
          teacher: str | Path | None = None, init: str | Path | None = None,
          overrides: Sequence[str] | Mapping[str, Any] = (), max_steps: int | None = None, seed: int | None = None,
          device: str = "auto", resume: str | None = None, progress: bool = True) -> Model:
    """Train a recipe (a file or a shipped name such as "tiny/edm_toy"; `fsg.list_recipes()`) into `run_dir` (default
    runs/<recipe name>) and return the trained model, as the training commands do. The command (train-diffusion,
    distill, train-consistency, ...) follows from the recipe's method unless given; `overrides` are `--set` items,
    ["train.lr=2e-4"] or {"train.lr": 2e-4}; `teacher`/`init` as the commands' options. A stop by a signal or a
    non-finite loss raises fsg.train.engine.TrainingStopped after its checkpoint is written.

    >>> import fsg, tempfile
    >>> toy = fsg.train("tiny/edm_toy", run_dir=tempfile.mkdtemp() + "/toy", max_steps=2, progress=False)
    >>> toy.sample(3, steps=2).shape
    torch.Size([3, 2])
    """
    from fsg.app.train import train as run_training
    from fsg.methods import METHODS
    from fsg.train.recipe import load_recipe

    items = _set_items(overrides)
    if command is None:
        command = METHODS[load_recipe(recipe, items).method.name].command
    model_file = run_training(command, recipe, items, run_dir, device, seed, max_steps, resume,
                              teacher=teacher, init=init, progress=progress)
    if model_file is None:          # another rank's process under torchrun: rank 0 wrote the model
        return None
    return load(model_file.parent, "cpu")


def to_pil(x: torch.Tensor) -> list:
    """Images in [-1, 1], (N, C, H, W) or one (C, H, W), gray or RGB, as 8-bit PIL images: round(127.5 (x + 1)), the
    pixels `fsg sample` writes."""
    from PIL import Image

    from fsg.io.images import to_uint8

    x = torch.as_tensor(x)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise UserError(f"to_pil takes gray or RGB images (N, 1|3, H, W), got shape {tuple(x.shape)}")
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in to_uint8(x.detach())]
