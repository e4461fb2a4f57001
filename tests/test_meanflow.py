"""MeanFlow (Geng et al. 2025) and flow maps on two-time networks, against identities and hand values."""

import pytest
import torch

from fsg.core.flow import FlowProcess
from fsg.io.config import from_dict
from fsg.methods.meanflow import MeanFlowConfig, adaptive_weighted, meanflow_target, sample_time_pair
from fsg.models.denoiser import Denoiser
from fsg.nets import NETWORKS
from fsg.nets.forward_ad import jvp
from tests.test_jvp import CASES

S = 1.3     # data N(0, S^2 I)


def sigma(t):
    """Std of z_t = (1 - t) x + t eps for x ~ N(0, S^2): sqrt((1 - t)^2 S^2 + t^2)."""
    return ((1 - t) ** 2 * S**2 + t**2).sqrt()


def exact_u(z, r, t):
    """The flow of Gaussian data maps quantiles: z_r = sigma_r / sigma_t z_t, so u = (z - z_r) / (t - r), and at
    r = t the marginal velocity sigma_t' / sigma_t z."""
    rr, tt = r[:, None], t[:, None]
    same = (tt - rr).abs() < 1e-12
    ratio = sigma(rr) / sigma(tt)
    dlog = ((tt - 1) * S**2 + tt) / sigma(tt) ** 2                # d ln sigma_t / dt
    return torch.where(same, dlog * z, z * (1 - ratio) / torch.where(same, torch.ones_like(tt), tt - rr))


def test_the_meanflow_identity_holds_for_the_exact_average_velocity():
    """u = v - (t - r) (v d_z u + d_t u) (Eqs. 6 and 8) with v the marginal velocity, via one JVP of (z, r, t)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0.9, 0.7, 0.5, 0.3, 0.8], dtype=torch.float64)
    r = torch.tensor([0.1, 0.2, 0.5, 0.0, 0.4], dtype=torch.float64)
    v = exact_u(z, t, t)
    u, dudt = jvp(exact_u, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    assert torch.allclose(meanflow_target(v, dudt, t, r), u, rtol=1e-9, atol=1e-12)


def test_at_r_equal_t_the_target_is_the_velocity_and_the_loss_is_flow_matching():
    v, dudt = torch.randn(4, 2), torch.randn(4, 2)
    t = torch.rand(4)
    assert torch.equal(meanflow_target(v, dudt, t, t), v)


def test_adaptive_weight_by_hand():
    """w = 1 / (||Delta||^2 + c)^p on the sum of squares: Delta = (3, 4), c = 1, p = 0.5 -> 25 / sqrt(26)."""
    loss = adaptive_weighted(torch.tensor([[3.0, 4.0]]), p=0.5, c=1.0)
    assert float(loss) == pytest.approx(25 / 26**0.5)
    assert float(adaptive_weighted(torch.tensor([[3.0, 4.0]]), p=0.0, c=1.0)) == pytest.approx(25.0)


def test_time_pairs_are_sorted_with_the_requested_share_equal():
    cfg = MeanFlowConfig(ratio_r_neq_t=0.25)
    t, r = sample_time_pair(20000, cfg, torch.Generator().manual_seed(0), "cpu")
    assert bool((t >= r).all()) and bool(((t > 0) & (t < 1)).all())
    assert float((t != r).float().mean()) == pytest.approx(0.25, abs=0.01)


def test_one_jump_of_the_exact_flow_map_maps_noise_to_the_data_distribution():
    """z_0 = z_1 - u(z_1, 0, 1) = sigma_0 / sigma_1 z_1 = S eps: one step of the exact flow map samples N(0, S^2)."""
    eps = torch.randn(200000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    one, zero = torch.ones(len(eps), dtype=torch.float64), torch.zeros(len(eps), dtype=torch.float64)
    x = eps - exact_u(eps, zero, one)
    assert float(x.std()) == pytest.approx(S, rel=5e-3)


@pytest.mark.parametrize("arch", list(CASES))
def test_two_time_networks_start_as_their_single_time_selves_and_differentiate_in_both_times(arch):
    """The second time enters through a zero-initialised layer (the single-time weights load as they are), and the
    JVP in (x, t, t - r) matches central differences."""
    shape, kw = CASES[arch]
    cfg_cls = NETWORKS[arch]
    if arch == "grown":
        kw = {**kw, "base": {**kw["base"], "two_times": True}}
        single_kw = CASES[arch][1]
    else:
        single_kw = kw
        kw = {**kw, "two_times": True}
    torch.manual_seed(0)
    single = from_dict(cfg_cls, single_kw).build(shape, shape[0]).double().eval()
    two = from_dict(cfg_cls, kw).build(shape, shape[0]).double().eval()
    missing, unexpected = two.load_state_dict(single.state_dict(), strict=False)
    assert not unexpected and missing and all("time2" in k for k in missing)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    c, h = torch.rand(3, generator=g, dtype=torch.float64), torch.rand(3, generator=g, dtype=torch.float64)
    assert torch.allclose(two(x, c, time2=h), single(x, c))
    with torch.no_grad():
        for p in two.parameters():
            p.add_(0.1 * torch.randn_like(p))
    vx, vc, vh = torch.randn_like(x), torch.randn_like(c), torch.randn_like(h)

    def f(x, c, h):
        return two(x, c, time2=h)

    _, tangent = jvp(f, (x, c, h), (vx, vc, vh))
    e = 1e-6
    numeric = (f(x + e * vx, c + e * vc, h + e * vh) - f(x - e * vx, c - e * vc, h - e * vh)) / (2 * e)
    assert torch.allclose(tangent, numeric, atol=1e-5 * float(numeric.abs().max()), rtol=0)


def test_a_flow_map_denoiser_jumps_to_r_and_to_the_data_by_default():
    """D(z, t, r) = z - (t - r) u(z, r, t); without r, r = 0: the data estimate z - t u."""
    net = NETWORKS["mlp"](hidden=8, depth=1, emb_dim=8, two_times=True).build((2,), 2)
    den = Denoiser(net, FlowProcess(), "consistency")
    z, t, r = torch.randn(3, 2), torch.tensor([0.9, 0.5, 0.7]), torch.tensor([0.2, 0.5, 0.0])
    u = den(z, t, r=r, raw=True)
    assert torch.allclose(den(z, t, r=r), z - (t - r)[:, None] * u)
    assert torch.allclose(den(z, t), z - t[:, None] * den(z, t, r=torch.zeros(3), raw=True))
