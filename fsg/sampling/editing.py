"""Zero-shot editing and interpolation with consistency models (Sec. 6 and Algorithm 4 of Song et al. 2023).

An editing task is an orthogonal transform A of the image and a binary mask Omega in A's coordinates:
Omega = 1 where the model generates, 0 where the reference image y is kept. After every consistency step
the estimate x is replaced by A^-1 [(A y) (1 - Omega) + (A x) Omega]:

- inpainting:        A = I, Omega = the hole;
- colorization:      A = Q^T over the channels, Q orthogonal with first column the luma direction; the luma
                     coordinate is kept (Omega = 0, 1, 1);
- super-resolution:  A = Q^T over each P x P patch, Q orthogonal with first column uniform; the patch-mean
                     coordinate is kept;
- stroke guidance:   no replacement (SDEdit: noise a stroke painting to an intermediate time, then sample).

The first section is pure tensor code; the second reads inputs, runs a task and writes its pictures
(what `fsg edit` and `fsg interpolate` call).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from fsg.core.processes import karras_sigmas
from fsg.errors import UserError
from fsg.sampling.noise import SampleNoise
from fsg.sampling.samplers import CountingDenoiser, sample_consistency

LUMA = (0.2989, 0.5870, 0.1140)   # the luma weights of the reference colorization (cm/karras_diffusion.py)


# ------------------------------------------------------------------------------------------------ replacements

def orthogonal_basis(v: torch.Tensor) -> torch.Tensor:
    """Orthogonal Q (n, n) whose first column is v / |v|: the QR factor of [v | e_2 ... e_n], columns signed so
    that R has a positive diagonal (the matrix is invertible whenever v_1 != 0)."""
    m = torch.eye(len(v), dtype=torch.float64, device=v.device)
    m[:, 0] = v
    q, r = torch.linalg.qr(m)
    return q * torch.sign(torch.diagonal(r))


def _keep_first(a_y: torch.Tensor, a_x: torch.Tensor, dim: int) -> torch.Tensor:
    """Coordinates with Omega = (0, 1, ..., 1) along `dim`: the first from A y, the others from A x."""
    return torch.cat([a_y.narrow(dim, 0, 1), a_x.narrow(dim, 1, a_x.shape[dim] - 1)], dim)


class Replacement(Protocol):
    """A^-1 [(A y) (1 - Omega) + (A x) Omega] (Algorithm 4 of Song et al. 2023): y's known, x's generated part."""

    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor: ...

    def observation(self, y: torch.Tensor) -> torch.Tensor:
        """What the known part of y looks like, for showing next to the result."""


@dataclass(frozen=True)
class Inpaint:
    """A = I; `omega` (broadcastable to the images, e.g. (1, 1, H, W)) is 1 on the pixels to regenerate."""

    omega: torch.Tensor

    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.omega.to(y.device).bool(), x, y)   # exact: a kept pixel is y's, bit for bit

    def observation(self, y: torch.Tensor) -> torch.Tensor:
        return self(y, torch.zeros_like(y))                        # the hole shown as mid-gray


@dataclass(frozen=True)
class Colorize:
    """A = Q^T over the RGB channels, Q[:, 0] the normalised luma vector; the luma coordinate is kept."""

    def basis(self, like: torch.Tensor) -> torch.Tensor:
        return orthogonal_basis(torch.tensor(LUMA, dtype=torch.float64, device=like.device)).to(like.dtype)

    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        q = self.basis(y)
        a_y = torch.einsum("nchw,cd->ndhw", y, q)   # (N, 3, H, W) coordinates in Q's basis; channel 0 = luma
        a_x = torch.einsum("nchw,cd->ndhw", x, q)
        return torch.einsum("ndhw,cd->nchw", _keep_first(a_y, a_x, 1), q)

    def observation(self, y: torch.Tensor) -> torch.Tensor:
        luma = torch.einsum("nchw,c->nhw", y, y.new_tensor(LUMA))   # (N, H, W)
        return luma[:, None].expand_as(y)


@dataclass(frozen=True)
class SuperRes:
    """A = Q^T over each `factor` x `factor` patch, Q[:, 0] uniform; the patch means are kept."""

    factor: int

    def basis(self, like: torch.Tensor) -> torch.Tensor:
        return orthogonal_basis(torch.ones(self.factor**2, dtype=torch.float64, device=like.device)).to(like.dtype)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.factor
        if h % p or w % p:
            raise UserError(f"super-resolution: the image size {h}x{w} is not divisible by the factor {p}")
        x = x.reshape(n, c, h // p, p, w // p, p)                             # (N, C, H/p, p, W/p, p)
        return x.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // p, w // p, p * p)  # (N, C, H/p, W/p, p^2)

    def unpatches(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hp, wp, _ = x.shape
        p = self.factor
        x = x.reshape(n, c, hp, wp, p, p).permute(0, 1, 2, 4, 3, 5)            # (N, C, H/p, p, W/p, p)
        return x.reshape(n, c, hp * p, wp * p)

    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        q = self.basis(y)
        a_y, a_x = self.patches(y) @ q, self.patches(x) @ q                   # coordinate 0 = p * patch mean
        return self.unpatches(_keep_first(a_y, a_x, -1) @ q.T)

    def observation(self, y: torch.Tensor) -> torch.Tensor:
        return self(y, torch.zeros_like(y))                                   # each patch filled with its mean


# ---------------------------------------------------------------------------------------------------- samplers

def sample_edit(denoise, y: torch.Tensor, times: torch.Tensor, noise, replace: Replacement | None = None,
                t_min: float = 0.002) -> torch.Tensor:
    """Zero-shot editing, Algorithm 4 of Song et al. 2023. NFE = len(times).

    x ~ N(y, t_1^2 I), then the multistep consistency loop with the replacement after every step, the last
    included, so the kept part of the output is y's. Without `replace` (Omega = 1, nothing kept) this is
    stroke-guided generation (SDEdit, Sec. 6): y is a painting noised to the intermediate time t_1.
    """
    keep = replace or (lambda _, x: x)
    if replace is not None:
        y = replace(y, torch.zeros_like(y))                  # line 2: keep only the known part of y
    t1 = float(times[0])
    x = keep(y, denoise(y + t1 * noise.randn(y.shape, y.dtype), t1))
    for t in times[1:]:
        t = float(t)
        x = x + math.sqrt(max(t**2 - t_min**2, 0.0)) * noise.randn(x.shape, x.dtype)
        x = keep(y, denoise(x, t))
    return x


def sdedit_times(t_start: float, steps: int, t_min: float, rho: float = 7.0) -> torch.Tensor:
    """`steps` descending times from t_start on the Karras grid t_start -> t_min (t_min itself left out, as
    the evenly spaced consistency schedule leaves out the last grid index)."""
    if steps < 1:
        raise UserError("--steps must be at least 1")
    if t_start <= t_min:
        raise UserError(f"--t-start must exceed the model's smallest noise level {t_min}")
    return karras_sigmas(steps + 1, t_min, t_start, rho, append_zero=False)[:-1]


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation sin((1-a) theta)/sin(theta) z0 + sin(a theta)/sin(theta) z1 (Shoemake 1985), theta
    the angle between the flattened latents, one row per a in `alpha` (P,) -> (P, *z0.shape). a = 0 and 1 give
    z0 and z1 exactly; (anti)parallel latents fall back to linear interpolation."""
    a = alpha.to(torch.float64).reshape(-1, *([1] * z0.ndim))                 # (P, 1, ..., 1)
    z0, z1 = z0.to(torch.float64), z1.to(torch.float64)
    cos = (z0 * z1).sum() / (z0.norm() * z1.norm())
    theta = torch.arccos(cos.clamp(-1, 1))
    if float(torch.sin(theta)) < 1e-6:
        return (1 - a) * z0 + a * z1
    return (torch.sin((1 - a) * theta) * z0 + torch.sin(a * theta) * z1) / torch.sin(theta)


