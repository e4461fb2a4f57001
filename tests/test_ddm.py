"""DDM (Huang et al. 2023): the forward processes, the preconditioned heads, the closed-form posterior, the
ancestral sampler on Gaussian data with the exact predictor, the loss, and the train -> sample pipeline."""

import math
from pathlib import Path

import pytest
import torch

from fsg.core.ddm import DDMConst2Process, DDMLinearProcess, DDMProcess

DDM_PROCESSES = [DDMProcess, DDMLinearProcess, DDMConst2Process]
from fsg.errors import UserError
from fsg.io.config import to_dict
from fsg.methods.ddm import DDMConfig, DDMMethod
from fsg.models.denoiser import Denoiser
from fsg.models.load import LoadedModel
from fsg.models.meta import build_denoiser
from fsg.sampling.ddm import sample_ddm, uniform_times
from fsg.sampling.generate import plan_sampler
from tests.helpers import check_sampler_contract, tiny_meta, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- forward process

@pytest.mark.parametrize("process", [P() for P in DDM_PROCESSES], ids=lambda p: p.name)
def test_marginal_is_x0_near_zero_and_pure_unit_noise_at_one(process):
    n = 40_000
    x0 = torch.full((n, 2), 0.7)
    x_t, _ = process.corrupt(x0, torch.full((n,), 1e-8), gen(1))
    assert (x_t - x0).abs().max() < 1e-3                       # sqrt(v) <= 1e-4, 8 sigma
    x_1, target = process.corrupt(x0, torch.ones(n), gen(2))
    assert torch.allclose(x_1, target["eps"], atol=1e-6)       # image to zero: nothing of x0 is left
    assert x_1.mean(0).abs().max() < 4 / math.sqrt(n)
    assert (x_1.var(0) - 1).abs().max() < 4 * math.sqrt(2 / n)


def test_marginal_coefficients_by_hand():
    t = torch.tensor([0.25])
    assert [float(c) for c in DDMProcess().marginal(t)] == [0.75, 0.0, 0.5]         # (1 - t, 0, sqrt t)
    assert [float(c) for c in DDMConst2Process().marginal(t)] == [0.75, 0.0, 0.25]  # (1 - t, 0, t)


def test_train_times_cover_t_eps_to_one():
    t = DDMProcess(t_eps=0.1).train_times(10_000, gen(), "cpu")
    assert t.min() >= 0.1 and t.max() < 1 and abs(float(t.mean()) - 0.55) < 0.01


# ---------------------------------------------------------------- posterior

def attenuation_by_hand(process, s, x0, K):
    """H_s: -x0 s for constant attenuation; K s^2/2 + C s with C = -x0 - K/2 for linear."""
    if isinstance(process, DDMLinearProcess):
        return K * s**2 / 2 + (-x0 - K / 2) * s
    return -x0 * s


@pytest.mark.parametrize("process", [P() for P in DDM_PROCESSES], ids=lambda p: p.name)
def test_posterior_is_gaussian_conditioning_of_the_joint(process):
    """(x_u, x_t) | x0 is Gaussian with Cov = [[v_u, v_u], [v_u, v_t]] (N_t = W_{v(t)}); condition on x_t."""
    t, u = 0.7, 0.3
    v = (lambda s: s) if process.noise_power == 1 else (lambda s: s * s)
    x0, K = torch.tensor([[0.4, -0.8]], dtype=torch.float64), torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    x_t = torch.tensor([[0.9, 0.2]], dtype=torch.float64)
    mu_u, mu_t = (x0 + attenuation_by_hand(process, s, x0, K) for s in (u, t))
    cov = torch.tensor([[v(u), v(u)], [v(u), v(t)]], dtype=torch.float64)
    mean = mu_u + cov[0, 1] / cov[1, 1] * (x_t - mu_t)
    var = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
    h = {"C": -x0 - K / 2 if "K" in process.outputs else -x0, "K": K, "eps": (x_t - mu_t) / math.sqrt(v(t))}
    got_mean, got_std = process.posterior(x_t, h, t, u)
    assert torch.allclose(got_mean, mean, atol=1e-12)
    assert float(got_std) == pytest.approx(math.sqrt(var), abs=1e-12)


