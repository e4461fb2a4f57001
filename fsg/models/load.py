"""Load a model from a path: a run folder, a checkpoint folder, an fsg `.safetensors` file or a public checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsg.errors import UserError
from fsg.io.checkpoint import read_model, resolve_model_path
from fsg.models.denoiser import Denoiser
from fsg.models.importers import import_checkpoint
from fsg.models.meta import build_denoiser, check_meta, load_state_strict, model_fingerprint, teacher_candidates
from fsg.resources import bundled_model, find_shipped, model_hint, shipped

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
    """Load a model from a run folder, checkpoint folder, .safetensors file or public .pt/.pkl checkpoint, or a
    bundled model by name (`cd_digits`, `edm_digits`, `edm_toy`; fsg.resources.BUNDLED_MODELS).

    None loads the bundled digits consistency model.
    """
    if path is None:
        if not BUNDLED_MODEL.is_file():
            raise UserError(f"no --model given and the bundled model is missing ({BUNDLED_MODEL})")
        path = BUNDLED_MODEL
    path = bundled_model(path) or find_shipped(path)
    p = Path(path)
    if not p.exists():
        raise UserError(f"model not found: {p}{model_hint(p)}")
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


def load_teacher(model: LoadedModel, given: str | Path | None = None, device="cpu",
                 check: Callable[[LoadedModel, Path], None] | None = None) -> LoadedModel:
    """The teacher `model` was trained from, checked by its weight fingerprint: `given` (--teacher) when there is
    one, else the path the model records, else that path relative to the model's folder (a copy of both folders).
    `check(teacher, path)` runs first on each one found (a UserError for a teacher that cannot serve)."""
    want = model.meta.get("teacher_fingerprint")
    candidates = [Path(given)] if given is not None else teacher_candidates(model.meta, model.path)
    if not candidates:
        raise UserError(f"{model.path} records no teacher: pass --teacher (the model it was trained from)")
    passed = []
    for path in candidates:
        if given is None and not path.exists():
            passed.append(f"{path} (missing)")
            continue
        teacher = load_model(path, device)
        if check is not None:
            check(teacher, path)
        if want is None or model_fingerprint(teacher.denoiser.net) == want:
            return teacher
        if given is not None:
            raise UserError(f"--teacher {path} is not the teacher {model.path} was trained with (other weights)")
        passed.append(f"{path} (other weights)")
    raise UserError(f"the teacher of {model.path} is not where it was recorded: {', '.join(passed)}; "
                    f"pass --teacher (its weights have fingerprint {want[:16] if want else 'unknown'}...)")
