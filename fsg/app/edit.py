"""`fsg edit` and `fsg interpolate`, files in and pictures out: read the input images (and masks, latents), run an
editing task of `fsg.sampling.editing` or an interpolation of `fsg.sampling.interpolate`, write the results."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from fsg.core.inversion import decode, encode, to_latent_resolution
from fsg.data.conditions import condition_source
from fsg.data.images import ImageFile, is_image_name, resize_square
from fsg.errors import UserError
from fsg.io.checkpoint import load_torch_file
from fsg.io.images import grid_image, save_png, save_samples_png
from fsg.models.load import LoadedModel, load_model, load_teacher
from fsg.resources import find_shipped
from fsg.sampling.editing import (TASKS, Colorize, Inpaint, Replacement, SuperRes, check_edit_model, denoise_inputs,
                                  edit_batches, edit_times, sample_edit)
from fsg.sampling.interpolate import interpolate, interpolate_bridge, latent_shape_of
from fsg.sampling.pagoda import latent_shape

PAGODA_TASKS = ("superres", "invert")   # what a PaGoDA generator does: encode with its teacher, decode in one call
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
    `comparison.png` is the overview grid an earlier `fsg edit --out` wrote there, not an input: it is skipped.
    `assets/...` names the shipped inputs from any folder (fsg.resources.find_shipped)."""

    path = find_shipped(path)
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
    return ImageFile(path.parent, path.name).read(channels)


def to_model_size(x: torch.Tensor, resolution: int, name: str, warn: Callable[[str], None]) -> torch.Tensor:
    """(C, H, W) float -> (C, R, R): resized (shorter side) and centre-cropped when it is not R x R already."""
    if x.shape[-2:] != (resolution, resolution):
        warn(f"{name}: {x.shape[-1]}x{x.shape[-2]} resized to the model's {resolution}x{resolution}")
        x = resize_square(x, resolution)
    return x


def read_inputs(path: Path, shape: Sequence[int], warn: Callable[[str], None],
                low_res: int | None = None) -> EditInputs:
    """Images of `path` at the model's `shape` (C, R, R). With `low_res`, files of low_res x low_res are taken as
    the low-resolution observations of super-resolution and upsampled (nearest) without a warning."""

    channels, resolution = shape[0], shape[-1]
    names, images, sizes = [], [], set()
    for file, name in input_files(path):
        x = ImageFile(file.parent, file.name).read_unit(channels)             # (C, H, W), a 16-bit PNG at 16 bits
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
    path = find_shipped(path)
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


def check_out_folder(out: Path, inputs: Path, extra: Sequence[str] = ()) -> None:
    """Before any work: the results (`out`/<name>.png per input, comparison.png, `extra`) may not overwrite an input
    file, nor a file of a folder that is not an earlier edit's output (an earlier edit's has its comparison.png)."""
    files = input_files(inputs)
    targets = [out / Path(name).with_suffix(".png") for _, name in files]
    targets += [out / COMPARISON_FILE, *(out / name for name in extra)]
    sources = {file.resolve() for file, _ in files}
    hit = next((t for t in targets if t.resolve() in sources), None)
    if hit is not None:
        raise UserError(f"--out {out}: the result {hit} would overwrite an input image; pick another folder")
    existing = [t for t in targets if t.exists()]
    if existing and not (out / COMPARISON_FILE).is_file():
        raise UserError(f"--out {out}: holds {existing[0]}{f' and {len(existing) - 1} more file(s)' if len(existing) > 1 else ''} "
                        f"that the results would overwrite; pick a new or empty folder")


def check_options(model: LoadedModel, seed: int, class_label: int | None) -> None:
    """--seed and --class-label against what the model takes: a seed is >= 0; a class only for a class-conditional
    model, and one of its classes."""
    if seed < 0:
        raise UserError(f"--seed: must be at least 0, got {seed}")
    classes = model.meta.get("num_classes", 0)
    if class_label is not None and not classes:
        raise UserError(f"--class-label: {model.path} is not class-conditional (it takes no class)")
    if class_label is not None and not 0 <= class_label < classes:
        raise UserError(f"--class-label: {model.path} has classes 0..{classes - 1}, got {class_label}")


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

    if task not in TASKS:
        raise UserError(f"unknown editing task '{task}' (choose {', '.join(TASKS)})")
    if batch_size < 1:
        raise UserError(f"--batch-size: must be at least 1, got {batch_size}")
    for name, value in (("--sigma", sigma), ("--t-start", t_start)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"{name}: must be a finite number > 0, got {value:g}")
    check_out_folder(out, inputs, ("latents.npy",) if task == "invert" else ())
    model = load_model(model_path, device)
    check_options(model, seed, class_label)
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
        times, t_end = edit_times(model, task, steps, timesteps, t_start)
        result, nfe = edit_batches(model, src.images,
                                   lambda d, y, z: sample_edit(d, y, times, z, model.process, replace, t_end),
                                   seed, batch_size, device, class_label)
        observed = None if replace is None else replace.observation(src.images)
    seconds = time.time() - start
    written = write_results(out, src.names, src.images, observed, result)
    return {"n": len(src.names), "nfe": nfe, "seconds": seconds, "written": written, "result": result}


