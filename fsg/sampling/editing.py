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

Tensors in, tensors out; `fsg.app.edit` reads the input files and writes the pictures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from fsg.core.process import renoise_from_boundary
from fsg.core.schedules import karras_sigmas
from fsg.errors import UserError
from fsg.sampling.noise import SampleNoise
from fsg.sampling.samplers import CountingDenoiser, consistency_times

LUMA = (0.2989, 0.5870, 0.1140)   # the luma weights of the reference colorization (cm/karras_diffusion.py)
TASKS = ("inpaint", "colorize", "superres", "stroke", "denoise", "invert")
STROKE_T_START = 1.2     # SDEdit start time of stroke guidance (noise std in [-1, 1] pixel units)
STROKE_STEPS = 2


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

def sample_edit(denoise, y: torch.Tensor, times: torch.Tensor, noise, process, replace: Replacement | None = None,
                t_end: float | None = None) -> torch.Tensor:
    """Zero-shot editing, Algorithm 4 of Song et al. 2023. NFE = len(times).

    x ~ q(x_{t_1} | y) (N(y, t_1^2 I) for x0 + t eps), then the multistep consistency loop with the replacement after
    every step, the last included, so the kept part of the output is y's; with `t_end` above the boundary the result
    is re-noised to t_end, as the reference does when its last --ts index is not the grid's end. Without `replace`
    (Omega = 1, nothing kept) this is stroke-guided generation (SDEdit, Sec. 6): y is a painting noised to the
    intermediate time t_1.
    """
    keep = replace or (lambda _, x: x)
    if replace is not None:
        y = replace(y, torch.zeros_like(y))                  # line 2: keep only the known part of y
    t1 = float(times[0])
    a1, _, s1 = (float(v) for v in process.marginal(torch.tensor(t1, dtype=torch.float64)))
    x = keep(y, denoise(a1 * y + s1 * noise.randn(y.shape, y.dtype), t1))
    for t in times[1:]:
        x = keep(y, denoise(renoise_from_boundary(process, x, float(t), noise.randn(x.shape, x.dtype)), float(t)))
    if t_end is not None and t_end > process.t_min:
        x = renoise_from_boundary(process, x, t_end, noise.randn(x.shape, x.dtype))
    return x


def sdedit_times(t_start: float, steps: int, t_min: float, rho: float = 7.0, t_max: float = float("inf")) -> torch.Tensor:
    """`steps` descending times from t_start on the Karras grid t_start -> t_min (t_min itself left out, as
    the evenly spaced consistency schedule leaves out the last grid index)."""
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    if not t_min < t_start <= t_max:
        raise UserError(f"--t-start must lie in ({t_min:g}, {t_max:g}] (the model's noise levels), got {t_start:g}")
    return karras_sigmas(steps + 1, t_min, t_start, rho, append_zero=False)[:-1]


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
               t_start: float | None) -> tuple[torch.Tensor, float | None]:
    """(call times, end time) of a task: --timesteps (the reference's --ts: a call at each index but the last), or
    K evenly spaced indices of the model's N-point training grid from T, by default every index but the last
    (K = N - 1, as the reference editing runs); stroke guidance starts at t_start instead."""
    if steps is not None and steps < 1:
        raise UserError("--steps must be at least 1")
    if task == "stroke" and not timesteps:
        p = model.process
        t_start = STROKE_T_START if t_start is None else t_start
        return sdedit_times(t_start, steps or STROKE_STEPS, p.sigma_min, p.rho, p.sigma_max), None
    grid_points = int(model.meta.get("train_grid") or 40)
    return consistency_times(model, None if timesteps else (steps or grid_points - 1), timesteps, None)


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
