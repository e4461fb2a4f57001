"""Decoupled diffusion: image to zero and zero to noise (DDM, Huang et al. 2023, arXiv 2306.13720).

The forward SDE dx_t = h_t dt + dw_t splits the corruption into an analytic attenuation
H_t = int_0^t h_s ds with x0 + H_1 = 0 ("image to zero") and a noise that grows from zero to unit
variance ("zero to noise"):

    x_t = x0 + H_t + N_t,   N_t = W_{v(t)} ~ N(0, v(t) I),   t in [t_eps, 1],   x_1 = N_1 ~ N(0, I).

| process      | attenuation h_t        | v(t) | x_t                              | reference code                |
|--------------|------------------------|------|----------------------------------|-------------------------------|
| `ddm`        | C = -x0                | t    | (1 - t) x0 + sqrt(t) eps         | DDM-Public ddm/ddm_const.py   |
| `ddm-linear` | K t + C, C = -x0 - K/2 | t    | x0 + K t^2/2 + C t + sqrt(t) eps | DDM-Public ddm/ddm_linear.py  |
| `ddm-const2` | C = -x0                | t^2  | (1 - t) x0 + t eps               | ADM-Public ddm/ddm_const_2.py |

The network has one output group per predicted quantity, in the order `outputs` ((C, eps), or
(K, C, eps) for `ddm-linear`), stacked on the channel axis; every process turns a prediction into
x0_hat = x_t - H_t - sqrt(v(t)) eps_hat. Sampling uses the closed-form Gaussian q(x_u | x_t, x0) of
the process (N is a Brownian motion in the clock v, so its bridge is explicit); `posterior` below.
Times here are floats, 0-dim tensors or per-sample vectors (N,); `_at` broadcasts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fsg.core.process import append_dims, randn, uniform_times
from fsg.errors import UserError

Heads = dict[str, torch.Tensor]


def _at(t, x: torch.Tensor) -> torch.Tensor:
    """A time (float, 0-dim or per-sample (N,)) as a tensor broadcastable against x, in x's dtype."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return append_dims(t, x.ndim) if t.ndim else t