def pagoda_teacher(model, teacher: Path | None, device):
    """The encoder of a PaGoDA generator: --teacher, else the teacher its metadata records (by its path, else by its
    path relative to the generator's folder); it must be the very teacher the generator was trained with (same
    weight fingerprint) at the generator's latent shape (fsg.models.load.load_teacher)."""

    def fits(loaded, path: Path) -> None:
        if tuple(loaded.meta["shape"]) != latent_shape(model.meta):
            raise UserError(f"--teacher {path} makes data of shape {tuple(loaded.meta['shape'])}; {model.path} decodes "
                            f"latents of shape {latent_shape(model.meta)}")

    return load_teacher(model, teacher, device, check=fits)


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
        observed = to_latent_resolution(src.images, low).repeat_interleave(k, -2).repeat_interleave(k, -1)
    written = write_results(out, src.names, src.images, observed, result)
    report = {"n": len(src.names), "nfe": 1, "encoder_nfe": 2 * steps, "seconds": seconds, "written": written,
              "result": result}
    if task == "invert":       # as N(0, I) latents (z / sigma_max), what `fsg interpolate --latents` reads
        np.save(out / "latents.npy", (z / model.process.sigma_max).numpy())
        report["mse"] = float(((result - src.images) ** 2).mean())
        report["written"] = [*written, out / "latents.npy"]
    return report


def write_results(out: Path, names: list[str], inputs: torch.Tensor, observed: torch.Tensor | None,
                  result: torch.Tensor) -> list[Path]:
    """`out`/<name>.png per result and `out`/comparison.png: rows input, observation (left out when it shows no
    more than the input, e.g. a low-resolution input) and result of (at most) the first COMPARISON_COLUMNS
    inputs, each input above its result."""

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
    if path.suffix == ".npy":
        try:
            z = torch.from_numpy(np.load(path, allow_pickle=False))
        except (OSError, ValueError, TypeError) as e:    # a pickled or foreign .npy, an object dtype
            raise UserError(f"--latents: cannot read {path} as an array of numbers ({str(e).splitlines()[0][:120]})") from None
    else:
        z = load_torch_file(path, "--latents")
    if not isinstance(z, torch.Tensor) or tuple(z.shape) not in (tuple(shape), (1, *shape)):
        got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise UserError(f"--latents: {path} holds {got}, the model's latents have shape {tuple(shape)}")
    if not z.is_floating_point() or not torch.isfinite(z).all():
        raise UserError(f"--latents: {path} holds {'non-finite values (NaN or inf)' if z.is_floating_point() else z.dtype}; "
                        f"latents are finite floats")
    return z.reshape(tuple(shape)).to(torch.float64)


def run_interpolation(model_path, n_points: int, out: Path, *, seeds: tuple[int, int] = (0, 1),
                      latents: tuple[Path, Path] | None = None, steps: int | None = None,
                      timesteps: Sequence[int] | None = None, class_label: int | None = None, cond=None,
                      device="cpu") -> dict:
    """Decode `n_points` points of the slerp path between two latents into one grid PNG (left to right); for a
    bridge model, the condition (`cond`: see `fsg.data.conditions.condition_source`, its first item) followed by
    the path between the two seeds' samples in data space."""
    if any(s < 0 for s in seeds):
        raise UserError(f"--seeds: must be at least 0, got {seeds[0]},{seeds[1]}")
    model = load_model(model_path, device)
    check_options(model, 0, class_label)
    start = time.time()
    if model.meta.get("cond_channels"):
        if latents is not None or timesteps:
            raise UserError("--latents/--timesteps apply to consistency models and PaGoDA generators, not to bridges")
        y = condition_source(model.meta, cond)([0])[0]
        x, nfe = interpolate_bridge(model, y, n_points, seeds=seeds, steps=steps, class_label=class_label, device=device)
        row = x if x.ndim == 2 else torch.cat([y[None, : x.shape[1]].cpu(), x.cpu()])
    else:
        if cond is not None:
            raise UserError("--cond applies to bridge models; this model takes no condition image")
        zs = None if latents is None else tuple(read_latent(p, latent_shape_of(model)) for p in latents)
        row, nfe = interpolate(model, n_points, seeds=seeds, latents=zs, steps=steps, timesteps=timesteps,
                               class_label=class_label, device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_samples_png(row, out, nrow=len(row))
    return {"n": n_points, "nfe": nfe, "seconds": time.time() - start, "written": [out], "result": row,
            "bridge": bool(model.meta.get("cond_channels"))}
