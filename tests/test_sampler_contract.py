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
    plan = plan_sampler(model, "consistency", timesteps=[0, 9, 17])
    assert plan.times[0].item() == pytest.approx(80.0) and len(plan.times) == 3
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