class SlerpNoise:
    """Noise along an interpolation path: every draw is the slerp of one draw from each endpoint's stream, so
    the endpoints (a = 0, 1) replay the noise of their own plain samples, re-noising of multistep included."""

    def __init__(self, a: SampleNoise, b: SampleNoise, alpha: torch.Tensor):
        assert len(a) == len(b) == 1, "one stream per endpoint"
        self.a, self.b, self.alpha = a, b, alpha

    def __len__(self) -> int:
        return len(self.alpha)

    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        row = (1, *shape[1:])
        z = slerp(self.a.randn(row, torch.float64)[0], self.b.randn(row, torch.float64)[0], self.alpha)
        return z.to(device=self.a.device, dtype=dtype)


class _FixedNoise:
    """A noise source whose one draw is given (the slerp path of two latent files)."""

    def __init__(self, z: torch.Tensor):
        self.z = z

    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        assert tuple(shape) == tuple(self.z.shape), (shape, self.z.shape)
        return self.z.to(dtype)


def sample_interpolation(denoise, z0: torch.Tensor, z1: torch.Tensor, alpha: torch.Tensor, times: torch.Tensor,
                         noise: SlerpNoise, t_min: float = 0.002) -> torch.Tensor:
    """Decode the slerp path between latents z0, z1 (N(0, I) draws of one sample's shape) with the multistep
    consistency sampler (Algorithm 1 of Song et al. 2023), x_T = T slerp(z0, z1, a). NFE = len(times)."""
    x = float(times[0]) * slerp(z0, z1, alpha).to(noise.a.device)             # (P, *shape)
    return sample_consistency(denoise, x, times, noise, t_min)


