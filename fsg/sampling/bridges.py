"""Image-to-image samplers of bridge models: DDBM's hybrid sampler, DBIM (eta; 2nd/3rd order) and CDBM.

Each starts from the condition, x_T = y, and follows the sampler contract of `fsg.sampling.samplers`,
`sample_X(denoise, x, times, noise, process, **knobs) -> x`, with `denoise(x, t)` returning x0_hat for the
batch's conditions. NFE, counted by `CountingDenoiser` (the boot evaluation included):

    hybrid (steps N, Karras grid of N points + 0)          3N - 1   (2N - 1 with churn_step_ratio = 0)
    dbim, dbim2, dbim3 (steps = NFE = N + 1, N updates)     N + 1
    cdbm (steps = NFE = K >= 2)                             K

Knobs (`fsg sample` options, registered in `fsg.sampling.generate.SAMPLER_KNOBS`): `eta` of dbim (--eta),
`churn_step_ratio` (--churn-step-ratio) and the h-term weight `w` (--guidance of a bridge model) of hybrid.

Inpainting: given a mask (1 on the hole), every sampler composes each x0 estimate with the known pixels of y
and returns x * mask + y * (1 - mask) (`keep_known`), so the known pixels come out exactly as in y; the NFE is
unchanged. `mask_source` finds the mask: `--mask`, else the model's data (`data.degrade: mask-center` for any
condition, `mask-strokes` for the model's own data splits).

They register in `fsg.sampling.generate.EXTRA_SAMPLERS`; `condition_source` gives the conditions of
`fsg sample --cond DIR|FILE.npz|data:train|data:test`, by default the held-out split of the model's data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from fsg.core.bridges import (HYBRID_START_OFFSET, BridgeProcess, bridge_sample, dbim_high_order_step, dbim_step,
                              euler_maruyama_step, keep_known)
from fsg.core.processes import karras_sigmas
from fsg.errors import UserError
from fsg.nets.load import LoadedModel
from fsg.sampling.editing import SlerpNoise
from fsg.sampling.generate import EXTRA_SAMPLERS, SAMPLER_KNOBS, SamplerPlan, plan_sampler
from fsg.sampling.noise import SampleNoise
from fsg.sampling.samplers import CountingDenoiser

Conditions = Callable[[Sequence[int]], torch.Tensor]   # sample indices -> their condition batch
Masks = Callable[[Sequence[int]], torch.Tensor]        # sample indices -> their masks, 1 on the hole (N, 1|C, H, W)
DATA_SPLITS = {"data:train": "train", "data:test": "test"}   # --cond values naming a split of the model's data


# ------------------------------------------------------------------------------------------- samplers

def _known_pixels(denoise, y: torch.Tensor, mask: torch.Tensor | None):
    """denoise with every x0 estimate composed with y's known pixels (DBIM's inpainting); as is without a mask."""
    if mask is None:
        return denoise
    return lambda x, t: keep_known(denoise(x, t), y, mask)


def _finish(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else keep_known(x, y, mask)


def sample_hybrid(denoise, x, times, noise, process: BridgeProcess, churn_step_ratio: float = 0.33, w: float = 1.0,
                  mask: torch.Tensor | None = None):
    """DDBM's hybrid sampler (Algorithm 1 of Zhou et al. 2024): on each interval [t_i, t_{i+1}], an
    Euler-Maruyama step of the reverse SDE to t_hat = t_i + s (t_{i+1} - t_i), then a Heun step of the
    PF-ODE to t_{i+1} (Euler on the last step to 0). `times` ends with 0; w is the guidance on the h-term.
    With `mask` (1 on the hole) the known pixels of y are kept (`keep_known`), as in every bridge sampler here."""
    y = x
    denoise = _known_pixels(denoise, y, mask)
    for i in range(len(times) - 1):
        t, t_next = float(times[i]), float(times[i + 1])
        t_hat = t + churn_step_ratio * (t_next - t)
        if churn_step_ratio > 0:  # Stochastic step.
            x = euler_maruyama_step(process, x, y, denoise(x, t), t, t_hat, noise.randn(x.shape, x.dtype), w)
        d = process.drift(x, y, denoise(x, t_hat), t_hat, w=w)
        x_next = x + (t_next - t_hat) * d
        if t_next > 0:  # Apply 2nd order correction.
            d_prime = process.drift(x_next, y, denoise(x_next, t_next), t_next, w=w)
            x_next = x + (t_next - t_hat) * (d + d_prime) / 2
        x = x_next
    return _finish(x, y, mask)


def _boot(denoise, y, times, noise, process):
    """DBIM's booting step: x0_hat = D(y, T), then x_{t_1} = a y + b x0_hat + c eps_boot ~ q(x_{t_1} | x0_hat, y)."""
    x0_hat = denoise(y, float(times[0]))
    return bridge_sample(process, x0_hat, y, float(times[1]), noise.randn(y.shape, y.dtype))


