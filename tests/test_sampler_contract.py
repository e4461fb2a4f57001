"""The contract every sampler passes: shape, determinism by seed, independence of batch size, exact NFE."""

from pathlib import Path

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


def registry_model(name: str, shape: tuple[int, ...]):
    """A tiny model of the first process and preconditioning a registered sampler declares, and its conditions."""
    from fsg.core import PROCESSES
    from fsg.io.config import to_dict
    from fsg.models.load import LoadedModel
    from fsg.models.meta import build_denoiser
    from fsg.sampling import SAMPLERS
    from tests.helpers import tiny_meta

    spec = SAMPLERS[name]
    process = PROCESSES[spec.processes[0]]()
    bridge = spec.needs == "conditions"
    meta = tiny_meta(shape=shape, precond=spec.preconds[0], sampler=name, steps=3, cond_channels=shape[0] if bridge else 0,
                     out_channels=shape[0] * getattr(process, "out_multiplier", 1))
    meta["process"] = to_dict(process)
    if spec.needs == "two_times":
        meta["network"]["two_times"] = True
    if spec.needs == "latent_factor":
        meta.update(method="pagoda", latent_factor=1)
    torch.manual_seed(0)
    den = build_denoiser(meta).eval()
    with torch.no_grad():
        for p in den.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    conds = None
    if bridge:
        g = torch.Generator().manual_seed(5)
        items = torch.rand((7, *shape), generator=g) * 2 - 1
        conds = lambda idx: items[[int(i) % 7 for i in idx]]  # noqa: E731
    return LoadedModel(den, meta, Path("<registry>")), conds


def _registry_names():
    from fsg.sampling import SAMPLERS
    return list(SAMPLERS)


@pytest.mark.parametrize("name", _registry_names())
@pytest.mark.parametrize("shape", [(1, 8, 8), (2,)])
def test_every_registered_sampler_passes_the_contract(name, shape):
    """Shape, determinism by seed, independence of the batch size, a sample depending on (seed, index) alone, and the
    exact NFE the registry declares for the steps."""
    from fsg.sampling import SAMPLERS

    spec = SAMPLERS[name]
    if spec.needs == "latent_factor" and len(shape) == 1:
        pytest.skip("PaGoDA generates images")
    model, conds = registry_model(name, shape)
    steps = 1 if spec.nfe(3) == 1 else 3
    check_sampler_contract(model, sampler=name, steps=steps, nfe=spec.nfe(steps), conds=conds)