def test_posterior_matches_the_reference_formulas():
    """ddm: x_t + s x0 - s/sqrt(t) eps, var s (t - s)/t; const2: x_t - C s - (2st - s^2)/t eps, std (t - s) sqrt(2st - s^2)/t;
    linear: x_t + K s^2/2 - K t s - C s - s/sqrt(t) eps."""
    t, s = 0.6, 0.2
    x, x0, eps, K = (torch.randn(3, generator=gen(i), dtype=torch.float64) for i in range(4))
    mean, std = DDMProcess().posterior(x, {"C": -x0, "eps": eps}, t, t - s)
    assert torch.allclose(mean, x + s * x0 - s / math.sqrt(t) * eps) and float(std) == pytest.approx(math.sqrt(s * (t - s) / t))
    mean, std = DDMConst2Process().posterior(x, {"C": -x0, "eps": eps}, t, t - s)
    assert torch.allclose(mean, x + s * x0 - (2 * s * t - s * s) / t * eps)
    assert float(std) == pytest.approx((t - s) * math.sqrt(2 * s * t - s * s) / t)
    C = -x0 - K / 2
    mean, _ = DDMLinearProcess().posterior(x, {"K": K, "C": C, "eps": eps}, t, t - s)
    assert torch.allclose(mean, x + K * s * s / 2 - K * t * s - C * s - s / math.sqrt(t) * eps)


def test_drift_by_hand_and_first_order_identity():
    """d = H'_t + v'(t)/sqrt(v(t)) eps: C + eps/sqrt(t) (ddm), C + 2 eps (const2), K t + C + eps/sqrt(t) (linear);
    for ddm the posterior mean is exactly x_t - s d."""
    t, s = 0.64, 0.24
    x, C, eps, K = (torch.randn(3, generator=gen(i), dtype=torch.float64) for i in range(4))
    h = {"C": C, "eps": eps, "K": K}
    assert torch.allclose(DDMProcess().drift(h, t), C + eps / 0.8)
    assert torch.allclose(DDMConst2Process().drift(h, t), C + 2 * eps)
    assert torch.allclose(DDMLinearProcess().drift(h, t), K * t + C + eps / 0.8)
    mean, _ = DDMProcess().posterior(x, h, t, t - s)
    assert torch.allclose(mean, x - s * DDMProcess().drift(h, t))


def test_last_step_lands_on_x0_without_noise():
    x0, eps = torch.tensor([0.3, -0.6]), torch.tensor([1.2, 0.4])
    x_t = 0.8 * x0 + math.sqrt(0.2) * eps
    mean, std = DDMProcess().posterior(x_t, {"C": -x0, "eps": eps}, 0.2, 0.0)
    assert torch.allclose(mean, x0, atol=1e-6) and float(std) == 0


# ---------------------------------------------------------------- preconditioned heads