def sample_dbim(denoise, x, times, noise, process: BridgeProcess, eta: float = 0.0, mask: torch.Tensor | None = None):
    """DBIM (Zheng et al. 2025; DBIM's `sample_dbim`): boot at times[0] = T, then `dbim_step` over times[1:]; the
    last step adds no noise. eta = 0 is deterministic given the booting noise."""
    y = x
    denoise = _known_pixels(denoise, y, mask)
    x = _boot(denoise, y, times, noise, process)
    n = len(times) - 1
    for i in range(1, n):
        s, t = float(times[i]), float(times[i + 1])
        last = i == n - 1
        z = torch.zeros_like(x) if last or eta == 0 else noise.randn(x.shape, x.dtype)
        x = dbim_step(process, x, denoise(x, s), y, s, t, eta, z)
    return _finish(x, y, mask)


def sample_dbim_high_order(denoise, x, times, noise, process: BridgeProcess, order: int = 2,
                           mask: torch.Tensor | None = None):
    """DBIM's 2nd/3rd-order multistep sampler (`sample_dbim_high_order`, Zheng et al. 2025): the order grows
    with the estimates at hand, first order on the first and the last update."""
    y = x
    denoise = _known_pixels(denoise, y, mask)
    x = _boot(denoise, y, times, noise, process)
    history: list[tuple[float, torch.Tensor]] = []           # (time, x0_hat), newest first
    n = len(times) - 1
    for i in range(1, n):
        s, t = float(times[i]), float(times[i + 1])
        x0_hat = denoise(x, s)
        use = 0 if i == n - 1 else min(order - 1, len(history))
        prev = history[:use]
        x = dbim_high_order_step(process, x, y, s, t, [x0_hat] + [e for _, e in prev], [u for u, _ in prev])
        history.insert(0, (s, x0_hat))
    return _finish(x, y, mask)


def sample_cdbm(denoise, x, times, noise, process: BridgeProcess, mask: torch.Tensor | None = None):
    """CDBM's sampler (Sec. 3.4 of He et al. 2024): x0_hat = h(y, T, y); then for each t in times[1:],
    x_t ~ q(x_t | x0_hat, y) and x0_hat = h(x_t, t, y). times[1] = T - gamma."""
    y = x
    denoise = _known_pixels(denoise, y, mask)
    x0_hat = denoise(y, float(times[0]))
    for t in times[1:]:
        x_t = bridge_sample(process, x0_hat, y, float(t), noise.randn(y.shape, y.dtype))
        x0_hat = denoise(x_t, float(t))
    return _finish(x0_hat, y, mask)


BRIDGE_SAMPLERS = {"hybrid": sample_hybrid, "dbim": sample_dbim, "dbim2": partial(sample_dbim_high_order, order=2),
                   "dbim3": partial(sample_dbim_high_order, order=3), "cdbm": sample_cdbm}


# ------------------------------------------------------------------------------------------- plans

