"""Diffusion bridges: marginals, preconditioning, solver steps and samplers against closed forms on a Gaussian
pair distribution; the CBD/CBT losses; the sampler contract; `fsg distill/train-consistency/sample` end to end.

The Gaussian pair: x0 | y ~ N(K y, V) per coordinate. With x_t = a_t y + b_t x0 + c_t eps, x_t | y is
N(m_t, s_t^2), m_t = (a_t + b_t K) y, s_t^2 = b_t^2 V + c_t^2, and Gaussian conditioning gives the exact
denoiser E[x0 | x_t, y] = K y + b_t V / s_t^2 (x_t - m_t). The PF-ODE has an affine drift and keeps these
marginals, so its flow is the increasing affine map x_t = m_t + (s_t / s_u)(x_u - m_u), and the exact
consistency function is h*(x_t, t, y) = m_eps + (s_eps / s_t)(x_t - m_t).
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from fsg.cli import app
from fsg.core.bridges import (BridgeI2SBProcess, BridgeVEProcess, BridgeVPProcess, bridge_sample,
                              cdbm_time_pair, dbim_step)
from fsg.core.schedules import karras_sigmas
from fsg.data import build_dataset
from fsg.data.config import DataConfig
from fsg.errors import UserError
from fsg.io.config import to_dict
from fsg.methods.cbd import CBDConfig, CBDMethod
from fsg.methods.cbt import CBTConfig, CBTMethod
from fsg.models.denoiser import Denoiser
from fsg.models.load import LoadedModel
from fsg.models.meta import build_denoiser
from fsg.nets.mlp import MLPConfig
from fsg.data.conditions import condition_source, file_conds
from fsg.sampling.interpolate import interpolate_bridge
from fsg.sampling.bridges import sample_cdbm, sample_dbim, sample_dbim_high_order, sample_hybrid
from fsg.sampling.generate import plan_sampler
from tests.helpers import check_sampler_contract, tiny_meta

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
K, V = 0.5, 0.09
PROCESSES = [BridgeVPProcess(), BridgeVEProcess(), BridgeI2SBProcess()]


def _coef(p, t):
    return p.coefficients(torch.as_tensor(t, dtype=torch.float64))


def _moments(p, t, y, var=V):
    """(m_t, s_t) of x_t | y when x0 | y has variance `var`; t scalar or (N,)."""
    a, b, c = (v.reshape(-1, *([1] * (y.ndim - 1))) if v.ndim else v for v in _coef(p, t))
    return (a + b * K) * y, (b * b * var + c * c).sqrt()


class ExactDenoiser(nn.Module):
    """E[x0 | x_t, y] of the Gaussian pair (K y at t = T, where b_T = c_T = 0)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x, t, cond=None, labels=None):
        x64, y = x.double(), cond.double()
        m, s = _moments(self.p, t, y)
        _, b, _ = (v.reshape(-1, *([1] * (x.ndim - 1))) if v.ndim else v for v in _coef(self.p, t))
        gain = torch.where(s > 0, b * V / s.clamp(min=1e-300) ** 2, torch.zeros_like(s))
        return (K * y + gain * (x64 - m)).to(x.dtype)


class ExactConsistency(nn.Module):
    """h*(x_t, t, y) = m_eps + (s_eps / s_t)(x_t - m_t), the mean K y at t = T; with var != V, the consistency
    function of another coupling (wrong for this one)."""

    def __init__(self, p, var: float = V):
        super().__init__()
        self.p, self.var = p, var

    def forward(self, x, t, cond=None, labels=None):
        x64, y = x.double(), cond.double()
        m, s = _moments(self.p, t, y, self.var)
        m_eps, s_eps = _moments(self.p, self.p.t_min, y, self.var)
        out = torch.where(s > 0, m_eps + s_eps / s.clamp(min=1e-300) * (x64 - m), K * y)
        return out.to(x.dtype)


def exact_flow(p, x_u, y, u, t):
    m_u, s_u = _moments(p, u, y)
    m_t, s_t = _moments(p, t, y)
    return m_t + s_t / s_u * (x_u - m_u)


class FixedNoise:
    """A sampler's noise source that returns the same draw every time."""

    def __init__(self, z):
        self.z = z

    def randn(self, shape, dtype=torch.float32):
        return self.z.expand(shape).to(dtype)


def gaussian_pairs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return K * y + math.sqrt(V) * torch.randn(n, 2, generator=g, dtype=torch.float64), y


# ---------------------------------------------------------------------------------- marginal coefficients

def test_ve_coefficients_are_ddbm_closed_forms():
    p = BridgeVEProcess(t_max=80.0)
    t = torch.tensor([0.002, 1.0, 20.0, 60.0, 79.9], dtype=torch.float64)
    a, b, c = _coef(p, t)
    T = 80.0
    assert torch.allclose(a, t**2 / T**2) and torch.allclose(b, 1 - t**2 / T**2)
    assert torch.allclose(c, t * (1 - t**2 / T**2).sqrt())


def test_vp_coefficients_match_ddbm_snr_form():
    """DDBM's VP form: a = (SNR_T/SNR_t) alpha_t/alpha_T, b = alpha_t (1 - SNR_T/SNR_t),
    c^2 = sigma_t^2 (1 - SNR_T/SNR_t), with alpha_t = exp(-(beta_min t + beta_d t^2 / 2) / 2), sigma_t^2 = 1 - alpha_t^2."""
    p = BridgeVPProcess(beta_d=2.0, beta_min=0.1)
    t = torch.tensor([1e-4, 0.1, 0.5, 0.9, 0.999], dtype=torch.float64)

    def alpha(u):
        return torch.exp(-0.5 * (0.1 * u + 0.5 * 2.0 * u**2))

    def snr(u):
        return alpha(u) ** 2 / (1 - alpha(u) ** 2)

    T = torch.tensor(1.0, dtype=torch.float64)
    ratio = snr(T) / snr(t)
    a, b, c = _coef(p, t)
    assert torch.allclose(a, ratio * alpha(t) / alpha(T))
    assert torch.allclose(b, alpha(t) * (1 - ratio))
    assert torch.allclose(c**2, (1 - alpha(t) ** 2) * (1 - ratio))


