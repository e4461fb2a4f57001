"""Small models and data shared by the tests."""

from pathlib import Path

import torch

from fsg.core.processes import EDMProcess
from fsg.io.config import to_dict
from fsg.nets.load import LoadedModel, build_denoiser
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