# ------------------------------------------------------------------------------------------ files in, pictures out

TASKS = ("inpaint", "colorize", "superres", "stroke", "denoise", "invert")
PAGODA_TASKS = ("superres", "invert")   # what a PaGoDA generator does: encode with its teacher, decode in one call
STROKE_T_START = 1.2     # SDEdit start time of stroke guidance (noise std in [-1, 1] pixel units)
STROKE_STEPS = 2
COMPARISON_COLUMNS = 16  # inputs shown in comparison.png
COMPARISON_FILE = "comparison.png"  # the overview grid every edit writes beside its results


@dataclass
class EditInputs:
    """Input images at the model's resolution, (N, C, H, W) in [-1, 1], with the names of their files."""

    names: list[str]
    images: torch.Tensor
    size: tuple[int, int] | None      # (W, H) of the files when they all share one, else None


def input_files(path: Path) -> list[tuple[Path, str]]:
    """(file, name) pairs: a single image, or the images of a folder (recursive, sorted). A folder's top-level
    `comparison.png` is the overview grid an earlier `fsg edit --out` wrote there, not an input: it is skipped."""
    from fsg.data.images import is_image_name

    if path.is_file():
        return [(path, path.name)]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p.name)
                       and p != path / COMPARISON_FILE)
        if not files:
            raise UserError(f"--input: no image (.png, .jpg, .jpeg, .webp) in {path}")
        return [(p, p.relative_to(path).as_posix()) for p in files]
    raise UserError(f"--input: no such file or folder: {path}")


def read_pixels(path: Path, channels: int) -> torch.Tensor:
    """uint8 (C, H, W) of an image file, converted to gray or RGB; a UserError when it cannot be decoded."""
    from fsg.data.images import ImageFile

    return ImageFile(path.parent, path.name).read(channels)


