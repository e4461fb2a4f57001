"""Diffusion bridges (DDBM, DBIM, CDBM, I2SB): the bridge marginal, its preconditioning, PF-ODE and solver steps.

A bridge pins a reference diffusion dx = f(t) x dt + g(t) dW at x_T = y (the condition image). In the
unified notation of Sec. 3.1 of He et al. 2024 (CDBM, Eq. 11), with alpha_t = exp(int_0^t f),
rho_t^2 = int_0^t g^2 / alpha^2, rho_bar_t^2 = rho_T^2 - rho_t^2 and alpha_bar_t = alpha_t / alpha_T,
the marginal is q(x_t | x0, y) = N(a_t y + b_t x0, c_t^2 I) with (Eq. 12 of CDBM)

    a_t = alpha_bar_t rho_t^2 / rho_T^2,   b_t = alpha_t rho_bar_t^2 / rho_T^2,   c_t = alpha_t rho_bar_t rho_t / rho_T,

so x_t = x0 at t = 0 and x_t = y at t = T. A process here is a frozen dataclass (its `process:` recipe
section) that says alpha, rho and f, g^2; everything else is shared by `BridgeProcess`. Times are floats
in [t_min, T], T = t_max; the network predicts x0 (DDBM's preconditioning, or I2SB's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from fsg.core.process import append_dims, float64, uniform_times
from fsg.core.schedules import ect_r

HYBRID_START_OFFSET = 1e-4   # DDBM's hybrid sampler starts at T - 1e-4 (DDBM `karras_sample`)


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A coefficient for x: a scalar as is, a per-sample vector (N,) as (N, 1, ..., 1); in x's dtype."""
    v = v.to(x.dtype)
    return v if v.ndim == 0 else append_dims(v, x.ndim)


