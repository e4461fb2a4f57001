"""`fsg demo`: teacher -> distillation -> 1/2/4-step samples vs 35 NFE, evaluated, in a few minutes on CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fsg.cli.common import DeviceOpt


def demo(
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Where the runs, demo.png and demo.json go.")] = Path("runs/demo"),
    n: Annotated[int, typer.Option("-n", "--num", help="Toy samples per setting.")] = 5000,
    train_teacher: Annotated[bool, typer.Option(help="Train the toy teacher instead of using the bundled one.")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """The whole pipeline on tiny data: distil the toy teacher, sample at 1/2/4 steps and at 35 NFE, evaluate,
    print quality and time per NFE, and write a comparison picture.

    Example: fsg demo            (about 2 minutes on 2 CPU cores; writes runs/demo/demo.png)
    """
    from fsg.train.dist import resolve_device
    from fsg.app.demo import run_demo

    run_demo(run_dir, resolve_device(device), n=n, train_teacher=train_teacher)
