"""Training commands. Each parses its options and calls `run_training`; the math lives in fsg.methods."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fsg.cli.common import DeviceOpt, MaxStepsOpt, RecipeOpt, ResumeOpt, RunDirOpt, SeedOpt, SetOpt

TeacherOpt = Annotated[Optional[Path], typer.Option("--teacher", "-t", help="Teacher model: run folder, .safetensors, or a public .pt/.pkl checkpoint.")]
InitOpt = Annotated[Optional[Path], typer.Option("--init", help="Start from this model's weights (run folder or checkpoint).")]
TimeBudgetOpt = Annotated[Optional[float], typer.Option("--time-budget", help="Seconds; then checkpoint and exit with code 3.", rich_help_panel="Training")]
RequeueOpt = Annotated[bool, typer.Option("--requeue", help="After a preemption checkpoint, `scontrol requeue $SLURM_JOB_ID`.", rich_help_panel="Training")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.", rich_help_panel="Training")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Start over in a --run-dir that holds a run or a model (its files are moved into RUN/replaced-<time>/).", rich_help_panel="Training")]


def run_training(command: str, recipe_path, overrides, run_dir, device: str, seed, max_steps, resume,
                 teacher=None, init=None, time_budget=None, requeue=False, progress=True, overwrite=False) -> None:
    """Run `fsg.train.run.train` for a command; a preemption or non-finite loss exits with its code."""
    from fsg.train.engine import TrainingStopped
    from fsg.app.train import train

    try:
        model = train(command, recipe_path, overrides, run_dir, device, seed, max_steps, resume, teacher=teacher,
                      init=init, time_budget=time_budget, requeue=requeue, progress=progress, overwrite=overwrite)
    except TrainingStopped as e:
        print(f"fsg: {e}", file=sys.stderr)
        raise typer.Exit(e.code)
    if model is not None:
        typer.echo(f"model: {model}")


def train_diffusion(recipe: RecipeOpt = None, set_: SetOpt = None, run_dir: RunDirOpt = None, device: DeviceOpt = "auto",
                    seed: SeedOpt = None, max_steps: MaxStepsOpt = None, resume: ResumeOpt = None,
                    init: InitOpt = None, time_budget: TimeBudgetOpt = None, requeue: RequeueOpt = False,
                    progress: ProgressOpt = True, overwrite: OverwriteOpt = False) -> None:
    """Train a diffusion teacher (EDM, VP, DDBM bridges, DDM) from data.

    Examples:
      fsg train-diffusion --recipe recipes/tiny/edm_toy.yaml --run-dir runs/edm_toy
      torchrun --nproc_per_node 2 -m fsg train-diffusion --recipe recipes/tiny/edm_toy.yaml --run-dir runs/edm_toy
    """
    run_training("train-diffusion", recipe, set_, run_dir, device, seed, max_steps, resume, init=init,
                 time_budget=time_budget, requeue=requeue, progress=progress, overwrite=overwrite)


def distill(teacher: TeacherOpt = None, recipe: RecipeOpt = None, set_: SetOpt = None, run_dir: RunDirOpt = None,
            device: DeviceOpt = "auto", seed: SeedOpt = None, max_steps: MaxStepsOpt = None, resume: ResumeOpt = None,
            time_budget: TimeBudgetOpt = None, requeue: RequeueOpt = False, progress: ProgressOpt = True,
            overwrite: OverwriteOpt = False) -> None:
    """Consistency distillation (CD; CBD for bridges) of a teacher into a few-step model.

    Example:
      fsg distill --teacher runs/edm_toy --recipe recipes/tiny/cd_toy.yaml --run-dir runs/cd_toy
    """
    run_training("distill", recipe, set_, run_dir, device, seed, max_steps, resume, teacher=teacher,
                 time_budget=time_budget, requeue=requeue, progress=progress, overwrite=overwrite)


def train_consistency(recipe: RecipeOpt = None, set_: SetOpt = None, run_dir: RunDirOpt = None, device: DeviceOpt = "auto",
                      seed: SeedOpt = None, max_steps: MaxStepsOpt = None, resume: ResumeOpt = None,
                      init: InitOpt = None, time_budget: TimeBudgetOpt = None, requeue: RequeueOpt = False,
                      progress: ProgressOpt = True, overwrite: OverwriteOpt = False) -> None:
    """Consistency training from data (CT, iCT; CBT for bridges).

    Example:
      fsg train-consistency --recipe recipes/tiny/ct_toy.yaml --run-dir runs/ct_toy
    """
    run_training("train-consistency", recipe, set_, run_dir, device, seed, max_steps, resume, init=init,
                 time_budget=time_budget, requeue=requeue, progress=progress, overwrite=overwrite)
