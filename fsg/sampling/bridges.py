"""Image-to-image samplers of bridge models: DDBM's hybrid sampler, DBIM (eta; 2nd/3rd order) and CDBM.

Each starts from the condition, x_T = y, and follows the sampler contract of `fsg.sampling.samplers`,
`sample_X(denoise, x, times, noise, process, **knobs) -> x`, with `denoise(x, t)` returning x0_hat for the
batch's conditions. NFE, counted by `CountingDenoiser` (the boot evaluation included):

    hybrid (steps N, Karras grid of N points + 0)          3N - 1   (2N - 1 with churn_step_ratio = 0)
    dbim, dbim2, dbim3 (steps = NFE = N + 1, N updates)     N + 1
    cdbm (steps = NFE = K >= 2)                             K

Knobs (`fsg sample` options, `fsg.sampling.plan.KNOB_OPTIONS`): `eta` of dbim (--eta),
`churn_step_ratio` (--churn-step-ratio) and the h-term weight `w` (--guidance of a bridge model) of hybrid.

Inpainting: given a mask (1 on the hole), every sampler composes each x0 estimate with the known pixels of y
and returns x * mask + y * (1 - mask) (`keep_known`), so the known pixels come out exactly as in y; the NFE is
unchanged. `fsg.data.conditions` reads the conditions and masks (`--cond`, `--mask`, the model's data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Sequence

import torch

from fsg.core.bridges import (HYBRID_START_OFFSET, BridgeProcess, bridge_sample, dbim_high_order_step, dbim_step,
                              euler_maruyama_step, keep_known)
from fsg.core.schedules import karras_sigmas
from fsg.errors import UserError
from fsg.models.load import LoadedModel
from fsg.sampling.plan import SamplerPlan, SamplerSpec


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
        d = process.reverse_drift(x, y, denoise(x, t_hat), t_hat, w=w)
        x_next = x + (t_next - t_hat) * d
        if t_next > 0:  # Apply 2nd order correction.
            d_prime = process.reverse_drift(x_next, y, denoise(x_next, t_next), t_next, w=w)
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


# ------------------------------------------------------------------------------------------- plans

@dataclass
class BridgePlan(SamplerPlan):
    """A bridge sampler: starts from the condition and passes the process (and a mask, for inpainting) to the sampler."""

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
        return self.sample_fn(denoise, x, self.times, noise, self.process, mask=mask, **self.knobs)


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


def plan_hybrid(model: LoadedModel, steps: int | None, churn_step_ratio: float | None = None,
                w: float | None = None) -> BridgePlan:
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
    return BridgePlan("hybrid", times, {"churn_step_ratio": s, "w": w}, clip=True, process=p, sample_fn=sample_hybrid)


def _plan_dbim(name: str, sample_fn, knob_names: tuple[str, ...]):
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
        return BridgePlan(name, _uniform_grid(p, nfe), chosen, clip=True, process=p, sample_fn=sample_fn)
    return plan


def plan_cdbm(model: LoadedModel, steps: int | None, times: Sequence[float] | None = None) -> BridgePlan:
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
        return BridgePlan("cdbm", torch.cat([calls.new_tensor([p.T]), calls]), {}, clip=True, process=p,
                          sample_fn=sample_cdbm)
    k = steps if steps is not None else 2
    if k < 2:
        raise UserError("cdbm: --steps is the NFE, at least 2 (the boot evaluation and one consistency call)")
    grid = torch.linspace(p.T - p.gamma, p.t_min, k, dtype=torch.float64)[:-1]      # K - 1 calls
    return BridgePlan("cdbm", torch.cat([grid.new_tensor([p.T]), grid]), {}, clip=True, process=p, sample_fn=sample_cdbm)


BRIDGES = ("bridge-vp", "bridge-ve", "bridge-i2sb")
HYBRID = SamplerSpec(plan_hybrid, ("churn_step_ratio", "w"), BRIDGES, ("diffusion",),
                     "DDBM's hybrid SDE/ODE sampler (Algorithm 1 of Zhou et al. 2024)", lambda n: 3 * n - 1, needs="conditions")
DBIM = SamplerSpec(_plan_dbim("dbim", sample_dbim, ("eta",)), ("eta",), BRIDGES, ("diffusion",),
                   "diffusion bridge implicit sampler (Zheng et al. 2025)", lambda n: n, needs="conditions")
DBIM2 = SamplerSpec(_plan_dbim("dbim2", partial(sample_dbim_high_order, order=2), ()), (), BRIDGES, ("diffusion",),
                    "DBIM's 2nd-order multistep solver", lambda n: n, needs="conditions")
DBIM3 = SamplerSpec(_plan_dbim("dbim3", partial(sample_dbim_high_order, order=3), ()), (), BRIDGES, ("diffusion",),
                    "DBIM's 3rd-order multistep solver", lambda n: n, needs="conditions")
CDBM = SamplerSpec(plan_cdbm, ("times",), BRIDGES, ("consistency",),
                   "consistency bridge sampling (Sec. 3.4 of He et al. 2024)", lambda n: n, needs="conditions")
