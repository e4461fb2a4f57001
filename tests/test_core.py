"""Formulas of fsg.core against hand derivations and identities."""

import math

import pytest
import torch

from fsg.core.edm import EDMProcess, VPProcess, consistency_scalings
from fsg.core.schedules import karras_index_to_sigma, karras_sigmas
from fsg.core.distances import pseudo_huber
from fsg.core.schedules import ct_num_scales_and_ema, ect_r, ict_num_scales, lognormal_index_probs
from fsg.core.solvers import euler_step, heun_step, ode_velocity
from tests.gaussian import ExactDenoiser, ode_solution


def test_karras_grid_endpoints_and_rho1_is_linear():
    s = karras_sigmas(18, 0.002, 80.0, 7.0)
    assert s[0] == pytest.approx(80.0) and s[17] == pytest.approx(0.002) and s[18] == 0
    assert bool((s[1:] < s[:-1]).all())
    lin = karras_sigmas(5, 1.0, 5.0, rho=1.0, append_zero=False)
    assert lin.tolist() == pytest.approx([5.0, 4.0, 3.0, 2.0, 1.0])
    assert float(karras_index_to_sigma(0, 40, 0.002, 80.0)) == pytest.approx(80.0)
    assert float(karras_index_to_sigma(39, 40, 0.002, 80.0)) == pytest.approx(0.002)


