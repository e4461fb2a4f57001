"""`fsg grow-decoder`: PaGoDA's one-step generator from a low-resolution teacher (fsg.methods.pagoda)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from fsg.cli.common import DeviceOpt, MaxStepsOpt, RecipeOpt, ResumeOpt, RunDirOpt, SeedOpt, SetOpt
from fsg.cli.train import InitOpt, OverwriteOpt, ProgressOpt, RequeueOpt, TeacherOpt, TimeBudgetOpt, run_training


class Stage(str, Enum):
    encode = "encode"
    distill = "distill"
    grow = "grow"


StageOpt = Annotated[Optional[Stage], typer.Option("--stage", help="encode | distill | grow: overrides the recipe's method.stage.")]


def grow_decoder(teacher: TeacherOpt = None, init: InitOpt = None, recipe: RecipeOpt = None, stage: StageOpt = None,
                 set_: SetOpt = None, run_dir: RunDirOpt = None, device: DeviceOpt = "auto", seed: SeedOpt = None,
                 max_steps: MaxStepsOpt = None, resume: ResumeOpt = None, time_budget: TimeBudgetOpt = None,
                 requeue: RequeueOpt = False, progress: ProgressOpt = True, overwrite: OverwriteOpt = False) -> None:
    """PaGoDA: distil a low-resolution teacher into a one-step decoder (stage distill), then grow it to
    2x, 4x, ... the teacher's resolution (stage grow, --init the previous stage). Stage encode writes the
    teacher's inversions z = Enc(x) of the data to --run-dir (sharded, resumable; run it under torchrun to
    split the shards); the other stages read them with --set method.latents=DIR.

    Examples:
      fsg train-diffusion --recipe recipes/tiny/pagoda_mnist_teacher.yaml --run-dir runs/pgd_teacher
      fsg grow-decoder --teacher runs/pgd_teacher --recipe recipes/tiny/pagoda_mnist_distill.yaml --run-dir runs/pgd8
      fsg grow-decoder --teacher runs/pgd_teacher --init runs/pgd8 --recipe recipes/tiny/pagoda_mnist_grow16.yaml --run-dir runs/pgd16
      fsg sample --model runs/pgd16 --steps 1 -n 64 --out s.npz
      fsg grow-decoder --stage encode --teacher runs/pgd_teacher --recipe recipes/tiny/pagoda_mnist_distill.yaml --run-dir runs/pgd_latents
    """
    overrides = list(set_ or [])
    if stage is not None:
        overrides.append(f"method.stage={stage.value}")
    loaded = _load_recipe(recipe, overrides)
    if getattr(loaded.method, "stage", None) == "encode":       # no training: the latents of every item
        unused = {"--init": init, "--seed": seed, "--max-steps": max_steps, "--resume": resume,
                  "--time-budget": time_budget, "--requeue": requeue or None, "--overwrite": overwrite or None}
        given = [name for name, value in unused.items() if value is not None]
        if given:
            from fsg.errors import UserError

            raise UserError(f"--stage encode writes the teacher's latents and trains nothing: {', '.join(given)} "
                            f"do{'es' if len(given) == 1 else ''} not apply (a killed encode continues when run again)")
        _encode(loaded, recipe, teacher, run_dir, device, progress)
        return
    run_training("grow-decoder", recipe, overrides, run_dir, device, seed, max_steps, resume, teacher=teacher,
                 init=init, time_budget=time_budget, requeue=requeue, progress=progress, overwrite=overwrite)


def _load_recipe(recipe, overrides):
    from fsg.errors import UserError
    from fsg.train.recipe import load_recipe

    if recipe is None:
        raise UserError("`fsg grow-decoder` needs --recipe (see recipes/pagoda_*.yaml and recipes/tiny/pagoda_mnist_*.yaml)")
    return load_recipe(recipe, overrides)


def _encode(loaded, recipe, teacher, run_dir, device, progress) -> None:
    from pathlib import Path

    from fsg.train.dist import resolve_device
    from fsg.app.pagoda_encode import run_encode

    out = Path(run_dir) if run_dir is not None else Path("runs") / f"{Path(recipe).stem}_latents"
    manifest = run_encode(loaded, teacher, out, resolve_device(device), progress=progress)
    typer.echo(f"latents: {out} ({manifest.name}); train with --set method.latents={out}")
