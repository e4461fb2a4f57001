"""The method contract, shared by every registered method (tests/test_method_contract.py): finite loss on a tiny
batch, the same loss for the same seed, gradients that reach exactly the trainable modules (never a teacher, a
target or LPIPS), a state round trip that gives the same next loss, and exported metadata that loads into the
method's default sampler."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch

from fsg.core import PROCESSES
from fsg.methods.base import RunInfo
from fsg.models.denoiser import Denoiser
from fsg.models.load import LoadedModel
from fsg.models.meta import model_meta
from fsg.nets.mlp import MLPConfig
from fsg.nets.unet import UNetConfig
from fsg.sampling.generate import iter_samples
from fsg.train.engine import unique_sum

BATCH = 6


def _config(method_cls):
    """The method's default config, with LPIPS (which needs downloaded weights) replaced by L2."""
    cfg = method_cls.config()
    swaps = {f.name: "l2" for f in dataclasses.fields(cfg) if getattr(cfg, f.name) == "lpips"}
    if getattr(cfg, "reconstruction", None) == "l1+lpips":
        swaps["reconstruction"] = "l1"
    return dataclasses.replace(cfg, **swaps)


def _case(method_cls, seed: int = 0):
    """(method, nets, batch, process, net config, shape) of a tiny run, built from the seed alone."""
    torch.manual_seed(seed)
    process = PROCESSES[method_cls.processes[0]]()
    images = method_cls.images_only or method_cls.augmentable
    shape = (1, 8, 8) if images else (2,)
    two = dict(two_times=True) if method_cls.two_times else {}
    net_cfg = (UNetConfig(model_channels=8, channel_mult=(1, 2), **two) if images
               else MLPConfig(hidden=32, depth=2, emb_dim=16, **two))
    cond_ch = shape[0] if method_cls.paired else 0          # None (either): the unconditional case
    out_ch = shape[0] * getattr(process, "out_multiplier", 1)

    def network():
        net = net_cfg.build(shape, out_ch, cond_ch, 0)
        with torch.no_grad():                         # zero-initialised output layers would hide every gradient
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        return net

    cfg = _config(method_cls)
    from_teacher = method_cls.starts_from_teacher(cfg)
    teacher = None
    if method_cls.needs_teacher or from_teacher:
        teacher = Denoiser(network(), process, "diffusion")
    model_net = copy.deepcopy(teacher.net) if from_teacher else network()
    model = Denoiser(model_net, process, method_cls.precond)
    method = method_cls(cfg, model, process, teacher=teacher, run=RunInfo(shape=shape, max_steps=10))
    g = torch.Generator().manual_seed(seed + 1)
    batch = {"x": torch.randn((BATCH, *shape), generator=g).clamp(-1, 1) * 0.5, "index": torch.arange(BATCH),
             "flip": torch.zeros(BATCH, dtype=torch.bool)}
    if cond_ch:
        batch["cond"] = torch.randn((BATCH, *shape), generator=g).clamp(-1, 1) * 0.5
    return method, method.trainable(), batch, net_cfg, shape, cond_ch


def _loss(method, nets, batch, step: int, seed: int):
    torch.manual_seed(1000 + step)                # the global stream: dropout
    return method.loss(nets, batch, step, torch.Generator().manual_seed(seed))


def _train_step(method, nets, batch, step: int, seed: int = 0) -> dict[str, torch.Tensor]:
    losses, _ = _loss(method, nets, batch, step, seed=seed)
    for name, loss in losses.items():
        nets[name].zero_grad(set_to_none=True)
    unique_sum(losses).backward()
    with torch.no_grad():
        for name in losses:
            for p in nets[name].parameters():
                if p.grad is not None:
                    p.sub_(1e-2 * p.grad)
    method.after_step(step)
    return losses


def check_method_contract(method_cls) -> None:
    method, nets, batch, net_cfg, shape, cond_ch = _case(method_cls)

    # finite loss on a tiny batch, every loss key a trainable module
    losses, logs = _loss(method, nets, batch, 0, seed=7)
    assert losses and set(losses) <= set(nets), f"loss keys {set(losses)} vs trainable {set(nets)}"
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values()), losses
    assert all(isinstance(v, float) for v in logs.values()), logs

    # the same seed gives the same loss
    again, _ = _loss(method, nets, batch, 0, seed=7)
    assert all(torch.equal(losses[k], again[k]) for k in losses)

    # gradients reach the trainable modules that the loss names, and nothing the method only calls
    for m in [*nets.values(), *method.frozen()]:
        m.zero_grad(set_to_none=True)
    unique_sum(losses).backward()
    for name in losses:
        grads = [p.grad for p in nets[name].parameters() if p.requires_grad]
        assert any(g is not None and bool(g.abs().sum() > 0) for g in grads), f"no gradient reaches '{name}'"
    trained = {id(p) for m in nets.values() for p in m.parameters()}
    for frozen in method.frozen():
        for p in frozen.parameters():
            assert id(p) in trained or p.grad is None, f"a gradient reached a frozen module ({type(frozen).__name__})"

    # a state round trip gives the same next loss: a second run (the same teacher, as a resumed run reloads it) that
    # has drifted elsewhere takes the first run's saved state
    a, a_nets, a_batch, *_ = _case(method_cls, seed=3)
    _train_step(a, a_nets, a_batch, 0)
    saved = copy.deepcopy(({k: m.state_dict() for k, m in a_nets.items()}, a.state_dict()))
    b, b_nets, b_batch, *_ = _case(method_cls, seed=3)
    _train_step(b, b_nets, b_batch, 0, seed=99)
    _train_step(b, b_nets, b_batch, 1, seed=98)
    for k, m in b_nets.items():
        m.load_state_dict(saved[0][k])
    b.load_state_dict(saved[1])
    la, _ = _loss(a, a_nets, a_batch, 1, seed=11)
    lb, _ = _loss(b, b_nets, a_batch, 1, seed=11)
    assert all(torch.allclose(la[k], lb[k], rtol=1e-6, atol=1e-7) for k in la), (la, lb)

    # the exported metadata loads into the method's default sampler
    meta = model_meta(method.model, net_cfg, shape, method.model.net.out_channels if hasattr(method.model.net, "out_channels")
                      else shape[0] * getattr(method.process, "out_multiplier", 1), cond_ch, 0, **method.export_meta())
    if meta.get("method") == "pagoda":
        meta.setdefault("latent_factor", 1)
    model = LoadedModel(method.model.eval(), meta, Path("<contract>"))
    conds = (lambda idx: batch["cond"][[int(i) % BATCH for i in idx]]) if cond_ch else None
    stream = iter_samples(model, 3, seed=0, batch_size=3, conds=conds)
    x = torch.cat([s for _, s, _ in stream])
    assert x.shape == (3, *shape) and torch.isfinite(x).all()
    assert stream.nfe is not None and stream.nfe >= 1
