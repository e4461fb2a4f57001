"""PaGoDA: PF-ODE inversion, decoder growth, the one-step sampler and the GAN weighting."""

import math

from pathlib import Path

import pytest
import torch

from fsg.core.edm import EDMProcess
from fsg.core.schedules import karras_sigmas
from fsg.io.config import to_dict
from fsg.methods.pagoda import (PaGoDAConfig, PaGoDAMethod, adaptive_gan_weight, hinge_disc_loss)
from fsg.models.denoiser import Denoiser
from fsg.nets.grow import GrownConfig, copy_matching, freeze_by_block, grown_config
from fsg.models.load import LoadedModel
from fsg.models.meta import build_denoiser
from fsg.nets.unet import UNetConfig
from fsg.methods.base import RunInfo
from fsg.core.inversion import inversion_times, invert
from fsg.sampling.samplers import sample_heun
from tests.gaussian import ExactDenoiser, ode_solution
from tests.helpers import check_sampler_contract

BASE = UNetConfig(model_channels=8, channel_mult=(1, 2))


def test_inversion_times_ascend_from_sigma_min_to_sigma_max():
    t = inversion_times(5, 0.002, 80.0)
    assert len(t) == 6 and math.isclose(float(t[0]), 0.002, rel_tol=1e-9) and math.isclose(float(t[-1]), 80.0)
    assert bool((t[1:] > t[:-1]).all())


@torch.no_grad()
def _round_trip_error(D, x0, steps):
    z = invert(EDMProcess(), lambda x, t: D(x, t), x0, inversion_times(steps, 0.002, 80.0))
    forward = karras_sigmas(steps + 1, 0.002, 80.0, append_zero=False)      # 80 -> 0.002
    back = sample_heun(lambda x, t: D(x, t), z, forward, None, EDMProcess())
    return z, float((back - x0).abs().max())


def test_inversion_matches_the_closed_form_and_the_forward_ode_returns_the_input():
    s = 0.5
    D = ExactDenoiser(s)
    x0 = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * s
    z, err40 = _round_trip_error(D, x0, 40)
    # the exact PF-ODE flow of Gaussian data from sigma_min to sigma_max, within 40 Heun steps' error (~1%)
    assert torch.allclose(z, ode_solution(x0, 0.002, 80.0, s), rtol=2e-2)
    _, err80 = _round_trip_error(D, x0, 80)
    assert err40 < 2e-3 and err80 < err40 / 4          # Heun is second order: the error shrinks with the steps


def _grown(levels=1, channels=8, shape=(1, 16, 16)):
    cfg = grown_config(BASE, levels, channels, 1)
    return cfg, cfg.build(shape, 1)


def test_growing_copies_every_old_weight_exactly():
    torch.manual_seed(0)
    plain = BASE.build((1, 8, 8), 1)
    for p in plain.parameters():
        torch.nn.init.normal_(p)
    cfg16, g16 = _grown(1)
    copied = copy_matching(g16, plain.state_dict(), plain=True)
    old = plain.state_dict()
    assert sorted(copied) == sorted(old)                     # out: 8 channels in both
    new = g16.state_dict()
    for k, v in old.items():
        assert torch.equal(new[k if k.startswith("out.") else f"base.{k}"], v)
    # growing again keeps the names: every weight of the 16x16 generator is copied to the 32x32 one
    cfg32 = grown_config(cfg16, 1, 99, 99)
    assert (cfg32.levels, cfg32.channels, cfg32.num_res_blocks) == (2, 8, 1)
    g32 = cfg32.build((1, 32, 32), 1)
    copied = copy_matching(g32, new, plain=False)
    assert sorted(copied) == sorted(new)
    assert all(torch.equal(g32.state_dict()[k], v) for k, v in new.items())


def test_a_grown_generator_outputs_the_new_resolution():
    _, net = _grown(2, shape=(1, 32, 32))
    out = net(torch.randn(3, 1, 32, 32), torch.zeros(3))
    assert out.shape == (3, 1, 32, 32)


def test_freezing_by_block_leaves_gradients_only_on_the_intended_blocks():
    _, net = _grown(1)
    n_up = len(net.base.up)
    freeze_by_block(net, n_up - 2)
    net(torch.randn(2, 1, 16, 16), torch.zeros(2)).square().sum().backward()
    for name, p in net.named_parameters():
        trains = name.startswith(("levels.", "out.")) or any(name.startswith(f"base.up.{i}.") for i in (n_up - 2, n_up - 1))
        assert (p.grad is not None) == trains, name
        assert p.requires_grad == trains, name


def test_adaptive_gan_weight_is_clipped_to_the_reference_range():
    assert float(adaptive_gan_weight(torch.tensor(1.0), torch.tensor(0.0))) == pytest.approx(10.0)
    assert float(adaptive_gan_weight(torch.tensor(1e-6), torch.tensor(1.0))) == pytest.approx(0.01)
    assert float(adaptive_gan_weight(torch.tensor(2.0), torch.tensor(1.0))) == pytest.approx(2.0 / (1.0 + 1e-4))


def test_hinge_discriminator_loss_by_hand():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    # relu(1 - 2) = 0, relu(1 - 0.5) = 0.5 -> 0.25; relu(1 - 3) = 0, relu(1 + 0) = 1 -> 0.5
    assert float(hinge_disc_loss(real, fake)) == pytest.approx(0.75)


def _pagoda_model(levels=2, res=16) -> LoadedModel:
    torch.manual_seed(0)
    cfg = GrownConfig(base=BASE, levels=levels, channels=8, num_res_blocks=1)
    meta = {"format": 1, "process": to_dict(EDMProcess()), "precond": "diffusion", "network": to_dict(cfg),
            "shape": [1, res, res], "out_channels": 1, "cond_channels": 0, "num_classes": 0, "method": "pagoda",
            "step": 0, "sample": {"sampler": "pagoda", "steps": 1}, "latent_factor": 2 ** levels}
    den = build_denoiser(meta).eval()
    with torch.no_grad():
        for p in den.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return LoadedModel(den, meta, Path("<test>"))


def test_pagoda_sampler_contract_at_the_grown_resolution():
    check_sampler_contract(_pagoda_model(), nfe=1)


def test_generator_and_discriminator_steps_alternate():
    teacher = Denoiser(BASE.build((1, 8, 8), 1), EDMProcess()).eval()
    cfg = PaGoDAConfig(stage="distill", inversion_steps=2, distance="l2", gan_weight=0.2, disc_channels=4)
    model = Denoiser(BASE.build((1, 8, 8), 1), EDMProcess())
    method = PaGoDAMethod(cfg, model, EDMProcess(), teacher=teacher, run=RunInfo(shape=(1, 8, 8)))
    assert set(method.trainable()) == {"model", "disc"} and method.optimizer_overrides("disc") == {"lr": 2e-3}
    batch = {"x": torch.rand(3, 1, 8, 8) * 2 - 1, "index": torch.arange(3)}
    nets = method.trainable()
    g_losses, g_logs = method.loss(nets, batch, 0, torch.Generator().manual_seed(0))
    d_losses, _ = method.loss(nets, batch, 1, torch.Generator().manual_seed(0))
    assert set(g_losses) == {"model"} and set(d_losses) == {"disc"}
    assert 0.01 <= g_logs["gan_w"] <= 10
    assert len(method.cache) == 3                       # each item is inverted once, then read from the cache
    assert method.export_meta()["latent_factor"] == 1 and method.export_meta()["sample"] == {"sampler": "pagoda", "steps": 1}