@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
def test_bridge_ends_are_data_and_condition(p):
    """x_0 = x0: (a, b, c) = (0, 1, 0); x_T = y: (1, 0, 0). marginal() is (b, a, c) for fsg's
    x_t = alpha x0 + beta y + sigma eps."""
    a, b, c = _coef(p, torch.tensor([0.0, p.T], dtype=torch.float64))
    assert torch.allclose(a, torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(b, torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(c, torch.zeros(2, dtype=torch.float64), atol=1e-12)
    a, b, c = p.coefficients(torch.tensor([0.3 * p.T]))
    assert [float(v) for v in p.marginal(torch.tensor([0.3 * p.T]))] == [float(b), float(a), float(c)]


def test_i2sb_schedule_is_the_continuous_limit_of_i2sb_betas():
    """rho_t^2 against the cumulative sum of I2SB's discrete betas at step round((n - 1) t)."""
    n = 1000
    p = BridgeI2SBProcess(beta_min=0.1, beta_max=1.0, n_timestep=n)
    half = torch.linspace((0.1 / n) ** 0.5, (1.0 / n) ** 0.5, n, dtype=torch.float64)[: n // 2] ** 2
    betas = torch.cat([half, half.flip(0)])
    for t in (0.1, 0.4, 0.5, 0.7, 0.95):
        i = round((n - 1) * t)
        rho2 = float(p.alpha_rho(torch.tensor(t, dtype=torch.float64))[2] ** 2)
        assert rho2 == pytest.approx(float(betas[: i + 1].sum()), abs=2 * float(betas.max()))


@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
def test_drift_coefficients_agree_with_the_marginal(p):
    """f = d ln(alpha)/dt and g^2 = alpha^2 d(rho^2)/dt (the definitions of alpha_t and rho_t), by central differences."""
    t = torch.tensor([0.2, 0.35, 0.8], dtype=torch.float64) * p.T
    h = 1e-6 * p.T
    alpha_p, _, rho_p, _ = p.alpha_rho(t + h)
    alpha_m, _, rho_m, _ = p.alpha_rho(t - h)
    alpha, _, _, _ = p.alpha_rho(t)
    f, g2 = p.f_g2(t)
    assert torch.allclose(f, (alpha_p.log() - alpha_m.log()) / (2 * h), atol=1e-6)
    assert torch.allclose(g2, alpha**2 * (rho_p**2 - rho_m**2) / (2 * h), rtol=1e-5)


# ---------------------------------------------------------------------------------- preconditioning

def test_ddbm_scalings_are_the_linear_regression_of_x0_on_x_t():
    """For x0, y with stds s_0, s_T and covariance s_0T: c_in = 1/sqrt(Var x_t), c_skip = Cov(x0, x_t)/Var(x_t),
    c_out^2 = s_0^2 - Cov^2 / Var (the residual variance); c_noise = ln(t)/4; loss weight = 1/c_out^2."""
    s0, sT, s0T = 0.5, 0.7, 0.1
    p = BridgeVPProcess(sigma_data=s0, sigma_data_end=sT, cov_xy=s0T)
    t = torch.tensor([1e-3, 0.3, 0.7, 0.99], dtype=torch.float64)
    a, b, c = _coef(p, t)
    var = a**2 * sT**2 + b**2 * s0**2 + 2 * a * b * s0T + c**2
    cov = b * s0**2 + a * s0T
    c_skip, c_out, c_in, c_noise = p.scalings(t)
    assert torch.allclose(c_in, var.rsqrt()) and torch.allclose(c_skip, cov / var)
    assert torch.allclose(c_out**2, s0**2 - cov**2 / var) and torch.allclose(c_noise, t.log() / 4)
    assert torch.allclose(p.loss_weight(t), 1 / c_out**2)


@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
def test_time_shifted_scalings_make_the_boundary_exact(p):
    """h(x_eps, eps, y) = x_eps for any network (Sec. 3.4 of He et al. 2024), also in float32."""
    torch.manual_seed(0)
    net = MLPConfig(hidden=16, depth=1, emb_dim=8).build((2,), 2, 2)
    h = Denoiser(net, p, "consistency")
    x, y = torch.randn(5, 2), torch.randn(5, 2)
    assert torch.equal(h(x, torch.full((5,), p.t_min), cond=y), x)
    assert not torch.allclose(h(x, torch.full((5,), 0.5 * p.T), cond=y), x)


# ---------------------------------------------------------------------------------- solver steps

@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
def test_dbim_eta0_step_is_cdbm_proposition_3_1(p):
    """Prop. 3.1 of He et al. 2024 written with (alpha, rho, rho_bar):
    x_r = alpha_r rho_r rhobar_r / (alpha_t rho_t rhobar_t) x_t
          + alpha_r / rho_T^2 [(rhobar_r^2 - rhobar_t rho_r rhobar_r / rho_t) x_theta
                               + (rho_r^2 - rho_t rho_r rhobar_r / rhobar_t) y / alpha_T]."""
    t, r = torch.tensor(0.7 * p.T, dtype=torch.float64), torch.tensor(0.4 * p.T, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x_t, x_theta, y = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    alpha_t, alpha_bar_t, rho_t, rhobar_t = p.alpha_rho(t)
    alpha_r, _, rho_r, rhobar_r = p.alpha_rho(r)
    rho_T2 = rho_t**2 + rhobar_t**2
    alpha_T = alpha_t / alpha_bar_t
    expected = (alpha_r * rho_r * rhobar_r / (alpha_t * rho_t * rhobar_t) * x_t
                + alpha_r / rho_T2 * ((rhobar_r**2 - rhobar_t * rho_r * rhobar_r / rho_t) * x_theta
                                      + (rho_r**2 - rho_t * rho_r * rhobar_r / rhobar_t) * y / alpha_T))
    assert torch.allclose(dbim_step(p, x_t, x_theta, y, t, r), expected)


def test_dbim_eta1_step_is_the_brownian_bridge_posterior():
    """VE, eta = 1: x_r | x_t, x0 is the Brownian bridge from x0 (time 0) to x_t (time t):
    mean x0 + (r^2/t^2)(x_t - x0), variance r^2 (t^2 - r^2) / t^2."""
    p = BridgeVEProcess(t_max=80.0)
    t, r = 30.0, 12.0
    g = torch.Generator().manual_seed(1)
    x_t, x0, y, z = (torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(4))
    mean = x0 + r**2 / t**2 * (x_t - x0)
    std = math.sqrt(r**2 * (t**2 - r**2) / t**2)
    assert torch.allclose(dbim_step(p, x_t, x0, y, t, r, eta=1.0, z=z), mean + std * z)


@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
def test_dbim_samplers_converge_at_their_order(p):
    """From a booted x_u (u = 0.9 T) to t = 0.2 T with the exact denoiser: the error against the exact flow halves
    with the step (first order); dbim2 quarters it; dbim3 (first-order first and last steps) is at least as good."""
    T = p.T
    y = torch.linspace(-1, 1, 7, dtype=torch.float64)[:, None]
    z = torch.linspace(-2, 2, 7, dtype=torch.float64)[:, None]
    D = ExactDenoiser(p)

    def denoise(x, t):
        return D(x, t, cond=y)

    x_u = bridge_sample(p, denoise(y, T), y, 0.9 * T, z)
    exact = exact_flow(p, x_u, y, 0.9 * T, 0.2 * T)

    def error(sampler, n):
        times = torch.cat([torch.tensor([T], dtype=torch.float64), torch.linspace(0.9 * T, 0.2 * T, n + 1, dtype=torch.float64)])
        return float((sampler(denoise, y, times, FixedNoise(z), p) - exact).abs().max())

    first = [error(sample_dbim, n) for n in (16, 32)]
    second = [error(lambda *a: sample_dbim_high_order(*a, order=2), n) for n in (16, 32)]
    third = error(lambda *a: sample_dbim_high_order(*a, order=3), 32)
    assert 1.8 < first[0] / first[1] < 2.2
    assert second[0] / second[1] > 3.0 and second[1] < first[1] / 3
    assert third <= second[1]


@pytest.mark.parametrize("p", [BridgeVPProcess(), BridgeVEProcess()], ids=lambda p: p.name)
def test_pf_ode_drift_follows_the_exact_flow(p):
    """Heun on dx = [f x - g^2 (s/2 - h)] dt with the score from the exact denoiser reproduces the flow map:
    the h-term, the score and f, g^2 together."""
    y = torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None]
    x = _moments(p, 0.8 * p.T, y)[0] + torch.linspace(-0.3, 0.3, 5, dtype=torch.float64)[:, None]
    D = ExactDenoiser(p)
    ts = torch.linspace(0.8 * p.T, 0.3 * p.T, 201, dtype=torch.float64)
    x_ode = x
    for t, t_next in zip(ts[:-1], ts[1:]):
        d = p.reverse_drift(x_ode, y, D(x_ode, t, cond=y), t)
        x_euler = x_ode + (t_next - t) * d
        x_ode = x_ode + (t_next - t) * 0.5 * (d + p.reverse_drift(x_euler, y, D(x_euler, t_next, cond=y), t_next))
    assert torch.allclose(x_ode, exact_flow(p, x, y, 0.8 * p.T, 0.3 * p.T), atol=1e-5)


def test_reverse_sde_keeps_the_bridge_marginal():
    """Euler-Maruyama on the reverse SDE dx = [f x - g^2 (s - h)] dt + g dW from q(x_u | y) keeps q(x_t | y)."""
    from fsg.core.bridges import euler_maruyama_step

    p = BridgeVPProcess()
    n, y = 20000, torch.full((20000, 1), 0.8, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    m_u, s_u = _moments(p, 0.8, y)
    x = m_u + s_u * torch.randn(n, 1, generator=g, dtype=torch.float64)
    D = ExactDenoiser(p)
    ts = torch.linspace(0.8, 0.3, 101, dtype=torch.float64)
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = euler_maruyama_step(p, x, y, D(x, t, cond=y), t, t_next, torch.randn(n, 1, generator=g, dtype=torch.float64))
    m_t, s_t = _moments(p, 0.3, y[:1])
    assert float(x.mean()) == pytest.approx(float(m_t), abs=0.01)
    assert float(x.std()) == pytest.approx(float(s_t), rel=0.03)


# ---------------------------------------------------------------------------------- samplers

def tiny_bridge_model(shape=(1, 8, 8), precond="diffusion", seed=0, num_classes=0) -> LoadedModel:
    torch.manual_seed(seed)
    meta = tiny_meta(shape=shape, precond=precond, cond_channels=shape[0], sampler="dbim", steps=5, num_classes=num_classes)
    meta["process"] = to_dict(BridgeVPProcess())
    den = build_denoiser(meta).eval()
    with torch.no_grad():  # zero-initialised output layers would make every sample trivial
        for q in den.net.parameters():
            q.add_(0.05 * torch.randn_like(q))
    return LoadedModel(den, meta, Path("<test>"))


def _conds(shape):
    table = torch.rand(5, *shape, generator=torch.Generator().manual_seed(9)) * 2 - 1
    return lambda indices: table[[i % 5 for i in indices]]


CONTRACT = [
    # (sampler, steps, knobs, precond, expected NFE)
    ("hybrid", 4, {}, "diffusion", 3 * 4 - 1),                           # churn step + Heun, Euler to 0
    ("dbim", 5, {}, "diffusion", 4 + 1),                                 # N = 4 updates + the boot
    ("dbim", 5, {"eta": 1.0}, "diffusion", 4 + 1),
    ("dbim2", 6, {}, "diffusion", 5 + 1),
    ("dbim3", 6, {}, "diffusion", 5 + 1),
    ("cdbm", 2, {}, "consistency", 2),
    ("cdbm", 4, {}, "consistency", 4),
    ("cdbm", None, {"times": (0.6,)}, "consistency", 2),                # explicit consistency-call times
    ("cdbm", None, {"times": (0.9, 0.5, 0.2)}, "consistency", 4),
]


@pytest.mark.parametrize("sampler,steps,knobs,precond,nfe", CONTRACT)
@pytest.mark.parametrize("shape", [(1, 8, 8), (2,)])
def test_bridge_sampler_contract(sampler, steps, knobs, precond, nfe, shape):
    model = tiny_bridge_model(shape, precond)
    check_sampler_contract(model, sampler=sampler, steps=steps, nfe=nfe, conds=_conds(shape), **knobs)


def test_hybrid_without_churn_is_the_deterministic_pf_ode():
    """churn_step_ratio = 0: Heun steps only, 2N - 1 NFE, and no randomness at all (x_T = y is fixed)."""
    from tests.helpers import collect

    model = tiny_bridge_model()
    a, nfe = collect(model, 3, seed=1, sampler="hybrid", steps=4, churn_step_ratio=0.0, conds=_conds((1, 8, 8)))
    b, _ = collect(model, 3, seed=2, sampler="hybrid", steps=4, churn_step_ratio=0.0, conds=_conds((1, 8, 8)))
    assert nfe == 2 * 4 - 1 and torch.equal(a, b)


def test_bridge_samplers_refuse_what_they_cannot_sample():
    with pytest.raises(UserError, match="consistency bridge model"):
        plan_sampler(tiny_bridge_model(), "cdbm", 2)
    with pytest.raises(UserError, match="bridge models"):
        plan_sampler(LoadedModel(build_denoiser(tiny_meta()), tiny_meta(), Path("<t>")), "dbim", 5)
    with pytest.raises(UserError, match="at least 2"):
        plan_sampler(tiny_bridge_model(precond="consistency"), "cdbm", 1)
    plan = plan_sampler(tiny_bridge_model(), "dbim", 5)
    with pytest.raises(UserError, match="condition"):
        plan.initial(None, (2, 1, 8, 8), None)


def test_cdbm_times_are_checked():
    model = tiny_bridge_model(precond="consistency")
    assert plan_sampler(model, "cdbm", None, times=(0.6,)).times.tolist() == [1.0, 0.6]
    for times, match in (((0.5, 0.6), "strictly decreasing"), ((1.0,), r"T - gamma"), ((0.5, 0.0), "t_min")):
        with pytest.raises(UserError, match=match):
            plan_sampler(model, "cdbm", None, times=times)
    with pytest.raises(UserError, match="disagrees"):
        plan_sampler(model, "cdbm", 3, times=(0.6,))
    with pytest.raises(UserError, match="--times applies to the cdbm, scm and flowmap samplers"):
        plan_sampler(tiny_bridge_model(), "dbim", 5, times=(0.6,))


class TorchNoise:
    """A sampler's noise source drawing from one torch generator (fast for statistics)."""

    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)

    def randn(self, shape, dtype=torch.float32):
        return torch.randn(shape, generator=self.gen, dtype=dtype)


def _coupling_stats(sampler, p, times, n=20000, **knobs):
    y = torch.full((n, 1), 0.6, dtype=torch.float64)
    model = ExactConsistency(p) if sampler is sample_cdbm else ExactDenoiser(p)
    with torch.no_grad():
        x = sampler(lambda x, t: model(x, t, cond=y), y, times, TorchNoise(5), p, **knobs)
    return float(x.mean()), float(x.var())


def test_samplers_draw_the_gaussian_coupling():
    """With the exact denoiser (consistency function for cdbm) and fine grids (the first-order DBIM needs a few
    hundred steps here) the samples of x0 | y have mean K y and variance V; CDBM needs 2 NFE."""
    p = BridgeVPProcess()
    dbim_times = torch.cat([torch.tensor([1.0], dtype=torch.float64), torch.linspace(1 - 1e-3, 1e-4, 400, dtype=torch.float64)])
    hybrid_times = karras_sigmas(240, 1e-4, 1 - 1e-4, 7.0)      # Euler-Maruyama churn steps: weak first order
    cdbm_times = torch.tensor([1.0, 1 - 1e-3], dtype=torch.float64)
    for sampler, times, knobs in ((sample_dbim, dbim_times, {}), (sample_dbim, dbim_times, {"eta": 1.0}),
                                  (sample_hybrid, hybrid_times, {}), (sample_cdbm, cdbm_times, {})):
        mean, var = _coupling_stats(sampler, p, times, **knobs)
        assert mean == pytest.approx(K * 0.6, abs=0.02), sampler.__name__
        assert var == pytest.approx(V, rel=0.06), sampler.__name__
    # Booting below T - gamma noises the boot's point estimate E[x0 | y] = K y, not a draw of x0: x_t = mean_t + c_t z.
    # The exact consistency map of the Gaussian marginal N(mean_t, b_t^2 V + c_t^2) is affine with slope
    # sqrt(V / (b_t^2 V + c_t^2)), so the samples keep the mean K y but their variance is V c_t^2 / (b_t^2 V + c_t^2)
    # (why the paper boots to T - gamma, where b_t ~ 0).
    _, b_t, c_t = (float(v) for v in p.coefficients(torch.tensor(0.6, dtype=torch.float64)))
    mean, var = _coupling_stats(sample_cdbm, p, torch.tensor([1.0, 0.6], dtype=torch.float64))
    assert mean == pytest.approx(K * 0.6, abs=0.02)
    assert var == pytest.approx(V * c_t**2 / (b_t**2 * V + c_t**2), rel=0.04) and var < 0.95 * V


# ---------------------------------------------------------------------------------- CBD / CBT losses

def test_cdbm_time_pairs():
    t = torch.tensor([5e-4, 0.01, 0.3, 0.9])
    r, w = cdbm_time_pair(t, 0, schedule="constant", dt=0.02, q=2, k=8, b=20, stage_steps=100, eps=1e-4)
    assert torch.allclose(r, torch.tensor([1e-4, 1e-4, 0.28, 0.88])) and torch.equal(w, torch.ones(4))
    r0, w0 = cdbm_time_pair(t, 99, schedule="sigmoid", dt=0, q=2, k=8, b=20, stage_steps=100, eps=1e-4)
    r1, _ = cdbm_time_pair(t, 100, schedule="sigmoid", dt=0, q=2, k=8, b=20, stage_steps=100, eps=1e-4)
    assert bool((r0 < t).all()) and torch.allclose(w0, 1 / (t - r0))
    gap0 = 0.5 * (1 + 8 * torch.sigmoid(-20 * t[2:])) * t[2:]        # q^-(stage+1) (1 + k sigmoid(-b t)) t
    assert torch.allclose(t[2:] - r0[2:], gap0) and torch.allclose(t[2:] - r1[2:], gap0 / 2)
    # a process of horizon T = 80 (bridge-ve): the pairs are 80 times those of T = 1 at t / 80
    for schedule in ("constant", "sigmoid"):
        kw = dict(schedule=schedule, dt=0.02, q=2, k=8, b=20, stage_steps=100)
        r_unit, w_unit = cdbm_time_pair(t, 150, eps=1e-4, **kw)
        r_ve, w_ve = cdbm_time_pair(80 * t, 150, eps=80e-4, horizon=80.0, **kw)
        assert torch.allclose(r_ve, 80 * r_unit, rtol=1e-5)
        assert torch.allclose(w_ve, w_unit / (80 if schedule == "sigmoid" else 1), rtol=1e-5)


def _cbd_loss(dt, student_var=V, n=8192):
    p = BridgeVPProcess()
    student = ExactConsistency(p, student_var)
    method = CBDMethod(CBDConfig(schedule="constant", dt=dt), student, p, teacher=ExactDenoiser(p))
    x0, y = gaussian_pairs(n)
    losses, _ = method.loss({"model": student}, {"x": x0, "cond": y}, 0, torch.Generator().manual_seed(1))
    return float(losses["model"])


def test_cbd_loss_vanishes_for_the_exact_bridge_consistency_function():
    """With h = h* and the exact teacher, only the ODE-1 step's local error O(dt^2) is left: a tiny loss that
    falls about 16x when dt halves (8x or more here); a wrong consistency function is far off."""
    coarse, fine = _cbd_loss(0.04), _cbd_loss(0.02)
    assert coarse < 1e-5
    assert coarse / fine > 8
    assert _cbd_loss(0.04, student_var=4 * V) > 30 * coarse


def test_cbt_target_is_the_bridge_sample_at_r_with_the_same_noise():
    """x_hat_r = a_r y + b_r x0 + c_r z with z = (x_t - a_t y - b_t x0) / c_t taken from the online input."""
    p = BridgeVPProcess()
    torch.manual_seed(0)
    net = MLPConfig(hidden=16, depth=1, emb_dim=4).build((2,), 2, 2)
    model = Denoiser(net, p, "consistency")
    method = CBTMethod(CBTConfig(schedule="constant", dt=0.1), model, p)
    seen = {}

    def spy(name, module):
        forward = module.forward

        def wrapped(x, t, cond=None, labels=None):
            seen[name] = (x.clone(), t.clone())
            return forward(x, t, cond=cond, labels=labels)
        module.forward = wrapped

    spy("online", model)
    spy("target", method.target)
    x0, y = torch.randn(16, 2), torch.randn(16, 2)
    method.loss({"model": model}, {"x": x0, "cond": y}, 0, torch.Generator().manual_seed(2))
    (x_t, t), (x_r, r) = seen["online"], seen["target"]
    a_t, b_t, c_t = (v[:, None] for v in p.coefficients(t))
    a_r, b_r, c_r = (v[:, None] for v in p.coefficients(r))
    z = (x_t - a_t * y - b_t * x0) / c_t
    assert torch.allclose(r, (t - 0.1).clamp(min=p.t_min))
    assert torch.allclose(x_r, a_r * y + b_r * x0 + c_r * z, atol=1e-5)


def test_bridge_consistency_methods_refuse_other_processes_and_unpaired_data():
    from fsg.train.setup import _check_method_fits

    with pytest.raises(UserError, match="method 'cbt' trains the processes bridge-vp, bridge-ve, bridge-i2sb"):
        _check_method_fits(CBTMethod, "edm", (2,), 2, "pair:rings")
    with pytest.raises(UserError, match="needs paired data"):
        _check_method_fits(CBTMethod, "bridge-vp", (2,), 0, "toy:moons")


# ---------------------------------------------------------------------------------- data and conditions

def test_paired_rings_toy():
    train = build_dataset(DataConfig(source="pair:rings", toy_size=500), "train")
    test = build_dataset(DataConfig(source="pair:rings", toy_size=500), "test")
    assert train.shape == (2,) and train.cond_shape == (2,) and len(train) == 500
    x, y = train.points, train.conds
    assert torch.allclose(x.norm(dim=1).mean(), torch.tensor(math.sqrt(2)), atol=0.02)
    assert torch.allclose(y.norm(dim=1).mean(), torch.tensor(1 / math.sqrt(2)), atol=0.02)
    turn = torch.remainder(torch.atan2(x[:, 1], x[:, 0]) - torch.atan2(y[:, 1], y[:, 0]) + math.pi, 2 * math.pi) - math.pi
    assert float((turn.abs() - math.pi / 4).abs().median()) < 0.1          # one of the two modes at +-pi/4
    assert 0.4 < float((turn > 0).float().mean()) < 0.6
    assert not torch.equal(train.points, test.points)


def test_conditions_from_a_folder_an_npz_and_the_data(tmp_path):
    folder = tmp_path / "edges"
    folder.mkdir()
    for i, value in enumerate((0, 255)):
        Image.fromarray(np.full((16, 16), value, np.uint8)).save(folder / f"{i}.png")
    conds = file_conds(folder, (1, 8, 8))
    batch = conds([0, 1, 2])
    assert batch.shape == (3, 1, 8, 8) and float(batch[0].max()) == -1 and float(batch[1].min()) == 1
    assert torch.equal(batch[2], batch[0])                                   # item i mod M
    np.savez(tmp_path / "c.npz", arr_0=np.zeros((2, 8, 8, 1), np.uint8), cond=np.full((3, 8, 8, 1), 255, np.uint8))
    assert torch.equal(file_conds(tmp_path / "c.npz", (1, 8, 8))([4]), torch.ones(1, 1, 8, 8))
    with pytest.raises(UserError, match="shape"):
        file_conds(tmp_path / "c.npz", (3, 8, 8))
    model = tiny_bridge_model((2,))
    model.meta["data"] = to_dict(DataConfig(source="pair:rings", toy_size=50))
    test = build_dataset(DataConfig(source="pair:rings", toy_size=50), "test")
    assert torch.equal(condition_source(model.meta, None)([3, 53]), torch.stack([test[3]["cond"], test[3]["cond"]]))
    assert not torch.equal(condition_source(model.meta, Path("data:train"))([3]), test[3]["cond"][None])


def test_interpolation_ends_are_the_two_seeds_samples():
    model = tiny_bridge_model((1, 8, 8), "consistency")
    y = _conds((1, 8, 8))([0])[0]
    path, nfe = interpolate_bridge(model, y, 4, seeds=(3, 7), sampler="cdbm", steps=2)
    assert path.shape == (4, 1, 8, 8) and nfe == 2
    from tests.helpers import collect
    for seed, end in ((3, path[0]), (7, path[-1])):
        sample, _ = collect(model, 1, seed=seed, sampler="cdbm", steps=2, conds=lambda idx: y[None].expand(len(idx), -1, -1, -1))
        assert torch.allclose(sample[0], end, atol=1e-5)


# ---------------------------------------------------------------------------------- end to end

def _invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_toy_ddbm_cbd_cbt_and_sampling_end_to_end(tmp_path):
    ddbm, cbd, cbt = tmp_path / "ddbm", tmp_path / "cbd", tmp_path / "cbt"
    _invoke("train-diffusion", "--recipe", RECIPES / "tiny/ddbm_toy.yaml", "--run-dir", ddbm, "--max-steps", 3,
            "--device", "cpu", "--no-progress")
    _invoke("distill", "--teacher", ddbm, "--recipe", RECIPES / "tiny/cbd_toy.yaml", "--run-dir", cbd, "--max-steps", 2,
            "--device", "cpu", "--no-progress")
    _invoke("train-consistency", "--init", ddbm, "--recipe", RECIPES / "tiny/cbt_toy.yaml", "--run-dir", cbt,
            "--max-steps", 2, "--device", "cpu", "--no-progress")
    out = tmp_path / "cbd.npz"
    result = _invoke("sample", "--model", cbd, "-n", 6, "--out", out, "--device", "cpu")
    assert "sampler cdbm, NFE 2" in result.output
    with np.load(out) as f:
        samples, cond = f["arr_0"], f["cond"]
    test = build_dataset(DataConfig(source="pair:rings"), "test")
    assert samples.shape == (6, 2) and np.array_equal(cond, np.stack([test[i]["cond"].numpy() for i in range(6)]))
    again = tmp_path / "again.npz"
    _invoke("sample", "--model", cbd, "-n", 6, "--out", again, "--cond", out, "--device", "cpu")
    with np.load(again) as f:
        assert np.array_equal(f["arr_0"], samples)                          # the npz's conditions, row by row
    result = _invoke("sample", "--model", ddbm, "-n", 4, "--out", tmp_path / "d.npz", "--sampler", "hybrid",
                     "--steps", 3, "--device", "cpu")
    assert "NFE 8" in result.output
    result = _invoke("sample", "--model", cbt, "-n", 4, "--out", tmp_path / "t.npz", "--steps", 3, "--device", "cpu")
    assert "sampler cdbm, NFE 3" in result.output


def test_cbd_starts_from_a_public_ddbm_state_dict(tmp_path):
    """fsg distill --teacher e2h_ema_0.9999_<step>.pt --recipe recipes/cbd.yaml: an ADM state dict in the
    reference naming with 3 + 3 input channels is read as a DDBM-VP teacher (64x64 from the file name)."""
    from fsg.nets.adm import ADMConfig

    torch.manual_seed(0)
    net = ADMConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=()).build((3, 64, 64), 3, 3)
    torch.save(net.state_dict(), tmp_path / "e2h_ema_0.9999_10.pt")
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    g = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(g.integers(0, 256, (64, 128, 3), dtype=np.uint8)).save(pairs / f"{i}.png")
    run = tmp_path / "cbd"
    _invoke("distill", "--teacher", tmp_path / "e2h_ema_0.9999_10.pt", "--recipe", RECIPES / "cbd.yaml", "--run-dir", run,
            "--set", f"data.path={pairs}", "--set", "train.batch_size=2", "--set", "train.bf16=false",
            "--max-steps", 1, "--device", "cpu", "--no-progress")
    from fsg.io.checkpoint import read_model
    _, meta = read_model(run / "model.safetensors")
    assert (meta["method"], meta["precond"], meta["process"]["name"]) == ("cbd", "consistency", "bridge-vp")
    assert meta["sample"] == {"sampler": "cdbm", "steps": 2} and meta["cond_channels"] == 3


def test_interpolate_command_on_a_bridge_model(tmp_path):
    ddbm, cbd = tmp_path / "ddbm", tmp_path / "cbd"
    _invoke("train-diffusion", "--recipe", RECIPES / "tiny/ddbm_toy.yaml", "--run-dir", ddbm, "--max-steps", 2,
            "--device", "cpu", "--no-progress")
    _invoke("distill", "--teacher", ddbm, "--recipe", RECIPES / "tiny/cbd_toy.yaml", "--run-dir", cbd, "--max-steps", 1,
            "--device", "cpu", "--no-progress")
    result = _invoke("interpolate", "--model", cbd, "-n", 5, "--seeds", "0,1", "--out", tmp_path / "i.png",
                     "--device", "cpu")
    assert "interpolate (bridge): 5 points, NFE 2 each" in result.output
    assert (tmp_path / "i.png").stat().st_size > 0


# ---------------------------------------------------------------------------------- sampler knobs on the command line

def _fsg(monkeypatch, capsys, *args):
    """`fsg ARGS` through the console entry point: (exit code, stdout, stderr); a UserError exits with 2."""
    import sys

    from fsg.cli import main

    monkeypatch.setattr(sys, "argv", ["fsg", *map(str, args)])
    with pytest.raises(SystemExit) as stop:
        main()
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


def _saved_bridge(tmp_path, name, **kw):
    from fsg.io.checkpoint import save_model

    model = tiny_bridge_model(**kw)
    path = tmp_path / f"{name}.safetensors"
    save_model(path, model.denoiser.net.state_dict(), model.meta)
    return path


def _cond_npz(tmp_path, shape=(1, 8, 8)):
    path = tmp_path / "cond.npz"
    np.savez(path, cond=np.random.default_rng(0).integers(0, 256, (3, shape[1], shape[2], shape[0]), dtype=np.uint8))
    return path


def test_sample_eta_reaches_dbim_and_keeps_the_nfe(tmp_path, monkeypatch, capsys):
    model, cond = _saved_bridge(tmp_path, "ddbm"), _cond_npz(tmp_path)
    outputs, samples = [], []
    for eta in (0, 1):
        out = tmp_path / f"eta{eta}.npz"
        code, stdout, _ = _fsg(monkeypatch, capsys, "sample", "--model", model, "--cond", cond, "-n", 3, "--out", out,
                               "--sampler", "dbim", "--steps", 5, "--eta", eta, "--device", "cpu")
        assert code == 0
        outputs.append(stdout)
        with np.load(out) as f:
            samples.append(f["arr_0"])
    assert f"sampler dbim (eta 0), NFE 5," in outputs[0] and "sampler dbim (eta 1), NFE 5," in outputs[1]
    assert not np.array_equal(samples[0], samples[1])


def test_sample_hybrid_knobs_guidance_is_the_h_term_weight(tmp_path, monkeypatch, capsys):
    """On a class-conditional bridge, --guidance is w of the h-term, not classifier-free guidance (which would
    double the NFE); --churn-step-ratio 0 drops the churn steps: NFE 2N - 1 instead of 3N - 1."""
    model, cond = _saved_bridge(tmp_path, "ddbm", num_classes=3), _cond_npz(tmp_path)
    runs = {}
    for name, extra in (("default", []), ("w", ["--guidance", 0.5]), ("ode", ["--churn-step-ratio", 0])):
        out = tmp_path / f"{name}.npz"
        code, stdout, _ = _fsg(monkeypatch, capsys, "sample", "--model", model, "--cond", cond, "-n", 2, "--out", out,
                               "--sampler", "hybrid", "--steps", 3, "--class-label", 1, "--device", "cpu", *extra)
        assert code == 0
        with np.load(out) as f:
            runs[name] = (stdout, f["arr_0"])
    assert "sampler hybrid (churn-step-ratio 0.33, guidance 1), NFE 8," in runs["default"][0]
    assert "sampler hybrid (churn-step-ratio 0.33, guidance 0.5), NFE 8," in runs["w"][0]
    assert "sampler hybrid (churn-step-ratio 0, guidance 1), NFE 5," in runs["ode"][0]
    assert not np.array_equal(runs["default"][1], runs["w"][1])


@pytest.mark.parametrize("args,message", [
    (["--sampler", "hybrid", "--eta", 1], "--eta applies to the dbim sampler, not to 'hybrid'"),
    (["--sampler", "dbim2", "--eta", 0], "--eta applies to the dbim sampler, not to 'dbim2'"),
    (["--sampler", "dbim", "--churn-step-ratio", 0.2], "--churn-step-ratio applies to the hybrid sampler, not to 'dbim'"),
    (["--sampler", "dbim", "--guidance", 0.5], "--guidance applies to the hybrid sampler, not to 'dbim'"),
    (["--sampler", "hybrid", "--churn-step-ratio", 1], "--churn-step-ratio must lie in [0, 1), got 1"),
    (["--sampler", "dbim", "--eta", -0.5], "--eta must be non-negative, got -0.5"),
    (["--sampler", "dbim", "--mask", "nowhere.png"], "--mask nowhere.png: expected an image file"),
])
def test_sample_knob_errors_are_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys, args, message):
    model, cond = _saved_bridge(tmp_path, "ddbm"), _cond_npz(tmp_path)
    code, _, err = _fsg(monkeypatch, capsys, "sample", "--model", model, "--cond", cond, "-n", 2,
                        "--out", tmp_path / "x.npz", "--device", "cpu", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_bridge_knobs_do_not_reach_other_samplers(tmp_path, monkeypatch, capsys):
    from tests.helpers import tiny_model

    with pytest.raises(UserError, match="--eta applies to the dbim sampler, not to 'heun'"):
        plan_sampler(tiny_model(), "heun", 4, eta=1.0)
    with pytest.raises(UserError, match="--churn-step-ratio applies to the hybrid sampler, not to 'consistency'"):
        plan_sampler(tiny_model(precond="consistency"), "consistency", 1, churn_step_ratio=0.5)
    assert plan_sampler(tiny_model(), "heun", 4, eta=None).name == "heun"


# ---------------------------------------------------------------------------------- inpainting: known pixels kept

def _inpainting_model(precond="diffusion", degrade="mask-center"):
    model = tiny_bridge_model((1, 8, 8), precond)
    model.meta["data"] = to_dict(DataConfig(source="digits", degrade=degrade, holdout=0.1))
    return model


@pytest.mark.parametrize("sampler,steps,precond", [("hybrid", 3, "diffusion"), ("dbim", 4, "diffusion"),
                                                   ("dbim2", 5, "diffusion"), ("dbim3", 5, "diffusion"),
                                                   ("cdbm", 2, "consistency")])
def test_inpainting_keeps_the_known_pixels_bit_for_bit(sampler, steps, precond):
    """Outside the centred hole the samples equal the condition y exactly; inside they are generated (y is 0
    there, the samples are not); the NFE is that of the unmasked sampler."""
    from fsg.data.degrade import make_mask
    from fsg.data.conditions import mask_source
    from tests.helpers import collect

    model = _inpainting_model(precond)
    conds = condition_source(model.meta, None)                              # the held-out digits, centre zeroed
    masks, kind = mask_source(model.meta, conds)
    assert kind == "mask-center" and torch.equal(masks([0, 1]), make_mask("center", (2, 1, 8, 8)))
    x, nfe = collect(model, 4, sampler=sampler, steps=steps, conds=conds, masks=masks)
    _, plain_nfe = collect(model, 4, sampler=sampler, steps=steps, conds=conds)
    y, hole = conds(range(4)), make_mask("center", (4, 1, 8, 8)) > 0
    assert nfe == plain_nfe
    assert torch.equal(x[~hole], y[~hole])
    assert bool((y[hole] == 0).all()) and bool((x[hole] != 0).any()) and bool(torch.isfinite(x).all())


def test_an_all_hole_mask_changes_nothing_and_an_empty_one_returns_y():
    """keep_known(x, y, 1) = x and keep_known(x, y, 0) = y, for every x0 estimate and the output."""
    from tests.helpers import collect, tiny_model

    model, conds = tiny_bridge_model(), _conds((1, 8, 8))
    plain, _ = collect(model, 3, sampler="dbim", steps=4, eta=1.0, conds=conds)
    kw = dict(sampler="dbim", steps=4, eta=1.0, conds=conds)
    ones, _ = collect(model, 3, masks=lambda idx: torch.ones(len(idx), 1, 8, 8), **kw)
    zeros, _ = collect(model, 3, masks=lambda idx: torch.zeros(len(idx), 1, 8, 8), **kw)
    assert torch.equal(ones, plain) and torch.equal(zeros, conds(range(3)))
    with pytest.raises(UserError, match="--mask applies to the bridge samplers"):
        collect(tiny_model(), 2, sampler="heun", steps=2, masks=lambda idx: torch.ones(len(idx), 1, 8, 8))


def test_sample_command_keeps_the_known_pixels(tmp_path, monkeypatch, capsys):
    from fsg.io.checkpoint import save_model

    model = _inpainting_model()
    path = tmp_path / "inpaint.safetensors"
    save_model(path, model.denoiser.net.state_dict(), model.meta)
    out = tmp_path / "s.npz"
    code, stdout, _ = _fsg(monkeypatch, capsys, "sample", "--model", path, "-n", 3, "--out", out, "--steps", 4,
                           "--device", "cpu")
    assert code == 0 and "NFE 4" in stdout and "known pixels of each condition are kept (mask: mask-center)" in stdout
    with np.load(out) as f:
        samples, cond = f["arr_0"], f["cond"]
    known = np.ones((8, 8), bool)
    known[2:6, 2:6] = False
    assert np.array_equal(samples[:, known], cond[:, known]) and not np.array_equal(samples[:, ~known], cond[:, ~known])


def test_masks_of_stroke_data_a_mask_file_and_interpolation(tmp_path):
    """mask-strokes: the masks are the holes the data was made with, cond = x (1 - mask); they are unknown for
    other conditions unless --mask gives them; a mask image is white on the hole; interpolation keeps y too."""
    from fsg.data.conditions import mask_source

    model = _inpainting_model(degrade="mask-strokes")
    conds = condition_source(model.meta, Path("data:train"))
    masks, kind = mask_source(model.meta, conds)
    items = build_dataset(DataConfig(source="digits", degrade="mask-strokes", holdout=0.1), "train")
    m = masks([3, 4])
    assert kind == "mask-strokes" and m.sum() > 0 and not torch.equal(m[0], m[1])
    for j, mask in zip((3, 4), m):
        assert torch.equal(items[j]["cond"], items[j]["x"] * (1 - mask))
    np.savez(tmp_path / "c.npz", cond=np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(UserError, match="--mask"):
        mask_source(model.meta, condition_source(model.meta, tmp_path / "c.npz"))
    picture = np.zeros((16, 16), np.uint8)
    picture[:8] = 255                                                    # the top half is the hole
    Image.fromarray(picture).save(tmp_path / "hole.png")
    masks, kind = mask_source(model.meta, conds, tmp_path / "hole.png")
    expected = torch.zeros(2, 1, 8, 8)
    expected[:, :, :4] = 1
    assert kind == str(tmp_path / "hole.png") and torch.equal(masks([0, 7]), expected)

    center = _inpainting_model("consistency")
    y = condition_source(center.meta, None)([0])[0]
    path, _ = interpolate_bridge(center, y, 3, sampler="cdbm", steps=2)
    hole = torch.zeros(8, 8, dtype=torch.bool)
    hole[2:6, 2:6] = True
    assert torch.equal(path[:, :, ~hole], y[None, :, ~hole].expand(3, -1, -1))


def test_folder_conditions_are_resized_as_the_model_data_resized_them(tmp_path):
    """A model trained with data.resize_cond = nearest reads --cond folders with nearest too: only source values."""
    folder = tmp_path / "normals"
    folder.mkdir()
    pixels = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "0.png")
    model = tiny_bridge_model((3, 8, 8))
    model.meta["data"] = to_dict(DataConfig(source="paired-folders", resize_cond="nearest"))
    y = condition_source(model.meta, folder)([0])[0]                            # (3, 8, 8) in [-1, 1]
    source = {tuple(p) for p in pixels.reshape(-1, 3).tolist()}
    got = ((y + 1) * 127.5).round().to(torch.int64).permute(1, 2, 0).reshape(-1, 3).tolist()
    assert all(tuple(p) in source for p in got)


# ------------------------------------------------------------------------ fidelity to the reference samplers

def test_dbim_coefficients_keep_python_float_times_in_float64():
    """DiffusionBridge's `sample_dbim` in float64, bridge-VP (beta_d 2, beta_min 0.1, T 1), s = 0.999 -> t = 0.8, eta 0:
    x_t = k x_s + (b_t - k b_s) x0_hat + (a_t - k a_s) y with k = c_t / c_s = 10.775732849972 (through float32
    times the same formula gives 10.775801906); bridge-VE (T 80), s = 79.9 -> t = 40: k = 8.673803891349."""
    one, zero = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    vp = BridgeVPProcess(beta_d=2.0, beta_min=0.1, t_max=1.0)
    assert float(dbim_step(vp, one, zero, zero, 0.999, 0.8)) == pytest.approx(10.775732849972, rel=1e-11)
    assert float(dbim_step(vp, zero, one, zero, 0.999, 0.8)) == pytest.approx(0.311053531618, rel=1e-10)
    assert float(dbim_step(vp, zero, zero, one, 0.999, 0.8)) == pytest.approx(-10.116932792878, rel=1e-11)
    ve = BridgeVEProcess(t_max=80.0)
    assert float(dbim_step(ve, one, zero, zero, 79.9, 40.0)) == pytest.approx(8.673803891349, rel=1e-11)


@pytest.mark.parametrize("w,ode,sde", [(1.0, 1 / 24, 0.05), (0.5, 1 / 30, 0.05), (0.0, 0.025, 0.05)])
def test_hybrid_guidance_on_bridge_ve_follows_ddbm_to_d(w, ode, sde):
    """DDBM's VE `to_d`: d = -g^2/2 (s0 - w h) in the ODE, -g^2 s0 in the stochastic step, with g^2 = 2 sigma,
    s0 = (D - x)/sigma^2 and h = (y - x)/(T^2 - sigma^2). T = 80, sigma = 40, x = 1, y = 3, D = 0:
    s0 = -1/1600, h = 1/2400; ODE -40 (-1/1600 - w/2400), SDE 80/1600 = 0.05 whatever w."""
    p = BridgeVEProcess(t_max=80.0)
    x, y, d = (torch.full((1, 1), v, dtype=torch.float64) for v in (1.0, 3.0, 0.0))
    assert float(p.reverse_drift(x, y, d, 40.0, stochastic=False, w=w)) == pytest.approx(ode, rel=1e-9)
    assert float(p.reverse_drift(x, y, d, 40.0, stochastic=True, w=w)) == pytest.approx(sde, rel=1e-9)


@pytest.mark.parametrize("w,ode,sde", [(1.0, 3.131790956253, 3.694125504861), (0.5, 1.572062752431, 2.134397301039)])
def test_hybrid_guidance_on_bridge_vp_follows_ddbm_get_d_vp(w, ode, sde):
    """DDBM's `get_d_vp` (beta_d 2, beta_min 0.1, T 1), t = 0.5, x = 1, y = 3, D = 0: w weighs the h-term in both
    the ODE and the stochastic step (values from the reference's own expressions)."""
    p = BridgeVPProcess(beta_d=2.0, beta_min=0.1, t_max=1.0)
    x, y, d = (torch.full((1, 1), v, dtype=torch.float64) for v in (1.0, 3.0, 0.0))
    assert float(p.reverse_drift(x, y, d, 0.5, stochastic=False, w=w)) == pytest.approx(ode, rel=1e-9)
    assert float(p.reverse_drift(x, y, d, 0.5, stochastic=True, w=w)) == pytest.approx(sde, rel=1e-9)
