"""Load a model from a path: a run folder, a checkpoint folder, an fsg `.safetensors` file or a public checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsg.errors import UserError
from fsg.io.checkpoint import read_model, resolve_model_path
from fsg.models.denoiser import Denoiser
from fsg.models.importers import import_checkpoint
from fsg.models.meta import build_denoiser, check_meta, load_state_strict
from fsg.resources import shipped

BUNDLED_MODEL = shipped("assets", "cd_digits", "model.safetensors")
PUBLIC_SUFFIXES = (".pt", ".pth", ".pkl")


@dataclass
class LoadedModel:
    denoiser: Denoiser
    meta: dict[str, Any]
    path: Path

    @property
    def process(self):
        return self.denoiser.process

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.meta["shape"])


def load_model(path: str | Path | None, device="cpu", precond: str | None = None) -> LoadedModel:
    """Load a model from a run folder, checkpoint folder, .safetensors file or public .pt/.pkl checkpoint.

    None loads the bundled digits consistency model.
    """
    if path is None:
        if not BUNDLED_MODEL.is_file():
            raise UserError(f"no --model given and the bundled model is missing ({BUNDLED_MODEL})")
        path = BUNDLED_MODEL
    p = Path(path)
    if p.suffix in PUBLIC_SUFFIXES:
        if not p.is_file():
            raise UserError(f"model not found: {p}")
        state, meta = import_checkpoint(p)
    else:
        p = resolve_model_path(p)
        state, meta = read_model(p)
    check_meta(meta, str(p))
    denoiser = build_denoiser(meta, precond)
    load_state_strict(denoiser.net, state, str(p))
    return LoadedModel(denoiser.to(device).eval(), meta, p)
