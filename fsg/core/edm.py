"""Forward processes of the EDM family: the marginal x_t = x0 + sigma(t) eps and its PF-ODE, with time = sigma.

Both processes here use the noise level sigma as their time, so their PF-ODE is dx/dsigma = (x - D(x, sigma)) /
sigma (Eq. 3 of Karras et al. 2022 with s(t) = 1, sigma(t) = t), and they differ in the training distribution,
the loss weight and the preconditioning (Table 1 of Karras et al. 2022).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch

from fsg.core.process import randn


def ve_ode_drift(x: torch.Tensor, x0_hat: torch.Tensor, t) -> torch.Tensor:
    """d = (x - D(x; t)) / t, the PF-ODE slope of x_t = x0 + t eps (Eq. 3 of Karras et al. 2022)."""
    return (x - x0_hat) / t


@dataclass(frozen=True)
class EDMProcess:
    """Variance-exploding process with EDM's training distribution and scalings (Karras et al. 2022)."""

    name: Literal["edm"] = "edm"
    sigma_min: Annotated[float, "(0, inf)"] = 0.002   # smallest noise level of the sampling grid (and the consistency boundary)
    sigma_max: Annotated[float, "(0, inf)"] = 80.0    # largest noise level; the prior is N(0, sigma_max^2 I)
    sigma_data: Annotated[float, "(0, inf)"] = 0.5    # expected standard deviation of the data
    rho: Annotated[float, "(0, inf)"] = 7.0           # Karras schedule exponent
    P_mean: float = -1.2                              # mean of ln(sigma) during training
    P_std: Annotated[float, "[0, inf)"] = 1.2         # std of ln(sigma) during training

    @property
    def t_min(self) -> float:
        return self.sigma_min

    @property
    def t_max(self) -> float:
        return self.sigma_max

    def marginal(self, t: torch.Tensor):
        """(alpha, beta, sigma) of x_t = alpha x0 + beta y + sigma eps: here (1, 0, t)."""
        return torch.ones_like(t), torch.zeros_like(t), t

    def train_times(self, n: int, gen: torch.Generator | None, device=None) -> torch.Tensor:
        """ln(sigma) ~ N(P_mean, P_std^2) (Sec. 5 of Karras et al. 2022)."""
        return (self.P_mean + self.P_std * randn((n,), gen, device)).exp()

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Table 1 of Karras et al. 2022)."""
        return (t**2 + self.sigma_data**2) / (t * self.sigma_data) ** 2

    def scalings(self, t: torch.Tensor):
        """c_skip, c_out, c_in, c_noise of EDM (Table 1 of Karras et al. 2022)."""
        sd = self.sigma_data
        c_skip = sd**2 / (t**2 + sd**2)
        c_out = t * sd / (t**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + t**2).sqrt()
        c_noise = t.log() / 4
        return c_skip, c_out, c_in, c_noise

    def consistency_scalings(self, t: torch.Tensor):
        return consistency_scalings(t, self.sigma_data, self.sigma_min)

    def ode_drift(self, x: torch.Tensor, x0_hat: torch.Tensor, t, cond=None) -> torch.Tensor:
        return ve_ode_drift(x, x0_hat, t)


@dataclass(frozen=True)
class VPProcess:
    """Variance-preserving process of Song et al. 2021 in EDM's sigma form (Table 1 of Karras et al. 2022).

    sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1); training draws t ~ U(epsilon_t, 1).
    """

    name: Literal["vp"] = "vp"
    beta_d: float = 19.9         # extent of the noise level schedule
    beta_min: float = 0.1        # initial slope of the noise level schedule
    epsilon_t: float = 1e-5      # minimum t during training
    M: int = 1000                # original number of timesteps of the DDPM formulation
    sigma_data: float = 0.5      # used only by consistency scalings built on this process
    rho: float = 7.0             # Karras schedule exponent used for sampling

    def sigma(self, t):
        t = torch.as_tensor(t, dtype=torch.float64) if not torch.is_tensor(t) else t
        return (0.5 * self.beta_d * t**2 + self.beta_min * t).exp().sub(1).sqrt()

    def sigma_inv(self, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64) if not torch.is_tensor(sigma) else sigma
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(self.epsilon_t))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(1.0))

    t_min = sigma_min
    t_max = sigma_max

    def marginal(self, t: torch.Tensor):
        return torch.ones_like(t), torch.zeros_like(t), t

    def train_times(self, n: int, gen: torch.Generator | None, device=None) -> torch.Tensor:
        u = torch.rand((n,), generator=gen, device=gen.device if gen is not None else "cpu").to(device)
        return self.sigma(1 + u * (self.epsilon_t - 1))

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = 1 / sigma^2 (Table 1 of Karras et al. 2022, VP column)."""
        return 1 / t**2

    def scalings(self, t: torch.Tensor):
        """VP preconditioning: c_skip = 1, c_out = -sigma, c_in = 1/sqrt(sigma^2 + 1), c_noise = (M-1) t(sigma)."""
        c_skip = torch.ones_like(t)
        c_out = -t
        c_in = 1 / (t**2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(t)
        return c_skip, c_out, c_in, c_noise

    def consistency_scalings(self, t: torch.Tensor):
        return consistency_scalings(t, self.sigma_data, self.sigma_min)

    def ode_drift(self, x: torch.Tensor, x0_hat: torch.Tensor, t, cond=None) -> torch.Tensor:
        return ve_ode_drift(x, x0_hat, t)


def consistency_scalings(t: torch.Tensor, sigma_data: float, sigma_min: float):
    """Boundary-condition scalings so that f(x, sigma_min) = x exactly (Appendix C of Song et al. 2023).

    c_skip = sd^2 / ((t - eps)^2 + sd^2), c_out = (t - eps) sd / sqrt(t^2 + sd^2), c_in = 1/sqrt(t^2 + sd^2),
    c_noise = ln(t) / 4 (the reference's 250 ln t up to the network's fixed scale of 1000).
    """
    sd = sigma_data
    c_skip = sd**2 / ((t - sigma_min) ** 2 + sd**2)
    c_out = (t - sigma_min) * sd / (t**2 + sd**2).sqrt()
    c_in = 1 / (t**2 + sd**2).sqrt()
    c_noise = t.log() / 4
    return c_skip, c_out, c_in, c_noise
