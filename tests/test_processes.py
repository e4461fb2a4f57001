"""The Process contract, over every registered process (fsg.core.PROCESSES): identities, not recorded values.

- The PF-ODE drift is the time derivative of the marginal path: with one data point x0 (so D(x_t, t) = x0 exactly)
  and a fixed eps (and y), x(t) = alpha(t) x0 + beta(t) y + sigma(t) eps solves dx/dt = ode_drift(x, x0, t, y).
- The consistency scalings meet the boundary condition f(x, t_min) = x exactly.
- The diffusion preconditioning gives unit-variance network inputs for data of variance sigma_data^2.
- Training times are finite and positive; the marginal is the data at t_min.
"""

import math

import pytest
import torch

from fsg.core import PROCESSES
from fsg.core.ddm import DecoupledProcess
from fsg.core.process import Process, float64, forward_sample

X0_PROCESSES = [name for name, cls in PROCESSES.items() if not issubclass(cls, DecoupledProcess)]


def interior_times(p, n=5):
    """Times spread over the interior of the domain (log-spaced for EDM's wide range)."""
    lo, hi = p.t_min, p.t_max
    u = torch.linspace(0.1, 0.9, n, dtype=torch.float64)
    if hi / max(lo, 1e-12) > 100:
        return torch.exp(math.log(max(lo, 1e-3)) + u * (math.log(hi) - math.log(max(lo, 1e-3))))
    return lo + u * (hi - lo)


@pytest.mark.parametrize("name", X0_PROCESSES)
def test_process_implements_the_protocol(name):
    assert isinstance(PROCESSES[name](), Process)


@pytest.mark.parametrize("name", X0_PROCESSES)
def test_pf_ode_drift_is_the_derivative_of_the_marginal_path_for_one_data_point(name):
    p = PROCESSES[name]()
    g = torch.Generator().manual_seed(0)
    x0, y, eps = (torch.randn(1, 3, generator=g, dtype=torch.float64) for _ in range(3))

    def path(t):
        return forward_sample(p, x0, float64(t).reshape(1), eps, y if "bridge" in name else None)

    for t in interior_times(p).tolist():
        h = 1e-6 * max(t, 1e-3)
        numeric = (path(t + h) - path(t - h)) / (2 * h)
        drift = p.ode_drift(path(t), x0, torch.tensor(t, dtype=torch.float64), y)
        assert torch.allclose(drift, numeric, rtol=1e-5, atol=1e-6), (name, t, drift, numeric)


@pytest.mark.parametrize("name", X0_PROCESSES)
def test_consistency_scalings_are_exact_at_the_boundary(name):
    p = PROCESSES[name]()
    c_skip, c_out, _, _ = p.consistency_scalings(torch.tensor([p.t_min], dtype=torch.float64))
    assert float(c_skip) == pytest.approx(1.0, abs=1e-12) and float(c_out) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", [n for n in X0_PROCESSES if n not in ("vp", "flow")])
def test_diffusion_preconditioning_gives_unit_variance_inputs(name):
    """Var(c_in x_t) = c_in^2 (alpha^2 s0^2 + beta^2 sT^2 + 2 alpha beta s0T + sigma^2) = 1 (EDM Table 1; DDBM's
    bridge scalings). VP's c_in = 1/sqrt(sigma^2 + 1) assumes unit-variance data instead, and the flow path has no
    preconditioning (MeanFlow's), so they are left out."""
    p = PROCESSES[name]()
    if not hasattr(p, "cov_xy") and "bridge" in name:
        pytest.skip("I2SB's preconditioning has c_in = 1 (no variance normalisation)")
    s0, sT, s0T = p.sigma_data, getattr(p, "sigma_T", p.sigma_data), getattr(p, "cov_xy", 0.0)
    t = interior_times(p)
    alpha, beta, sigma = p.marginal(t)
    c_in = p.scalings(t)[2]
    var = alpha**2 * s0**2 + beta**2 * sT**2 + 2 * alpha * beta * s0T + sigma**2
    assert torch.allclose(c_in**2 * var, torch.ones_like(t), rtol=1e-6)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_training_times_are_positive_and_the_marginal_starts_at_the_data(name):
    p = PROCESSES[name]()
    t = p.train_times(1000, torch.Generator().manual_seed(0))
    assert torch.isfinite(t).all() and (t > 0).all()
    if not isinstance(p, DecoupledProcess) or hasattr(p, "marginal"):
        alpha, beta, sigma = p.marginal(torch.tensor([p.t_min], dtype=torch.float64))
        assert float(alpha) == pytest.approx(1.0, abs=1e-2) and float(sigma) < 0.02 and abs(float(beta)) < 1e-2
