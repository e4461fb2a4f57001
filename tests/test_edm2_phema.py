"""Post-hoc EMA (fsg.train.phema): the power-function profiles against hand derivations, the online update against its
closed form, and a reconstruction from a run's snapshots against an EMA of the same length tracked directly."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from fsg.app.phema import reconstruct_phema
from fsg.app.train import train
from fsg.cli.phema import phema as phema_command
from fsg.errors import UserError
from fsg.io.checkpoint import read_model
from fsg.train import engine
from fsg.train.phema import (MAX_STD, ema_beta, exp_to_std, list_snapshots, posthoc_coefficients, profile_inner_product,
                             reconstruction_plan, std_to_exp)


def _profile(t, gamma, tau):
    return np.where(tau <= t, (gamma + 1) * tau**gamma / t ** (gamma + 1), 0.0)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 6.94, 16.97])
def test_exp_to_std_is_the_relative_std_of_the_profile(gamma):
    """sigma_rel^2 = E[tau^2] - E[tau]^2 on [0, 1] = (g+1)/(g+3) - ((g+1)/(g+2))^2 = (g+1) / ((g+2)^2 (g+3))."""
    tau = np.linspace(0, 1, 400_001)
    p = _profile(1.0, gamma, tau)
    mean = np.trapezoid(tau * p, tau)
    assert exp_to_std(gamma) == pytest.approx(math.sqrt(np.trapezoid(tau**2 * p, tau) - mean**2), rel=1e-6)
    assert exp_to_std(0.0) == pytest.approx(1 / math.sqrt(12)) == MAX_STD


@pytest.mark.parametrize("std", [0.01, 0.05, 0.1, 0.2, 0.28])
def test_std_to_exp_inverts_exp_to_std(std):
    assert exp_to_std(std_to_exp(std)) == pytest.approx(std, rel=1e-10)


def test_online_update_gives_the_profiles_mass_per_step():
    """With beta_t = (1 - 1/t)^(g+1), the weight of step tau after T steps is (1 - beta_tau) prod_{s > tau} beta_s
    = (tau^(g+1) - (tau-1)^(g+1)) / T^(g+1): the mass of p_T on (tau - 1, tau]."""
    gamma, T = std_to_exp(0.1), 50
    weights = np.zeros(T)
    for t in range(1, T + 1):
        beta = ema_beta(gamma, t)
        weights *= beta
        weights[t - 1] += 1 - beta
    tau = np.arange(1, T + 1)
    assert np.allclose(weights, (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / T ** (gamma + 1), rtol=1e-10, atol=0)


@pytest.mark.parametrize("t_a, std_a, t_b, std_b", [(100, 0.05, 100, 0.10), (60, 0.10, 100, 0.05), (100, 0.2, 30, 0.02)])
def test_inner_product_is_the_integral_of_the_two_profiles(t_a, std_a, t_b, std_b):
    tau = np.linspace(0, max(t_a, t_b), 2_000_001)
    numeric = np.trapezoid(_profile(t_a, std_to_exp(std_a), tau) * _profile(t_b, std_to_exp(std_b), tau), tau)
    assert profile_inner_product(t_a, std_a, t_b, std_b) == pytest.approx(numeric, rel=1e-4)


def test_a_stored_profile_reconstructs_itself():
    """EDM2's check: 256 snapshots of 0.05 and 0.10; the last 0.05 one is the answer for (last step, 0.05)."""
    steps = np.arange(1, 257) * 4096
    x = posthoc_coefficients(np.concatenate([steps, steps]), [0.05] * 256 + [0.10] * 256, [steps[-1]] * 2, [0.05, 0.13])
    assert np.allclose(x.sum(axis=0), 1.0)
    assert x[255, 0] == pytest.approx(1.0) and np.abs(np.delete(x[:, 0], 255)).max() < 1e-6


def test_post_hoc_emas_are_eval_copies_that_start_as_the_model():
    """Each profile is an eval-mode copy without gradients (an EMA is never run in training mode), and the first
    update (beta_1 = 0) makes it the model; with no folder nothing is written."""
    from fsg.core.edm import EDMProcess
    from fsg.models.denoiser import Denoiser
    from fsg.nets.edm2 import EDM2UNetConfig
    from fsg.train.phema import PhemaConfig, PostHocEMA

    cfg = EDM2UNetConfig(model_channels=16, channel_mult=(1,), num_blocks=1, attn_resolutions=(), logvar_channels=8)
    model = Denoiser(cfg.build((1, 4, 4), 1, 0, 0), EDMProcess()).train()
    emas = PostHocEMA(model, PhemaConfig(stds=(0.05, 0.2), every=1), None, {})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    emas.update(model, 0)
    for shadow in emas.shadows:
        assert not shadow.training and not any(p.requires_grad for p in shadow.parameters())
        assert all(torch.equal(a, b) for a, b in zip(shadow.state_dict().values(), model.state_dict().values()))


# ------------------------------------------------------------------------- through the training engine

RECIPE = """\
data: {source: digits, resolution: 8, labels: true}
network: {arch: edm2, model_channels: 16, channel_mult: [1, 2], num_blocks: 1, attn_resolutions: [4],
          channels_per_head: 16, logvar_channels: 8}
method: {name: diffusion}
process: {name: edm, P_mean: -0.8, P_std: 1.6}
train: {batch_size: 32, max_steps: 40, optimizer: adam, lr: 1e-2, betas: [0.9, 0.99], ema: [],
        phema: {stds: [0.05, 0.07, 0.10], every: 5}, log_every: 20, ckpt_every: 20}
sample: {steps: 2, grid: 4}
"""