class BridgeProcess:
    """What every bridge schedule shares. A subclass defines `alpha_rho(t)` -> (alpha_t, alpha_bar_t, rho_t,
    rho_bar_t), `f_g2(t)` -> (f(t), g^2(t)) and `precondition(t_out, t_in)`, all on float64 tensors, and the
    fields t_min, t_max (= T) and gamma."""

    default_sampler = "dbim"
    default_steps = 20             # DBIM: NFE 20 (the headline setting of Zheng et al. 2025)

    @property
    def T(self) -> float:
        return self.t_max

    # ---------------------------------------------------------------- marginal
    def coefficients(self, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a_t, b_t, c_t) of x_t = a_t y + b_t x0 + c_t eps (Eq. 12 of He et al. 2024), computed in float64 and
        returned in t's dtype (float64 for a Python float)."""
        t = t if torch.is_tensor(t) else float64(t)
        alpha, alpha_bar, rho, rho_bar = self.alpha_rho(t.double())
        rho_T2 = rho**2 + rho_bar**2
        a = alpha_bar * rho**2 / rho_T2
        b = alpha * rho_bar**2 / rho_T2
        c = alpha * rho_bar * rho / rho_T2.sqrt()
        return a.to(t.dtype), b.to(t.dtype), c.to(t.dtype)

    def marginal(self, t: torch.Tensor):
        """(alpha, beta, sigma) of fsg's x_t = alpha x0 + beta y + sigma eps: here (b_t, a_t, c_t)."""
        a, b, c = self.coefficients(t)
        return b, a, c

    def train_times(self, n: int, gen: torch.Generator | None, device=None) -> torch.Tensor:
        """t ~ U[t_min, t_max] (DDBM's `real-uniform` sampler)."""
        return uniform_times(self, n, gen, device)

    # ---------------------------------------------------------------- preconditioning
    def scalings(self, t: torch.Tensor):
        """c_skip, c_out, c_in, c_noise of D(x_t, t, y) = c_skip x_t + c_out F(c_in x_t, c_noise; y)."""
        return self.precondition(t, t)

    def consistency_scalings(self, t: torch.Tensor):
        """Time-shifted scalings of CDBM (Sec. 3.4 of He et al. 2024): c_skip, c_out at t - t_min, so that
        c_skip(t_min) = 1, c_out(t_min) = 0 and h(x_eps, eps, y) = x_eps; c_in, c_noise stay at t."""
        return self.precondition((t - self.t_min).clamp(min=0), t)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = 1 / c_out(t)^2 (DDBM's `bridge_karras` weighting; I2SB: 1 / rho_t^2)."""
        return self.scalings(t)[1] ** -2

    # ---------------------------------------------------------------- PF-ODE and reverse SDE
    def h_term(self, x: torch.Tensor, y: torch.Tensor, t) -> torch.Tensor:
        """h = grad log p(x_T = y | x_t) = -(x_t - alpha_bar_t y) / (alpha_t^2 rho_bar_t^2), the Doob h-transform's term
        (Zhou et al. 2024; DBIM's `get_d`)."""
        alpha, alpha_bar, _, rho_bar = (_per_sample(v, x) for v in self.alpha_rho(float64(t)))
        return -(x - alpha_bar * y) / (alpha**2 * rho_bar**2)

    def score(self, x: torch.Tensor, y: torch.Tensor, x0_hat: torch.Tensor, t) -> torch.Tensor:
        """grad log q(x_t | y) ~ -(x_t - a_t y - b_t D(x_t, t, y)) / c_t^2, the score from a denoiser."""
        a, b, c = (_per_sample(v, x) for v in self.coefficients(float64(t)))
        return -(x - a * y - b * x0_hat) / c**2

    def reverse_drift(self, x: torch.Tensor, y: torch.Tensor, x0_hat: torch.Tensor, t, stochastic: bool = False,
                      w: float = 1.0) -> torch.Tensor:
        """Reverse-time drift f x - g^2 (s - w_h h) (SDE) or f x - g^2 (s / 2 - w_h h) (PF-ODE) of the bridge (Zhou et
        al. 2024; DDBM's `get_d_vp`, DBIM's `get_d`), with s the bridge score and h the h-term; w_h =
        `h_weight(w, stochastic)` applies DDBM's guidance weight w on the h-term as its sampler does for this process
        (w = 1: the exact bridge)."""
        f, g2 = (_per_sample(v, x) for v in self.f_g2(float64(t)))
        s = self.score(x, y, x0_hat, t)
        return f * x - g2 * ((1.0 if stochastic else 0.5) * s - self.h_weight(w, stochastic) * self.h_term(x, y, t))

    def h_weight(self, w: float, stochastic: bool) -> float:
        """The weight of the h-term under guidance w: w in both the ODE and the SDE (DDBM's VP form, `get_d_vp`)."""
        return w

    def ode_drift(self, x: torch.Tensor, x0_hat: torch.Tensor, t, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The bridge's PF-ODE drift (w = 1, the exact bridge); `cond` is y."""
        return self.reverse_drift(x, cond, x0_hat, t)

    def diffusion(self, t) -> torch.Tensor:
        """g(t), the noise scale of the reverse SDE."""
        return self.f_g2(float64(t))[1].sqrt()


class DDBMPreconditioning:
    """EDM's preconditioning generalised to bridges (Zhou et al. 2024; DDBM's `get_bridge_scalings`, DBIM's
    `DDBMPreCond`), generic in (a, b, c):
    A = a^2 s_T^2 + b^2 s_0^2 + 2 a b s_0T + c^2, c_in = 1/sqrt(A), c_skip = (b s_0^2 + a s_0T) / A,
    c_out = sqrt(a^2 (s_T^2 s_0^2 - s_0T^2) + s_0^2 c^2) / sqrt(A), c_noise = ln(t) / 4 (DDBM's 250 ln t up
    to the network's fixed scale of 1000). Needs fields sigma_data (s_0), sigma_data_end (s_T) and cov_xy (s_0T)."""

    @property
    def sigma_T(self) -> float:
        return self.sigma_data if self.sigma_data_end is None else self.sigma_data_end

    def _A(self, a, b, c):
        s0, sT, s0T = self.sigma_data, self.sigma_T, self.cov_xy
        return a**2 * sT**2 + b**2 * s0**2 + 2 * a * b * s0T + c**2

    def precondition(self, t_out: torch.Tensor, t_in: torch.Tensor):
        """c_skip, c_out at t_out; c_in, c_noise at t_in (t_out = t_in for the diffusion scalings)."""
        s0, sT, s0T = self.sigma_data, self.sigma_T, self.cov_xy
        a, b, c = self.coefficients(t_out)
        A = self._A(a, b, c)
        c_skip = (b * s0**2 + a * s0T) / A
        c_out = (a**2 * (sT**2 * s0**2 - s0T**2) + s0**2 * c**2).sqrt() / A.sqrt()
        c_in = self._A(*self.coefficients(t_in)).rsqrt()
        c_noise = t_in.log() / 4
        return c_skip, c_out, c_in, c_noise


@dataclass(frozen=True)
class BridgeVPProcess(DDBMPreconditioning, BridgeProcess):
    """DDBM-VP: alpha_t = exp(-B(t)/2), rho_t^2 = exp(B(t)) - 1 with B(t) = beta_min t + beta_d t^2 / 2,
    f = -(beta_min + beta_d t) / 2, g^2 = beta_min + beta_d t (Table 1 of He et al. 2024). T = t_max = 1
    for DDBM's checkpoints; these fields are what `fsg convert` writes for them."""

    name: Literal["bridge-vp"] = "bridge-vp"
    beta_d: float = 2.0                  # slope of beta(t) (DDBM args.sh; the paper's appendix differs, DDBM issue #2)
    beta_min: float = 0.1                # beta(0)
    sigma_data: float = 0.5              # s_0: std of the target images
    sigma_data_end: float | None = None  # s_T: std of the condition images (None: sigma_data, as DDBM)
    cov_xy: float = 0.0                  # s_0T: covariance of target and condition (DDBM args.sh: 0)
    t_min: float = 1e-4                  # smallest time; the consistency boundary epsilon of CDBM
    t_max: float = 1.0                   # T: x_T = y
    gamma: float = 1e-3                  # DBIM/CDBM start the ODE at T - gamma after one posterior step
    rho: float = 7.0                     # Karras exponent of the hybrid sampler's grid

    def _B(self, t):
        return self.beta_min * t + 0.5 * self.beta_d * t**2

    def alpha_rho(self, t: torch.Tensor):
        alpha = (-0.5 * self._B(t)).exp()
        alpha_T = math.exp(-0.5 * self._B(self.t_max))
        rho = self._B(t).expm1().sqrt()
        rho_bar = (math.exp(self._B(self.t_max)) - self._B(t).exp()).clamp(min=0).sqrt()
        return alpha, alpha / alpha_T, rho, rho_bar

    def f_g2(self, t: torch.Tensor):
        return -0.5 * (self.beta_min + self.beta_d * t), self.beta_min + self.beta_d * t


@dataclass(frozen=True)
class BridgeVEProcess(DDBMPreconditioning, BridgeProcess):
    """DDBM-VE: alpha_t = 1, rho_t = t, T = t_max (DDBM's sigma_max), f = 0, g^2 = 2t; so a_t = t^2/T^2,
    b_t = 1 - t^2/T^2, c_t = t sqrt(1 - t^2/T^2) (DDBM `bridge_sample`)."""

    name: Literal["bridge-ve"] = "bridge-ve"
    sigma_data: float = 0.5              # s_0
    sigma_data_end: float | None = None  # s_T (None: sigma_data)
    cov_xy: float = 0.0                  # s_0T
    t_min: float = 0.002                 # DDBM's sigma_min (E2H; DIODE: 5e-4)
    t_max: float = 80.0                  # T = DDBM's sigma_max (E2H; DIODE: 20)
    gamma: float = 1e-3                  # start of the ODE after the posterior step: T - gamma
    rho: float = 7.0                     # Karras exponent of the hybrid sampler's grid

    def alpha_rho(self, t: torch.Tensor):
        one = torch.ones_like(t)
        return one, one, t, (self.t_max**2 - t**2).clamp(min=0).sqrt()

    def h_weight(self, w: float, stochastic: bool) -> float:
        """DDBM's VE sampler (`to_d`): d = -g^2/2 (s0 - w h) with s0 = s - h the reference diffusion's score, i.e. the
        h-term weighted (1 + w)/2 in the ODE; its stochastic step drops w (the exact bridge's h-term)."""
        return 1.0 if stochastic else (1 + w) / 2

    def f_g2(self, t: torch.Tensor):
        return torch.zeros_like(t), 2 * t


@dataclass(frozen=True)
class BridgeI2SBProcess(BridgeProcess):
    """I2SB's symmetric schedule as a continuous-time bridge (Liu et al. 2023; DBIM's `i2sb` schedule).

    f = 0, alpha = 1, and g^2(t) = (n-1)/n (sqrt(beta_min) + (sqrt(beta_max) - sqrt(beta_min)) min(u, 1 - u))^2
    with u = t/T: the continuous limit of I2SB's n per-step betas, linspace(sqrt(beta_min/n), sqrt(beta_max/n), n)^2
    over the first half and mirrored. Then rho_t^2 = R(u), rho_bar_t^2 = R(1 - u) with R the closed-form integral.
    Preconditioning as DBIM's I2SBPreCond: c_skip = 1, c_out = -rho_t, c_in = 1, c_noise = t / T
    (1000 t / T inside the network), loss weight 1 / rho_t^2.
    """

    name: Literal["bridge-i2sb"] = "bridge-i2sb"
    beta_min: float = 0.1                # I2SB beta at the ends of the bridge (x1000 per step)
    beta_max: float = 1.0                # I2SB beta at the middle (inpainting / deblurring: 1.0; JPEG / SR: 0.3)
    n_timestep: int = 1000               # I2SB's discretisation, which fixes the scale of its betas
    t_min: float = 1e-4
    t_max: float = 1.0
    gamma: float = 1e-3
    rho: float = 7.0
    sigma_data: float = 0.5              # unused by the I2SB scalings; kept for tools that read it

    def _R(self, u: torch.Tensor) -> torch.Tensor:
        """(n-1)/n int_0^u (p + q min(v, 1-v))^2 dv, p = sqrt(beta_min), q = sqrt(beta_max) - sqrt(beta_min)."""
        p = math.sqrt(self.beta_min)
        q = math.sqrt(self.beta_max) - p
        scale = (self.n_timestep - 1) / self.n_timestep

        def first_half(s):   # int_0^s (p + q v)^2 dv = p^2 s + p q s^2 + q^2 s^3 / 3
            return p**2 * s + p * q * s**2 + q**2 * s**3 / 3

        half = first_half(0.5)
        return scale * torch.where(u <= 0.5, first_half(u.clamp(max=0.5)), 2 * half - first_half((1 - u).clamp(max=0.5)))

    def alpha_rho(self, t: torch.Tensor):
        u = (t / self.t_max).clamp(0, 1)
        one = torch.ones_like(t)
        return one, one, self._R(u).sqrt(), self._R(1 - u).sqrt()

    def f_g2(self, t: torch.Tensor):
        p = math.sqrt(self.beta_min)
        u = (t / self.t_max).clamp(0, 1)
        g2 = (self.n_timestep - 1) / self.n_timestep * (p + (math.sqrt(self.beta_max) - p) * torch.minimum(u, 1 - u)) ** 2
        return torch.zeros_like(t), g2 / self.t_max

    def precondition(self, t_out: torch.Tensor, t_in: torch.Tensor):
        rho = self.alpha_rho(t_out.double())[2].to(t_out.dtype)
        one = torch.ones_like(t_in)
        return torch.ones_like(t_out), -rho, one, t_in / self.t_max



# -------------------------------------------------------------------------------------- solver steps

def bridge_sample(process: BridgeProcess, x0: torch.Tensor, y: torch.Tensor, t, z: torch.Tensor) -> torch.Tensor:
    """x_t = a_t y + b_t x0 + c_t z ~ q(x_t | x0, y): the forward bridge, and the posterior step of the
    DBIM boot and the CDBM sampler (with x0 = x0_hat)."""
    a, b, c = (_per_sample(v, x0) for v in process.coefficients(float64(t)))
    return a * y + b * x0 + c * z


def dbim_step(process: BridgeProcess, x_s: torch.Tensor, x0_hat: torch.Tensor, y: torch.Tensor, s, t,
              eta: float = 0.0, z: torch.Tensor | None = None) -> torch.Tensor:
    """One DBIM step from s to t < s (Zheng et al. 2025; DBIM's `sample_dbim`):

    x_t = a_t y + b_t x0_hat + sqrt(c_t^2 - omega^2) eps_hat + omega z,  eps_hat = (x_s - a_s y - b_s x0_hat) / c_s,
    omega = eta alpha_t rho_t sqrt(1 - rho_t^2 / rho_s^2). eta = 0 is the deterministic first-order bridge ODE
    solver, Prop. 3.1 of He et al. 2024 ("ODE-1"); eta = 1 is the Markovian posterior q(x_t | x_s, x0_hat, y).
    `s`, `t` are scalars or per-sample vectors (N,); z is needed when eta > 0.
    """
    s, t = float64(s), float64(t)
    a_s, b_s, c_s = (_per_sample(v, x_s) for v in process.coefficients(s))
    a_t, b_t, c_t = (_per_sample(v, x_s) for v in process.coefficients(t))
    omega = torch.zeros_like(c_t)
    if eta > 0:
        alpha_t, _, rho_t, _ = (_per_sample(v, x_s) for v in process.alpha_rho(t))
        rho_s = _per_sample(process.alpha_rho(s)[2], x_s)
        omega = eta * alpha_t * rho_t * (1 - rho_t**2 / rho_s**2).clamp(min=0).sqrt()
    k = (c_t**2 - omega**2).clamp(min=0).sqrt() / c_s
    x_t = k * x_s + (b_t - k * b_s) * x0_hat + (a_t - k * a_s) * y
    return x_t + omega * z if eta > 0 else x_t


def keep_known(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x * mask + y * (1 - mask): the known pixels of the condition y re-imposed on x, mask = 1 where generated
    (the hole). DBIM composes every x0 estimate of its inpainting bridge this way (its `sample_dbim`, Zheng et al.
    2025; I2SB's inpainting likewise keeps the observed pixels). With a 0/1 mask the kept pixels are y's exactly;
    `mask` broadcasts against x, e.g. (N, 1, H, W) for (N, C, H, W)."""
    mask = mask.to(x.dtype)
    return x * mask + y.to(x.dtype) * (1 - mask)


def log_snr_ratio(process: BridgeProcess, t) -> torch.Tensor:
    """lambda_t = log(b_t / c_t), the time variable of DBIM's exponential integrator (Zheng et al. 2025)."""
    _, b, c = process.coefficients(float64(t))
    return (b / c).log()


def dbim_high_order_step(process: BridgeProcess, x_s: torch.Tensor, y: torch.Tensor, s, t,
                         x0_hats: list[torch.Tensor], prev_times: list[float]) -> torch.Tensor:
    """Multistep exponential-integrator step of the bridge ODE d(x/c) = y d(a/c) + x0_hat d(b/c) from s to t:

    x_t = (c_t/c_s) x_s + (a_t - a_s c_t/c_s) y + c_t e^{lambda_t} [(1 - e^{-h}) D0 + (e^{-h} + h - 1) D1
          + (h^2/2 - h + 1 - e^{-h}) D2],  h = lambda_t - lambda_s,

    with D0 = x0_hats[0] (the estimate at s) and D1, D2 its first and second lambda-derivatives by backward
    differences over the earlier estimates x0_hats[1:] at `prev_times` (newest first). 1, 2 or 3 estimates
    give orders 1, 2, 3 (DBIM's `sample_dbim_high_order`, Zheng et al. 2025); order 1 is
    `dbim_step` with eta = 0.
    """
    lam = [log_snr_ratio(process, u) for u in (t, s, *prev_times)]     # lambda_t, lambda_s, lambda_u1, lambda_u2
    h = lam[0] - lam[1]
    a_s, _, c_s = process.coefficients(float64(s))
    a_t, _, c_t = process.coefficients(float64(t))
    d0 = x0_hats[0]
    d1 = d2 = torch.zeros_like(d0)
    if len(x0_hats) == 2:
        d1 = (x0_hats[0] - x0_hats[1]) / (lam[1] - lam[2])
    elif len(x0_hats) == 3:
        h1, h2 = lam[1] - lam[2], lam[2] - lam[3]
        diff1, diff2 = x0_hats[0] - x0_hats[1], x0_hats[1] - x0_hats[2]
        d1 = (diff1 * (2 * h1 + h2) / h1 - diff2 * h1 / h2) / (h1 + h2)
        d2 = 2 * (diff1 / h1 - diff2 / h2) / (h1 + h2)
    e = torch.exp(-h)
    integral = lam[0].exp() * ((1 - e) * d0 + (e + h - 1) * d1 + (h**2 / 2 - h + 1 - e) * d2)
    return (c_t / c_s) * x_s + (a_t - a_s * c_t / c_s) * y + c_t * integral


def euler_maruyama_step(process: BridgeProcess, x: torch.Tensor, y: torch.Tensor, x0_hat: torch.Tensor, t, t_next,
                        z: torch.Tensor, w: float = 1.0) -> torch.Tensor:
    """x + drift dt + g(t) sqrt(|dt|) z: one step of the reverse bridge SDE (DDBM's stochastic churn step)."""
    dt = float(t_next) - float(t)
    return x + process.reverse_drift(x, y, x0_hat, t, stochastic=True, w=w) * dt + float(process.diffusion(t)) * math.sqrt(abs(dt)) * z


def cdbm_time_pair(t: torch.Tensor, step: int, *, schedule: str, dt: float, q: float, k: float, b: float,
                   stage_steps: int, eps: float, horizon: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, lambda) for times t of CDBM's two timestep schedules (Sec. 4.1 of He et al. 2024), r clamped at eps:

    constant: r = t - dt T, lambda = 1;
    sigmoid:  r = t (1 - q^-(stage+1) (1 + k sigmoid(-b t / T))), stage = floor(step / stage_steps),
              lambda = 1/(t - r), the gap shrinking by q each stage (ECT's mapping, Geng et al. 2024, with CDBM's b).

    dt and b are given for the time horizon T = 1 of the paper's processes (bridge-vp, I2SB); `horizon` = T of
    another process (bridge-ve: 80) rescales them, so that the pairs are T times those of T = 1 at t / T.
    """
    if schedule == "constant":
        r = t - dt * horizon
    elif schedule == "sigmoid":
        r = ect_r(t, step // max(stage_steps, 1), q=q, k=k, b=b / horizon, mapping="sigmoid")
    else:
        raise ValueError(f"unknown CDBM schedule {schedule!r}")
    r = r.clamp(min=eps)
    weight = torch.ones_like(t) if schedule == "constant" else 1 / (t - r)
    return r, weight


def sample_consistency_times(n: int, process: BridgeProcess, gen: torch.Generator, device) -> torch.Tensor:
    """t ~ U[eps, T - gamma], the training times of CBD and CBT (eps = t_min)."""
    u = torch.rand((n,), generator=gen, device=gen.device).to(device)
    return process.t_min + (process.T - process.gamma - process.t_min) * u
