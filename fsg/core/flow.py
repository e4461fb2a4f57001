"""The linear flow path of flow matching and flow maps (Lipman et al. 2023; Liu et al. 2023; MeanFlow, Geng et al.
2025, Sec. 3): z_t = (1 - t) x + t eps, t in [0, 1] (t = 0 data, t = 1 noise), conditional velocity v = eps - x.

Without preconditioning (as MeanFlow): the network predicts a velocity F(z, t) directly, x0_hat = z - t F, so the
PF-ODE is dz/dt = F = (z - x0_hat) / t. A flow map (a two-time network, MeanFlow's average velocity u(z, r, t))
jumps from t to r < t in one call: z_r = z_t - (t - r) u(z_t, r, t) (Eq. 12 of Geng et al. 2025), which is
`jump_scalings(t, r)` below; at r = 0 that is the data estimate, at r = t the instantaneous velocity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fsg.core.process import randn


@dataclass(frozen=True)
class FlowProcess:
    name: Literal["flow"] = "flow"
    P_mean: float = -0.4             # training times: t = sigmoid(n), n ~ N(P_mean, P_std^2) (logit-normal)
    P_std: float = 1.0
    sigma_data: float = 0.5          # unused by the flow's scalings (no preconditioning); kept for tools that read it

    @property
    def t_min(self) -> float:
        return 0.0

    @property
    def t_max(self) -> float:
        return 1.0

    def marginal(self, t: torch.Tensor):
        """(alpha, beta, sigma) = (1 - t, 0, t)."""
        return 1 - t, torch.zeros_like(t), t

    def train_times(self, n: int, gen: torch.Generator | None, device=None) -> torch.Tensor:
        """t = sigmoid(n), n ~ N(P_mean, P_std^2): the logit-normal of Sec. 4.3 of Geng et al. 2025."""
        return torch.sigmoid(self.P_mean + self.P_std * randn((n,), gen, device))

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """1 / t^2: lambda ||D - x0||^2 = ||F - v||^2, the flow-matching velocity loss (D - x0 = t (v - F))."""
        return 1 / t**2

    def jump_scalings(self, t: torch.Tensor, r: torch.Tensor):
        """c_skip, c_out, c_in, c_noise of the jump z_r = z_t - (t - r) F(z_t, t, h = t - r): (1, -(t - r), 1, t)."""
        return torch.ones_like(t), -(t - r), torch.ones_like(t), t

    def scalings(self, t: torch.Tensor):
        """The jump to r = 0: x0_hat = z - t F."""
        return self.jump_scalings(t, torch.zeros_like(t))

    def consistency_scalings(self, t: torch.Tensor):
        """The same: f(z, 0) = z holds for the parameterisation itself."""
        return self.scalings(t)

    def ode_drift(self, x: torch.Tensor, x0_hat: torch.Tensor, t, cond=None) -> torch.Tensor:
        """dz/dt = (z - x0_hat) / t (= eps_hat - x0_hat along the path)."""
        return (x - x0_hat) / t
