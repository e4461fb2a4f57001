"""Post-hoc EMA: power-function EMA profiles, their snapshots during training, and the reconstruction of a profile of
another length afterwards (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models",
with its equation numbers as NVlabs/edm2 `training/phema.py` cites them; `reconstruct_phema.py`).

A power-function EMA at step t averages the weights of the steps tau in (0, t] with the density

    p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)                                     (Eq. 108, 121)

whose relative standard deviation sigma_rel = std(tau) / t fixes gamma (`exp_to_std`, `std_to_exp`). It is tracked
online by theta_ema <- beta_t theta_ema + (1 - beta_t) theta with beta_t = (1 - 1/t)^(gamma + 1), t the number of
steps done (Eq. 127 with time counted in steps). The weight this gives the weights of step tau is exactly the mass of
p_t on (tau - 1, tau]: prod_{s > tau} beta_s = (tau / t)^(gamma + 1), times 1 - beta_tau.

Every `every` steps the engine stores each tracked profile as a model file (`phema/phema-<step>-<std>.safetensors`).
Any profile (t_out, sigma_out) is then the combination sum_i x_i theta_i of stored snapshots that is closest to it in
L2 over tau (Alg. 3): the Gram matrix of the stored profiles and their inner products with the wanted
one give x by a linear solve, renormalised to sum 1. Time is counted in optimizer steps; the paper counts images,
which for a constant batch only rescales time and leaves sigma_rel and the coefficients unchanged.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from fsg.errors import UserError
from fsg.io.checkpoint import save_model

MAX_STD = math.sqrt(1 / 12)       # sigma_rel of gamma = 0, the uniform average of all steps: the largest there is
SNAPSHOT_DIR = "phema"
SNAPSHOT_PATTERN = re.compile(r"phema-(\d+)-(\d+\.\d+)\.safetensors$")


@dataclass(frozen=True)
class PhemaConfig:
    """`train.phema`: power-function EMAs tracked during training and stored every `every` steps."""

    stds: tuple[float, ...] = (0.05, 0.10)   # relative stds sigma_rel of the tracked profiles (EDM2: 0.050, 0.100)
    every: int = 4096                        # steps between snapshots (EDM2: every 8Mi images = 4096 steps of 2048)


def check_config(cfg: PhemaConfig) -> None:
    if not cfg.stds or not all(0 < s < MAX_STD for s in cfg.stds):
        raise UserError(f"train.phema.stds: relative stds lie in (0, {MAX_STD:.4f}), got {list(cfg.stds)}")
    if cfg.every < 1:
        raise UserError(f"train.phema.every: must be at least 1, got {cfg.every}")


# ------------------------------------------------------------------------------------------------- profiles

def exp_to_std(gamma: float) -> float:
    """sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))), the std of tau / t under p_t (Eq. 123)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def std_to_exp(std: float) -> float:
    """The gamma of sigma_rel: the largest real root of gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2)
    (Eq. 123 solved for gamma; Eq. 126, Alg. 2)."""
    tau = 1 / std**2
    return float(np.roots([1.0, 7.0, 16.0 - tau, 12.0 - tau]).real.max())


def ema_beta(gamma: float, t: int) -> float:
    """beta_t = (1 - 1/t)^(gamma + 1): the update after step t (1-based) that tracks p_t (Eq. 127); beta_1 = 0."""
    return (1 - 1 / t) ** (gamma + 1)


def profile_inner_product(t_a, std_a, t_b, std_b):
    """integral of p_a(tau) p_b(tau) over tau of two power-function profiles ending at t_a and t_b (Eq. 151, Alg. 3):
    (g_a + 1)(g_b + 1) / (g_a + g_b + 1) * m^(g_a + g_b + 1) / (t_a^(g_a + 1) t_b^(g_b + 1)), m = min(t_a, t_b),
    written with ratios m / t <= 1 so that large exponents cannot overflow. Arrays broadcast."""
    t_a, t_b = np.asarray(t_a, dtype=np.float64), np.asarray(t_b, dtype=np.float64)
    g_a, g_b = _exponents(std_a), _exponents(std_b)
    m = np.minimum(t_a, t_b)
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * (m / t_a) ** (g_a + 1) * (m / t_b) ** (g_b + 1) / m


def _exponents(stds) -> np.ndarray:
    """std_to_exp of each std, solved once per distinct value."""
    stds = np.asarray(stds, dtype=np.float64)
    unique, inverse = np.unique(stds, return_inverse=True)
    return np.array([std_to_exp(s) for s in unique.tolist()])[inverse].reshape(stds.shape)


