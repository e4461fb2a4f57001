"""ECT and SCT: the mapping r(t), the score-identity target, the shared dropout mask, edge-skipping, the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fsg.cli import app
from fsg.core.bridges import BridgeVPProcess
from fsg.core.edm import EDMProcess, VPProcess
from fsg.core.distances import pseudo_huber
from fsg.core.schedules import ect_r
from fsg.errors import UserError
from fsg.io.checkpoint import read_model, save_model
from fsg.methods.ect import (ECTConfig, ECTMethod, SCTConfig, SCTMethod, estimate_variance, posterior_mean,
                             reference_weights)
from fsg.models.denoiser import Denoiser
from fsg.nets.mlp import MLPConfig
from fsg.sampling.generate import plan_sampler
from fsg.sampling.samplers import sample_consistency
from tests.helpers import check_sampler_contract, tiny_model


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("t,stage,mapping,expected", [
    (1.0, 0, "const", 0.5),                                       # 1 (1 - 1/2)
    (1.0, 2, "const", 0.875),                                     # 1 (1 - 1/8)
    (3.0, 0.5, "const", 3.0 * (1 - 2 ** -1.5)),                   # SCT's fractional stage
    (2.0, 1, "sigmoid", 2.0 * (1 - 0.25 * (1 + 8 * _sigmoid(-2.0)))),
    (10.0, 3, "sigmoid", 10.0 * (1 - (1 / 16) * (1 + 8 * _sigmoid(-10.0)))),
    (0.1, 0, "sigmoid", 0.0),                                     # 1 - 0.5 (1 + 8 sigmoid(-0.1)) < 0: clamped
])
def test_ect_mapping_matches_hand_values(t, stage, mapping, expected):
    r = ect_r(torch.tensor([t], dtype=torch.float64), stage, q=2.0, k=8.0, b=1.0, mapping=mapping)
    assert r.item() == pytest.approx(expected, abs=1e-12)


def test_stage_is_stepwise_for_ect_and_continuous_for_sct():
    """N = 100: ECT floor(k / 100); SCT max(k / 100 - 1/2, 0), which meets ECT's stage n at k = (n + 1/2) N."""
    ect = ECTMethod(ECTConfig(double_steps=100), _model(), EDMProcess())
    sct = SCTMethod(SCTConfig(double_steps=100), _model(), EDMProcess())
    assert [ect.stage(k) for k in (0, 99, 100, 250)] == [0, 0, 1, 2]
    assert [sct.stage(k) for k in (0, 50, 100, 150, 250, 275)] == [0, 0, 0.5, 1, 2, 2.25]


@pytest.mark.parametrize("stage", [1, 2, 7])
def test_smooth_schedule_keeps_ects_geometric_mean_dt_over_each_stage(stage):
    """const mapping, q = 2: dt / t = 2^-(s+1). Over ECT's stage n (k = nN .. nN + N - 1) the smooth s runs
    n - 1/2 .. n + 1/2 - 1/N, so mean log2(dt / t) = -(n + 1) + 1/(2N): ECT's 2^-(n+1) up to 1/(2N)."""
    n_steps, t = 100, torch.ones(1, dtype=torch.float64)
    sct = SCTMethod(SCTConfig(double_steps=n_steps, mapping="const"), _model(), EDMProcess())
    log_dt = [math.log2(1 - ect_r(t, sct.stage(k), mapping="const").item()) for k in range(stage * n_steps, (stage + 1) * n_steps)]
    assert sum(log_dt) / n_steps == pytest.approx(-(stage + 1) + 1 / (2 * n_steps), abs=1e-9)


def _model(dropout=0.0, num_classes=0, seed=0):
    torch.manual_seed(seed)
    net = MLPConfig(hidden=16, depth=1, emb_dim=8, dropout=dropout).build((2,), 2, 0, num_classes)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return Denoiser(net, EDMProcess(), "ect").train()


