"""A rich progress bar for training: step, it/s, loss, ETA. Silent off rank 0 and when disabled."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainProgress:
    def __init__(self, total: int, start: int, enabled: bool = True, description: str = "train"):
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f} it/s"), TextColumn("loss {task.fields[loss]:.4g}"),
            TimeRemainingColumn(), console=Console(file=sys.stderr), disable=not enabled, transient=False,
        )
        self.task = self.progress.add_task(description, total=total, completed=start, loss=float("nan"), rate=0.0)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        task = self.progress.tasks[0]
        rate = task.speed or 0.0
        self.progress.update(self.task, completed=step, loss=loss, rate=rate)