@dataclass
class BridgePlan(SamplerPlan):
    """A bridge sampler: starts from the condition and passes the process (and a mask, for inpainting) to the sampler."""

    process: BridgeProcess | None = None
    keeps_known = True      # run() takes a mask

    def initial(self, noise, shape, cond=None) -> torch.Tensor:
        if cond is None:
            raise UserError("a bridge model samples from condition images and none were given "
                            "(fsg sample: --cond DIR|FILE.npz|data:train|data:test)")
        if tuple(cond.shape) != tuple(shape):
            raise UserError(f"the conditions have shape {tuple(cond.shape[1:])}, but this bridge starts from x_T = y "
                            f"of the sample's shape {tuple(shape[1:])}")
        return cond.to(torch.float64)

    def run(self, denoise, x, noise, mask: torch.Tensor | None = None):
        """The sampler from x = y; with `mask` (1 on the hole) the known pixels of y are kept exactly."""
        return BRIDGE_SAMPLERS[self.name](denoise, x, self.times, noise, self.process, mask=mask, **self.knobs)


def _bridge_process(model: LoadedModel, sampler: str) -> BridgeProcess:
    process = model.process
    if not isinstance(process, BridgeProcess):
        raise UserError(f"'{sampler}' samples bridge models; this model's process is '{process.name}'")
    return process


def _uniform_grid(process: BridgeProcess, points: int) -> torch.Tensor:
    """[T, then `points` times uniform from T - gamma down to t_min] (DBIM's `get_sigmas_uniform`)."""
    grid = torch.linspace(process.T - process.gamma, process.t_min, points, dtype=torch.float64)
    return torch.cat([grid.new_tensor([process.T]), grid])


HYBRID_CHURN_STEP_RATIO = 0.33   # DDBM's README setting of s
HYBRID_GUIDANCE = 1.0            # w = 1: the exact bridge (DDBM's README for VP: "< 1 significantly worse")


def plan_hybrid(model: LoadedModel, steps: int | None, churn_step_ratio: float | None = None, w: float | None = None,
                **_) -> BridgePlan:
    """N = steps Karras points from T - 1e-4 to t_min, then 0 (DDBM `karras_sample`; default N = 40, NFE 119);
    churn_step_ratio s in [0, 1) (default 0.33) and the h-term weight w (default 1)."""
    p = _bridge_process(model, "hybrid")
    n = steps if steps is not None else 40
    if n < 1:
        raise UserError("--steps must be at least 1")
    s = HYBRID_CHURN_STEP_RATIO if churn_step_ratio is None else float(churn_step_ratio)
    if not 0 <= s < 1:
        raise UserError(f"--churn-step-ratio must lie in [0, 1), got {s:g}")
    w = HYBRID_GUIDANCE if w is None else float(w)
    if not math.isfinite(w):
        raise UserError(f"--guidance (the hybrid sampler's h-term weight w) must be finite, got {w:g}")
    times = karras_sigmas(n, p.t_min, p.T - HYBRID_START_OFFSET, p.rho)
    return BridgePlan("hybrid", times, {"churn_step_ratio": s, "w": w}, clip=True, process=p)


def _plan_dbim(name: str, knob_names: tuple[str, ...]):
    def plan(model: LoadedModel, steps: int | None, **knobs) -> BridgePlan:
        """steps = NFE = N + 1 (the boot evaluation and N updates on a uniform grid; default 20); dbim's eta >= 0
        (default 0)."""
        p = _bridge_process(model, name)
        nfe = steps if steps is not None else 20
        if nfe < 2:
            raise UserError(f"{name}: --steps is the NFE, the boot evaluation and at least one update: 2 or more")
        chosen = {k: float(v) for k, v in knobs.items() if k in knob_names and v is not None}
        if "eta" in knob_names:
            chosen.setdefault("eta", 0.0)
            if not chosen["eta"] >= 0:
                raise UserError(f"--eta must be non-negative, got {chosen['eta']:g}")
        return BridgePlan(name, _uniform_grid(p, nfe), chosen, clip=True, process=p)
    return plan