class ConstantNet(torch.nn.Module):
    """F = the given per-group constants; records what the preconditioning feeds the network."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def forward(self, x, noise_labels, class_labels=None, cond=None):
        self.seen = (x, noise_labels)
        return torch.cat([torch.full_like(x, v) for v in self.values], dim=1)


def test_ddm_heads_by_hand():
    t, x = 0.25, torch.tensor([[0.8, -0.4]])
    net = ConstantNet([0.3, -0.2])
    h = DDMProcess().heads(net, x, torch.tensor([t]))
    assert torch.allclose(net.seen[0], x / math.sqrt(1.25)) and float(net.seen[1]) == pytest.approx(math.log(t))
    C = -0.75 * x + 0.25 / math.sqrt(1.25) * 0.3
    eps = 0.5 * x + math.sqrt(0.75 / 1.25) * -0.2
    assert torch.allclose(h["C"], C) and torch.allclose(h["eps"], eps)
    assert torch.allclose(h["x0"], x - t * C - 0.5 * eps)


def test_ddm_skips_are_exact_at_the_ends():
    x, net = torch.tensor([[0.8, -0.4]]), ConstantNet([5.0, 5.0])
    assert torch.allclose(DDMProcess().heads(net, x, torch.ones(1))["eps"], x)           # eps = x_1
    assert torch.allclose(DDMProcess().heads(net, x, torch.tensor([1e-10]))["C"], -x, atol=1e-4)  # C = -x0 = -x_0


def test_const2_and_linear_heads_by_hand():
    t, x = 0.25, torch.tensor([[0.8, -0.4]])
    V = 0.75**2 + 0.25**2
    h = DDMConst2Process().heads(ConstantNet([0.3, -0.2]), x, torch.tensor([t]))
    assert torch.allclose(h["C"], -0.75 / V * x + 0.25 / math.sqrt(V) * 0.3)
    assert torch.allclose(h["eps"], 0.25 / V * x + 0.75 / math.sqrt(V) * -0.2)
    assert torch.allclose(h["x0"], x - t * h["C"] - t * h["eps"])
    h = DDMLinearProcess().heads(ConstantNet([0.5, 0.3, -0.2]), x, torch.tensor([t]))
    assert torch.allclose(h["K"], torch.full_like(x, 0.5))
    assert torch.allclose(h["C"], -0.75 * x + 0.25 / math.sqrt(1.25) * 0.3)
    assert torch.allclose(h["x0"], x - 0.5 * t * t / 2 - t * h["C"] - 0.5 * h["eps"])


def test_wrong_number_of_output_channels_is_a_user_error():
    with pytest.raises(UserError, match="3 x 2 output channels"):
        DDMLinearProcess().heads(ConstantNet([0.0, 0.0]), torch.zeros(1, 2), torch.tensor([0.5]))


# ---------------------------------------------------------------- sampler on Gaussian data

class ExactGaussianHeads:
    """E[x0 | x_t] and E[eps | x_t] for x0 ~ N(m, s^2 I) under x_t = a x0 + b eps, a = 1 - t, b = sqrt(v(t)):
    x0_hat = m + a s^2 / V (x - a m), eps_hat = b / V (x - a m), V = a^2 s^2 + b^2; C = -x0_hat."""

    def __init__(self, process, m, s):
        self.process, self.m, self.s = process, m, s

    def heads(self, x, t):
        a, b = 1 - t, math.sqrt(self.process.noise_var(t))
        V = a * a * self.s**2 + b * b
        x0 = self.m + a * self.s**2 / V * (x - a * self.m)
        return {"x0": x0, "C": -x0, "eps": b / V * (x - a * self.m)}


class TorchNoise:
    def __init__(self, seed):
        self.g = gen(seed)

    def randn(self, shape, dtype=torch.float32):
        return torch.randn(shape, generator=self.g, dtype=dtype)


def sampler_moments_by_hand(process, N, m, s):
    """Mean and variance of the sampler's output: each step is x_u = c_x x_t + c_0 + std z with the reference's
    posterior (ddm: x_t + s x0 - s/sqrt(t) eps, var s(t - s)/t; const2: x_t + s x0 - (2st - s^2)/t eps, std
    (t - s) sqrt(2st - s^2)/t) applied to the exact heads, which are affine in x_t."""
    mu, var = 0.0, 1.0
    for i in range(N):
        t, u = 1 - i / N, 1 - (i + 1) / N
        step = t - u
        a, b = 1 - t, math.sqrt(process.noise_var(t))
        V = a * a * s * s + b * b
        k_x0, k_eps = a * s * s / V, b / V                         # slopes of x0_hat, eps_hat in x_t
        if process.noise_power == 1:
            e, q = step / math.sqrt(t), step * (t - step) / t
        else:
            e, q = (2 * step * t - step**2) / t, ((t - step) * math.sqrt(2 * step * t - step**2) / t) ** 2
        c_x = 1 + step * k_x0 - e * k_eps
        c_0 = step * (m - k_x0 * a * m) + e * k_eps * a * m
        mu, var = c_x * mu + c_0, c_x * c_x * var + q
    return mu, var


@pytest.mark.parametrize("process", [DDMProcess(), DDMConst2Process()], ids=lambda p: p.name)
def test_sampler_with_exact_predictor_reproduces_the_gaussian(process):
    """At 10 steps the samples follow the hand-derived recursion (exact mean m, variance below s^2: a point
    estimate of x0 drops Var(x0 | x_t) from every step); as N grows the variance reaches s^2."""
    m, s, n = 0.3, 0.5, 40_000
    x1 = torch.randn(n, 2, generator=gen(1), dtype=torch.float64)
    x = sample_ddm(ExactGaussianHeads(process, m, s), x1, uniform_times(10), TorchNoise(2), process)
    mu, var = sampler_moments_by_hand(process, 10, m, s)
    assert mu == pytest.approx(m, abs=1e-9) and var < 0.7 * s * s
    assert (x.mean(0) - m).abs().max() < 4 * math.sqrt(var / n)
    assert (x.var(0) / var - 1).abs().max() < 4 * math.sqrt(2 / n)
    assert sampler_moments_by_hand(process, 1000, m, s)[1] == pytest.approx(s * s, rel=0.025)
    n = 4000
    x = sample_ddm(ExactGaussianHeads(process, m, s), x1[:n], uniform_times(1000), TorchNoise(3), process, second_order=True)
    assert (x.mean(0) - m).abs().max() < 4 * s / math.sqrt(n)
    assert float(x.var(0).mean()) == pytest.approx(s * s, rel=0.06)   # the Heun-corrected sampler converges too


# ---------------------------------------------------------------- sampler contract

def tiny_ddm_model(process, shape, seed=0, sampler="ddm", steps=4) -> LoadedModel:
    torch.manual_seed(seed)
    out = len(process.outputs) * shape[0]
    meta = tiny_meta(shape=shape, method="ddm", sampler=sampler, steps=steps, out_channels=out)
    meta["process"] = to_dict(process)
    den = build_denoiser(meta).eval()
    with torch.no_grad():  # zero-initialised output layers would make every sample trivial
        for p in den.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return LoadedModel(den, meta, Path("<test>"))


@pytest.mark.parametrize("sampler,steps,nfe", [("ddm", 4, 4), ("ddm", 1, 1), ("ddm-heun", 4, 7), ("ddm-heun", 1, 1)])
@pytest.mark.parametrize("shape", [(1, 8, 8), (2,)])
def test_sampler_contract(sampler, steps, nfe, shape):
    check_sampler_contract(tiny_ddm_model(DDMProcess(), shape), sampler=sampler, steps=steps, nfe=nfe)


@pytest.mark.parametrize("process", [DDMLinearProcess(), DDMConst2Process()], ids=lambda p: p.name)
def test_sampler_contract_other_processes(process):
    check_sampler_contract(tiny_ddm_model(process, (2,)), sampler="ddm-heun", steps=3, nfe=5)


def test_default_sampler_is_ddm_with_the_model_steps():
    from fsg.sampling.generate import plan_sampler

    plan = plan_sampler(tiny_ddm_model(DDMProcess(), (2,), steps=10))
    assert plan.name == "ddm" and torch.allclose(plan.times, torch.linspace(1, 0, 11, dtype=torch.float64))


def test_ddm_sampler_rejects_an_edm_model():
    from fsg.sampling.generate import plan_sampler
    from tests.helpers import tiny_model

    with pytest.raises(UserError, match="process ddm"):
        plan_sampler(tiny_model(shape=(2,)), "ddm")


# ---------------------------------------------------------------- loss

class ZeroNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, noise_labels, class_labels=None, cond=None):
        return torch.cat([x, x], dim=1) * self.w


def test_loss_by_hand_with_a_zero_network():
    """F = 0: C_hat = (t - 1) x_t, eps_hat = sqrt(t) x_t; the loss is the mean of
    |C_hat + x0|^2 / t + |eps_hat - eps|^2 / (1 - t + t_eps) + (1 - t)^2 |x0_hat - x0|_1, with the draws of `gen`
    in the method's order (t, then eps)."""
    p = DDMProcess()
    x0 = torch.randn(64, 2, generator=gen(5))
    method = DDMMethod(DDMConfig(), Denoiser(ZeroNet(), p), p)
    losses, logs = method.loss({"model": method.model}, {"x": x0}, 0, gen(9))
    g = gen(9)
    t = p.t_eps + (1 - p.t_eps) * torch.rand(64, generator=g)
    eps = torch.randn(64, 2, generator=g)
    tt = t[:, None]
    x_t = (1 - tt) * x0 + tt.sqrt() * eps
    C_hat, eps_hat = (tt - 1) * x_t, tt.sqrt() * x_t
    x0_hat = x_t - tt * C_hat - tt.sqrt() * eps_hat
    expected = ((C_hat + x0).pow(2).mean(1) / t + (eps_hat - eps).pow(2).mean(1) / (1 - t + p.t_eps)
                + (1 - t) ** 2 * (x0_hat - x0).abs().mean(1)).mean()
    assert losses["model"].item() == pytest.approx(float(expected), rel=1e-5)
    losses["model"].backward()
    assert method.model.net.w.grad is not None and torch.isfinite(method.model.net.w.grad)


