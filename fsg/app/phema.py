"""`fsg phema`, files in and a model out: reconstruct a post-hoc EMA profile of any length from the snapshots a run
trained with `train.phema` stored in RUN/phema (fsg.train.phema; NVlabs/edm2 `reconstruct_phema.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fsg.errors import UserError
from fsg.io.checkpoint import read_model
from fsg.models.importers import build_network, save_converted
from fsg.train.phema import SNAPSHOT_DIR, combine, list_snapshots, reconstruction_plan


@dataclass(frozen=True)
class PhemaResult:
    path: Path                  # the model file written
    step: int                   # the training step the profile ends at
    std: float                  # its relative std
    inputs: int                 # snapshots combined
    largest: float              # the largest |coefficient| (large ones mean an ill-posed fit: store more profiles)


def snapshot_folder(run: Path) -> Path:
    """RUN/phema of a run folder, or the folder itself when it holds the snapshots."""
    run = Path(run)
    if not run.exists():
        raise UserError(f"run folder not found: {run}")
    return run / SNAPSHOT_DIR if (run / SNAPSHOT_DIR).is_dir() else run


def reconstruct_phema(run: Path, std: float, out: Path, step: int | None = None) -> PhemaResult:
    """Write the EMA profile (step, std) of a run (step None: its last snapshot) as a model file: OUT if it ends in
    .safetensors, else OUT/model.safetensors."""
    folder = snapshot_folder(run)
    snapshots = list_snapshots(folder)
    if not snapshots:
        raise UserError(f"{folder}: no post-hoc EMA snapshots (phema-<step>-<std>.safetensors); train with train.phema")
    step, plan = reconstruction_plan(snapshots, std, step)
    meta = read_model(plan[-1][1])[1]
    parameters = {name for name, _ in build_network(meta, "meta").named_parameters()}

    def weighted():
        for coef, path in plan:                 # one snapshot in memory at a time
            yield coef, read_model(path)[0]

    meta = dict(meta, step=step, phema={"std": std, "step": step, "inputs": len(plan)})
    path = save_converted(out, combine(weighted(), parameters), meta)
    return PhemaResult(path, step, std, len(plan), max(abs(c) for c, _ in plan))