def to_model_size(x: torch.Tensor, resolution: int, name: str, warn: Callable[[str], None]) -> torch.Tensor:
    """(C, H, W) float -> (C, R, R): resized (shorter side) and centre-cropped when it is not R x R already."""
    from fsg.data.images import resize_square

    if x.shape[-2:] != (resolution, resolution):
        warn(f"{name}: {x.shape[-1]}x{x.shape[-2]} resized to the model's {resolution}x{resolution}")
        x = resize_square(x, resolution)
    return x


def read_inputs(path: Path, shape: Sequence[int], warn: Callable[[str], None],
                low_res: int | None = None) -> EditInputs:
    """Images of `path` at the model's `shape` (C, R, R). With `low_res`, files of low_res x low_res are taken as
    the low-resolution observations of super-resolution and upsampled (nearest) without a warning."""
    from fsg.data.images import to_unit

    channels, resolution = shape[0], shape[-1]
    names, images, sizes = [], [], set()
    for file, name in input_files(path):
        x = to_unit(read_pixels(file, channels))                               # (C, H, W)
        sizes.add((x.shape[-1], x.shape[-2]))
        if low_res is not None and x.shape[-2:] == (low_res, low_res):
            k = resolution // low_res
            x = x.repeat_interleave(k, -2).repeat_interleave(k, -1)           # (C, R, R), constant patches
        names.append(name)
        images.append(to_model_size(x, resolution, name, warn))
    return EditInputs(names, torch.stack(images), sizes.pop() if len(sizes) == 1 else None)


def read_mask(path: Path, size: tuple[int, int] | None, resolution: int, warn: Callable[[str], None]) -> torch.Tensor:
    """A binary mask PNG -> Omega (1, 1, R, R): 1 (white, 255) where pixels are regenerated, 0 (black) kept.

    The mask must have the size (W, H) of the input images and no other value than 0 and 255.
    """
    if not path.is_file():
        raise UserError(f"--mask: no such file: {path}")
    pixels = read_pixels(path, 1)[0]                                             # (H, W) uint8
    h, w = pixels.shape
    if size is None:
        raise UserError("--mask: the input images have different sizes; one mask fits images of one size")
    if (w, h) != size:
        raise UserError(f"--mask: the mask is {w}x{h} but the input images are {size[0]}x{size[1]}")
    values = set(torch.unique(pixels).tolist())
    if not values <= {0, 255}:
        raise UserError(f"--mask: {path} is not binary (values other than 0 and 255, e.g. "
                        f"{min(values - {0, 255})}); save it as a black/white PNG")
    omega = (pixels == 255).float()[None]                                       # (1, H, W)
    if omega.shape[-2:] != (resolution, resolution):
        omega = (to_model_size(omega, resolution, str(path), warn) >= 0.5).float()
    return omega[None]                                                          # (1, 1, R, R)


@torch.no_grad()
def edit_batches(model, y: torch.Tensor, run: Callable, seed: int, batch_size: int, device,
                 class_label: int | None = None) -> tuple[torch.Tensor, int]:
    """Apply run(denoise, y_batch, noise) -> x over batches; input i's noise depends only on (seed, i).
    A class-conditional model gets `class_label`, else a class drawn from each input's stream."""
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    outs, nfe = [], 0
    num_classes = model.meta.get("num_classes", 0)
    for start in range(0, len(y), batch_size):
        idx = list(range(start, min(start + batch_size, len(y))))
        noise = SampleNoise(seed, idx, device)
        labels = None
        if num_classes:
            labels = (noise.randint(num_classes) if class_label is None
                      else torch.full((len(idx),), class_label, device=device))
        denoise = CountingDenoiser(model.denoiser, labels=labels, clip=True)
        outs.append(run(denoise, y[idx].to(device, torch.float64), noise).float().cpu())
        nfe = denoise.nfe
    return torch.cat(outs), nfe