def plan_cdbm(model: LoadedModel, steps: int | None, times: Sequence[float] | None = None, **_) -> BridgePlan:
    """steps = NFE = K >= 2: the boot at T, then K - 1 consistency calls at times uniform on [t_min, T - gamma)
    (T - gamma first, as Sec. 3.4 of He et al. 2024). `times` gives the consistency calls' times instead, strictly
    decreasing in [t_min, T - gamma] (NFE = 1 + their number); e.g. (0.6,) boots to t = 0.6 rather than T - gamma.
    Below T - gamma the boot noises its point estimate of x0, not a draw of x0, so even the exact consistency
    function loses variance there (tests/test_bridges.py derives how much); a trained model may still gain."""
    p = _bridge_process(model, "cdbm")
    if model.denoiser.precond == "diffusion":
        raise UserError("the cdbm sampler needs a consistency bridge model (CBD/CBT); for a DDBM use dbim or hybrid")
    if times:
        calls = torch.tensor([float(t) for t in times], dtype=torch.float64)
        top = p.T - p.gamma
        if steps is not None and steps != len(calls) + 1:
            raise UserError(f"cdbm: --steps {steps} disagrees with --times ({len(calls)} consistency calls: NFE {len(calls) + 1})")
        if not bool(((calls >= p.t_min) & (calls <= top + 1e-12)).all()) or not bool((calls[1:] < calls[:-1]).all()):
            raise UserError(f"cdbm: --times must be strictly decreasing in [t_min, T - gamma] = [{p.t_min:g}, {top:g}]")
        return BridgePlan("cdbm", torch.cat([calls.new_tensor([p.T]), calls]), {}, clip=True, process=p)
    k = steps if steps is not None else 2
    if k < 2:
        raise UserError("cdbm: --steps is the NFE, at least 2 (the boot evaluation and one consistency call)")
    grid = torch.linspace(p.T - p.gamma, p.t_min, k, dtype=torch.float64)[:-1]      # K - 1 calls
    return BridgePlan("cdbm", torch.cat([grid.new_tensor([p.T]), grid]), {}, clip=True, process=p)


EXTRA_SAMPLERS.update({
    "hybrid": plan_hybrid,
    "dbim": _plan_dbim("dbim", ("eta",)),
    "dbim2": _plan_dbim("dbim2", ()),
    "dbim3": _plan_dbim("dbim3", ()),
    "cdbm": plan_cdbm,
})
SAMPLER_KNOBS.update({      # knob -> (its fsg sample option, the samplers it applies to)
    "eta": ("--eta", ("dbim",)),
    "churn_step_ratio": ("--churn-step-ratio", ("hybrid",)),
    "w": ("--guidance", ("hybrid",)),
    "times": ("--times", ("cdbm",)),
})


# ------------------------------------------------------------------------------------------- conditions