def _loss(method_cls, cfg, batch, seed=3):
    model = _model(num_classes=10)
    method = method_cls(cfg, model, EDMProcess())
    torch.manual_seed(0)
    losses, logs = method.loss({"model": model}, batch, 5, torch.Generator().manual_seed(seed))
    return losses["model"].item(), logs


@pytest.mark.parametrize("labels", [None, "distinct"])
def test_sct_target_equals_ect_with_a_one_sample_reference_batch(labels):
    """With one sample per reference batch (a batch of one, or every class seen once) the score identity
    returns x0 itself, so SCT's target, loss and target variance are ECT's (same schedule)."""
    gen = torch.Generator().manual_seed(1)
    if labels is None:
        batch = {"x": torch.randn(1, 2, generator=gen)}
    else:
        batch = {"x": torch.randn(6, 2, generator=gen), "label": torch.arange(6), "label_true": torch.arange(6)}
    ect, ect_logs = _loss(ECTMethod, ECTConfig(), batch)
    sct, sct_logs = _loss(SCTMethod, SCTConfig(schedule="stages"), batch)
    assert sct == ect
    assert sct_logs["target_var"] == ect_logs["target_var"] == 0.0
    assert sct_logs["ref_ess"] == ect_logs["ref_ess"] == 1.0                   # one effective reference: the own x0


def test_dropped_labels_train_the_unconditional_target():
    """label_dropout = 1 (classifier-free guidance, every label dropped): the net sees the null label and the
    score identity uses the whole batch, so the loss is the unlabeled batch's (after the same label draw)."""
    from fsg.train.setup import batch_transform

    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(5))
    model = _model(num_classes=10)
    method = SCTMethod(SCTConfig(), model, EDMProcess())
    gen = torch.Generator().manual_seed(3)
    dropped = batch_transform(None, 10, 1.0)({"x": x, "label": torch.arange(16) % 10}, gen)   # the engine's label dropout
    assert (dropped["label"] == -1).all() and torch.equal(dropped["label_true"], torch.arange(16) % 10)
    labeled = method.loss({"model": model}, dropped, 5, gen)
    gen = torch.Generator().manual_seed(3)
    torch.rand(16, generator=gen)                                       # the draw of the label dropout
    unlabeled = method.loss({"model": model}, {"x": x}, 5, gen)
    assert labeled[0]["model"].item() == unlabeled[0]["model"].item()
    assert labeled[1]["target_var"] == unlabeled[1]["target_var"]


def test_sct_lowers_the_logged_target_variance():
    batch = {"x": torch.randn(256, 2, generator=torch.Generator().manual_seed(2))}
    _, ect_logs = _loss(ECTMethod, ECTConfig(), batch)
    _, sct_logs = _loss(SCTMethod, SCTConfig(), batch)
    assert sct_logs["target_var"] < 0.1 * ect_logs["target_var"]


@pytest.mark.parametrize("t", [0.3, 1.0, 3.0])
def test_score_identity_estimate_converges_to_the_gaussian_posterior_mean(t):
    """x0 ~ N(0, s^2 I): E[x0 | x_t] = s^2 / (s^2 + t^2) x_t; the batch estimate approaches it as the batch grows."""
    s, gen = 0.7, torch.Generator().manual_seed(0)
    x_t = torch.tensor([[0.5, -1.0], [1.5, 0.2], [-0.3, 0.0]])
    tt = torch.full((3,), t)
    exact = s**2 / (s**2 + t**2) * x_t
    errors = []
    for n in (50, 100_000):
        x0 = s * torch.randn(n, 2, generator=gen)
        errors.append((posterior_mean(reference_weights(x_t, tt, x0), x0) - exact).abs().max().item())
    assert errors[1] < 0.02 and errors[1] < errors[0]


