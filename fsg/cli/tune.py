"""`fsg tune-sct`: tune a diffusion model into a consistency model with ECT or SCT (fsg.methods.ect)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from fsg.cli.common import DeviceOpt, MaxStepsOpt, RecipeOpt, ResumeOpt, RunDirOpt, SeedOpt, SetOpt
from fsg.cli.train import OverwriteOpt, ProgressOpt, RequeueOpt, TeacherOpt, TimeBudgetOpt, run_training


class Mode(str, Enum):
    ect = "ect"
    sct = "sct"


ModeOpt = Annotated[Optional[Mode], typer.Option("--mode", help="ect | sct: overrides the recipe's method.name (same hyperparameters otherwise).")]


def tune_sct(teacher: TeacherOpt = None, recipe: RecipeOpt = None, mode: ModeOpt = None, set_: SetOpt = None,
             run_dir: RunDirOpt = None, device: DeviceOpt = "auto", seed: SeedOpt = None, max_steps: MaxStepsOpt = None,
             resume: ResumeOpt = None, time_budget: TimeBudgetOpt = None, requeue: RequeueOpt = False,
             progress: ProgressOpt = True, overwrite: OverwriteOpt = False) -> None:
    """Easy / Stable Consistency Tuning of a diffusion model (an fsg EDM run, or an imported EDM/ECT checkpoint).

    Examples:
      fsg tune-sct --teacher runs/edm_toy --recipe recipes/tiny/sct_toy.yaml --run-dir runs/sct_toy
      fsg tune-sct --teacher runs/edm_toy --recipe recipes/tiny/sct_toy.yaml --mode ect --run-dir runs/ect_toy
      fsg sample --model runs/sct_toy --sigmas 80,0.8 --edge-skip 0.5 -n 5000 --out sct2.npz
    """
    overrides = list(set_ or [])
    if mode is not None:
        overrides.append(f"method.name={mode.value}")
    run_training("tune-sct", recipe, overrides, run_dir, device, seed, max_steps, resume, teacher=teacher,
                 time_budget=time_budget, requeue=requeue, progress=progress, overwrite=overwrite)