def test_edm_scalings_table1_identities():
    p = EDMProcess()
    t = torch.tensor([0.01, 0.5, 3.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = p.scalings(t)
    sd = 0.5
    # c_skip^2 sd^2 ... the EDM scalings satisfy c_skip + c_out^2 / sd^2 = 1 (unit-variance target)
    assert torch.allclose(c_skip + c_out**2 / sd**2, torch.ones_like(t))
    assert torch.allclose(c_in, (t**2 + sd**2).rsqrt())
    assert torch.allclose(c_noise, t.log() / 4)
    # at sigma = sigma_data: c_skip = 1/2, c_out = sd / sqrt2
    c_skip, c_out, _, _ = p.scalings(torch.tensor([sd], dtype=torch.float64))
    assert float(c_skip) == pytest.approx(0.5) and float(c_out) == pytest.approx(sd / math.sqrt(2))


def test_consistency_boundary_condition_exact():
    t = torch.tensor([0.002], dtype=torch.float64)
    c_skip, c_out, _, _ = consistency_scalings(t, 0.5, 0.002)
    assert float(c_skip) == 1.0 and float(c_out) == 0.0
    # away from the boundary they tend to the EDM scalings
    t = torch.tensor([80.0], dtype=torch.float64)
    cs, co, _, _ = consistency_scalings(t, 0.5, 0.002)
    es, eo, _, _ = EDMProcess().scalings(t)
    assert float(cs) == pytest.approx(float(es), rel=1e-3) and float(co) == pytest.approx(float(eo), rel=1e-4)


def test_vp_sigma_roundtrip_and_scalings():
    p = VPProcess()
    t = torch.tensor([1e-5, 0.1, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(p.sigma_inv(p.sigma(t)), t, rtol=1e-6)
    # sigma(t)^2 = exp(beta_d t^2/2 + beta_min t) - 1 at t = 1: exp(9.95 + 0.1) - 1
    assert p.sigma_max == pytest.approx(math.sqrt(math.exp(19.9 / 2 + 0.1) - 1))
    c_skip, c_out, c_in, _ = p.scalings(torch.tensor([2.0]))
    assert float(c_skip) == 1.0 and float(c_out) == -2.0 and float(c_in) == pytest.approx(1 / math.sqrt(5))


@pytest.mark.parametrize("n_steps", [16])
def test_heun_is_second_order_on_gaussian_data(n_steps):
    s, T, t_end = 0.5, 10.0, 0.1
    D = ExactDenoiser(s)
    x_T = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * math.sqrt(s**2 + T**2)
    exact = ode_solution(x_T, T, t_end, s)

    def solve(step, n):
        ts = torch.linspace(T, t_end, n + 1, dtype=torch.float64)
        x = x_T
        for a, b in zip(ts[:-1], ts[1:]):
            x = step(ode_velocity(EDMProcess(), D), x, float(a), float(b))
        return (x - exact).abs().max().item()

    e1, e2 = solve(heun_step, n_steps), solve(heun_step, 2 * n_steps)
    assert 3.0 < e1 / e2 < 5.0            # error ~ h^2: halving h divides it by 4
    f1, f2 = solve(euler_step, n_steps), solve(euler_step, 2 * n_steps)
    assert 1.6 < f1 / f2 < 2.4            # Euler: first order


def test_ct_schedule_by_hand():
    # k = 0: N = ceil(sqrt(s0^2) - 1) + 1 = s0 + 0 -> n' = s0 - 1 = 1, N = 2; mu = exp(s0 ln mu0 / n')
    N, mu = ct_num_scales_and_ema(0, 1000, 2, 150, 0.95, form="code")
    assert N == 2 and mu == pytest.approx(math.exp(2 * math.log(0.95) / 1))
    N, mu = ct_num_scales_and_ema(0, 1000, 2, 150, 0.95, form="paper")
    assert N == 2 and mu == pytest.approx(0.95)          # paper: exp(s0 ln mu0 / N) = mu0 when N = s0
    # k = K: sqrt((s1+1)^2) - 1 = s1 -> N = s1 + 1
    N, mu = ct_num_scales_and_ema(1000, 1000, 2, 150, 0.95)
    assert N == 151 and mu == pytest.approx(0.95 ** (2 / 150))
    # k = K/2: sqrt(0.5 (151^2 - 4) + 4) = sqrt(11402.5) = 106.78 -> ceil(105.78) = 106 -> N = 107
    N, _ = ct_num_scales_and_ema(500, 1000, 2, 150, 0.95)
    assert N == 107


def test_ict_doubling_by_hand():
    # K = 400000, s0 = 10, s1 = 1280: K' = floor(400000 / 8) = 50000
    assert ict_num_scales(0, 400_000) == 11
    assert ict_num_scales(49_999, 400_000) == 11
    assert ict_num_scales(50_000, 400_000) == 21
    assert ict_num_scales(399_999, 400_000) == 1281


def test_lognormal_index_probs_sum_and_mode():
    sig = karras_sigmas(50, 0.002, 80.0, append_zero=False).flip(0)
    p = lognormal_index_probs(sig, -1.1, 2.0)
    assert float(p.sum()) == pytest.approx(1.0) and len(p) == 49
    mid = 0.5 * (sig[:-1].log() + sig[1:].log())
    # the heaviest interval is near ln sigma = P_mean relative to its width: check it contains e^-1.1 region
    i = int((p / (sig[1:].log() - sig[:-1].log())).argmax())
    assert abs(float(mid[i]) - (-1.1)) < 0.5


def test_ect_mapping_by_hand():
    t = torch.tensor([1.0, 2.0])
    r = ect_r(t, stage=0, q=2.0, mapping="const")           # r = t (1 - 1/2)
    assert r.tolist() == pytest.approx([0.5, 1.0])
    r = ect_r(t, stage=1, q=2.0, mapping="const")           # r = t (1 - 1/4)
    assert r.tolist() == pytest.approx([0.75, 1.5])
    r = ect_r(torch.tensor([0.0 + 1e-9, 1.0]), stage=3, q=2.0, k=8.0, b=1.0)   # 1 - 1/16 (1 + 8 sigmoid(-t))
    assert float(r[1]) == pytest.approx(1.0 * (1 - (1 + 8 / (1 + math.e)) / 16))
    assert float(ect_r(torch.tensor([0.1]), stage=0, q=2.0)) == 0.0    # 1 - (1 + 8 sigmoid(-0.1))/2 < 0 -> clamped


def test_pseudo_huber_limits():
    d = torch.tensor([[3.0, 4.0]])                     # ||d|| = 5
    assert float(pseudo_huber(d, 0.0)) == pytest.approx(5.0)
    assert float(pseudo_huber(d.double(), 1e3)) == pytest.approx(25 / 2e3, rel=1e-2)   # ~ ||d||^2 / (2c) for large c