class DecoupledProcess:
    """What every DDM process shares: the noise clock v(t) = t^noise_power, the heads, x0_hat and the posterior.

    Subclasses supply `outputs`, `scalings(t)`, `loss_weights(t)`, `draw_attenuation`, `attenuation`,
    `attenuation_rate` and `refit`.
    """

    noise_power = 1                       # v(t) = t^noise_power
    outputs: tuple[str, ...] = ("C", "eps")
    attenuation_params: tuple[str, ...] = ("C",)
    default_sampler = "ddm"
    default_steps = 10
    t_eps: float
    t_max = 1.0                           # x_1 ~ N(0, I)
    sigma_data = 0.5                      # unused by the DDM scalings (unit-variance data); kept for tools that read it

    @property
    def t_min(self) -> float:
        return self.t_eps

    @property
    def out_multiplier(self) -> int:
        """Output channels of the network per data channel: one group per head."""
        return len(self.outputs)

    def noise_var(self, t):
        """v(t), the variance of the noise N_t."""
        return t**self.noise_power

    def train_times(self, n: int, gen: torch.Generator | None, device=None) -> torch.Tensor:
        """t ~ U(t_eps, 1), as the reference's `torch.rand(b) * (1 - eps) + eps`."""
        return uniform_times(self, n, gen, device)

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, gen: torch.Generator | None) -> tuple[torch.Tensor, Heads]:
        """x_t = x0 + H_t + sqrt(v(t)) eps for per-sample t (N,), and the regression targets {(K,) C, eps}."""
        eps = randn(x0.shape, gen, x0.device)
        target = {**self.draw_attenuation(x0, gen), "eps": eps}
        x_t = x0 + self.attenuation(_at(t, x0), target) + self.noise_var(_at(t, x0)).sqrt() * eps
        return x_t, target

    def x0_from(self, x: torch.Tensor, t, h: Heads) -> torch.Tensor:
        """x0 = x_t - H_t - sqrt(v(t)) eps (the reference's `pred_x0_from_xt`)."""
        tt = _at(t, x)
        return x - self.attenuation(tt, h) - self.noise_var(tt).sqrt() * h["eps"]

    def heads(self, net, x: torch.Tensor, t: torch.Tensor, cond=None, labels=None, **net_kwargs) -> Heads:
        """The preconditioned predictions {(K,) C, eps, x0} at per-sample times t (N,) from one network call.

        Head k is skip_k(t) x + out_k(t) F_k(c_in(t) x, c_noise(t)); F's channels are the groups of `outputs`.
        `net_kwargs` go to the network as they are (EDM's `augment_labels`).
        """
        c_in, c_noise, skips, outs = self.scalings(t)
        nd = x.ndim
        F = net(append_dims(c_in, nd) * x, c_noise.flatten(), labels, cond, **net_kwargs).to(x.dtype)   # (N, m C, ...)
        m = self.out_multiplier
        if F.shape[1] != m * x.shape[1]:
            raise UserError(f"process '{self.name}' needs a network with {m} x {x.shape[1]} output channels "
                            f"({', '.join(self.outputs)}), this one has {F.shape[1]}")
        groups = F.chunk(m, dim=1)                                                         # m x (N, C, ...)
        h = {k: append_dims(a, nd) * x + append_dims(b, nd) * f for k, a, b, f in zip(self.outputs, skips, outs, groups)}
        h["x0"] = self.x0_from(x, t, h)
        return h

    def denoise(self, net, x: torch.Tensor, t: torch.Tensor, cond=None, labels=None, **net_kwargs) -> torch.Tensor:
        """x0_hat of the two-head parameterisation."""
        return self.heads(net, x, t, cond, labels, **net_kwargs)["x0"]

    def posterior(self, x: torch.Tensor, h: Heads, t, u) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(x_u | x_t, x0) for u < t, with x0 given through (H, eps).

        N is a Brownian motion in the clock v, so N_u | N_t ~ N(v_u / v_t N_t, v_u (v_t - v_u) / v_t):
            mean = x_t + (H_u - H_t) - (v_t - v_u) / sqrt(v_t) eps,   var = v_u (v_t - v_u) / v_t.
        For `ddm` this is x_t + s x0 - s / sqrt(t) eps with variance s (t - s) / t, s = t - u (the reference's
        `pred_xtms_from_xt`); for `ddm-const2` x_t - C s - (2 s t - s^2) / t eps, std (t - s) sqrt(2 s t - s^2) / t.
        """
        tt, uu = _at(t, x), _at(u, x)
        v_t, v_u = self.noise_var(tt), self.noise_var(uu)
        mean = x + self.attenuation(uu, h) - self.attenuation(tt, h) - (v_t - v_u) / v_t.sqrt() * h["eps"]
        return mean, (v_u * (v_t - v_u) / v_t).sqrt()

    def drift(self, h: Heads, t) -> torch.Tensor:
        """d = H'_t + v'(t) / sqrt(v(t)) eps, so that x_{t-s} ~ x_t - s d to first order (the reverse drift the
        reference's second-order sampler corrects; for `ddm` d = C + eps / sqrt(t))."""
        tt = _at(t, h["eps"])
        dv = self.noise_power * tt ** (self.noise_power - 1)
        return self.attenuation_rate(tt, h) + dv / self.noise_var(tt).sqrt() * h["eps"]

    def correct(self, h: Heads, x: torch.Tensor, t, clip: bool) -> Heads:
        """The sampler's view of a prediction: with `clip`, x0_hat is clamped to [-1, 1] and the attenuation is
        refitted to it (C := -x0_hat for constant h_t), as the reference does for images."""
        if not clip:
            return h
        x0 = h["x0"].clamp(-1, 1)
        return {**h, **self.refit(h, x0), "x0": x0}


class _ConstantAttenuation(DecoupledProcess):
    """h_t = C = -x0, so H_t = C t and x_t = (1 - t) x0 + sqrt(v(t)) eps."""

    def marginal(self, t: torch.Tensor):
        """(alpha, beta, sigma) of x_t = alpha x0 + beta y + sigma eps: (1 - t, 0, sqrt(v(t)))."""
        return 1 - t, torch.zeros_like(t), self.noise_var(t).sqrt()

    def draw_attenuation(self, x0: torch.Tensor, gen) -> Heads:
        return {"C": -x0}

    def attenuation(self, t, h: Heads) -> torch.Tensor:
        return h["C"] * t

    def attenuation_rate(self, t, h: Heads) -> torch.Tensor:
        return h["C"]

    def refit(self, h: Heads, x0: torch.Tensor) -> Heads:
        return {"C": -x0}


@dataclass(frozen=True)
class DDMProcess(_ConstantAttenuation):
    """Constant attenuation, Wiener noise: x_t = (1 - t) x0 + sqrt(t) eps (DDM's best variant)."""

    name: Literal["ddm"] = "ddm"
    t_eps: float = 1e-4          # smallest training time: t ~ U(t_eps, 1); also guards 1 / (1 - t)

    def scalings(self, t: torch.Tensor):
        """DDM's preconditioning (EDMPrecond of the reference's unet/uncond_unet.py, sigma = t):
        c_in = 1/sqrt(1 + t), c_noise = ln t,
        C_hat = (t - 1) x + t / sqrt(1 + t) F_C,   eps_hat = sqrt(t) x + sqrt((1 - t) / (1 + t)) F_eps.
        The skips are exact at the ends: C_hat -> -x_t = -x0 as t -> 0 and eps_hat = x_1 = eps at t = 1."""
        return _ddm_scalings(t)

    def loss_weights(self, t: torch.Tensor):
        """(w_C, w_eps, w_rec) = (1/t, 1/(1 - t + t_eps), (1 - t)^2) (the reference's CIFAR-10 `weighting_loss`)."""
        return 1 / t, 1 / (1 - t + self.t_eps), (1 - t) ** 2


@dataclass(frozen=True)
class DDMConst2Process(_ConstantAttenuation):
    """Constant attenuation, linear noise std: x_t = (1 - t) x0 + t eps, the rectified-flow path (ADM-Public's const2)."""

    name: Literal["ddm-const2"] = "ddm-const2"
    t_eps: float = 1e-3          # smallest training time (the reference's const2 value)

    noise_power = 2

    def scalings(self, t: torch.Tensor):
        """Unit-variance scalings of ADM-Public's const2 precond, V = (1 - t)^2 + t^2: c_in = 1/sqrt(V), c_noise = ln t,
        C_hat = (t - 1)/V x + t/sqrt(V) F_C,   eps_hat = t/V x + (1 - t)/sqrt(V) F_eps
        (the Gaussian-optimal skips and output scales for unit-variance data)."""
        V = (1 - t) ** 2 + t**2
        return 1 / V.sqrt(), t.log(), ((t - 1) / V, t / V), (t / V.sqrt(), (1 - t) / V.sqrt())

    def loss_weights(self, t: torch.Tensor):
        """(w_C, w_eps, w_rec) = (((t - 1)/t)^2 + 1, (t/(1 - t + t_eps))^2 + 1, -ln(t)/2) (ADM-Public ddm_const_2.py)."""
        return ((t - 1) / t) ** 2 + 1, (t / (1 - t + self.t_eps)) ** 2 + 1, -t.log() / 2


@dataclass(frozen=True)
class DDMLinearProcess(DecoupledProcess):
    """Linear attenuation h_t = K t + C with C = -x0 - K/2 (so H_1 = -x0): x_t = x0 + K t^2/2 + C t + sqrt(t) eps.

    K is drawn per element as clamp(N(0, 1), -1, 1) in training (the reference's `randn_like(x).clamp_`); the
    network predicts K, C and eps, and the sampler clamps K_hat to [-1, 1]. x_t is not Gaussian given x0
    (K enters linearly), so this process has no `marginal`.
    """

    name: Literal["ddm-linear"] = "ddm-linear"
    t_eps: float = 1e-4          # smallest training time: t ~ U(t_eps, 1); also guards 1 / (1 - t)

    outputs = ("K", "C", "eps")
    attenuation_params = ("K", "C")

    def scalings(self, t: torch.Tensor):
        """DDM's scalings for C and eps (see DDMProcess); K_hat = F_K, since K is bounded and not visible in x_t."""
        c_in, c_noise, (s_c, s_e), (o_c, o_e) = _ddm_scalings(t)
        return c_in, c_noise, (torch.zeros_like(t), s_c, s_e), (torch.ones_like(t), o_c, o_e)

    def loss_weights(self, t: torch.Tensor):
        """As DDMProcess: (1/t, 1/(1 - t + t_eps), (1 - t)^2) (the reference's ddm_linear.py)."""
        return 1 / t, 1 / (1 - t + self.t_eps), (1 - t) ** 2

    def draw_attenuation(self, x0: torch.Tensor, gen) -> Heads:
        K = randn(x0.shape, gen, x0.device).clamp(-1, 1)
        return {"K": K, "C": -x0 - K / 2}

    def attenuation(self, t, h: Heads) -> torch.Tensor:
        return h["K"] * t**2 / 2 + h["C"] * t

    def attenuation_rate(self, t, h: Heads) -> torch.Tensor:
        return h["K"] * t + h["C"]

    def refit(self, h: Heads, x0: torch.Tensor) -> Heads:
        return {"C": -x0 - h["K"] / 2}

    def correct(self, h: Heads, x: torch.Tensor, t, clip: bool) -> Heads:
        """K_hat is clamped to [-1, 1] always (its training range) and x0_hat recomputed; then as DecoupledProcess."""
        h = {**h, "K": h["K"].clamp(-1, 1)}
        h["x0"] = self.x0_from(x, t, h)
        return super().correct(h, x, t, clip)


def _ddm_scalings(t: torch.Tensor):
    """c_in, c_noise, (skip_C, skip_eps), (out_C, out_eps) of DDM's preconditioning (see DDMProcess.scalings)."""
    c_in = 1 / (1 + t).sqrt()
    return c_in, t.log(), (t - 1, t.sqrt()), (t * c_in, ((1 - t) / (1 + t)).sqrt())

