"""Consistency losses against closed forms on Gaussian data."""


import pytest
import torch

from fsg.core.processes import EDMProcess
from fsg.methods.cd import CDConfig, CDMethod
from fsg.methods.ct import CTConfig, CTMethod
from fsg.nets.denoiser import Denoiser
from fsg.nets.mlp import MLPConfig
from tests.gaussian import ExactConsistency, ExactDenoiser

S = 0.5


def _cd_loss(num_scales, solver="heun"):
    p = EDMProcess(sigma_max=10.0)
    student = ExactConsistency(S, p.sigma_min)
    method = CDMethod(CDConfig(num_scales=num_scales, solver=solver), student, p, teacher=ExactDenoiser(S))
    gen = torch.Generator().manual_seed(0)
    x0 = S * torch.randn(4096, 2, generator=gen, dtype=torch.float64)
    losses, logs = method.loss({"model": student}, {"x": x0}, 0, gen)
    return float(losses["model"].detach())


def test_cd_loss_vanishes_for_the_exact_consistency_function():
    """With f = f* and the exact denoiser, the only error is the Heun step's local error O(h^3):
    the l2 loss is tiny and falls like h^6 when the grid is refined."""
    coarse, fine = _cd_loss(20), _cd_loss(40)
    assert coarse < 1e-4
    assert coarse / fine > 20                              # ~2^6 = 64 asymptotically
    assert _cd_loss(20, "euler") > 10 * coarse              # a first-order step leaves a larger error


def test_cd_loss_positive_for_a_wrong_student():
    p = EDMProcess(sigma_max=10.0)
    wrong = ExactConsistency(2 * S, p.sigma_min)            # consistency function of another Gaussian
    method = CDMethod(CDConfig(num_scales=20), wrong, p, teacher=ExactDenoiser(S))
    gen = torch.Generator().manual_seed(0)
    x0 = S * torch.randn(1024, 2, generator=gen, dtype=torch.float64)
    assert float(method.loss({"model": wrong}, {"x": x0}, 0, gen)[0]["model"]) > 1e-3


def test_target_network_ema_update():
    torch.manual_seed(0)
    net = MLPConfig(hidden=8, depth=1, emb_dim=4).build((2,), 2)
    model = Denoiser(net, EDMProcess(), "consistency")
    method = CDMethod(CDConfig(target_ema=0.9), model, EDMProcess(), teacher=ExactDenoiser(S))
    before = [p.clone() for p in method.target.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    method.after_step(0)
    for b, t, p in zip(before, method.target.parameters(), model.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * p)          # theta^- <- mu theta^- + (1 - mu) theta


def test_ct_target_shares_noise_and_dropout_mask():
    """CT: x_{t_{n+1}} = x0 + t_{n+1} z with the same z, and the target pass replays the online dropout mask:
    with mu = 0 (target = online weights) and N = 2 the two passes differ only through t."""
    torch.manual_seed(0)
    net = MLPConfig(hidden=16, depth=1, emb_dim=4, dropout=0.5).build((2,), 2)
    model = Denoiser(net, EDMProcess(), "consistency").train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    seen = []
    real_forward = model.forward

    def spy(x, t, cond=None, labels=None):
        out = real_forward(x, t, cond=cond, labels=labels)
        seen.append((x.clone(), t.clone()))
        return out

    method = CTMethod(CTConfig(schedule="ict", s0=1, s1=1, total_steps=10), model, EDMProcess())
    method.target.forward = spy
    x0 = torch.randn(8, 2)
    gen = torch.Generator().manual_seed(1)
    method.loss({"model": model}, {"x": x0}, 0, gen)
    (x_r, r), = seen
    # N = 2: t = sigma_max, r = sigma_min; x_r = x0 + r z where z = (x_t - x0) / t
    assert torch.allclose(r, torch.full_like(r, 0.002))
    # same dropout mask: evaluating the target twice with the replayed RNG is deterministic
    from fsg.methods.base import SharedDropout
    rng = SharedDropout(torch.device("cpu"))
    a = model(x0, torch.full((8,), 1.0))
    with rng.replay():
        b = model(x0, torch.full((8,), 1.0))
    assert torch.equal(a, b)


def test_lpips_distance_without_local_weights_is_a_clear_error(monkeypatch):
    from fsg.errors import UserError
    monkeypatch.delenv("FSG_LPIPS", raising=False)
    torch.manual_seed(0)
    net = MLPConfig(hidden=8, depth=1, emb_dim=4).build((2,), 2)
    with pytest.raises(UserError, match="LPIPS needs local weights"):
        CDMethod(CDConfig(distance="lpips"), Denoiser(net, EDMProcess(), "consistency"), EDMProcess(), teacher=ExactDenoiser(S))