def test_method_rejects_a_non_ddm_process(tmp_path):
    from fsg.train.recipe import load_recipe
    from fsg.train.setup import build_run

    recipe = load_recipe("tiny/ddm_toy", ["process.name=edm"])
    with pytest.raises(UserError, match="method 'ddm' trains the processes ddm, ddm-linear, ddm-const2"):
        build_run(recipe, "train-diffusion", torch.device("cpu"))


# ---------------------------------------------------------------- train -> sample

def test_train_then_sample_uses_the_ddm_sampler(tmp_path):
    from fsg.io.checkpoint import read_model
    from fsg.app.sample import run_sampling
    from fsg.app.train import train

    run = tmp_path / "ddm"
    train("train-diffusion", ROOT / "recipes/tiny/ddm_toy.yaml", ["train.batch_size=64", "network.hidden=32"],
          run_dir=run, device="cpu", max_steps=20, progress=False)
    _, meta = read_model(run / "model.safetensors")
    assert meta["sample"] == {"sampler": "ddm", "steps": 10} and meta["out_channels"] == 4
    report = run_sampling(run, 200, out=tmp_path / "s.npz", grid=None, device="cpu")
    assert report["sampler"] == "ddm" and report["nfe"] == 10


# ------------------------------------------------------------------------ fidelity to DDM-Public's samplers