class DataConds:
    """Condition i = the condition of item i mod M of a split of the model's data; for inpainting data
    (`data.degrade: mask-*`) also the hole each item was made with (`masks`)."""

    def __init__(self, items, degradation: str | None):
        self.items = items                  # an ImageDataset or VectorDataset with conditions
        self.degradation = degradation      # the model's data.degrade, or None

    def __len__(self) -> int:
        return len(self.items)

    def __call__(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.stack([self.items[int(i) % len(self.items)]["cond"] for i in indices])

    def masks(self, indices: Sequence[int]) -> torch.Tensor:
        """The holes (N, C, H, W), 1 where generated: the mask that `data.degrade` drew for item j = i mod M, with
        the generator seeded by j as `ImageDataset` does (so the center square, or that item's strokes)."""
        from fsg.data.degrade import make_mask

        kind = (self.degradation or "").removeprefix("mask-")
        shape = tuple(self.items.shape)
        return torch.stack([make_mask(kind, shape, torch.Generator().manual_seed(int(i) % len(self.items)))
                            for i in indices])


def _data_config(meta: dict):
    from fsg.data.config import DataConfig
    from fsg.io.config import ConfigError, from_dict

    try:
        return from_dict(DataConfig, meta["data"])
    except ConfigError as e:
        raise UserError(f"model metadata: data: {e} (written by another fsg version?)") from None


def data_conds(meta: dict, split: str = "test") -> DataConds:
    """Condition i = the condition of item i mod M of `split` of the model's recorded data (`meta["data"]`):
    the held-out 'test' split by default, or 'train' (DDBM's protocol measures FID on the training pairs)."""
    from fsg.data import build_dataset
    from fsg.io.config import ConfigError

    if not meta.get("data"):
        raise UserError("this bridge model records no training data (an imported checkpoint?): "
                        "give the conditions with --cond DIR|FILE.npz")
    cfg = _data_config(meta)
    try:
        items = build_dataset(cfg, split)
    except (UserError, ConfigError) as e:
        raise UserError(f"no '{split}' conditions in the model's data ({e}); give them with --cond DIR|FILE.npz") from None
    if items.cond_shape is None:
        raise UserError(f"the model's data ({items.name}) has no condition images; give them with --cond DIR|FILE.npz")
    return DataConds(items, cfg.degrade)


def _read_folder(path: Path, channels: int, resolution: int, mode: str, what: str):
    """item i mod M of the sorted image files of a folder, as (channels, resolution, resolution) in [-1, 1]."""
    from fsg.data.images import list_folder, resize_square, to_unit

    files = list_folder(path)
    if not files:
        raise UserError(f"{what} {path}: no image files in the folder")

    def read(i: int) -> torch.Tensor:
        return resize_square(to_unit(files[int(i) % len(files)].read(channels)), resolution, mode)
    return lambda indices: torch.stack([read(i) for i in indices])


def file_conds(path: Path, shape: tuple[int, ...], resize: str = "bilinear") -> Conditions:
    """Conditions of `shape` (C, H, W) or (D,) from a folder of images (sorted names, resized with `resize` and
    centre-cropped) or an .npz (`cond`, else `arr_0`: uint8 NHWC images or float [N, D] points); item i mod M."""
    path = Path(path)
    if path.is_dir():
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise UserError(f"--cond {path}: a folder holds gray or RGB images; this model's conditions have shape {shape}")
        return _read_folder(path, shape[0], shape[-1], resize, "--cond")
    if path.suffix != ".npz" or not path.is_file():
        raise UserError(f"--cond {path}: expected a folder of images or an existing .npz file")
    with np.load(path) as npz:
        key = "cond" if "cond" in npz.files else "arr_0"
        if key not in npz.files:
            raise UserError(f"--cond {path}: no 'cond' or 'arr_0' array in the file")
        array = npz[key]
    if array.dtype == np.uint8 and array.ndim == 4:
        items = torch.from_numpy(array).permute(0, 3, 1, 2).float() / 127.5 - 1     # (M, C, H, W) in [-1, 1]
    else:
        items = torch.from_numpy(np.asarray(array, dtype=np.float32))
    if tuple(items.shape[1:]) != tuple(shape) or len(items) == 0:
        raise UserError(f"--cond {path}: '{key}' holds items of shape {tuple(items.shape[1:])}, the model needs {tuple(shape)}")
    return lambda indices: items[[int(i) % len(items) for i in indices]]


def condition_source(model: LoadedModel, cond: Path | str | None) -> Conditions:
    """The conditions of a bridge model: a folder or .npz, `data:train` / `data:test` (a split of the model's
    recorded data), or by default its held-out 'test' split. Folder images are resized as the model's data
    resized its conditions (`data.resize_cond`, else `data.resize`)."""
    if cond is None or str(cond) in DATA_SPLITS:
        return data_conds(model.meta, DATA_SPLITS.get(str(cond), "test"))
    shape = (model.meta.get("cond_channels", 0), *model.shape[1:])
    data = model.meta.get("data") or {}
    return file_conds(Path(cond), shape, data.get("resize_cond") or data.get("resize") or "bilinear")


def file_masks(path: Path, shape: tuple[int, ...]) -> Masks:
    """Masks (N, 1, H, W) for images of `shape` (C, H, W) from one image file (every sample) or a folder of them
    (sorted names, item i mod M): white (>= 128 of 255) is the hole, generated; resized nearest, centre-cropped."""
    from fsg.data.images import ImageFile, is_image_name, resize_square, to_unit

    path = Path(path)
    if path.is_dir():
        read = _read_folder(path, 1, shape[-1], "nearest", "--mask")
        return lambda indices: (read(indices) >= 0).float()        # 128 / 127.5 - 1 > 0 > 127 / 127.5 - 1
    if not path.is_file() or not is_image_name(path.name):
        raise UserError(f"--mask {path}: expected an image file (white = the hole) or a folder of them")
    hole = (resize_square(to_unit(ImageFile(path.parent, path.name).read(1)), shape[-1], "nearest") >= 0).float()
    return lambda indices: hole[None].expand(len(indices), *hole.shape)


def mask_source(model: LoadedModel, conds: Conditions, mask: Path | str | None = None) -> tuple[Masks | None, str | None]:
    """The inpainting masks (1 on the hole) of a bridge model's samples and what they are, or (None, None):
    `mask` (an image file or a folder, see `file_masks`), else the model's data: `data.degrade: mask-center`
    (the centred square, for any condition) or `mask-strokes` (each item's strokes; known for the model's own
    data splits only)."""
    shape = model.shape
    if mask is not None:
        if len(shape) != 3:
            raise UserError(f"--mask: this model's samples are {shape[0]}-D points, not images")
        return file_masks(Path(mask), shape), str(mask)
    degradation = (model.meta.get("data") or {}).get("degrade") or ""
    if not degradation.startswith("mask-"):
        return None, None
    if isinstance(conds, DataConds):
        return conds.masks, degradation
    if degradation == "mask-center":
        from fsg.data.degrade import make_mask
        hole = make_mask("center", shape)
        return (lambda indices: hole[None].expand(len(indices), *shape)), degradation
    raise UserError(f"--cond: this model fills free-form holes ({degradation}) known only for its own data: "
                    "give them with --mask FILE.png|DIR, or use --cond data:test|data:train")


def default_mask(model: LoadedModel, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The hole of every condition of the model, when its data fixes one (`data.degrade: mask-center`), for
    images of `shape` (..., C, H, W); else None."""
    from fsg.data.degrade import make_mask

    if len(shape) < 3 or (model.meta.get("data") or {}).get("degrade") != "mask-center":
        return None
    return make_mask("center", tuple(shape))


# ------------------------------------------------------------------------------------------- interpolation

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
    if not isinstance(plan, BridgePlan):
        raise UserError(f"interpolation in data space needs a bridge sampler; '{plan.name}' is not one")
    ends = [SampleNoise(s, [0], device) for s in seeds]
    labels = None
    num_classes = model.meta.get("num_classes", 0)
    if num_classes:   # as in `fsg sample`, a stream draws its class first; the path takes the first endpoint's
        drawn = [int(e.randint(num_classes)[0]) for e in ends][0]
        labels = torch.full((n_points,), drawn if class_label is None else class_label, device=device)
    alpha = torch.linspace(0, 1, n_points, dtype=torch.float64)
    y = cond.to(device).float()[None].expand(n_points, *cond.shape)              # (P, *cond.shape)
    denoise = CountingDenoiser(model.denoiser, cond=y, labels=labels, clip=plan.clip and y.ndim == 4)
    noise = SlerpNoise(*ends, alpha)
    if mask is None:
        mask = default_mask(model, tuple(cond.shape))
    masks = None if mask is None else mask.to(device)[None].expand(n_points, *mask.shape)
    x = plan.run(denoise, plan.initial(noise, tuple(y.shape), y), noise, mask=masks).float()
    return (x.clamp(-1, 1) if x.ndim == 4 else x), denoise.nfe
