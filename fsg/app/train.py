"""Train from a recipe into a run folder: the library function behind every training command, `fsg demo` and
`fsg.train(...)`."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from fsg.data import BatchStream
from fsg.errors import UserError
from fsg.io.checkpoint import MODEL_FILE, atomic_write, list_states
from fsg.train.dist import init_distributed, resolve_device, shutdown
from fsg.train.engine import RunOptions, Trainer
from fsg.train.grid import grid_writer
from fsg.train.recipe import load_recipe, recipe_yaml
from fsg.train.setup import build_run


def train(command: str, recipe_path, overrides=(), run_dir=None, device: str = "auto", seed: int | None = None,
          max_steps: int | None = None, resume: str | None = None, teacher=None, init=None,
          time_budget: float | None = None, requeue: bool = False, progress: bool = True) -> Path | None:
    """Train `command`'s method from a recipe into `run_dir`; returns the model file (on rank 0).

    Raises TrainingStopped on preemption or a non-finite loss (the checkpoint is kept).
    """
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
    try:
        if env.world > 1 and recipe.train.batch_size % env.world:
            raise UserError(f"train.batch_size {recipe.train.batch_size} is not divisible by the {env.world} processes")
        if env.group and env.is_main:
            import torch.distributed as dist
            print(f"fsg: {env.world} process{'es' if env.world > 1 else ''} ({dist.get_backend()}, DDP)", file=sys.stderr)
        torch.manual_seed(recipe.train.seed)
        parts = build_run(recipe, command, dev, teacher=teacher, init=init)
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(run_dir / "config.yaml", lambda tmp: Path(tmp).write_text(recipe_yaml(recipe)))

        def stream(start_step: int):
            return BatchStream(parts.dataset, recipe.train.batch_size, rank=env.rank, world=env.world,
                               seed=recipe.train.seed, start_step=start_step, flip=recipe.data.flip,
                               workers=recipe.data.workers, device=dev)

        opts = RunOptions(run_dir, dev, env, max_steps, resume, time_budget, requeue, progress)
        trainer = Trainer(recipe, parts.method, parts.meta, opts,
                          sample_grid=grid_writer(parts.meta, recipe.sample.grid, dev), transform=parts.transform)
        trainer.fit(stream)
    finally:
        shutdown()
    return run_dir / MODEL_FILE if env.is_main else None