def test_class_aware_estimate_uses_same_class_references_unless_the_label_was_dropped():
    """Two classes x0 ~ N(mu_c, s^2 I): a kept label gives the class posterior mean, a dropped one (-1) the mixture's."""
    s, t, gen, n = 0.5, 1.0, torch.Generator().manual_seed(0), 100_000
    mu = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    ref_labels = torch.arange(2).repeat(n // 2)
    x0 = mu[ref_labels] + s * torch.randn(n, 2, generator=gen)
    x_t = torch.tensor([[0.3, 0.4], [0.3, 0.4], [0.3, 0.4]])
    est = posterior_mean(reference_weights(x_t, torch.full((3,), t), x0, torch.tensor([0, 1, -1]), ref_labels), x0)
    shrink = s**2 / (s**2 + t**2)
    for i, c in enumerate((0, 1)):
        assert torch.allclose(est[i], mu[c] + shrink * (x_t[i] - mu[c]), atol=0.02)
    # the mixture: components weighted by N(x_t; mu_c, (s^2 + t^2) I)
    logp = -((x_t[2] - mu) ** 2).sum(1) / (2 * (s**2 + t**2))
    pc = logp.softmax(0)
    mixture = (pc[:, None] * (mu + shrink * (x_t[2] - mu))).sum(0)
    assert torch.allclose(est[2], mixture, atol=0.02)


def test_estimate_variance_by_hand():
    x0 = torch.tensor([[0.0], [2.0]])
    w = torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=torch.float64)
    m = posterior_mean(w, x0)                                           # both 1
    assert estimate_variance(w, x0, m).tolist() == pytest.approx([0.5, 0.5])     # 0.25 (0-1)^2 + 0.25 (2-1)^2
    assert estimate_variance(torch.eye(2), x0, m).tolist() == pytest.approx([1.0, 1.0])  # (x0_i - m_i)^2


class MaskNet(nn.Module):
    """Outputs its dropout mask (and records it), so a test sees which mask each pass used."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.masks = []

    def forward(self, x, noise_labels, class_labels=None, cond=None):
        mask = nn.functional.dropout(torch.ones_like(x), 0.5, self.training)
        self.masks.append(mask.detach().clone())
        return self.w * mask


def test_target_pass_replays_the_online_dropout_mask():
    net = MaskNet()
    model = Denoiser(net, EDMProcess(), "ect").train()
    method = SCTMethod(SCTConfig(q=1e6), model, EDMProcess())      # dt -> 0: r > 0 for every sample
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    method.loss({"model": model}, {"x": x0}, 0, torch.Generator().manual_seed(1))
    online, target = net.masks
    assert torch.equal(online, target) and not torch.equal(online, torch.ones_like(online))
    model(x0, torch.ones(64))                                           # a fresh pass draws another mask
    assert not torch.equal(net.masks[-1], online)


def test_where_r_is_zero_the_target_is_the_data_point():
    """q = 1 makes r = 0 for every t: ECT's target is x0 (f(x, 0) = x) and the loss ||D(x_t, t) - x0|| / t."""
    model = _model()
    method = ECTMethod(ECTConfig(mapping="const", q=1.0), model, EDMProcess())
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    loss = method.loss({"model": model}, {"x": x0}, 0, torch.Generator().manual_seed(4))[0]["model"]
    gen = torch.Generator().manual_seed(4)
    t = (-1.1 + 2.0 * torch.randn(32, generator=gen)).exp()
    x_t = x0 + t[:, None] * torch.randn(32, 2, generator=gen)
    with torch.no_grad():
        expected = (pseudo_huber(model(x_t, t) - x0, 0.0) / t).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_vp_teacher_is_tuned_with_edm_scalings_and_the_chosen_boundary():
    process = ECTMethod.process_for(ECTConfig(sigma_min=0.003), VPProcess(sigma_data=0.5))
    assert isinstance(process, EDMProcess) and process.sigma_min == 0.003 and process.sigma_data == 0.5
    with pytest.raises(UserError, match="ECT/SCT tune EDM or VP"):
        ECTMethod.process_for(ECTConfig(), BridgeVPProcess())


class _FixedNoise:
    def __init__(self, z):
        self.z = z

    def randn(self, shape, dtype):
        return self.z.to(dtype)


