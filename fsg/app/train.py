"""Train from a recipe into a run folder: the library function behind every training command, `fsg demo` and
`fsg.train(...)`."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from fsg.data import BatchStream
from fsg.errors import UserError
from fsg.io.checkpoint import MODEL_FILE, atomic_write
from fsg.train.dist import all_reduce_max, init_distributed, resolve_device, shutdown
from fsg.train.engine import RunOptions, Trainer
from fsg.train.grid import grid_writer
from fsg.train.recipe import load_recipe, recipe_yaml
from fsg.train.runfolder import CONFIG_FILE, check_run_folder, claim_run_folder
from fsg.train.setup import build_run


def _claim(run_dir: Path, resume, overwrite: bool, env, device):
    """Rank 0 claims the run folder (lock, checks, --overwrite, stale temporaries); every rank learns whether it
    could, so that a refusal ends the whole job with rank 0's message rather than leaving the others waiting."""
    lock, failure = None, None
    if env.is_main:
        try:
            lock = claim_run_folder(run_dir, resume, overwrite)
        except UserError as e:
            failure = e
    if all_reduce_max(1.0 if failure is not None else 0.0, device) > 0:
        raise failure if failure is not None else UserError(f"rank 0 could not claim --run-dir {run_dir} (see its message)")
    return lock


def train(command: str, recipe_path, overrides=(), run_dir=None, device: str = "auto", seed: int | None = None,
          max_steps: int | None = None, resume: str | None = None, teacher=None, init=None,
          time_budget: float | None = None, requeue: bool = False, progress: bool = True,
          overwrite: bool = False) -> Path | None:
    """Train `command`'s method from a recipe into `run_dir`; returns the model file (on rank 0).

    A folder holding a model or run files is continued with `resume="auto"` or started over with `overwrite=True`
    (its files moved aside), never written over otherwise. Raises TrainingStopped on preemption or a non-finite
    loss (the checkpoint is kept).
    """
    if recipe_path is None:
        raise UserError(f"`fsg {command}` needs --recipe (see recipes/ and recipes/tiny/)")
    if max_steps is not None and max_steps < 1:
        raise UserError(f"--max-steps: must be at least 1, got {max_steps}")
    if time_budget is not None and not time_budget > 0:
        raise UserError(f"--time-budget: must be a positive number of seconds, got {time_budget:g}")
    overrides = list(overrides or [])
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    recipe = load_recipe(recipe_path, overrides)
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / Path(recipe_path).stem
    check_run_folder(run_dir, resume, overwrite)           # before any work, on every rank
    dev = resolve_device(device)
    env = init_distributed(dev)
    lock = None
    try:
        if env.world > 1 and recipe.train.batch_size % env.world:
            raise UserError(f"train.batch_size {recipe.train.batch_size} is not divisible by the {env.world} processes")
        if env.group and env.is_main:
            import torch.distributed as dist
            print(f"fsg: {env.world} process{'es' if env.world > 1 else ''} ({dist.get_backend()}, DDP)", file=sys.stderr)
        lock = _claim(run_dir, resume, overwrite, env, dev)
        torch.manual_seed(recipe.train.seed)
        parts = build_run(recipe, command, dev, teacher=teacher, init=init)

        def stream(start_step: int):
            return BatchStream(parts.dataset, recipe.train.batch_size, rank=env.rank, world=env.world,
                               seed=recipe.train.seed, start_step=start_step, flip=recipe.data.flip,
                               workers=recipe.data.workers, device=dev)

        opts = RunOptions(run_dir, dev, env, max_steps, resume, time_budget, requeue, progress)
        trainer = Trainer(recipe, parts.method, parts.meta, opts,
                          sample_grid=grid_writer(parts.meta, recipe.sample.grid, dev), transform=parts.transform)
        trainer.restore()                                   # the resumed state first: a failing resume changes no file
        if env.is_main:
            atomic_write(run_dir / CONFIG_FILE, lambda tmp: Path(tmp).write_text(recipe_yaml(recipe)))
        trainer.fit(stream)
    finally:
        if lock is not None:
            lock.release()
        shutdown()
    return run_dir / MODEL_FILE if env.is_main else None
