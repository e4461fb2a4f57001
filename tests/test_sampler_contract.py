"""The contract every sampler passes: shape, determinism by seed, independence of batch size, exact NFE."""

import pytest
import torch

from fsg.sampling.generate import iter_samples, plan_sampler
from fsg.sampling.samplers import nfe_of
from tests.helpers import tiny_model

CASES = [
    # (sampler, steps, precond, expected NFE)
    ("heun", 18, "diffusion", 35),
    ("heun", 5, "diffusion", 9),
    ("euler", 7, "diffusion", 7),
    ("consistency", 1, "consistency", 1),
    ("consistency", 2, "consistency", 2),
    ("consistency", 4, "consistency", 4),
]


def _collect(model, n, **kw):
    stream = iter_samples(model, n, **kw)
    xs = torch.cat([x for _, x, _ in stream])
    return xs, stream.nfe


@pytest.mark.parametrize("sampler,steps,precond,nfe", CASES)
@pytest.mark.parametrize("shape", [(1, 8, 8), (2,)])
def test_sampler_contract(sampler, steps, precond, nfe, shape):
    model = tiny_model(shape=shape, precond=precond)
    a, got_nfe = _collect(model, 6, sampler=sampler, steps=steps, seed=3, batch_size=6)
    assert a.shape == (6, *shape)
    assert got_nfe == nfe == nfe_of(sampler, steps)
    assert torch.isfinite(a).all() and (len(shape) == 1 or a.abs().max() <= 1)
    b, _ = _collect(model, 6, sampler=sampler, steps=steps, seed=3, batch_size=4)   # other batch size
    assert torch.allclose(a, b, atol=1e-5)
    c, _ = _collect(model, 6, sampler=sampler, steps=steps, seed=4, batch_size=6)   # other seed
    assert not torch.allclose(a, c)
    # sample i depends only on (seed, i): a run of 3 gives the first 3 of a run of 6
    d, _ = _collect(model, 3, sampler=sampler, steps=steps, seed=3, batch_size=2)
    assert torch.allclose(a[:3], d, atol=1e-5)


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