@pytest.fixture(scope="module")
def phema_run(tmp_path_factory):
    """A tiny EDM2 digits run with post-hoc EMA snapshots of 0.05, 0.07 and 0.10 every 5 steps; counts the forced
    weight normalisations the engine does."""
    tmp = tmp_path_factory.mktemp("phema")
    (tmp / "r.yaml").write_text(RECIPE)
    calls = []
    original = engine.normalize_weights_
    engine.normalize_weights_ = lambda module: (calls.append(type(module).__name__), original(module))
    try:
        train("train-diffusion", tmp / "r.yaml", run_dir=tmp / "run", device="cpu", progress=False)
    finally:
        engine.normalize_weights_ = original
    return tmp, calls


def test_engine_normalises_the_weights_once_per_step(phema_run):
    _, calls = phema_run
    assert calls == ["Denoiser"] * 40


def test_snapshots_are_models_and_the_export_is_the_first_profile(phema_run):
    tmp, _ = phema_run
    snaps = list_snapshots(tmp / "run" / "phema")
    assert [(s, std) for s, std, _ in snaps[:3]] == [(5, 0.05), (5, 0.07), (5, 0.10)] and len(snaps) == 24
    state, meta = read_model(snaps[-3][2])
    assert meta["phema"] == {"std": 0.05, "step": 40} and meta["step"] == 40
    exported = read_model(tmp / "run" / "model.safetensors")[0]          # train.ema: [] -> the first profile
    assert all(torch.equal(exported[k], v) for k, v in state.items())


def test_reconstruction_matches_a_directly_tracked_ema(phema_run):
    """The done-when check: sigma_rel 0.07 rebuilt from the 0.05 and 0.10 snapshots only equals the 0.07 EMA the
    engine tracked, to a small fraction of the distance between the two stored profiles."""
    tmp, _ = phema_run
    inputs = tmp / "inputs"
    inputs.mkdir()
    for _, std, path in list_snapshots(tmp / "run" / "phema"):
        if std != 0.07:
            shutil.copy(path, inputs / path.name)
    app = typer.Typer()
    app.command()(phema_command)
    r = CliRunner().invoke(app, [str(inputs), "--std", "0.07", "--out", str(tmp / "rebuilt")])
    assert r.exit_code == 0 and "EMA std 0.07 at step 40 from 16 snapshots" in r.output, r.output
    rebuilt, meta = read_model(tmp / "rebuilt")
    assert meta["phema"] == {"std": 0.07, "step": 40, "inputs": 16}
    direct = read_model(tmp / "run" / "phema" / "phema-00000040-0.070.safetensors")[0]
    low = read_model(tmp / "run" / "phema" / "phema-00000040-0.050.safetensors")[0]
    high = read_model(tmp / "run" / "phema" / "phema-00000040-0.100.safetensors")[0]
    names = [k for k, v in direct.items() if v.is_floating_point() and not k.endswith(("freqs", "phases"))]

    def flat(state):
        return torch.cat([state[k].flatten() for k in names])

    error, spread = (flat(rebuilt) - flat(direct)).norm(), (flat(low) - flat(high)).norm()
    assert spread > 1e-3 and error < 0.02 * spread, (float(error), float(spread))
    assert all(torch.equal(rebuilt[k], direct[k]) for k in direct if k.endswith(("freqs", "phases")))   # buffers


def test_resume_continues_the_profiles_exactly(phema_run, tmp_path):
    tmp, _ = phema_run
    train("train-diffusion", tmp / "r.yaml", run_dir=tmp_path / "run", device="cpu", max_steps=20, progress=False)
    train("train-diffusion", tmp / "r.yaml", run_dir=tmp_path / "run", device="cpu", resume="auto", progress=False)
    a = read_model(tmp / "run" / "phema" / "phema-00000040-0.100.safetensors")[0]
    b = read_model(tmp_path / "run" / "phema" / "phema-00000040-0.100.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"train\.phema\.stds: relative stds lie in \(0, 0\.2887\)"):
        (tmp_path / "r.yaml").write_text(RECIPE.replace("[0.05, 0.07, 0.10]", "[0.05, 0.3]"))
        train("train-diffusion", tmp_path / "r.yaml", run_dir=tmp_path / "run", device="cpu", progress=False)
    snaps = [(10, 0.05, tmp_path / "a"), (20, 0.05, tmp_path / "b")]
    with pytest.raises(UserError, match=r"--step 15: reconstructions are made at a snapshot's step \(10, 20\)"):
        reconstruction_plan(snaps, 0.1, 15)
    with pytest.raises(UserError, match=r"--std: a relative std lies in"):
        reconstruction_plan(snaps, 0.5)
    with pytest.raises(UserError, match=r"no post-hoc EMA snapshots here"):
        list_snapshots(tmp_path / "missing")
    with pytest.raises(UserError, match=r"no post-hoc EMA snapshots \(phema-<step>-<std>\.safetensors\); train with train\.phema"):
        reconstruct_phema(tmp_path, 0.1, tmp_path / "out")
    assert json.loads(json.dumps(reconstruction_plan(snaps, 0.05)[0])) == 20
