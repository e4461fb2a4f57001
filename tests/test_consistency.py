"""Consistency losses against closed forms on Gaussian data."""


import pytest
import torch

from fsg.core.edm import EDMProcess
from fsg.methods.cd import CDConfig, CDMethod
from fsg.methods.ct import CTConfig, CTMethod
from fsg.models.denoiser import Denoiser
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


class MaskProbe(torch.nn.Module):
    """F(x, t) = w * dropout(1): its output is its own dropout mask (scaled by 1/(1 - p)), whatever x and t."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.drop = torch.nn.Dropout(p)
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, c_noise, labels=None, cond=None, **kw):
        return self.w * self.drop(torch.ones_like(x))


def test_ct_target_shares_noise_and_dropout_mask():
    """CT (Algorithm 3 of Song et al. 2023): the target sees x_r = x0 + r z with the z of x_t = x0 + t z, and replays
    the online pass's dropout mask. Checked on the inputs and masks the two passes really see (a fresh z for the
    target, or a target pass without the replay, fails this test)."""
    torch.manual_seed(0)
    process = EDMProcess()
    model = Denoiser(MaskProbe(), process, "consistency").train()
    method = CTMethod(CTConfig(schedule="ict", s0=10, s1=10, total_steps=10), model, process)
    assert method.target.training                     # the target pass runs dropout too (reference: target_model.train())
    calls, masks = [], []
    for who, net in (("online", model), ("target", method.target)):
        net.register_forward_pre_hook(lambda m, args, who=who: calls.append((who, args[0].detach().clone(), args[1].detach().clone())))
        net.net.drop.register_forward_hook(lambda m, i, o, who=who: masks.append((who, o.detach() != 0)))
    x0 = torch.randn(64, 2)
    method.loss({"model": model}, {"x": x0}, 0, torch.Generator().manual_seed(1))
    assert [c[0] for c in calls] == ["online", "target"] and [m[0] for m in masks] == ["online", "target"]
    (_, x_t, t), (_, x_r, r) = calls
    z = (x_t - x0) / t[:, None]
    assert bool((r < t).all())
    assert torch.allclose(x_r, x0 + r[:, None] * z, rtol=0, atol=1e-4)
    m_online, m_target = masks[0][1], masks[1][1]
    assert 0.2 < m_online.float().mean() < 0.8
    assert torch.equal(m_online, m_target)


def test_lpips_distance_without_local_weights_is_a_clear_error(monkeypatch):
    from fsg.errors import UserError
    monkeypatch.delenv("FSG_LPIPS", raising=False)
    torch.manual_seed(0)
    net = MLPConfig(hidden=8, depth=1, emb_dim=4).build((2,), 2)
    with pytest.raises(UserError, match="LPIPS needs local weights"):
        CDMethod(CDConfig(distance="lpips"), Denoiser(net, EDMProcess(), "consistency"), EDMProcess(), teacher=ExactDenoiser(S))
