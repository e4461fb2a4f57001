"""The sample grid PNG written during training, with the model's default sampler."""

from __future__ import annotations

from pathlib import Path

import torch

from fsg.data.conditions import data_conds
from fsg.errors import UserError
from fsg.io.images import save_samples_png
from fsg.models.load import LoadedModel
from fsg.sampling.generate import iter_samples


def grid_writer(meta: dict, n: int, device: torch.device):
    """A function (denoiser, path) -> None that samples `n` items (seed 0) and writes a PNG."""
    conds = None
    if meta.get("cond_channels"):      # a bridge: its grid maps held-out (else training) conditions
        try:
            conds = data_conds(meta, "test")
        except UserError:
            conds = data_conds(meta, "train")

    def write(denoiser, path: Path) -> None:
        was_training = denoiser.training
        denoiser.eval()
        model = LoadedModel(denoiser, meta, path)
        stream = iter_samples(model, n, seed=0, batch_size=n, device=device, conds=conds)
        samples = torch.cat([x for _, x, _ in stream])
        save_samples_png(samples, path)
        denoiser.train(was_training)

    return write

