"""Training commands. Each parses its options and calls `run_training`; the math lives in fsg.methods."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fsg.cli import app
from fsg.cli.common import DeviceOpt, MaxStepsOpt, RecipeOpt, ResumeOpt, RunDirOpt, SeedOpt, SetOpt

TeacherOpt = Annotated[Optional[Path], typer.Option("--teacher", "-t", help="Teacher model: run folder, .safetensors, or a public .pt/.pkl checkpoint.")]
InitOpt = Annotated[Optional[Path], typer.Option("--init", help="Start from this model's weights (run folder or checkpoint).")]
TimeBudgetOpt = Annotated[Optional[float], typer.Option("--time-budget", help="Seconds; then checkpoint and exit with code 3.", rich_help_panel="Training")]
RequeueOpt = Annotated[bool, typer.Option("--requeue", help="After a preemption checkpoint, `scontrol requeue $SLURM_JOB_ID`.", rich_help_panel="Training")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.", rich_help_panel="Training")]


def run_training(command: str, recipe_path, overrides, run_dir, device: str, seed, max_steps, resume,
                 teacher=None, init=None, time_budget=None, requeue=False, progress=True) -> None:
    import torch

    from fsg.cli.common import resolve_device
    from fsg.errors import UserError
    from fsg.io.checkpoint import atomic_write, list_states
    from fsg.recipe import load_recipe, recipe_yaml
    from fsg.train.dist import init_distributed, shutdown
    from fsg.train.engine import RunOptions, Trainer, TrainingStopped
    from fsg.train.grid import grid_writer
    from fsg.train.setup import build_run

    if recipe_path is None:
        raise UserError(f"`fsg {command}` needs --recipe (see recipes/ and recipes/tiny/)")
    overrides = list(overrides or [])
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    recipe = load_recipe(recipe_path, overrides)
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / Path(recipe_path).stem
    if resume is None and list_states(run_dir / "checkpoints"):
        raise UserError(f"{run_dir} already holds a training run: continue it with --resume auto, or pick another --run-dir")
    dev = resolve_device(device)
    env = init_distributed(dev)
    if env.world > 1 and recipe.train.batch_size % env.world:
        raise UserError(f"train.batch_size {recipe.train.batch_size} is not divisible by the {env.world} processes")
    if env.world > 1 and env.is_main:
        import torch.distributed as dist
        print(f"fsg: {env.world} processes ({dist.get_backend()})", file=sys.stderr)
    torch.manual_seed(recipe.train.seed)
    parts = build_run(recipe, command, dev, teacher=teacher, init=init)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.yaml", lambda tmp: Path(tmp).write_text(recipe_yaml(recipe)))

    def stream(start_step: int):
        from fsg.data import BatchStream
        return BatchStream(parts.dataset, recipe.train.batch_size, rank=env.rank, world=env.world, seed=recipe.train.seed,
                           start_step=start_step, flip=recipe.data.flip, workers=recipe.data.workers, device=dev)

    opts = RunOptions(run_dir, dev, env, max_steps, resume, time_budget, requeue, progress)
    trainer = Trainer(recipe, parts.method, parts.dataset, parts.meta, opts,
                      sample_grid=grid_writer(parts.meta, recipe.sample.grid, dev))
    try:
        step = trainer.fit(stream)
    except TrainingStopped as e:
        print(f"fsg: {e}", file=sys.stderr)
        shutdown()
        raise typer.Exit(e.code)
    shutdown()
    if env.is_main:
        typer.echo(f"trained {step} steps; model: {run_dir / 'model.safetensors'}")


@app.command("train-diffusion")
def train_diffusion(recipe: RecipeOpt = None, set_: SetOpt = None, run_dir: RunDirOpt = None, device: DeviceOpt = "auto",
                    seed: SeedOpt = None, max_steps: MaxStepsOpt = None, resume: ResumeOpt = None,
                    init: InitOpt = None, time_budget: TimeBudgetOpt = None, requeue: RequeueOpt = False,
                    progress: ProgressOpt = True) -> None:
    """Train a diffusion teacher (EDM, VP, DDBM bridges, DDM) from data.

    Examples:
      fsg train-diffusion --recipe recipes/tiny/edm_toy.yaml --run-dir runs/edm_toy
      torchrun --nproc_per_node 2 -m fsg train-diffusion --recipe recipes/tiny/edm_toy.yaml --run-dir runs/edm_toy
    """
    run_training("train-diffusion", recipe, set_, run_dir, device, seed, max_steps, resume, init=init,
                 time_budget=time_budget, requeue=requeue, progress=progress)


@app.command("distill")
def distill(teacher: TeacherOpt = None, recipe: RecipeOpt = None, set_: SetOpt = None, run_dir: RunDirOpt = None,
            device: DeviceOpt = "auto", seed: SeedOpt = None, max_steps: MaxStepsOpt = None, resume: ResumeOpt = None,
            time_budget: TimeBudgetOpt = None, requeue: RequeueOpt = False, progress: ProgressOpt = True) -> None:
    """Consistency distillation (CD; CBD for bridges) of a teacher into a few-step model.

    Example:
      fsg distill --teacher runs/edm_toy --recipe recipes/tiny/cd_toy.yaml --run-dir runs/cd_toy
    """
    run_training("distill", recipe, set_, run_dir, device, seed, max_steps, resume, teacher=teacher,
                 time_budget=time_budget, requeue=requeue, progress=progress)


@app.command("train-consistency")
def train_consistency(recipe: RecipeOpt = None, set_: SetOpt = None, run_dir: RunDirOpt = None, device: DeviceOpt = "auto",
                      seed: SeedOpt = None, max_steps: MaxStepsOpt = None, resume: ResumeOpt = None,
                      init: InitOpt = None, time_budget: TimeBudgetOpt = None, requeue: RequeueOpt = False,
                      progress: ProgressOpt = True) -> None:
    """Consistency training from data (CT, iCT; CBT for bridges).

    Example:
      fsg train-consistency --recipe recipes/tiny/ct_toy.yaml --run-dir runs/ct_toy
    """
    run_training("train-consistency", recipe, set_, run_dir, device, seed, max_steps, resume, init=init,
                 time_budget=time_budget, requeue=requeue, progress=progress)