def edit_times(model, task: str, steps: int | None, timesteps: Sequence[int] | None,
               t_start: float | None) -> torch.Tensor:
    """The consistency times of a task: --timesteps, or K evenly spaced indices of the model's N-point training
    grid from T, by default every index but the last (K = N - 1, as the reference editing runs); stroke guidance
    starts at t_start instead."""
    from fsg.sampling.generate import consistency_times

    if steps is not None and steps < 1:
        raise UserError("--steps must be at least 1")
    if task == "stroke" and not timesteps:
        p = model.process
        t_start = STROKE_T_START if t_start is None else t_start
        return sdedit_times(t_start, steps or STROKE_STEPS, p.sigma_min, p.rho)
    grid_points = int(model.meta.get("train_grid") or 40)
    return consistency_times(model, steps or grid_points - 1, timesteps, None)


def check_edit_model(model, task: str, factor: int):
    """The model of an editing task must be a consistency model of images that the task fits."""
    shape = model.shape
    if len(shape) != 3:
        raise UserError(f"{task} needs an image model; {model.path} generates vectors of shape {tuple(shape)}")
    if model.denoiser.precond == "diffusion":
        raise UserError(f"{task} needs a consistency model; {model.path} is a diffusion model")
    if task == "colorize" and shape[0] != 3:
        raise UserError(f"colorize needs an RGB (3-channel) model; {model.path} has {shape[0]} channel(s)")
    if task == "superres" and (factor < 2 or shape[-1] % factor):
        raise UserError(f"--factor must be at least 2 and divide the model's resolution {shape[-1]}, got {factor}")
    return model


def task_replacement(task: str, src: EditInputs, mask: Path | None, factor: int,
                     warn: Callable[[str], None]) -> Replacement | None:
    """The replacement of Algorithm 4 for a task (None for stroke guidance: nothing is kept)."""
    if task == "inpaint":
        if mask is None:
            raise UserError("inpaint needs --mask MASK.png (white = regenerate, black = keep)")
        return Inpaint(read_mask(mask, src.size, src.images.shape[-1], warn))
    return {"colorize": Colorize(), "superres": SuperRes(factor)}.get(task)