def posthoc_coefficients(in_steps, in_stds, out_steps, out_stds) -> np.ndarray:
    """X (n_in, n_out): the profile (out_steps[k], out_stds[k]) is approximated by sum_i X[i, k] p_(in_i), the least
    squares fit over tau (normal equations A X = B with A the Gram matrix of the inputs), each column renormalised
    to sum 1 so that the reconstruction is a weighted average (EDM2 `solve_posthoc_coefficients`)."""
    t_in, s_in = np.asarray(in_steps, dtype=np.float64)[:, None], np.asarray(in_stds, dtype=np.float64)[:, None]
    t_out, s_out = np.asarray(out_steps, dtype=np.float64)[None, :], np.asarray(out_stds, dtype=np.float64)[None, :]
    gram = profile_inner_product(t_in, s_in, t_in.T, s_in.T)                # (n_in, n_in)
    cross = profile_inner_product(t_in, s_in, t_out, s_out)                 # (n_in, n_out)
    x = np.linalg.solve(gram, cross)
    return x / x.sum(axis=0, keepdims=True)


# -------------------------------------------------------------------------------------- during training

def snapshot_path(folder: Path, step: int, std: float) -> Path:
    return Path(folder) / f"phema-{step:08d}-{std:.3f}.safetensors"


class PostHocEMA:
    """Power-function EMAs of `model` (a Denoiser), one per std, in eval mode; every `cfg.every` steps each is written
    to `folder` as a model file with `meta` plus {"step", "phema": {"std", "step"}} (no writes when folder is None:
    the ranks other than 0)."""

    def __init__(self, model: nn.Module, cfg: PhemaConfig, folder: Path | None, meta: dict[str, Any]):
        check_config(cfg)
        self.cfg, self.folder, self.meta = cfg, folder, meta
        self.gammas = [std_to_exp(s) for s in cfg.stds]
        self.shadows = [copy.deepcopy(model).eval().requires_grad_(False) for _ in cfg.stds]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """After optimizer step `step` (0-based): t = step + 1 steps are done."""
        t = step + 1
        for gamma, shadow in zip(self.gammas, self.shadows):
            beta = ema_beta(gamma, t)
            for p_e, p in zip(shadow.parameters(), model.parameters()):
                p_e.lerp_(p.detach(), 1 - beta)
            for b_e, b in zip(shadow.buffers(), model.buffers()):
                b_e.copy_(b)
        if self.folder is not None and t % self.cfg.every == 0:
            for std, shadow in zip(self.cfg.stds, self.shadows):
                meta = dict(self.meta, step=t, phema={"std": std, "step": t})
                save_model(snapshot_path(self.folder, t, std), shadow.net.state_dict(), meta)

    def state_dict(self) -> list[dict]:
        return [s.state_dict() for s in self.shadows]

    def load_state_dict(self, states: list[dict]) -> None:
        for s, st in zip(self.shadows, states):
            s.load_state_dict(st)

    def to(self, device) -> "PostHocEMA":
        for s in self.shadows:
            s.to(device)
        return self


# ---------------------------------------------------------------------------------------- reconstruction

def list_snapshots(folder: Path) -> list[tuple[int, float, Path]]:
    """(step, std, path) of every snapshot in `folder`, sorted by step then std."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no post-hoc EMA snapshots here (a run trained with train.phema keeps them in "
                        f"RUN/{SNAPSHOT_DIR})")
    found = [(int(m.group(1)), float(m.group(2)), p) for p in folder.iterdir() if (m := SNAPSHOT_PATTERN.search(p.name))]
    return sorted(found, key=lambda s: (s[0], s[1]))


def reconstruction_plan(snapshots: list[tuple[int, float, Path]], std: float,
                        step: int | None = None) -> tuple[int, list[tuple[float, Path]]]:
    """(step, [(coefficient, path), ...]) of the profile (step, std) from the snapshots up to that step (None: the
    last snapshot's step; EDM2 reconstructs at a snapshot's step only, where the inputs end)."""
    if not 0 < std < MAX_STD:
        raise UserError(f"--std: a relative std lies in (0, {MAX_STD:.4f}), got {std:g}")
    if not snapshots:
        raise UserError("no post-hoc EMA snapshots to reconstruct from")
    steps = sorted({s for s, _, _ in snapshots})
    step = steps[-1] if step is None else step
    if step not in steps:
        raise UserError(f"--step {step}: reconstructions are made at a snapshot's step ({', '.join(map(str, steps))})")
    used = [(s, sd, p) for s, sd, p in snapshots if s <= step]
    x = posthoc_coefficients([s for s, _, _ in used], [sd for _, sd, _ in used], [step], [std])[:, 0]
    return step, [(float(c), p) for c, (_, _, p) in zip(x, used)]


def combine(weighted: Iterable[tuple[float, dict[str, torch.Tensor]]], parameters: set[str]) -> dict[str, torch.Tensor]:
    """sum_i x_i theta_i of the `parameters`, accumulated in float64 and returned in their dtype, over (x_i, state_i)
    pairs taken one at a time (a generator may read each snapshot only when it is needed); buffers come from the
    last input, as EDM2's `reconstruct_phema` takes them."""
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for coef, state in weighted:
        for name, value in state.items():
            dtypes[name] = value.dtype
            if name in parameters:
                total[name] = total[name] + coef * value.double() if name in total else coef * value.double()
            else:
                total[name] = value
    return {name: value.to(dtypes[name]) for name, value in total.items()}
