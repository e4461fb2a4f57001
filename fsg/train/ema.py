"""Evaluation EMAs of the model weights: several rates at once, or one by half-life."""

from __future__ import annotations

import copy

import torch
from torch import nn


def halflife_rate(halflife_steps: float, every: int = 1) -> float:
    """beta such that beta^(halflife/every) = 1/2: the weight of a step halves after `halflife_steps`."""
    return 0.5 ** (every / halflife_steps)


class EMAs:
    """Shadow copies theta_ema <- beta theta_ema + (1 - beta) theta, updated every `every` steps."""

    def __init__(self, model: nn.Module, rates: tuple[float, ...], every: int = 1, start: int = 0):
        self.rates, self.every, self.start = tuple(rates), every, start
        self.shadows = [copy.deepcopy(model).eval().requires_grad_(False) for _ in self.rates]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Called after optimizer step `step` (0-based)."""
        if (step + 1) % self.every:
            return
        for rate, shadow in zip(self.rates, self.shadows):
            beta = 0.0 if step < self.start else rate
            for p_e, p in zip(shadow.parameters(), model.parameters()):
                p_e.lerp_(p.detach(), 1 - beta)
            for b_e, b in zip(shadow.buffers(), model.buffers()):
                b_e.copy_(b)

    def state_dict(self) -> list[dict]:
        return [s.state_dict() for s in self.shadows]

    def load_state_dict(self, states: list[dict]) -> None:
        for s, st in zip(self.shadows, states):
            s.load_state_dict(st)

    def to(self, device) -> "EMAs":
        for s in self.shadows:
            s.to(device)
        return self
