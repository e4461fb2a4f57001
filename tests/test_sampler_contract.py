"""The contract every sampler passes: shape, determinism by seed, independence of batch size, exact NFE."""

import pytest
import torch

from fsg.sampling.generate import iter_samples, plan_sampler
from fsg.sampling.samplers import nfe_of
from tests.helpers import check_sampler_contract, tiny_model

CASES = [
    # (sampler, steps, precond, expected NFE)
    ("heun", 18, "diffusion", 35),
    ("heun", 5, "diffusion", 9),
    ("euler", 7, "diffusion", 7),
    ("consistency", 1, "consistency", 1),
    ("consistency", 2, "consistency", 2),
    ("consistency", 4, "consistency", 4),
]


@pytest.mark.parametrize("sampler,steps,precond,nfe", CASES)
@pytest.mark.parametrize("shape", [(1, 8, 8), (2,)])
def test_sampler_contract(sampler, steps, precond, nfe, shape):
    assert nfe == nfe_of(sampler, steps)
    check_sampler_contract(tiny_model(shape=shape, precond=precond), sampler=sampler, steps=steps, nfe=nfe)


def test_rank_sharding_covers_the_same_samples():
    model = tiny_model(shape=(2,), precond="consistency")
    full = dict((int(i), x) for idx, xs, _ in iter_samples(model, 5, steps=2, seed=1) for i, x in zip(idx, xs))
    for rank in range(2):
        for idx, xs, _ in iter_samples(model, 5, steps=2, seed=1, rank=rank, world=2):
            for i, x in zip(idx, xs):
                assert torch.allclose(full[int(i)], x, atol=1e-6)


def test_consistency_timesteps_and_sigmas():
    model = tiny_model(shape=(2,), precond="consistency")
    plan = plan_sampler(model, "consistency", timesteps=[0, 9, 17])      # the reference's --ts: calls at 0 and 9
    assert plan.times[0].item() == pytest.approx(80.0) and len(plan.times) == 2
    assert plan.knobs["t_end"] == pytest.approx(0.002)                    # index 17 = the grid's end: no noise
    plan = plan_sampler(model, "consistency", sigmas=[80, 0.821])
    assert plan.times.tolist() == pytest.approx([80, 0.821])
    from fsg.errors import UserError
    with pytest.raises(UserError):
        plan_sampler(model, "consistency", timesteps=[0, 18])
    with pytest.raises(UserError):
        plan_sampler(model, "consistency", sigmas=[1.0, 2.0])


def test_per_sample_streams_never_collide_within_a_run():
    from fsg.sampling.noise import mix32, sample_seed
    seeds = {sample_seed(7, i) for i in range(200_000)}
    assert len(seeds) == 200_000
    # mix32 is a bijection: it is invertible on a sample of the 32-bit range
    xs = [0, 1, 2, 12345, 0xFFFFFFFF]
    assert len({mix32(x) for x in xs}) == len(xs)


def test_ternary_search_finds_the_minimum_of_a_unimodal_metric():
    from fsg.sampling.search import ternary_search_middle
    for target in (1, 7, 22, 38):
        best, seen = ternary_search_middle(lambda p: (p - target) ** 2 + 0.5, 1, 38)
        assert best == target
        assert len(seen) < 20                      # far fewer than the 38 candidates
    best, _ = ternary_search_middle(lambda p: abs(p - 10), 10, 10)
    assert best == 10


def test_two_step_metric_runs_on_a_model():
    from fsg.sampling.search import ternary_search_middle, two_step_metric
    model = tiny_model(shape=(2,), precond="consistency")
    metric = two_step_metric(model, 8, lambda x: float(x.pow(2).mean()))
    best, seen = ternary_search_middle(metric, 1, 16)
    assert 1 <= best <= 16 and best in seen


def test_timesteps_follow_the_references_ts_the_last_index_marks_the_end():
    """openai/consistency_models' stochastic_iterative_sampler with ts = (0, 9, 12), 18-point grid: the model is
    called at indices 0 and 9 (2 NFE); the last estimate is re-noised to index 12, x = f + sqrt(t_12^2 - t_min^2) z."""
    from fsg.core.schedules import karras_index_to_sigma
    from fsg.sampling.noise import SampleNoise
    from fsg.sampling.samplers import CountingDenoiser

    model = tiny_model(shape=(2,), precond="consistency")
    plan = plan_sampler(model, "consistency", timesteps=[0, 9, 12])
    d = CountingDenoiser(model.denoiser)
    stream = SampleNoise(0, [0, 1])
    with torch.no_grad():
        got = plan.run(d, plan.initial(stream, (2, 2)), stream)
    assert d.nfe == 2
    t = [float(karras_index_to_sigma(i, 18, 0.002, 80.0)) for i in (0, 9, 12)]
    noise = SampleNoise(0, [0, 1])
    x = noise.randn((2, 2), torch.float64) * t[0]
    f = lambda x, s: model.denoiser(x.float(), torch.full((2,), s)).double()  # noqa: E731
    with torch.no_grad():
        x0 = f(x, t[0])
        x = x0 + (t[1] ** 2 - 0.002**2) ** 0.5 * noise.randn((2, 2), torch.float64)
        x0 = f(x, t[1])
        want = x0 + (t[2] ** 2 - 0.002**2) ** 0.5 * noise.randn((2, 2), torch.float64)
    assert torch.allclose(got, want, atol=1e-6)
