"""Training progress: step, it/s, loss, ETA (a bar on a terminal, plain lines off one). Silent off rank 0 and when
disabled."""

from __future__ import annotations

from fsg.progress import Progress


class TrainProgress(Progress):
    def __init__(self, total: int, start: int, enabled: bool = True, description: str = "train"):
        super().__init__(total, description, start=start, enabled=enabled)

    def update(self, step: int, loss: float | None = None, **fields) -> None:  # type: ignore[override]
        if loss is not None:
            fields["loss"] = float(loss)
        super().update(step, **fields)
