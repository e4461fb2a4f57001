"""`fsg grow-decoder`: PaGoDA's one-step generator from a low-resolution teacher (fsg.methods.pagoda)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from fsg.cli import app
from fsg.cli.common import DeviceOpt, MaxStepsOpt, RecipeOpt, ResumeOpt, RunDirOpt, SeedOpt, SetOpt
from fsg.cli.train import InitOpt, ProgressOpt, RequeueOpt, TeacherOpt, TimeBudgetOpt, run_training


class Stage(str, Enum):
    distill = "distill"
    grow = "grow"


StageOpt = Annotated[Optional[Stage], typer.Option("--stage", help="distill | grow: overrides the recipe's method.stage.")]


@app.command("grow-decoder")
def grow_decoder(teacher: TeacherOpt = None, init: InitOpt = None, recipe: RecipeOpt = None, stage: StageOpt = None,
                 set_: SetOpt = None, run_dir: RunDirOpt = None, device: DeviceOpt = "auto", seed: SeedOpt = None,
                 max_steps: MaxStepsOpt = None, resume: ResumeOpt = None, time_budget: TimeBudgetOpt = None,
                 requeue: RequeueOpt = False, progress: ProgressOpt = True) -> None:
    """PaGoDA: distil a low-resolution teacher into a one-step decoder (stage distill), then grow it to
    2x, 4x, ... the teacher's resolution (stage grow, --init the previous stage).

    Examples:
      fsg train-diffusion --recipe recipes/tiny/pagoda_mnist_teacher.yaml --run-dir runs/pgd_teacher
      fsg grow-decoder --teacher runs/pgd_teacher --recipe recipes/tiny/pagoda_mnist_distill.yaml --run-dir runs/pgd8
      fsg grow-decoder --teacher runs/pgd_teacher --init runs/pgd8 --recipe recipes/tiny/pagoda_mnist_grow16.yaml --run-dir runs/pgd16
      fsg sample --model runs/pgd16 --steps 1 -n 64 --out s.npz
    """
    overrides = list(set_ or [])
    if stage is not None:
        overrides.append(f"method.stage={stage.value}")
    run_training("grow-decoder", recipe, overrides, run_dir, device, seed, max_steps, resume, teacher=teacher,
                 init=init, time_budget=time_budget, requeue=requeue, progress=progress)
