"""Small models and data shared by the tests."""

from pathlib import Path

import torch

from fsg.core.edm import EDMProcess
from fsg.io.config import to_dict
from fsg.models.load import LoadedModel
from fsg.models.meta import build_denoiser
from fsg.nets.mlp import MLPConfig
from fsg.nets.unet import UNetConfig


def tiny_meta(shape=(1, 8, 8), precond="diffusion", method="diffusion", sampler="heun", steps=6, num_classes=0,
              cond_channels=0, out_channels=None):
    net = MLPConfig(hidden=16, depth=1, emb_dim=8) if len(shape) == 1 else UNetConfig(model_channels=8, channel_mult=(1, 2))
    return {"format": 1, "process": to_dict(EDMProcess()), "precond": precond, "network": to_dict(net),
            "shape": list(shape), "out_channels": out_channels or shape[0], "cond_channels": cond_channels,
            "num_classes": num_classes, "method": method, "step": 0, "sample": {"sampler": sampler, "steps": steps},
            "train_grid": 18}


def tiny_model(seed=0, **kw) -> LoadedModel:
    torch.manual_seed(seed)
    meta = tiny_meta(**kw)
    den = build_denoiser(meta).eval()
    with torch.no_grad():  # zero-initialised output layers would make every sample trivial
        for p in den.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return LoadedModel(den, meta, Path("<test>"))


def collect(model, n, **kw):
    """All samples of iter_samples(model, n, **kw) and the NFE it reported."""
    from fsg.sampling.generate import iter_samples

    stream = iter_samples(model, n, **kw)
    xs = torch.cat([x for _, x, _ in stream])
    return xs, stream.nfe


def check_sampler_contract(model, *, nfe: int, n: int = 6, **kw):
    """The contract every sampler passes: shape, exact NFE, determinism by seed, independence of the
    batch size, and sample i depending only on (seed, i). `kw` goes to iter_samples (sampler, steps, conds...)."""
    shape = tuple(model.meta["shape"])
    a, got = collect(model, n, seed=3, batch_size=n, **kw)
    assert a.shape == (n, *shape)
    assert got == nfe, f"NFE {got} != {nfe}"
    assert torch.isfinite(a).all() and (len(shape) == 1 or a.abs().max() <= 1)
    b, _ = collect(model, n, seed=3, batch_size=max(1, n - 2), **kw)      # another batch size
    assert torch.allclose(a, b, atol=1e-5)
    c, _ = collect(model, n, seed=4, batch_size=n, **kw)                  # another seed
    assert not torch.allclose(a, c)
    d, _ = collect(model, n // 2, seed=3, batch_size=2, **kw)             # a shorter run: its first samples
    assert torch.allclose(a[: n // 2], d, atol=1e-5)
