"""Options shared by every command, defined once so their names and help are the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

RecipeOpt = Annotated[Optional[Path], typer.Option("--recipe", "-r", help="Recipe YAML file.", rich_help_panel="Common")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe key: --set train.lr=2e-4 (repeatable).", rich_help_panel="Common")]
RunDirOpt = Annotated[Optional[Path], typer.Option("--run-dir", help="Run folder (config, metrics, checkpoints, samples, model).", rich_help_panel="Common")]
DeviceOpt = Annotated[str, typer.Option("--device", envvar="FSG_DEVICE", help="auto | cpu | cuda | cuda:N.", rich_help_panel="Common")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed (overrides the recipe's train.seed).", rich_help_panel="Common")]
MaxStepsOpt = Annotated[Optional[int], typer.Option("--max-steps", help="Train for this many steps (overrides train.max_steps).", rich_help_panel="Training")]
ResumeOpt = Annotated[Optional[str], typer.Option("--resume", help="auto (latest checkpoint of the run folder) or a state file.", rich_help_panel="Training")]
ModelOpt = Annotated[Optional[Path], typer.Option("--model", "-m", help="Model: run folder, checkpoint folder or .safetensors (default: the bundled model).", rich_help_panel="Common")]


def parse_list(text: str | None, kind: type, option: str) -> list | None:
    """A comma-separated option value as a list of ints or finite floats (None when not given); a bad value is a
    UserError naming the option."""
    import math

    from fsg.errors import UserError

    if text is None or text == "":
        return None
    what = "integers" if kind is int else "numbers"
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{option}: expected comma-separated {what}, got '{text}'") from None
    if kind is float and not all(math.isfinite(v) for v in values):
        raise UserError(f"{option}: expected finite numbers, got '{text}'")
    return values
