"""2-D toy distributions, each scaled so that its mean per-coordinate variance is about 1.

Scales (chosen by hand from the closed-form moments, so a network with sigma_data = 1 sees unit data):
- `moons`: two interleaved half circles of radius 1, (cos t, sin t) and (1 - cos t, 1/2 - sin t) with
  t ~ U[0, pi], plus N(0, 0.05^2) noise; centred at their mean (1/2, 1/4) and scaled by sqrt(2)
  (raw variances 0.75 and 0.245 per coordinate).
- `8gaussians`: eight N(mu_k, 0.1^2 I) with mu_k on the circle of radius sqrt(2) at angles k pi/4
  (variance 1.01 per coordinate).
- `checkerboard`: uniform on the 8 dark cells of a 4x4 board on [-sqrt(3), sqrt(3)]^2; each marginal is
  uniform on that interval (variance exactly 1).
- `swissroll`: (t cos t, t sin t) with t ~ U[3pi/2, 9pi/2] plus N(0, 0.25^2) noise, centred at its mean
  (2, 2 / (3 pi)) and scaled by 0.15 (raw mean per-coordinate variance about 46).
"""

from __future__ import annotations

import math

import torch

from fsg.errors import UserError

TOY_NAMES = ("moons", "8gaussians", "checkerboard", "swissroll")


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def _moons(n: int, generator: torch.Generator) -> torch.Tensor:
    t = _uniform(n, 0.0, math.pi, generator)
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    points = torch.stack([x, y], 1) + 0.05 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return (points - points.new_tensor([0.5, 0.25])) * math.sqrt(2)


def _eight_gaussians(n: int, generator: torch.Generator) -> torch.Tensor:
    angle = torch.randint(0, 8, (n,), generator=generator).double() * (math.pi / 4)
    centers = math.sqrt(2) * torch.stack([torch.cos(angle), torch.sin(angle)], 1)  # (n, 2)
    return centers + 0.1 * torch.randn(n, 2, generator=generator, dtype=torch.float64)


def _checkerboard(n: int, generator: torch.Generator) -> torch.Tensor:
    x = _uniform(n, -2.0, 2.0, generator)
    column = torch.floor(x + 2)
    # Dark cells have row + column even: pick one of the two rows of the column's parity.
    row = 2 * torch.randint(0, 2, (n,), generator=generator).double() + column % 2
    y = -2 + row + torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.stack([x, y], 1) * (math.sqrt(3) / 2)


def _swissroll(n: int, generator: torch.Generator) -> torch.Tensor:
    t = _uniform(n, 1.5 * math.pi, 4.5 * math.pi, generator)
    points = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1)
    points = points + 0.25 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return (points - points.new_tensor([2.0, 2 / (3 * math.pi)])) * 0.15


_GENERATORS = {"moons": _moons, "8gaussians": _eight_gaussians, "checkerboard": _checkerboard, "swissroll": _swissroll}


def sample_toy(name: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """n fresh points (n, 2) float32 of the toy `name` ('moons' or 'toy:moons'), drawn from `generator`."""
    key = name.removeprefix("toy:")
    if key not in _GENERATORS:
        raise UserError(f"unknown toy data set '{name}' (choose {', '.join(TOY_NAMES)})")
    return _GENERATORS[key](n, generator).float()