def test_edge_skipping_step_by_hand():
    """f(x, t) = x / 2; times (4, 1), t_min = 0: eps_hat = (x - f) / 4, x' = f + eta 1 eps_hat + sqrt(1 - eta^2) z."""
    x, z = torch.tensor([[8.0, -4.0]]), torch.tensor([[1.0, 2.0]])
    times = torch.tensor([4.0, 1.0], dtype=torch.float64)
    for eta in (0.0, 0.6, 1.0):
        f = x / 2
        x_next = f + eta * (x - f) / 4 + math.sqrt(1 - eta**2) * z
        got = sample_consistency(lambda v, t: v / 2, x, times, _FixedNoise(z), EDMProcess(sigma_min=0.0), edge_skip=eta)
        assert torch.allclose(got, x_next / 2)
    with pytest.raises(UserError):
        plan_sampler(tiny_model(shape=(2,), precond="consistency"), "consistency", 2, edge_skip=1.5)


@pytest.mark.parametrize("shape", [(1, 8, 8), (2,)])
def test_edge_skipping_sampler_contract(shape):
    check_sampler_contract(tiny_model(shape=shape, precond="ect"), sampler="consistency", steps=3, nfe=3, edge_skip=0.5)


def test_tune_sct_cli_end_to_end(tmp_path):
    """A tiny teacher -> `fsg tune-sct --mode sct` (metrics with target_var, an 'ect'-preconditioned model)
    -> `fsg sample --edge-skip`."""
    teacher = tiny_model(shape=(2,))
    save_model(tmp_path / "teacher.safetensors", teacher.denoiser.net.state_dict(), teacher.meta)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {source: 'toy:moons', toy_size: 1024}\nmethod: {name: ect, double_steps: 2}\n"
                      "train: {batch_size: 32, max_steps: 4, log_every: 2, ckpt_every: 4}\nsample: {grid: 16}\n")
    runner = CliRunner()
    r = runner.invoke(app, ["tune-sct", "--teacher", str(tmp_path / "teacher.safetensors"), "--recipe", str(recipe),
                            "--mode", "sct", "--run-dir", str(tmp_path / "run"), "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [2, 4] and all("target_var" in ln for ln in lines)
    _, meta = read_model(tmp_path / "run" / "model.safetensors")
    assert meta["precond"] == "ect" and meta["method"] == "sct" and meta["sample"]["sampler"] == "consistency"
    r = runner.invoke(app, ["sample", "--model", str(tmp_path / "run"), "--sigmas", "80,0.8", "--edge-skip", "0.5",
                            "-n", "8", "--out", str(tmp_path / "s.npz"), "--device", "cpu"])
    assert r.exit_code == 0 and "NFE 2" in r.output, r.output


def test_train_dropout_overrides_the_start_models_dropout(tmp_path):
    """ECT tunes EDM's 0.13-dropout CIFAR-10 teacher with dropout 0.2: `train.dropout` sets the dropout of a
    network started from --teacher/--init (recorded in the exported model); a fresh network is refused."""
    teacher = tiny_model(shape=(2,))
    assert teacher.meta["network"]["dropout"] != 0.3
    save_model(tmp_path / "teacher.safetensors", teacher.denoiser.net.state_dict(), teacher.meta)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {source: 'toy:moons', toy_size: 1024}\nmethod: {name: ect, double_steps: 2}\n"
                      "train: {batch_size: 32, max_steps: 2, log_every: 2, ckpt_every: 4, dropout: 0.3}\nsample: {grid: 16}\n")
    runner = CliRunner()
    r = runner.invoke(app, ["tune-sct", "--teacher", str(tmp_path / "teacher.safetensors"), "--recipe", str(recipe),
                            "--run-dir", str(tmp_path / "run"), "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    _, meta = read_model(tmp_path / "run" / "model.safetensors")
    assert meta["network"]["dropout"] == 0.3
    toy = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "edm_toy.yaml")
    r = runner.invoke(app, ["train-diffusion", "--recipe", toy, "--set", "train.dropout=0.2",
                            "--run-dir", str(tmp_path / "fresh"), "--device", "cpu", "--no-progress"])
    assert isinstance(r.exception, UserError) and "network.dropout" in str(r.exception)   # `fsg` exits 2 on it
