"""TrigFlow and the continuous-time consistency objective (Lu & Song 2025) against identities and hand values."""

import math

import pytest
import torch

from fsg.core.edm import EDMProcess
from fsg.core.trigflow import TrigFlowProcess, velocity_from_teacher
from fsg.methods.scm import SCMCDConfig, SCMCDMethod, normalize_tangent, tangent
from fsg.models.denoiser import Denoiser
from fsg.nets.forward_ad import jvp
from fsg.nets.mlp import MLPConfig

SD = 0.5


def gaussian_edm_denoiser(s: float):
    """The exact EDM denoiser of data N(0, s^2 I): D(x_sigma, sigma) = s^2 / (s^2 + sigma^2) x_sigma."""
    def denoise(x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return s**2 / (s**2 + sigma**2) * x
    return denoise


def test_edm_teacher_velocity_in_trigflow_time_by_hand():
    """Data N(0, 1), sigma_d = 0.5, t = 1.1, x_t = 1: sigma = 0.5 tan 1.1 = 0.982380, x_sigma = 1 / cos 1.1 = 2.204604,
    D = x_sigma / (1 + sigma^2) = 1.121896, dx_t/dt = (cos(1.1) - D) / sin(1.1) = -0.749882, equal to the exact
    Gaussian PF-ODE velocity x_t sin t cos t (sd^2 - s^2) / (cos^2 t s^2 + sin^2 t sd^2)."""
    t, x = torch.tensor([1.1], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    v = velocity_from_teacher(EDMProcess(), gaussian_edm_denoiser(1.0), x, t, SD)
    assert float(v) == pytest.approx(-0.749882, abs=1e-6)
    c, s = math.cos(1.1), math.sin(1.1)
    assert float(v) == pytest.approx(s * c * (SD**2 - 1) / (c**2 + s**2 * SD**2), rel=1e-12)


def test_an_edm_network_is_the_trigflow_network_under_the_edm_time_transform():
    """D_trigflow(x_t, t) = D_edm(x_t / cos t, sigma_d tan t) for the same weights (App. B.2 of Lu & Song 2025)."""
    torch.manual_seed(0)
    net = MLPConfig(hidden=16, depth=1, emb_dim=8).build((2,), 2).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    edm, trig = Denoiser(net, EDMProcess()), Denoiser(net, TrigFlowProcess(time_transform="edm"))
    x_t, t = torch.randn(5, 2, dtype=torch.float64), torch.tensor([0.1, 0.5, 1.0, 1.4, 1.55], dtype=torch.float64)
    got = trig(x_t, t.float())
    want = edm(x_t / t.cos()[:, None], (SD * t.tan()).float())
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def exact_trigflow_F(s: float):
    """F of the exact consistency function of data N(0, s^2 I) in TrigFlow: the PF-ODE maps x_t to
    x_0 = k(t) x_t, k = s / sqrt(cos^2 t s^2 + sin^2 t sd^2), so F = (cos t - k) x_t / (sd sin t)."""
    def F(x, t):
        tt = t.reshape(-1, *([1] * (x.ndim - 1)))
        k = s / (tt.cos() ** 2 * s**2 + tt.sin() ** 2 * SD**2).sqrt()
        return (tt.cos() - k) * x / (SD * tt.sin())
    return F


@pytest.mark.parametrize("arrangement", ["rearranged", "plain"])
def test_the_tangent_vanishes_for_the_exact_consistency_function(arrangement):
    """With the exact F and the exact PF-ODE velocity, f is constant along the ODE: g = cos(t) df/dt = 0."""
    s = 1.3
    F = exact_trigflow_F(s)
    t = torch.tensor([0.2, 0.7, 1.2, 1.5], dtype=torch.float64)
    x_t = torch.randn(4, 3, dtype=torch.float64)
    dxdt = velocity_from_teacher(EDMProcess(), gaussian_edm_denoiser(s), x_t, t, SD)
    cs = t.cos() * t.sin()
    if arrangement == "rearranged":
        F_minus, dF_term = jvp(F, (x_t, t), (cs[:, None] * dxdt, cs))
    else:
        F_minus, dF = jvp(F, (x_t, t), (dxdt, torch.ones_like(t)))
        dF_term = cs[:, None] * dF
    g = tangent(F_minus, dF_term, x_t, dxdt, t, SD, r=1.0)
    assert g.abs().max() < 1e-10


def test_the_tangent_is_cos_t_times_the_derivative_of_f_along_the_ode():
    """g (r = 1) = cos(t) df/dt with f(x, t) = cos t x - sd sin t F(x, t), for any F and velocity (Eq. 6):
    checked by a central difference along (x + h v, t + h)."""
    torch.manual_seed(1)
    net = MLPConfig(hidden=16, depth=2, emb_dim=8, time_scale=1.0).build((2,), 2).double().eval()
    F = lambda x, t: net(x, t)                                                    # noqa: E731
    f = lambda x, t: t.cos()[:, None] * x - SD * t.sin()[:, None] * F(x, t)       # noqa: E731
    x_t, v = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    t = torch.tensor([0.3, 0.9, 1.4], dtype=torch.float64)
    cs = t.cos() * t.sin()
    F_minus, dF_term = jvp(F, (x_t, t), (cs[:, None] * v, cs))
    g = tangent(F_minus, dF_term, x_t, v, t, SD, r=1.0)
    h = 1e-6
    dfdt = (f(x_t + h * v, t + h) - f(x_t - h * v, t - h)) / (2 * h)
    assert torch.allclose(g, t.cos()[:, None] * dfdt, rtol=1e-6, atol=1e-8)


def test_tangent_normalisation_and_warm_up_by_hand():
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert torch.allclose(normalize_tangent(g, 0.1), torch.tensor([[3 / 5.1, 4 / 5.1], [0.0, 0.0]]))
    F_minus, x = torch.zeros(1, 1), torch.ones(1, 1)
    t = torch.tensor([math.pi / 4])
    # g = -cos^2 (0 - 1) - r (cos sin 1 + 0) = 0.5 - 0.5 r
    assert float(tangent(F_minus, torch.zeros(1, 1), x, torch.ones(1, 1), t, SD, r=0.0)) == pytest.approx(0.5)
    assert float(tangent(F_minus, torch.zeros(1, 1), x, torch.ones(1, 1), t, SD, r=1.0)) == pytest.approx(0.0, abs=1e-7)


def test_scd_from_an_edm_teacher_trains_in_trigflow_time():
    process = SCMCDMethod.process_for(SCMCDConfig(), EDMProcess(sigma_data=0.5))
    assert isinstance(process, TrigFlowProcess) and process.time_transform == "edm"
    assert process.t_max == pytest.approx(math.atan(80 / 0.5))
    from fsg.errors import UserError
    from fsg.core.edm import VPProcess
    with pytest.raises(UserError, match="cannot start"):
        SCMCDMethod.process_for(SCMCDConfig(), VPProcess())