class PointMassHeads:
    """The exact heads of the `ddm` process for data that is one point x0* = 0.5: C = -0.5 and
    eps(x, t) = (x - (1 - t) 0.5) / sqrt(t); records the times it is called at."""

    def __init__(self):
        self.times = []

    def heads(self, x, t):
        self.times.append(float(t))
        x0 = torch.full_like(x, 0.5)
        return {"C": -x0, "eps": (x - (1 - t) * x0) / t**0.5, "x0": x0}


class Fixed:
    def __init__(self, z):
        self.z = z

    def randn(self, shape, dtype=torch.float32):
        return self.z.to(dtype).expand(shape)


@pytest.mark.parametrize("z,want", [(0.0, 0.75), (1.0, 1.25), (-2.0, -0.25)])
def test_ddm_heun_evaluates_the_corrector_at_the_noiseless_point_as_the_reference(z, want):
    """DDM-Public's `sample_fn_2order`, one step t = 1 -> 0.5 from x = 1 on the point mass: Euler point x_h = 0.75,
    corrector there (d' = d), then the noise sqrt(s (t - s) / t) z = 0.5 z is added: 0.75 + 0.5 z, exactly
    q(x_0.5 | x_1 = 1) = N(0.75, 0.25). (Evaluating the corrector at the noised point gives 0.75 + 0.25 z.)"""
    heads = PointMassHeads()
    x = sample_ddm(heads, torch.ones(1, 1, dtype=torch.float64), torch.tensor([1.0, 0.5], dtype=torch.float64),
                   Fixed(torch.tensor(z)), DDMProcess(), second_order=True, first_order_tail=0)
    assert float(x) == pytest.approx(want, abs=1e-12) and heads.times == [1.0, 0.5]


def test_split_last_step_follows_the_references_default_grid():
    """DDM-Public's `sample_fn(denoise=True)`, N = 2: calls at t = 1, 0.5 and t_eps = 1e-4 (N + 1 NFE); the step
    0.5 -> t_eps has std sqrt((0.5 - 1e-4) 1e-4 / 0.5) and the last one lands on x0* = 0.5 exactly."""
    model = tiny_ddm_model(DDMProcess(), (2,), steps=2)
    plan = plan_sampler(model, "ddm", 2, split_last=True)
    assert plan.times.tolist() == [1.0, 0.5, 1e-4, 0.0]
    heads = PointMassHeads()
    x = sample_ddm(heads, torch.ones(1, 1, dtype=torch.float64), plan.times, Fixed(torch.tensor(0.3)), DDMProcess())
    assert heads.times == [1.0, 0.5, 1e-4] and float(x) == pytest.approx(0.5, abs=1e-12)
    _, std = DDMProcess().posterior(torch.ones(1, 1), heads.heads(torch.ones(1, 1), 0.5), 0.5, 1e-4)
    assert float(std) == pytest.approx(((0.5 - 1e-4) * 1e-4 / 0.5) ** 0.5, rel=1e-6)
    with pytest.raises(UserError, match="const2"):
        plan_sampler(tiny_ddm_model(DDMConst2Process(), (2,), steps=2), "ddm", 2, split_last=True)
    with pytest.raises(UserError, match="--split-last applies to the ddm and ddm-heun samplers"):
        plan_sampler(tiny_model(shape=(2,)), "heun", 4, split_last=True)
