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


def resolve_device(device: str):
    """'auto' picks CUDA when present, else CPU. 'auto' and a bare 'cuda' mean the local rank's GPU under
    torchrun/Slurm (cuda:LOCAL_RANK), so every process of a job gets its own GPU; 'cuda:N' is taken as given."""
    import os

    import torch

    from fsg.errors import UserError

    local_gpu = lambda: torch.device("cuda", int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0))))  # noqa: E731
    if device == "auto":
        return local_gpu() if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device: unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is None:
        return local_gpu()
    if dev.type == "cuda" and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