def run_edit(task: str, model_path, inputs: Path, out: Path, *, mask: Path | None = None, factor: int | None = None,
             sigma: float | None = None, add_noise: bool = False, t_start: float | None = None,
             steps: int | None = None, timesteps: Sequence[int] | None = None, seed: int = 0, batch_size: int = 64,
             class_label: int | None = None, device="cpu", warn: Callable[[str], None] = print,
             teacher: Path | None = None, inversion_steps: int | None = None) -> dict:
    """Run one editing task on the images of `inputs` and write `out`/<name>.png per input plus
    `out`/comparison.png (rows: inputs, observations, results). Returns a report. A PaGoDA generator runs
    `superres` and `invert` through its teacher's inversion (run_pagoda_edit)."""
    from fsg.nets.load import load_model

    if task not in TASKS:
        raise UserError(f"unknown editing task '{task}' (choose {', '.join(TASKS)})")
    model = load_model(model_path, device)
    if model.meta.get("method") == "pagoda":
        if steps is not None or timesteps:
            raise UserError("a PaGoDA generator decodes in one call: --steps/--timesteps do not apply "
                            "(--inversion-steps sets the encoder's)")
        return run_pagoda_edit(task, model, inputs, out, factor=factor, teacher=teacher,
                               inversion_steps=inversion_steps, batch_size=batch_size, class_label=class_label,
                               device=device, warn=warn)
    if task == "invert":
        raise UserError("edit invert needs a PaGoDA generator (fsg grow-decoder); consistency models have no encoder")
    if teacher is not None or inversion_steps is not None:
        raise UserError("--teacher/--inversion-steps apply to PaGoDA generators only")
    factor = 4 if factor is None else factor
    check_edit_model(model, task, factor)
    src = read_inputs(inputs, model.shape, warn, model.shape[-1] // factor if task == "superres" else None)
    start = time.time()
    if task == "denoise":
        observed, result, nfe = denoise_inputs(model, src.images, sigma, add_noise, seed, batch_size, device,
                                               class_label)
    else:
        replace = task_replacement(task, src, mask, factor, warn)
        times, t_min = edit_times(model, task, steps, timesteps, t_start), model.process.sigma_min
        result, nfe = edit_batches(model, src.images, lambda d, y, z: sample_edit(d, y, times, z, replace, t_min),
                                   seed, batch_size, device, class_label)
        observed = None if replace is None else replace.observation(src.images)
    seconds = time.time() - start
    written = write_results(out, src.names, src.images, observed, result)
    return {"n": len(src.names), "nfe": nfe, "seconds": seconds, "written": written, "result": result}


def pagoda_teacher(model, teacher: Path | None, device):
    """The encoder of a PaGoDA generator: --teacher, else the teacher its metadata records; it must be the
    very teacher the generator was trained with (same weight fingerprint) at the generator's latent shape."""
    from fsg.nets.load import load_model
    from fsg.sampling.inversion import latent_shape
    from fsg.train.latents import model_fingerprint

    path = teacher if teacher is not None else model.meta.get("teacher")
    if path is None:
        raise UserError(f"{model.path} records no teacher: pass --teacher (the low-resolution model it was distilled from)")
    if teacher is None and not Path(path).exists():
        raise UserError(f"the teacher {path} recorded in {model.path} is not there: pass --teacher")
    loaded = load_model(path, device)
    if tuple(loaded.meta["shape"]) != latent_shape(model.meta):
        raise UserError(f"--teacher {path} makes data of shape {tuple(loaded.meta['shape'])}; {model.path} decodes "
                        f"latents of shape {latent_shape(model.meta)}")
    want = model.meta.get("teacher_fingerprint")
    if want is not None and model_fingerprint(loaded.denoiser.net) != want:
        raise UserError(f"--teacher {path} is not the teacher {model.path} was trained with (other weights)")
    return loaded


@torch.no_grad()
def run_pagoda_edit(task: str, model, inputs: Path, out: Path, *, factor: int | None = None,
                    teacher: Path | None = None, inversion_steps: int | None = None, batch_size: int = 64,
                    class_label: int | None = None, device="cpu", warn: Callable[[str], None] = print) -> dict:
    """Encode then decode with a PaGoDA generator G (Kim et al. 2024, Sec. 3): x_hat = G(Enc(pool(x))).

    superres: the inputs are low-resolution images (the teacher's resolution; larger ones are average-pooled
              to it), decoded at the generator's resolution, `latent_factor` times larger;
    invert:   the inputs are images at the generator's resolution; the result is their reconstruction,
              and the report gives its MSE in [-1, 1] and the latents z / sigma_max (`out`/latents.npy).
    The encoder is the teacher's PF-ODE inversion with N Heun steps (2N evaluations), the decoder one call.
    """
    from fsg.nets.load import LoadedModel, load_model
    from fsg.sampling.inversion import decode, encode, latent_shape

    if task not in PAGODA_TASKS:
        raise UserError(f"a PaGoDA generator runs edit {' and '.join(PAGODA_TASKS)}, not {task}")
    model = model if isinstance(model, LoadedModel) else load_model(model, device)   # a loaded model or its path
    k = int(model.meta["latent_factor"])
    if factor is not None and factor != k:
        raise UserError(f"--factor {factor}: {model.path} super-resolves by its growth factor {k}")
    if k < 2 and task == "superres":
        raise UserError(f"{model.path} outputs its teacher's resolution (not grown): superres needs a grown generator")
    steps = int(inversion_steps or model.meta.get("inversion_steps") or 40)
    if steps < 1:
        raise UserError("--inversion-steps must be at least 1")
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    enc = pagoda_teacher(model, teacher, device)
    shape, low = model.shape, latent_shape(model.meta)[-1]
    src = read_inputs(inputs, shape, warn, low if task == "superres" else None)
    labels_all = None
    if model.meta.get("num_classes", 0):
        if class_label is None:
            raise UserError(f"{model.path} is class-conditional: pass --class-label")
        labels_all = torch.full((len(src.images),), class_label, device=device)
    start = time.time()
    zs, outs = [], []
    for i in range(0, len(src.images), batch_size):
        x = src.images[i:i + batch_size].to(device, torch.float32)
        labels = None if labels_all is None else labels_all[i:i + batch_size]
        z = encode(enc.denoiser, x, low, steps, labels)                       # (n, C, r, r)
        outs.append(decode(model.denoiser, z, k, model.process.sigma_max, labels).clamp(-1, 1).float().cpu())
        zs.append(z.float().cpu())
    seconds = time.time() - start
    result, z = torch.cat(outs), torch.cat(zs)
    observed = None
    if task == "superres":
        from fsg.sampling.inversion import to_latent_resolution

        observed = to_latent_resolution(src.images, low).repeat_interleave(k, -2).repeat_interleave(k, -1)
    written = write_results(out, src.names, src.images, observed, result)
    report = {"n": len(src.names), "nfe": 1, "encoder_nfe": 2 * steps, "seconds": seconds, "written": written,
              "result": result}
    if task == "invert":       # as N(0, I) latents (z / sigma_max), what `fsg interpolate --latents` reads
        np.save(out / "latents.npy", (z / model.process.sigma_max).numpy())
        report["mse"] = float(((result - src.images) ** 2).mean())
        report["written"] = [*written, out / "latents.npy"]
    return report


def denoise_inputs(model, y: torch.Tensor, sigma: float | None, add_noise: bool, seed: int, batch_size: int,
                   device, class_label: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One-step denoising f(y_sigma, sigma) (Sec. 6 of Song et al. 2023) of inputs at noise level sigma, or of
    y + sigma z with `add_noise`. Returns (noisy inputs, results, NFE)."""
    p = model.process
    if sigma is None or not p.sigma_min < sigma <= p.sigma_max:
        raise UserError(f"denoise needs --sigma in ({p.sigma_min}, {p.sigma_max}], the noise level of the inputs")

    def run(denoise, y_batch, noise):
        noisy = y_batch + sigma * noise.randn(y_batch.shape, y_batch.dtype) if add_noise else y_batch
        return torch.cat([noisy, denoise(noisy, sigma)], 1)                 # (N, 2C, H, W): both halves kept

    both, nfe = edit_batches(model, y, run, seed, batch_size, device, class_label)
    noisy, result = both.chunk(2, 1)
    return noisy, result, nfe


def write_results(out: Path, names: list[str], inputs: torch.Tensor, observed: torch.Tensor | None,
                  result: torch.Tensor) -> list[Path]:
    """`out`/<name>.png per result and `out`/comparison.png: rows input, observation (left out when it shows no
    more than the input, e.g. a low-resolution input) and result of (at most) the first COMPARISON_COLUMNS
    inputs, each input above its result."""
    from fsg.io.images import grid_image, save_png

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, x in zip(names, result):
        path = out / Path(name).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(grid_image(x[None], pad=0), path)
        written.append(path)
    k = min(len(names), COMPARISON_COLUMNS)
    shown = observed is not None and not torch.allclose(observed[:k], inputs[:k], atol=1e-6)
    rows = [inputs[:k], *([observed[:k]] if shown else []), result[:k]]
    grid = grid_image(torch.cat(rows), nrow=k)                                     # (2k or 3k, C, H, W)
    save_png(grid, out / COMPARISON_FILE, scale=max(1, 64 // inputs.shape[-1]))    # small images made visible
    return [*written, out / COMPARISON_FILE]


def read_latent(path: Path, shape: Sequence[int]) -> torch.Tensor:
    """A latent N(0, I) of the model's sample shape from a .npy or .pt file ((1, *shape) accepted)."""
    if not path.is_file():
        raise UserError(f"--latents: no such file: {path}")
    try:
        z = torch.from_numpy(np.load(path)) if path.suffix == ".npy" else torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any decoding failure of a user's file is the same user error
        raise UserError(f"--latents: cannot read {path} ({type(e).__name__}: {e})") from None
    if not isinstance(z, torch.Tensor) or tuple(z.shape) not in (tuple(shape), (1, *shape)):
        got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise UserError(f"--latents: {path} holds {got}, the model's latents have shape {tuple(shape)}")
    return z.reshape(tuple(shape)).to(torch.float64)


def run_interpolation(model_path, n_points: int, out: Path, *, seeds: tuple[int, int] = (0, 1),
                      latents: tuple[Path, Path] | None = None, steps: int | None = None,
                      timesteps: Sequence[int] | None = None, class_label: int | None = None, device="cpu") -> dict:
    """Decode `n_points` points of the slerp path between two latents into one grid PNG (left to right).

    Endpoints are seeds (the latents of sample 0 of `fsg sample --seed S`) or latent files; in both cases the
    re-noising of multistep decoding uses the seeds' streams, so the endpoints equal their plain samples.
    """
    from fsg.io.images import save_samples_png
    from fsg.nets.load import load_model
    from fsg.sampling.generate import plan_sampler

    if n_points < 2:
        raise UserError("--n-points must be at least 2 (the two endpoints)")
    model = load_model(model_path, device)
    pagoda = model.meta.get("method") == "pagoda"
    if model.denoiser.precond == "diffusion" and not pagoda:
        raise UserError(f"interpolate needs a consistency model or a PaGoDA generator; {model.path} is a diffusion model")
    if pagoda and (steps not in (None, 1) or timesteps):
        raise UserError("a PaGoDA generator decodes in one call: --steps/--timesteps do not apply")
    plan = plan_sampler(model, *(("pagoda", 1) if pagoda else ("consistency", steps or (None if timesteps else 1))),
                        **({} if pagoda else {"timesteps": timesteps}))
    shape = model.shape
    ends = [SampleNoise(s, [0], device) for s in seeds]
    num_classes = model.meta.get("num_classes", 0)
    labels = None
    if num_classes:   # as in `fsg sample`, a stream draws its class first; the path takes the first endpoint's
        if class_label is None:
            class_label = [int(e.randint(num_classes)[0]) for e in ends][0]
        labels = torch.full((n_points,), class_label, device=device)
    alpha = torch.linspace(0, 1, n_points, dtype=torch.float64)
    denoise = CountingDenoiser(model.denoiser, labels=labels, clip=len(shape) == 3)
    start = time.time()
    if pagoda:    # PaGoDA: slerp the latents (N(0, I) of the teacher's shape), then the one-step decoder
        from fsg.sampling.inversion import latent_shape

        noise = SlerpNoise(*ends, alpha)
        if latents is not None:
            z0, z1 = (read_latent(p, latent_shape(model.meta)) for p in latents)
            noise = _FixedNoise(slerp(z0, z1, alpha))
        with torch.no_grad():
            x = plan.run(denoise, plan.initial(noise, (n_points, *shape)).to(device), noise)
    else:
        if latents is not None:
            z0, z1 = (read_latent(p, shape) for p in latents)
        else:
            z0, z1 = (e.randn((1, *shape), torch.float64)[0] for e in ends)
        with torch.no_grad():
            x = sample_interpolation(denoise, z0, z1, alpha, plan.times, SlerpNoise(*ends, alpha), plan.knobs["t_min"])
    x = x.float().cpu()
    if x.ndim == 4:
        x = x.clamp(-1, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_samples_png(x, out, nrow=n_points)
    return {"n": n_points, "nfe": denoise.nfe, "seconds": time.time() - start, "written": [out], "result": x}
