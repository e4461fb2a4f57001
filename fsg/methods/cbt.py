"""Consistency bridge training (CBT, Eq. 19-20 of He et al. 2024): no teacher.

The teacher's score in the ODE-1 step is replaced by its one-sample unbiased estimate, which turns the
target point into the bridge sample at r with the same noise:

    x_t = a_t y + b_t x0 + c_t z,   x_hat_r = a_r y + b_r x0 + c_r z,
    L = lambda(t) d(h_theta(x_t, t, y), h_theta^-(x_hat_r, r, y)).

In practice CBT fine-tunes a DDBM (`fsg train-consistency --init ddbm`); without --init it trains from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fsg.core.bridges import bridge_sample
from fsg.methods.cbd import BridgeConsistencyConfig, BridgeConsistencyMethod


@dataclass(frozen=True)
class CBTConfig(BridgeConsistencyConfig):
    name: Literal["cbt"] = "cbt"
    schedule: Literal["constant", "sigmoid"] = "sigmoid"   # CBT's default: the shrinking gap (b 20 or 50 work)


class CBTMethod(BridgeConsistencyMethod):
    name = "cbt"
    config = CBTConfig
    command = "train-consistency"

    def target_point(self, batch, x_t, t, r, z):
        """x_hat_r = a_r y + b_r x0 + c_r z with the z of x_t (Eq. 19 of He et al. 2024)."""
        return bridge_sample(self.process, batch["x"], batch["cond"], r, z)
